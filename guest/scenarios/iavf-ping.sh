# Scenario iavf-ping: traffic through emu_iavf's software data path.
#
# The guest's VF (emu_iavf0) has back-end pair:emu_iavf1: what the guest sends
# arrives on the RX ring of a second VF served in the harness process, driven
# by emudev's own iavf client (IavfPort) and a TypeScript ARP + ICMP echo
# responder for 198.18.0.2 (src/responder.ts). The guest pings it PING_COUNT
# times, sends UDP (traceroute) and TCP (nc) to closed ports, 1 MiB over TCP
# to its discard port (TSO), and reports
# ping's summary, what traceroute and nc got, the neighbour entry ARP made, and its
# interface counters (which iavf takes from the device's GET_STATS replies);
# the host compares them with the devices' data-path counters and the
# responder's. The addresses and the count are fixed here and in
# guest/harness.ts (iavfPingScenario).
PING_COUNT=20
TCP_BULK_BYTES=1048576
OUR_IP=198.18.0.1
PEER_IP=198.18.0.2

# IPv6 off before the interface exists: no router/neighbour solicitations or
# MLD reports, so the guest sends only ARP and the pings.
[ ! -e /proc/sys/net/ipv6/conf/default/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
[ ! -e /proc/sys/net/ipv6/conf/all/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6

dev=$(find_pci 0x8086 0x1889) || fail "no PCI device 8086:1889 (have: $(cat /sys/bus/pci/devices/*/device | tr '\n' ' '))"
check found 1
modprobe iavf || fail "modprobe iavf failed"
if ! wait_for 300 has_netdev "$dev"; then
  dmesg_info 'iavf|vfio|msi'
  fail "no netdev under ${dev##*/} 30 s after modprobe iavf"
fi
ifc=$(netdev_of "$dev")
check bound "$(bound "$dev")"
check mac "$(mac_hex "$ifc")"

ifstat() { cat "/sys/class/net/$ifc/statistics/$1"; }

ip addr add "$OUR_IP/24" dev "$ifc" || fail "ip addr add $OUR_IP/24 dev $ifc failed"
ip link set "$ifc" up || fail "ip link set $ifc up failed"
if ! wait_for 300 carrier_is "$ifc" 1; then
  dmesg_info iavf 20
fi
check carrier "$(carrier "$ifc")"
info "netdev $ifc $(cat "/sys/class/net/$ifc/operstate"), $OUR_IP/24; tx_packets $(ifstat tx_packets) rx_packets $(ifstat rx_packets) before the ping"

# PING_COUNT pings one second apart; -W 10: busybox waits that long for a first reply, and
# then twice the longest round trip after the last ping. Generous on purpose: with 4 queue
# pairs replies are sometimes held for seconds (a known, unsolved bug, see ARCHITECTURE.md);
# the round trips are reported, and every reply must still come.
ping -c "$PING_COUNT" -W 10 "$PEER_IP" >/tmp/ping.out 2>&1
check ping_rc $?
while IFS= read -r line; do info "ping: $line"; done </tmp/ping.out
# busybox: "20 packets transmitted, 20 packets received, 0% packet loss"
summary=$(grep 'packets transmitted' /tmp/ping.out)
check ping_transmitted "$(echo "$summary" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')"
check ping_received "$(echo "$summary" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')"
# One line per reply: their sequence numbers must be 0..PING_COUNT-1, each once.
check ping_distinct_seqs "$(sed -n 's/.*seq=\([0-9]*\).*/\1/p' /tmp/ping.out | sort -un | wc -l)"
check ping_duplicates "$(grep -c 'DUP!' /tmp/ping.out)"

# UDP and TCP, whose checksums Linux leaves to the NIC (iavf always offers
# checksum offload): traceroute's UDP probes to closed ports get the
# responder's ICMP port unreachable, nc's SYN gets its reset. A checksum the
# device did not complete makes the responder ignore the frame, and then
# traceroute prints '*' and nc times out.
traceroute -n -m 1 -q 3 -w 10 "$PEER_IP" >/tmp/traceroute.out 2>&1
check traceroute_rc $?
while IFS= read -r line; do info "traceroute: $line"; done </tmp/traceroute.out
check traceroute_answers "$(grep -o ' ms' /tmp/traceroute.out | wc -l)"
nc -w 10 "$PEER_IP" 80 </dev/null >/tmp/nc.out 2>&1
info "nc: rc $? $(cat /tmp/nc.out)"
check tcp_refused "$(grep -c -i 'refused' /tmp/nc.out)"
# 1 MiB to the responder's discard port (9): Linux hands the device TSO packets
# (iavf always offers TSO) that its TX engine must cut into valid segments; nc
# sends FIN at the end of its input and exits when the responder's FIN comes.
# With one queue pair only: with more, the known reply delay (ARCHITECTURE.md)
# can hold ACKs for seconds and TCP then crawls past any sane time limit.
rx_queues=$(ls -d /sys/class/net/"$ifc"/queues/rx-* 2>/dev/null | wc -l)
if [ "$rx_queues" -eq 1 ]; then
  head -c "$TCP_BULK_BYTES" /dev/zero | timeout 60 nc "$PEER_IP" 9 >/tmp/bulk.out 2>&1
  check tcp_bulk_rc $?
  info "nc bulk: sent $TCP_BULK_BYTES bytes to $PEER_IP:9 $(cat /tmp/bulk.out)"
else
  info "nc bulk: skipped with $rx_queues RX queues"
fi

# The neighbour entry the responder's ARP reply made: its MAC, flags 0x2 (complete).
neigh=$(awk -v ip="$PEER_IP" '$1 == ip { print $3, $4 }' /proc/net/arp)
info "neighbour $PEER_IP: ${neigh:-(none)}"
set -- $neigh
check neigh_flags "${1:-none}"
check neigh_mac "0x$(echo "${2:-}" | tr -d ':')"

# The counters come from the device's GET_STATS, which iavf requests about
# every 2 s: wait until two readings 3 s apart agree (nothing is sent after
# the ping) and the pings are in, at most 8 rounds.
counters() { echo "$(ifstat tx_packets) $(ifstat rx_packets) $(ifstat tx_bytes) $(ifstat rx_bytes)"; }
prev=$(counters)
rounds=0
while [ "$rounds" -lt 8 ]; do
  rounds=$((rounds + 1))
  sleep 3
  now=$(counters)
  set -- $now
  [ "$now" != "$prev" ] || [ "$1" -lt "$PING_COUNT" ] || [ "$2" -lt "$PING_COUNT" ] || break
  prev=$now
done
check stats_rounds "$rounds"
for s in tx_packets rx_packets tx_bytes rx_bytes tx_errors rx_errors tx_dropped rx_dropped; do
  check "$s" "$(ifstat "$s")"
done

dmesg_info '\] iavf[ :]' 20
check tx_timeouts "$(dmesg | grep -c 'transmit queue .* timed out')"
check dmesg_errors "$(dmesg | grep -i iavf | grep -c -i -E 'error|fail|timeout|timed out|never|reset detected|not supported|unable|invalid')"
check kernel_warnings "$(dmesg | grep -c -E 'WARNING:|BUG:|Oops|Call Trace')"
