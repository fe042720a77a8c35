//! The terminal side: raw mode and the alternate screen (restored on exit
//! and on panic, by ratatui's `init`), the keys, a refresh every second, and
//! the actions. Every action runs this same binary's CLI command (`bottle
//! approve`, `reject`, `stop`, `resume`, `attach`), so the dashboard does
//! exactly what the CLI does, through the same state and sockets.

use super::model::{self, Row, Status};
use super::view::{self, Prompt, Screen, Theme, Ui};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REFRESH: Duration = Duration::from_secs(1);

/// What a key asks for, decided without touching the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Run `bottle ARGS…` in the background; its output becomes the message.
    Run(Vec<String>),
    /// Hand the terminal to `bottle attach ID`.
    Attach(String),
}

/// A pending confirmation's command.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub ui: Ui,
    pub rows: Vec<Row>,
    confirm: Option<Vec<String>>,
}

impl State {
    pub fn new(rows: Vec<Row>) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }

    /// Replace the rows, keeping the same bottle selected when it is still there.
    pub fn refresh(&mut self, rows: Vec<Row>) {
        let id = self.selected().map(|r| r.identity.clone());
        self.rows = rows;
        if let Some(i) = id.and_then(|id| self.rows.iter().position(|r| r.identity == id)) {
            self.ui.selected = i;
        }
        self.ui.selected = self.ui.selected.min(self.rows.len().saturating_sub(1));
        if self.rows.is_empty() {
            self.ui.screen = Screen::List;
        }
    }

    fn selected(&self) -> Option<&Row> {
        self.rows.get(self.ui.selected)
    }

    /// One key.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(prompt) = self.ui.prompt.take() {
            return self.prompt_key(prompt, key.code);
        }
        let Some(row) = self.selected().cloned() else {
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                _ => Action::None,
            };
        };
        let id = row.identity.clone();
        match (self.ui.screen, key.code) {
            (_, KeyCode::Char('q')) => return Action::Quit,
            (Screen::List, KeyCode::Down | KeyCode::Char('j')) => {
                self.ui.selected = (self.ui.selected + 1).min(self.rows.len() - 1);
            }
            (Screen::List, KeyCode::Up | KeyCode::Char('k')) => {
                self.ui.selected = self.ui.selected.saturating_sub(1);
            }
            (Screen::List, KeyCode::Enter) => {
                self.ui.screen = Screen::Detail;
                self.ui.request = 0;
            }
            (Screen::Detail, KeyCode::Esc | KeyCode::Backspace) => self.ui.screen = Screen::List,
            (Screen::Detail, KeyCode::Down | KeyCode::Char('j')) => {
                self.ui.request = (self.ui.request + 1).min(row.pending.len().saturating_sub(1));
            }
            (Screen::Detail, KeyCode::Up | KeyCode::Char('k')) => {
                self.ui.request = self.ui.request.saturating_sub(1);
            }
            (Screen::Detail, KeyCode::Char('a')) => match self.request(&row) {
                Some(req) => {
                    self.ui.prompt = Some(Prompt::Approve {
                        req,
                        input: String::new(),
                    })
                }
                None => self.ui.message = Some(format!("{id} has no pending request")),
            },
            (Screen::Detail, KeyCode::Char('r')) => match self.request(&row) {
                Some(req) => {
                    self.ask(format!("reject {req} of {id}?"), &["reject", &id, &req]);
                }
                None => self.ui.message = Some(format!("{id} has no pending request")),
            },
            (_, KeyCode::Char('s')) => match row.status {
                Status::Stopped { .. } => {
                    self.ui.message = Some(format!("{id} is already stopped"));
                }
                _ => self.ask(
                    format!("stop {id}? (its workspace and transcripts are kept)"),
                    &["stop", &id],
                ),
            },
            (_, KeyCode::Char('R')) => match row.status {
                Status::Stopped { resumable: true } => self.ask(
                    format!("resume {id} in the background?"),
                    &["resume", &id, "--detach", "--yes"],
                ),
                _ => self.ui.message = Some(format!("{id} is not a stopped bottle")),
            },
            (_, KeyCode::Char('t')) => {
                return if row.is_running() {
                    Action::Attach(id)
                } else {
                    self.ui.message = Some(format!("{id} is not running"));
                    Action::None
                };
            }
            _ => {}
        }
        Action::None
    }

    fn request(&self, row: &Row) -> Option<String> {
        let i = self.ui.request.min(row.pending.len().saturating_sub(1));
        row.pending.get(i).map(|r| r.id.clone())
    }

    fn ask(&mut self, question: String, args: &[&str]) {
        self.confirm = Some(args.iter().map(|s| s.to_string()).collect());
        self.ui.prompt = Some(Prompt::Confirm { question });
    }

    fn prompt_key(&mut self, prompt: Prompt, code: KeyCode) -> Action {
        match prompt {
            Prompt::Confirm { .. } => {
                let args = self.confirm.take();
                match (code, args) {
                    (KeyCode::Char('y' | 'Y'), Some(args)) => return Action::Run(args),
                    _ => self.ui.message = Some("cancelled".into()),
                }
            }
            Prompt::Approve { req, mut input } => match code {
                KeyCode::Esc => self.ui.message = Some("cancelled".into()),
                KeyCode::Enter => {
                    let id = self
                        .selected()
                        .map(|r| r.identity.clone())
                        .unwrap_or_default();
                    let mut args = vec!["approve".to_string(), id, req];
                    let input = input.trim();
                    if !input.is_empty() {
                        if let Err(e) = crate::commands::parse_duration(input) {
                            self.ui.message = Some(e.to_string());
                            return Action::None;
                        }
                        args.extend(["--for".to_string(), input.to_string()]);
                    }
                    return Action::Run(args);
                }
                KeyCode::Backspace => {
                    input.pop();
                    self.ui.prompt = Some(Prompt::Approve { req, input });
                }
                KeyCode::Char(c) if c.is_ascii_alphanumeric() && input.len() < 12 => {
                    input.push(c);
                    self.ui.prompt = Some(Prompt::Approve { req, input });
                }
                _ => self.ui.prompt = Some(Prompt::Approve { req, input }),
            },
        }
        Action::None
    }
}

