#!/usr/bin/env bash
# Hook and container start-up benchmark, per endpoint kind (veth, tap, socket): start and
# stop of a runc container and a whole `runc run` of busybox `true`, with and without our
# hooks; the hook's own wall time (attach and detach),
# and throughput/RTT between two runc containers in one bubble next to two namespaces
# joined by veth on a bridge.
# Figures only: nothing here passes or fails.
#
#   scripts/bench/hooks.sh [-n RUNS] [-t SECONDS]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

runs=20 secs=3
while getopts "n:t:" opt; do
    case $opt in
    n) runs=$OPTARG ;;
    t) secs=$OPTARG ;;
    *) echo "usage: $0 [-n RUNS] [-t SECONDS]" >&2; exit 2 ;;
    esac
done

hpk_binaries
scratch hk
bubble=$p-b
pids=()
kinds=(veth tap socket)
cleanup() {
    for id in $(in_bubble runc --root "$dir/runc" list -q 2>/dev/null); do
        in_bubble runc --root "$dir/runc" delete --force "$id" >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "$bubble" "$p-v1" "$p-v2" "$p-vb"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

# runc needs the host's /sys (cgroups): enter with nsenter, not `ip netns exec`.
in_bubble() { nsenter --net="/run/netns/$bubble" "$@"; }
now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.2f", (b-a)/1e6}'; }

ip netns add "$bubble"
ip -n "$bubble" link set lo up
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n' >"$dir/subnet.env"
nsenter --net="/run/netns/$bubble" "$netd" run --state-dir "$dir/state" --socket "$dir/netd.sock" --subnet-file "$dir/subnet.env" >/dev/null 2>"$dir/netd.log" &
pids+=($!)
wait_for "hpk-netd" test -S "$dir/netd.sock"

mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev"
cp /bin/busybox "$dir/rootfs/bin/"
for a in sh true sleep; do ln -s busybox "$dir/rootfs/bin/$a"; done
make_bundle() { # NAME HOOKS(yes|no) ARGS-JSON [ENDPOINT-KIND]
    mkdir -p "$dir/$1"
    runc spec --bundle "$dir/$1"
    local hooks='{}'
    [ "$2" = yes ] && hooks=$(jq -n --arg h "$hook" --arg s "$dir/netd.sock" \
        '{createRuntime:[{path:$h,args:["hpk-hook","createRuntime","--socket",$s]}],
          poststop:[{path:$h,args:["hpk-hook","poststop","--socket",$s]}]}')
    jq --arg root "$dir/rootfs" --argjson args "$3" --argjson hooks "$hooks" --arg kind "${4:-auto}" \
        '.process.terminal=false | .process.args=$args | .root={path:$root,readonly:true} | .hooks=$hooks
         | .annotations={"io.hpktainer.endpoint":$kind}' \
        "$dir/$1/config.json" >"$dir/$1/c.json"
    mv "$dir/$1/c.json" "$dir/$1/config.json"
}
make_bundle plain no '["true"]'
make_bundle sleeper-plain no '["sleep","600"]'
for k in "${kinds[@]}"; do
    make_bundle "hooked-$k" yes '["true"]' "$k"
    make_bundle "sleeper-$k" yes '["sleep","600"]' "$k"
done

no_endpoints() { "$netd" status --socket "$dir/netd.sock" --json | jq -e '.endpoints == []' >/dev/null; }

# 1. Each round, without hooks and with them for each kind, alternating: the start of a
# sleeping container (`runc run -d`: returns once it runs, so only createRuntime is in
# it), its stop (`runc delete --force`: kill, wait, poststop), and a whole `runc run` of
# `true`. Every run leaves work to the kernel after it returns (the container's network
# namespace and its links are destroyed asynchronously; a poststop answers at once and the
# links go in the background): let that settle before the next run, or it lands in the
# next run's time (a veth run then looked faster than a run without hooks).
settle() { wait_for "teardown" no_endpoints; sleep 0.25; }
declare -A start stop whole attach detach
for i in $(seq "$runs"); do
    for k in plain "${kinds[@]}"; do
        sleeper=sleeper-$k whole_bundle=hooked-$k
        [ "$k" = plain ] && whole_bundle=plain
        t=$(now_ns); in_bubble runc --root "$dir/runc" run -d --bundle "$dir/$sleeper" "s$k$i" </dev/null >/dev/null 2>&1
        start[$k]+=" $(ms_since "$t")"
        t=$(now_ns); in_bubble runc --root "$dir/runc" delete --force "s$k$i" >/dev/null
        stop[$k]+=" $(ms_since "$t")"
        settle
        t=$(now_ns); in_bubble runc --root "$dir/runc" run --bundle "$dir/$whole_bundle" "w$k$i" </dev/null >/dev/null
        whole[$k]+=" $(ms_since "$t")"
        settle
    done
done

# 2. The hook's own wall time, attach and detach of a live process in its own namespace.
unshare --net sleep 600 >/dev/null &
target=$!
pids+=("$target")
own_netns() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }
wait_for "target namespace" own_netns "$target"
for i in $(seq "$runs"); do
    for k in "${kinds[@]}"; do
        state="{\"ociVersion\":\"1.0.2\",\"id\":\"bench-$k$i\",\"status\":\"creating\",\"pid\":$target,\"bundle\":\"$dir/hooked-$k\"}"
        t=$(now_ns); echo "$state" | in_bubble "$hook" createRuntime --socket "$dir/netd.sock"; attach[$k]+=" $(ms_since "$t")"
        t=$(now_ns); echo "$state" | in_bubble "$hook" poststop --socket "$dir/netd.sock"; detach[$k]+=" $(ms_since "$t")"
        # The links go in the background; the next round reuses this namespace.
        settle
    done
