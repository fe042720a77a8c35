//! The terminal side: raw mode and the alternate screen (restored on exit
//! and on panic, by ratatui's `init`), the keys, a refresh every second, and
//! the actions. Most actions run this same binary's CLI command (`bottle
//! approve`, `reject`, `stop`, `resume`, `cleanup`, `attach`, `run
//! --detach`), policy edits call the functions behind `bottle policy`, so
//! the dashboard does exactly what the CLI does, through the same state and
//! sockets.

use super::model::{self, Row, Status};
use super::view::{self, BackendChoice, NewAgent, NewStep, Prompt, Screen, Theme, Ui};
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
    /// Change a running bottle's policy (`bottle policy ID allow|deny`).
    Policy {
        id: String,
        edit: PolicyEdit,
    },
    /// Open the new-agent screen (reads the manifest and the backends).
    OpenNew,
    /// Plan the picked agent on the picked backend (`bottle plan`).
    Plan {
        agent: String,
        backend: String,
    },
    /// `bottle run AGENT --BACKEND --detach --yes`, its progress shown.
    Launch {
        agent: String,
        backend: String,
    },
}

/// A policy change typed in the detail view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyEdit {
    /// `HOST[:PORT]`, for a duration or as long as the bottle exists.
    Allow {
        target: String,
        duration: Option<String>,
    },
    Deny {
        host: String,
    },
}

/// What the line being typed is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Typing {
    AllowHost,
    AllowFor(String),
    DenyHost,
}

