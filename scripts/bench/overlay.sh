#!/usr/bin/env bash
# Overlay benchmark: two hosts on a LAN bridge, etcd on the first, hpk-netd's etcd agent
# on both, a runc container on each; container to container across the hosts for each
# VTEP: flannel's kernel vxlan (the reference: what two rootful flannel hosts do) and
# hpk-netd's own userspace VTEP (`--underlay userspace`), plain, authenticated and
# encrypted with the cluster's key; next to host to host over the same LAN. Per path:
# iperf3 TCP (1 and 4 streams), ping RTT, sockperf ping-pong round trip (p50, p99: an RPC
# or MPI exchange), hpk-netd's CPU per GB. Also the time from `hpk-netd run` to a ready
# subnet (lease, flannel.1, routes, subnet.env). Figures only.
#
#   scripts/bench/overlay.sh [-t SECONDS] [-n STARTS] [-m "kernel userspace ..."]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

secs=3 starts=5 modes="kernel userspace userspace-auth userspace-encrypt"
while getopts "t:n:m:" opt; do
    case $opt in
    t) secs=$OPTARG ;;
    n) starts=$OPTARG ;;
    m) modes=$OPTARG ;;
    *) echo "usage: $0 [-t SECONDS] [-n STARTS] [-m MODES]" >&2; exit 2 ;;
    esac
done

hpk_binaries
scratch ho
pids=()
teardown() {
    for h in 1 2; do nsenter --net="/run/netns/$p-h$h" runc --root "$dir/h$h/runc" delete --force c$h >/dev/null 2>&1 || true; done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done; done
    pids=()
    for ns in lan h1 h2; do ip netns del "$p-$ns" 2>/dev/null || true; done
}
cleanup() { teardown; rm -rf "$dir"; }
trap cleanup EXIT

