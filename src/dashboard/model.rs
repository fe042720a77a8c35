//! What the dashboard shows, read from the same state root as `bottle ls`,
//! `bottle requests` and `bottle logs`: running bottles from their state
//! directories, stopped ones from the kept logs under `<root>/logs/`. Pure
//! data; no terminal here.

use super::tail::Tail;
use crate::state::{self, Entry, Metadata};
use bottle_sidecars::audit::record::{AuditRecord, Event, Kind};
use bottle_sidecars::supervise::request::{Request, Status as ReqStatus};
use bottle_sidecars::supervise::store::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most audit decisions kept for the detail view.
pub const RECENT: usize = 50;

/// Where a bottle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Recorded as running but its processes are gone.
    Dead,
    /// Starting, stopping or failed, as recorded.
    Other(String),
    /// Stopped; its kept logs allow `bottle resume`.
    Stopped {
        resumable: bool,
    },
    /// Its state directory cannot be read.
    Broken(String),
}

impl Status {
    pub fn label(&self) -> &str {
        match self {
            Status::Running => "running",
            Status::Dead => "dead",
            Status::Other(s) => s,
            Status::Stopped { resumable: true } => "stopped, resumable",
            Status::Stopped { resumable: false } => "stopped",
            Status::Broken(_) => "broken",
        }
    }
}

/// One audit decision, for the detail view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub time: String,
    pub decision: String,
    /// `GET api.example.com/v1`, `push origin refs/heads/main`…
    pub what: String,
    pub rule: String,
}

/// Counts from a bottle's audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditCounts {
    pub denied: u64,
    /// Bytes through the proxy, both directions.
    pub bytes: u64,
    pub pushes_accepted: u64,
    pub pushes_rejected: u64,
    /// Newest last, at most [`RECENT`].
    pub recent: Vec<Decision>,
    /// Why the chain did not verify (the counts are then from the plain lines).
    pub unverified: Option<String>,
}

/// One bottle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub identity: String,
    pub agent: String,
    /// `vm` or `docker`.
    pub backend: String,
    /// `qemu-tcg`, `runc`… or `?`.
    pub engine: String,
    pub status: Status,
    pub started: String,
    pub uptime_secs: Option<u64>,
    /// Pending supervise requests, oldest first.
    pub pending: Vec<Request>,
    pub audit: AuditCounts,
    /// CPU use over the last refresh interval, in percent of one core
    /// (`None`: not running, not readable, or no earlier sample yet).
    pub cpu: Option<u32>,
    /// Memory in use now, in bytes.
    pub memory: Option<u64>,
}

impl Row {
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }
}

/// What the dashboard remembers between refreshes: each audit log's
/// [`Tail`] (so only appended lines are read) and each bottle's last CPU
/// sample.
#[derive(Debug, Default)]
pub struct Cache {
    logs: HashMap<PathBuf, Tail>,
    /// The last CPU sample of each bottle: when, and its CPU time in ns.
    cpu: HashMap<String, (Instant, u64)>,
}

impl Cache {
    /// The counts of the log at `path`, reading only what was appended
    /// since the last call.
    pub fn audit(&mut self, path: &Path) -> AuditCounts {
        let tail = self.logs.entry(path.to_path_buf()).or_default();
        tail.update(path);
        tail.counts.clone()
    }

    /// CPU percent and memory of a running bottle, from `/proc` (its VM
    /// process and its bundle) or its container's cgroup (and its bundle).
    pub fn usage(&mut self, meta: &Metadata) -> (Option<u32>, Option<u64>) {
        let Some(now) = sample(meta) else {
            self.cpu.remove(&meta.identity);
            return (None, None);
        };
        let at = Instant::now();
        let cpu = self
            .cpu
            .insert(meta.identity.clone(), (at, now.cpu_ns))
            .and_then(|(then, ns)| percent(now.cpu_ns.checked_sub(ns)?, at - then));
        (cpu, Some(now.memory_bytes))
    }
}

/// CPU time `ns` spent over `wall`, in percent of one core (`None` for an
/// interval too short to say).
pub fn percent(ns: u64, wall: Duration) -> Option<u32> {
    let wall = wall.as_nanos();
    if wall < 10_000_000 {
        return None;
    }
    u32::try_from((u128::from(ns) * 100 + wall / 2) / wall).ok()
}

