#!/usr/bin/env bash
# The images, built and used: `make images PUSH=0 PLATFORMS=linux/amd64` with Podman, on
# bases made here from Debian's packages (base images cannot be pulled on these machines):
# busybox-static for hpktainer-base, an mmdebstrap'd Debian 12 for hpk-bubble. Then the
# base image's entrypoint, the original's way (no hooks): a client hpk-net-daemon on the
# socket a server serves in the "bubble" gives the container tap0, its address and route.
# Last, the real use: hpktainer-base pushed to a local registry (Debian's docker-registry)
# and `hpktainer run docker://REGISTRY/hpktainer-base:VERSION ip addr show tap0` in a bubble
# of the simulated Slurm cluster shows the overlay address.
# Needs root. Leaves nothing behind (images, namespaces, processes).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
p=hpkimg$$
work=$(mktemp -d "/tmp/$p.XXXX")
registry=localhost/$p
version=0.0.0-test
pids=()
sim=$root/scripts/sim-slurm.sh
job=""
in_login() { "$sim" run -d "$work/sim" "$@"; }
cleanup() {
    if [ -n "$job" ]; then in_login scancel "$job" >/dev/null 2>&1 || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$sim" down -d "$work/sim" >/dev/null 2>&1 || true
    # Only ever the test's own storage (never the machine's).
    if [ "${CONTAINERS_STORAGE_CONF:-}" = "$work/storage.conf" ]; then
        podman rm --all --force --time 0 >/dev/null 2>&1 || true
        podman system reset --force >/dev/null 2>&1 || true
    fi
    for ns in "$p-b" "$p-c"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# This machine's hybrid cgroups: Podman (and its builds) run runc with cgroupfs.
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
# Image storage of its own, removed with the work directory (builds leave layers).
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$work" "$work" >"$work/storage.conf"
export CONTAINERS_STORAGE_CONF=$work/storage.conf
fail() { echo "images test: FAIL: $*" >&2; exit 1; }

# Local bases.
mkdir -p "$work/busybox/bin" "$work/busybox"/{proc,sys,dev,tmp,etc}
cp /bin/busybox "$work/busybox/bin/"
for a in sh ip ping sleep cat ls true echo kill grep; do ln -s busybox "$work/busybox/bin/$a"; done
tar -C "$work/busybox" -c . | podman import - "$registry/busybox:local" >/dev/null
mmdebstrap --quiet --variant=apt \
    --include=runc,crun,etcd-server,etcd-client,iptables,iproute2,skopeo,umoci,ca-certificates,util-linux,procps \
    bookworm "$work/debian.tar" /etc/apt/sources.list.d/debian.sources
podman import "$work/debian.tar" "$registry/debian:local" >/dev/null
rm -f "$work/debian.tar"

make images PUSH=0 PLATFORMS=linux/amd64 REGISTRY="$registry" VERSION="$version" \
    HPKTAINER_BASE_FROM="$registry/busybox:local" HPK_BUBBLE_FROM="$registry/debian:local"

for name in hpktainer-base hpk-bubble; do
    podman image inspect "$registry/$name:$version" >/dev/null 2>&1 || fail "$name:$version was not built"
    podman image inspect "$registry/$name:latest" >/dev/null 2>&1 || fail "$name:latest was not tagged"
    size=$(podman image inspect "$registry/$name:$version" --format '{{.Size}}' 2>/dev/null || echo 0)
    echo "images test: $name:$version $((size / 1024 / 1024)) MiB"
done
# The bubble image has what a bubble runs.
for tool in hpk-bubble hpk-netd hpk-net-daemon hpk-hook hpktainer runc crun etcd iptables ip skopeo umoci; do
    podman run --rm --entrypoint /bin/sh "$registry/hpk-bubble:$version" -c "command -v $tool" >/dev/null ||
        fail "hpk-bubble lacks $tool"
done
podman run --rm "$registry/hpk-bubble:$version" --version | grep -q '^hpk-bubble ' || fail "hpk-bubble's entrypoint"

# The base image without any overlay: the command just runs.
out=$(podman run --rm --network none "$registry/hpktainer-base:$version" echo plain)
[ "$out" = plain ] || fail "plain run printed $out"

# The original's way: a server in the bubble, the client in the container.
ip netns add "$p-b"
ip -n "$p-b" link set lo up
ip -n "$p-b" link add br0 type bridge
ip -n "$p-b" addr add 10.244.9.1/24 dev br0
ip -n "$p-b" link set br0 up
ip netns add "$p-c"
mkdir -p "$work/sock"
# The server is the daemon `make images` just built for this host (bin/ may hold none).
ip netns exec "$p-b" bin/linux/amd64/hpk-net-daemon --mode server --socket "$work/sock/net.sock" \
    --tap hpkorig --bridge br0 --mtu 1450 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/sock/net.sock" ] && break; sleep 0.05; done
[ -S "$work/sock/net.sock" ] || fail "the server did not serve: $(cat "$work/server.log")"
out=$(podman run --rm --network "ns:/run/netns/$p-c" --device /dev/net/tun --cap-add NET_ADMIN \
    -v "$work/sock:/hpk" -e HPK_SOCKET_PATH=/hpk/net.sock -e HPK_IP=10.244.9.200/24 \
    -e HPK_GATEWAY_IP=10.244.9.1 -e HPK_MTU=1450 "$registry/hpktainer-base:$version" \
    sh -c 'ip addr show tap0 && ip route && ping -c 1 -W 5 10.244.9.1') || fail "original-style run: $out"
echo "$out" | grep -q 'inet 10.244.9.200/24' || fail "tap0 has no address: $out"
echo "$out" | grep -q 'default via 10.244.9.1' || fail "no default route: $out"
echo "$out" | grep -q '1 packets received' || fail "the gateway did not answer: $out"
# Half the contract is an error that says what is missing.
if err=$(podman run --rm --network none -e HPK_SOCKET_PATH=/x "$registry/hpktainer-base:$version" true 2>&1); then
    fail "a missing HPK_IP was accepted"
fi
echo "$err" | grep -q 'set both HPK_IP and HPK_GATEWAY_IP' || fail "unclear error: $err"

# The base image from a registry, in a bubble: the registry on node h2, the job on h1.
chmod 0755 "$work"
"$sim" up -n 2 -d "$work/sim" >/dev/null
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<CONFIG
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 192.0.2.12:5000
CONFIG
nsenter --net=/run/netns/hpksim-h2 docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
in_h2() { nsenter --net=/run/netns/hpksim-h2 "$@"; }
for _ in $(seq 100); do in_h2 bash -c '</dev/tcp/192.0.2.12/5000' 2>/dev/null && break; sleep 0.05; done
remote=192.0.2.12:5000/hpktainer-base:$version
in_h2 podman manifest push --tls-verify=false --all "$registry/hpktainer-base:$version" "docker://$remote" >/dev/null
mkdir -p "$work/job"
chmod 0777 "$work/job"
job=$(in_login runuser -u nobody -- sbatch --parsable --nodes=1 --chdir="$work/job" \
    --output="$work/job/hpk.out" "$root/scripts/hpk.slurm")
for _ in $(seq 600); do
    grep -q "cluster ready" "$work/job/hpk.out" 2>/dev/null && break
    [ -n "$(in_login squeue -h -j "$job" 2>/dev/null)" ] || break
    sleep 0.1
done
grep -q "cluster ready" "$work/job/hpk.out" || fail "the cluster did not come up: $(cat "$work/job/hpk.out")"
out=$(in_login runuser -u nobody -- env HPK_SHARED_DIR="$work/job/hpk-$job" "$root/scripts/hpk-enter.sh" 1 \
    hpktainer run --insecure-registry 192.0.2.12:5000 "docker://$remote" ip addr show tap0 2>&1) ||
    fail "hpktainer run docker://$remote: $out"
echo "$out" | grep -q 'inet 10.244.' || fail "no overlay address on tap0: $out"
echo "images test: hpktainer run docker://$remote ip addr show tap0 in bubble 1: $(echo "$out" | grep -o 'inet 10.244.[0-9./]*')"
echo "images test: ok"
