#!/usr/bin/env bash
# A simulated cluster on one machine: hosts on a LAN (network namespaces), a router to an
# "outside world" server, etcd on the first host, hpk-netd's flannel-compatible agent on
# every host, and a runc container with our hooks on each. Shows the containers reaching
# each other across hosts and the outside through NAT. Everything is removed on exit.
#
#   scripts/sim-cluster.sh [-n HOSTS] [-k]     (-k: keep running until Enter is pressed)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/bench/lib.sh"

hosts=3 keep=no
while getopts "n:k" opt; do
    case $opt in
    n) hosts=$OPTARG ;;
    k) keep=yes ;;
    *) echo "usage: $0 [-n HOSTS] [-k]" >&2; exit 2 ;;
    esac
done

hpk_binaries
scratch hs
pids=()
cleanup() {
    for h in $(seq "$hosts"); do
        in_host "$h" runc --root "$dir/h$h/runc" delete --force "c$h" >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in lan out $(seq -f h%g "$hosts"); do ip netns del "$p-$ns" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
runc_in() { local h=$1; shift; in_host "$h" runc --root "$dir/h$h/runc" "$@"; }

step "LAN 192.0.2.0/24 with a router to the outside world (198.51.100.2, an HTTP server)"
ip netns add "$p-lan"; ip netns add "$p-out"
ip -n "$p-lan" link add lanbr type bridge
ip -n "$p-lan" link set lanbr up
ip -n "$p-lan" addr add 192.0.2.1/24 dev lanbr
ip link add wan0 netns "$p-lan" type veth peer name eth0 netns "$p-out"
ip -n "$p-lan" link set wan0 up
ip -n "$p-lan" addr add 198.51.100.1/24 dev wan0
ip netns exec "$p-lan" sysctl -qw net.ipv4.ip_forward=1
ip -n "$p-out" link set eth0 up
ip -n "$p-out" link set lo up
ip -n "$p-out" addr add 198.51.100.2/24 dev eth0
ip -n "$p-out" route add default via 198.51.100.1
mkdir -p "$dir/www"
echo "hello from the outside world" >"$dir/www/index.html"
ip netns exec "$p-out" busybox httpd -f -p 198.51.100.2:80 -h "$dir/www" &
pids+=($!)

for h in $(seq "$hosts"); do lan_host "$h" 192.0.2.1; done
echo "hosts: $(seq -f "$p-h%g" -s ' ' "$hosts")"

step "etcd on h1, network config 10.244.0.0/16 (vxlan), as for flannel"
start_etcd

step "hpk-netd on every host: lease a subnet, flannel.1, hpk-bridge, NAT"
for h in $(seq "$hosts"); do
    nsenter --net="/run/netns/$p-h$h" "$netd" run --subnet-source etcd --etcd-endpoints http://192.0.2.11:2379 \
        --state-dir "$dir/h$h/state" --socket "$dir/h$h/netd.sock" --subnet-file "$dir/h$h/subnet.env" \
        >/dev/null 2>"$dir/h$h/netd.log" &
    pids+=($!)
done
for h in $(seq "$hosts"); do wait_for "hpk-netd on h$h" test -S "$dir/h$h/netd.sock"; done
ctl get --prefix /coreos.com/network/subnets/

step "a runc container with our hooks on every host"
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" "$dir/rootfs/tmp"
cp /bin/busybox "$dir/rootfs/bin/"
for a in sh sleep ping wget ip; do ln -s busybox "$dir/rootfs/bin/$a"; done
for h in $(seq "$hosts"); do
    runc spec --bundle "$dir/h$h"
    jq --arg root "$dir/rootfs" --arg hook "$hook" --arg s "$dir/h$h/netd.sock" \
        '.process.terminal=false | .process.args=["sleep","3600"] | .root={path:$root,readonly:true}
         | .process.capabilities.bounding += ["CAP_NET_RAW"] | .process.capabilities.effective += ["CAP_NET_RAW"]
         | .process.capabilities.permitted += ["CAP_NET_RAW"]
         | .hooks={createRuntime:[{path:$hook,args:["hpk-hook","createRuntime","--socket",$s]}],
                   poststop:[{path:$hook,args:["hpk-hook","poststop","--socket",$s]}]}' \
        "$dir/h$h/config.json" >"$dir/h$h/c.json"
    mv "$dir/h$h/c.json" "$dir/h$h/config.json"
    runc_in "$h" run -d --bundle "$dir/h$h" "c$h" </dev/null >/dev/null
done
declare -A addr
for h in $(seq "$hosts"); do
    addr[$h]=$("$netd" status --socket "$dir/h$h/netd.sock" --json | jq -r '.endpoints[0].address')
done
"$netd" status --socket "$dir/h1/netd.sock"

step "container on h1 pings the containers on every other host (vxlan)"
for h in $(seq 2 "$hosts"); do
    runc_in 1 exec c1 ping -c 2 -W 2 "${addr[$h]}" | sed -n '1p;$p'
done

step "container on h$hosts fetches from the outside world (masquerade on its host)"
runc_in "$hosts" exec "c$hosts" wget -qO- http://198.51.100.2/

if [ "$keep" = yes ]; then
    step "running; namespaces $p-*, files in $dir. Press Enter to tear down."
    read -r _
fi
step "done: containers, hpk-netd, etcd and namespaces are removed"
