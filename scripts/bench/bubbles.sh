#!/usr/bin/env bash
# Bubbles on Slurm, measured: from `sbatch --nodes=3 scripts/hpk.slurm` to every bubble
# ready, and container to container across bubbles (iperf3 TCP throughput, ping RTT, CPU
# seconds per GB moved, UDP receive-buffer drops on the receiving host) for each underlay:
# flannel's kernel vxlan forwarded by slirp4netns or by pasta, and hpk-netd's userspace
# vxlan on a host socket, plain (a plain-HTTP cluster has no overlay key), authenticated
# only (HPK_NETD_OVERLAY_ENCRYPT=false) and encrypted (the default); next to host to host
# on the same LAN in the same run. BENCH_MODES picks rows: UPLINK/UNDERLAY[/plain|/auth].
# Runs the simulated Slurm of scripts/sim-slurm.sh; needs root and binaries.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
sim=$root/scripts/sim-slurm.sh
secs=${BENCH_SECONDS:-5}
user=nobody
dir=$(mktemp -d /tmp/hpk-bench-bubbles.XXXX)
chmod 0755 "$dir"
job=""
in_login() { "$sim" run -d "$dir/sim" "$@"; }
enter() { in_login runuser -u "$user" -- env HPK_SHARED_DIR="$shared" "$root/scripts/hpk-enter.sh" "$@"; }
cleanup() {
    if [ -n "$job" ]; then in_login scancel "$job" >/dev/null 2>&1 || true; fi
    "$sim" down -d "$dir/sim" >/dev/null 2>&1 || true
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

# A rootfs with busybox and iperf3 (with its libraries).
rootfs=$dir/rootfs
mkdir -p "$rootfs/bin" "$rootfs"/{proc,sys,dev,tmp,etc}
cp /bin/busybox "$rootfs/bin/"
for a in sh ip ping sleep cat grep; do ln -s busybox "$rootfs/bin/$a"; done
cp /usr/bin/iperf3 "$rootfs/bin/"
for lib in $(ldd /usr/bin/iperf3 | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$rootfs"; done
chmod -R a+rX "$rootfs"
chmod 1777 "$rootfs/tmp"   # iperf3 keeps its buffer in a temporary file
mkdir -p "$dir/job"
chmod 0777 "$dir/job"

"$sim" up -n 3 -d "$dir/sim" >/dev/null

bps() { jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'; }
# The average of ping's summary line (iputils' "rtt min/avg/max/mdev = ..." or busybox's).
rtt() { awk -F' = ' '/min\/avg\/max/ { split($2, v, "/"); print v[2] }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.3f", a/b; else print "-" }'; }
# Busy CPU time of the whole machine so far, in clock ticks (all CPUs, idle and iowait out).
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# CPU seconds per GB: busy ticks between two readings over the bytes moved.
per_gb() { awk -v t="$(( $2 - $1 ))" -v hz="$(getconf CLK_TCK)" -v b="$3" 'BEGIN{ printf "%.2f", t / hz / (b / 1e9) }'; }
# UDP datagrams dropped for a full receive buffer in host 3's namespace.
rcvbuf_errors() {
    nsenter --net="/run/netns/hpksim-h3" cat /proc/net/snmp |
        awk '/^Udp:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; n = 1 } else print $c }'
}
# iperf3's bytes received, from its JSON.
received() { jq -r '.end.sum_received.bytes'; }

row() { printf '%-44s %8s %7s %8s %9s %9s %9s\n' "$@"; }
row "path" "Gbit/s" "x host" "RTT ms" "CPU s/GB" "rx drops" "ready ms"
# Host to host on the LAN: the reference.
nsenter --net="/run/netns/hpksim-h3" iperf3 -s -1 -D -B 192.0.2.13 >/dev/null
sleep 0.3
cpu0=$(busy)
h2h_json=$(nsenter --net="/run/netns/hpksim-h1" iperf3 -c 192.0.2.13 -t "$secs" -J)
cpu1=$(busy)
h2h=$(echo "$h2h_json" | bps)
h2h_rtt=$(nsenter --net="/run/netns/hpksim-h1" ping -c 20 -i 0.05 192.0.2.13 | rtt)
row "host to host (LAN, veth)" "$h2h" "1" "$h2h_rtt" "$(per_gb "$cpu0" "$cpu1" "$(echo "$h2h_json" | received)")" "-" "-"

for mode in ${BENCH_MODES:-slirp4netns/kernel pasta/kernel pasta/host-socket/plain pasta/host-socket/auth pasta/host-socket}; do
    IFS=/ read -r uplink underlay seal <<<"$mode"
    case "${seal:-}" in
        plain) settings=(HPK_ETCD_PLAIN_HTTP=true) protection=plain ;;
        auth) settings=(HPK_NETD_OVERLAY_ENCRYPT=false) protection=authenticate ;;
        *) settings=() protection=encrypt ;;
    esac
    [ "$underlay" = host-socket ] || protection=""
    name=$uplink-$underlay${seal:+-$seal}
    start=$(date +%s%N)
    job=$(in_login runuser -u "$user" -- env HPK_UPLINK="$uplink" HPK_UNDERLAY="$underlay" "${settings[@]}" \
        sbatch --parsable --nodes=3 --chdir="$dir/job" --output="$dir/job/$name.out" "$root/scripts/hpk.slurm")
    shared=$dir/job/hpk-$job
    for _ in $(seq 600); do
        grep -q "cluster ready" "$dir/job/$name.out" 2>/dev/null && break
        [ -n "$(in_login squeue -h -j "$job")" ] || break
        sleep 0.02
    done
    grep -q "cluster ready" "$dir/job/$name.out" || { cat "$dir/job/$name.out" >&2; exit 1; }
    ready=$(( ($(date +%s%N) - start) / 1000000 ))
    enter 3 hpktainer run -d --name srv "$rootfs" iperf3 -s >/dev/null
    addr=$(enter 3 hpktainer ps --json | jq -r '.[] | select(.name == "srv") | .address')
    before=$(enter 3 ip -j -s link show flannel.1 | jq '.[0].stats64.rx.bytes')
    drops0=$(rcvbuf_errors)
    cpu0=$(busy)
    out=$(enter 1 hpktainer run "$rootfs" sh -c "sleep 0.5; iperf3 -c $addr -t $secs -J; ping -c 20 -i 0.05 $addr")
    cpu1=$(busy)
    drops=$(( $(rcvbuf_errors) - drops0 ))
    after=$(enter 3 ip -j -s link show flannel.1 | jq '.[0].stats64.rx.bytes')
    json=$(echo "$out" | sed -n '/^{/,/^}/p')
    gbps=$(echo "$json" | bps) || { echo "$out" >&2; exit 1; }
    lat=$(echo "$out" | rtt)
    # (CPU includes the 0.5 s start and the pings: a small overestimate for all rows.)
    row "container to container, $uplink, $underlay${protection:+, $protection}" "$gbps" "$(ratio "$gbps" "$h2h")" "$lat" \
        "$(per_gb "$cpu0" "$cpu1" "$(echo "$json" | received)")" "$drops" "$ready"
    # Sanity: the bytes crossed the overlay (bubble 3's flannel.1), not another path, and
    # on the underlay asked for.
    moved=$(echo "$json" | received)
    [ $((after - before)) -ge $((moved / 2)) ] ||
        echo "WARNING: flannel.1 in bubble 3 received $((after - before)) bytes, iperf3 reported $moved" >&2
    status=$(enter 3 hpk-netd status --json)
    kind=$(echo "$status" | jq -r '.underlay.kind')
    [ "$kind" = "$underlay" ] || echo "WARNING: bubble 3 runs the $kind underlay, not $underlay" >&2
    got=$(echo "$status" | jq -r '.underlay.protection // ""')
    [ "$got" = "$protection" ] || echo "WARNING: bubble 3's overlay is ${got:-unsealed}, not ${protection:-unsealed}" >&2
    in_login scancel "$job"
    for _ in $(seq 300); do [ -z "$(in_login squeue -h -j "$job")" ] && ! pgrep -u "$user" -f hpk-bubble >/dev/null && break; sleep 0.05; done
    job=""
done
echo "ready: from sbatch to every bubble ready (the original sleeps >= 20 s to come up)"
echo "CPU s/GB: busy CPU seconds of the whole machine (all hosts, bubbles, uplinks) per GB received"