# The flags of each mode; the key is made per run, 0600.
flags() {
    case $1 in
    kernel) echo "--underlay kernel" ;;
    userspace) echo "--underlay userspace" ;;
    userspace-auth) echo "--underlay userspace --overlay-key $dir/overlay.key --overlay-encrypt false" ;;
    userspace-encrypt) echo "--underlay userspace --overlay-key $dir/overlay.key" ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
    esac
}
( umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/overlay.key"; echo >>"$dir/overlay.key" )

start_netd() { # HOST MODE
    # shellcheck disable=SC2046 # the mode's flags are words
    nsenter --net="/run/netns/$p-h$1" "$netd" run --subnet-source etcd --etcd-endpoints http://192.0.2.11:2379 --iface eth0 \
        --state-dir "$dir/h$1/state" --socket "$dir/h$1/netd.sock" --subnet-file "$dir/h$1/subnet.env" $(flags "$2") \
        >/dev/null 2>>"$dir/h$1/netd.log" &
    echo $!
}

setup() { # MODE: the LAN, etcd, hpk-netd and a container on each host
    ip netns add "$p-lan"
    ip -n "$p-lan" link add lanbr type bridge
    ip -n "$p-lan" link set lanbr up
    for h in 1 2; do lan_host "$h"; done
    rm -rf "$dir/etcd" "$dir"/h?/state "$dir"/h?/subnet.env
    start_etcd
    for h in 1 2; do pids+=("$(start_netd $h "$1")"); done
    for h in 1 2; do wait_for "netd on h$h" test -S "$dir/h$h/netd.sock"; done
    for h in 1 2; do
        in_host "$h" runc --root "$dir/h$h/runc" run -d --bundle "$dir/h$h" "c$h" </dev/null >/dev/null 2>&1
    done
    c1=/proc/$(in_host 1 runc --root "$dir/h1/runc" state c1 | jq .pid)/ns/net
    c2=/proc/$(in_host 2 runc --root "$dir/h2/runc" state c2 | jq .pid)/ns/net
    a2=$("$netd" status --socket "$dir/h2/netd.sock" --json | jq -r '.endpoints[0].address')
    nsenter --net="$c2" iperf3 -s -D -I "$dir/c.pid" >/dev/null
    pids+=("$(wait_for_file "$dir/c.pid")")
    nsenter --net="$c2" sockperf server -i "$a2" >/dev/null 2>&1 &
    pids+=($!)
    wait_for "the overlay path" nsenter --net="$c1" ping -c1 -W1 "$a2"
    rm -f "$dir/c.pid"
}

# A rootfs and a bundle per host (the containers only sleep: tools run from the host in
# their network namespace).
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev"
cp /bin/busybox "$dir/rootfs/bin/"
ln -s busybox "$dir/rootfs/bin/sleep"
for h in 1 2; do
    mkdir -p "$dir/h$h"
    runc spec --bundle "$dir/h$h"
    jq --arg root "$dir/rootfs" --arg hook "$hook" --arg s "$dir/h$h/netd.sock" \
        '.process.terminal=false | .process.args=["sleep","600"] | .root={path:$root,readonly:true}
         | .hooks={createRuntime:[{path:$hook,args:["hpk-hook","createRuntime","--socket",$s]}],
                   poststop:[{path:$hook,args:["hpk-hook","poststop","--socket",$s]}]}' \
        "$dir/h$h/config.json" >"$dir/h$h/c.json"
    mv "$dir/h$h/c.json" "$dir/h$h/config.json"
done

# CPU seconds (user+system) of both hpk-netd processes so far, in clock ticks.
netd_ticks() { local t=0 pid; for pid in "${netd_pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
gbit() { jq '.end.sum_received.bits_per_second / 1e7 | round / 100'; }

printf '\nCross-host overlay, container to container (%ss iperf3 x 3, medians; kernel %s, %s cores)\n\n' "$secs" "$(uname -r)" "$(nproc)"
fmt='%-26s %7s %6s %8s %7s %6s %8s %8s %8s %9s\n'
# shellcheck disable=SC2059 # the format is the table's
printf "$fmt" path Gbit/s x_kern "4x Gbit/s" RTT_ms x_kern "RR p50" "RR p99" x_kern "CPU s/GB"
declare -A ref=()
first=1
for mode in $modes; do
    setup "$mode"
    netd_pids=("${pids[0]}" "${pids[1]}")
    if [ "$first" = 1 ]; then
        # Host to host, the same LAN: the wire's figures.
        in_host 2 iperf3 -s -B 192.0.2.12 -p 5202 -D -I "$dir/h.pid" >/dev/null
        pids+=("$(wait_for_file "$dir/h.pid")")
        hg=() hr=()
        for _ in 1 2 3; do
            hg+=("$(in_host 1 iperf3 -c 192.0.2.12 -p 5202 -t "$secs" -J | gbit)")
            hr+=("$(in_host 1 ping -q -c 50 -i 0.01 192.0.2.12 | awk -F/ '/^rtt/{print $5}')")
        done
        # shellcheck disable=SC2059
        printf "$fmt" "host to host (LAN)" "$(median "${hg[@]}")" - - "$(median "${hr[@]}")" - - - - -
    fi
    g=() g4=() r=() cpu=()
    for _ in 1 2 3; do
        t0=$(netd_ticks)
        out=$(nsenter --net="$c1" iperf3 -c "$a2" -t "$secs" -J)
        t1=$(netd_ticks)
        g+=("$(gbit <<<"$out")")
        cpu+=("$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v b="$(jq '.end.sum_received.bytes' <<<"$out")" 'BEGIN{printf "%.2f", (t/hz)/(b/1e9)}')")
        g4+=("$(nsenter --net="$c1" iperf3 -c "$a2" -t "$secs" -P 4 -J | gbit)")
        r+=("$(nsenter --net="$c1" ping -q -c 50 -i 0.01 "$a2" | awk -F/ '/^rtt/{print $5}')")
    done
    pp=$(nsenter --net="$c1" sockperf ping-pong -i "$a2" -t "$secs" --full-rtt 2>&1 || true)
    p50=$(awk '/percentile 50.000/{printf "%.3f", $NF / 1000}' <<<"$pp")
    p99=$(awk '/percentile 99.000/{printf "%.3f", $NF / 1000}' <<<"$pp")
    gm=$(median "${g[@]}") rm_=$(median "${r[@]}")
    if [ "$first" = 1 ]; then ref=([g]=$gm [r]=$rm_ [p]=$p50); first=0; fi
    # shellcheck disable=SC2059
    printf "$fmt" "$mode" "$gm" "$(ratio "$gm" "${ref[g]}")" "$(median "${g4[@]}")" "$rm_" "$(ratio "$rm_" "${ref[r]}")" \
        "$p50" "$p99" "$(ratio "$p50" "${ref[p]}")" "$(median "${cpu[@]}")"
    # Sanity: the mode asked for is the one that ran.
    u=$("$netd" status --socket "$dir/h2/netd.sock" --json | jq -r '"\(.underlay.kind) \(.underlay.protection // "")"')
    case "$mode:$u" in
    kernel:"kernel "|userspace:"host-socket plain"|userspace-auth:"host-socket authenticate"|userspace-encrypt:"host-socket encrypt") ;;
    *) echo "WARNING: $mode ran as $u" >&2 ;;
    esac
    teardown
done
echo "x_kern: against the first path (flannel's kernel vxlan between the same two hosts)"
echo "RR: sockperf ping-pong round trip in ms (--full-rtt); CPU s/GB: both hpk-netd processes"

# Start-up: hpk-netd run until its subnet is ready (subnet.env written).
setup kernel
ready=()
for _ in $(seq "$starts"); do
    kill "${pids[1]}"; while kill -0 "${pids[1]}" 2>/dev/null; do sleep 0.01; done
    rm -f "$dir/h2/subnet.env"
    t=$(date +%s%N)
    pids[1]=$(start_netd 2 kernel)
    wait_for "subnet.env" test -s "$dir/h2/subnet.env"
    ready+=("$(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e6}')")
done
printf '\n%-52s %10s\n' "hpk-netd run to ready subnet (lease and devices adopted), median (ms)" "$(median "${ready[@]}")"
