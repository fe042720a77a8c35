#!/bin/sh
# Prepare dockerd for the Docker backend and its tests (idempotent; Debian 12, root).
#
#  1. apt-get install docker.io runsc, and busybox-static + socat for the
#     tests (only what is missing);
#  2. register gVisor as runtime `runsc` in /etc/docker/daemon.json with the
#     two arguments the backend needs (`--network=none`: the container has no
#     network; `--host-uds=open`: it may connect to the bind-mounted guard
#     sockets), merging into an existing file;
#  3. start dockerd in the background when nothing answers (no systemd here),
#     restarting it only when this script changed its config;
#  4. wait (bounded) until the Engine API answers.
set -eu

DAEMON_JSON=${DAEMON_JSON:-/etc/docker/daemon.json}
DOCKER_LOG=${DOCKER_LOG:-/var/log/dockerd.log}
WAIT_SECS=${WAIT_SECS:-60}
SOCK=/var/run/docker.sock

say() { printf 'setup-docker: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

# 1. packages
missing=""
for pkg in docker.io runsc busybox-static socat python3 curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    say "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# 2. daemon.json: add or fix runtimes.runsc, keep every other key.
mkdir -p "$(dirname "$DAEMON_JSON")"
changed=$(python3 - "$DAEMON_JSON" <<'PY'
import json, os, sys
path = sys.argv[1]
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}
conf = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        conf = json.load(f)
if conf.get("runtimes", {}).get("runsc") == want:
    print("no")
    sys.exit(0)
conf.setdefault("runtimes", {})["runsc"] = want
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
print("yes")
PY
)
[ "$changed" = yes ] && say "registered runtime runsc in $DAEMON_JSON"

api_up() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }

# 3. dockerd
pid=$(pidof dockerd 2>/dev/null || true)
if [ -n "$pid" ] && [ "$changed" = yes ]; then
    say "reloading dockerd ($pid) for the new runtime"
    kill -HUP "$pid"   # dockerd reloads `runtimes` on SIGHUP
fi
if [ -z "$pid" ]; then
    say "starting dockerd (log: $DOCKER_LOG)"
    nohup dockerd >"$DOCKER_LOG" 2>&1 &
fi

# 4. wait for the API
i=0
until api_up; do
    i=$((i + 1))
    [ "$i" -le "$WAIT_SECS" ] || { tail -n 20 "$DOCKER_LOG" >&2 || true; die "dockerd did not answer within ${WAIT_SECS}s"; }
    sleep 1
done
curl -fsS --unix-socket "$SOCK" http://localhost/info | python3 -c '
import json, sys
info = json.load(sys.stdin)
rts = sorted(info.get("Runtimes", {}))
print("setup-docker: dockerd", info.get("ServerVersion"), "runtimes:", " ".join(rts), file=sys.stderr)
if "runsc" not in rts:
    sys.exit("setup-docker: error: runtime runsc is not registered (see daemon.json)")
'
say "ready"
