#!/usr/bin/env bash
# The MPI image as a root filesystem directory: Debian 12 with Debian's OpenMPI (4.1.4:
# openmpi-bin, and libopenmpi-dev with gcc so that programs can be built in it), and two
# programs built here with mpicc: allreduce (a checked collective across ranks) and
# pingpong (OSU-style latency and bandwidth). `hpktainer run DIR ...` runs it as it is.
#
#   images/hpk-mpi/build.sh DIR        (as root; DIR must not exist yet; ~40 s, 535 MB)
#
# MIRROR: an apt sources file or mirror URL for mmdebstrap [default: this machine's
# /etc/apt/sources.list.d/debian.sources, else deb.debian.org]. The directory is made
# readable by every user: the bubbles' users run it. `tar -C DIR -c . | podman import -
# NAME` turns it into an image for a registry.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
[ "$(id -u)" -eq 0 ] || { echo "hpk-mpi: needs root (mmdebstrap in root mode)" >&2; exit 1; }
[ ! -e "$dir" ] || { echo "hpk-mpi: $dir exists; remove it or name another" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "hpk-mpi: install mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
mirror=${MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=http://deb.debian.org/debian
    [ -f /etc/apt/sources.list.d/debian.sources ] && mirror=/etc/apt/sources.list.d/debian.sources
fi

# The root is built next to DIR and renamed into place: a failed build leaves no DIR.
tmp=$dir.tmp.$$
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2016 # "$1" is mmdebstrap's hook argument (the root), on purpose
mmdebstrap --quiet --variant=apt \
    --include=openmpi-bin,libopenmpi-dev,gcc,libc6-dev,iproute2 \
    --customize-hook="copy-in $here/allreduce.c $here/pingpong.c /usr/local/src" \
    --customize-hook='chroot "$1" mpicc -O2 -Wall -o /usr/local/bin/allreduce /usr/local/src/allreduce.c' \
    --customize-hook='chroot "$1" mpicc -O2 -Wall -o /usr/local/bin/pingpong /usr/local/src/pingpong.c' \
    bookworm "$tmp" "$mirror"
# hpktainer binds its /etc/hosts and /etc/resolv.conf over files that exist. Without a
# localhost line OpenMPI's every lookup of "localhost" goes to DNS.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
touch "$tmp/etc/resolv.conf"
# A directory rootfs is used as it is, so bind targets must exist: /work for the user's.
mkdir -p "$tmp/work"
chmod -R a+rX "$tmp"
mv "$tmp" "$dir"
trap - EXIT
echo "hpk-mpi: $dir ($(chroot "$dir" mpirun --version | head -1))"
