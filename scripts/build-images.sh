#!/usr/bin/env bash
# Builds the images (`make images`): hpktainer-base and hpk-bubble for every platform in
# PLATFORMS, tagged REGISTRY/NAME:VERSION and :latest, pushed when PUSH=1. Uses docker
# buildx when Docker has it, else Podman (or Buildah) with the same variables.
#
#   REGISTRY=myregistry.io/user PLATFORMS=linux/amd64 PUSH=0 scripts/build-images.sh
#
# Variables: REGISTRY (docker.io/chazapis), VERSION (the workspace's), PLATFORMS
# (linux/amd64,linux/arm64), PUSH (1), IMAGES (hpktainer-base hpk-bubble),
# HPKTAINER_BASE_FROM / HPK_BUBBLE_FROM (base images; the Containerfiles' defaults
# otherwise), BUILD_ARGS (more --build-arg KEY=VALUE, e.g. K3S_VERSION=v1.30.4+k3s1).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
registry=${REGISTRY:-docker.io/chazapis}
version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
platforms=${PLATFORMS:-linux/amd64,linux/arm64}
push=${PUSH:-1}
images=${IMAGES:-hpktainer-base hpk-bubble}
binaries=(hpk-netd hpk-net-daemon hpk-hook hpktainer hpk-bubble)

die() { echo "build-images: $*" >&2; exit 1; }

host_arch() {
    case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
    esac
}
rust_target() {
    case $1 in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "no Rust target known for $1" ;;
    esac
}

# Release binaries for each architecture into bin/linux/ARCH/.
IFS=, read -r -a plats <<<"$platforms"
for plat in "${plats[@]}"; do
    arch=${plat#linux/}
    out=bin/linux/$arch
    mkdir -p "$out"
    if [ "$arch" = "$(host_arch)" ]; then
        cargo build --release --locked --workspace --bins
        src=target/release
    else
        target=$(rust_target "$arch")
        rustup target list --installed 2>/dev/null | grep -qx "$target" ||
            die "no binaries for $plat: install the Rust target (rustup target add $target) and a linker for it (gcc-aarch64-linux-gnu, with CARGO_TARGET_${target^^}_LINKER set; dashes as underscores), or build only PLATFORMS=linux/$(host_arch)"
        cargo build --release --locked --workspace --bins --target "$target"
        src=target/$target/release
    fi
    for b in "${binaries[@]}"; do install -m 0755 "$src/$b" "$out/$b"; done
    # hpktainer-base has no C library (busybox): its hpk-net-daemon is linked statically
    # (it resolves no names, which static glibc could not do through NSS).
    target=$(rust_target "$arch")
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p hpk-netd \
        --bin hpk-net-daemon --target "$target" --target-dir target/static
    mkdir -p "$out/static"
    install -m 0755 "target/static/$target/release/hpk-net-daemon" "$out/static/hpk-net-daemon"
done

build_args() { # NAME: --build-arg list
    local from=
    case $1 in
    hpktainer-base) from=${HPKTAINER_BASE_FROM:-} ;;
    hpk-bubble) from=${HPK_BUBBLE_FROM:-} ;;
    esac
    [ -z "$from" ] || printf -- '--build-arg\nBASE=%s\n' "$from"
    for a in ${BUILD_ARGS:-}; do printf -- '--build-arg\n%s\n' "$a"; done
}

if docker buildx version >/dev/null 2>&1; then
    builder=buildx
elif command -v podman >/dev/null 2>&1; then
    builder=podman
elif command -v buildah >/dev/null 2>&1; then
    builder=buildah
else
    die "no image builder: install Docker with buildx, or Podman (apt-get install podman) or Buildah"
fi
echo "build-images: $builder, $platforms, $registry, version $version, push=$push"

for name in $images; do
    file=images/$name/Containerfile
    [ -f "$file" ] || die "$file does not exist (IMAGES lists $name)"
    ref=$registry/$name
    mapfile -t args < <(build_args "$name")
    case $builder in
    buildx)
        out=(--load)
        [ "$push" = 1 ] && out=(--push)
        docker buildx build --platform "$platforms" -f "$file" "${args[@]}" \
            -t "$ref:$version" -t "$ref:latest" "${out[@]}" . ;;
    podman|buildah)
        # A manifest list holds one image per platform; TARGETARCH is set per platform.
        "$builder" manifest rm "$ref:$version" >/dev/null 2>&1 || true
        "$builder" manifest create "$ref:$version" >/dev/null
        for plat in "${plats[@]}"; do
            if [ "$builder" = podman ]; then
                podman build --platform "$plat" -f "$file" "${args[@]}" --manifest "$ref:$version" .
            else
                buildah bud --platform "$plat" -f "$file" "${args[@]}" --manifest "$ref:$version" .
            fi
        done
        # :latest names the same images; a single platform is also a plain local image.
        "$builder" manifest rm "$ref:latest" >/dev/null 2>&1 || true
        "$builder" tag "$ref:$version" "$ref:latest"
        if [ "$push" = 1 ]; then
            for tag in "$version" latest; do
                "$builder" manifest push --all "$ref:$tag" "docker://$ref:$tag"
            done
        fi ;;
    esac
    echo "build-images: $ref:$version and :latest ($platforms)"
done