/// What a bottle's processes use now: the agent's side (the VM process, or
/// the container's cgroup) plus its bundle. `None` when the agent's side
/// cannot be read (the column shows `-`).
fn sample(meta: &Metadata) -> Option<crate::sys::process::Usage> {
    use crate::sys::process::usage;
    let agent = match meta.backend {
        crate::manifest::BackendName::Docker => {
            crate::sys::cgroup::container_usage(meta.container_id.as_deref()?)?
        }
        crate::manifest::BackendName::Vm => usage(meta.vm_pid?)?,
    };
    let bundle = meta.bundle_pid.and_then(usage).unwrap_or_default();
    Some(agent + bundle)
}

/// Every bottle: running ones first (by identity), then stopped ones.
pub fn load(root: &Path, now: time::OffsetDateTime) -> anyhow::Result<Vec<Row>> {
    load_cached(root, now, &mut Cache::default())
}

/// [`load`], reusing the audit counts of logs that did not change.
pub fn load_cached(
    root: &Path,
    now: time::OffsetDateTime,
    cache: &mut Cache,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for entry in state::list(root)? {
        rows.push(match entry {
            Entry::Ok(dir, meta) => {
                let alive = crate::bundle::is_alive(&meta);
                let status = match meta.status {
                    state::Status::Running if alive => Status::Running,
                    state::Status::Running => Status::Dead,
                    s => Status::Other(s.as_str().to_string()),
                };
                let mut r = row(&meta, status, dir.path(), now, cache);
                if r.status == Status::Running {
                    (r.cpu, r.memory) = cache.usage(&meta);
                } else {
                    r.uptime_secs = None;
                }
                r
            }
            Entry::Broken { dir, reason } => Row {
                identity: dir.identity().to_string(),
                agent: "?".into(),
                backend: "?".into(),
                engine: "?".into(),
                status: Status::Broken(reason),
                started: "?".into(),
                uptime_secs: None,
                pending: Vec::new(),
                audit: AuditCounts::default(),
                cpu: None,
                memory: None,
            },
        });
    }
    let mut stopped = Vec::new();
    if let Ok(rd) = std::fs::read_dir(state::logs_root(root)) {
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if rows.iter().any(|r| r.identity == name) {
                continue;
            }
            let Some(dir) = state::archived(root, &name) else {
                continue;
            };
            // The same test `bottle resume` starts with: its record reads.
            if let Ok(meta) = state::read_metadata_in(&dir) {
                let mut r = row(&meta, Status::Stopped { resumable: true }, &dir, now, cache);
                r.uptime_secs = None;
                r.pending.clear();
                stopped.push(r);
            }
        }
    }
    stopped.sort_by(|a, b| a.identity.cmp(&b.identity));
    rows.extend(stopped);
    Ok(rows)
}

