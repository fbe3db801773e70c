# Scenario iavf4: the iavf scenario against a VF with 4 queue pairs (the host
# serves it with queues=4 and expects rx_queues/tx_queues 4).
. /scenarios/iavf.sh
