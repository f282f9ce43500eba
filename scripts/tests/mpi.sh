#!/usr/bin/env bash
# MPI across bubbles, the way a user runs it: the MPI image (images/hpk-mpi/build.sh:
# Debian's OpenMPI), `sbatch --nodes=3 scripts/hpk.slurm` on the simulated Slurm as an
# unprivileged user, then from the login node `scripts/mpi-job.sh -i IMAGE allreduce`:
# one rank in a nested container in each of the three bubbles. Checks that the three
# ranks ran in three containers, each in its own bubble's subnet on tap0, that the
# allreduce's every element is right, and that the job's containers are gone afterwards.
# Needs root (namespaces, mmdebstrap) and binaries. HPK_MPI_IMAGE=DIR reuses a built image.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
sim=$root/scripts/sim-slurm.sh
user=nobody
dir=$(mktemp -d /tmp/hpkmpi-test.XXXX)
chmod 0755 "$dir"
job=""
in_login() { "$sim" run -d "$dir/sim" "$@"; }
as_user() { in_login runuser -u "$user" -- env HPK_SHARED_DIR="$shared" "$@"; }
fail() { echo "mpi test: FAIL: $*" >&2; exit 1; }
cleanup() {
    if [ -n "$job" ]; then
        in_login scancel "$job" >/dev/null 2>&1 || true
        # The bubbles' state directories go once their launchers have stopped.
        for _ in $(seq 100); do
            [ -z "$(in_login squeue -h -j "$job" 2>/dev/null)" ] &&
                ! ls -d /tmp/hpk-bubble-*-"$job"-* >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
    "$sim" down -d "$dir/sim" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
command -v mpirun >/dev/null || fail "no mpirun: make deps installs openmpi-bin"

image=${HPK_MPI_IMAGE:-}
if [ -z "$image" ]; then
    image=$dir/hpk-mpi
    "$root/images/hpk-mpi/build.sh" "$image" >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; fail "the image did not build"; }
fi
[ -x "$image/usr/local/bin/allreduce" ] || fail "$image has no allreduce"

"$sim" up -n 3 -d "$dir/sim" >/dev/null
mkdir -p "$dir/job"
chmod 0777 "$dir/job"
job=$(in_login runuser -u "$user" -- sbatch --parsable --nodes=3 --chdir="$dir/job" \
    --output="$dir/job/hpk.out" "$root/scripts/hpk.slurm")
shared=$dir/job/hpk-$job
for _ in $(seq 600); do
    grep -q "cluster ready" "$dir/job/hpk.out" 2>/dev/null && break
    [ -n "$(in_login squeue -h -j "$job" 2>/dev/null)" ] || break
    sleep 0.1
done
grep -q "cluster ready" "$dir/job/hpk.out" || { cat "$dir/job/hpk.out" >&2; fail "the cluster did not come up"; }

# Three simulated nodes share this machine's cores: ranks must not spin or pin to core 0.
out=$(as_user "$root/scripts/mpi-job.sh" -i "$image" -t 120 -o "--bind-to none --mca mpi_yield_when_idle 1" \
    allreduce 2>&1) || { echo "$out" >&2; fail "mpi-job.sh failed"; }
echo "$out"
echo "$out" | grep -qx "allreduce: ok" || fail "the allreduce did not say ok"
echo "$out" | grep -qx "allreduce: sum of ranks 3 (expected 3), 0 wrong of 786432 (3 ranks x 262144 elements)" ||
    fail "the allreduce's result"
# Rank r in container rank<r+1>, on tap0 with an address in its own bubble's subnet.
for b in 1 2 3; do
    subnet=$(jq -r .subnet "$shared/bubble-$b.json")
    prefix=${subnet%.0/24}
    echo "$out" | grep -Eq "^rank $((b - 1)) of 3 on rank$b, tap0 ${prefix//./\\.}\.[0-9]+$" ||
        fail "rank $((b - 1)) is not in rank$b on bubble $b's subnet $subnet"
done
# mpi-job.sh removed its containers.
for b in 1 2 3; do
    left=$(as_user "$root/scripts/hpk-enter.sh" "$b" hpktainer ps -a --json | jq -r '.[].name')
    [ -z "$left" ] || fail "containers left in bubble $b: $left"
done
echo "mpi test: ok"