/// The interface state, the rows, and what a pending prompt will do.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub ui: Ui,
    pub rows: Vec<Row>,
    /// What `y` does at a yes/no prompt.
    confirm: Option<Action>,
    typing: Option<Typing>,
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
        if self.rows.is_empty() && self.ui.screen == Screen::Detail {
            self.ui.screen = Screen::List;
        }
    }

    /// The new-agent screen, with the manifest's agents and the backends.
    pub fn open_new(&mut self, new: NewAgent) {
        self.ui.new = Some(new);
        self.ui.screen = Screen::New;
    }

    /// The plan (or why there is none) for the picked agent and backend;
    /// with a plan, `y` launches it.
    pub fn planned(&mut self, plan: Result<String, String>) {
        let Some(new) = &mut self.ui.new else {
            return;
        };
        let (Some(agent), Some(b)) = (new.agent_name(), new.backend_choice()) else {
            return;
        };
        let launch = Action::Launch {
            agent: agent.to_string(),
            backend: b.name.clone(),
        };
        let question = format!("launch {agent} on {}?", b.name);
        let ok = plan.is_ok();
        new.plan = Some(plan);
        if ok {
            self.ask(question, launch);
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
        if self.ui.screen == Screen::New {
            return self.new_key(key.code);
        }
        match key.code {
            KeyCode::Char('n') if self.ui.screen == Screen::List => return Action::OpenNew,
            KeyCode::Char('c') if self.ui.screen == Screen::List => {
                self.ask(
                    "remove what bottles whose processes are gone left behind (bottle cleanup)?"
                        .into(),
                    Action::Run(vec!["cleanup".into()]),
                );
                return Action::None;
            }
            _ => {}
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
            (Screen::Detail, KeyCode::Char('A' | 'D')) if !row.is_running() => {
                self.ui.message = Some(format!("{id} is not running; its policy cannot change"));
            }
            (Screen::Detail, KeyCode::Char('A')) => {
                self.input("allow HOST[:PORT]:", Typing::AllowHost);
            }
            (Screen::Detail, KeyCode::Char('D')) => {
                self.input("deny HOST:", Typing::DenyHost);
            }
            (Screen::Detail, KeyCode::Char('r')) => match self.request(&row) {
                Some(req) => {
                    self.ask(
                        format!("reject {req} of {id}?"),
                        run_cli(&["reject", &id, &req]),
                    );
                }
                None => self.ui.message = Some(format!("{id} has no pending request")),
            },
            (_, KeyCode::Char('s')) => match row.status {
                Status::Stopped { .. } => {
                    self.ui.message = Some(format!("{id} is already stopped"));
                }
                _ => self.ask(
                    format!("stop {id}? (its workspace and transcripts are kept)"),
                    run_cli(&["stop", &id]),
                ),
            },
            (_, KeyCode::Char('R')) => match row.status {
                Status::Stopped { resumable: true } => self.ask(
                    format!("resume {id} in the background?"),
                    run_cli(&["resume", &id, "--detach", "--yes"]),
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

    fn ask(&mut self, question: String, then: Action) {
        self.confirm = Some(then);
        self.ui.prompt = Some(Prompt::Confirm { question });
    }

    fn input(&mut self, label: &str, typing: Typing) {
        self.typing = Some(typing);
        self.ui.prompt = Some(Prompt::Input {
            label: label.to_string(),
            input: String::new(),
        });
    }

    /// A key on the new-agent screen.
    fn new_key(&mut self, code: KeyCode) -> Action {
        let Some(new) = self.ui.new.as_mut() else {
            self.ui.screen = Screen::List;
            return Action::None;
        };
        match (new.step, code) {
            (_, KeyCode::Char('q')) => return Action::Quit,
            (NewStep::Agent, KeyCode::Esc) => {
                self.ui.new = None;
                self.ui.screen = Screen::List;
            }
            (NewStep::Agent, KeyCode::Down | KeyCode::Char('j')) => {
                new.agent = (new.agent + 1).min(new.agents.len().saturating_sub(1));
            }
            (NewStep::Agent, KeyCode::Up | KeyCode::Char('k')) => {
                new.agent = new.agent.saturating_sub(1);
            }
            (NewStep::Agent, KeyCode::Enter) if !new.agents.is_empty() => {
                new.step = NewStep::Backend;
                // The first ready backend is where the cursor starts.
                new.backend = new
                    .backends
                    .iter()
                    .position(|b| b.ready.is_ok())
                    .unwrap_or(0);
            }
            (NewStep::Backend, KeyCode::Esc) => new.step = NewStep::Agent,
            (NewStep::Backend, KeyCode::Down | KeyCode::Char('j')) => {
                new.backend = (new.backend + 1).min(new.backends.len().saturating_sub(1));
            }
            (NewStep::Backend, KeyCode::Up | KeyCode::Char('k')) => {
                new.backend = new.backend.saturating_sub(1);
            }
            (NewStep::Backend, KeyCode::Enter) => {
                let (Some(agent), Some(b)) = (new.agent_name(), new.backend_choice()) else {
                    return Action::None;
                };
                match &b.ready {
                    Err(why) => {
                        self.ui.message = Some(format!("backend {} is unavailable: {why}", b.name));
                    }
                    Ok(_) => {
                        let action = Action::Plan {
                            agent: agent.to_string(),
                            backend: b.name.clone(),
                        };
                        new.plan = None;
                        new.step = NewStep::Plan;
                        return action;
                    }
                }
            }
            (NewStep::Plan, KeyCode::Esc | KeyCode::Char('n')) => new.step = NewStep::Backend,
            _ => {}
        }
        Action::None
    }

    fn prompt_key(&mut self, prompt: Prompt, code: KeyCode) -> Action {
        match prompt {
            Prompt::Confirm { .. } => {
                let then = self.confirm.take();
                match (code, then) {
                    (KeyCode::Char('y' | 'Y'), Some(then)) => {
                        if matches!(then, Action::Launch { .. }) {
                            self.ui.new = None;
                            self.ui.screen = Screen::List;
                        }
                        return then;
                    }
                    _ => {
                        self.ui.message = Some("cancelled".into());
                        if let Some(new) = &mut self.ui.new {
                            new.step = NewStep::Backend;
                        }
                    }
                }
            }
            Prompt::Input { label, mut input } => match code {
                KeyCode::Esc => {
                    self.typing = None;
                    self.ui.message = Some("cancelled".into());
                }
                KeyCode::Enter => return self.typed(input.trim().to_string()),
                _ => {
                    edit_line(&mut input, code, |c| c.is_ascii_graphic(), 255);
                    self.ui.prompt = Some(Prompt::Input { label, input });
                }
            },
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
                _ => {
                    edit_line(&mut input, code, |c| c.is_ascii_alphanumeric(), 12);
                    self.ui.prompt = Some(Prompt::Approve { req, input });
                }
            },
        }
        Action::None
    }

    /// Enter on a typed line.
    fn typed(&mut self, text: String) -> Action {
        let id = self
            .selected()
            .map(|r| r.identity.clone())
            .unwrap_or_default();
        let typing = self.typing.take();
        // Only the duration may be left empty.
        if text.is_empty() && !matches!(typing, Some(Typing::AllowFor(_))) {
            self.ui.message = Some("cancelled: nothing typed".into());
            return Action::None;
        }
        match typing {
            Some(Typing::AllowHost) => {
                self.input(
                    &format!(
                        "allow {text} for how long? (Enter: while the bottle exists, e.g. 1h)"
                    ),
                    Typing::AllowFor(text),
                );
                Action::None
            }
            Some(Typing::AllowFor(target)) => {
                let duration = (!text.is_empty()).then_some(text);
                if let Some(Err(e)) = duration.as_deref().map(crate::commands::parse_duration) {
                    self.ui.message = Some(e.to_string());
                    return Action::None;
                }
                Action::Policy {
                    id,
                    edit: PolicyEdit::Allow { target, duration },
                }
            }
            Some(Typing::DenyHost) => Action::Policy {
                id,
                edit: PolicyEdit::Deny { host: text },
            },
            None => Action::None,
        }
    }
}

fn run_cli(args: &[&str]) -> Action {
    Action::Run(args.iter().map(|s| s.to_string()).collect())
}

/// A prompt's line editing: Backspace, and the characters `accept` takes
/// while the line is shorter than `max`; any other key leaves it as it is.
fn edit_line(input: &mut String, code: KeyCode, accept: impl Fn(char) -> bool, max: usize) {
    match code {
        KeyCode::Backspace => {
            input.pop();
        }
        KeyCode::Char(c) if accept(c) && input.len() < max => input.push(c),
        _ => {}
    }
}

/// A background job's word to the event loop.
#[derive(Debug)]
enum Msg {
    /// A line of progress (a launch's output so far).
    Progress(String),
    /// The job's result: shown with the rows read again at once.
    Done(String),
    /// Bottle `id`'s effective policy (or why it cannot be read).
    Policy { id: String, text: String },
}

/// `bottle dashboard`, with the manifest `--manifest` names (else
/// `./bottle.toml`, the user's, or the built-in one) for new agents.
pub fn run(manifest: Option<PathBuf>) -> anyhow::Result<()> {
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
    let ctx = Context {
        root,
        exe,
        manifest,
        theme,
    };
    let result = event_loop(&mut terminal, &mut state, &ctx);
    ratatui::try_restore()?;
    result
}

/// What the event loop works with.
struct Context {
    root: PathBuf,
    exe: PathBuf,
    manifest: Option<PathBuf>,
    theme: Theme,
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    state: &mut State,
    ctx: &Context,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = mpsc::channel::<Msg>();
    let mut cache = model::Cache::default();
    let mut loaded = Instant::now();
    // A policy read is under way (one at a time, off this thread: a bundle
    // that does not answer must not freeze the screen).
    let mut reading = false;
    loop {
        // A job's result comes with the rows it changed: read them before
        // drawing, so the screen never shows `ok: stopped` next to a
        // running row.
        while let Ok(msg) = done_rx.try_recv() {
            match msg {
                Msg::Progress(text) => state.ui.message = Some(text),
                Msg::Done(text) => {
                    state.ui.message = Some(text);
                    loaded = Instant::now() - REFRESH;
                }
                Msg::Policy { id, text } => {
                    reading = false;
                    if policy_target(state).as_deref() == Some(id.as_str()) {
                        state.ui.policy = Some(text);
                    }
                }
            }
        }
        if loaded.elapsed() >= REFRESH {
            match model::load_cached(&ctx.root, time::OffsetDateTime::now_utc(), &mut cache) {
                Ok(rows) => {
                    state.refresh(rows);
                    state.ui.pool = crate::pool::summary(&ctx.root);
                }
                Err(e) => {
                    state.ui.message = Some(format!("cannot read {}: {e}", ctx.root.display()))
                }
            }
            if let (Some(id), false) = (policy_target(state), reading) {
                reading = true;
                read_policy(id, done_tx.clone());
            }
            loaded = Instant::now();
        }
        terminal.draw(|f| {
            let area = f.area();
            view::render(area, f.buffer_mut(), &state.rows, &state.ui, ctx.theme);
        })?;
        let wait = REFRESH
            .saturating_sub(loaded.elapsed())
            .min(Duration::from_millis(100));
        if !event::poll(wait)? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind == KeyEventKind::Release {
            continue;
        }
        let was = (state.ui.screen, state.ui.selected);
        match state.key(key) {
            Action::None => {}
            Action::Quit => return Ok(()),
            Action::Run(args) => {
                state.ui.message = Some(format!("bottle {} …", args.join(" ")));
                spawn(ctx.exe.clone(), args, done_tx.clone());
            }
            Action::Attach(id) => {
                state.ui.message = Some(attach(terminal, &ctx.exe, &id)?);
                loaded = Instant::now() - REFRESH;
            }
            Action::Policy { id, edit } => {
                state.ui.message = Some(format!("changing the policy of {id} …"));
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    let _ = done.send(Msg::Done(policy_edit(&id, &edit)));
                });
            }
            Action::OpenNew => {
                state.ui.message = Some("reading the manifest and the backends …".into());
                match new_agent(ctx.manifest.clone()) {
                    Ok(new) => {
                        state.ui.message = None;
                        state.open_new(new);
                    }
                    Err(e) => state.ui.message = Some(format!("failed: {e:#}")),
                }
            }
            Action::Plan { agent, backend } => {
                state.planned(plan_text(ctx.manifest.clone(), &agent, &backend));
            }
            Action::Launch { agent, backend } => {
                let mut args = Vec::new();
                if let Some(path) = manifest_path(ctx.manifest.clone()) {
                    args.push("--manifest".to_string());
                    args.push(path.display().to_string());
                }
                args.extend([
                    "run".into(),
                    agent.clone(),
                    format!("--{backend}"),
                    "--detach".into(),
                    "--yes".into(),
                ]);
                state.ui.message = Some(format!("launching {agent} on {backend} …"));
                launch(ctx.exe.clone(), args, done_tx.clone());
            }
        }
        // Another screen or bottle: no stale policy, and the new one read now.
        if (state.ui.screen, state.ui.selected) != was {
            state.ui.policy = None;
            if let (Some(id), false) = (policy_target(state), reading) {
                reading = true;
                read_policy(id, done_tx.clone());
            }
        }
    }
}

/// The bottle whose policy the screen shows: the selected one, in its
/// detail view, while it runs.
fn policy_target(state: &State) -> Option<String> {
    if state.ui.screen != Screen::Detail {
        return None;
    }
    let row = state.selected().filter(|r| r.is_running())?;
    Some(row.identity.clone())
}

/// Read `id`'s policy as `bottle policy ID` does, in the background.
fn read_policy(id: String, done: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let text = crate::commands::supervise::policy_text(&id)
            .unwrap_or_else(|e| format!("cannot read it: {e:#}"));
        let _ = done.send(Msg::Policy { id, text });
    });
}

