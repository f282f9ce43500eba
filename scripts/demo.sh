#!/usr/bin/env bash
# The data-path demo: a bubble with a bridge and two "containers" (network namespaces),
# one attached tap-to-tap, one through the original socket protocol; they ping each other
# and move data with iperf3. Everything it creates is removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/bench/lib.sh"
daemon=$(bench_binary hpk-net-daemon)

p=hd$(printf '%04x' $((RANDOM)))
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in b c1 c2; do ip netns del "$p-$ns" 2>/dev/null || true; done
    rm -f "/tmp/$p.sock" "/tmp/$p.iperf.pid"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "bubble $p-b: bridge br0 198.18.30.1/24; containers $p-c1, $p-c2"
for ns in b c1 c2; do ip netns add "$p-$ns"; ip -n "$p-$ns" link set lo up; done
ip -n "$p-b" link add br0 type bridge
ip -n "$p-b" link set br0 up
ip -n "$p-b" addr add 198.18.30.1/24 dev br0

step "c1 attached tap-to-tap (virtio-net header + offloads)"
ip netns exec "$p-b" "$daemon" --netns "$p-c1" --bubble-tap "${p}1" --bridge br0 &
pids+=($!)
wait_for "tap0 in c1" link_is_up "$p-c1" tap0
ip -n "$p-c1" addr add 198.18.30.2/24 dev tap0

step "c2 attached by socket mode (server in the bubble, client in the container)"
ip netns exec "$p-b" "$daemon" --mode server --socket "/tmp/$p.sock" --tap "${p}2" --bridge br0 &
pids+=($!)
ip netns exec "$p-c2" "$daemon" --mode client --socket "/tmp/$p.sock" --tap tap0 &
pids+=($!)
wait_for "tap0 in c2" link_is_up "$p-c2" tap0
ip -n "$p-c2" addr add 198.18.30.3/24 dev tap0

step "ping c1 -> c2 and c2 -> c1"
ip netns exec "$p-c1" ping -c 3 -i 0.2 198.18.30.3
ip netns exec "$p-c2" ping -c 3 -i 0.2 198.18.30.2

step "iperf3 c1 -> c2 (3 s)"
ip netns exec "$p-c2" iperf3 -s -D -I "/tmp/$p.iperf.pid" >/dev/null
pids+=("$(wait_for_file "/tmp/$p.iperf.pid")")
ip netns exec "$p-c1" iperf3 -c 198.18.30.3 -t 3 | grep -E 'sender|receiver'

step "done: stopping the daemons removes their taps"
