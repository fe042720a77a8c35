#!/usr/bin/env bash
# Build guest images until `bottle image build` covers it:
#   scripts/build-image.sh tiny            tiny initramfs with the guest agent
#   scripts/build-image.sh debian [--claude] [--erofs] [--name N] [--package P]...
# Builds the static guest agent first (scripts/build-guest.sh). Prints the
# image path. The Debian image needs root and network to the Debian mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
[ -n "$kind" ] || { echo "usage: $0 tiny|debian [options]" >&2; exit 2; }
shift
guest="$(scripts/build-guest.sh)"
cargo build --release -q -p bottle-vmm --example image
exec target/release/examples/image "$kind" --guest "$guest" "$@"
