#!/usr/bin/env bash
# An MPI job across bubbles, from the login node: one nested container per bubble (named
# PREFIX<bubble id>, e.g. rank1, rank2, rank3), then `mpirun` here with OpenMPI's remote
# shell set to scripts/mpi-rsh.sh, which starts mpirun's daemon in each container through
# hpk-enter.sh and `hpktainer exec`. Ranks talk over the overlay (tap0); the daemons reach
# mpirun through their bubble's NAT. The containers are removed at the end.
#
#   HPK_SHARED_DIR=DIR scripts/mpi-job.sh -i IMAGE [-b "1 2 3"] [-p PER] [-n PREFIX] [-k]
#       [-v SRC:DST[:ro]]... [-t SECONDS] [-o "MPIRUN OPTIONS"] PROGRAM [ARG...]
#
# -i IMAGE    the containers' image (HPK_MPI_IMAGE): any hpktainer image with OpenMPI of
#             the login node's version, e.g. the root filesystem images/hpk-mpi/build.sh makes
# -b LIST     the bubbles to use [default: every bubble of the job]
# -p PER      ranks per container [default: 1]; ranks fill the containers in bubble order
# -n PREFIX   container names [default: rank]
# -v BIND     a directory in every container, as hpktainer run -v (repeatable)
# -k          keep the containers afterwards (a next run with -r reuses them)
# -r          reuse running containers of these names instead of starting new ones
# -t SECONDS  end the job after SECONDS (mpirun --timeout; HPK_MPI_TIMEOUT) [default: none]
# -o OPTIONS  more mpirun options (HPK_MPI_ARGS), e.g. "--mca btl_tcp_eager_limit 65536"
#
# Needs mpirun (Debian's openmpi-bin) on the login node, of the same version as the
# image's: mpirun and its daemons speak one version's protocol.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${HPK_MPI_IMAGE:-}
bubbles=""
per=1
prefix=rank
keep=no
reuse=no
extra=${HPK_MPI_ARGS:-}
timeout=${HPK_MPI_TIMEOUT:-}
binds=()
usage() { sed -n 's/^#   //p; s/^# \(-. .*\)/  \1/p' "$0" >&2; exit 2; }
while getopts "i:b:p:n:v:krt:o:" opt; do
    case $opt in
    i) image=$OPTARG ;;
    b) bubbles=$OPTARG ;;
    p) per=$OPTARG ;;
    n) prefix=$OPTARG ;;
    v) binds+=(-v "$OPTARG") ;;
    k) keep=yes ;;
    r) reuse=yes ;;
    t) timeout=$OPTARG ;;
    o) extra=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
die() { echo "mpi-job: $*" >&2; exit 1; }
[ -n "$image" ] || [ $reuse = yes ] || die "name an image with -i (or HPK_MPI_IMAGE); images/hpk-mpi/build.sh makes one"
[ -n "${HPK_SHARED_DIR:-}" ] || die "set HPK_SHARED_DIR to the job's shared dir (hpk.slurm prints it)"
[[ $per =~ ^[1-9][0-9]*$ ]] || die "-p wants a number of ranks per container, not $per"
[ -z "$timeout" ] || [[ $timeout =~ ^[1-9][0-9]*$ ]] || die "-t wants seconds, not $timeout"
command -v mpirun >/dev/null || die "no mpirun on this node: install OpenMPI (apt-get install openmpi-bin), the image's version"
command -v jq >/dev/null || die "no jq on this node (apt-get install jq)"
if [ -z "$bubbles" ]; then
    bubbles=$(find "$HPK_SHARED_DIR" -maxdepth 1 -name 'bubble-*.json' -printf '%f\n' |
        sed 's/^bubble-\(.*\)\.json$/\1/' | sort -n | tr '\n' ' ')
fi
read -r -a ids <<<"$bubbles"
[ ${#ids[@]} -gt 0 ] || die "no bubbles in $HPK_SHARED_DIR: is the hpk.slurm job running?"

enter() { "$here/hpk-enter.sh" "$@"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/hpk-mpi.XXXXXX")
started=()
cleanup() {
    local s
    if [ $keep = no ]; then
        for s in "${started[@]}"; do enter "${s%%:*}" hpktainer rm --force "${s#*:}" >/dev/null 2>&1 || true; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# One container per bubble. Its PID 1 reaps what it inherits: mpirun's daemon daemonizes
# (as under ssh) and ends up its child.
for b in "${ids[@]}"; do
    name=$prefix$b
    if [ $reuse = no ]; then
        enter "$b" hpktainer run -d --name "$name" -e OMPI_MCA_oob_tcp_if_include=tap0 \
            -e OMPI_MCA_btl_tcp_if_include=tap0 "${binds[@]}" "$image" \
            bash -c 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done' >/dev/null ||
            die "cannot start $name in bubble $b (one left by -k? reuse it with -r, or remove it)"
        started+=("$b:$name")
    fi
    address=$(enter "$b" hpktainer ps --json | jq -r --arg n "$name" '.[] | select(.name == $n) | .address')
    [ -n "$address" ] && [ "$address" != null ] || die "$name in bubble $b has no overlay address"
    echo "$address $b $name" >>"$work/map"
    # Addresses, not names: mpirun looks every host up, and the login node does not
    # resolve the overlay's names.
    echo "$address slots=$per" >>"$work/hosts"
    echo "mpi-job: $name in bubble $b, $address, $per rank(s)"
done

first=${ids[0]}
mine=$(mpirun --version | head -1)
theirs=$(enter "$first" hpktainer exec "$prefix$first" mpirun --version | head -1) ||
    die "no mpirun in $prefix$first: the image needs OpenMPI"
[ "$mine" = "$theirs" ] || die "OpenMPI here is \"$mine\", in the image \"$theirs\": they must be the same version"

np=$((${#ids[@]} * per))
limit=()
# A rank that cannot reach another waits forever; mpirun ends it all after the limit.
[ -z "$timeout" ] || limit=(--timeout "$timeout")
echo "mpi-job: mpirun -np $np $*"
# The agent is given in mpirun's environment and environment MCA parameters are not
# passed on: the daemons would look for the agent's path in their containers.
# No tree spawn: only mpirun can reach the containers. vader's single copy needs ptrace
# rights that containers do not grant.
# shellcheck disable=SC2086 # the extra options split into words on purpose
OMPI_MCA_plm_rsh_agent=$here/mpi-rsh.sh HPK_MPI_MAP=$work/map \
    mpirun --hostfile "$work/hosts" -np "$np" --map-by slot "${limit[@]}" \
    --mca plm_rsh_pass_environ_mca_params 0 --mca plm_rsh_no_tree_spawn 1 --mca routed direct \
    --mca btl tcp,vader,self --mca btl_tcp_if_include tap0 --mca btl_vader_single_copy_mechanism none \
    $extra "$@"
