#!/usr/bin/env bash
# Installs what hpktainer needs to build, run and test on Debian 12, as root.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
    iproute2 iptables nftables iputils-ping procps util-linux   # kernel networking tools
    ethtool                                                     # tests: NIC-like veths
    iperf3 sockperf jq shellcheck                               # benchmarks, test checks, script lint
    busybox-static runc crun                                    # nested containers in tests
    skopeo umoci docker-registry podman                         # hpktainer: images, registry, Podman tests
    mmdebstrap                                                  # make images' test: a local Debian base
    vagrant ruby                                                # vagrant/: validated (no VMs run here)
    etcd-server etcd-client slirp4netns passt                   # bubbles and the overlay
    aardvark-dns dnsperf socat                                  # names and ports: an upstream DNS, the DNS bench, a UDP server
    slurmctld slurmd slurm-client munge                         # the simulated Slurm cluster
    openmpi-bin                                                 # mpirun on the login node (MPI test, bench)
    protobuf-compiler libprotobuf-dev                           # etcd-client's build
    build-essential pkg-config ca-certificates
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
cargo not found. hpktainer needs Rust 1.88 or newer (Debian 12's rustc 1.63 is too old):
install it with rustup (https://rustup.rs) and run this again.
MSG
    exit 1
fi
