#!/usr/bin/env bash
# Hook and container start-up benchmark: `runc run` of busybox `true` with and without our
# hooks, the hook's own wall time (attach and detach), and throughput/RTT between two runc
# containers in one bubble next to two namespaces joined by veth on a bridge.
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
cleanup() {
    for id in c1 c2; do in_bubble runc --root "$dir/runc" delete --force "$id" >/dev/null 2>&1 || true; done
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
make_bundle() { # NAME HOOKS(yes|no) ARGS-JSON
    mkdir -p "$dir/$1"
    runc spec --bundle "$dir/$1"
    local hooks='{}'
    [ "$2" = yes ] && hooks=$(jq -n --arg h "$hook" --arg s "$dir/netd.sock" \
        '{createRuntime:[{path:$h,args:["hpk-hook","createRuntime","--socket",$s]}],
          poststop:[{path:$h,args:["hpk-hook","poststop","--socket",$s]}]}')
    jq --arg root "$dir/rootfs" --argjson args "$3" --argjson hooks "$hooks" \
        '.process.terminal=false | .process.args=$args | .root={path:$root,readonly:true} | .hooks=$hooks' \
        "$dir/$1/config.json" >"$dir/$1/c.json"
    mv "$dir/$1/c.json" "$dir/$1/config.json"
}
make_bundle plain no '["true"]'
make_bundle hooked yes '["true"]'
make_bundle sleeper yes '["sleep","600"]'

no_endpoints() { "$netd" status --socket "$dir/netd.sock" --json | jq -e '.endpoints == []' >/dev/null; }

# 1. runc run of `true`, with and without hooks, alternating. A poststop answers at once
# and the taps go in the background: wait for that before the next run, or the kernel's
# teardown lands in the next (plain) run and hides the hooks' cost.
with=() without=()
for i in $(seq "$runs"); do
    t=$(now_ns); in_bubble runc --root "$dir/runc" run --bundle "$dir/plain" "p$i" </dev/null >/dev/null; without+=("$(ms_since "$t")")
    t=$(now_ns); in_bubble runc --root "$dir/runc" run --bundle "$dir/hooked" "h$i" </dev/null >/dev/null; with+=("$(ms_since "$t")")
    wait_for "teardown of h$i" no_endpoints
done
# Sanity: every hooked run was attached and detached by hpk-netd.
attached=$(grep -cE 'attached.*id="?h[0-9]' "$dir/netd.log" || true)
detached=$(grep -cE 'detached.*id="?h[0-9]' "$dir/netd.log" || true)

# 2. The hook's own wall time, attach and detach of a live process in its own namespace.
unshare --net sleep 600 >/dev/null &
target=$!
pids+=("$target")
own_netns() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }
wait_for "target namespace" own_netns "$target"
attach=() detach=()
for i in $(seq "$runs"); do
    state="{\"ociVersion\":\"1.0.2\",\"id\":\"bench$i\",\"status\":\"creating\",\"pid\":$target,\"bundle\":\"$dir/plain\"}"
    t=$(now_ns); echo "$state" | in_bubble "$hook" createRuntime --socket "$dir/netd.sock"; attach+=("$(ms_since "$t")")
    t=$(now_ns); echo "$state" | in_bubble "$hook" poststop --socket "$dir/netd.sock"; detach+=("$(ms_since "$t")")
    # The taps go in the background; the next round reuses this namespace.
    wait_for "teardown" no_endpoints
done

