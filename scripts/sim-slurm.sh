#!/usr/bin/env bash
# A real Slurm cluster on one machine, for trying hpktainer's Slurm scripts: Debian's
# slurmctld, slurmd and munge, each node a network namespace (with its own hostname) on a
# LAN, and a router to an "outside world" HTTP server.
#
#   scripts/sim-slurm.sh up [-n NODES] [-d DIR]    start; prints how to use it
#   scripts/sim-slurm.sh run [-d DIR] CMD [ARG...] run CMD on the login node (sbatch, sinfo...)
#   scripts/sim-slurm.sh down [-d DIR]             stop everything and remove it
#
# Layout: LAN 192.0.2.0/24 in namespace hpksim-lan (router .1), controller hpksim-ctl
# (192.0.2.10), nodes hpksim-h1..hN (192.0.2.11..), outside hpksim-out (198.51.100.2,
# HTTP on port 80), and a login node hpksim-login (192.0.2.9) where `run` starts commands.
# Nothing is added to this machine's own namespace: its addresses stay untouched. Use it with `export SLURM_CONF=DIR/slurm.conf`, then sbatch/srun/sinfo
# as root or as any user. Needs root (namespaces); Debian packages slurmctld slurmd
# slurm-client munge.
set -euo pipefail

cmd=${1:-}
[ $# -gt 0 ] && shift
nodes=3
dir=/run/hpk-sim
while getopts "n:d:" opt; do
    case $opt in
    n) nodes=$OPTARG ;;
    d) dir=$OPTARG ;;
    *) cmd=usage ;;
    esac
done
p=hpksim

die() { echo "sim-slurm: $*" >&2; exit 1; }

# wait_until WHAT SECONDS CMD...: retries CMD until it succeeds, or fails naming WHAT.
wait_until() {
    local what=$1 limit=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt "$end" ] || die "timed out after ${limit}s waiting for $what (logs in $dir)"
        sleep 0.1
    done
}

node_names() { printf 'h%s ' $(seq "$nodes"); }

# in_node NS CMD...: runs CMD in node NS's network and UTS namespaces, with a private
# mount namespace where /etc/hosts names every node (jobs inherit it).
in_node() {
    local ns=$1; shift
    # shellcheck disable=SC2016 # "$0" and "$@" are the inner shell's, on purpose
    nsenter --net="/run/netns/$p-$ns" --uts="$dir/uts/$ns" \
        unshare --mount --propagation private \
        sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$dir/hosts" "$@"
}

veth_to_lan() {
    local ns=$1 addr=$2
    ip link add "$p-$ns" netns "$p-lan" type veth peer name eth0 netns "$p-$ns"
    ip -n "$p-lan" link set "$p-$ns" master lanbr up
    ip -n "$p-$ns" link set lo up
    ip -n "$p-$ns" link set eth0 up
    ip -n "$p-$ns" addr add "$addr/24" dev eth0
    ip -n "$p-$ns" route add default via 192.0.2.1
}

write_config() {
    mkdir -p "$dir/uts" "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
    {
        echo "127.0.0.1 localhost"
        echo "192.0.2.9 login"
        echo "192.0.2.10 ctl"
        for i in $(seq "$nodes"); do echo "192.0.2.$((10 + i)) h$i"; done
    } >"$dir/hosts"
    local nodelist="h[1-$nodes]"
    [ "$nodes" -eq 1 ] && nodelist=h1
    cat >"$dir/slurm.conf" <<EOF
ClusterName=hpksim
SlurmctldHost=ctl(192.0.2.10)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
NodeName=DEFAULT CPUs=2 RealMemory=1000 State=UNKNOWN
EOF
    for i in $(seq "$nodes"); do
        echo "NodeName=h$i NodeAddr=192.0.2.$((10 + i))" >>"$dir/slurm.conf"
    done
    echo "PartitionName=hpk Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP" >>"$dir/slurm.conf"
    chmod 0755 "$dir" "$dir/log"
    chmod 0644 "$dir/slurm.conf" "$dir/hosts"
}

start_munge() {
    chown munge:munge "$dir/munge"
    chmod 0755 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$dir/munge/munge.key"
    chmod 0400 "$dir/munge/munge.key"
    runuser -u munge -- munged --foreground --socket="$dir/munge/munge.socket.2" \
        --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" \
        </dev/null >"$dir/log/munged.out" 2>&1 &
    echo $! >"$dir/munged.launcher.pid"
    local end=$((SECONDS + 10))
    until [ -S "$dir/munge/munge.socket.2" ]; do
        kill -0 "$(cat "$dir/munged.launcher.pid")" 2>/dev/null ||
            die "munged did not start: $(tail -n 1 "$dir/log/munged.out") (every directory above $dir must be searchable by user munge)"
        [ $SECONDS -lt "$end" ] || die "timed out after 10s waiting for munged (logs in $dir)"
        sleep 0.1
    done
}

up() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces)"
    for b in slurmctld slurmd munged sinfo; do
        command -v "$b" >/dev/null || die "$b not found: apt-get install slurmctld slurmd slurm-client munge"
    done
    [ -e "/run/netns/$p-lan" ] && die "a simulated cluster is already up ($p-lan exists): run '$0 down' first"
    case $nodes in '' | *[!0-9]* | 0) die "-n wants a number of nodes (1 or more)" ;; esac
    # Jobs start rootless bubbles, whose taps need /dev/net/tun open to every user, as
    # distributions ship it (these machines ship 0600).
    chmod 0666 /dev/net/tun
    # From here on, a failure removes whatever was made.
    trap 'down >/dev/null 2>&1' EXIT
    write_config
    ip netns add "$p-lan"
    ip -n "$p-lan" link set lo up
    ip -n "$p-lan" link add lanbr type bridge
    ip -n "$p-lan" link set lanbr up
    ip -n "$p-lan" addr add 192.0.2.1/24 dev lanbr
    nsenter --net="/run/netns/$p-lan" sysctl -qw net.ipv4.ip_forward=1
    ip netns add "$p-out"
    ip link add wan0 netns "$p-lan" type veth peer name eth0 netns "$p-out"
    ip -n "$p-lan" link set wan0 up
    ip -n "$p-lan" addr add 198.51.100.1/24 dev wan0
    ip -n "$p-out" link set lo up
    ip -n "$p-out" link set eth0 up
    ip -n "$p-out" addr add 198.51.100.2/24 dev eth0
    ip -n "$p-out" route add default via 198.51.100.1
    mkdir -p "$dir/www"
    echo "hello from the outside world" >"$dir/www/index.html"
    nsenter --net="/run/netns/$p-out" busybox httpd -f -p 198.51.100.2:80 -h "$dir/www" \
        </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/httpd.pid"
    local ns addr i=0
    for ns in login ctl $(node_names); do
        ip netns add "$p-$ns"
        addr=192.0.2.$((9 + i))
        i=$((i + 1))
        veth_to_lan "$ns" "$addr"
        touch "$dir/uts/$ns"
        unshare --uts="$dir/uts/$ns" hostname "$ns"
    done
    start_munge
    in_node ctl slurmctld -D -i -f "$dir/slurm.conf" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.launcher.pid"
    for ns in $(node_names); do
        in_node "$ns" slurmd -D -N "$ns" -f "$dir/slurm.conf" </dev/null >>"$dir/log/slurmd-$ns.out" 2>&1 &
        echo $! >"$dir/slurmd-$ns.launcher.pid"
    done
    local dflag=""
    [ "$dir" = /run/hpk-sim ] || dflag=" -d $dir"
    idle() { [ "$(run sinfo -h -N -t idle -o %N | sort -u | wc -l)" -eq "$nodes" ]; }
    wait_until "$nodes idle nodes" 60 idle
    trap - EXIT
    cat <<EOF
Slurm is up: controller ctl (192.0.2.10), nodes $(node_names)(192.0.2.11-$((10 + nodes))),
outside HTTP server http://198.51.100.2/.
  $0 run$dflag sinfo
  $0 run$dflag sbatch --nodes=$nodes scripts/hpk.slurm
  $0 down$dflag      # when done
EOF
}

# run CMD...: CMD on the login node, with the cluster's slurm.conf.
run() {
    [ -s "$dir/slurm.conf" ] || die "no simulated cluster in $dir: run '$0 up' first"
    SLURM_CONF=$dir/slurm.conf in_node login "$@"
}

# kill_pidfile FILE: ends the process whose PID FILE holds (started by us), and waits.
kill_pidfile() {
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

down() {
    [ "$(id -u)" -eq 0 ] || die "needs root"
    local f ns
    # An `up` that stopped before making anything (another cluster was up) has no uts/:
    # the namespaces are that other cluster's, not this directory's.
    [ -d "$dir/uts" ] || { rm -rf "$dir"; return 0; }
    # Only the PIDs `up` recorded as it started each daemon (the daemons run in the
    # foreground, so these are the daemons themselves).
    for f in "$dir"/*.launcher.pid "$dir/httpd.pid"; do
        [ -e "$f" ] && kill_pidfile "$f"
    done
    for ns in out lan $(ls "$dir/uts" 2>/dev/null); do
        # Whatever a job left running in a node is ours too: end it, by PID.
        if [ -e "/run/netns/$p-$ns" ]; then
            for pid in $(ip netns pids "$p-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$p-$ns" 2>/dev/null || true
        fi
    done
    for f in "$dir"/uts/*; do [ -e "$f" ] && umount "$f" 2>/dev/null; done
    rm -rf "$dir"
}

case $cmd in
up) up ;;
run) shift $((OPTIND - 1)); [ $# -gt 0 ] || die "run wants a command"; run "$@" ;;
down) down ;;
*) echo "usage: $0 up [-n NODES] [-d DIR] | run [-d DIR] CMD... | down [-d DIR]" >&2; exit 2 ;;
esac
