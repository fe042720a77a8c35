#!/bin/sh
# Builds the guest agent `bottle-guest` as a static x86_64 binary and prints
# its path. The VM images put it at /init (initramfs) and /sbin/bottle-guest.
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile guest -p bottle-guest --target "$target" --bin bottle-guest >&2
# The `guest` profile (Cargo.toml): size-optimised, whole-program LTO.
out="${CARGO_TARGET_DIR:-target}/$target/guest/bottle-guest"
# Refuse a dynamically linked result: the guest has no libc to load.
if command -v file >/dev/null 2>&1; then
    case "$(file -b "$out")" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) echo "build-guest: $out is not static: $(file -b "$out")" >&2; exit 1 ;;
    esac
fi
deps="$(ldd "$out" 2>&1 || true)"
case "$deps" in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) echo "build-guest: $out has dynamic dependencies:" >&2; echo "$deps" >&2; exit 1 ;;
esac
# The profile keeps line tables; the guest copy does not need them.
if command -v strip >/dev/null 2>&1; then
    strip "$out"
fi
echo "$out"
