#!/usr/bin/env python3
"""Two builds of bottle, or two guest agents, side by side: each round boots
the bare engine once (as bench/boot.sh does), then runs
`bottle run --vm --yes bench -- /bin/true` with A and with B, in swapped
order every other round (the run right after a bare boot is slower, so a
fixed order would favour one side). Prints the p50 of the whole run and of
each timing step, A next to B.

Usage:
  bench/ab.py [--runs N] DIR_A DIR_B
      DIR_A, DIR_B: directories holding `bottle` and `bottle-bundle`
      (e.g. copies of target/release from two commits). Both use the
      agent in BOTTLE_GUEST_BIN, else scripts/build-guest.sh's output.
  bench/ab.py [--runs N] --agents AGENT_A AGENT_B
      two static guest agents, run by target/release/bottle; their tiny
      images are built first. Adds the guest agent's own steps
      (BOTTLE_TIMING=guest) to the table.

Default 20 rounds. Needs what bench/boot.sh needs (a release build, the
vmm `boot` example, the guest kernel)."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "bench/boot.toml")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BARE = os.path.join(TARGET, "release/examples/boot")
AGENT = os.environ.get(
    "BOTTLE_GUEST_BIN", os.path.join(TARGET, "x86_64-unknown-linux-gnu/guest/bottle-guest")
)


def run_once(bottle, env):
    """One cold run: its wall time and each timing step, in ms."""
    start = time.monotonic()
    p = subprocess.run(
        [bottle, "run", "--vm", "--yes", "--manifest", MANIFEST, "bench", "--", "/bin/true"],
        env=env, capture_output=True, text=True,
    )
    if p.returncode != 0:
        sys.exit(f"{bottle} failed:\n{p.stderr[-3000:]}")
    steps = {"TOTAL": (time.monotonic() - start) * 1000}
    for step, ms in re.findall(r"bottle: timing (\S+) (\d+) ms", p.stderr):
        steps.setdefault("host " + step, int(ms))
    for step, ms in re.findall(r"bottle: guest timing (\S+) (\d+) ms", p.stderr):
        steps.setdefault("guest " + step, int(ms))
    return steps


def bare_once():
    p = subprocess.run([BARE, "--runs", "1", "--engine", "qemu", "--accel", "tcg"],
                       capture_output=True, text=True)
    m = re.search(r"boot p50 ms: (\d+)", p.stdout)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--agents", action="store_true", help="A and B are guest agents")
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="bottle-ab-")
    base = dict(os.environ, BOTTLE_STATE_DIR=state, BOTTLE_TIMING="guest" if args.agents else "1")
    sides = []
    for side in (args.a, args.b):
        if args.agents:
            bottle = os.path.join(TARGET, "release/bottle")
            env = dict(base, BOTTLE_GUEST_BIN=os.path.abspath(side))
            subprocess.run([bottle, "image", "build", "tiny"], env=env, check=True, capture_output=True)
        else:
            bottle = os.path.join(side, "bottle")
            env = dict(base, BOTTLE_GUEST_BIN=AGENT)
        sides.append((side, bottle, env))
    subprocess.run([sides[0][1], "trust", MANIFEST], env=sides[0][2], check=True, capture_output=True)
    results = {side: {} for side, _, _ in sides}
    bare = []
    for i in range(args.runs):
        ms = bare_once()
        if ms is not None:
            bare.append(ms)
        for side, bottle, env in (sides if i % 2 == 0 else sides[::-1]):
            for step, ms in run_once(bottle, env).items():
                results[side].setdefault(step, []).append(ms)
    names = [os.path.basename(os.path.normpath(s)) or s for s, _, _ in sides]
    print(f"{args.runs} rounds, order swapped every round; p50 ms")
    print("%-28s%14s%14s" % ("step", names[0][:13], names[1][:13]))
    steps = list(results[args.a])
    steps += [s for s in results[args.b] if s not in steps]
    for step in steps:
        cells = [results[s].get(step) for s, _, _ in sides]
        print("%-28s" % step + "".join("%14.0f" % statistics.median(c) if c else "%14s" % "-" for c in cells))
    if bare:
        print("%-28s%14.0f  (the bare engine, once per round)" % ("bare boot", statistics.median(bare)))


if __name__ == "__main__":
    main()
