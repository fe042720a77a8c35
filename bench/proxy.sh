#!/usr/bin/env bash
# HTTPS through bottle's guard proxy vs direct vs mitmproxy, on loopback.
#
#   bench/proxy.sh                # 10 s per run
#   DUR=20s bench/proxy.sh
#
# Needs: oha (`cargo install oha --locked`), mitmdump (`pip install mitmproxy`
# in a venv; set MITMDUMP=/path/to/mitmdump), python3, curl.
# One local HTTPS echo upstream (`proxy-bench upstream`, hyper + rustls,
# small CA + leaf for `localhost`). For 1, 10 and 100 connections, oha runs
# for DUR against: the upstream directly; through our proxy (CONNECT, TLS
# interception with the bottle CA, full policy + DLP pipeline, audit log on);
# through mitmdump (interception, upstream verification off). The load
# generator, the proxies and the upstream share the machine's cores.
# Then: idle RSS of the proxy, 1000 concurrent intercepted connections held
# open (RSS with them held, and one request still served), and finally
# bench/scanner.sh, whose last line is re-printed last.
# The last three lines are the proxy/mitmproxy and proxy/direct req/s ratios
# at 100 connections and `scanner/detect-secrets MBps ratio: Z.ZZ`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-10s}
# Found on PATH, or named by OHA= and MITMDUMP= (nothing else is assumed).
OHA=${OHA:-oha}
MITMDUMP=${MITMDUMP:-mitmdump}
OUT=${OUT:-$ROOT/bench/out/proxy}
mkdir -p "$OUT"

log() { printf '%s\n' "$*" >&2; }
for tool in "$OHA" "$MITMDUMP" python3 curl; do
    command -v "$tool" >/dev/null || { log "missing $tool (see the header of $0)"; exit 1; }
done

