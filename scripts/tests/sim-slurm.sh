#!/usr/bin/env bash
# Test of scripts/sim-slurm.sh: the cluster comes up, an unprivileged user's 3-node batch
# job runs one task on each node (each with its own hostname and address), a node reaches
# the outside server, and `down` leaves no namespace, process, mount or directory.
# On it, scripts/hpk.slurm restarts a bubble in place: bubble 2's launcher SIGKILLed is
# started again on its node with its subnet, the reason in the job's output and in
# SHARED/restarts.log; killed again within the minute (HPK_RESTARTS=1) it ends the job,
# which says which bubble and why, and leaves no process, record or state directory.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
sim=$here/sim-slurm.sh
dir=$(mktemp -d /tmp/hpksim-test.XXXX)
out=$(mktemp -d /tmp/hpksim-out.XXXX)
chmod 0777 "$out"
# munged (user munge) and the job (user nobody) must reach the cluster's files.
chmod 0755 "$dir"
fail() { echo "sim-slurm test: $*" >&2; exit 1; }
cleanup() { "$sim" down -d "$dir/sim" >/dev/null 2>&1 || true; rm -rf "$dir" "$out"; }
trap cleanup EXIT

"$sim" up -n 3 -d "$dir/sim" >/dev/null
[ "$("$sim" run -d "$dir/sim" sinfo -h -N -t idle -o %N | sort -u | tr '\n' ' ')" = "h1 h2 h3 " ] ||
    fail "not three idle nodes"

cat >"$dir/job.sh" <<JOB
#!/bin/sh
srun sh -c 'echo "\$(hostname) \$(ip -4 -br addr show eth0 | tr -s " " | cut -d" " -f3)"'
JOB
chmod 0755 "$dir/job.sh"
"$sim" run -d "$dir/sim" runuser -u nobody -- sbatch --nodes=3 --output="$out/job.out" "$dir/job.sh" >/dev/null
for _ in $(seq 200); do
    [ -s "$out/job.out" ] && [ "$(wc -l <"$out/job.out")" -ge 3 ] && break
    sleep 0.1
done
got=$(sort "$out/job.out" | tr '\n' ' ')
[ "$got" = "h1 192.0.2.11/24 h2 192.0.2.12/24 h3 192.0.2.13/24 " ] || fail "job output: $got"
nsenter --net=/run/netns/hpksim-h2 wget -q -O - http://198.51.100.2/ | grep -q "outside world" ||
    fail "a node cannot reach the outside server"

# record ID FIELD: a field of bubble ID's record in the hpk job's shared dir.
record() { sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\).*/\1/p" "$shared/bubble-$1.json" 2>/dev/null; }
# until WHAT COMMAND...: waits (60 s at most) for COMMAND to succeed.
until_ok() {
    local what=$1
    shift
    for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done
    cat "$job_dir/hpk.out" >&2
    fail "timed out waiting for $what"
}
job_dir=$out/hpk
mkdir -p "$job_dir"
chmod 0777 "$job_dir"
job=$("$sim" run -d "$dir/sim" runuser -u nobody -- env HPK_RESTARTS=1 sbatch --parsable \
    --nodes=3 --chdir="$job_dir" --output="$job_dir/hpk.out" "$here/hpk.slurm")
shared=$job_dir/hpk-$job
until_ok "the hpk cluster" grep -qs "cluster ready" "$job_dir/hpk.out"
subnet=$(record 2 subnet)
init=$(record 2 pid)
# Bubble 2's launcher: it writes its PID in the lock it holds in its state directory.
launcher() { cat "$(record 2 state_dir)/launcher.lock"; }
kill -KILL "$(launcher)"
until_ok "bubble 2 to come back" grep -qs "bubble 2 is back" "$job_dir/hpk.out"
grep -q "bubble 2 (node) on h2 ended (exit [0-9]*): srun: .*; starting it again on h2" \
    "$shared/restarts.log" || fail "no reason in restarts.log: $(cat "$shared/restarts.log")"
grep -q "took over the state directory" "$job_dir/hpk.out" || fail "no takeover in the job's output"
[ "$(record 2 subnet)" = "$subnet" ] || fail "bubble 2 came back with $(record 2 subnet), not $subnet"
[ "$(record 2 pid)" != "$init" ] || fail "bubble 2's record is the dead one's"
kill -KILL "$(launcher)"
gone() { [ -z "$("$sim" run -d "$dir/sim" squeue -h -j "$job" 2>/dev/null)" ]; }
until_ok "the job to end" gone
grep -q "bubble 2 (node) on h2 ended .*2 times within a minute: stopping the cluster" "$job_dir/hpk.out" ||
    { cat "$job_dir/hpk.out" >&2; fail "the job's end does not say which bubble and why"; }
# No process of the job is left (each carries the job's id in its environment).
no_processes() { ! grep -qlzx "SLURM_JOB_ID=$job" /proc/[0-9]*/environ 2>/dev/null; }
until_ok "the bubbles' processes to end" no_processes
left=$(ls "$shared"/bubble-*.json "$shared/pki" /tmp/hpk-bubble-*-"$job"-* 2>/dev/null || true)
[ -z "$left" ] || fail "left after the job: $left"

"$sim" down -d "$dir/sim"
left=$(ip netns list | grep -c '^hpksim-' || true)
[ "$left" -eq 0 ] || fail "$left namespaces left"
! mount | grep -q "$dir/sim" || fail "mounts left"
[ ! -e "$dir/sim" ] || fail "$dir/sim left"
! pgrep -f "$dir/sim/" >/dev/null || fail "processes of the cluster left"
echo "sim-slurm test: ok"
