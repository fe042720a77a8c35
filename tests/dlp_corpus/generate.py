#!/usr/bin/env python3
"""Generate the DLP precision corpus: Anthropic Messages API request bodies
as a coding agent sends them (system prompt, tools, tool results holding the
files it read). `clean/` must give no finding; `planted/` holds the same kinds
of content with fake secrets, and `planted/NAME.expect` lists them
(`rule<TAB>secret`, one per line).

Every secret is fake: random text (seeded) in the shape of each rule, taken
from sidecars/rules/secrets_cases.toml. Run from the repository root:
    python3 tests/dlp_corpus/generate.py
"""
import base64, hashlib, json, os, random, re, struct, subprocess, tomllib, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "dlp_corpus")
rng = random.Random(15)

def hexs(n): return "".join(rng.choice("0123456789abcdef") for _ in range(n))
def uuid(): return f"{hexs(8)}-{hexs(4)}-4{hexs(3)}-{rng.choice('89ab')}{hexs(3)}-{hexs(12)}"
def b62(n): return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))

TOOLS = [
    {"name": "Bash", "description": "Executes a given bash command in a persistent shell session with optional timeout, ensuring proper handling and security measures. Before executing the command, verify that the parent directory exists. Always quote file paths that contain spaces.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string", "description": "The command to execute"}, "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"}, "description": {"type": "string", "description": "Clear, concise description of what this command does in 5-10 words"}}, "required": ["command"], "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}},
    {"name": "Read", "description": "Reads a file from the local filesystem. The file_path parameter must be an absolute path, not a relative path. By default, it reads up to 2000 lines starting from the beginning of the file. Results are returned using cat -n format, with line numbers starting at 1.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string", "description": "The absolute path to the file to read"}, "offset": {"type": "number"}, "limit": {"type": "number"}}, "required": ["file_path"]}},
    {"name": "Edit", "description": "Performs exact string replacements in files. You must use your Read tool at least once in the conversation before editing. The edit will FAIL if old_string is not unique in the file.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}, "replace_all": {"type": "boolean", "default": False}}, "required": ["file_path", "old_string", "new_string"]}},
]
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions below and the tools available to you to assist the user.\n\nIMPORTANT: Assist with defensive security tasks only. Refuse to create, modify, or improve code that may be used maliciously. Do not commit secrets or API keys to the repository; never log them.\n\n# Tone and style\nYou should be concise, direct, and to the point.\n\nHere is useful information about the environment you are running in:\n<env>\nWorking directory: /workspace\nIs directory a git repo: Yes\nPlatform: linux\nToday's date: 2025-06-12\n</env>", "cache_control": {"type": "ephemeral"}},
]

def request(user_text, reads, extra_blocks=()):
    """One request: the user's prompt, then for each (path, content) a
    tool_use of Read and its tool_result, as the agent sends them."""
    messages = [{"role": "user", "content": [{"type": "text", "text": user_text}, *extra_blocks]}]
    for path, content in reads:
        tid = "toolu_01" + b62(22)
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"I'll read {os.path.basename(path)} first."},
            {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": path}}]})
        numbered = "\n".join(f"{i + 1:>6}\u2192{line}" for i, line in enumerate(content.split("\n")))
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": numbered}]})
    return {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "stream": True,
            "system": SYSTEM, "tools": TOOLS, "messages": messages,
            "metadata": {"user_id": f"user_{hexs(64)}_account_{uuid()}_session_{uuid()}"}}

def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True).stdout

def png(w, h):
    raw = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(w * 3)) for _ in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

