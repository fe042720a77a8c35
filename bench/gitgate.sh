#!/usr/bin/env bash
# git-gate overhead: clone and push of a generated medium repo (~50 MB of
# content, 5k commits) directly over ssh versus through the gate.
#
# Everything runs on 127.0.0.1: a throwaway sshd (its own host key, one
# authorized client key) serves the upstream bare repos; the gate is the
# `gitgate-bench` example built --release.
#
#   bench/gitgate.sh            # COMMITS=5000 FILE_KB=10 RUNS=3
#
# Last line: `gate/direct clone time ratio: X.XX`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMMITS=${COMMITS:-5000}
FILE_KB=${FILE_KB:-10}
RUNS=${RUNS:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

for p in /usr/sbin/sshd ssh ssh-keygen git python3; do
    command -v "$p" >/dev/null || { echo "missing $p (apt-get install openssh-server openssh-client git python3)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/gitgate-bench.XXXXXX)
SSHD_PID=""
GATE_PID=""
cleanup() {
    [ -n "$GATE_PID" ] && kill "$GATE_PID" 2>/dev/null || true
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

echo "building gate (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release -p bottle-sidecars --bin bottle-git-hook --example gitgate-bench)
HOOK=$TARGET/release/bottle-git-hook
GATE=$TARGET/release/examples/gitgate-bench

export HOME=$W/home GIT_CONFIG_GLOBAL=$W/home/.gitconfig GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
mkdir -p "$HOME" && : >"$GIT_CONFIG_GLOBAL"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

# --- upstream sshd -----------------------------------------------------------
ssh-keygen -q -t ed25519 -N "" -C host -f "$W/host_key"
ssh-keygen -q -t ed25519 -N "" -C client -f "$W/client_key"
cp "$W/client_key.pub" "$W/authorized_keys"
USER_NAME=$(id -un)
[ "$(id -u)" = 0 ] && mkdir -p /run/sshd
SSH_PORT=$(free_port)
cat >"$W/sshd_config" <<EOF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $W/host_key
PidFile $W/sshd.pid
AuthorizedKeysFile $W/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers $USER_NAME
AllowTcpForwarding no
X11Forwarding no
EOF
/usr/sbin/sshd -D -e -f "$W/sshd_config" 2>"$W/sshd.log" &
SSHD_PID=$!
awk '{print $1" "$2}' "$W/host_key.pub" >"$W/host_key.line"
echo "[127.0.0.1]:$SSH_PORT $(cat "$W/host_key.line")" >"$W/known_hosts"
export GIT_SSH_COMMAND="ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$W/known_hosts -i $W/client_key"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT) 2>/dev/null && break; sleep 0.05; done

# --- generate the repo with fast-import --------------------------------------
echo "generating $COMMITS commits of ~${FILE_KB} KB each..." >&2
git init --quiet --bare --initial-branch main "$W/data.git"
python3 - "$COMMITS" "$FILE_KB" <<'EOF' | git --git-dir "$W/data.git" fast-import --quiet
import random, sys
commits, kb = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(42)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
out = sys.stdout.buffer
t = 1700000000
for i in range(commits):
    lines, size = [], 0
    while size < kb * 1024:
        line = " ".join(rng.choice(words) for _ in range(10)) + f" {rng.randint(0, 10**9)}\n"
        lines.append(line); size += len(line)
    data = "".join(lines).encode()
    msg = f"commit {i}: update module {i % 250}\n".encode()
    out.write(b"commit refs/heads/main\n")
    out.write(f"committer Bench <bench@example.invalid> {t + i} +0000\n".encode())
    out.write(b"data %d\n" % len(msg) + msg)
    out.write(f"M 100644 inline src/mod{i % 250}/file{i % 7}.txt\n".encode())
    out.write(b"data %d\n" % len(data) + data + b"\n")
EOF
git --git-dir "$W/data.git" repack -adq
PACK_MB=$(du -sm "$W/data.git/objects/pack" | cut -f1)
git init --quiet --bare --initial-branch main "$W/direct-push.git"
git init --quiet --bare --initial-branch main "$W/gate-push.git"
URL="ssh://$USER_NAME@127.0.0.1:$SSH_PORT$W"

# --- gate --------------------------------------------------------------------
GATE_PORT=$(free_port)
"$GATE" "$W/mirrors" "127.0.0.1:$GATE_PORT" "$HOOK" "$W/client_key" "$W/host_key.line" \
    "data=$URL/data.git" "push=$URL/gate-push.git" >"$W/gate.log" 2>&1 &
GATE_PID=$!
for _ in $(seq 100); do grep -q listening "$W/gate.log" 2>/dev/null && break; sleep 0.05; done
GATE_URL="git://127.0.0.1:$GATE_PORT"

# --- clone -------------------------------------------------------------------
time_clone() { # url dest
    local t0 t1
    t0=$(now); git clone --quiet --bare "$1" "$2"; t1=$(now)
    rm -rf "$2"; elapsed "$t0" "$t1"
}
echo "warm-up clones (mirror fill, page cache)..." >&2
time_clone "$URL/data.git" "$W/c" >/dev/null
time_clone "$GATE_URL/data.git" "$W/c" >/dev/null
DIRECT=(); GATED=()
for _ in $(seq "$RUNS"); do
    DIRECT+=("$(time_clone "$URL/data.git" "$W/c")")
    GATED+=("$(time_clone "$GATE_URL/data.git" "$W/c")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
D_CLONE=$(median "${DIRECT[@]}"); G_CLONE=$(median "${GATED[@]}")

# --- push (whole history into an empty upstream) -------------------------------
git clone --quiet --bare "$URL/data.git" "$W/src.git"
t0=$(now); git --git-dir "$W/src.git" push --quiet "$URL/direct-push.git" main; t1=$(now)
D_PUSH=$(elapsed "$t0" "$t1")
t0=$(now); git --git-dir "$W/src.git" push "$GATE_URL/push.git" main 2>"$W/gate-push.err"; t1=$(now)
G_PUSH=$(elapsed "$t0" "$t1")
[ "$(git --git-dir "$W/gate-push.git" rev-parse main)" = "$(git --git-dir "$W/data.git" rev-parse main)" ] \
    || { echo "gate push did not land upstream:" >&2; cat "$W/gate-push.err" >&2; exit 1; }
SCAN_LINE=$(grep -o 'scanned [0-9]* commit(s), [0-9]* bytes in [0-9]* ms' "$W/gate-push.err" || true)
read -r SCAN_COMMITS SCAN_BYTES SCAN_MS < <(echo "$SCAN_LINE" | awk '{print $2, $4, $7}')

echo "repo: $COMMITS commits, ${FILE_KB} KB per commit, pack ${PACK_MB} MB"
echo "clone direct over ssh:   ${D_CLONE}s (median of $RUNS: ${DIRECT[*]})"
echo "clone through gate:      ${G_CLONE}s (median of $RUNS: ${GATED[*]})"
echo "push direct over ssh:    ${D_PUSH}s"
echo "push through gate:       ${G_PUSH}s (scan: $SCAN_COMMITS commits, $SCAN_BYTES bytes in ${SCAN_MS} ms)"
python3 -c "print(f'push scan throughput: {$SCAN_BYTES / 1e6 / max($SCAN_MS / 1000, 1e-9):.1f} MB/s')"
python3 -c "print(f'gate/direct push time ratio: {$G_PUSH / $D_PUSH:.2f}')"
python3 -c "print(f'gate/direct clone time ratio: {$G_CLONE / $D_CLONE:.2f}')"
