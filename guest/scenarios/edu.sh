# Scenario edu: drive the QEMU `edu` device (1234:11e8) served by emudev
# through BAR0 with devmem, as a driver would. No kernel driver binds to it.
dev=$(find_pci 0x1234 0x11e8) || fail "no PCI device 1234:11e8 (have: $(cat /sys/bus/pci/devices/*/vendor | tr '\n' ' '))"
check found 1
info "device ${dev##*/} class $(cat "$dev/class")"

# Memory decoding: SeaBIOS usually enables it already; the sysfs knob makes sure.
[ "$(cat "$dev/enable")" != 0 ] || echo 1 >"$dev/enable"
check enabled "$(cat "$dev/enable")"

bar0=$(bar_start "$dev" 0)
check bar0_size "$(bar_size "$dev" 0)"
info "bar0 $bar0"
[ $((bar0)) -ne 0 ] || fail "BAR0 has no address"

reg() { hex_add "$bar0" "$1"; }

check id "$(rd32 "$(reg 0x00)")"

wr32 "$(reg 0x04)" 0x12345678
check liveness "$(rd32 "$(reg 0x04)")"

wr32 "$(reg 0x08)" 10
# Status bit 0 is set while the factorial is being computed.
i=0
while [ $(($(rd32 "$(reg 0x20)") & 1)) -ne 0 ] && [ $i -lt 100 ]; do
  i=$((i + 1))
  usleep 10000
done
check factorial_polls "$i"
check factorial "$(rd32 "$(reg 0x08)")"

wr32 "$(reg 0x60)" 0x1
check irq_status "$(rd32 "$(reg 0x24)")"
wr32 "$(reg 0x64)" 0x1
check irq_status_acked "$(rd32 "$(reg 0x24)")"