PYTHON = '''import hashlib
import hmac
import os
from functools import wraps

from flask import Flask, abort, jsonify, request, session

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ["FLASK_SECRET_KEY"]
API_KEY_HEADER = "X-Api-Key"
TOKEN_TTL_SECONDS = 3600


def check_password(stored_hash: str, password: str) -> bool:
    """Compare a PBKDF2 hash with the password the user typed."""
    salt, digest = stored_hash.split("$", 1)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), 600_000)
    return hmac.compare_digest(candidate.hex(), digest)


def require_api_key(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key is None or api_key not in app.config["ALLOWED_KEYS"]:
            abort(401)
        return view(*args, **kwargs)
    return wrapper


@app.post("/login")
def login():
    user = db.find_user(request.form["username"])
    password = request.form["password"]
    if user is None or not check_password(user.password_hash, password):
        return jsonify(error="invalid credentials"), 401
    session["user_id"] = user.id
    access_token = tokens.issue(user.id, ttl=TOKEN_TTL_SECONDS)
    return jsonify(access_token=access_token, token_type="bearer")


@app.get("/reports/<int:report_id>")
@require_api_key
def report(report_id):
    secret_key = current_app.config.get("REPORT_SIGNING_KEY")
    return jsonify(db.report(report_id, signed_with=secret_key))
'''

JS = '''import express from "express";
import jwt from "jsonwebtoken";
import { createHash, randomUUID } from "node:crypto";

const app = express();
const config = {
  port: Number(process.env.PORT ?? 3000),
  apiKey: process.env.OPENAI_API_KEY,
  jwtSecret: process.env.JWT_SECRET,
  sessionSecret: process.env.SESSION_SECRET ?? randomUUID(),
};

function authenticate(req, res, next) {
  const token = req.headers.authorization?.split(" ")[1];
  if (!token) return res.status(401).json({ error: "missing bearer token" });
  try {
    req.user = jwt.verify(token, config.jwtSecret, { algorithms: ["HS256"] });
    next();
  } catch (err) {
    res.status(401).json({ error: "invalid token" });
  }
}

export function etag(body) {
  return createHash("sha256").update(body).digest("hex").slice(0, 16);
}

app.get("/api/v1/projects/:id", authenticate, async (req, res) => {
  const project = await db.projects.findOne({ id: req.params.id, owner: req.user.sub });
  if (!project) return res.sendStatus(404);
  res.set("ETag", etag(JSON.stringify(project))).json(project);
});

app.listen(config.port, () => console.log(`listening on :${config.port}`));
'''

PROSE = '''# Migrating the billing service

Thanks for taking a look at this. The billing service still talks to the old
payment provider, and we want to move it to the new one before the end of the
quarter. Please read through the code in `billing/` and propose a plan. Keep in
mind that the API keys for both providers live in the secrets manager, never in
the repository, and that the service reads them at start-up. A password or token
must never be logged, not even at debug level.

Some background. The service was written three years ago by a small team that
has since moved on, so the documentation is thin. It accepts a webhook from the
provider for every payment event, stores the event, and then updates the
customer's balance. There is a nightly job that reconciles the balance with the
provider's report; when the two disagree, it opens a ticket rather than fixing
anything on its own. We would like to keep that behaviour: a human should look
at every mismatch.

What I need from you:

1. A short summary of how a payment flows through the code today.
2. The list of places that would change, with a rough size for each.
3. Anything that looks risky: missing tests, error handling that swallows
   failures, retries that could charge a customer twice.

Please do not change any code yet. When you are done, write the plan to
`docs/billing-migration.md` and tell me where you are unsure. If you need access
to something you cannot reach, say so and I will arrange it. Happy to answer
questions about the history of the service as well; I was around for some of it,
and I remember why the retry logic looks the way it does: the old provider once
sent every webhook twice during an outage, and we learned the hard way that the
handler has to be idempotent. Every event carries an id, and the table has a
unique index on it, so a second delivery is simply ignored.
'''

ENV_EXAMPLE = '''# Copy to .env and fill in. Never commit the real values.
DATABASE_URL=postgres://app:${POSTGRES_PASSWORD}@localhost:5432/app
REDIS_URL=redis://localhost:6379/0
OPENAI_API_KEY=your-openai-api-key
ANTHROPIC_API_KEY=<your key here>
STRIPE_SECRET_KEY=sk_test_...
JWT_SECRET=changeme
SESSION_SECRET=
AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE
AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
LOG_LEVEL=info
'''

