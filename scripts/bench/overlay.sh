#!/usr/bin/env bash
# Overlay benchmark: two hosts on a LAN bridge, etcd on the first, hpk-netd's etcd agent
# on both; throughput and RTT between runc containers on different hosts (vxlan) next to
# host-to-host over the same LAN (veth + bridge), and the time from `hpk-netd run` to a
# ready subnet (lease, flannel.1, routes, subnet.env). Figures only.
#
#   scripts/bench/overlay.sh [-t SECONDS] [-n STARTS]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

secs=3 starts=5
while getopts "t:n:" opt; do
    case $opt in
    t) secs=$OPTARG ;;
    n) starts=$OPTARG ;;
    *) echo "usage: $0 [-t SECONDS] [-n STARTS]" >&2; exit 2 ;;
    esac
done

hpk_binaries
scratch ho
pids=()
cleanup() {
    for h in 1 2; do nsenter --net="/run/netns/$p-h$h" runc --root "$dir/h$h/runc" delete --force c$h >/dev/null 2>&1 || true; done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in lan h1 h2; do ip netns del "$p-$ns" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$p-lan"
ip -n "$p-lan" link add lanbr type bridge
ip -n "$p-lan" link set lanbr up
for h in 1 2; do lan_host "$h"; done
start_etcd

start_netd() { # HOST
    nsenter --net="/run/netns/$p-h$1" "$netd" run --subnet-source etcd --etcd-endpoints http://192.0.2.11:2379 --iface eth0 \
        --state-dir "$dir/h$1/state" --socket "$dir/h$1/netd.sock" --subnet-file "$dir/h$1/subnet.env" \
        >/dev/null 2>>"$dir/h$1/netd.log" &
    echo $!
}

# 1. Start-up: hpk-netd run until its subnet is ready (subnet.env written).
ready=()
for _ in $(seq "$starts"); do
    rm -f "$dir/h2/subnet.env"
    t=$(date +%s%N)
    pid=$(start_netd 2)
    wait_for "subnet.env" test -s "$dir/h2/subnet.env"
    ready+=("$(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e6}')")
    kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
done

# 2. Containers on both hosts.
for h in 1 2; do pids+=("$(start_netd $h)"); done
for h in 1 2; do wait_for "netd on h$h" test -S "$dir/h$h/netd.sock"; done
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev"
cp /bin/busybox "$dir/rootfs/bin/"
ln -s busybox "$dir/rootfs/bin/sleep"
for h in 1 2; do
    runc spec --bundle "$dir/h$h"
    jq --arg root "$dir/rootfs" --arg hook "$hook" --arg s "$dir/h$h/netd.sock" \
        '.process.terminal=false | .process.args=["sleep","600"] | .root={path:$root,readonly:true}
         | .hooks={createRuntime:[{path:$hook,args:["hpk-hook","createRuntime","--socket",$s]}],
                   poststop:[{path:$hook,args:["hpk-hook","poststop","--socket",$s]}]}' \
        "$dir/h$h/config.json" >"$dir/h$h/c.json"
    mv "$dir/h$h/c.json" "$dir/h$h/config.json"
    in_host "$h" runc --root "$dir/h$h/runc" run -d --bundle "$dir/h$h" "c$h" </dev/null >/dev/null 2>&1
done
netns_of() { echo "/proc/$(in_host "$1" runc --root "$dir/h$1/runc" state "c$1" | jq .pid)/ns/net"; }
c1=$(netns_of 1) c2=$(netns_of 2)
a2=$("$netd" status --socket "$dir/h2/netd.sock" --json | jq -r '.endpoints[0].address')
nsenter --net="$c2" iperf3 -s -D -I "$dir/c.pid" >/dev/null
pids+=("$(wait_for_file "$dir/c.pid")")
in_host 2 iperf3 -s -B 192.0.2.12 -p 5202 -D -I "$dir/h.pid" >/dev/null
pids+=("$(wait_for_file "$dir/h.pid")")
wait_for "the overlay path" nsenter --net="$c1" ping -c1 -W1 "$a2"

cg=() hg=() cr=() hr=()
for r in 1 2 3; do
    hg+=("$(in_host 1 iperf3 -c 192.0.2.12 -p 5202 -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
    cg+=("$(nsenter --net="$c1" iperf3 -c "$a2" -t "$secs" -J | jq '.end.sum_received.bits_per_second/1e9')")
    hr+=("$(in_host 1 ping -q -c 20 -i 0.01 192.0.2.12 | awk -F/ '/^rtt/{print $5}')")
    cr+=("$(nsenter --net="$c1" ping -q -c 20 -i 0.01 "$a2" | awk -F/ '/^rtt/{print $5}')")
done
g=$(median "${cg[@]}") hgm=$(median "${hg[@]}") l=$(median "${cr[@]}") hl=$(median "${hr[@]}")
printf '\nCross-host overlay (hpk-netd etcd agent, vxlan; 3 x %ss iperf3, medians; kernel %s, %s cores)\n\n' "$secs" "$(uname -r)" "$(nproc)"
printf '%-36s %10s %8s %10s %8s\n' path Gbit/s x_host RTT_ms x_host
printf '%-36s %10.3f %8s %10s %8s\n' "host to host (veth + LAN bridge)" "$hgm" 1.00 "$hl" 1.00
printf '%-36s %10.3f %8s %10s %8s\n' "container to container (vxlan)" "$g" "$(ratio "$g" "$hgm")" "$l" "$(ratio "$l" "$hl")"
printf '\n%-52s %10s\n' "hpk-netd run to ready subnet, first start (ms)" "${ready[0]}"
printf '%-52s %10s\n' "  restarts (lease and devices adopted), median (ms)" "$(median "${ready[@]:1}")"
