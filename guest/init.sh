#!/bin/busybox sh
# /init of the real-driver test guest (busybox only).
#
# Runs the scenario named by the kernel command-line parameter
# `emudev.scenario=<name>` (/scenarios/<name>.sh), framed by EMUDEV-BEGIN and
# EMUDEV-END lines the host harness (guest/harness.ts) parses, then powers
# off. QEMU runs with -no-reboot and the kernel with panic=-1, so every path
# out of here ends the VM.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

scenario=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    emudev.scenario=*) scenario="${arg#emudev.scenario=}" ;;
  esac
done

uptime_s() { cut -d ' ' -f 1 /proc/uptime; }

echo "EMUDEV-BEGIN scenario=${scenario:-none} kernel=$(uname -r) uptime=$(uptime_s)"
if [ -z "$scenario" ] || [ ! -f "/scenarios/$scenario.sh" ]; then
  echo "EMUDEV-FAIL no scenario script for '${scenario}' (have: $(ls /scenarios))"
  rc=2
else
  sh -c ". /lib/emudev.sh; . /scenarios/$scenario.sh"
  rc=$?
fi
echo "EMUDEV-END scenario=${scenario:-none} rc=$rc uptime=$(uptime_s)"
sync
poweroff -f
