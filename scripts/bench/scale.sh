#!/usr/bin/env bash
# Scale: 250 containers (the addresses of a /24) in one bubble, per endpoint kind. Each
# "container" is a process in a network namespace of its own; hpk-hook attaches them in
# concurrent batches and detaches them again. Prints the slowest and median attach,
# hpk-netd's memory and idle CPU with all of them attached, per-container memory (a
# forwarder's private memory for tap: the hub's shared out, or a forwarder's own; nothing
# for veth), the forwarders' idle CPU, and the time to detach them all.
# Figures only: nothing here passes or fails.
#
#   scripts/bench/scale.sh [-n CONTAINERS] [-b BATCH]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

count=250 batch=10
while getopts "n:b:" opt; do
    case $opt in
    n) count=$OPTARG ;;
    b) batch=$OPTARG ;;
    *) echo "usage: $0 [-n CONTAINERS] [-b BATCH]" >&2; exit 2 ;;
    esac
done

hpk_binaries
scratch hx
bubble=$p-b
pids=() sleepers=()
cleanup() {
    for pid in "${sleepers[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$bubble" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$bubble"
ip -n "$bubble" link set lo up
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n' >"$dir/subnet.env"
status() { "$netd" status --socket "$dir/netd.sock" --json; }
in_use() { status | jq '.addresses_in_use'; }

# The containers: sleepers in network namespaces of their own.
for i in $(seq "$count"); do
    unshare --net sleep 3600 &
    sleepers+=($!)
done
own_netns() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }
for pid in "${sleepers[@]}"; do wait_for "namespace of $pid" own_netns "$pid"; done

# hook STAGE ID PID: one hook call; prints its wall time in ms for attaches.
hook_call() {
    local state="{\"ociVersion\":\"1.0.2\",\"id\":\"$2\",\"status\":\"creating\",\"pid\":$3,\"bundle\":\"\"}"
    local t0 t1
    t0=$(date +%s%N)
    echo "$state" | nsenter --net="/run/netns/$bubble" "$hook" "$1" --socket "$dir/netd.sock" || echo "FAILED $1 $2" >&2
    t1=$(date +%s%N)
    [ "$1" = poststop ] || awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f\n", (b-a)/1e6}'
}
export -f hook_call
export hook dir bubble

# CPU of a process and of the children it has reaped (hpk-netd's iptables checks).
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

printf '\n%s containers in one bubble, hook-driven, %s at a time (kernel %s, %s cores)\n\n' \
    "$count" "$batch" "$(uname -r)" "$(nproc)"
printf '%-8s %10s %10s %12s %12s %14s %13s %12s %14s\n' kind "attach p50" "attach max" "attach all s" \
    "netd RSS MiB" "netd idle CPU%" "fwd idle CPU%" "per ctr KiB" "detach all s"
