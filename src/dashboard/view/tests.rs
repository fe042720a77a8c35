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
        cpu: None,
        memory: None,
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
    busy.cpu = Some(37);
    busy.memory = Some(250 << 20);
    let rows = vec![busy, row(2, Status::Stopped { resumable: true })];
    let screen = text(&draw(&rows, &Ui::default(), true));
    assert!(screen.contains("1 running, 2 in all"), "{screen}");
    let line = screen.lines().find(|l| l.contains("claude-00001")).unwrap();
    for want in [
        "claude",
        "docker/runc",
        "running",
        "5m",
        " 37% ",
        " 250M ",
        " 1 ",
        " 3 ",
        "4.0K",
        "2/1",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    let stopped = screen.lines().find(|l| l.contains("claude-00002")).unwrap();
    assert!(stopped.contains("resumable"), "{stopped}");
    // A stopped bottle uses nothing: no CPU or memory figure.
    let cols: Vec<&str> = stopped.split_whitespace().collect();
    assert_eq!(&cols[4..7], ["5m", "-", "-"], "{stopped}");
    let header = screen.lines().find(|l| l.starts_with("ID")).unwrap();
    assert!(header.contains("UP   CPU  MEM"), "{header}");
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
    for screen in [Screen::List, Screen::Detail, Screen::New] {
        let ui = Ui {
            screen,
            new: Some(picker(NewStep::Backend)),
            ..Ui::default()
        };
        assert!(colored(&draw(&rows, &ui, true)), "{screen:?} has colour");
        assert!(!colored(&draw(&rows, &ui, false)), "{screen:?} without");
    }
}

fn line_of<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not on the screen:\n{screen}"))
}

#[test]
fn the_detail_view_shows_the_effective_policy_and_the_allow_prompt() {
    let r = row(7, Status::Running);
    let ui = Ui {
        screen: Screen::Detail,
        policy: Some(
            "allow        : pypi.org, api.example.com\nallow_ports  : -\nallow_ips    : -\npassthrough  : -\ndenied       : evil.test\ngrant        : b.test:443 (q1, ends in 9m)\n"
                .into(),
        ),
        prompt: Some(Prompt::Input {
            label: "allow HOST[:PORT]:".into(),
            input: "api.example.com:8443".into(),
        }),
        ..Ui::default()
    };
    let screen = text(&draw(std::slice::from_ref(&r), &ui, true));
    assert!(screen.contains("Effective policy"), "{screen}");
    assert!(
        screen.contains("  allow: pypi.org, api.example.com\n"),
        "{screen}"
    );
    assert!(screen.contains("  denied: evil.test\n"), "{screen}");
    assert!(
        screen.contains("  grant: b.test:443 (q1, ends in 9m)"),
        "{screen}"
    );
    assert!(
        !screen.contains("allow_ports"),
        "unset lines are left out: {screen}"
    );
    let line = screen.lines().nth(22).unwrap();
    assert_eq!(line, "allow HOST[:PORT]: api.example.com:8443_");
    assert!(screen.contains("A allow  D deny"), "{screen}");
    // A stopped bottle has no policy to show or edit.
    let stopped = row(8, Status::Stopped { resumable: true });
    let screen = text(&draw(&[stopped], &Ui { prompt: None, ..ui }, true));
    assert!(
        screen.contains("Effective policy\n  not running"),
        "{screen}"
    );
}

fn picker(step: NewStep) -> NewAgent {
    NewAgent {
        manifest: "/w/bottle.toml".into(),
        agents: vec!["claude".into(), "shell".into()],
        agent: 1,
        backends: vec![
            BackendChoice {
                name: "vm".into(),
                ready: Err("no /dev/kvm and no qemu (fix: install qemu-system-x86)".into()),
            },
            BackendChoice {
                name: "docker".into(),
                ready: Ok("dockerd API 1.41".into()),
            },
        ],
        backend: 1,
        step,
        plan: None,
    }
}

#[test]
fn the_new_agent_picker_greys_an_unavailable_backend_with_its_reason() {
    for color in [true, false] {
        let ui = Ui {
            screen: Screen::New,
            new: Some(picker(NewStep::Backend)),
            ..Ui::default()
        };
        let buf = draw(&[], &ui, color);
        let screen = text(&buf);
        assert!(
            screen.contains("New agent (manifest: /w/bottle.toml)"),
            "{screen}"
        );
        assert!(screen.contains("  claude\n> shell\n"), "{screen}");
        let vm = line_of(&screen, "unavailable");
        assert_eq!(
            vm,
            "  vm      unavailable: no /dev/kvm and no qemu (fix: install qemu-system-x86)"
        );
        let y = screen.lines().position(|l| l == vm).unwrap() as u16;
        let cell = &buf[(2, y)];
        assert!(cell.modifier.contains(Modifier::DIM), "greyed: {cell:?}");
        assert_eq!(cell.fg == Color::DarkGray, color, "{cell:?}");
        let docker = line_of(&screen, "> docker");
        assert_eq!(docker, "> docker  ready (dockerd API 1.41)");
        let y = screen.lines().position(|l| l == docker).unwrap() as u16;
        assert!(buf[(2, y)].modifier.contains(Modifier::REVERSED));
        assert!(!buf[(2, y)].modifier.contains(Modifier::DIM));
        assert!(screen.contains("Enter next  Esc back"), "{screen}");
    }
}

#[test]
fn the_plan_is_shown_with_the_launch_question() {
    let mut new = picker(NewStep::Plan);
    new.plan = Some(Ok(
        "Plan for agent shell\n  backend : docker\n  image   : tiny\n".into(),
    ));
    let ui = Ui {
        screen: Screen::New,
        new: Some(new),
        prompt: Some(Prompt::Confirm {
            question: "launch shell on docker?".into(),
        }),
        ..Ui::default()
    };
    let screen = text(&draw(&[], &ui, true));
    assert!(screen.contains("agent shell  backend docker"), "{screen}");
    assert!(
        screen.contains("Plan for agent shell\n  backend : docker\n"),
        "{screen}"
    );
    assert_eq!(
        screen.lines().nth(22),
        Some("launch shell on docker? [y/n]")
    );
    assert_eq!(screen.lines().nth(23), Some("y launch  n/Esc back  q quit"));
    // A plan that cannot be made says why.
    let mut new = picker(NewStep::Plan);
    new.plan = Some(Err("no agent `shell`".into()));
    let ui = Ui {
        screen: Screen::New,
        new: Some(new),
        ..Ui::default()
    };
    let screen = text(&draw(&[], &ui, true));
    assert!(screen.contains("no plan: no agent `shell`"), "{screen}");
}

#[test]
fn confirmations_ask_on_the_line_above_the_keys() {
    let ui = Ui {
        prompt: Some(Prompt::Confirm {
            question: "stop claude-00001? (its workspace and transcripts are kept)".into(),
        }),
        ..Ui::default()
    };
    let screen = text(&draw(&[row(1, Status::Running)], &ui, false));
    assert_eq!(
        screen.lines().nth(22),
        Some("stop claude-00001? (its workspace and transcripts are kept) [y/n]")
    );
    assert!(
        screen.contains("n new  s stop  R resume  c cleanup"),
        "{screen}"
    );
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