def package_lock():
    names = ["react", "react-dom", "scheduler", "loose-envify", "js-tokens", "typescript", "vite", "esbuild", "rollup",
             "postcss", "nanoid", "picocolors", "source-map-js", "@babel/core", "@babel/parser", "@babel/types",
             "@types/node", "undici-types", "zod", "express", "body-parser", "debug", "ms", "cookie", "jsonwebtoken",
             "semver", "lodash", "chalk", "supports-color", "has-flag", "@anthropic-ai/sdk", "node-fetch", "whatwg-url",
             "tr46", "webidl-conversions", "form-data", "asynckit", "combined-stream", "delayed-stream", "mime-types"]
    pkgs = {"": {"name": "web", "version": "0.1.0", "dependencies": {"react": "^18.3.1", "express": "^4.19.2"}}}
    for n in names:
        v = f"{rng.randrange(0, 20)}.{rng.randrange(0, 30)}.{rng.randrange(0, 15)}"
        integrity = "sha512-" + base64.b64encode(bytes(rng.randrange(256) for _ in range(64))).decode()
        entry = {"version": v, "resolved": f"https://registry.npmjs.org/{n}/-/{n.split('/')[-1]}-{v}.tgz", "integrity": integrity}
        if rng.random() < 0.3: entry["dev"] = True
        if rng.random() < 0.3: entry["license"] = "MIT"
        pkgs[f"node_modules/{n}"] = entry
    return json.dumps({"name": "web", "version": "0.1.0", "lockfileVersion": 3, "requires": True, "packages": pkgs}, indent=2)

def poetry_lock():
    out = []
    for n in ["anyio", "certifi", "charset-normalizer", "click", "fastapi", "h11", "httpcore", "httpx", "idna", "pydantic",
              "pydantic-core", "sniffio", "starlette", "typing-extensions", "urllib3", "uvicorn", "anthropic", "boto3"]:
        v = f"{rng.randrange(0, 5)}.{rng.randrange(0, 40)}.{rng.randrange(0, 10)}"
        files = ",\n".join(f'    {{file = "{n.replace("-", "_")}-{v}-{tag}", hash = "sha256:{hexs(64)}"}}'
                           for tag in ["py3-none-any.whl", "cp312-cp312-manylinux_2_17_x86_64.whl", "tar.gz"])
        out.append(f'[[package]]\nname = "{n}"\nversion = "{v}"\ndescription = "{n} for Python"\noptional = false\n'
                   f'python-versions = ">=3.8"\nfiles = [\n{files},\n]\n')
    out.append(f'[metadata]\nlock-version = "2.0"\npython-versions = "^3.11"\ncontent-hash = "{hexs(64)}"\n')
    return "\n".join(out)

def digests():
    lines = [f"{hexs(64)}  dist/bottle-{arch}.tar.gz" for arch in ["x86_64-linux", "aarch64-linux", "x86_64-darwin"]]
    lines += [f"{hexs(128)}  image-{i}.qcow2" for i in range(2)]
    lines += [f"commit {hexs(40)}\nAuthor: Dev <dev@example.org>\n" for _ in range(3)]
    lines += [f"ghcr.io/acme/api@sha256:{hexs(64)}", f"Digest: sha256:{hexs(64)}",
              f"256 SHA256:{base64.b64encode(bytes(rng.randrange(256) for _ in range(32))).decode().rstrip('=')} dev@laptop (ED25519)",
              f"integrity=\"sha384-{base64.b64encode(bytes(rng.randrange(256) for _ in range(48))).decode()}\"",
              f"etag: W/\"{hexs(32)}\"", f"x-request-id: {uuid()}", f"trace_id={hexs(32)} span_id={hexs(16)}",
              f"md5sum {hexs(32)}", f"build-id {hexs(40)}"]
    return "\n".join(lines)