/// Run a policy edit as `bottle policy ID allow|deny` does.
fn policy_edit(id: &str, edit: &PolicyEdit) -> String {
    use crate::commands::supervise::{policy_allow, policy_deny};
    let result = match edit {
        PolicyEdit::Allow { target, duration } => policy_allow(id, target, duration.as_deref()),
        PolicyEdit::Deny { host } => policy_deny(id, host),
    };
    match result {
        Ok(text) => format!("ok: {text}"),
        Err(e) => format!("failed: {e:#}"),
    }
}

/// The manifest file a launch names with `--manifest` (none: the built-in one).
fn manifest_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    let (loaded, _) = crate::commands::run::load_manifest(flag).ok()?;
    loaded.origin.path().map(std::path::Path::to_path_buf)
}

/// The new-agent screen: the manifest's agents and each backend's
/// availability, as `bottle doctor` reports it.
fn new_agent(flag: Option<PathBuf>) -> anyhow::Result<NewAgent> {
    use crate::backend::{backend_for, Availability};
    let (loaded, _) = crate::commands::run::load_manifest(flag)?;
    let backends = crate::manifest::BackendName::ALL
        .into_iter()
        .map(|name| BackendChoice {
            name: name.to_string(),
            ready: match backend_for(name).availability() {
                Availability::Ready { detail } => Ok(detail),
                Availability::Unavailable { why, fix } => Err(format!("{why} (fix: {fix})")),
            },
        })
        .collect();
    Ok(NewAgent {
        manifest: loaded.origin.describe(),
        agents: loaded.manifest.agents.keys().cloned().collect(),
        backends,
        ..NewAgent::default()
    })
}