/// `bottle dashboard`.
pub fn run() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(crate::commands::UsageError(
            "`bottle dashboard` needs a terminal on stdin and stdout; for scripts use `bottle ls --json` and `bottle requests --json`".into(),
        )
        .into());
    }
    let root = crate::state::state_root()?;
    let exe = std::env::current_exe()?;
    let theme = Theme::from_env();
    let mut state = State::new(model::load(&root, time::OffsetDateTime::now_utc())?);
    state.ui.pool = crate::pool::summary(&root);
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &mut state, &root, &exe, theme);
    ratatui::try_restore()?;
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    state: &mut State,
    root: &std::path::Path,
    exe: &std::path::Path,
    theme: Theme,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut cache = model::Cache::default();
    let mut loaded = Instant::now();
    loop {
        terminal.draw(|f| {
            let area = f.area();
            view::render(area, f.buffer_mut(), &state.rows, &state.ui, theme);
        })?;
        if let Ok(message) = done_rx.try_recv() {
            state.ui.message = Some(message);
            loaded = Instant::now() - REFRESH;
        }
        let wait = REFRESH
            .saturating_sub(loaded.elapsed())
            .min(Duration::from_millis(200));
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Release {
                    match state.key(key) {
                        Action::None => {}
                        Action::Quit => return Ok(()),
                        Action::Run(args) => {
                            state.ui.message = Some(format!("bottle {} …", args.join(" ")));
                            spawn(exe.to_path_buf(), args, done_tx.clone());
                        }
                        Action::Attach(id) => {
                            state.ui.message = Some(attach(terminal, exe, &id)?);
                            loaded = Instant::now() - REFRESH;
                        }
                    }
                }
            }
        }
        if loaded.elapsed() >= REFRESH {
            match model::load_cached(root, time::OffsetDateTime::now_utc(), &mut cache) {
                Ok(rows) => {
                    state.refresh(rows);
                    state.ui.pool = crate::pool::summary(root);
                }
                Err(e) => state.ui.message = Some(format!("cannot read {}: {e}", root.display())),
            }
            loaded = Instant::now();
        }
    }
}

/// Run `bottle ARGS` without a terminal; send back what it printed.
fn spawn(exe: PathBuf, args: Vec<String>, done: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let text = match Command::new(&exe).args(&args).stdin(Stdio::null()).output() {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                // The last line: the command's result or its error.
                let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                if out.status.success() {
                    format!("ok: {last}")
                } else {
                    format!("failed: {last}")
                }
            }
            Err(e) => format!("cannot run {}: {e}", exe.display()),
        };
        let _ = done.send(text);
    });
}