done

printf '\nContainer start-up with hpk-hook (%s rounds, medians; added: median of the rounds'"'"' differences; kernel %s, %s cores)\n\n' "$runs" "$(uname -r)" "$(nproc)"
# shellcheck disable=SC2086  # word-split the accumulated figures
base_start=$(median ${start[plain]}) base_stop=$(median ${stop[plain]}) base_whole=$(median ${whole[plain]})
# What the hooks add: the median of each round's difference to the run without hooks just
# before it, which cancels the slow drift of this kind of machine better than a difference
# of medians.
added() { # WITH-LIST WITHOUT-LIST (space-separated, one figure per round)
    local -a with without diffs=()
    read -ra with <<<"$1"
    read -ra without <<<"$2"
    for i in "${!with[@]}"; do
        diffs+=("$(awk -v x="${with[$i]}" -v y="${without[$i]}" 'BEGIN{print x - y}')")
    done
    awk -v m="$(median "${diffs[@]}")" 'BEGIN{printf "%+.2f", m}'
}
printf '%-9s %10s %8s %10s %8s %10s %8s %12s %12s %9s\n' kind "start ms" added "stop ms" added "run ms" added \
    "hook attach" "hook detach" attached
printf '%-9s %10s %8s %10s %8s %10s %8s %12s %12s %9s\n' "no hooks" "$base_start" - "$base_stop" - "$base_whole" - - - -
for k in "${kinds[@]}"; do
    # shellcheck disable=SC2086  # word-split the accumulated figures
    s=$(median ${start[$k]}) st=$(median ${stop[$k]}) w=$(median ${whole[$k]}) a=$(median ${attach[$k]}) d=$(median ${detach[$k]})
    # Sanity: every hooked container of this kind was attached as this kind.
    n=$(grep -cE "attached id=\"?[sw]${k}[0-9]+\"? .*kind=$k" "$dir/netd.log" || true)
    printf '%-9s %10s %8s %10s %8s %10s %8s %12s %12s %9s\n' "$k" "$s" "$(added "${start[$k]}" "${start[plain]}")" \
        "$st" "$(added "${stop[$k]}" "${stop[plain]}")" "$w" "$(added "${whole[$k]}" "${whole[plain]}")" "$a" "$d" "$n/$((2 * runs))"
    [ "$n" -ge $((2 * runs)) ] ||
        echo "WARNING: hpk-netd attached $n of $((2 * runs)) $k containers as $k: the $k figures are not what they claim"
    awk -v a="$(added "${whole[$k]}" "${whole[plain]}")" 'BEGIN{exit !(a < 0.5)}' &&
        echo "WARNING: the $k hooks add under 0.5 ms to a runc run: this run cannot see their cost (a busy machine?)"
