#!/usr/bin/env bash
# MPI ping-pong between two bubbles, next to the same two ranks run directly on the two
# hosts, in the same run. The simulated Slurm (scripts/sim-slurm.sh), `sbatch --nodes=2
# scripts/hpk.slurm` as an unprivileged user, the MPI image (images/hpk-mpi/build.sh, or
# HPK_MPI_IMAGE=DIR). The program is the image's pingpong (OSU-style: half the round
# trip of blocking send/receive for latency, windows of 64 non-blocking sends for
# bandwidth), started by mpirun on the login node both times:
#   host:    one rank on h1 and one on h2 (srun --overlap as the rsh agent), TCP on eth0
#   overlay: scripts/mpi-job.sh, one rank in a nested container in bubble 1 and one in
#            bubble 2, TCP on tap0 across the overlay
# BENCH_ROUNDS (3) alternating rounds, medians per size. Then a sanity check: the host
# pair again with both links shaped to 200 Mbit/s, whose bandwidth must stay under the
# cap (25 MB/s). Needs root (namespaces, mmdebstrap) and binaries.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
sim=$root/scripts/sim-slurm.sh
rounds=${BENCH_ROUNDS:-3}
user=nobody
dir=$(mktemp -d /tmp/hpk-bench-mpi.XXXX)
chmod 0755 "$dir"
job=""
in_login() { "$sim" run -d "$dir/sim" "$@"; }
as_user() { in_login runuser -u "$user" -- env HPK_SHARED_DIR="$shared" "$@"; }
cleanup() {
    if [ -n "$job" ]; then
        in_login scancel "$job" >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            [ -z "$(in_login squeue -h -j "$job" 2>/dev/null)" ] &&
                ! ls -d /tmp/hpk-bubble-*-"$job"-* >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
    "$sim" down -d "$dir/sim" >/dev/null 2>&1 || true
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
command -v mpirun >/dev/null || { echo "no mpirun: make deps installs openmpi-bin" >&2; exit 1; }

image=${HPK_MPI_IMAGE:-}
if [ -z "$image" ]; then
    image=$dir/hpk-mpi
    "$root/images/hpk-mpi/build.sh" "$image" >/dev/null
fi

"$sim" up -n 2 -d "$dir/sim" >/dev/null
mkdir -p "$dir/job"
chmod 0777 "$dir/job"
job=$(in_login runuser -u "$user" -- sbatch --parsable --nodes=2 --chdir="$dir/job" \
    --output="$dir/job/hpk.out" "$root/scripts/hpk.slurm")
shared=$dir/job/hpk-$job
for _ in $(seq 600); do
    grep -q "cluster ready" "$dir/job/hpk.out" 2>/dev/null && break
    [ -n "$(in_login squeue -h -j "$job" 2>/dev/null)" ] || break
    sleep 0.1
done
grep -q "cluster ready" "$dir/job/hpk.out" || { cat "$dir/job/hpk.out" >&2; exit 1; }

# Both runs alike: the three simulated nodes share this machine's cores, so ranks yield
# when idle and are not pinned (each node would pin its rank to core 0). Over TCP both:
# mpi-job.sh has the same BTLs (with one rank per container, shared memory goes unused).
common="--bind-to none --mca mpi_yield_when_idle 1 --timeout 600"
# The host pair's rsh agent: srun into the job's allocation on the node of that address.
cat >"$dir/host-rsh.sh" <<AGENT
#!/bin/sh
case \$1 in 192.0.2.11) node=h1 ;; 192.0.2.12) node=h2 ;; *) echo "no node at \$1" >&2; exit 1 ;; esac
shift
exec srun --jobid=$job --overlap --nodes=1 --ntasks=1 -w "\$node" sh -c "\$*"
AGENT
printf '192.0.2.11 slots=1\n192.0.2.12 slots=1\n' >"$dir/hosts"
chmod 0755 "$dir/host-rsh.sh"
chmod 0644 "$dir/hosts"
host_run() { # MAX_SIZE: the host pair's table
    # shellcheck disable=SC2086 # the common options split into words on purpose
    as_user env OMPI_MCA_plm_rsh_agent="$dir/host-rsh.sh" mpirun --hostfile "$dir/hosts" -np 2 \
        --mca plm_rsh_no_tree_spawn 1 --mca routed direct --mca btl tcp,self $common \
        --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
        "$image/usr/local/bin/pingpong" "$1" 2>"$dir/host.err" | grep -v '^#'
}
overlay_run() {
    as_user "$root/scripts/mpi-job.sh" -i "$image" -b "1 2" -o "$common" pingpong 2>"$dir/overlay.err" | grep -E '^[0-9]'
}
for r in $(seq "$rounds"); do
    host_run $((4 << 20)) >"$dir/host.$r" || { cat "$dir/host.err" >&2; echo "round $r: the host pair failed" >&2; exit 1; }
    overlay_run >"$dir/overlay.$r" || { cat "$dir/overlay.err" >&2; echo "round $r: mpi-job.sh failed" >&2; exit 1; }
done
# med KIND SIZE COLUMN: the median over rounds.
med() { cat "$dir/$1".* | awk -v s="$2" -v c="$3" '$1 == s { print $c }' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
row() { printf '%-9s %12s %12s %6s %14s %14s %6s\n' "$@"; }
echo "MPI ping-pong, h1 <-> h2 ($rounds rounds, medians; OpenMPI TCP BTL)"
row "size" "host lat us" "overlay us" "x" "host MB/s" "overlay MB/s" "x"
for s in 1 8 64 512 4096 32768 262144 1048576 4194304; do
    hl=$(med host "$s" 2) ol=$(med overlay "$s" 2) hb=$(med host "$s" 3) ob=$(med overlay "$s" 3)
    row "$s" "$hl" "$ol" "$(ratio "$ol" "$hl")" "$hb" "$ob" "$(ratio "$ob" "$hb")"
done

# Sanity: the bench sees a slower link. Both hosts' eth0 shaped to 200 Mbit/s.
for h in 1 2; do
    nsenter --net="/run/netns/hpksim-h$h" tc qdisc add dev eth0 root tbf rate 200mbit burst 256kbit latency 50ms
done
shaped=$(host_run $((1 << 20)) | awk '$1 == 1048576 { print $3 }') || { cat "$dir/host.err" >&2; exit 1; }
for h in 1 2; do nsenter --net="/run/netns/hpksim-h$h" tc qdisc del dev eth0 root; done
echo "sanity: host pair on links shaped to 200 Mbit/s (25 MB/s): 1 MiB bandwidth ${shaped:-none} MB/s"
awk -v b="${shaped:-0}" 'BEGIN { exit !(b > 0 && b < 25 * 1.05) }' ||
    echo "WARNING: the shaped bandwidth (${shaped:-none} MB/s) is not under the 25 MB/s cap" >&2
