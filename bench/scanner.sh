#!/usr/bin/env bash
# Secret-scanner throughput and recall: bottle's scanner vs detect-secrets
# (PyPI) and, when installed, ripsecrets (crates.io), on one generated corpus.
#
#   bench/scanner.sh                 # 50 MB corpus, 240 planted secrets
#   SIZE_MB=16 PLANTS=120 bench/scanner.sh
#   RIPSECRETS_INSTALL=1 bench/scanner.sh   # also `cargo install ripsecrets --locked`
#
# Each tool is timed as a whole process (wall clock: start-up, reading and
# scanning), single run, on the same files. Recall counts planted secrets
# (a secret is found when a finding lands on one of its lines in its file).
# The last line is `scanner/detect-secrets MBps ratio: Z.ZZ`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench/out/scanner}
SIZE_MB=${SIZE_MB:-50}
PLANTS=${PLANTS:-240}
SEED=${SEED:-7}
CORPUS=$OUT/corpus
mkdir -p "$OUT"

log() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------- corpus
log "== generating ${SIZE_MB} MB corpus with ${PLANTS} planted secrets"
rm -rf "$CORPUS"
BIP39_WORDLIST=$ROOT/sidecars/rules/bip39-english.txt python3 - "$CORPUS" "$SIZE_MB" "$PLANTS" "$SEED" "$OUT/plants.tsv" <<'PY'
import base64, hashlib, json, os, random, string, sys
corpus, size_mb, plants, seed, plants_tsv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = random.Random(seed)
B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
URL = B62 + "_-"
def rnd(a, n): return "".join(r.choice(a) for _ in range(n))
words = ("the of and to in is for on that by with from this as be are at or it an was not can all "
         "user data value result error config request response client server token cache index list "
         "buffer stream parse render update delete create handle process batch queue worker").split()
def ident(): return "_".join(r.choice(words) for _ in range(r.randint(1, 3)))
def line():
    k = r.randrange(14)
    ind = " " * (4 * r.randint(0, 3))
    if k == 0: return f"{ind}def {ident()}({ident()}, {ident()}=None):"
    if k == 1: return f"{ind}# {' '.join(r.choice(words) for _ in range(r.randint(4, 12)))}"
    if k == 2: return f"{ind}{ident()} = {r.randint(0, 10**6)}"
    if k == 3: return f"{ind}{ident()} = \"{' '.join(r.choice(words) for _ in range(r.randint(1, 6)))}\""
    if k == 4: return f"{ind}if {ident()} is not None and {ident()} > {r.randint(0, 99)}:"
    if k == 5: return f"{ind}return {ident()}.{ident()}({ident()})"
    if k == 6: return f"{ind}for {ident()} in {ident()}:"
    if k == 7: return f"{ind}logger.info(\"{ident()} %s\", {ident()})"
    if k == 8:
        # Hashes are rarer than this in most code: one line in ~700.
        if r.random() < 0.02: return f"{ind}commit = \"{rnd(HEX, 40)}\""
        return f"{ind}{ident()} = {ident()}.get(\"{ident()}\")"
    if k == 9: return f"{ind}{{\"id\": {r.randint(1, 9999)}, \"name\": \"{ident()}\", \"enabled\": true}},"
    if k == 10: return f"{ind}const {ident()} = require('./{ident()}');"
    if k == 11: return f"{ind}self.{ident()} = {ident()}({ident()}, timeout={r.randint(1, 60)})"
    if k == 12: return ""
    return f"{ind}{ident()}.{ident()}()"
pool = [line() for _ in range(20000)]

