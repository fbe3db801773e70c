# Helpers for the guest's scenario scripts (sourced as /lib/emudev.sh).
#
# Output protocol, one line each, parsed by guest/harness.ts:
#   EMUDEV-CHECK <name>=<value>   a measurement the host compares with its expectation
#   EMUDEV-INFO <text>            context, printed in the host's summary
#   EMUDEV-FAIL <text>            the scenario could not go on (the host fails it)

check() { echo "EMUDEV-CHECK $1=$2"; }
info() { echo "EMUDEV-INFO $*"; }
fail() { echo "EMUDEV-FAIL $*"; exit 1; }

# find_pci VENDOR DEVICE: prints the sysfs directory of the first PCI function
# with that vendor/device id (as sysfs spells them, e.g. 0x1234 0x11e8).
find_pci() {
  for d in /sys/bus/pci/devices/*; do
    [ -f "$d/vendor" ] || continue
    if [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# bar_start DEV N / bar_size DEV N: BAR N's physical address and size, from
# line N+1 of DEV/resource ("start end flags"), in hex.
bar_start() { sed -n "$(($2 + 1))p" "$1/resource" | cut -d ' ' -f 1; }
bar_size() {
  set -- $(sed -n "$(($2 + 1))p" "$1/resource")
  printf '0x%x\n' $(($2 - $1 + 1))
}

# rd32 ADDR / wr32 ADDR VALUE: 32-bit access to a physical address (busybox devmem).
rd32() { devmem "$1" 32; }
wr32() { devmem "$1" 32 "$2"; }

# hex_add BASE OFFSET: BASE + OFFSET in hex.
hex_add() { printf '0x%x\n' $(($1 + $2)); }
