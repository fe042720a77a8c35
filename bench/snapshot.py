#!/usr/bin/env python3
"""Snapshot restore vs cold boot under the same engine (issue 19's "or
restore from a snapshot": measured to pick by numbers).

    bench/snapshot.sh [RUNS]

Boots the bare tiny probe image (bottle's kernel, busybox init that prints
BOTTLE-GUEST-READY at once) with qemu `-machine microvm` as bottle runs it,
saves it once with QMP `migrate` to a file, then alternates RUNS times:
a cold boot (spawn to the marker on the console) and a restore from the
file (`-incoming`, spawn to the stream read and `cont` answered with QMP
`query-status` running, then to the guest kernel printing an injected NMI on
its console: proof that it runs). No bottle, no
agent, no network: the floor of each path. Prints the p50s, the
snapshot's size, and last `restore/cold ratio` (restore to the NMI answer
against the cold boot to the marker).
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time

QEMU = os.environ.get("BOTTLE_QEMU", "qemu-system-x86_64")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
ACCEL = os.environ.get("ACCEL", "tcg")
MARKER = b"BOTTLE-GUEST-READY"


def built_kernel(kernels):
    """The newest finished kernel build in the cache (a `vmlinux` next to its
    `fragment.sha256`), or None. `bottle doctor` names the one bottle boots;
    BOTTLE_KERNEL=path picks it when the cache holds several."""
    if not os.path.isdir(kernels):
        return None
    done = [os.path.join(kernels, d, "vmlinux") for d in os.listdir(kernels)
            if os.path.isfile(os.path.join(kernels, d, "vmlinux"))
            and os.path.isfile(os.path.join(kernels, d, "fragment.sha256"))]
    return max(done, key=os.path.getmtime, default=None)


def assets():
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bottle")
    kernel = os.environ.get("BOTTLE_KERNEL") or built_kernel(os.path.join(cache, "kernel"))
    images = os.path.join(cache, "images")
    probes = [os.path.join(images, d, "initramfs.cpio.gz") for d in sorted(os.listdir(images))
              if d.startswith("tiny-probe-") and os.path.isfile(os.path.join(images, d, "initramfs.cpio.gz"))]
    if not kernel or not probes:
        sys.exit("no guest kernel or tiny probe image in the cache: run `bottle doctor` (or scripts/setup) first")
    # The newest probe image.
    probes.sort(key=os.path.getmtime)
    return kernel, probes[-1]


def args(kernel, initrd, console, qmp, incoming=None):
    a = [QEMU, "-machine", "microvm,acpi=off,x-option-roms=off,isa-serial=on",
         "-accel", ACCEL, "-cpu", "max" if ACCEL == "tcg" else "host",
         "-smp", "1", "-m", "512M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
         "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1",
         "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
         "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        a += ["-incoming", f"exec:cat {incoming}"]
    return a


class Qmp:
    def __init__(self, path, deadline):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        self.f = self.s.makefile("rwb")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r


def wait_marker(console, deadline):
    while time.monotonic() < deadline:
        try:
            if MARKER in open(console, "rb").read():
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


def cold(kernel, initrd, work):
    console, qmp = os.path.join(work, "c.log"), os.path.join(work, "c.qmp")
    for p in (console, qmp):
        if os.path.exists(p):
            os.unlink(p)
    t = time.monotonic()
    p = subprocess.Popen(args(kernel, initrd, console, qmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = wait_marker(console, t + 60)
    ms = (time.monotonic() - t) * 1000
    p.kill(); p.wait()
    if not ok:
        sys.exit("cold boot: no marker within 60 s")
    return ms


def save(kernel, initrd, work):
    console, qmp, snap = os.path.join(work, "s.log"), os.path.join(work, "s.qmp"), os.path.join(work, "snap.bin")
    p = subprocess.Popen(args(kernel, initrd, console, qmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_marker(console, time.monotonic() + 60):
        sys.exit("snapshot boot: no marker within 60 s")
    time.sleep(0.5)  # let the init settle into its sleep
    q = Qmp(qmp, time.monotonic() + 10)
    q.cmd("stop")
    t = time.monotonic()
    q.cmd("migrate", uri=f"exec:cat > {snap}")
    while True:
        st = q.cmd("query-migrate")["return"].get("status")
        if st == "completed":
            break
        if st == "failed":
            sys.exit("migrate to file failed")
        time.sleep(0.005)
    save_ms = (time.monotonic() - t) * 1000
    p.kill(); p.wait()
    return snap, save_ms


def restore(kernel, initrd, work, snap):
    console, qmp = os.path.join(work, "r.log"), os.path.join(work, "r.qmp")
    for f in (console, qmp):
        if os.path.exists(f):
            os.unlink(f)
    t = time.monotonic()
    p = subprocess.Popen(args(kernel, initrd, console, qmp, incoming=snap), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    q = Qmp(qmp, t + 10)
    while True:
        st = q.cmd("query-status")["return"]
        if st.get("running"):
            break
        # The guest was saved stopped: once the stream is in, let it run.
        if st.get("status") == "paused" and q.cmd("query-migrate")["return"].get("status") == "completed":
            q.cmd("cont")
            continue
        if st.get("status") not in ("inmigrate", "prelaunch", "paused", "postmigrate", "finish-migrate"):
            sys.exit(f"restore ended in {st}")
        if time.monotonic() > t + 30:
            sys.exit("restore did not run within 30 s")
        time.sleep(0.001)
    running = (time.monotonic() - t) * 1000
    # Proof that the guest kernel runs, not only the monitor: an NMI makes
    # it print on the console.
    q.cmd("inject-nmi")
    answered = None
    while time.monotonic() < t + 30:
        if b"NMI" in open(console, "rb").read():
            answered = (time.monotonic() - t) * 1000
            break
        time.sleep(0.001)
    p.kill(); p.wait()
    if answered is None:
        sys.exit("the restored guest did not answer an NMI: " + p.stderr.read().decode(errors="replace")[-500:])
    return running, answered


def main():
    kernel, initrd = assets()
    with tempfile.TemporaryDirectory() as work:
        snap, save_ms = save(kernel, initrd, work)
        size = os.path.getsize(snap)
        colds, restores, answers = [], [], []
        for _ in range(RUNS):
            colds.append(cold(kernel, initrd, work))
            running, answered = restore(kernel, initrd, work, snap)
            restores.append(running)
            answers.append(answered)
        c, r, a = statistics.median(colds), statistics.median(restores), statistics.median(answers)
        print(f"engine: {QEMU} -accel {ACCEL}, microvm, 1 vCPU, 512 MiB; runs: {RUNS} (alternating)")
        print(f"kernel: {kernel}\ninitramfs: {initrd}")
        print(f"snapshot: {size / 1048576:.1f} MiB, saved in {save_ms:.0f} ms")
        print(f"cold boot, spawn to marker: p50 {c:.0f} ms (min {min(colds):.0f}, max {max(colds):.0f})")
        print(f"restore, spawn to running: p50 {r:.0f} ms (min {min(restores):.0f}, max {max(restores):.0f})")
        print(f"restore, spawn to the guest kernel printing an injected NMI: p50 {a:.0f} ms (min {min(answers):.0f}, max {max(answers):.0f})")
        print(f"restore/cold ratio: {a / c:.2f}")


if __name__ == "__main__":
    main()