WORDLIST = open(os.path.join(os.environ["BIP39_WORDLIST"])).read().split()
def mnemonic(nbytes):
    # A fresh random BIP-39 phrase: entropy, then SHA-256 checksum bits.
    ent = bytes(r.randrange(256) for _ in range(nbytes))
    bits = bin(int.from_bytes(ent, "big"))[2:].zfill(nbytes * 8)
    bits += f"{hashlib.sha256(ent).digest()[0]:08b}"[:nbytes // 4]
    return " ".join(WORDLIST[int(bits[i:i + 11], 2)] for i in range(0, len(bits), 11))
def b64u(b): return base64.urlsafe_b64encode(b).decode().rstrip("=")
def plant(kind):
    if kind == "aws-access-key-id": return [f'AWS_ACCESS_KEY_ID = "AKIA{rnd("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)}"']
    if kind == "github-pat": return [f'GITHUB_TOKEN = "ghp_{rnd(B62, 36)}"']
    if kind == "slack-bot-token": return [f'slack_token = "xoxb-{rnd(string.digits, 12)}-{rnd(string.digits, 13)}-{rnd(B62, 24)}"']
    if kind == "stripe-secret-key": return [f'stripe.api_key = "sk_live_{rnd(B62, 24)}"']
    if kind == "openai-api-key": return [f'OPENAI_API_KEY = "sk-proj-{rnd(URL, 40)}T3BlbkFJ{rnd(URL, 40)}"']
    if kind == "anthropic-api-key": return [f'client = Anthropic(api_key="sk-ant-api03-{rnd(URL, 93)}AA")']
    if kind == "npm-access-token": return [f"//registry.npmjs.org/:_authToken=npm_{rnd(B62, 36)}"]
    if kind == "sendgrid-api-key": return [f'SENDGRID = "SG.{rnd(URL, 22)}.{rnd(URL, 43)}"']
    if kind == "jwt":
        p = b64u(json.dumps({"sub": rnd(B62, 8), "iat": r.randint(1, 2**31)}).encode())
        h = b64u(b'{"alg":"HS256","typ":"JWT"}')
        return [f'headers["Authorization"] = "Bearer {h}.{p}.{rnd(URL, 43)}"']
    if kind == "generic-password": return [f'db_password = "{rnd(B62, 18)}"']
    if kind == "private-key":
        body = base64.b64encode(bytes(r.randrange(256) for _ in range(240))).decode()
        return ["-----BEGIN RSA PRIVATE KEY-----"] + [body[i:i + 64] for i in range(0, len(body), 64)] + ["-----END RSA PRIVATE KEY-----"]
    if kind == "bip39-seed-phrase": return [f"# wallet seed: {mnemonic(r.choice([16, 24, 32]))}"]
    raise SystemExit(kind)
KINDS = ["aws-access-key-id", "github-pat", "slack-bot-token", "stripe-secret-key", "openai-api-key",
         "anthropic-api-key", "npm-access-token", "sendgrid-api-key", "jwt", "generic-password",
         "private-key", "bip39-seed-phrase"]
exts = [".py", ".js", ".go", ".rs", ".yaml", ".txt", ".env", ".json"]
file_size = 100_000
nfiles = max(1, size_mb * 1_000_000 // file_size)
slots = sorted(r.sample(range(nfiles * 4), min(plants, nfiles * 4)))
per_file = {}
for i, s in enumerate(slots):
    per_file.setdefault(s // 4, []).append(KINDS[i % len(KINDS)])
rows = []
for n in range(nfiles):
    rel = os.path.join(f"pkg{n % 16:02d}", f"mod{n:05d}{exts[n % len(exts)]}")
    path = os.path.join(corpus, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines, size = [], 0
    todo = per_file.get(n, [])
    at = sorted(r.sample(range(50, 1500), len(todo)))
    while size < file_size:
        if todo and len(lines) >= at[0]:
            at.pop(0)
            kind = todo.pop(0)
            first = len(lines) + 1
            block = plant(kind)
            lines.extend(block)
            rows.append(f"{rel}\t{first}\t{first + len(block) - 1}\t{kind}")
            size += sum(len(b) + 1 for b in block)
            continue
        l = r.choice(pool)
        lines.append(l)
        size += len(l) + 1
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
with open(plants_tsv, "w") as f:
    f.write("\n".join(rows) + "\n")
print(f"{nfiles} files, {len(rows)} planted", file=sys.stderr)
PY
BYTES=$(find "$CORPUS" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.2f}')" "$1" "$2"; }

# ---------------------------------------------------------------- bottle
SCAN=${SCAN:-}
if [ -z "$SCAN" ]; then
    log "== building the scanner example (release)"
    (cd "$ROOT" && cargo build --quiet --release -p bottle-sidecars --example scan)
    SCAN=$ROOT/target/release/examples/scan
fi
log "== bottle scanner"
t0=$(now)
"$SCAN" "$CORPUS" --list >"$OUT/ours.txt"
t1=$(now)
OURS_SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
tail -n 1 "$OUT/ours.txt" >&2
# path:line:rule:redacted -> path<TAB>line
grep -v '^files=' "$OUT/ours.txt" | awk -F: -v root="$CORPUS/" '{p=$1; sub(root, "", p); print p "\t" $2}' >"$OUT/ours.lines"

# ---------------------------------------------------------------- detect-secrets
VENV=$OUT/venv
if [ ! -x "$VENV/bin/detect-secrets" ]; then
    log "== installing detect-secrets into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet detect-secrets
fi
DS_VERSION=$("$VENV/bin/detect-secrets" --version)
log "== detect-secrets $DS_VERSION"
t0=$(now)
(cd "$CORPUS" && "$VENV/bin/detect-secrets" scan --all-files . >"$OUT/ds.json")
t1=$(now)
DS_SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
python3 - "$OUT/ds.json" >"$OUT/ds.lines" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
for path, items in res.items():
    for it in items:
        print(f"{path.removeprefix('./')}\t{it['line_number']}")
PY

# ---------------------------------------------------------------- ripsecrets (optional)
RIP=$(command -v ripsecrets || true)
[ -z "$RIP" ] && [ -x "$HOME/.cargo/bin/ripsecrets" ] && RIP=$HOME/.cargo/bin/ripsecrets
if [ -z "$RIP" ] && [ "${RIPSECRETS_INSTALL:-0}" = 1 ]; then
    log "== installing ripsecrets"
    cargo install --quiet ripsecrets --locked && RIP=$HOME/.cargo/bin/ripsecrets
fi
RIP_SECS=""
if [ -n "$RIP" ]; then
    log "== ripsecrets"
    t0=$(now)
    # ripsecrets exits 1 when it finds secrets; prints path:line:text.
    # It walks directories on several threads (the others use one).
    "$RIP" "$CORPUS" >"$OUT/rip.txt" || true
    t1=$(now)
    RIP_SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    awk -F: -v root="$CORPUS/" '{p=$1; sub(root, "", p); print p "\t" $2}' "$OUT/rip.txt" >"$OUT/rip.lines"
fi

# ---------------------------------------------------------------- report
recall() {
    python3 - "$OUT/plants.tsv" "$1" <<'PY'
import collections, sys
plants = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
hits = set()
for l in open(sys.argv[2]).read().splitlines():
    p, _, n = l.partition("\t")
    if n.isdigit():
        hits.add((p, int(n)))
total, found = collections.Counter(), collections.Counter()
for path, a, b, kind in plants:
    total[kind] += 1
    if any((path, n) in hits for n in range(int(a), int(b) + 1)):
        found[kind] += 1
per = " ".join(f"{k}={found[k]}/{total[k]}" for k in sorted(total))
print(f"{sum(found.values())}/{sum(total.values())} ({100 * sum(found.values()) / max(1, sum(total.values())):.1f}%)  {per}")
PY
}
OURS_MBPS=$(mbps "$BYTES" "$OURS_SECS")
DS_MBPS=$(mbps "$BYTES" "$DS_SECS")
echo "corpus: $BYTES bytes, $(wc -l <"$OUT/plants.tsv") planted secrets, $(nproc) cores shared with other work; single run, wall clock per process"
echo "bottle scanner:  ${OURS_SECS}s  ${OURS_MBPS} MB/s  findings=$(wc -l <"$OUT/ours.lines")  recall $(recall "$OUT/ours.lines")"
echo "detect-secrets $DS_VERSION: ${DS_SECS}s  ${DS_MBPS} MB/s  findings=$(wc -l <"$OUT/ds.lines")  recall $(recall "$OUT/ds.lines")"
if [ -n "$RIP_SECS" ]; then
    RIP_MBPS=$(mbps "$BYTES" "$RIP_SECS")
    echo "ripsecrets:      ${RIP_SECS}s  ${RIP_MBPS} MB/s  findings=$(wc -l <"$OUT/rip.lines")  recall $(recall "$OUT/rip.lines")"
    echo "scanner/ripsecrets MBps ratio: $(python3 -c "print(f'{$OURS_MBPS / $RIP_MBPS:.2f}')")"
fi
echo "scanner/detect-secrets MBps ratio: $(python3 -c "print(f'{$OURS_MBPS / $DS_MBPS:.2f}')")"
