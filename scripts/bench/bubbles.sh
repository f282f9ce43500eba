#!/usr/bin/env bash
# Bubbles on Slurm, measured: from `sbatch --nodes=3 scripts/hpk.slurm` to every bubble
# ready, and container to container across bubbles (iperf3 TCP throughput, ping RTT)
# through each uplink (slirp4netns, pasta), next to host to host on the same LAN in the
# same run. Runs the simulated Slurm of scripts/sim-slurm.sh; needs root and binaries.
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
    rm -rf "$dir"
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
printf '%-34s %10s %8s %10s %12s\n' "path" "Gbit/s" "x host" "RTT ms" "ready ms"
# Host to host on the LAN: the reference.
nsenter --net="/run/netns/hpksim-h3" iperf3 -s -1 -D -B 192.0.2.13 >/dev/null
sleep 0.3
h2h=$(nsenter --net="/run/netns/hpksim-h1" iperf3 -c 192.0.2.13 -t "$secs" -J | bps)
h2h_rtt=$(nsenter --net="/run/netns/hpksim-h1" ping -c 20 -i 0.05 192.0.2.13 | rtt)
printf '%-34s %10s %8s %10s %12s\n' "host to host (LAN, veth)" "$h2h" "1" "$h2h_rtt" "-"

for uplink in slirp4netns pasta; do
    start=$(date +%s%N)
    job=$(in_login runuser -u "$user" -- env HPK_UPLINK=$uplink sbatch --parsable --nodes=3 \
        --chdir="$dir/job" --output="$dir/job/$uplink.out" "$root/scripts/hpk.slurm")
    shared=$dir/job/hpk-$job
    for _ in $(seq 600); do
        grep -q "cluster ready" "$dir/job/$uplink.out" 2>/dev/null && break
        [ -n "$(in_login squeue -h -j "$job")" ] || break
        sleep 0.02
    done
    grep -q "cluster ready" "$dir/job/$uplink.out" || { cat "$dir/job/$uplink.out" >&2; exit 1; }
    ready=$(( ($(date +%s%N) - start) / 1000000 ))
    enter 3 hpktainer run -d --name srv "$rootfs" iperf3 -s >/dev/null
    addr=$(enter 3 hpktainer ps --json | jq -r '.[] | select(.name == "srv") | .address')
    before=$(enter 3 ip -j -s link show flannel.1 | jq '.[0].stats64.rx.bytes')
    out=$(enter 1 hpktainer run "$rootfs" sh -c "sleep 0.5; iperf3 -c $addr -t $secs -J; ping -c 20 -i 0.05 $addr")
    after=$(enter 3 ip -j -s link show flannel.1 | jq '.[0].stats64.rx.bytes')
    gbps=$(echo "$out" | sed -n '/^{/,/^}/p' | bps) || { echo "$out" >&2; exit 1; }
    lat=$(echo "$out" | rtt)
    printf '%-34s %10s %8s %10s %12s\n' "container to container, $uplink" "$gbps" "$(ratio "$gbps" "$h2h")" "$lat" "$ready"
    # Sanity: the bytes crossed the overlay (bubble 3's vxlan device), not another path.
    moved=$(awk -v g="$gbps" -v s="$secs" 'BEGIN{ printf "%d", g * 1e9 * s / 8 }')
    [ $((after - before)) -ge $((moved / 2)) ] ||
        echo "WARNING: flannel.1 in bubble 3 received $((after - before)) bytes, iperf3 reported ~$moved" >&2
    in_login scancel "$job"
    for _ in $(seq 300); do [ -z "$(in_login squeue -h -j "$job")" ] && ! pgrep -u "$user" -f hpk-bubble >/dev/null && break; sleep 0.05; done
    job=""
done
echo "ready: from sbatch to every bubble ready (the original sleeps >= 20 s to come up)"
