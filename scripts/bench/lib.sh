# Helpers shared by the benchmark and demo scripts (sourced, not run).
# Start daemons in the background with `nsenter ... &` directly, never through a shell
# function: `$!` would then be the function's subshell, and the daemon would outlive cleanup.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Path of a release binary built by `make binaries`.
bench_binary() {
    local bin=$root/bin/$1
    [ -x "$bin" ] || { echo "$bin missing: run 'make binaries' first" >&2; exit 1; }
    echo "$bin"
}

# wait_for WHAT CMD...: retries CMD until it succeeds, for at most 10 s.
wait_for() {
    local what=$1; shift
    local end=$((SECONDS + 10))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { echo "timed out waiting for $what" >&2; return 1; }
        sleep 0.02
    done
}

# wait_for_file PATH: waits for PATH to have content and prints it.
wait_for_file() {
    wait_for "$1" test -s "$1"
    cat "$1"
}

link_is_up() {
    ip -n "$1" -j link show dev "$2" | jq -e '.[0].flags | index("UP")' >/dev/null
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'
}

# daemon_memory PID...: the largest RSS and private-dirty KiB among the forwarder pids.
daemon_memory() {
    local pid rss=0 priv=0 r d
    for pid in "$@"; do
        [ "$(cat /proc/$pid/comm 2>/dev/null)" = hpk-net-daemon ] || continue
        r=$(awk '/^Rss:/{print $2}' /proc/$pid/smaps_rollup)
        d=$(awk '/^Private_Dirty:/{print $2}' /proc/$pid/smaps_rollup)
        [ "$r" -gt "$rss" ] && rss=$r
        [ "$d" -gt "$priv" ] && priv=$d
    done
    echo "$rss $priv"
}

# hpk_binaries: sets $netd and $hook to the release binaries and checks the forwarder.
hpk_binaries() {
    netd=$(bench_binary hpk-netd)
    hook=$(bench_binary hpk-hook)
    bench_binary hpk-net-daemon >/dev/null
}

# scratch PREFIX: sets $p (a unique name prefix) and $dir (a new scratch directory).
scratch() {
    p=$1$(printf '%04x' $((RANDOM)))
    dir=$(mktemp -d "/tmp/$p.XXXX")
}
