#!/usr/bin/env python3
"""Boot benchmark: `bottle run --yes bench -- true` to its exit, next to the
bare engine booting the same kernel and tiny image to the same marker, and
(for Docker) next to a bare `docker run --rm --network none` of the same
image, all in one run. Prints a breakdown, then the ratios. See bench/boot.sh."""
import json, os, re, statistics, subprocess, sys, tempfile, time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
BOTTLE = os.environ.get("BOTTLE", "target/release/bottle")
MANIFEST = os.path.abspath("bench/boot.toml")
STATE = tempfile.mkdtemp(prefix="bottle-bench-state-")
ENV = dict(os.environ, BOTTLE_STATE_DIR=STATE, BOTTLE_TIMING="1")


def p50(xs):
    return statistics.median(xs) if xs else float("nan")


def trust(manifest):
    # A manifest outside the config dir runs only once trusted (docs/manifest.md).
    subprocess.run([BOTTLE, "trust", manifest], env=ENV, capture_output=True, check=True)


def run_bottle(backend, runtime=None, image=None, before_each=None):
    manifest = MANIFEST
    if runtime or image:
        text = open(MANIFEST).read()
        if runtime:
            text = text.replace('runtime = "auto"', f'runtime = "{runtime}"')
        if image:
            text = text.replace('image = "tiny"', f'image = "{image}"')
        manifest = os.path.join(STATE, f"boot-{runtime or 'vm'}-{image or 'tiny'}.toml")
        open(manifest, "w").write(text)
    trust(manifest)
    totals, steps = [], {}
    for i in range(RUNS):
        if before_each:
            before_each()
        start = time.monotonic()
        p = subprocess.run([BOTTLE, "run", backend, "--yes", "--manifest", manifest, "bench", "--", "/bin/true"],
                           env=ENV, capture_output=True, text=True)
        ms = (time.monotonic() - start) * 1000
        if p.returncode != 0:
            print(f"  run {i}: failed ({p.returncode}): {p.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
            continue
        totals.append(ms)
        for step, t in re.findall(r"bottle: timing (\S+) (\d+) ms", p.stderr):
            steps.setdefault(step, []).append(float(t))
    return totals, steps


STEPS = ["claim-start", "claimed", "planned", "launched", "agent-ready", "provision-ca", "provision-env", "provision-prompt",
         "provision-skills", "provision-workspace", "provision-git", "provision-settings",
         "provisioned", "command-exited", "kept", "command-done", "torn-down"]


def print_steps(steps):
    """Each step's p50 since start, and how long it took after the previous one."""
    prev = 0.0
    for step in STEPS:
        if step in steps:
            at = p50(steps[step])
            print(f"  {step:>19}: p50 {at:6.0f} ms since start  (+{at - prev:5.0f} ms)")
            prev = at


def debian_built():
    p = subprocess.run([BOTTLE, "image", "ls"], env=ENV, capture_output=True, text=True)
    return any(l.split("\t")[:1] == ["debian"] and "\tyes\t" in l for l in p.stdout.splitlines())


def engine_of():
    p = subprocess.run([BOTTLE, "plan", "--vm", "--manifest", MANIFEST, "bench", "--json"], env=ENV, capture_output=True, text=True)
    try:
        return json.loads(p.stdout).get("engine") or "qemu-tcg"
    except json.JSONDecodeError:
        return "qemu-tcg"


def bare_vm_once(engine):
    """One boot of the bare engine, spawn to marker, in ms."""
    name, _, accel = engine.partition("-")
    # The tiny-probe image: same kernel and busybox, an init that prints the
    # marker at once (the real agent prints it only after a host handshake).
    args = [os.environ.get("BOOT_EXAMPLE", "target/release/examples/boot"), "--runs", "1", "--engine", name]
    if name == "qemu":
        args += ["--accel", accel or "tcg"]
    p = subprocess.run(args, capture_output=True, text=True)
    m = re.search(r"boot p50 ms: (\d+)", p.stdout)
    if not m:
        sys.exit(f"bare boot failed:\n{p.stdout}\n{p.stderr}")
    return float(m.group(1))


def bundle_rss_kib():
    trust(MANIFEST)
    p = subprocess.run([BOTTLE, "run", "--vm", "--yes", "--detach", "--manifest", MANIFEST, "bench"], env=ENV, capture_output=True, text=True)
    ident = re.search(r"identity (\S+)\)", p.stderr).group(1)
    time.sleep(2)
    meta = json.load(open(os.path.join(STATE, ident, "metadata.json")))
    rss = 0
    for line in open(f"/proc/{meta['bundle_pid']}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    subprocess.run([BOTTLE, "stop", ident], env=ENV, capture_output=True)
    return rss


def pool(*args):
    p = subprocess.run([BOTTLE, "pool", *args], env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bottle pool {' '.join(args)} failed:\n{p.stderr}")
    return p.stdout


def pool_status():
    return json.loads(pool("status", "--json"))


def wait_ready(timeout=90):
    """The pool's ready guest, once the refiller has booted it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = pool_status()
        ready = [g for g in (s or {}).get("guests", []) if g["status"] == "ready"]
        if ready:
            return ready[0]
        time.sleep(0.1)
    sys.exit("the pool was not refilled within 90 s")


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def idle_cost(guest, seconds=10):
    """RSS (KiB) of a pooled guest's qemu and bundle, and their CPU % while idle."""
    pids = [guest["vm_pid"], guest["bundle_pid"]]
    rss = {}
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1])
    before = [cpu_ticks(p) for p in pids]
    time.sleep(seconds)
    after = [cpu_ticks(p) for p in pids]
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [100.0 * (a - b) / hz / seconds for a, b in zip(after, before)]
    return rss[pids[0]], rss[pids[1]], cpu[0], cpu[1]


def run_warm(image=None):
    """`bottle pool start` of the bench bottle's shape (1 vCPU, 512 MiB), then
    `bottle run --vm -- true` claiming a pooled guest each time (waiting for
    the refill between runs, outside the measure). Returns claim-to-exit
    times (the `claim-start` to `command-done` steps), whole-run times, the
    steps and the idle cost of one pooled guest."""
    pool("start", "--size", "1", "--cpus", "1", "--memory", "512", "--image", image or "tiny")
    try:
        time.sleep(3)  # let the fresh guest settle before measuring it idle
        cost = idle_cost(wait_ready())
        manifest = MANIFEST
        if image:
            manifest = os.path.join(STATE, f"boot-warm-{image}.toml")
            open(manifest, "w").write(open(MANIFEST).read().replace('image = "tiny"', f'image = "{image}"'))
        trust(manifest)
        claims, totals, steps, cold = [], [], {}, 0
        for i in range(RUNS):
            wait_ready()
            start = time.monotonic()
            p = subprocess.run([BOTTLE, "run", "--vm", "--yes", "--manifest", manifest, "bench", "--", "/bin/true"],
                               env=ENV, capture_output=True, text=True)
            ms = (time.monotonic() - start) * 1000
            if p.returncode != 0:
                print(f"  warm run {i}: failed ({p.returncode}): {p.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
                continue
            if "warm: claimed pooled guest" not in p.stderr:
                cold += 1
                continue
            at = {step: float(t) for step, t in re.findall(r"bottle: timing (\S+) (\d+) ms", p.stderr)}
            claims.append(at["command-done"] - at["claim-start"])
            totals.append(ms)
            for step, t in at.items():
                steps.setdefault(step, []).append(t)
        if cold:
            print(f"  {cold} run(s) booted cold instead of claiming", file=sys.stderr)
        return claims, totals, steps, cost
    finally:
        pool("stop")


def docker_image():
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "bottle-tiny"], capture_output=True, text=True).stdout.split()
    return out[0] if out else None