/// What `bottle plan AGENT --BACKEND` prints, or why it cannot.
fn plan_text(flag: Option<PathBuf>, agent: &str, backend: &str) -> Result<String, String> {
    let flags = crate::cli::BackendFlags {
        vm: backend == "vm",
        docker: backend == "docker",
        ..Default::default()
    };
    let (loaded, cwd) = crate::commands::run::load_manifest(flag).map_err(|e| format!("{e:#}"))?;
    let plan = crate::commands::run::make_plan(&loaded, &cwd, agent, flags, Vec::new())
        .map_err(|e| format!("{e:#}"))?;
    // `bottle run` picks the identity when it launches, not this one.
    Ok(plan.render().replacen(
        &format!("(identity {})", plan.identity),
        "(identity picked at launch)",
        1,
    ))
}

/// Run `bottle ARGS` without a terminal; send back what it printed.
fn spawn(exe: PathBuf, args: Vec<String>, done: mpsc::Sender<Msg>) {
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
        let _ = done.send(Msg::Done(text));
    });
}

/// `bottle run … --detach --yes` in the background, each line it prints
/// shown as progress, its last line as the result.
fn launch(exe: PathBuf, args: Vec<String>, done: mpsc::Sender<Msg>) {
    use std::io::BufRead;
    std::thread::spawn(move || {
        let child = Command::new(&exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = done.send(Msg::Done(format!("cannot run {}: {e}", exe.display())));
                return;
            }
        };
        // stdout (the identity, once it runs) is read after stderr ends.
        let stdout = child.stdout.take();
        let mut last = String::new();
        if let Some(err) = child.stderr.take() {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if !line.trim().is_empty() {
                    last = line.trim().to_string();
                    let _ = done.send(Msg::Progress(format!("launching: {last}")));
                }
            }
        }
        let mut out = String::new();
        if let Some(mut o) = stdout {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        if let Some(line) = out.lines().rfind(|l| !l.trim().is_empty()) {
            last = line.trim().to_string();
        }
        let text = match child.wait() {
            Ok(s) if s.success() => format!("ok: launched: {last}"),
            Ok(_) => format!("failed: {last}"),
            Err(e) => format!("failed: {e}"),
        };
        let _ = done.send(Msg::Done(text));
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
            cpu: None,
            memory: None,
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

    #[test]
    fn allow_and_deny_from_the_detail_view_become_policy_edits() {
        let mut s = state();
        press(&mut s, "j\n");
        assert_eq!(press(&mut s, "Aapi.example.com:8443\n"), Action::None);
        assert!(
            matches!(&s.ui.prompt, Some(Prompt::Input { label, .. }) if label.contains("for how long")),
            "{:?}",
            s.ui.prompt
        );
        assert_eq!(
            press(&mut s, "1h\n"),
            Action::Policy {
                id: "b-bbbbb".into(),
                edit: PolicyEdit::Allow {
                    target: "api.example.com:8443".into(),
                    duration: Some("1h".into())
                }
            }
        );
        // No duration: as long as the bottle exists.
        assert_eq!(
            press(&mut s, "Ab.test\n\n"),
            Action::Policy {
                id: "b-bbbbb".into(),
                edit: PolicyEdit::Allow {
                    target: "b.test".into(),
                    duration: None
                }
            }
        );
        // A bad duration is refused before anything changes.
        assert_eq!(press(&mut s, "Ab.test\n10x\n"), Action::None);
        assert!(s
            .ui
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not a duration"));
        assert_eq!(
            press(&mut s, "Devil.test\n"),
            Action::Policy {
                id: "b-bbbbb".into(),
                edit: PolicyEdit::Deny {
                    host: "evil.test".into()
                }
            }
        );
        // Nothing typed, or Esc: nothing happens.
        assert_eq!(press(&mut s, "D\n"), Action::None);
        assert_eq!(s.ui.message.as_deref(), Some("cancelled: nothing typed"));
        assert_eq!(press(&mut s, "Dx\x1b"), Action::None);
        assert_eq!(s.ui.prompt, None);
        // A stopped bottle's policy cannot change.
        press(&mut s, "\x1bj\n");
        assert_eq!(press(&mut s, "A"), Action::None);
        assert!(s
            .ui
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not running"));
        assert_eq!(s.ui.prompt, None);
    }

    fn picker() -> NewAgent {
        NewAgent {
            manifest: "m".into(),
            agents: vec!["a".into(), "b".into()],
            backends: vec![
                BackendChoice {
                    name: "vm".into(),
                    ready: Err("no kvm".into()),
                },
                BackendChoice {
                    name: "docker".into(),
                    ready: Ok("dockerd".into()),
                },
            ],
            ..NewAgent::default()
        }
    }

    #[test]
    fn a_new_agent_is_picked_planned_confirmed_and_launched() {
        let mut s = state();
        assert_eq!(press(&mut s, "n"), Action::OpenNew);
        s.open_new(picker());
        assert_eq!(s.ui.screen, Screen::New);
        assert_eq!(press(&mut s, "j\n"), Action::None);
        let new = s.ui.new.clone().unwrap();
        assert_eq!(new.step, NewStep::Backend);
        assert_eq!(new.backend, 1, "the cursor starts on the ready backend");
        // The unavailable one says why and goes nowhere.
        assert_eq!(press(&mut s, "k\n"), Action::None);
        assert_eq!(
            s.ui.message.as_deref(),
            Some("backend vm is unavailable: no kvm")
        );
        assert_eq!(
            press(&mut s, "j\n"),
            Action::Plan {
                agent: "b".into(),
                backend: "docker".into()
            }
        );
        s.planned(Ok("the plan".into()));
        assert!(
            matches!(&s.ui.prompt, Some(Prompt::Confirm { question }) if question == "launch b on docker?")
        );
        // n goes back to the backends; Enter plans again, y launches.
        assert_eq!(press(&mut s, "n"), Action::None);
        assert_eq!(s.ui.new.as_ref().unwrap().step, NewStep::Backend);
        press(&mut s, "\n");
        s.planned(Ok("the plan".into()));
        assert_eq!(
            press(&mut s, "y"),
            Action::Launch {
                agent: "b".into(),
                backend: "docker".into()
            }
        );
        assert_eq!(s.ui.screen, Screen::List);
        assert_eq!(s.ui.new, None);
        // A plan that failed cannot be launched; Esc Esc leaves.
        press(&mut s, "n");
        s.open_new(picker());
        press(&mut s, "\n\n");
        s.planned(Err("no".into()));
        assert_eq!(s.ui.prompt, None);
        assert_eq!(press(&mut s, "y\x1b\x1b\x1b"), Action::None);
        assert_eq!(s.ui.screen, Screen::List);
    }

    #[test]
    fn cleanup_asks_first() {
        let mut s = state();
        assert_eq!(press(&mut s, "c"), Action::None);
        assert!(
            matches!(&s.ui.prompt, Some(Prompt::Confirm { question }) if question.contains("bottle cleanup"))
        );
        assert_eq!(press(&mut s, "y"), Action::Run(vec!["cleanup".into()]));
        assert_eq!(press(&mut s, "cn"), Action::None);
        assert_eq!(s.ui.message.as_deref(), Some("cancelled"));
    }

    #[test]
    fn a_launch_shows_each_line_as_progress_and_its_last_as_the_result() {
        let (tx, rx) = mpsc::channel();
        let script =
            "echo 'bottle: building' >&2; echo 'bottle: a-xyzab runs detached' >&2; echo a-xyzab";
        launch("/bin/sh".into(), vec!["-c".into(), script.into()], tx);
        let msgs: Vec<String> = rx.iter().map(|m| format!("{m:?}")).collect();
        assert_eq!(
            msgs,
            [
                r#"Progress("launching: bottle: building")"#,
                r#"Progress("launching: bottle: a-xyzab runs detached")"#,
                r#"Done("ok: launched: a-xyzab")"#
            ]
        );
        let (tx, rx) = mpsc::channel();
        launch(
            "/bin/sh".into(),
            vec!["-c".into(), "echo 'error: no backend' >&2; exit 2".into()],
            tx,
        );
        let last = rx.iter().last().map(|m| format!("{m:?}"));
        assert_eq!(
            last.as_deref(),
            Some(r#"Done("failed: error: no backend")"#)
        );
    }
}
