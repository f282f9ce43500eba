#!/usr/bin/env bash
# Opens a shell in bubble ID (or runs CMD there), as `apptainer shell instance://bubbleID`
# did for the original. When the bubble runs on another node of the job, goes there with
# `srun --overlap`.
#
#   scripts/hpk-enter.sh ID [CMD [ARG...]]      (HPK_SHARED_DIR: the job's shared dir)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 ID [CMD...]" >&2; exit 2; }
. "$(dirname "$0")/lib-bin.sh"
id=$1
shift
[ -n "${HPK_SHARED_DIR:-}" ] || { echo "set HPK_SHARED_DIR to the shared dir of the job (hpk.slurm prints it)" >&2; exit 2; }
record=$HPK_SHARED_DIR/bubble-$id.json
[ -s "$record" ] || { echo "bubble $id is not running: no $record" >&2; exit 1; }
host=$(jq -r .host "$record")
job=$(jq -r '.job // empty' "$record")
if [ "$host" != "$(hostname)" ] && [ -n "$job" ]; then
    pty=()
    [ -t 0 ] && [ $# -eq 0 ] && pty=(--pty)
    exec srun --jobid="$job" --overlap --nodes=1 --ntasks=1 -w "$host" "${pty[@]}" \
        env PATH="$PATH" HPK_SHARED_DIR="$HPK_SHARED_DIR" hpk-bubble shell "$id" -- "${@:-${SHELL:-/bin/sh}}"
fi
if [ $# -eq 0 ]; then
    exec hpk-bubble shell "$id"
fi
exec hpk-bubble shell "$id" -- "$@"
