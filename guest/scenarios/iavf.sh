# Scenario iavf: the in-tree Linux iavf driver binds to emu_iavf (8086:1889),
# negotiates virtchnl over the admin queue with MSI-X, and brings the port up.
#
# Control path only (the device does not move packets yet): probe, MAC, link
# up (carrier comes from the device's LINK_CHANGE event), an MTU change, and
# rmmod/insmod. iavf4.sh runs the same steps against a 4-queue-pair device;
# the host harness holds the expectations (MAC, queue count).

# No traffic: with IPv6 off and no IPv4 address the stack sends nothing, so
# TX descriptors the device does not complete yet cannot trip the TX watchdog.
[ ! -e /proc/sys/net/ipv6/conf/default/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
[ ! -e /proc/sys/net/ipv6/conf/all/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6

dev=$(find_pci 0x8086 0x1889) || fail "no PCI device 8086:1889 (have: $(cat /sys/bus/pci/devices/*/device | tr '\n' ' '))"
check found 1
info "device ${dev##*/} class $(cat "$dev/class")"

# probe: modprobe, then wait (up to 30 s) for the netdev the driver registers
# once reset, VERSION and GET_VF_RESOURCES are done.
probe() {
  modprobe iavf || fail "modprobe iavf failed"
  if ! wait_for 300 has_netdev "$dev"; then
    dmesg_info 'iavf|vfio|msi'
    fail "no netdev under ${dev##*/} 30 s after modprobe iavf"
  fi
  ifc=$(netdev_of "$dev")
}

# carrier_wait STEP: waits (up to 30 s) for the carrier, then reports it as STEP.
carrier_wait() {
  wait_for 300 carrier_is "$ifc" 1 || dmesg_info iavf 20
  check "$1" "$(carrier "$ifc")"
}

probe
check netdev_polls "$WAITED"
check bound "$(bound "$dev")"
info "netdev $ifc, driver $(basename "$(readlink "$dev/driver")"), irqs $(ls "$dev/msi_irqs" 2>/dev/null | wc -l)"
check msix_vectors "$(ls "$dev/msi_irqs" 2>/dev/null | wc -l)"
check mac "$(mac_hex "$ifc")"
check mtu "$(cat "/sys/class/net/$ifc/mtu")"
check rx_queues "$(ls -d "/sys/class/net/$ifc/queues/rx-"* | wc -l)"
check tx_queues "$(ls -d "/sys/class/net/$ifc/queues/tx-"* | wc -l)"

# Up: CONFIG_VSI_QUEUES, CONFIG_IRQ_MAP, ENABLE_QUEUES, then the LINK_CHANGE event.
ip link set "$ifc" up || fail "ip link set $ifc up failed"
carrier_wait carrier
check carrier_polls "$WAITED"
info "operstate $(cat "/sys/class/net/$ifc/operstate")"
# Let the watchdog run a couple of rounds (GET_STATS about every 2 s).
sleep 3
check carrier_after_3s "$(carrier "$ifc")"

# MTU 9000 is above what the device offers (max_mtu, a frame size, from
# GET_VF_RESOURCES): the stack refuses it and nothing changes.
if ip link set "$ifc" mtu 9000 2>/dev/null; then check mtu9000_rc 0; else check mtu9000_rc 1; fi
check mtu_after_9000 "$(cat "/sys/class/net/$ifc/mtu")"
# A smaller MTU is taken, and iavf resets the VF to apply it while the port is
# up (RESET_VF, wait for VFGEN_RSTAT, GET_VF_RESOURCES, reconfigure, LINK_CHANGE).
# ip does not wait for that reset: the carrier going off and on again (two
# more carrier_changes) says it finished; 10 s is plenty.
changes() { cat "/sys/class/net/$ifc/carrier_changes"; }
relinked() { [ "$(changes)" -ge $(($1 + 2)) ] && carrier_is "$ifc" 1; }
mtu_step() {
  c0=$(changes)
  if ip link set "$ifc" mtu "$1"; then check "mtu$1_rc" 0; else check "mtu$1_rc" 1; fi
  check "mtu$1_after" "$(cat "/sys/class/net/$ifc/mtu")"
  wait_for 100 relinked "$c0" || dmesg_info iavf 20
  check "mtu$1_carrier_changes" $(($(changes) - c0))
  check "mtu$1_carrier" "$(carrier "$ifc")"
}
mtu_step 1400
mtu_step 1500

# rmmod and modprobe again: a second probe of the same device.
ip link set "$ifc" down
rmmod iavf || fail "rmmod iavf failed"
wait_for 50 no_netdev "$dev" || true
check removed_bound "$(bound "$dev")"
probe
check reload_bound "$(bound "$dev")"
check reload_mac "$(mac_hex "$ifc")"
ip link set "$ifc" up || fail "ip link set $ifc up failed after the reload"
carrier_wait reload_carrier
ip link set "$ifc" down

# What the driver said (its own lines, not the kernel command line); lines
# that name a failure are counted, and so are kernel warnings of any origin.
dmesg_info '\] iavf[ :]' 40
check tx_timeouts "$(dmesg | grep -c 'transmit queue .* timed out')"
check dmesg_errors "$(dmesg | grep -i iavf | grep -c -i -E 'error|fail|timeout|timed out|never|reset detected|not supported|unable|invalid')"
check kernel_warnings "$(dmesg | grep -c -E 'WARNING:|BUG:|Oops|Call Trace')"
