use super::log::rotated_name;
use super::*;
use std::path::Path;
use std::sync::Arc;

fn record(host: &str) -> AuditRecord {
    let mut r = AuditRecord::new(Kind::Request, Event::Decided);
    r.peer = "guest".into();
    r.method = "GET".into();
    r.host = host.into();
    r.path = "/".into();
    r.decision = "allow".into();
    r.rule = "allow".into();
    r
}

fn open(path: &Path, max_bytes: u64, keep: usize) -> AuditLog {
    AuditLog::open(
        path,
        AuditOptions {
            identity: "agent-abcde".into(),
            max_bytes,
            keep,
        },
    )
    .unwrap()
}

fn hosts(path: &Path) -> Vec<String> {
    read_verified(path)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == Kind::Request)
        .map(|r| r.host)
        .collect()
}

#[test]
fn appended_records_read_back_verified_and_chain_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    assert_eq!(log.append(record("a.test")).unwrap(), 1);
    assert_eq!(log.append(record("b.test")).unwrap(), 2);
    drop(log);
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    assert_eq!(log.append(record("c.test")).unwrap(), 3);
    let records = read_verified(&path).unwrap();
    assert_eq!(hosts(&path), ["a.test", "b.test", "c.test"]);
    assert_eq!(records[0].prev, GENESIS);
    assert!(records.iter().all(|r| r.identity == "agent-abcde"));
    assert_eq!(read_head(&path).unwrap(), log.head());
    assert_eq!(log.head().unwrap().count, 3);
}

#[test]
fn lines_of_older_bottles_still_parse_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // The format before kinds, events and seq.
    let old = format!(
        r#"{{"time":"2026-01-01T00:00:00Z","identity":"agent-abcde","peer":"guest","method":"GET","host":"old.test","path":"/","decision":"deny","rule":"host-not-allowed","bytes":0,"prev":"{GENESIS}"}}"#
    );
    std::fs::write(&path, format!("{old}\n")).unwrap();
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    assert_eq!(log.append(record("new.test")).unwrap(), 2);
    let records = read_verified(&path).unwrap();
    assert_eq!(records[0].kind, Kind::Request);
    assert_eq!(records[0].seq, None);
    assert_eq!(records[1].seq, Some(2));
    assert_eq!(hosts(&path), ["old.test", "new.test"]);
}

#[test]
fn an_edited_line_breaks_the_chain_at_the_next_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    for h in ["a.test", "b.test", "c.test"] {
        log.append(record(h)).unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("b.test", "x.test", 1);
    std::fs::write(&path, text).unwrap();
    assert!(matches!(
        read_verified(&path),
        Err(AuditError::Broken { line: 3, .. })
    ));
}

#[test]
fn a_dropped_first_line_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    for h in ["a.test", "b.test", "c.test"] {
        log.append(record(h)).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&path, kept.join("\n")).unwrap();
    assert!(matches!(
        read_verified(&path),
        Err(AuditError::Broken { line: 1, .. })
    ));
}

fn cut_last_line(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines[..lines.len() - 1].join("\n") + "\n";
    std::fs::write(path, kept).unwrap();
}

#[test]
fn a_cut_tail_is_told_from_a_log_that_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    for h in ["a.test", "b.test", "c.test"] {
        log.append(record(h)).unwrap();
    }
    let head = log.head().unwrap();
    drop(log);
    // Verifies without the head (the chain itself is intact)…
    cut_last_line(&path);
    assert_eq!(verify_chain(&path, None, |_, _| {}).unwrap().last, 2);
    // …but not against it.
    let err = verify_chain(&path, Some(&head), |_, _| {}).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Cut {
                last: 2,
                head: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("last 1 line(s) are missing"),
        "{err}"
    );
    // Cut and rewritten: a different line where the head's was.
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    log.append(record("forged.test")).unwrap();
    let err = verify_chain(&path, Some(&head), |_, _| {}).unwrap_err();
    assert!(matches!(err, AuditError::HeadMismatch { line: 3 }), "{err}");
}

#[test]
fn lines_after_the_recorded_head_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    log.append(record("a.test")).unwrap();
    let head = log.head().unwrap();
    log.append(record("b.test")).unwrap();
    let v = verify_chain(&path, Some(&head), |_, _| {}).unwrap();
    assert!(v.head_checked);
    assert_eq!(v.last, 2);
}

#[test]
fn the_chain_continues_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Small cap: about two lines per file.
    let log = open(&path, 600, 100);
    let names: Vec<String> = (0..9).map(|i| format!("h{i}.test")).collect();
    for h in &names {
        log.append(record(h)).unwrap();
    }
    assert!(rotated_name(&path, 3).exists(), "no rotation happened");
    assert_eq!(hosts(&path), names);
    // Each new file starts with a rotation line chaining to the old file.
    let first = std::fs::read_to_string(&path).unwrap();
    let marker: AuditRecord = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!((marker.kind, marker.event), (Kind::Log, Event::Rotated));
    assert_eq!(marker.kept_from, Some(1));
    // Reopened, the writer continues the same chain and numbering.
    let head = log.head().unwrap();
    drop(log);
    let log = open(&path, 600, 100);
    let seq = log.append(record("after.test")).unwrap();
    // (one more line first when the append rotates)
    assert!(seq == head.count + 1 || seq == head.count + 2, "{seq}");
    let v = verify_chain(&path, log.head().as_ref(), |_, _| {}).unwrap();
    assert_eq!((v.first, v.last), (1, seq));
    assert!(v.head_checked);
}