ulimit -n 65536 2>/dev/null || ulimit -n 16384
log "== building proxy-bench (release)"
# A target dir of its own: worktrees sharing target/ overwrite each other's
# workspace artifacts (same relative paths hash the same).
# PROXY_BENCH_BIN=path skips the build.
TARGET=${BENCH_TARGET_DIR:-$ROOT/target/bench-proxy}
BIN=${PROXY_BENCH_BIN:-$TARGET/release/examples/proxy-bench}
if [ -z "${PROXY_BENCH_BIN:-}" ]; then
    CARGO_TARGET_DIR=$TARGET cargo build --quiet --release -p bottle-sidecars --example proxy-bench
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_file() { for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done; log "timeout waiting for $1"; exit 1; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

"$BIN" upstream "$WORK" & PIDS+=($!)
wait_file "$WORK/upstream.port"
UP_PORT=$(cat "$WORK/upstream.port")
"$BIN" proxy "$WORK" & PROXY_PID=$!; PIDS+=($PROXY_PID)
wait_file "$WORK/proxy.port"
PROXY_PORT=$(cat "$WORK/proxy.port")
sleep 0.5
IDLE_RSS=$(rss_kb "$PROXY_PID")

MITM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/mitm"
"$MITMDUMP" --listen-host 127.0.0.1 -p "$MITM_PORT" --set ssl_insecure=true --set confdir="$WORK/mitm" -q & PIDS+=($!)
wait_file "$WORK/mitm/mitmproxy-ca-cert.pem"
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$MITM_PORT/" && break; sleep 0.1; done

URL="https://localhost:$UP_PORT/"
# Sanity: every path answers 200 before measuring.
curl -sf -o /dev/null --cacert "$WORK/upstream-ca.pem" "$URL"
curl -sf -o /dev/null --proxy "http://127.0.0.1:$PROXY_PORT" --cacert "$WORK/bottle-ca.pem" "$URL"
curl -sf -o /dev/null --proxy "http://127.0.0.1:$MITM_PORT" --cacert "$WORK/mitm/mitmproxy-ca-cert.pem" "$URL"

declare -A RPS P50 P99
run() { # name conns [oha args...]
    local name=$1 conns=$2; shift 2
    local json="$OUT/$name-$conns.json"
    "$OHA" -z "$DUR" -c "$conns" --no-tui --output-format json "$@" "$URL" > "$json"
    read -r rps p50 p99 ok < <(python3 - "$json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f'{s["requestsPerSec"]:.1f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {codes.get("200", 0)}')
PY
)
    RPS[$name-$conns]=$rps; P50[$name-$conns]=$p50; P99[$name-$conns]=$p99
    printf '%-10s c=%-4s %10s req/s  p50 %8s ms  p99 %8s ms  (200s: %s)\n' "$name" "$conns" "$rps" "$p50" "$p99" "$ok"
}

log "== oha $DUR per run; upstream :$UP_PORT, proxy :$PROXY_PORT, mitmdump :$MITM_PORT"
for c in 1 10 100; do
    run direct "$c" --cacert "$WORK/upstream-ca.pem"
    run proxy "$c" -x "http://127.0.0.1:$PROXY_PORT" --cacert "$WORK/bottle-ca.pem"
    run mitmproxy "$c" -x "http://127.0.0.1:$MITM_PORT" --cacert "$WORK/mitm/mitmproxy-ca-cert.pem"
done

LOADED_RSS=$(rss_kb "$PROXY_PID")
log "== holding 1000 intercepted TLS connections"
python3 - "$PROXY_PORT" "$UP_PORT" "$WORK/bottle-ca.pem" "$WORK/held" "$WORK/release" <<'PY' &
import os, socket, ssl, sys, time
pport, uport, ca, out, release = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
held = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", pport), timeout=30)
    s.sendall(f"CONNECT localhost:{uport} HTTP/1.1\r\nHost: localhost:{uport}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1024)
        if not chunk:
            break
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        break
    held.append(ctx.wrap_socket(s, server_hostname="localhost"))
ok = 0
for t in held:  # every held connection still answers
    t.sendall(b"GET /held HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % uport)
    if t.recv(64).startswith(b"HTTP/1.1 200"):
        ok += 1
with open(out + ".tmp", "w") as f:
    f.write(str(ok))
os.rename(out + ".tmp", out)
while not os.path.exists(release):
    time.sleep(0.05)
PY
HOLDER=$!
for _ in $(seq 1200); do [ -s "$WORK/held" ] && break; sleep 0.1; done
HELD=$(cat "$WORK/held" 2>/dev/null || echo 0)
HELD_RSS=$(rss_kb "$PROXY_PID")
# A fresh request while the 1000 are held.
FRESH=$(curl -s -o /dev/null -w '%{http_code}' --proxy "http://127.0.0.1:$PROXY_PORT" --cacert "$WORK/bottle-ca.pem" "$URL" || true)
touch "$WORK/release"
wait "$HOLDER" || true

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else 'inf')" "$1" "$2"; }
added() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$1" "$2"; }

echo
echo "proxy idle RSS: $((IDLE_RSS / 1024)) MB ($IDLE_RSS kB); after load: $((LOADED_RSS / 1024)) MB; with 1000 held: $((HELD_RSS / 1024)) MB"
echo "connections held: $HELD/1000 answered; fresh request while held: $FRESH"
for c in 1 10 100; do
    echo "c=$c p99 added by proxy: $(added "${P99[proxy-$c]}" "${P99[direct-$c]}") ms (mitmproxy: $(added "${P99[mitmproxy-$c]}" "${P99[direct-$c]}") ms)"
done

SCANNER_LINE=""
if [ -n "${SKIP_SCANNER:-}" ]; then
    log "SKIP_SCANNER set; no scanner ratio"
elif [ -x "$ROOT/bench/scanner.sh" ]; then
    log "== bench/scanner.sh"
    SCANNER_LINE=$("$ROOT/bench/scanner.sh" | tee "$OUT/scanner.txt" | tail -n 1) || {
        log "bench/scanner.sh failed; see $OUT/scanner.txt"
        SCANNER_LINE=""
    }
else
    log "bench/scanner.sh is missing or not executable; no scanner ratio"
fi

echo "proxy/mitmproxy rps ratio: $(ratio "${RPS[proxy-100]}" "${RPS[mitmproxy-100]}")"
echo "proxy/direct rps ratio: $(ratio "${RPS[proxy-100]}" "${RPS[direct-100]}")"
[ -n "$SCANNER_LINE" ] && echo "$SCANNER_LINE"
exit 0
