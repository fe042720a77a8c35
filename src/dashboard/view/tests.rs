use super::*;
use crate::dashboard::model::{AuditCounts, Decision};
use bottle_sidecars::supervise::request::{Ask, Request, Status as ReqStatus};
use ratatui::style::Color;

fn row(i: usize, status: Status) -> Row {
    Row {
        identity: format!("claude-{i:05}"),
        agent: "claude".into(),
        backend: "docker".into(),
        engine: "runc".into(),
        status,
        started: "2026-01-01T00:00:00Z".into(),
        uptime_secs: Some(300),
        pending: Vec::new(),
        audit: AuditCounts::default(),
    }
}

fn pending(id: &str, host: &str) -> Request {
    Request {
        id: id.into(),
        ask: Ask::RequestEgress {
            host: host.into(),
            port: Some(443),
            methods: Vec::new(),
            paths: Vec::new(),
        },
        reason: "fetch the docs".into(),
        created: 0,
        status: ReqStatus::Pending,
        decided: None,
        until: None,
        note: None,
    }
}

fn draw(rows: &[Row], ui: &Ui, color: bool) -> Buffer {
    let area = Rect::new(0, 0, 80, 24);
    let mut buf = Buffer::empty(area);
    render(area, &mut buf, rows, ui, Theme { color });
    buf
}

fn text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let line: String = (0..area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn the_list_shows_each_bottle_with_its_counts_and_the_keys() {
    let mut busy = row(1, Status::Running);
    busy.pending = vec![pending("q1", "api.example.com")];
    busy.audit = AuditCounts {
        denied: 3,
        bytes: 4096,
        pushes_accepted: 2,
        pushes_rejected: 1,
        ..AuditCounts::default()
    };
    let rows = vec![busy, row(2, Status::Stopped { resumable: true })];
    let screen = text(&draw(&rows, &Ui::default(), true));
    assert!(screen.contains("1 running, 2 in all"), "{screen}");
    let line = screen.lines().find(|l| l.contains("claude-00001")).unwrap();
    for want in [
        "claude",
        "docker/runc",
        "running",
        "5m",
        " 1 ",
        " 3 ",
        "4.0K",
        "2/1",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    let stopped = screen.lines().find(|l| l.contains("claude-00002")).unwrap();
    assert!(stopped.contains("resumable"), "{stopped}");
    assert!(screen.contains("Enter detail"), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
}

#[test]
fn an_empty_host_says_how_to_start_a_bottle() {
    let screen = text(&draw(&[], &Ui::default(), true));
    assert!(screen.contains("0 running, 0 in all"), "{screen}");
    assert!(screen.contains("no bottles on this host"), "{screen}");
    assert!(screen.contains("bottle run AGENT --detach"), "{screen}");
}

#[test]
fn a_long_list_scrolls_to_keep_the_selection_in_view() {
    let rows: Vec<Row> = (0..40).map(|i| row(i, Status::Running)).collect();
    let ui = Ui {
        selected: 35,
        ..Ui::default()
    };
    let buf = draw(&rows, &ui, true);
    let screen = text(&buf);
    assert!(screen.contains("claude-00035"), "{screen}");
    assert!(!screen.contains("claude-00000"), "{screen}");
    // The selected line is the reversed one.
    let y = screen
        .lines()
        .position(|l| l.contains("claude-00035"))
        .unwrap() as u16;
    assert!(buf[(0, y)].modifier.contains(Modifier::REVERSED));
}

#[test]
fn the_detail_view_shows_pending_requests_and_recent_decisions() {
    let mut r = row(7, Status::Running);
    r.pending = vec![pending("q1", "api.example.com"), pending("q2", "b.test")];
    r.audit.recent = vec![
        Decision {
            time: "12:00:01".into(),
            decision: "allow".into(),
            what: "GET pypi.org/simple".into(),
            rule: "allow:pypi.org".into(),
        },
        Decision {
            time: "12:00:02".into(),
            decision: "deny".into(),
            what: "POST evil.test/upload".into(),
            rule: "not-allowed".into(),
        },
    ];
    let ui = Ui {
        screen: Screen::Detail,
        request: 1,
        ..Ui::default()
    };
    let screen = text(&draw(&[r], &ui, true));
    assert!(
        screen.contains("claude-00007  agent claude  docker/runc  running  up 5m"),
        "{screen}"
    );
    assert!(screen.contains("Pending requests (2)"), "{screen}");
    assert!(
        screen.contains("  q1  egress api.example.com:443  fetch the docs"),
        "{screen}"
    );
    assert!(screen.contains("> q2  egress b.test:443"), "{screen}");
    assert!(
        screen.contains("12:00:02 deny   POST evil.test/upload  not-allowed"),
        "{screen}"
    );
    assert!(screen.contains("a approve  r reject"), "{screen}");
}

#[test]
fn the_approve_prompt_replaces_the_message_line() {
    let mut r = row(7, Status::Running);
    r.pending = vec![pending("q1", "api.example.com")];
    let ui = Ui {
        screen: Screen::Detail,
        prompt: Some(Prompt::Approve {
            req: "q1".into(),
            input: "10m".into(),
        }),
        message: Some("old".into()),
        ..Ui::default()
    };
    let screen = text(&draw(&[r], &ui, true));
    let line = screen.lines().nth(22).unwrap();
    assert!(line.starts_with("approve q1 for how long?"), "{line}");
    assert!(line.ends_with("10m_"), "{line}");
}

#[test]
fn no_color_draws_without_colours() {
    let mut r = row(1, Status::Running);
    r.pending = vec![pending("q1", "a.test")];
    r.audit.recent = vec![Decision {
        time: "t".into(),
        decision: "deny".into(),
        what: "x".into(),
        rule: "y".into(),
    }];
    let rows = vec![r, row(2, Status::Dead)];
    let colored = |buf: &Buffer| {
        buf.content()
            .iter()
            .any(|c| c.fg != Color::Reset || c.bg != Color::Reset)
    };
    for screen in [Screen::List, Screen::Detail] {
        let ui = Ui {
            screen,
            ..Ui::default()
        };
        assert!(colored(&draw(&rows, &ui, true)), "{screen:?} has colour");
        assert!(!colored(&draw(&rows, &ui, false)), "{screen:?} without");
    }
}

#[test]
fn a_running_pool_is_shown_apart_from_the_bottles() {
    let rows = vec![row(1, Status::Running)];
    let ui = Ui {
        pool: Some("pool: 1 of 2 ready (tiny)".into()),
        ..Ui::default()
    };
    let screen = text(&draw(&rows, &ui, true));
    let title = screen.lines().next().unwrap_or_default();
    assert!(
        title.contains("1 running, 1 in all; pool: 1 of 2 ready (tiny)"),
        "{screen}"
    );
    // Without a pool the title is unchanged.
    let screen = text(&draw(&rows, &Ui::default(), true));
    assert!(!screen.contains("pool:"), "{screen}");
}