for variant in veth tap tap-own; do
    kind=${variant%-own} hub=true
    [ "$variant" = tap-own ] && hub=false
    nsenter --net="/run/netns/$bubble" "$netd" run --endpoint "$kind" --tap-hub "$hub" --state-dir "$dir/state-$variant" \
        --socket "$dir/netd.sock" --subnet-file "$dir/subnet.env" >/dev/null 2>"$dir/netd-$variant.log" &
    netd_pid=$!
    pids+=("$netd_pid")
    wait_for "hpk-netd" test -S "$dir/netd.sock"
    before_rss=$(kib "$netd_pid" VmRSS)

    start=$(date +%s%N)
    for i in $(seq 0 $((count - 1))); do echo "c$i ${sleepers[$i]}"; done |
        xargs -P "$batch" -n 2 bash -c 'hook_call createRuntime "$0" "$1"' >"$dir/attach-$variant.ms"
    attach_all=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN{printf "%.2f", (b-a)/1e9}')
    attached=$(in_use)
    [ "$attached" -eq "$count" ] || echo "WARNING: $attached of $count attached ($variant)" >&2
    # Sanity: the endpoints are of the kind measured.
    other=$(status | jq --arg k "$kind" '[.endpoints[] | select(.kind != $k)] | length')
    [ "$other" -eq 0 ] || echo "WARNING: $other endpoints are not $kind" >&2

    # The forwarders: the bubble's hub (one for all), or one per container.
    mapfile -t fwds < <(status | jq -r '[.endpoints[].forwarder_pid | select(. != 0)] | unique | .[]')
    if [ "$variant" = tap ] && [ "${#fwds[@]}" -ne 1 ]; then echo "WARNING: ${#fwds[@]} forwarders, not one hub" >&2; fi
    if [ "$variant" = tap-own ] && [ "${#fwds[@]}" -ne "$count" ]; then echo "WARNING: ${#fwds[@]} forwarders for $count containers" >&2; fi
    fwd_ticks() { local t=0 f; for f in "${fwds[@]}"; do t=$((t + $(cpu_ticks "$f"))); done; echo "$t"; }
    sleep 1
    # Over two of hpk-netd's 5 s firewall ticks (the first after the attaches runs a check).
    t0=$(cpu_ticks "$netd_pid") f0=$(fwd_ticks)
    sleep 10
    hz=$(getconf CLK_TCK)
    idle=$(awk -v t="$(( $(cpu_ticks "$netd_pid") - t0 ))" -v hz="$hz" 'BEGIN{printf "%.2f", 100 * t / hz / 10}')
    fidle=$(awk -v t="$(( $(fwd_ticks) - f0 ))" -v hz="$hz" 'BEGIN{printf "%.2f", 100 * t / hz / 10}')
    [ "${#fwds[@]}" -gt 0 ] || fidle=-
    rss=$(awk -v k="$(kib "$netd_pid" VmRSS)" 'BEGIN{printf "%.1f", k / 1024}')
    # Per container: the forwarders' private memory shared out (tap), or what hpk-netd
    # grew by (veth).
    per=$(for fw in "${fwds[@]}"; do
        awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$fw/smaps_rollup"
    done | awk -v n="$count" '{s += $1} END { if (NR) printf "%.0f", s / n; else print "" }')
    [ -n "$per" ] || per=$(awk -v a="$(kib "$netd_pid" VmRSS)" -v b="$before_rss" -v n="$count" 'BEGIN{printf "%.1f (netd)", (a - b) / n}')

    start=$(date +%s%N)
    for i in $(seq 0 $((count - 1))); do echo "c$i ${sleepers[$i]}"; done |
        xargs -P "$batch" -n 2 bash -c 'hook_call poststop "$0" "$1"'
    wait_for_empty() { [ "$(in_use)" -eq 0 ] && [ "$(status | jq '.endpoints | length')" -eq 0 ]; }
    end=$((SECONDS + 60))
    until wait_for_empty; do [ $SECONDS -lt $end ] || { echo "WARNING: endpoints left ($variant)" >&2; break; }; sleep 0.05; done
    detach_all=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN{printf "%.2f", (b-a)/1e9}')
    left=$(ip -n "$bubble" -o link | grep -c ' hpk[0-9a-f]\{12\}' || true)
    [ "$left" -eq 0 ] || echo "WARNING: $left bubble links left ($variant)" >&2

    mapfile -t ms <"$dir/attach-$variant.ms"
    printf '%-8s %10s %10s %12s %12s %14s %13s %12s %14s\n' "$variant" "$(median "${ms[@]}")" \
        "$(sort -g "$dir/attach-$variant.ms" | tail -1)" "$attach_all" "$rss" "$idle" "$fidle" "$per" "$detach_all"
    kill "$netd_pid"
    wait "$netd_pid" 2>/dev/null || true
done
echo "attach: hook wall time incl. nsenter and the hook's own start; idle CPU over 10 s with every container attached (hpk-netd's includes its iptables checks)"
echo "tap: served by the bubble's hub (one forwarder thread); tap-own: one hpk-net-daemon per container"
