#!/usr/bin/env bash
# The main job, on one machine: a real Slurm (scripts/sim-slurm.sh: 3 nodes as network
# namespaces on a LAN, an outside HTTP server), `sbatch --nodes=3 scripts/hpk.slurm` as an
# unprivileged user, a web server container `web` in bubble 3 with a published port, and a
# container in bubble 1 that shows its overlay address, finds web by name, pings it,
# fetches 8 MB from it (checksum compared) and a page from the outside; then the login node
# fetches the same from web's published port. Then scancel, and a check that nothing is
# left.
#
#   scripts/demo.sh [-k]     (-k: keep the cluster up and print how to use it)
# Needs root (namespaces) and `make binaries` (or cargo build) done.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
sim=$here/scripts/sim-slurm.sh
keep=no
while getopts "k" opt; do
    case $opt in
    k) keep=yes ;;
    *) echo "usage: $0 [-k]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (it builds the simulated cluster)" >&2; exit 1; }
user=nobody
dir=$(mktemp -d /tmp/hpk-demo.XXXX)
chmod 0755 "$dir"
simdir=$dir/sim
job_dir=$dir/job
step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }
in_login() { "$sim" run -d "$simdir" "$@"; }
enter() { in_login runuser -u "$user" -- env HPK_SHARED_DIR="$shared" "$here/scripts/hpk-enter.sh" "$@"; }
job=""
cleanup() {
    if [ -n "$job" ]; then in_login scancel "$job" >/dev/null 2>&1 || true; fi
    "$sim" down -d "$simdir" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

step "a Slurm cluster of 3 nodes on this machine"
"$sim" up -n 3 -d "$simdir" >/dev/null
in_login sinfo

# A container image: busybox as a root file system, readable by the job's user.
rootfs=$dir/rootfs
mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs"/{proc,sys,dev,tmp,etc}
cp /bin/busybox "$rootfs/bin/"
for a in sh ip ping wget httpd md5sum sleep cat grep nslookup; do ln -s busybox "$rootfs/bin/$a"; done
# A directory as root: the files hpktainer binds over must exist (resolv.conf: the
# bubble's DNS server for container names).
touch "$rootfs/etc/resolv.conf" "$rootfs/etc/hosts"
head -c 8M /dev/urandom >"$rootfs/www/blob"
want=$(md5sum <"$rootfs/www/blob" | cut -d' ' -f1)
chmod -R a+rX "$rootfs"
mkdir -p "$job_dir"
chmod 0777 "$job_dir"

step "sbatch --nodes=3 scripts/hpk.slurm (as $user)"
start=$(date +%s%N)
job=$(in_login runuser -u "$user" -- sbatch --parsable --nodes=3 --chdir="$job_dir" \
    --output="$job_dir/hpk.out" "$here/scripts/hpk.slurm")
shared=$job_dir/hpk-$job
for _ in $(seq 600); do
    grep -q "cluster ready" "$job_dir/hpk.out" 2>/dev/null && break
    [ -n "$(in_login squeue -h -j "$job" 2>/dev/null)" ] || break
    sleep 0.1
done
grep -q "cluster ready" "$job_dir/hpk.out" || { cat "$job_dir/hpk.out" >&2; fail "the cluster did not come up"; }
echo "ready $(( ($(date +%s%N) - start) / 1000000 )) ms after sbatch"
cat "$job_dir/hpk.out"

step "bubble 3: hpktainer run -d --name web -p 18080:8080 ... httpd"
enter 3 hpktainer run -d --name web -p 18080:8080 -v "$rootfs/www:/www:ro" "$rootfs" httpd -f -v -p 8080 -h /www
web=$(enter 3 hpktainer ps --json | grep -o '"address": *"[0-9.]*"' | grep -o '[0-9.]*[0-9]')
echo "web server at $web"
enter 3 hpktainer port web

step "bubble 1: hpktainer run ... (tap0, web by name, 8 MB from bubble 3, the outside)"
out=$(enter 1 hpktainer run "$rootfs" sh -c "ip addr show tap0 && nslookup web && ping -c 3 web && wget -q -O - http://web:8080/blob | md5sum && wget -q -O - http://198.51.100.2/")
echo "$out"
echo "$out" | grep -q "inet 10.244." || fail "no overlay address on tap0"
echo "$out" | grep -q "Address: $web" || fail "web does not resolve to $web"
echo "$out" | grep -q " 0% packet loss" || fail "ping across bubbles"
echo "$out" | grep -q "^$want" || fail "the transfer's checksum differs (want $want)"
echo "$out" | grep -q "outside world" || fail "no answer from the outside"

step "the login node: wget http://h3:18080/blob (web's published port)"
out=$(in_login sh -c "wget -q -O - http://192.0.2.13:18080/blob | md5sum")
echo "$out"
echo "$out" | grep -q "^$want" || fail "the published port's transfer differs (want $want)"
enter 3 hpktainer logs web | grep -q "192.0.2.9" || fail "web did not see the login node's address"
echo "web saw the login node's own address (192.0.2.9)"

if [ $keep = yes ]; then
    cat <<EOF

The cluster stays up. Enter a bubble (as $user):
  $sim run -d $simdir runuser -u $user -- env HPK_SHARED_DIR=$shared $here/scripts/hpk-enter.sh 1
Press Enter to end it.
EOF
    read -r _
fi

step "scancel $job: nothing left"
in_login scancel "$job"
stop_start=$(date +%s%N)
gone() {
    [ -z "$(in_login squeue -h -j "$job" 2>/dev/null)" ] &&
        ! pgrep -u "$user" -f "hpk-bubble|slirp4netns|pasta|etcd|hpk-netd" >/dev/null
}
for _ in $(seq 300); do gone && break; sleep 0.1; done
gone || { pgrep -a -u "$user" -f "hpk-bubble|slirp4netns|pasta|etcd|hpk-netd" >&2; fail "processes left after scancel"; }
echo "all gone $(( ($(date +%s%N) - stop_start) / 1000000 )) ms after scancel"
cancelled=$job
job=""
left=$(ls "$shared"/bubble-*.json 2>/dev/null || true)
[ -z "$left" ] || fail "records left: $left"
state_left=$(find /tmp -maxdepth 1 -name "hpk-bubble-*-$cancelled-*" 2>/dev/null)
[ -z "$state_left" ] || fail "state dirs left: $state_left"
for h in 1 2 3; do
    ports=$(nsenter --net="/run/netns/hpksim-h$h" ss -Hlntu | grep -E ':(2379|8472|6443|18080) ' || true)
    [ -z "$ports" ] || fail "ports still bound on h$h: $ports"
    links=$(ip -n "hpksim-h$h" -o link show | grep -vE ' (lo|eth0)[:@]' || true)
    [ -z "$links" ] || fail "links left on h$h: $links"
done
echo "logs kept: $(cd "$shared" && echo *)"
echo
echo "demo: ok"