def uuids_log():
    rows = []
    for _ in range(30):
        rows.append(json.dumps({"ts": f"2025-06-12T10:{rng.randrange(60):02}:{rng.randrange(60):02}Z", "level": rng.choice(["info", "warn"]),
                                "request_id": uuid(), "user_id": uuid(), "trace": hexs(32), "msg": rng.choice(["GET /api/v1/items 200", "token refreshed", "cache miss", "session created"])}))
    return "\n".join(rows)

PUBLIC = lambda: f'''ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{b62(43)} dev@laptop
github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
-----BEGIN CERTIFICATE-----
{chr(10).join(base64.b64encode(bytes(rng.randrange(256) for _ in range(48))).decode() for _ in range(12))}
-----END CERTIFICATE-----
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA{b62(43)}=
-----END PUBLIC KEY-----
'''

def clean():
    img = base64.b64encode(png(40, 40)).decode()
    small = base64.b64encode(png(8, 8)).decode()
    yield "rust_source", request("Why does the proxy refuse my request with 403? Look at the handler.",
        [("/workspace/sidecars/src/proxy/handler.rs", git("show", "2e55d06:sidecars/src/proxy/handler.rs")),
         ("/workspace/src/manifest/validate.rs", git("show", "2e55d06:src/manifest/validate.rs"))])
    yield "python_source", request("Add rate limiting to the login endpoint.", [("/workspace/app/auth.py", PYTHON)])
    yield "js_source", request("Write tests for the project endpoint.", [("/workspace/server/index.js", JS)])
    yield "cargo_lock", request("Which crates pull in two versions of the same dependency?",
        [("/workspace/Cargo.lock", "\n".join(git("show", "2e55d06:Cargo.lock").split("\n")[:700]))])
    yield "package_lock", request("Upgrade react to the latest 18.x.", [("/workspace/web/package-lock.json", package_lock())])
    yield "poetry_lock", request("Is httpx pinned?", [("/workspace/api/poetry.lock", poetry_lock())])
    yield "uuids", request("Find the slow requests in this log.", [("/workspace/logs/api.jsonl", uuids_log())])
    yield "image", request("The button in this screenshot is misaligned; fix the CSS.", [],
        [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": img}},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": small}}])
    yield "prose", request(PROSE, [])
    yield "git_diff", request("Review this change.", [("git show", git("show", "--stat", "-p", "ed08bb4")[:60000])])
    yield "hex_digests", request("Check these against the release page.", [("/workspace/SHA256SUMS", digests())])
    yield "env_example", request("Set up the project locally.", [("/workspace/.env.example", ENV_EXAMPLE)])
    yield "public_keys", request("Which key does the deploy use?", [("/workspace/deploy/keys.txt", PUBLIC())])

def extract(rule, text, rules):
    spec = rules[rule]
    rx = re.compile(spec["regex"].replace(r"\z", r"\Z"))
    m = rx.search(text)
    g = spec.get("secretGroup")
    if g: return m.group(g)
    return next((x for x in m.groups() if x), m.group(0)) if m.groups() else m.group(0)

