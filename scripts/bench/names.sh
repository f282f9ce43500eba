#!/usr/bin/env bash
# Names and published ports on bubbles, measured (simulated Slurm, `sbatch --nodes=3
# scripts/hpk.slurm`):
#   - DNS lookups per second and latency from a container (dnsperf) against hpk-netd's
#     server on the bridge's gateway, next to aardvark-dns (Podman's DNS server) serving
#     the same names on the same address, in the same run: at dnsperf's default load (100
#     queries in flight) and one query at a time (p50, p99 from dnsperf's per-query report);
#   - propagation: from a container's name registered in bubble 3 to its being known in
#     bubble 1 (the two hpk-netd logs' timestamps, one clock);
#   - one TCP stream from the login node to a container's published port, next to the same
#     stream login node to host on the LAN.
# Needs root and binaries (make binaries, or cargo build).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
sim=$root/scripts/sim-slurm.sh
secs=${BENCH_SECONDS:-5}
names=${BENCH_NAMES:-250}
user=nobody
dir=$(mktemp -d /tmp/hpk-bench-names.XXXX)
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
command -v dnsperf >/dev/null && [ -x /usr/lib/podman/aardvark-dns ] ||
    { echo "needs dnsperf and aardvark-dns (scripts/install-deps.sh)" >&2; exit 1; }

