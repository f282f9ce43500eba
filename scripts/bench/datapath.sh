#!/usr/bin/env bash
# Container-to-container data-path benchmark: a hand-made veth pair (the kernel reference)
# next to the endpoints hpk-netd builds through a real hook-driven attach (veth; tap with
# the bubble's hub; tap with a forwarder each), hpk-net-daemon tap-to-tap and socket mode
# (original and extended framing), in one run, alternating methods each round.
# Prints medians and the ratio to veth. Figures only: nothing here passes or fails.
#
# Latency is measured twice: the kernel answering pings sent 10 ms apart (every frame finds
# the forwarders asleep), and two processes exchanging UDP requests and replies back to
# back (sockperf ping-pong, as an RPC or MPI exchange does), with the forwarders' CPU per
# thousand exchanges.
#
#   scripts/bench/datapath.sh [-r ROUNDS] [-t SECONDS] [-m "1500 9000 65520"] [-M "METHODS"]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

rounds=3 secs=3 mtus="1500 9000 65520"
methods="veth netd-veth netd-tap netd-tap-poll netd-tap-own tap tap-nopoll sock-orig sock-ext"
while getopts "r:t:m:M:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    t) secs=$OPTARG ;;
    m) mtus=$OPTARG ;;
    M) methods=veth  # the reference is always measured
       for m in $OPTARG; do [ "$m" = veth ] || methods+=" $m"; done ;;
    *) echo "usage: $0 [-r ROUNDS] [-t SECONDS] [-m MTUS] [-M METHODS]" >&2; exit 2 ;;
    esac
done

daemon=$(bench_binary hpk-net-daemon)
netd=$(bench_binary hpk-netd)
hook=$(bench_binary hpk-hook)
p=hb$(printf '%04x' $((RANDOM)))
declare -A pids=()   # method -> daemon pids

cleanup() {
    for m in $methods; do
        for pid in ${pids[$m]:-}; do kill "$pid" 2>/dev/null || true; done
    done
    wait 2>/dev/null || true
    for m in $methods; do
        for ns in b c1 c2; do ip netns del "$p-$m-$ns" 2>/dev/null || true; done
    done
    rm -rf /tmp/$p-*.sock /tmp/$p-netd-*
}
trap cleanup EXIT

own_netns() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }

# One bubble with a bridge and two containers per method, so rounds can alternate.
setup() {
    local m=$1 mtu=$2 n
    for ns in b c1 c2; do ip netns add "$p-$m-$ns"; ip -n "$p-$m-$ns" link set lo up; done
    pids[$m]=""
    if [ "${m#netd-}" != "$m" ]; then
        # hpk-netd owns this bubble: its bridge gets .1, containers .2 and .3 in turn.
        local d=/tmp/$p-$m kind=${m#netd-} hub=true poll=()
        case $kind in
        tap-own) kind=tap hub=false ;;
        tap-poll) kind=tap poll=(--busy-poll-us 20000) ;;  # above the pings' 10 ms gap
        esac
        rm -rf "$d"; mkdir -p "$d"
        printf 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.20.1/24\nFLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' "$mtu" >"$d/subnet.env"
        ip netns exec "$p-$m-b" "$netd" run --endpoint "$kind" --tap-hub "$hub" --state-dir "$d/state" --socket "$d/netd.sock" \
            --subnet-file "$d/subnet.env" "${poll[@]}" 2>"$d/netd.log" &
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
        netd-*)
            # A real hook-driven attach: the container is a process in its own namespace.
            ip netns exec "$c" sleep 3600 &
            local sleeper=$!
            pids[$m]+=" $sleeper"
            wait_for "$c's process" own_netns "$sleeper"
            echo "{\"ociVersion\":\"1.0.2\",\"id\":\"c$n\",\"status\":\"creating\",\"pid\":$sleeper,\"bundle\":\"\"}" |
                ip netns exec "$p-$m-b" "$hook" createRuntime --socket "/tmp/$p-$m/netd.sock" ;;
        tap|tap-nopoll)
            local poll=()
            [ "$m" = tap-nopoll ] && poll=(--busy-poll-us 0)
            ip netns exec "$p-$m-b" "$daemon" --netns "$c" --bubble-tap "$port" --bridge br0 --mtu "$mtu" "${poll[@]}" 2>/dev/null &
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
        [ "${m#netd-}" != "$m" ] || ip -n "$c" addr add "198.18.20.$((n + 1))/24" dev tap0
    done
    if [ "${m#netd-}" != "$m" ]; then
        # The forwarders hpk-netd started (one hub for both, or one each) count as this method's.
        pids[$m]+=" $("$netd" status --socket "/tmp/$p-$m/netd.sock" --json |
            jq -r '[.endpoints[].forwarder_pid | select(. > 0)] | unique | .[]')"
    fi
    wait_for "$m path ready" ip netns exec "$p-$m-c1" ping -c1 -W1 198.18.20.3
    ip netns exec "$p-$m-c2" iperf3 -s -D -I "/tmp/$p-$m.iperf.pid" >/dev/null
    pids[$m]+=" $(wait_for_file "/tmp/$p-$m.iperf.pid")"
    ip netns exec "$p-$m-c2" sockperf server -i 198.18.20.3 >/dev/null 2>&1 &
    pids[$m]+=" $!"
}

