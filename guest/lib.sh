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

# wait_for TRIES CMD...: runs CMD every 0.1 s until it succeeds, at most TRIES
# times; WAITED is the number of failed tries before success (or TRIES).
wait_for() {
  _tries=$1
  shift
  WAITED=0
  while ! "$@"; do
    WAITED=$((WAITED + 1))
    [ "$WAITED" -lt "$_tries" ] || return 1
    usleep 100000
  done
}

# netdev_of DEV: the first network interface of PCI function DEV (empty if none).
netdev_of() { ls "$1/net" 2>/dev/null | head -n 1; }
has_netdev() { [ -n "$(netdev_of "$1")" ]; }
no_netdev() { [ -z "$(netdev_of "$1")" ]; }

# bound DEV: 1 if a driver is bound to PCI function DEV, else 0.
bound() { if [ -e "$1/driver" ]; then echo 1; else echo 0; fi; }

# carrier IF: 1 or 0 (0 too while the interface is down and sysfs refuses the read).
carrier() {
  _c=$(cat "/sys/class/net/$1/carrier" 2>/dev/null)
  echo "${_c:-0}"
}
carrier_is() { [ "$(carrier "$1")" = "$2" ]; }

# mac_hex IF: the interface's MAC address as one hex number (0x020000000001).
mac_hex() { echo "0x$(tr -d ':' <"/sys/class/net/$1/address")"; }

# dmesg_info PATTERN [MAX]: the kernel log lines matching PATTERN (grep -i -E),
# the last MAX (default 60) of them, as EMUDEV-INFO lines.
dmesg_info() {
  dmesg | grep -i -E "$1" | tail -n "${2:-60}" | while IFS= read -r line; do info "dmesg: $line"; done
}
