#!/usr/bin/env bash
# Test of scripts/sim-slurm.sh: the cluster comes up, an unprivileged user's 3-node batch
# job runs one task on each node (each with its own hostname and address), a node reaches
# the outside server, and `down` leaves no namespace, process, mount or directory.
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

"$sim" down -d "$dir/sim"
left=$(ip netns list | grep -c '^hpksim-' || true)
[ "$left" -eq 0 ] || fail "$left namespaces left"
! mount | grep -q "$dir/sim" || fail "mounts left"
[ ! -e "$dir/sim" ] || fail "$dir/sim left"
! pgrep -f "$dir/sim/" >/dev/null || fail "processes of the cluster left"
echo "sim-slurm test: ok"
