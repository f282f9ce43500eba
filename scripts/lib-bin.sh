# shellcheck shell=bash
# Sourced by the bubble scripts: puts hpktainer's binaries on PATH. They are looked for in
# $HPK_BIN, then the checkout's bin/ (make binaries), then cargo's target dirs; else PATH.
hpk_bin_path() {
    local root d
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    for d in "${HPK_BIN:-}" "$root/bin" "$root/target/release" "$root/target/debug"; do
        if [ -n "$d" ] && [ -x "$d/hpk-bubble" ]; then
            PATH=$d:$PATH
            export PATH
            return 0
        fi
    done
    command -v hpk-bubble >/dev/null ||
        { echo "hpk-bubble not found: run 'make binaries' in $root, or set HPK_BIN" >&2; exit 1; }
}
hpk_bin_path