def bare_docker(image, runtime):
    times = []
    for _ in range(RUNS):
        start = time.monotonic()
        p = subprocess.run(["docker", "run", "--rm", "--network", "none", "--runtime", runtime, image, "/bin/true"], capture_output=True)
        if p.returncode == 0:
            times.append((time.monotonic() - start) * 1000)
    return p50(times)


def main():
    print(f"host: {os.uname().release}, {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}; runs per case: {RUNS}")
    engine = engine_of()
    print(f"\n== VM ({engine}) ==")
    # Bare and bottle boots alternate, so a change in the machine's load
    # during the run weighs on both sides alike.
    bares = []
    totals, steps = run_bottle("--vm", before_each=lambda: bares.append(bare_vm_once(engine)))
    bare = p50(bares)
    if not totals:
        sys.exit("no bottle run succeeded")
    print(f"bare engine, spawn to {'BOTTLE-GUEST-READY'}: p50 {bare:.0f} ms")
    print(f"bottle run --vm -- true, to exit: p50 {p50(totals):.0f} ms (min {min(totals):.0f}, max {max(totals):.0f})")
    print_steps(steps)
    rss = bundle_rss_kib()
    print(f"bundle idle RSS: {rss / 1024:.1f} MiB")
    vm_line = (f"boot p50 ms: {p50(totals):.0f}", f"vm/bare boot ratio: {p50(totals) / bare:.2f}")

    # Warm start: the same bottle claiming a pooled guest (docs/pool.md).
    claims, warm_totals, warm_steps, cost = run_warm()
    print(f"\n== VM ({engine}), warm: claiming a pooled guest (bottle pool) ==")
    warm_lines = []
    if claims:
        print(f"claim to exit of `true` (claim-start to command-done): p50 {p50(claims):.0f} ms (min {min(claims):.0f}, max {max(claims):.0f})")
        print(f"bottle run --vm -- true, warm, to exit: p50 {p50(warm_totals):.0f} ms (cold: {p50(totals):.0f} ms)")
        print_steps(warm_steps)
        warm_lines.append(f"warm start p50 ms: {p50(claims):.0f}")
    else:
        print("no warm run succeeded")
    qemu_rss, bundle_rss, qemu_cpu, bundle_cpu = cost
    idle = (f"pooled guest idle: RSS qemu {qemu_rss / 1024:.0f} MiB + bundle {bundle_rss / 1024:.0f} MiB, "
            f"CPU qemu {qemu_cpu:.1f} % + bundle {bundle_cpu:.1f} % (10 s)")
    print(idle)
    warm_lines.append(idle)
    if os.environ.get("SKIP_DEBIAN") != "1" and debian_built():
        claims_deb, _, steps_deb, _ = run_warm("debian")
        print(f"\n== VM ({engine}), warm, Debian image ==")
        if claims_deb:
            print(f"claim to exit of `true` (debian): p50 {p50(claims_deb):.0f} ms")
            print_steps(steps_deb)
            warm_lines.append(f"warm start (debian) p50 ms: {p50(claims_deb):.0f}")

    # What users run: the Debian image, same run, same engine.
    debian_line = None
    if os.environ.get("SKIP_DEBIAN") == "1":
        print("\n(Debian image skipped: SKIP_DEBIAN=1)")
    elif not debian_built():
        print("\n(Debian image not built for this bottle: `bottle image build debian`; skipped)")
    else:
        totals_deb, steps_deb = run_bottle("--vm", image="debian")
        print(f"\n== VM ({engine}), Debian image ==")
        if totals_deb:
            print(f"bottle run --vm -- true (debian), to exit: p50 {p50(totals_deb):.0f} ms (min {min(totals_deb):.0f}, max {max(totals_deb):.0f})")
            print_steps(steps_deb)
            debian_line = f"debian/tiny boot ratio: {p50(totals_deb) / p50(totals):.2f}"
        else:
            print("no Debian run succeeded")

    docker_lines = []
    if os.environ.get("SKIP_DOCKER") != "1" and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        for runtime in ["runc", "runsc"]:
            totals_d, _ = run_bottle("--docker", runtime)
            image = docker_image()
            if not totals_d or not image:
                print(f"docker {runtime}: no successful run")
                continue
            bare_d = bare_docker(image, runtime)
            print(f"\n== Docker ({runtime}) ==")
            print(f"bare docker run --rm --network none: p50 {bare_d:.0f} ms")
            print(f"bottle run --docker -- true: p50 {p50(totals_d):.0f} ms")
            docker_lines = [f"docker boot p50 ms: {p50(totals_d):.0f}", f"docker/bare boot ratio: {p50(totals_d) / bare_d:.2f}"]
            print(f"docker {runtime} ratio: {p50(totals_d) / bare_d:.2f}")
    print()
    for line in docker_lines:  # the runtime auto picks (runsc when registered) comes last
        print(line)
    print(vm_line[0])
    print(vm_line[1])
    for line in warm_lines:
        print(line)
    if debian_line:
        print(debian_line)


if __name__ == "__main__":
    main()
