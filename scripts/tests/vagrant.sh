#!/usr/bin/env bash
# The Vagrant test bed, checked without VMs (none run here): the Vagrantfile's Ruby, Vagrant's
# own validation (providers ignored), and the slurm.conf provision.sh writes, started by a
# real slurmctld in namespaces of its own (hostname `controller`, private /run, /var/spool
# and /var/log: it must never see, or kill, the pid file of a slurmctld of this machine). shellcheck of provision.sh is part of `make lint`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/hpk-vagrant.XXXX)
chmod 0755 "$work"   # slurmctld reads its config as the slurm user
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "vagrant test: FAIL: $*" >&2; exit 1; }

ruby -c "$root/vagrant/Vagrantfile" >/dev/null || fail "the Vagrantfile is not valid Ruby"
(cd "$root/vagrant" && VAGRANT_DOTFILE_PATH=$work/dot vagrant validate --ignore-provider >"$work/validate.log" 2>&1) ||
    fail "vagrant validate: $(cat "$work/validate.log")"

nodes=controller=192.168.56.10,node=192.168.56.11
"$root/vagrant/provision.sh" slurm-conf "$nodes" >"$work/slurm.conf"
printf '127.0.0.1 localhost\n192.168.56.10 controller\n192.168.56.11 node\n' >"$work/hosts"
mkdir -p "$work/log"
chown slurm "$work/log"
# shellcheck disable=SC2016  # expanded by the inner shell
timeout 30 unshare --uts --mount --net env WORK="$work" bash -c '
    set -e
    hostname controller
    ip link set lo up
    ip addr add 192.168.56.10/32 dev lo
    mount --make-rprivate /
    mount --bind "$WORK/hosts" /etc/hosts
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /var/spool
    mkdir -p /var/spool/slurmctld /var/spool/slurmd
    chown slurm /var/spool/slurmctld
    mount --bind "$WORK/log" /var/log
    mkdir -p /var/log/slurm && chown slurm /var/log/slurm
    slurmctld -D -f "$WORK/slurm.conf" -L "$WORK/log/slurmctld.log" 2>"$WORK/log/stderr" &
    pid=$!
    echo "$pid" >"$WORK/pid"
    # Up once it runs as the controller, after reading the configuration; or gone.
    for _ in $(seq 250); do
        grep -q "Running as primary controller" "$WORK/log/slurmctld.log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "Running as primary controller" "$WORK/log/slurmctld.log" || exit 1
    kill -0 "$pid" || exit 1
    kill "$pid"
    wait "$pid" || true
' || { pid=$(cat "$work/pid" 2>/dev/null || true); fail "slurmctld did not run with the generated slurm.conf: $(tail -5 "$work/log/slurmctld.log" 2>/dev/null)"; }
grep -q "started on cluster hpk" "$work/log/slurmctld.log" ||
    fail "slurmctld did not start: $(tail -5 "$work/log/slurmctld.log")"
if grep -E "fatal|invalid" "$work/log/slurmctld.log" >&2; then fail "slurmctld complained about the configuration"; fi
echo "vagrant test: ok (Ruby, vagrant validate, slurm.conf accepted by slurmctld $(slurmctld -V | cut -d' ' -f2))"
