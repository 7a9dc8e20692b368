#!/bin/bash
# Gateway mode's first start on a host where no tunsecd ran before (or
# after `tunsec gateway release`): how much of the kernel's vxlan traffic,
# already flowing at 500 packets a second, leaves in the clear between
# tunsecd's exec and its guard. A measurement, not a test: it prints the
# count. After a stop or a crash the guard is already in place and the
# figure is 0
# (gateway_lifecycle_e2e::gateway_fail_closed_across_stop_and_start).
#
#   cargo build -p tunsec && sudo bash scripts/first-start-leak.sh
#
# Namespaces fsm-ul, fsm-h1, fsm-h2 with 192.0.2.0/24 inside only; all of
# it is removed on exit.
set -u
TUNSECD=${TUNSECD:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/tunsecd}
W=$(mktemp -d)
P=fsm
cleanup() { for n in ul h1 h2; do ip netns del $P-$n 2>/dev/null; done; }
trap 'cleanup; rm -rf "$W"' EXIT
cleanup
for n in ul h1 h2; do ip netns add $P-$n; done
ip -n $P-ul link add br0 type bridge; ip -n $P-ul link set br0 up
for i in 1 2; do
  ip link add e$i netns $P-h$i type veth peer name p$i netns $P-ul
  ip -n $P-ul link set p$i master br0; ip -n $P-ul link set p$i up
  ip -n $P-h$i link set e$i name eth0; ip -n $P-h$i addr add 192.0.2.$i/24 dev eth0; ip -n $P-h$i link set eth0 up; ip -n $P-h$i link set lo up
  o=$((3-i))
  ip -n $P-h$i link add vxlan0 type vxlan id 42 remote 192.0.2.$o local 192.0.2.$i dstport 4789
  ip -n $P-h$i addr add 10.42.0.$i/24 dev vxlan0; ip -n $P-h$i link set vxlan0 up
  ip netns exec $P-h$i sysctl -qw net.ipv4.conf.all.rp_filter=0
done
cat > "$W/h1.toml" <<T
[node]
name = "h1"
underlay = "192.0.2.1"
control_socket = "$W/h1.sock"
[gateway]
[[peer]]
name = "h2"
underlay = "192.0.2.2"
[[peer.selector]]
protocol = "udp"
ports = 4789
[peer.ike]
psk_file = "$W/h1.psk"
T
(umask 077; printf 'a measurement key\n' > "$W/h1.psk")
ip netns exec $P-ul dumpcap -q -i br0 -w $W/cap.pcap 2>/dev/null & CAP=$!
sleep 1
ip netns exec $P-h1 ping -q -i 0.002 -c 3000 10.42.0.2 >/dev/null 2>&1 & PING=$!
sleep 1
T0=$(date +%s.%N)
ip netns exec $P-h1 "$TUNSECD" --config $W/h1.toml > $W/h1.log 2>&1 & D=$!
sleep 3
kill $D; wait $D 2>/dev/null
kill $PING 2>/dev/null; sleep 0.5; kill $CAP; wait $CAP 2>/dev/null
echo "spawn at $T0"
tshark -r $W/cap.pcap -Y "udp.dstport == 4789 && ip.src == 192.0.2.1" -T fields -e frame.time_epoch 2>/dev/null | awk -v t0=$T0 '{ if ($1 > t0) after++; else before++; if ($1 > t0 && (last=="" || $1>last)) last=$1 } END { printf "cleartext vxlan from h1: %d before the spawn, %d after; last at +%.1f ms\n", before, after, (last-t0)*1000 }'
