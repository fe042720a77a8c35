#!/usr/bin/env bash
# Builds libkrun from its crates.io release with the `net` and `blk`
# features (what bottle's libkrun engine needs: krun_add_net_unixstream,
# krun_add_disk) and prints the path of the resulting libkrun.so.1.
# Cached: <cache>/libkrun/<version>-net-blk/libkrun.so.1 is not rebuilt.
# The source comes through cargo itself (a scratch package depending on
# libkrun =VERSION, `cargo fetch`), so it works wherever cargo does.
#   LIBKRUN_VERSION   release to build (default 1.19.7)
#   FORCE=1           rebuild even when cached
set -euo pipefail
version="${LIBKRUN_VERSION:-1.19.7}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bottle/libkrun/$version-net-blk"
out="$cache/libkrun.so.1"
if [ -s "$out" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$cache"
work="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "build-libkrun: fetching libkrun $version" >&2
mkdir -p "$work/fetch/src"
cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "libkrun-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
libkrun = { version = "=$version", default-features = false }

[workspace]
TOML
: >"$work/fetch/src/lib.rs"
cargo fetch --manifest-path "$work/fetch/Cargo.toml" >&2
src="$(cargo metadata --manifest-path "$work/fetch/Cargo.toml" --format-version 1 \
    | python3 -c 'import json,sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "libkrun").rsplit("/", 1)[0])')"
# Build a copy: cargo's registry sources are read-only by convention.
cp -r "$src" "$work/libkrun"
echo "build-libkrun: building libkrun $version --features net,blk (a few minutes)" >&2
CARGO_TARGET_DIR="$work/target" cargo build --release --features net,blk \
    --manifest-path "$work/libkrun/Cargo.toml" >&2
cp "$work/target/release/libkrun.so" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
