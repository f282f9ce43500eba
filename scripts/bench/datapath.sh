#!/usr/bin/env bash
# Container-to-container data-path benchmark: a hand-made veth pair (the kernel reference)
# next to the veth endpoint hpk-netd builds through a real hook-driven attach (netd-veth),
# hpk-net-daemon tap-to-tap and socket mode (original and extended framing), in one run,
# alternating methods each round.
# Prints medians and the ratio to veth. Figures only: nothing here passes or fails.
#
#   scripts/bench/datapath.sh [-r ROUNDS] [-t SECONDS] [-m "1500 9000 65520"]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

rounds=3 secs=3 mtus="1500 9000 65520"
while getopts "r:t:m:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    t) secs=$OPTARG ;;
    m) mtus=$OPTARG ;;
    *) echo "usage: $0 [-r ROUNDS] [-t SECONDS] [-m MTUS]" >&2; exit 2 ;;
    esac
done

daemon=$(bench_binary hpk-net-daemon)
netd=$(bench_binary hpk-netd)
hook=$(bench_binary hpk-hook)
p=hb$(printf '%04x' $((RANDOM)))
methods="veth netd-veth tap tap-poll sock-orig sock-ext"
declare -A pids=()   # method -> daemon pids

cleanup() {
    for m in $methods; do
        for pid in ${pids[$m]:-}; do kill "$pid" 2>/dev/null || true; done
    done
    wait 2>/dev/null || true
    for m in $methods; do
        for ns in b c1 c2; do ip netns del "$p-$m-$ns" 2>/dev/null || true; done
    done
    rm -rf /tmp/$p-*.sock /tmp/$p-netd
}
trap cleanup EXIT

own_netns() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }

# One bubble with a bridge and two containers per method, so rounds can alternate.
setup() {
    local m=$1 mtu=$2 n
    for ns in b c1 c2; do ip netns add "$p-$m-$ns"; ip -n "$p-$m-$ns" link set lo up; done
    pids[$m]=""
    if [ "$m" = netd-veth ]; then
        # hpk-netd owns this bubble: its bridge gets .1, containers .2 and .3 in turn.
        local d=/tmp/$p-netd
        rm -rf "$d"; mkdir -p "$d"
        printf 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.20.1/24\nFLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' "$mtu" >"$d/subnet.env"
        ip netns exec "$p-$m-b" "$netd" run --endpoint veth --state-dir "$d/state" --socket "$d/netd.sock" \
            --subnet-file "$d/subnet.env" 2>"$d/netd.log" &
        pids[$m]+=" $!"
        wait_for "hpk-netd" test -S "$d/netd.sock"
    else
        ip -n "$p-$m-b" link add br0 type bridge
        ip -n "$p-$m-b" link set br0 mtu "$mtu" up
        ip -n "$p-$m-b" addr add 198.18.20.1/24 dev br0
    fi
    for n in 1 2; do
        local c=$p-$m-c$n port=$p$n
        case $m in
        veth)
            ip link add "$port" mtu "$mtu" netns "$p-$m-b" type veth peer name tap0 mtu "$mtu" netns "$c"
            ip -n "$p-$m-b" link set "$port" master br0 up
            ip -n "$c" link set tap0 up ;;
        netd-veth)
            # A real hook-driven attach: the container is a process in its own namespace.
            ip netns exec "$c" sleep 3600 &
            local sleeper=$!
            pids[$m]+=" $sleeper"
            wait_for "$c's process" own_netns "$sleeper"
            echo "{\"ociVersion\":\"1.0.2\",\"id\":\"c$n\",\"status\":\"creating\",\"pid\":$sleeper,\"bundle\":\"\"}" |
                ip netns exec "$p-$m-b" "$hook" createRuntime --socket "/tmp/$p-netd/netd.sock" ;;
        tap|tap-poll)
            local poll=0
            [ "$m" = tap-poll ] && poll=${BENCH_BUSY_POLL_US:-50}
            ip netns exec "$p-$m-b" "$daemon" --netns "$c" --bubble-tap "$port" --bridge br0 --mtu "$mtu" --busy-poll-us "$poll" 2>/dev/null &
            pids[$m]+=" $!" ;;
        sock-orig|sock-ext)
            local sock=/tmp/$p-$m-$n.sock framing=()
            [ "$m" = sock-orig ] && framing=(--original-framing)
            ip netns exec "$p-$m-b" "$daemon" --mode server --socket "$sock" --tap "$port" --bridge br0 --mtu "$mtu" 2>/dev/null &
            pids[$m]+=" $!"
            ip netns exec "$c" "$daemon" --mode client --socket "$sock" --tap tap0 --mtu "$mtu" "${framing[@]}" 2>/dev/null &
            pids[$m]+=" $!" ;;
        esac
        wait_for "tap0 up in $c" link_is_up "$c" tap0
        [ "$m" = netd-veth ] || ip -n "$c" addr add "198.18.20.$((n + 1))/24" dev tap0
    done
    wait_for "$m path ready" ip netns exec "$p-$m-c1" ping -c1 -W1 198.18.20.3
    ip netns exec "$p-$m-c2" iperf3 -s -D -I "/tmp/$p-$m.iperf.pid" >/dev/null
    pids[$m]+=" $(wait_for_file "/tmp/$p-$m.iperf.pid")"
}

