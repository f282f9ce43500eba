# shellcheck shell=bash disable=SC2034  # sets variables for the scripts that source it
# Helpers shared by the benchmark and demo scripts (sourced, not run).
# Start daemons in the background with `nsenter ... &` directly, never through a shell
# function: `$!` would then be the function's subshell, and the daemon would outlive cleanup.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Path of a release binary built by `make binaries`.
bench_binary() {
    local bin=$root/bin/$1
    [ -x "$bin" ] || { echo "$bin missing: run 'make binaries' first" >&2; exit 1; }
    echo "$bin"
}

# wait_for WHAT CMD...: retries CMD until it succeeds, for at most 10 s.
wait_for() {
    local what=$1; shift
    local end=$((SECONDS + 10))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { echo "timed out waiting for $what" >&2; return 1; }
        sleep 0.02
    done
}

# wait_for_file PATH: waits for PATH to have content and prints it.
wait_for_file() {
    wait_for "$1" test -s "$1"
    cat "$1"
}

link_is_up() {
    ip -n "$1" -j link show dev "$2" | jq -e '.[0].flags | index("UP")' >/dev/null
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'
}

# daemon_memory PID...: the largest RSS and private-dirty KiB among the forwarder pids.
daemon_memory() {
    local pid rss=0 priv=0 r d
    for pid in "$@"; do
        [ "$(cat /proc/$pid/comm 2>/dev/null)" = hpk-net-daemon ] || continue
        r=$(awk '/^Rss:/{print $2}' /proc/$pid/smaps_rollup)
        d=$(awk '/^Private_Dirty:/{print $2}' /proc/$pid/smaps_rollup)
        [ "$r" -gt "$rss" ] && rss=$r
        [ "$d" -gt "$priv" ] && priv=$d
    done
    echo "$rss $priv"
}

# hpk_binaries: sets $netd and $hook to the release binaries and checks the forwarder.
hpk_binaries() {
    netd=$(bench_binary hpk-netd)
    hook=$(bench_binary hpk-hook)
    bench_binary hpk-net-daemon >/dev/null
}

# scratch PREFIX: sets $p (a unique name prefix) and $dir (a new scratch directory).
scratch() {
    p=$1$(printf '%04x' $((RANDOM)))
    dir=$(mktemp -d "/tmp/$p.XXXX")
}

# The simulated cluster's LAN: hosts $p-h1.. on a bridge in $p-lan, 192.0.2.1N/24, etcd
# on h1 at 192.0.2.11. Callers set $p and $dir, and collect daemon PIDs in `pids`.
in_host() { local h=$1; shift; nsenter --net="/run/netns/$p-h$h" "$@"; }
ctl() { ETCDCTL_API=3 in_host 1 etcdctl --endpoints http://192.0.2.11:2379 "$@"; }

# lan_host N [GATEWAY]: host namespace $p-hN on the LAN, state directory $dir/hN.
lan_host() {
    local h=$1 gw=${2:-}
    ip netns add "$p-h$h"
    ip link add "$p$h" netns "$p-lan" type veth peer name eth0 netns "$p-h$h"
    ip -n "$p-lan" link set "$p$h" master lanbr up
    ip -n "$p-h$h" link set eth0 up
    ip -n "$p-h$h" link set lo up
    ip -n "$p-h$h" addr add "192.0.2.1$h/24" dev eth0
    [ -z "$gw" ] || ip -n "$p-h$h" route add default via "$gw"
    mkdir -p "$dir/h$h"
}

# start_etcd: etcd on h1 with flannel's network config 10.244.0.0/16 (vxlan).
start_etcd() {
    nsenter --net="/run/netns/$p-h1" etcd --name n1 --data-dir "$dir/etcd" --listen-client-urls http://192.0.2.11:2379 \
        --advertise-client-urls http://192.0.2.11:2379 --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster n1=http://127.0.0.1:2380 \
        >/dev/null 2>"$dir/etcd.log" &
    pids+=($!)
    wait_for "etcd" ctl endpoint health
    ctl put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' >/dev/null
}
