#!/usr/bin/env bash
# User-defined image rebuild: adding one package to `[bottles.NAME.image]`
# (layered on the cached bare Debian tree: apt-get install in a chroot, then
# the root disk and the Docker tarball) next to what a rebuild without
# layering costs (a fresh mmdebstrap of the same package set), in one run.
# Needs root, mmdebstrap and the host's Debian mirror; the built-in `debian`
# image's tree must be cached (scripts/setup builds it).
# Usage: bench/image.sh
# Last lines: "layered rebuild s: X", "mmdebstrap s: Y", "layered/mmdebstrap ratio: Z.ZZ"
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin bottle --bin bottle-bundle
bottle=$PWD/target/release/bottle
work=$(mktemp -d)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
# A package set nobody else builds, so every step below really runs.
tag="bench$(date +%s)"
manifest() { # packages…
    local list
    list=$(printf '"%s", ' "$@")
    cat >"$work/bottle.toml" <<TOML
[bottles.$tag.image]
packages = [${list%, }]
setup = ["echo $tag > /etc/bench-tag"]
[agents.a]
bottle = "$tag"
TOML
    "$bottle" trust "$work/bottle.toml" >/dev/null
}
seconds() { # command… → wall seconds; a failed step fails the bench
    local s log=$work/step.log
    s=$(date +%s.%N)
    if ! "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "bench/image.sh: $* failed" >&2
        exit 1
    fi
    echo "$(date +%s.%N) - $s" | bc
}

manifest python3
first=$(seconds "$bottle" --manifest "$work/bottle.toml" image build "$tag")
echo "# first build (python3), base tree cached: ${first} s" >&2
manifest python3 jq
layered=$(seconds "$bottle" --manifest "$work/bottle.toml" image build "$tag")
echo "# one package added (jq): ${layered} s" >&2
full=$(seconds mmdebstrap --variant=minbase --mode=root --format=tar \
    --include=ca-certificates,git,curl,openssh-client,nodejs,npm,python3,jq \
    --dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/doc/* \
    --dpkgopt=path-exclude=/usr/share/locale/* bookworm "$work/full.tar")
echo "host: $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf 'layered rebuild s: %.1f\n' "$layered"
printf 'mmdebstrap s: %.1f\n' "$full"
awk -v a="$layered" -v b="$full" 'BEGIN { printf "layered/mmdebstrap ratio: %.2f\n", a / b }'
"$bottle" --manifest "$work/bottle.toml" image rm "custom-$tag" >/dev/null
