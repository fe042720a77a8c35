#!/usr/bin/env bash
# Server-sent events from a route host through bottle's guard proxy vs
# directly from the upstream, on loopback.
#
#   bench/stream.sh                    # 10 rounds of 200 events, 10 ms apart
#   ROUNDS=10 EVENTS=500 INTERVAL_MS=5 bench/stream.sh
#
# Needs: python3. One local HTTPS upstream (`stream-bench upstream`, hyper +
# rustls) answers each request with Messages-API-shaped events
# (message_start, EVENTS content_block_delta INTERVAL_MS apart,
# message_stop), each stamped with the wall clock just before it was handed
# to the connection. `stream-bench proxy` is the guard proxy with an egress
# route for that host (token injected, responses through the streaming
# redactor, audit log on). A python client (TLS, HTTP/1.1, one request per
# round; through the proxy by CONNECT with the bottle CA) stamps each event
# when it arrives: the difference is the event's latency. Rounds alternate
# direct / proxy. Printed: time to first event (request sent → message_start
# read; through the proxy this includes the CONNECT, the intercepted TLS
# handshake and the proxy's own dial), per-event latency p50/p99 each way,
# and what the proxy adds (proxy percentile − direct percentile).
# The last line is `stream added p99 ms per event: X` (goal: ≤ 2).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-10}
EVENTS=${EVENTS:-200}
INTERVAL_MS=${INTERVAL_MS:-10}
OUT=${OUT:-$ROOT/bench/out/stream}
mkdir -p "$OUT"

log() { printf '%s\n' "$*" >&2; }
command -v python3 >/dev/null || { log "missing python3"; exit 1; }

log "== building stream-bench (release)"
# A target dir of its own (see bench/proxy.sh); STREAM_BENCH_BIN=path skips the build.
TARGET=${BENCH_TARGET_DIR:-$ROOT/target/bench-proxy}
BIN=${STREAM_BENCH_BIN:-$TARGET/release/examples/stream-bench}
if [ -z "${STREAM_BENCH_BIN:-}" ]; then
    CARGO_TARGET_DIR=$TARGET cargo build --quiet --release -p bottle-sidecars --example stream-bench
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

"$BIN" upstream "$WORK" & PIDS+=($!)
wait_file "$WORK/upstream.port"
UP_PORT=$(cat "$WORK/upstream.port")
"$BIN" proxy "$WORK" & PIDS+=($!)
wait_file "$WORK/proxy.port"
PROXY_PORT=$(cat "$WORK/proxy.port")
sleep 0.3

log "== $ROUNDS rounds of $EVENTS events, ${INTERVAL_MS} ms apart; upstream :$UP_PORT, proxy :$PROXY_PORT"
python3 - "$UP_PORT" "$PROXY_PORT" "$WORK" "$ROUNDS" "$EVENTS" "$INTERVAL_MS" "$OUT" <<'PY'
import json, re, socket, ssl, statistics, sys, time

up_port, proxy_port, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rounds, events, interval, out = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
SENT = re.compile(rb'"sent_ns":"(\d+)"')
TOKEN = b"sk-bench-real-credential-0123456789abcdef"

def round_trip(via_proxy):
    """One streamed request; (time to first event ns, [latency ns per event], body)."""
    t0 = time.time_ns()
    if via_proxy:
        s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"CONNECT localhost:{up_port} HTTP/1.1\r\nHost: localhost:{up_port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1024)
        assert head.startswith(b"HTTP/1.1 200"), head
        ca = f"{work}/bottle-ca.pem"
    else:
        s = socket.create_connection(("127.0.0.1", up_port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ca = f"{work}/upstream-ca.pem"
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall((f"GET /v1/messages HTTP/1.1\r\nHost: localhost:{up_port}\r\n"
               f"Authorization: Bearer bottle-placeholder-bench\r\n"
               f"x-events: {events}\r\nx-interval-ms: {interval}\r\n"
               f"Connection: close\r\n\r\n").encode())
    buf, seen, lat, first = b"", 0, [], None
    while True:
        data = t.recv(65536)
        if not data:
            break
        now = time.time_ns()
        buf += data
        for m in SENT.finditer(buf, seen):
            lat.append(now - int(m.group(1)))
            if first is None:
                first = now - t0
            seen = m.end()
    t.close()
    assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    assert len(lat) == events + 2, (len(lat), buf[-300:])
    return first, lat, buf

ttfe = {"direct": [], "proxy": []}
lat = {"direct": [], "proxy": []}
round_trip(True)  # warm-up: the proxy's upstream pool and leaf cache
for r in range(rounds):
    for mode in ("direct", "proxy"):
        first, l, body = round_trip(mode == "proxy")
        if mode == "proxy":
            assert TOKEN not in body and b"bottle-placeholder-bench" in body, "token not redacted"
        ttfe[mode].append(first)
        lat[mode].extend(l)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

ms = lambda ns: ns / 1e6
res = {}
for mode in ("direct", "proxy"):
    res[mode] = {
        "ttfe_p50_ms": ms(statistics.median(ttfe[mode])),
        "event_p50_ms": ms(pct(lat[mode], 50)),
        "event_p99_ms": ms(pct(lat[mode], 99)),
        "event_max_ms": ms(max(lat[mode])),
        "events": len(lat[mode]),
    }
    r = res[mode]
    print(f"{mode:7s} first event p50 {r['ttfe_p50_ms']:7.3f} ms   per event p50 {r['event_p50_ms']:6.3f} ms"
          f"  p99 {r['event_p99_ms']:6.3f} ms  max {r['event_max_ms']:6.3f} ms  ({r['events']} events)")
added50 = res["proxy"]["event_p50_ms"] - res["direct"]["event_p50_ms"]
added99 = res["proxy"]["event_p99_ms"] - res["direct"]["event_p99_ms"]
addedf = res["proxy"]["ttfe_p50_ms"] - res["direct"]["ttfe_p50_ms"]
json.dump(res, open(f"{out}/stream.json", "w"), indent=1)
print(f"first event added p50: {addedf:.3f} ms (CONNECT + intercepted TLS + the proxy's dial)")
print(f"stream added p50 ms per event: {added50:.3f}")
print(f"stream added p99 ms per event: {added99:.3f}")
PY
