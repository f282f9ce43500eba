#!/usr/bin/env bash
# Starts bubble ID on this node as the controller or a node, in the foreground, until
# SIGTERM (scancel, Ctrl-C). Configuration: the HPK_* variables of `hpk-bubble start --help`
# (HPK_SHARED_DIR is required), and HPK_NETD_* for hpk-netd.
#
#   scripts/hpk-bubble.sh ID controller|node [hpk-bubble start options]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ID controller|node [options]" >&2; exit 2; }
. "$(dirname "$0")/lib-bin.sh"
exec hpk-bubble start "$@"