teardown() {
    local m=$1
    for pid in ${pids[$m]}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${pids[$m]}; do while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done; done
    pids[$m]=""
    for ns in b c1 c2; do ip netns del "$p-$m-$ns"; done
    rm -rf /tmp/$p-*.sock "/tmp/$p-$m.iperf.pid" "/tmp/$p-netd"
}

# CPU seconds (user+system) used so far by the method's forwarders.
daemon_cpu() {
    local m=$1 total=0 pid
    for pid in ${pids[$m]}; do
        [ "$(cat /proc/$pid/comm 2>/dev/null)" = hpk-net-daemon ] || continue
        total=$((total + $(awk '{print $14 + $15}' /proc/$pid/stat)))
    done
    echo "$total"
}

printf '\nhpk-net-daemon data path, container to container through a bridge\n'
printf '%s rounds x %ss iperf3 TCP, medians; kernel %s, %s cores\n\n' "$rounds" "$secs" "$(uname -r)" "$(nproc)"
printf '%-7s %-10s %10s %8s %10s %8s %10s %9s %9s\n' MTU method Gbit/s x_veth RTT_ms x_veth CPUs/GB RSS_KiB PrivKiB
for mtu in $mtus; do
    for m in $methods; do setup "$m" "$mtu"; done
    # Sanity: hpk-netd built veth endpoints, and the path crosses them.
    kinds=$("$netd" status --socket "/tmp/$p-netd/netd.sock" --json | jq -r '[.endpoints[].kind] | unique | join(",")')
    [ "$kinds" = veth ] || echo "WARNING: hpk-netd's endpoints are $kinds, not veth" >&2
    declare -A gbps=() rtt=() cpu=()
    for r in $(seq "$rounds"); do
        for m in $methods; do
            c0=$(daemon_cpu "$m")
            out=$(ip netns exec "$p-$m-c1" iperf3 -c 198.18.20.3 -t "$secs" -J)
            c1=$(daemon_cpu "$m")
            bits=$(jq '.end.sum_received.bits_per_second' <<<"$out")
            bytes=$(jq '.end.sum_received.bytes' <<<"$out")
            gbps[$m]+=" $(awk -v b="$bits" 'BEGIN{printf "%.3f", b/1e9}')"
            cpu[$m]+=" $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v by="$bytes" 'BEGIN{printf "%.3f", (t/hz)/(by/1e9)}')"
            rtt[$m]+=" $(ip netns exec "$p-$m-c1" ping -q -c 20 -i 0.01 198.18.20.3 | awk -F/ '/^rtt/{print $5}')"
        done
    done
    ref_g=$(median ${gbps[veth]}) ref_r=$(median ${rtt[veth]})
    for m in $methods; do
        g=$(median ${gbps[$m]}) l=$(median ${rtt[$m]})
        if [ "$m" = veth ] || [ "$m" = netd-veth ]; then c=- rss=- priv=-; else
            c=$(median ${cpu[$m]})
            read -r rss priv < <(daemon_memory ${pids[$m]})
        fi
        printf '%-7s %-10s %10s %8s %10s %8s %10s %9s %9s\n' "$mtu" "$m" "$g" \
            "$(ratio "$g" "$ref_g")" "$l" "$(ratio "$l" "$ref_r")" "$c" "$rss" "$priv"
    done
    for m in $methods; do teardown "$m"; done
done
cat <<EOF

x_veth: throughput and RTT as a multiple of the veth pair's in the same round set.
CPUs/GB: CPU seconds of all forwarders on the path per GB moved (veth: in the kernel).
RSS_KiB: largest resident set of one forwarder; PrivKiB: its private dirty memory, the
part that really grows with the number of containers (code and libc pages are shared).
tap-poll: tap-to-tap with --busy-poll-us 50 (the forwarder spins 50 us after traffic).
sock-orig: socket mode in the original tool's framing; sock-ext: two hpk-net-daemons that
agreed on the extended framing (virtio-net header and offloads over the socket).
EOF
