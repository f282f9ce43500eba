#!/usr/bin/env bash
# The main job as a test: scripts/demo.sh asserts each step of the Slurm flow (cluster up,
# containers across bubbles, transfer checksum, outside access, scancel leaves nothing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$("$here/demo.sh" 2>&1) || { echo "$out" >&2; echo "demo test: FAILED" >&2; exit 1; }
echo "$out" | tail -n 1 | grep -qx "demo: ok" || { echo "$out" >&2; exit 1; }
echo "demo test: ok"