def planted():
    rules = {r["id"]: r for r in tomllib.load(open(os.path.join(ROOT, "sidecars/rules/secrets.toml"), "rb"))["rules"]}
    cases = {c["rule"]: c for c in tomllib.load(open(os.path.join(ROOT, "sidecars/rules/secrets_cases.toml"), "rb"))["case"]}
    s = {rid: extract(rid, cases[rid]["positive"][0], rules) for rid in rules if rid not in ("private-key",)}
    s["bip39-seed-phrase"] = "legal winner thank year wave sausage worth useful legal winner thank yellow"
    key_body = "\n".join(base64.b64encode(bytes(rng.randrange(256) for _ in range(48))).decode() for _ in range(20))
    rsa = f"-----BEGIN RSA PRIVATE KEY-----\n{key_body}\n-----END RSA PRIVATE KEY-----"
    ossh = f"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n{key_body[:200]}\n-----END OPENSSH PRIVATE KEY-----"
    files = {
        "aws_credentials": ("Deploy fails with AccessDenied; here is my config.", [("/home/dev/.aws/credentials",
            f"[default]\naws_access_key_id = {s['aws-access-key-id']}\naws_secret_access_key = {s['aws-secret-access-key']}\nregion = eu-west-1\n")],
            ["aws-access-key-id", "aws-secret-access-key"]),
        "dotenv": ("The app cannot start; check the env file.", [("/workspace/.env",
            ENV_EXAMPLE.replace("your-openai-api-key", s["openai-api-key"]).replace("<your key here>", s["anthropic-api-key"])
            .replace("sk_test_...", s["stripe-secret-key"]) + f"HF_TOKEN={s['huggingface-token']}\nDB_PASSWORD={s['generic-password']}\n"
            f"SENDGRID_API_KEY={s['sendgrid-api-key']}\nMAILGUN_KEY={s['mailgun-api-key']}\nTWILIO_API_KEY={s['twilio-api-key']}\n"
            f"DATABASE_URL_PROD=postgres://app:{s['generic-url-password']}@db.internal:5432/app\n")],
            ["openai-api-key", "anthropic-api-key", "stripe-secret-key", "huggingface-token", "generic-password",
             "sendgrid-api-key", "mailgun-api-key", "twilio-api-key", "generic-url-password"]),
        "github_tokens": ("Why does gh say bad credentials?", [("/home/dev/.config/gh/hosts.yml",
            f"github.com:\n    oauth_token: {s['github-oauth-token']}\n    user: dev\n    git_protocol: ssh\n"),
            ("/workspace/.github/workflows/release.yml",
             f"env:\n  GH_PAT: {s['github-pat']}\n  FINE: {s['github-fine-grained-pat']}\n  APP: {s['github-app-token']}\n  REFRESH: {s['github-refresh-token']}\n")],
            ["github-oauth-token", "github-pat", "github-fine-grained-pat", "github-app-token", "github-refresh-token"]),
        "ci_tokens": ("Clean up the CI config.", [("/workspace/.gitlab-ci.yml",
            f"variables:\n  GITLAB_TOKEN: {s['gitlab-pat']}\n  TRIGGER: {s['gitlab-pipeline-trigger-token']}\n  RUNNER: {s['gitlab-runner-token']}\n  DEPLOY: {s['gitlab-deploy-token']}\n"
            f"script:\n  - docker login -u ci -p {s['dockerhub-pat']}\n  - echo //registry.npmjs.org/:_authToken={s['npm-access-token']} > .npmrc\n"
            f"  - twine upload -u __token__ -p {s['pypi-upload-token']} dist/*\n")],
            ["gitlab-pat", "gitlab-pipeline-trigger-token", "gitlab-runner-token", "gitlab-deploy-token", "dockerhub-pat",
             "npm-access-token", "pypi-upload-token"]),
        "chat_tokens": ("The notifier stopped posting.", [("/workspace/notify/config.json", json.dumps({
            "slack": {"bot": s["slack-bot-token"], "user": s["slack-user-token"], "app": s["slack-app-token"],
                      "webhook": "https://" + s["slack-webhook-url"]},
            "discord": {"bot": s["discord-bot-token"], "webhook": "https://" + s["discord-webhook-url"]},
            "telegram": s["telegram-bot-token"]}, indent=2))],
            ["slack-bot-token", "slack-user-token", "slack-app-token", "slack-webhook-url", "discord-bot-token",
             "discord-webhook-url", "telegram-bot-token"]),
        "cloud_keys": ("Terraform plan fails.", [("/workspace/infra/terraform.tfvars",
            f'gcp_api_key = "{s["gcp-api-key"]}"\noauth_client_secret = "{s["google-oauth-client-secret"]}"\n'
            f'storage = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s["azure-storage-account-key"]};EndpointSuffix=core.windows.net"\n'
            f'do_token = "{s["digitalocean-token"]}"\nheroku_api_key = "{s["heroku-api-key"]}"\nheroku_v2 = "{s["heroku-api-key-v2"]}"\n'
            f'vault = "{s["hashicorp-vault-token"]}"\ndatabricks = "{s["databricks-token"]}"\n'),
            ("/workspace/infra/sa.json", json.dumps({"type": "service_account", "project_id": "acme", "private_key_id": s["gcp-service-account-key"],
             "private_key": rsa.replace("RSA PRIVATE", "PRIVATE") + "\n", "client_email": "ci@acme.iam.gserviceaccount.com"}, indent=2))],
            ["gcp-api-key", "google-oauth-client-secret", "azure-storage-account-key", "digitalocean-token", "heroku-api-key",
             "heroku-api-key-v2", "hashicorp-vault-token", "databricks-token", "gcp-service-account-key", "private-key"]),
        "commerce_tools": ("Which integrations are configured?", [("/workspace/config/integrations.py",
            f'SQUARE_ACCESS_TOKEN = "{s["square-access-token"]}"\nSQUARE_APP_SECRET = "{s["square-oauth-secret"]}"\n'
            f'SHOPIFY = "{s["shopify-token"]}"\nDATADOG_API_KEY = "{s["datadog-api-key"]}"\nNEW_RELIC = "{s["new-relic-user-api-key"]}"\n'
            f'GRAFANA = "{s["grafana-service-account-token"]}"\nLINEAR = "{s["linear-api-key"]}"\nPOSTMAN = "{s["postman-api-key"]}"\n'
            f'SERVICE_API_KEY = "{s["generic-api-key"]}"\n')],
            ["square-access-token", "square-oauth-secret", "shopify-token", "datadog-api-key", "new-relic-user-api-key",
             "grafana-service-account-token", "linear-api-key", "postman-api-key", "generic-api-key"]),
        "keys_and_tokens": ("Set up deploy keys.", [("/home/dev/.ssh/id_rsa", rsa), ("/home/dev/.ssh/id_ed25519", ossh),
            ("/home/dev/.config/sops/age/keys.txt", f"# created: 2025-06-01\n{s['age-secret-key']}\n"),
            ("/workspace/k8s/token.txt", s["jwt"]), ("/home/dev/wallet-notes.md", f"backup words:\n{s['bip39-seed-phrase']}\n")],
            ["private-key", "private-key", "age-secret-key", "jwt", "bip39-seed-phrase"]),
    }
    expected_secret = dict(s)
    for name, (prompt, reads, expect) in files.items():
        body = request(prompt, reads)
        lines = []
        seen_pk = 0
        for rule in expect:
            if rule == "private-key":
                sec = [rsa.replace("RSA PRIVATE", "PRIVATE"), rsa, ossh]
                sec = sec[seen_pk if name == "keys_and_tokens" else 0] if name != "keys_and_tokens" else [rsa, ossh][seen_pk]
                seen_pk += 1
                lines.append(f"{rule}\t{sec.splitlines()[0]}")
            else:
                lines.append(f"{rule}\t{expected_secret[rule]}")
        yield name, body, lines

def write(path, body):
    with open(path, "w") as f:
        json.dump(body, f, ensure_ascii=False)
        f.write("\n")

if __name__ == "__main__":
    for d in ("clean", "planted"):
        os.makedirs(os.path.join(OUT, d), exist_ok=True)
    for name, body in clean():
        write(os.path.join(OUT, "clean", name + ".json"), body)
    for name, body, lines in planted():
        write(os.path.join(OUT, "planted", name + ".json"), body)
        with open(os.path.join(OUT, "planted", name + ".expect"), "w") as f:
            f.write("\n".join(lines) + "\n")