fn row(
    meta: &Metadata,
    status: Status,
    dir: &Path,
    now: time::OffsetDateTime,
    cache: &mut Cache,
) -> Row {
    let uptime_secs = time::OffsetDateTime::parse(
        &meta.started_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .and_then(|t| u64::try_from((now - t).whole_seconds()).ok());
    Row {
        identity: meta.identity.clone(),
        agent: meta.agent.clone(),
        backend: meta.backend.to_string(),
        engine: meta
            .engine
            .map_or_else(|| "?".to_string(), |e| e.to_string()),
        status,
        started: meta.started_at.clone(),
        uptime_secs,
        pending: pending(dir),
        audit: cache.audit(&dir.join(crate::bundle::files::AUDIT)),
        cpu: None,
        memory: None,
    }
}

/// The pending supervise requests in a state directory (none when it has no
/// `supervise/` directory: the store is never created from here).
pub fn pending(dir: &Path) -> Vec<Request> {
    let path = dir.join(bottle_sidecars::supervise::DIR);
    if !path.is_dir() {
        return Vec::new();
    }
    Store::open(&path)
        .and_then(|s| s.list())
        .map(|all| {
            all.into_iter()
                .filter(|r| r.status == ReqStatus::Pending)
                .collect()
        })
        .unwrap_or_default()
}

/// Count an audit log: its verified records when the chain verifies, else
/// its plain lines (and say so).
pub fn audit(path: &Path) -> AuditCounts {
    let mut tail = Tail::default();
    tail.update(path);
    tail.counts
}

/// The counts of a list of records.
pub fn counts(records: &[AuditRecord]) -> AuditCounts {
    let mut c = AuditCounts::default();
    counts_into(&mut c, records);
    c
}

/// Add `records` (newer than what `c` counted) to `c`.
pub fn counts_into(c: &mut AuditCounts, records: &[AuditRecord]) {
    for r in records {
        c.bytes += r.bytes_up.unwrap_or(0) + r.bytes_down.unwrap_or(0);
        if r.event != Event::Decided || r.decision.is_empty() {
            continue;
        }
        if r.decision == "deny" {
            c.denied += 1;
        }
        let what = match (&r.kind, &r.git) {
            (Kind::Git, Some(g)) => {
                if g.service == "push" {
                    match r.decision.as_str() {
                        "deny" => c.pushes_rejected += 1,
                        _ => c.pushes_accepted += 1,
                    }
                }
                let mut s = format!("{} {}", g.service, g.remote);
                if !g.refs.is_empty() {
                    s.push_str(&format!(" {}", g.refs.join(",")));
                }
                if let Some(n) = g.findings.filter(|n| *n > 0) {
                    // Where the first finding is: what the operator opens.
                    let at: Vec<String> = [
                        g.commit
                            .as_ref()
                            .map(|c| format!("commit {}", c.get(..12).unwrap_or(c))),
                        g.file.as_ref().map(|f| format!("in {f}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    s.push_str(&format!(" ({n} finding(s)"));
                    if !at.is_empty() {
                        s.push_str(&format!(", first: {}", at.join(" ")));
                    }
                    s.push(')');
                }
                s
            }
            (Kind::Supervise, _) => format!("supervise {}", r.detail.as_deref().unwrap_or("")),
            _ => format!("{} {}{}", r.method, r.host, r.path)
                .trim()
                .to_string(),
        };
        c.recent.push(Decision {
            time: r.time.get(11..19).unwrap_or(&r.time).to_string(),
            decision: r.decision.clone(),
            what,
            rule: r.rule.clone(),
        });
    }
    let skip = c.recent.len().saturating_sub(RECENT);
    c.recent.drain(..skip);
}

/// `42s`, `17m`, `3h`, `2d`.
pub fn span(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `812B`, `3.4K`, `12M`, `1.2G`: at most five characters, for the list.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut f = n as f64 / 1024.0;
    let mut unit = 0;
    while f >= 1023.5 && unit < UNITS.len() - 1 {
        f /= 1024.0;
        unit += 1;
    }
    if f < 9.95 {
        format!("{f:.1}{}", UNITS[unit])
    } else {
        format!("{f:.0}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_sidecars::audit::log::{AuditLog, AuditOptions};
    use bottle_sidecars::audit::record::GitFields;
    use bottle_sidecars::supervise::request::Ask;

    fn meta_json(id: &str, status: &str) -> String {
        format!(
            r#"{{"version": 1, "identity": "{id}", "agent": "claude", "bottle": "b",
            "cwd": "/w", "backend": "docker", "engine": "runc",
            "started_at": "2026-01-01T00:00:00Z", "status": "{status}"}}"#
        )
    }

    fn now() -> time::OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:10:00 UTC)
    }

    #[test]
    fn a_rejected_push_says_where_its_first_finding_is() {
        let mut push = AuditRecord::new(Kind::Git, Event::Decided);
        push.decision = "deny".into();
        push.rule = "aws-access-key".into();
        push.git = Some(GitFields {
            remote: "origin".into(),
            service: "push".into(),
            refs: vec!["refs/heads/main".into()],
            commit: Some("0123456789abcdef0123".into()),
            file: Some("config/prod.env".into()),
            findings: Some(2),
        });
        let mut c = AuditCounts::default();
        counts_into(&mut c, &[push]);
        assert_eq!(c.pushes_rejected, 1);
        assert_eq!(
            c.recent[0].what,
            "push origin refs/heads/main (2 finding(s), first: commit 0123456789ab in config/prod.env)"
        );
        assert_eq!(c.recent[0].rule, "aws-access-key");
    }

    #[test]
    fn an_empty_or_missing_root_has_no_rows() {
        let root = tempfile::tempdir().unwrap();
        assert!(load(&root.path().join("nope"), now()).unwrap().is_empty());
        assert!(load(root.path(), now()).unwrap().is_empty());
    }

    #[test]
    fn rows_come_from_state_dirs_and_kept_logs_with_their_counts() {
        let root = tempfile::tempdir().unwrap();
        let live = root.path().join("claude-aaaaa");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(
            live.join("metadata.json"),
            meta_json("claude-aaaaa", "running"),
        )
        .unwrap();
        let store = Store::open(&live.join(bottle_sidecars::supervise::DIR)).unwrap();
        for (id, status) in [
            ("aaaaaaaaaaaa", ReqStatus::Pending),
            ("bbbbbbbbbbbb", ReqStatus::Rejected),
        ] {
            store
                .save(&Request {
                    id: id.into(),
                    ask: Ask::RequestCapability { name: "jq".into() },
                    reason: "r".into(),
                    created: 1,
                    status,
                    decided: None,
                    until: None,
                    note: None,
                })
                .unwrap();
        }
        let log = AuditLog::open(
            &live.join(crate::bundle::files::AUDIT),
            AuditOptions::new("claude-aaaaa"),
        )
        .unwrap();
        let mut deny = AuditRecord::new(Kind::Request, Event::Decided);
        deny.decision = "deny".into();
        deny.method = "GET".into();
        deny.host = "evil.test".into();
        deny.path = "/".into();
        deny.rule = "not-allowed".into();
        log.append(deny).unwrap();
        let mut done = AuditRecord::new(Kind::Request, Event::Completed);
        done.bytes_up = Some(100);
        done.bytes_down = Some(1000);
        log.append(done).unwrap();
        for decision in ["allow", "allow", "deny"] {
            let mut push = AuditRecord::new(Kind::Git, Event::Decided);
            push.decision = decision.into();
            push.git = Some(GitFields {
                remote: "origin".into(),
                service: "push".into(),
                refs: vec!["refs/heads/main".into()],
                ..GitFields::default()
            });
            log.append(push).unwrap();
        }
        drop(log);
        let kept = state::logs_root(root.path()).join("claude-bbbbb");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(
            kept.join("metadata.json"),
            meta_json("claude-bbbbb", "stopped"),
        )
        .unwrap();

        let rows = load(root.path(), now()).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let r = &rows[0];
        assert_eq!(r.identity, "claude-aaaaa");
        // Recorded as running, but no bundle process: dead, as `bottle ls` says.
        assert_eq!(r.status, Status::Dead);
        assert_eq!((r.backend.as_str(), r.engine.as_str()), ("docker", "runc"));
        // Uptime only while it runs.
        assert_eq!(r.uptime_secs, None);
        assert_eq!(r.started, "2026-01-01T00:00:00Z");
        assert_eq!(
            r.pending.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["aaaaaaaaaaaa"]
        );
        assert_eq!(r.audit.unverified, None);
        assert_eq!(r.audit.denied, 2);
        assert_eq!(r.audit.bytes, 1100);
        assert_eq!((r.audit.pushes_accepted, r.audit.pushes_rejected), (2, 1));
        assert_eq!(r.audit.recent[0].what, "GET evil.test/");
        assert_eq!(r.audit.recent[1].what, "push origin refs/heads/main");
        assert_eq!(rows[1].identity, "claude-bbbbb");
        assert_eq!(rows[1].status, Status::Stopped { resumable: true });
        assert_eq!(rows[1].uptime_secs, None);
    }

    #[test]
    fn a_tampered_audit_log_still_counts_but_says_it_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, AuditOptions::new("claude-aaaaa")).unwrap();
        let mut deny = AuditRecord::new(Kind::Request, Event::Decided);
        deny.decision = "deny".into();
        log.append(deny.clone()).unwrap();
        log.append(deny).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"deny\"", "\"allow\"", 1)).unwrap();
        let c = audit(&path);
        assert!(c.unverified.is_some(), "{c:?}");
        assert_eq!(c.denied, 1);
    }

    #[test]
    fn byte_counts_fit_five_columns() {
        for (n, want) in [
            (0, "0B"),
            (1023, "1023B"),
            (4096, "4.0K"),
            (12 << 20, "12M"),
            ((1 << 30) + (1 << 28), "1.2G"),
            (1_048_575, "1.0M"),
        ] {
            assert_eq!(bytes(n), want, "{n}");
        }
    }

    #[test]
    fn cpu_is_a_percent_of_the_interval_and_memory_is_read_now() {
        assert_eq!(percent(500_000_000, Duration::from_secs(1)), Some(50));
        assert_eq!(percent(3_000_000_000, Duration::from_secs(2)), Some(150));
        assert_eq!(
            percent(1, Duration::from_millis(1)),
            None,
            "too short to say"
        );
        // A "VM bottle" whose VM process is this test: memory at once, CPU
        // from the second sample on (after spending some).
        let mut meta: Metadata =
            serde_json::from_str(&meta_json("claude-aaaaa", "running")).unwrap();
        meta.backend = crate::manifest::BackendName::Vm;
        meta.vm_pid = Some(std::process::id());
        let mut cache = Cache::default();
        let (cpu, mem) = cache.usage(&meta);
        assert_eq!(cpu, None);
        assert!(mem.unwrap() > 0);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (cpu, _) = cache.usage(&meta);
        assert!(cpu.unwrap() >= 20, "{cpu:?}");
        // A container whose cgroup is not there: no numbers, no error.
        meta.backend = crate::manifest::BackendName::Docker;
        meta.container_id = Some("feedfacefeedface".into());
        assert_eq!(cache.usage(&meta), (None, None));
    }
}