printf '\nContainer start-up with hpk-hook (%s runs each, medians; kernel %s, %s cores)\n\n' "$runs" "$(uname -r)" "$(nproc)"
printf '%-44s %10s\n' "runc run busybox true, no hooks (ms)" "$(median "${without[@]}")"
printf '%-44s %10s\n' "runc run busybox true, with hooks (ms)" "$(median "${with[@]}")"
printf '%-44s %10s\n' "  added by the hooks (ms)" "$(awk -v a="$(median "${with[@]}")" -v b="$(median "${without[@]}")" 'BEGIN{printf "%.2f", a-b}')"
# Standalone, each call also pays nsenter's start and the shell's timing around it.
printf '%-44s %10s\n' "hpk-hook createRuntime wall time (ms)" "$(median "${attach[@]}")"
printf '%-44s %10s\n' "hpk-hook poststop wall time (ms)" "$(median "${detach[@]}")"
added=$(awk -v a="$(median "${with[@]}")" -v b="$(median "${without[@]}")" 'BEGIN{print a-b}')
if [ "$attached" -lt "$runs" ] || [ "$detached" -lt "$runs" ]; then
    echo "WARNING: hpk-netd logged $attached attaches and $detached detaches for $runs hooked runs: the figures above are not what they claim"
elif awk -v a="$added" 'BEGIN{exit !(a < 0.5)}'; then
    echo "WARNING: the hooks add under 0.5 ms to a runc run: this run cannot see their cost (a busy machine?)"
fi

# 3. Container to container: two runc containers vs two veth namespaces on a bridge.
for id in c1 c2; do in_bubble runc --root "$dir/runc" run -d --bundle "$dir/sleeper" "$id" </dev/null >/dev/null 2>&1; done
cpid() { in_bubble runc --root "$dir/runc" state "$1" | jq .pid; }
c1=/proc/$(cpid c1)/ns/net c2=/proc/$(cpid c2)/ns/net
a2=$("$netd" status --socket "$dir/netd.sock" --json | jq -r '.endpoints[] | select(.id=="c2") | .address')
ip netns add "$p-vb"; ip netns add "$p-v1"; ip netns add "$p-v2"
ip -n "$p-vb" link add br0 type bridge; ip -n "$p-vb" link set br0 up
for n in 1 2; do
    ip link add "${p}v$n" netns "$p-vb" type veth peer name eth0 netns "$p-v$n"
    ip -n "$p-vb" link set "${p}v$n" master br0 up
    ip -n "$p-v$n" link set eth0 up
    ip -n "$p-v$n" link set lo up
    ip -n "$p-v$n" addr add "198.18.40.$n/24" dev eth0
done
nsenter --net="$c2" iperf3 -s -D -I "$dir/c.iperf.pid" >/dev/null
pids+=("$(wait_for_file "$dir/c.iperf.pid")")
ip netns exec "$p-v2" iperf3 -s -D -I "$dir/v.iperf.pid" >/dev/null
pids+=("$(wait_for_file "$dir/v.iperf.pid")")
wait_for "container path" nsenter --net="$c1" ping -c1 -W1 "$a2"
wait_for "veth path" ip netns exec "$p-v1" ping -c1 -W1 198.18.40.2
cg=() vg=() cr=() vr=()
for r in 1 2 3; do
    vg+=("$(ip netns exec "$p-v1" iperf3 -c 198.18.40.2 -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
    cg+=("$(nsenter --net="$c1" iperf3 -c "$a2" -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
    vr+=("$(ip netns exec "$p-v1" ping -q -c 20 -i 0.01 198.18.40.2 | awk -F/ '/^rtt/{print $5}')")
    cr+=("$(nsenter --net="$c1" ping -q -c 20 -i 0.01 "$a2" | awk -F/ '/^rtt/{print $5}')")
done
g=$(median "${cg[@]}") vgm=$(median "${vg[@]}") l=$(median "${cr[@]}") vl=$(median "${vr[@]}")
printf '\nTwo runc containers in one bubble (MTU 1500, 3 x %ss iperf3, medians)\n\n' "$secs"
printf '%-26s %10s %8s %10s %8s\n' path Gbit/s x_veth RTT_ms x_veth
printf '%-26s %10.3f %8s %10s %8s\n' "veth + bridge (kernel)" "$vgm" 1.00 "$vl" 1.00
printf '%-26s %10.3f %8s %10s %8s\n' "runc + hpk-hook + netd" "$g" "$(ratio "$g" "$vgm")" "$l" "$(ratio "$l" "$vl")"
