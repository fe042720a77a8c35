#!/usr/bin/env bash
# Bare engine boot: the engine boots the project kernel and the tiny-probe
# image (placeholder init) to the BOTTLE-GUEST-READY console line, with no
# bottle around it (no bundle, no agent handshake, no provisioning). The
# `bottle run` side is added by the launcher's benchmark.
#
# Usage: bench/boot.sh [RUNS]            (default 20)
#   ENGINE=qemu|libkrun   (default qemu)   ACCEL=tcg|kvm (qemu; default tcg)
# Needs: the guest kernel (scripts/build-kernel.sh), qemu-system-x86,
# busybox-static; libkrun needs BOTTLE_LIBKRUN or libkrun.so.1 and KVM.
# Last line: "bare <engine>-<accel> boot p50 ms: X".
set -euo pipefail
RUNS=${1:-20}
ENGINE=${ENGINE:-qemu}
ACCEL=${ACCEL:-tcg}
cd "$(dirname "$0")/.."
cargo build --release -q -p bottle-vmm --bins --example boot
args=(--runs "$RUNS" --engine "$ENGINE")
[ "$ENGINE" = qemu ] && args+=(--accel "$ACCEL")
echo "host: $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$ENGINE" = qemu ] && echo "engine: $(qemu-system-x86_64 --version | head -n1)"
target/release/examples/boot "${args[@]}" 2>/dev/null
