# Scenario iavf-db: the iavf scenario against a VF whose TX/RX tail registers sit on mmapped
# doorbell pages (BAR0 pages 0x0000 and 0x2000): QEMU maps them into the guest, so the
# driver's tail stores reach the device's memory without a vfio-user message.
. /scenarios/iavf.sh
