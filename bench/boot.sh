#!/usr/bin/env bash
# Boot benchmark, bottle next to the bare engine in one run (issue 8, 9):
#   - bare engine (the vmm `boot` example): spawn to the BOTTLE-GUEST-READY
#     marker, same kernel and busybox image with an init that prints the
#     marker at once (no agent handshake), no bottle around it; one bare
#     boot before each bottle run, so both sides see the same load;
#   - `bottle run --vm --yes bench -- true` to its exit, with a breakdown
#     (planned, launched = bundle ready + VM started, agent ready,
#     provisioned, command done, torn down) and the bundle's idle RSS;
#   - `bottle run --docker` under runc and runsc next to a bare
#     `docker run --rm --network none` of the same image.
#   - the same `bottle run --vm -- true` with the Debian image (what users
#     run), with the same breakdown including each provisioning step.
#   - warm start (docs/pool.md): `bottle pool start` of the same shape, then
#     the same run claiming a pooled guest each time (the refill is awaited
#     between runs, outside the measure), claim to the command's exit; and
#     one idle pooled guest's cost (RSS of qemu and bundle, CPU % over 10 s).
#     Debian too when its image is built.
# Usage: bench/boot.sh [RUNS]   (default 20; SKIP_DOCKER=1 skips Docker,
# SKIP_DEBIAN=1 the Debian image)
# Last lines: "docker boot p50 ms: X", "docker/bare boot ratio: Y.YY"
# (runsc), then "boot p50 ms: X", "vm/bare boot ratio: Y.YY" and
# "debian/tiny boot ratio: Z.ZZ" (Debian image's p50 over the tiny image's),
# "warm start p50 ms: N" (tiny image, claim to the exit of `true`) and
# "pooled guest idle: RSS …, CPU …".
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
export BOTTLE="$target/release/bottle" BOOT_EXAMPLE="$target/release/examples/boot"
cargo build --release -q --bin bottle --bin bottle-bundle
cargo build --release -q -p bottle-vmm --example boot
./scripts/build-guest.sh >/dev/null
"$BOTTLE" image build tiny >/dev/null
"$BOTTLE" image build debian >/dev/null 2>&1 || echo "boot.sh: no Debian image (needs root and mmdebstrap); its runs are skipped" >&2
exec python3 bench/boot.py "${1:-20}"
