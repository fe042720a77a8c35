#!/usr/bin/env bash
# libkrun next to qemu inside the nested runner's L1 VM, in the same run
# (issue 18): bottle doctor's bare boot probes (libkrun/kvm, qemu/kvm,
# qemu/tcg in L1) and RUNS `bottle run --vm -- /bin/true` per engine.
# Usage: bench/nested.sh [RUNS]   (default 5)
# Last line: "qemu-tcg/libkrun run ratio: X.XX".
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
NESTED_QEMU=1 NESTED_FILES="bench/nested-l1.sh:/nested/bench.sh" \
    scripts/nested-runner -- /bin/sh /nested/bench.sh "${1:-5}"
echo "whole nested run (L1 boot included): $(( $(date +%s) - start )) s"
