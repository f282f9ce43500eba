#!/usr/bin/env bash
# Container start-up through hpktainer: `hpktainer run --rm IMAGE true` next to a plain
# `runc run` of the same kind of bundle and `podman run` of the same rootfs, in one bubble
# with hpk-netd, alternating runs. Where the time goes: hooks (runc with vs without),
# hpktainer's own work (--network none vs plain runc), the cached image's overlay
# (oci: image vs rootfs directory).
# Figures only: nothing here passes or fails.
#
#   scripts/bench/start.sh [-n RUNS]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

runs=20
while getopts "n:" opt; do
    case $opt in
    n) runs=$OPTARG ;;
    *) echo "usage: $0 [-n RUNS]" >&2; exit 2 ;;
    esac
done

hpk_binaries
hpktainer=$(bench_binary hpktainer)
scratch hs
bubble=$p-b
pids=()
cleanup() {
    podman_cmd rm --all --force --time 0 >/dev/null 2>&1 || true
    podman_cmd system reset --force >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$bubble" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

in_bubble() { nsenter --net="/run/netns/$bubble" "$@"; }
now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.2f", (b-a)/1e6}'; }
hpk() { in_bubble "$hpktainer" --root "$dir/hpk" --socket "$dir/netd.sock" "$@"; }
podman_cmd() {
    CONTAINERS_CONF=$dir/containers.conf in_bubble podman --root "$dir/podman/storage" \
        --runroot "$dir/podman/run" --tmpdir "$dir/podman/tmp" --storage-driver vfs \
        --cgroup-manager cgroupfs --events-backend file "$@"
}

ip netns add "$bubble"
ip -n "$bubble" link set lo up
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n' >"$dir/subnet.env"
nsenter --net="/run/netns/$bubble" "$netd" run --state-dir "$dir/state" --socket "$dir/netd.sock" --subnet-file "$dir/subnet.env" >/dev/null 2>"$dir/netd.log" &
pids+=($!)
wait_for "hpk-netd" test -S "$dir/netd.sock"

# A busybox rootfs; the same as an OCI image (umoci) and as a Podman image.
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" "$dir/rootfs/etc" "$dir/rootfs/tmp"
cp /bin/busybox "$dir/rootfs/bin/"
for a in sh true; do ln -s busybox "$dir/rootfs/bin/$a"; done
umoci init --layout "$dir/layout"
umoci new --image "$dir/layout:latest"
umoci unpack --image "$dir/layout:latest" "$dir/build" >/dev/null
rm -rf "$dir/build/rootfs" && cp -a "$dir/rootfs" "$dir/build/rootfs"
umoci repack --image "$dir/layout:latest" "$dir/build"
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' >"$dir/containers.conf"
tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
podman_cmd import "$dir/rootfs.tar" localhost/hpk-bench:1 >/dev/null 2>&1
"$hpktainer" hooks install --hook "$hook" --socket "$dir/netd.sock" --podman "$dir/hooks.d" --cdi "$dir/cdi" >/dev/null

# Plain runc bundles: the same rootfs, with and without our hooks.
make_bundle() { # NAME HOOKS(yes|no)
    mkdir -p "$dir/$1"
    runc spec --bundle "$dir/$1"
    local hooks='{}'
    [ "$2" = yes ] && hooks=$(jq '.hooks' <("$hpktainer" hooks install --hook "$hook" --socket "$dir/netd.sock" --print-config-json))
    jq --arg root "$dir/rootfs" --argjson hooks "$hooks" \
        '.process.terminal=false | .process.args=["true"] | .root={path:$root,readonly:true} | .hooks=$hooks
         | .linux.namespaces += [{"type":"network"}] | .linux.namespaces |= unique_by(.type)' \
        "$dir/$1/config.json" >"$dir/$1/c.json"
    mv "$dir/$1/c.json" "$dir/$1/config.json"
}
make_bundle plain no
make_bundle hooked yes

hpk run --rm "oci:$dir/layout:latest" true 2>/dev/null # pulls and unpacks once: the runs below are cached
podman_cmd run --rm --network none localhost/hpk-bench:1 true # warms Podman's storage

declare -A t
names=(runc runc_hooks hpk_none hpk_dir hpk_oci podman podman_hooks)
for n in "${names[@]}"; do t[$n]=""; done
measure() { # NAME CMD...
    local n=$1 s; shift
    s=$(now_ns); "$@" </dev/null >/dev/null; t[$n]+="$(ms_since "$s") "
}
for i in $(seq "$runs"); do
    measure runc in_bubble runc --root "$dir/runc" run --bundle "$dir/plain" "p$i"
    measure runc_hooks in_bubble runc --root "$dir/runc" run --bundle "$dir/hooked" "h$i"
    measure hpk_none hpk run --rm --network none "$dir/rootfs" true
    measure hpk_dir hpk run --rm "$dir/rootfs" true
    measure hpk_oci hpk run --rm "oci:$dir/layout:latest" true
    measure podman podman_cmd run --rm --network none localhost/hpk-bench:1 true
    measure podman_hooks podman_cmd --hooks-dir "$dir/hooks.d" run --rm --network none localhost/hpk-bench:1 true
done
m() { median ${t[$1]}; }

printf '\nContainer start-up, busybox true (%s runs each, medians; kernel %s, %s cores)\n\n' "$runs" "$(uname -r)" "$(nproc)"
printf '%-58s %9s %8s\n' "" "ms" "x runc"
row() { printf '%-58s %9s %8s\n' "$1" "$(m "$2")" "$(ratio "$(m "$2")" "$(m runc)")"; }
row "runc run, no hooks" runc
row "runc run, our hooks (attach + detach)" runc_hooks
row "hpktainer run --rm --network none DIR true" hpk_none
row "hpktainer run --rm DIR true (overlay network)" hpk_dir
row "hpktainer run --rm oci:IMAGE true (cached, overlay rootfs)" hpk_oci
row "podman run --rm --network none IMAGE true" podman
row "podman run, hooks.d from hpktainer hooks install" podman_hooks
printf '\nWhere it goes: hooks %.1f ms (runc with - without); hpktainer itself %.1f ms\n' \
    "$(awk -v a="$(m runc_hooks)" -v b="$(m runc)" 'BEGIN{print a-b}')" \
    "$(awk -v a="$(m hpk_none)" -v b="$(m runc)" 'BEGIN{print a-b}')"
printf '(--network none vs runc: spec, state directory, sweep); netd status check + hooks %.1f ms;\n' \
    "$(awk -v a="$(m hpk_dir)" -v b="$(m hpk_none)" 'BEGIN{print a-b}')"
printf 'cached image lookup + overlay mount %.1f ms.\n' \
    "$(awk -v a="$(m hpk_oci)" -v b="$(m hpk_dir)" 'BEGIN{print a-b}')"
