#!/usr/bin/env bash
# OpenMPI's remote shell for ranks in nested containers (mpirun --mca plm_rsh_agent, set
# by scripts/mpi-job.sh): mpirun calls it as `AGENT HOST COMMAND...` once per container, as
# it would call ssh, to start its daemon (orted) there. HOST is the container's overlay
# address; HPK_MPI_MAP names the file that maps it to the container's bubble and name
# (lines "ADDRESS BUBBLE NAME"). The command runs in that container with
# `hpk-enter.sh BUBBLE hpktainer exec NAME sh -c COMMAND`: srun --overlap to the bubble's
# node, nsenter into the bubble, runc exec into the container.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 HOST COMMAND..." >&2; exit 2; }
host=$1
shift
map=${HPK_MPI_MAP:?set HPK_MPI_MAP to the address map scripts/mpi-job.sh writes}
bubble="" name=""
while read -r address b n; do
    if [ "$address" = "$host" ]; then bubble=$b name=$n; break; fi
done <"$map"
[ -n "$name" ] || { echo "mpi-rsh: $host is not in $map" >&2; exit 1; }
# ssh joins its arguments into one command line for the remote shell; so does this.
exec "$(dirname "$0")/hpk-enter.sh" "$bubble" hpktainer exec "$name" sh -c "$*"