# A rootfs with busybox, dnsperf and iperf3 (with their libraries).
rootfs=$dir/rootfs
mkdir -p "$rootfs/bin" "$rootfs"/{proc,sys,dev,tmp,etc}
touch "$rootfs/etc/resolv.conf" "$rootfs/etc/hosts"
cp /bin/busybox "$rootfs/bin/"
for a in sh ip ping sleep cat grep nslookup; do ln -s busybox "$rootfs/bin/$a"; done
for tool in /usr/bin/dnsperf /usr/bin/iperf3; do
    cp "$tool" "$rootfs/bin/"
    for lib in $(ldd "$tool" | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$rootfs"; done
done
chmod -R a+rX "$rootfs"
chmod 1777 "$rootfs/tmp"
mkdir -p "$dir/job"
chmod 0777 "$dir/job"

"$sim" up -n 3 -d "$dir/sim" >/dev/null
job=$(in_login runuser -u "$user" -- sbatch --parsable --nodes=3 --chdir="$dir/job" \
    --output="$dir/job/hpk.out" "$root/scripts/hpk.slurm")
shared=$dir/job/hpk-$job
for _ in $(seq 600); do
    grep -q "cluster ready" "$dir/job/hpk.out" 2>/dev/null && break
    [ -n "$(in_login squeue -h -j "$job")" ] || break
    sleep 0.05
done
grep -q "cluster ready" "$dir/job/hpk.out" || { cat "$dir/job/hpk.out" >&2; exit 1; }
gw=$(enter 1 hpk-netd status --json | jq -r .gateway)

# The same names for both servers: in the cluster's etcd for hpk-netd (its TLS: the
# cluster's PKI), in a config file for aardvark-dns.
etcd() {
    ETCDCTL_API=3 nsenter --net=/run/netns/hpksim-h1 etcdctl --endpoints https://192.0.2.11:2379 \
        --cacert "$shared/pki/etcd-ca.pem" --cert "$shared/pki/etcd-client.pem" \
        --key "$shared/pki/etcd-client-key.pem" "$@"
}
# dnsperf runs at a static address, listed in aardvark-dns's network as Podman lists a container.
client=${gw%.*}.200
mkdir -p "$dir/aardvark"
printf '%s\nclient %s  dnsperf\n' "$gw" "$client" >"$dir/aardvark/bench"
: >"$rootfs/queries"
for i in $(seq "$names"); do
    addr=10.244.200.$((i % 250 + 2))
    etcd put "/coreos.com/network/hpk-names/name$i" \
        "{\"address\":\"$addr\",\"container\":\"bench$i\",\"bubble\":\"192.0.2.13\"}" >/dev/null
    printf 'bench%s %s  name%s\n' "$i" "$addr" "$i" >>"$dir/aardvark/bench"
    echo "name$i A" >>"$rootfs/queries"
done
chmod -R a+rX "$dir/aardvark" "$rootfs/queries"
wait_names() { [ "$(enter 1 hpk-netd status --json | jq '.names.records | length')" -ge "$names" ]; }
for _ in $(seq 200); do wait_names && break; sleep 0.05; done
wait_names || { echo "bubble 1 did not learn the $names names" >&2; exit 1; }

# aardvark-dns in bubble 1's network namespace on the gateway's address, port 5300 (as
# root from the host: in the bubble's user namespace it starts but never listens).
init=$(jq -r .init.pid "$shared/bubble-1.json")
nsenter -t "$init" -n sh -c "echo \$\$ >$dir/aardvark.pid; exec /usr/lib/podman/aardvark-dns -c $dir/aardvark -p 5300 run" \
    </dev/null >"$dir/aardvark.log" 2>&1 &
for _ in $(seq 100); do
    enter 1 busybox nslookup -port=5300 name1 "$gw" >/dev/null 2>&1 && break
    sleep 0.05
done
enter 1 busybox nslookup -port=5300 name1 "$gw" >/dev/null 2>&1 ||
    { cat "$dir/aardvark.log" >&2; echo "aardvark-dns does not answer" >&2; exit 1; }

# dnsperf PORT ARGS...: its summary and, with -v, each query's latency.
perf() {
    local port=$1; shift
    enter 1 hpktainer run --ip "$client" "$rootfs" \
        dnsperf -s "$gw" -p "$port" -d /queries -l "$secs" "$@"
}
qps() { awk '/Queries per second:/ { printf "%.0f", $4 }'; }
avg_ms() { awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000 }'; }
lost() { awk '/Queries lost:/ { print $3 }'; }
noerror() { awk '/Response codes:/ { print $3 " " $4 }'; }
# p50 and p99 of dnsperf -v's per-query latencies (last field, seconds), in ms.
pcts() {
    awk '$1 == ">" { print $NF * 1000 }' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.3f %.3f", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1]; else print "- -" }'
}
row() { printf '%-34s %10s %9s %8s %9s %9s %9s  %s\n' "$@"; }
echo "DNS: $names names, dnsperf from a container in bubble 1, ${secs}s each"
row "server" "loaded q/s" "avg ms" "lost" "1-at-a-time" "p50 ms" "p99 ms" "codes"
for server in "hpk-netd:53" "aardvark-dns 1.4:5300"; do
    port=${server##*:}
    loaded=$(perf "$port")
    single=$(perf "$port" -q 1 -v)
    read -r p50 p99 <<<"$(echo "$single" | pcts)"
    row "${server%:*}" "$(echo "$loaded" | qps)" "$(echo "$loaded" | avg_ms)" "$(echo "$loaded" | lost)" \
        "$(echo "$single" | avg_ms) ms" "$p50" "$p99" "$(echo "$loaded" | noerror)"
done
kill "$(cat "$dir/aardvark.pid")" 2>/dev/null || true
# Sanity: both answered the names (not NXDOMAIN) and hpk-netd counted the queries.
enter 1 hpk-netd status --json | jq -c '.names.counters'

# Propagation: containers started in bubble 3, from hpk-netd claiming each name in etcd
# (bubble 3's log) to its arrival in bubble 1 (bubble 1's log).
echo
echo "propagation of a new name, bubble 3 to bubble 1:"
for i in $(seq 10); do enter 3 hpktainer run -d --name "probe$i" "$rootfs" sleep 600 >/dev/null; done
sleep 0.5
stamp() { grep "$2" "$shared/bubble-$1-netd.log" | grep -o '^[0-9T:.-]*' | head -1; }
ms=()
for i in $(seq 10); do
    t3=$(stamp 3 "claiming name name=\"\\?probe$i\"\\? ")
    t1=$(stamp 1 "name learned name=\"\\?probe$i\"\\? ")
    [ -n "$t3" ] && [ -n "$t1" ] || { echo "probe$i: no timestamps" >&2; continue; }
    ms+=("$(( ($(date -d "$t1" +%s%N) - $(date -d "$t3" +%s%N)) / 1000 ))")
done
printf '  %s us\n' "$(printf '%s\n' "${ms[@]}" | sort -g | tr '\n' ' ')"

# A published port from the login node, next to the login node to the host itself.
echo
enter 3 hpktainer run -d --name iperf -p 15201:5201 "$rootfs" iperf3 -s >/dev/null
sleep 0.5
bps() { jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'; }
nsenter --net=/run/netns/hpksim-h3 iperf3 -s -1 -D -B 192.0.2.13 -p 5202 >/dev/null
sleep 0.3
lan=$(nsenter --net=/run/netns/hpksim-login iperf3 -c 192.0.2.13 -p 5202 -t "$secs" -J | bps)
pub=$(nsenter --net=/run/netns/hpksim-login iperf3 -c 192.0.2.13 -p 15201 -t "$secs" -J | bps)
row2() { printf '%-44s %8s %8s\n' "$@"; }
row2 "one TCP stream" "Gbit/s" "x LAN"
row2 "login node to host 3 (LAN)" "$lan" "1"
row2 "login node to a published port in bubble 3" "$pub" "$(awk -v a="$pub" -v b="$lan" 'BEGIN { printf "%.2f", a / b }')"
enter 3 hpk-netd status --json | jq -c '.published[] | {mapping, forwarded, client_address_kept}'