done
# Standalone, each hook call also pays nsenter's start and the shell's timing around it.

# 3. Container to container: two runc containers per kind vs two veth namespaces on a bridge.
for k in "${kinds[@]}"; do
    for n in 1 2; do in_bubble runc --root "$dir/runc" run -d --bundle "$dir/sleeper-$k" "$k$n" </dev/null >/dev/null 2>&1; done
done
cpid() { in_bubble runc --root "$dir/runc" state "$1" | jq .pid; }
address() { "$netd" status --socket "$dir/netd.sock" --json | jq -r --arg id "$1" '.endpoints[] | select(.id==$id) | .address'; }
ip netns add "$p-vb"; ip netns add "$p-v1"; ip netns add "$p-v2"
ip -n "$p-vb" link add br0 type bridge; ip -n "$p-vb" link set br0 up
for n in 1 2; do
    ip link add "${p}v$n" netns "$p-vb" type veth peer name eth0 netns "$p-v$n"
    ip -n "$p-vb" link set "${p}v$n" master br0 up
    ip -n "$p-v$n" link set eth0 up
    ip -n "$p-v$n" link set lo up
    ip -n "$p-v$n" addr add "198.18.40.$n/24" dev eth0
done
ip netns exec "$p-v2" iperf3 -s -D -I "$dir/v.iperf.pid" >/dev/null
pids+=("$(wait_for_file "$dir/v.iperf.pid")")
wait_for "veth path" ip netns exec "$p-v1" ping -c1 -W1 198.18.40.2
vg=() vr=()
for r in 1 2 3; do
    vg+=("$(ip netns exec "$p-v1" iperf3 -c 198.18.40.2 -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
    vr+=("$(ip netns exec "$p-v1" ping -q -c 20 -i 0.01 198.18.40.2 | awk -F/ '/^rtt/{print $5}')")
done
vgm=$(median "${vg[@]}") vl=$(median "${vr[@]}")
printf '\nTwo runc containers in one bubble (MTU 1500, 3 x %ss iperf3, medians)\n\n' "$secs"
printf '%-32s %10s %8s %10s %8s\n' path Gbit/s x_veth RTT_ms x_veth
printf '%-32s %10.3f %8s %10s %8s\n' "veth + bridge (kernel)" "$vgm" 1.00 "$vl" 1.00
for k in "${kinds[@]}"; do
    c1=/proc/$(cpid "${k}1")/ns/net c2=/proc/$(cpid "${k}2")/ns/net a2=$(address "${k}2")
    nsenter --net="$c2" iperf3 -s -D -I "$dir/$k.iperf.pid" >/dev/null
    pids+=("$(wait_for_file "$dir/$k.iperf.pid")")
    wait_for "$k path" nsenter --net="$c1" ping -c1 -W1 "$a2"
    cg=() cr=()
    for r in 1 2 3; do
        cg+=("$(nsenter --net="$c1" iperf3 -c "$a2" -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
        cr+=("$(nsenter --net="$c1" ping -q -c 20 -i 0.01 "$a2" | awk -F/ '/^rtt/{print $5}')")
    done
    g=$(median "${cg[@]}") l=$(median "${cr[@]}")
    printf '%-32s %10.3f %8s %10s %8s\n' "runc + hooks, $k endpoint" "$g" "$(ratio "$g" "$vgm")" "$l" "$(ratio "$l" "$vl")"
done