teardown() {
    local m=$1
    for pid in ${pids[$m]}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${pids[$m]}; do while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done; done
    pids[$m]=""
    for ns in b c1 c2; do ip netns del "$p-$m-$ns"; done
    rm -rf /tmp/$p-*.sock "/tmp/$p-$m.iperf.pid" "/tmp/$p-$m"
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
row='%-6s %-13s %7s %6s %7s %6s %7s %6s %7s %6s %8s %8s %8s %8s %8s\n'
# shellcheck disable=SC2059 # the format is the table's
printf "$row" MTU method Gbit/s x_veth RTT_ms x_veth p50_ms x_veth RR_ms x_veth CPU%ping CPUs/GB CPUs/kRR RSS_KiB PrivKiB
for mtu in $mtus; do
    for m in $methods; do setup "$m" "$mtu"; done
    # Sanity: hpk-netd built the endpoints each method names: kind, and one hub for both
    # tap endpoints or a forwarder each.
    has() { case " $methods " in *" $1 "*) ;; *) return 1 ;; esac; }
    for m in netd-veth netd-tap netd-tap-poll netd-tap-own; do
        has "$m" || continue
        want=${m#netd-} want=${want%-own} want=${want%-poll}
        got=$("$netd" status --socket "/tmp/$p-$m/netd.sock" --json |
            jq -r '[.endpoints[].kind] | unique | join(",")' 2>/dev/null || echo none)
        [ "$got" = "$want" ] || echo "WARNING: $m: hpk-netd's endpoints are $got, not $want" >&2
    done
    n_fwd() { "$netd" status --socket "/tmp/$p-$1/netd.sock" --json | jq '[.endpoints[].forwarder_pid] | unique | length'; }
    for m in netd-tap netd-tap-poll; do
        ! has $m || [ "$(n_fwd $m)" = 1 ] || echo "WARNING: $m's two endpoints do not share one hub" >&2
    done
    ! has netd-tap-own || [ "$(n_fwd netd-tap-own)" = 2 ] || echo "WARNING: netd-tap-own's endpoints do not have a forwarder each" >&2
    declare -A gbps=() rtt=() p50=() pingcpu=() cpu=() rr=() rrcpu=()
    for r in $(seq "$rounds"); do
        for m in $methods; do
            c0=$(daemon_cpu "$m")
            out=$(ip netns exec "$p-$m-c1" iperf3 -c 198.18.20.3 -t "$secs" -J)
            c1=$(daemon_cpu "$m")
            bits=$(jq '.end.sum_received.bits_per_second' <<<"$out")
            bytes=$(jq '.end.sum_received.bytes' <<<"$out")
            gbps[$m]+=" $(awk -v b="$bits" 'BEGIN{printf "%.3f", b/1e9}')"
            cpu[$m]+=" $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v by="$bytes" 'BEGIN{printf "%.3f", (t/hz)/(by/1e9)}')"
            # ping's mean, and the median ping: the mean of a round moves with a few VM
            # hiccups, the median shows the usual round trip.
            c0=$(daemon_cpu "$m") t0=$(date +%s%N)
            out=$(ip netns exec "$p-$m-c1" ping -c 100 -i 0.01 198.18.20.3)
            c1=$(daemon_cpu "$m") t1=$(date +%s%N)
            pingcpu[$m]+=" $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v ns=$((t1 - t0)) 'BEGIN{printf "%.1f", 100 * (t/hz) / (ns/1e9)}')"
            rtt[$m]+=" $(awk -F/ '/^rtt/{print $5}' <<<"$out")"
            mapfile -t pings < <(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out")
            p50[$m]+=" $(median "${pings[@]}")"
            c0=$(daemon_cpu "$m")
            out=$(ip netns exec "$p-$m-c1" sockperf ping-pong -i 198.18.20.3 -t "$secs" 2>&1)
            c1=$(daemon_cpu "$m")
            # sockperf reports half the round trip; its percentiles are per exchange.
            rr[$m]+=" $(awk '/percentile 50.000/{printf "%.3f", 2 * $NF / 1000}' <<<"$out")"
            n=$(sed -n 's/.*ReceivedMessages=\([0-9]*\).*/\1/p' <<<"$out")
            rrcpu[$m]+=" $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN{printf "%.3f", (t/hz)/(n/1000)}')"
        done
    done
    # Sanity: the hub handed the traffic between its two containers past the bridge (the
    # bubble taps saw a sliver of what status counts), the forwarder-each pairs did not.
    bridged_share() {
        local st counted bridged=0 port
        st=$("$netd" status --socket "/tmp/$p-$1/netd.sock" --json)
        counted=$(jq '[.endpoints[].counters.from_container_bytes] | add' <<<"$st")
        for port in $(jq -r '.endpoints[].bubble_tap' <<<"$st"); do
            bridged=$((bridged + $(ip -n "$p-$1-b" -j -s link show dev "$port" | jq '.[0].stats64.rx.bytes')))
        done
        awk -v b="$bridged" -v c="$counted" 'BEGIN{ printf "%d", (c > 0 ? 100 * b / c : 100) }'
    }
    for m in netd-tap netd-tap-poll; do
        ! has $m || [ "$(bridged_share $m)" -lt 10 ] ||
            echo "WARNING: $m's traffic crossed the bridge: the hub did not hand it over" >&2
    done
    ! has netd-tap-own || [ "$(bridged_share netd-tap-own)" -ge 90 ] ||
        echo "WARNING: netd-tap-own's traffic did not cross the bridge" >&2
    # Sanity: the hub told to poll through the gaps kept a CPU busy while the pings lasted.
    if has netd-tap-poll; then
        busy=$(median ${pingcpu[netd-tap-poll]})
        awk -v c="$busy" 'BEGIN { exit !(c >= 50) }' ||
            echo "WARNING: netd-tap-poll's hub slept between pings (${busy} % of a CPU)" >&2
    fi
    ref_g=$(median ${gbps[veth]}) ref_r=$(median ${rtt[veth]}) ref_rr=$(median ${rr[veth]})
    ref_p=$(median ${p50[veth]})
    for m in $methods; do
        g=$(median ${gbps[$m]}) l=$(median ${rtt[$m]}) q=$(median ${rr[$m]}) l50=$(median ${p50[$m]})
        if [ "$m" = veth ] || [ "$m" = netd-veth ]; then pc=- c=- qc=- rss=- priv=-; else
            pc=$(printf %.1f "$(median ${pingcpu[$m]})") c=$(median ${cpu[$m]}) qc=$(median ${rrcpu[$m]})
            read -r rss priv < <(daemon_memory ${pids[$m]})
        fi
        # shellcheck disable=SC2059
        printf "$row" "$mtu" "$m" "$g" "$(ratio "$g" "$ref_g")" "$l" "$(ratio "$l" "$ref_r")" \
            "$l50" "$(ratio "$l50" "$ref_p")" "$q" "$(ratio "$q" "$ref_rr")" "$pc" "$c" "$qc" "$rss" "$priv"
    done
    for m in $methods; do teardown "$m"; done
done
cat <<EOF

x_veth: throughput and RTT as a multiple of the veth pair's in the same round set.
RTT_ms: mean of 100 pings 10 ms apart, answered by the kernel (as ping reports it);
p50_ms: the median of those pings (ping prints whole microseconds); RR_ms: median round trip of UDP
requests and replies between two processes, back to back (sockperf ping-pong), where the
forwarders' polling after traffic finds the next request; CPUs/kRR: the forwarders' CPU
seconds per thousand such exchanges. CPU%ping: the forwarders' CPU while the pings
last, in % of one CPU (what polling through the gaps between pings costs).
CPUs/GB: CPU seconds of all forwarders on the path per GB moved (veth: in the kernel).
RSS_KiB: largest resident set of one forwarder; PrivKiB: its private dirty memory, the
part that really grows with the number of containers (code and libc pages are shared).
netd-veth, netd-tap, netd-tap-own: endpoints hpk-netd built through a hook-driven attach:
a veth pair; a tap pair served by the bubble's hub (one forwarder thread for both); the
same with hpk-netd's --busy-poll-us 20000 (netd-tap-poll: the hub polls through the 10 ms
between pings, so none finds it asleep); a tap pair with a forwarder each. tap: a hand-started hpk-net-daemon per container (polling
100 us after traffic, yielding the CPU); tap-nopoll: the same with --busy-poll-us 0.
sock-orig: socket mode in the original tool's framing; sock-ext: two hpk-net-daemons that
agreed on the extended framing (virtio-net header and offloads over the socket).
EOF