#[test]
fn an_edit_in_a_rotated_file_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, 600, 100);
    for i in 0..9 {
        log.append(record(&format!("h{i}.test"))).unwrap();
    }
    let second = rotated_name(&path, 2);
    let text = std::fs::read_to_string(&second).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    let edited = lines[0].replacen("\"detail\":\"continues", "\"detail\":\"follows", 1);
    assert_ne!(lines[0], edited);
    std::fs::write(&second, text.replacen(lines[0], &edited, 1)).unwrap();
    match read_verified(&path) {
        Err(AuditError::Broken { file, line }) => {
            // The edited line still parses; the one after it breaks.
            assert_eq!((file, line), (second, 2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotation_keeps_a_bounded_number_of_files_and_says_where_the_rest_began() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, 600, 2);
    for i in 0..20 {
        log.append(record(&format!("h{i}.test"))).unwrap();
    }
    // Files beyond `keep` are deleted off the request path: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rotated = loop {
        let rotated = super::log::rotated_files(&path).unwrap();
        if rotated.len() <= 2 || std::time::Instant::now() > deadline {
            break rotated;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    // The oldest lines are gone by policy: the chain verifies from the
    // first line kept, which a rotation line announced.
    let v = verify_chain(&path, log.head().as_ref(), |_, _| {}).unwrap();
    assert!(v.first > 1);
    assert!(v.head_checked);
    // Removing one more file than rotation did is detected.
    std::fs::remove_file(&rotated[0].1).unwrap();
    let err = verify_chain(&path, log.head().as_ref(), |_, _| {}).unwrap_err();
    assert!(matches!(err, AuditError::Missing { .. }), "{err}");
}

#[test]
fn a_failed_write_is_an_error_and_the_log_then_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let log = open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP);
    let err = log.append(record("a.test")).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    assert_eq!(read_head(&path).unwrap(), None);
    // The device cannot be cut back: nothing more is accepted.
    let err = log.append(record("b.test")).unwrap_err();
    assert!(matches!(err, AuditError::Closed { .. }), "{err}");
}

#[test]
fn a_dropped_exchange_is_completed_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP));
    let mut done = log.decide(record("a.test")).unwrap();
    done.bytes_up = 5;
    let mut c = Completion::new(Outcome::Ok);
    c.status = Some(200);
    c.bytes_down = 7;
    done.complete(c).unwrap();
    drop(log.decide(record("b.test")).unwrap());
    let records = read_verified(&path).unwrap();
    let events: Vec<(Event, Option<u64>, Option<Outcome>)> =
        records.iter().map(|r| (r.event, r.of, r.outcome)).collect();
    assert_eq!(
        events,
        [
            (Event::Decided, None, None),
            (Event::Completed, Some(1), Some(Outcome::Ok)),
            (Event::Decided, None, None),
            (Event::Completed, Some(3), Some(Outcome::Cancelled)),
        ]
    );
    assert_eq!(records[1].bytes_down, Some(7));
}

#[test]
fn a_summary_is_written_only_when_something_new_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP));
    let mut s = RefusalSummary::new(log, Kind::Netstack);
    let totals = |a: u64, b: u64| {
        [
            ("tcp-other-address".to_string(), a),
            ("dns-rate-limited".to_string(), b),
        ]
        .into_iter()
        .collect()
    };
    assert!(!s.record(totals(0, 0)).unwrap());
    assert!(s.record(totals(3, 0)).unwrap());
    assert!(!s.record(totals(3, 0)).unwrap());
    assert!(s.record(totals(5, 1)).unwrap());
    let records = read_verified(&path).unwrap();
    assert_eq!(records.len(), 2);
    let last = records[1].refused.clone().unwrap();
    assert_eq!(last.get("tcp-other-address"), Some(&2));
    assert_eq!(last.get("dns-rate-limited"), Some(&1));
}

#[test]
fn a_git_decision_is_a_git_line_in_the_same_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP));
    log.append(record("a.test")).unwrap();
    log.record_git(GitAudit {
        peer: "10.0.2.15:40000".into(),
        decision: "deny".into(),
        rule: "dlp:aws-access-key-id".into(),
        fields: GitFields {
            remote: "origin".into(),
            service: "push".into(),
            refs: vec!["refs/heads/main".into()],
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            file: Some("config/keys.env".into()),
            findings: Some(1),
        },
        detail: Some("1 secret found".into()),
    })
    .unwrap();
    // A forwarded push: decided, then completed with the upstream's answer.
    let push = GitAudit {
        peer: "10.0.2.15:40002".into(),
        decision: "allow".into(),
        rule: "push".into(),
        fields: GitFields {
            remote: "origin".into(),
            service: "push".into(),
            ..GitFields::default()
        },
        detail: None,
    };
    let exchange = log.decide(push.into_record()).unwrap();
    exchange
        .complete(Completion::new(Outcome::UpstreamFailed))
        .unwrap();
    let records = read_verified(&path).unwrap();
    assert_eq!(records.len(), 4);
    let git = &records[1];
    assert_eq!(
        (git.kind, git.host.as_str(), git.method.as_str()),
        (Kind::Git, "origin", "push")
    );
    let fields = git.git.as_ref().unwrap();
    assert_eq!(fields.file.as_deref(), Some("config/keys.env"));
    assert_eq!(records[3].kind, Kind::Git);
    assert_eq!(records[3].outcome, Some(Outcome::UpstreamFailed));
    assert_eq!(records[3].of, records[2].seq);
}