/// Attach to `id`: a new tmux window inside tmux, else the terminal handed
/// to `bottle attach` until it detaches.
fn attach(
    terminal: &mut ratatui::DefaultTerminal,
    exe: &std::path::Path,
    id: &str,
) -> anyhow::Result<String> {
    if std::env::var_os("TMUX").is_some_and(|v| !v.is_empty()) {
        let out = Command::new("tmux")
            .arg("new-window")
            .arg("-n")
            .arg(id)
            .arg(exe)
            .args(["attach", id])
            .output()?;
        return Ok(if out.status.success() {
            format!("{id} opened in a new tmux window")
        } else {
            format!(
                "tmux new-window failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        });
    }
    ratatui::try_restore()?;
    let status = Command::new(exe).args(["attach", id]).status();
    *terminal = ratatui::try_init()?;
    terminal.clear()?;
    Ok(match status {
        Ok(s) if s.success() => format!("detached from {id}"),
        Ok(s) => format!("the session of {id} ended ({s})"),
        Err(e) => format!("cannot run {}: {e}", exe.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::model::AuditCounts;
    use bottle_sidecars::supervise::request::{Ask, Request, Status as ReqStatus};

    fn row(id: &str, status: Status, pending: &[&str]) -> Row {
        Row {
            identity: id.into(),
            agent: "claude".into(),
            backend: "docker".into(),
            engine: "runc".into(),
            status,
            started: String::new(),
            uptime_secs: None,
            pending: pending
                .iter()
                .map(|p| Request {
                    id: p.to_string(),
                    ask: Ask::RequestCapability { name: "jq".into() },
                    reason: "r".into(),
                    created: 0,
                    status: ReqStatus::Pending,
                    decided: None,
                    until: None,
                    note: None,
                })
                .collect(),
            audit: AuditCounts::default(),
        }
    }

    fn press(s: &mut State, keys: &str) -> Action {
        let mut last = Action::None;
        for c in keys.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                c => KeyCode::Char(c),
            };
            last = s.key(KeyEvent::from(code));
        }
        last
    }

    fn state() -> State {
        State::new(vec![
            row("a-aaaaa", Status::Running, &[]),
            row("b-bbbbb", Status::Running, &["q1", "q2"]),
            row("c-ccccc", Status::Stopped { resumable: true }, &[]),
        ])
    }

    #[test]
    fn approving_from_the_detail_view_runs_bottle_approve_with_the_duration() {
        let mut s = state();
        assert_eq!(press(&mut s, "j\nj"), Action::None);
        assert_eq!(s.ui.screen, Screen::Detail);
        assert_eq!(
            press(&mut s, "a10m\n"),
            Action::Run(vec![
                "approve".into(),
                "b-bbbbb".into(),
                "q2".into(),
                "--for".into(),
                "10m".into()
            ])
        );
        assert_eq!(
            press(&mut s, "k a\n"),
            Action::Run(vec!["approve".into(), "b-bbbbb".into(), "q1".into()])
        );
        // A bad duration is refused before anything runs.
        assert_eq!(press(&mut s, "a10x\n"), Action::None);
        assert!(s
            .ui
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not a duration"));
    }

    #[test]
    fn reject_stop_and_resume_ask_first_and_n_cancels() {
        let mut s = state();
        press(&mut s, "j\n");
        assert_eq!(press(&mut s, "r"), Action::None);
        assert!(matches!(s.ui.prompt, Some(Prompt::Confirm { .. })));
        assert_eq!(
            press(&mut s, "y"),
            Action::Run(vec!["reject".into(), "b-bbbbb".into(), "q1".into()])
        );
        assert_eq!(press(&mut s, "sn"), Action::None);
        assert_eq!(s.ui.message.as_deref(), Some("cancelled"));
        assert_eq!(
            press(&mut s, "sy"),
            Action::Run(vec!["stop".into(), "b-bbbbb".into()])
        );
        // Resume only for a stopped bottle.
        assert_eq!(press(&mut s, "\x1bRy"), Action::None);
        assert_eq!(
            press(&mut s, "jRy"),
            Action::Run(vec![
                "resume".into(),
                "c-ccccc".into(),
                "--detach".into(),
                "--yes".into()
            ])
        );
        assert_eq!(
            press(&mut s, "t"),
            Action::None,
            "a stopped bottle has no session"
        );
        assert_eq!(press(&mut s, "kt"), Action::Attach("b-bbbbb".into()));
        assert_eq!(press(&mut s, "q"), Action::Quit);
    }

    #[test]
    fn a_refresh_keeps_the_selected_bottle() {
        let mut s = state();
        press(&mut s, "j");
        s.refresh(vec![
            row("0-00000", Status::Running, &[]),
            row("a-aaaaa", Status::Running, &[]),
            row("b-bbbbb", Status::Running, &[]),
        ]);
        assert_eq!(s.ui.selected, 2);
        s.refresh(Vec::new());
        assert_eq!(s.ui.selected, 0);
        assert_eq!(press(&mut s, "j\nq"), Action::Quit);
    }
}
