# Scenario gpio: the in-tree Linux driver gpio-pci-idio-16 (with gpio-idio-16
# and gpio-regmap) binds to emudev's TypeScript GPIO card (494f:0dc8,
# examples/gpio.ts) and the guest drives it through GPIO sysfs.
#
# The host serves the card with its inputs held at a known pattern (the
# harness's expectation `inputs`), OUT15 wired back to IIN15, and checks
# afterwards what the guest wrote to the outputs: OUT3 goes 1 then 0, OUT9
# goes 1 and stays there, OUT15 goes 1 then 0 (two interrupts).

dev=$(find_pci 0x494f 0x0dc8) || fail "no PCI device 494f:0dc8 (have: $(cat /sys/bus/pci/devices/*/device | tr '\n' ' '))"
check found 1
pci=${dev##*/}
info "device $pci class $(cat "$dev/class") bar2 $(sed -n 3p "$dev/resource")"
# IORESOURCE_IO (0x100) in the flags column: an I/O BAR.
check bar2_io $((($(sed -n 3p "$dev/resource" | cut -d ' ' -f 3) & 0x100) != 0))
check bar2_size "$(bar_size "$dev" 2)"

modprobe gpio-pci-idio-16 || fail "modprobe gpio-pci-idio-16 failed"
bound_now() { [ -e "$dev/driver" ]; }
wait_for 50 bound_now || dmesg_info 'idio|gpio|regmap' 20
check bound "$(bound "$dev")"
info "driver $(basename "$(readlink "$dev/driver")")"

# The gpiochip whose label is the PCI function's name (gpio-regmap's default).
chip=
for c in /sys/class/gpio/gpiochip*; do
  [ -f "$c/label" ] || continue
  if [ "$(cat "$c/label")" = "$pci" ]; then chip=$c; fi
done
[ -n "$chip" ] || fail "no gpiochip labelled $pci (have: $(cat /sys/class/gpio/gpiochip*/label 2>/dev/null | tr '\n' ' '))"
base=$(cat "$chip/base")
check ngpio "$(cat "$chip/ngpio")"
info "gpiochip ${chip##*/} base $base"

# export NAME OFFSET: exports line OFFSET of the chip and prints its sysfs
# directory (named after the line on 6.12, gpioNNN on later kernels).
export_line() {
  echo $((base + $2)) >/sys/class/gpio/export || return 1
  if [ -d "/sys/class/gpio/$1" ]; then echo "/sys/class/gpio/$1"; else echo "/sys/class/gpio/gpio$((base + $2))"; fi
}
# direction NAME: a line's direction as gpiolib's debugfs lists it ("in" or
# "out"). The sysfs `direction` attribute is absent here: gpio-regmap offers
# no direction changes for this card (lines 0-15 are fixed outputs, 16-31
# inputs), and gpiolib shows the attribute only when the direction may change.
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || fail "cannot mount debugfs"
direction() { sed -n "s/^ *gpio-[0-9]* *($1 *|[^)]*) *\([a-z]*\) .*/\1/p" /sys/kernel/debug/gpio; }
is_out() { if [ "$(direction "$1")" = out ]; then echo 1; else echo 0; fi; }

# Outputs: OUT3 high then low, OUT9 high (left so).
out3=$(export_line OUT3 3) || fail "cannot export OUT3"
[ -d "$out3" ] || fail "exported OUT3, no $out3"
check out3_is_output "$(is_out OUT3)"
echo 1 >"$out3/value" || fail "cannot write OUT3"
check out3_high "$(cat "$out3/value")"
echo 0 >"$out3/value" || fail "cannot write OUT3"
check out3_low "$(cat "$out3/value")"
out9=$(export_line OUT9 9) || fail "cannot export OUT9"
echo 1 >"$out9/value" || fail "cannot write OUT9"
check out9_high "$(cat "$out9/value")"

# Inputs: IIN0-IIN15 are lines 16-31; read each and put the pattern together.
in_pattern=0
in_dirs=0
i=0
while [ $i -lt 16 ]; do
  line=$(export_line "IIN$i" $((16 + i))) || fail "cannot export IIN$i"
  [ "$(direction "IIN$i")" != in ] || in_dirs=$((in_dirs + 1))
  v=$(cat "$line/value") || fail "cannot read IIN$i"
  in_pattern=$((in_pattern | (v << i)))
  i=$((i + 1))
done
check input_lines "$in_dirs"
check inputs "$(printf '0x%x' "$in_pattern")"
# An input line refuses to drive.
if echo 1 >"$line/value" 2>/dev/null; then check input_write_refused 0; else check input_write_refused 1; fi

# Interrupts: the host wires OUT15 to IIN15 (loopback). Asking for both edges
# on IIN15 unmasks the card's change-of-state interrupt (INTx); each OUT15
# toggle then changes IIN15 and must reach gpiolib's handler once.
irqs_gpiolib() { awk '/gpiolib/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n; f = 1 } END { if (!f) print 0 }' /proc/interrupts; }
echo both >"$line/edge" || fail "cannot set IIN15 edge"
out15=$(export_line OUT15 15) || fail "cannot export OUT15"
irq0=$(irqs_gpiolib)
toggled() { [ "$(irqs_gpiolib)" -ge $(($1 + 1)) ]; }
echo 1 >"$out15/value" || fail "cannot write OUT15"
wait_for 20 toggled "$irq0" || true
check in15_after_out15_high "$(cat "$line/value")"
irq1=$(irqs_gpiolib)
echo 0 >"$out15/value" || fail "cannot write OUT15"
wait_for 20 toggled "$irq1" || true
check in15_after_out15_low "$(cat "$line/value")"
check edge_irqs $(($(irqs_gpiolib) - irq0))
info "interrupts: $(grep -E 'gpiolib|'"$pci" /proc/interrupts | tr -s ' ' | tr '\n' ';')"
echo none >"$line/edge"

info "debugfs: $(grep -E 'OUT3 |OUT9 |IIN0 ' /sys/kernel/debug/gpio | tr -s ' ' | tr '\n' ';')"
dmesg_info 'idio|gpio' 20
check dmesg_errors "$(dmesg | grep -i -E 'idio|gpio|regmap' | grep -c -i -E 'error|fail|unable|invalid')"
check kernel_warnings "$(dmesg | grep -c -E 'WARNING:|BUG:|Oops|Call Trace|nobody cared')"
