//! Drawing the list and the detail view into a ratatui [`Buffer`]. Pure:
//! the rows and the interface state in, cells out (tests render at 80x24).

use super::model::{self, Row, Status};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row as TRow, StatefulWidget, Table, TableState, Widget};

/// Which screen is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Screen {
    #[default]
    List,
    Detail,
    /// Launching a new agent: pick it, pick a backend, read the plan.
    New,
}

/// One backend in the new-agent picker, with what `bottle doctor` says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// `vm` or `docker`.
    pub name: String,
    /// Ready (and how), or why not and the fix.
    pub ready: Result<String, String>,
}

/// Where the new-agent screen is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewStep {
    #[default]
    Agent,
    Backend,
    /// The plan is shown; `y` launches.
    Plan,
}

/// The new-agent screen's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAgent {
    /// Where the manifest came from (`bottle.toml`, `built-in`…).
    pub manifest: String,
    pub agents: Vec<String>,
    pub agent: usize,
    pub backends: Vec<BackendChoice>,
    pub backend: usize,
    pub step: NewStep,
    /// `bottle plan`'s text for the picked agent and backend, or why not.
    pub plan: Option<Result<String, String>>,
}

impl NewAgent {
    pub fn agent_name(&self) -> Option<&str> {
        self.agents.get(self.agent).map(String::as_str)
    }

    pub fn backend_choice(&self) -> Option<&BackendChoice> {
        self.backends.get(self.backend)
    }
}

/// What the operator is being asked, on the line above the help line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Approve request `req`: an optional duration being typed.
    Approve { req: String, input: String },
    /// A yes/no question about `action` on `id`.
    Confirm { question: String },
    /// A line being typed after `label` (a host to allow or deny, a duration).
    Input { label: String, input: String },
}

/// The interface state the view draws from.
#[derive(Debug, Clone, Default)]
pub struct Ui {
    pub screen: Screen,
    /// Index into the rows.
    pub selected: usize,
    /// Index into the selected bottle's pending requests.
    pub request: usize,
    pub prompt: Option<Prompt>,
    /// The last action's result (or error).
    pub message: Option<String>,
    /// The selected bottle's effective policy (`bottle policy ID`'s lines),
    /// or why it cannot be read; read on each refresh of the detail view.
    pub policy: Option<String>,
    /// The new-agent screen, while it is up.
    pub new: Option<NewAgent>,
    /// The warm pool's line (`bottle pool`), when one runs.
    pub pool: Option<String>,
}

/// Colours, or none (`NO_COLOR`): then only bold and reverse are used, so
/// the screen reads the same on a light or dark terminal.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set (to anything non-empty).
    pub fn from_env() -> Self {
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn status(self, s: &Status) -> Style {
        match s {
            Status::Running => self.fg(Color::Green),
            Status::Dead | Status::Broken(_) => self.fg(Color::Red),
            _ => Style::default(),
        }
    }
}

const LIST_HELP: &str =
    "↑↓ select  Enter detail  n new  s stop  R resume  c cleanup  t attach  q quit";
const DETAIL_HELP: &str =
    "↑↓ request  a approve  r reject  A allow  D deny  s stop  t attach  Esc back";
const NEW_HELP: &str = "↑↓ select  Enter next  Esc back  q quit";
const PLAN_HELP: &str = "y launch  n/Esc back  q quit";

/// Draw the current screen.
pub fn render(area: Rect, buf: &mut Buffer, rows: &[Row], ui: &Ui, theme: Theme) {
    let [body, status, help] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    match (ui.screen, rows.get(ui.selected), &ui.new) {
        (Screen::Detail, Some(row), _) => detail(body, buf, row, ui, theme),
        (Screen::New, _, Some(new)) => new_agent(body, buf, new, theme),
        _ => list(body, buf, rows, ui, theme),
    }
    let line = match &ui.prompt {
        Some(Prompt::Approve { req, input }) => Line::from(vec![
            Span::styled(
                format!("approve {req} for how long? (Enter: until removed, e.g. 10m) "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(input.clone()),
            Span::raw("_"),
        ]),
        Some(Prompt::Confirm { question }) => Line::from(Span::styled(
            format!("{question} [y/n]"),
            Style::default().add_modifier(Modifier::BOLD),
        )),
        Some(Prompt::Input { label, input }) => Line::from(vec![
            Span::styled(
                format!("{label} "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(input.clone()),
            Span::raw("_"),
        ]),
        None => Line::from(ui.message.clone().unwrap_or_default()),
    };
    Paragraph::new(line).render(status, buf);
    let keys = match (ui.screen, &ui.new) {
        (Screen::Detail, _) => DETAIL_HELP,
        (Screen::New, Some(n)) if n.step == NewStep::Plan => PLAN_HELP,
        (Screen::New, _) => NEW_HELP,
        (Screen::List, _) => LIST_HELP,
    };
    Paragraph::new(Line::from(Span::styled(
        keys,
        Style::default().add_modifier(Modifier::REVERSED),
    )))
    .render(help, buf);
}

fn list(area: Rect, buf: &mut Buffer, rows: &[Row], ui: &Ui, theme: Theme) {
    let [title, table] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let running = rows.iter().filter(|r| r.is_running()).count();
    let pool = ui
        .pool
        .as_deref()
        .map_or_else(String::new, |p| format!("; {p}"));
    Paragraph::new(Line::from(Span::styled(
        format!(
            "bottle dashboard: {running} running, {} in all{pool}",
            rows.len()
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )))
    .render(title, buf);
    if rows.is_empty() {
        Paragraph::new("no bottles on this host\n\nstart one with `bottle run AGENT --detach`")
            .render(table, buf);
        return;
    }
    let header = TRow::new([
        "ID", "AGENT", "BACKEND", "STATUS", "UP", "CPU", "MEM", "REQ", "DENY", "BYTES", "PUSH",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body: Vec<TRow> = rows
        .iter()
        .map(|r| {
            let status = match r.status {
                Status::Stopped { resumable: true } => "resumable",
                _ => r.status.label(),
            };
            let req = r.pending.len();
            TRow::new([
                Cell::from(r.identity.clone()),
                Cell::from(r.agent.clone()),
                Cell::from(format!("{}/{}", r.backend, r.engine)),
                Cell::from(status).style(theme.status(&r.status)),
                Cell::from(r.uptime_secs.map_or_else(|| "-".into(), model::span)),
                Cell::from(r.cpu.map_or_else(|| "-".into(), |c| format!("{c}%"))),
                Cell::from(r.memory.map_or_else(|| "-".into(), model::bytes)),
                Cell::from(req.to_string()).style(if req > 0 {
                    theme.fg(Color::Yellow).add_modifier(Modifier::BOLD)
                } else {
                    Style::default()
                }),
                Cell::from(r.audit.denied.to_string()),
                Cell::from(model::bytes(r.audit.bytes)),
                Cell::from(format!(
                    "{}/{}",
                    r.audit.pushes_accepted, r.audit.pushes_rejected
                )),
            ])
        })
        .collect();
    // 80 columns: 13 for the identity (`claude-x1y2z`) and the rest fixed.
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(3),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(4),
    ];
    let mut state = TableState::default().with_selected(Some(ui.selected.min(rows.len() - 1)));
    StatefulWidget::render(
        Table::new(body, widths)
            .header(header)
            .column_spacing(1)
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        table,
        buf,
        &mut state,
    );
}

fn detail(area: Rect, buf: &mut Buffer, row: &Row, ui: &Ui, theme: Theme) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(row.identity.clone(), bold),
            Span::raw(format!(
                "  agent {}  {}/{}  ",
                row.agent, row.backend, row.engine
            )),
            Span::styled(row.status.label().to_string(), theme.status(&row.status)),
            Span::raw(
                row.uptime_secs
                    .map(|s| format!("  up {}", model::span(s)))
                    .unwrap_or_default(),
            ),
        ]),
        Line::from(format!(
            "cpu {}  mem {}  denied {}  bytes {}  pushes accepted {} rejected {}",
            row.cpu.map_or_else(|| "-".into(), |c| format!("{c}%")),
            row.memory.map_or_else(|| "-".into(), model::bytes),
            row.audit.denied,
            model::bytes(row.audit.bytes),
            row.audit.pushes_accepted,
            row.audit.pushes_rejected
        )),
    ];
    if let Status::Broken(reason) = &row.status {
        lines.push(Line::from(format!("broken: {reason}")));
    }
    if let Some(why) = &row.audit.unverified {
        lines.push(Line::from(Span::styled(
            format!("audit log does not verify: {why}"),
            theme.fg(Color::Red),
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        format!("Pending requests ({})", row.pending.len()),
        bold,
    )));
    if row.pending.is_empty() {
        lines.push(Line::from("  none"));
    }
    for (i, r) in row.pending.iter().enumerate() {
        let picked = i == ui.request.min(row.pending.len().saturating_sub(1));
        let text = format!(
            "{} {}  {}  {}",
            if picked { ">" } else { " " },
            r.id,
            r.ask.summary(),
            r.reason.replace('\n', " ")
        );
        lines.push(Line::from(Span::styled(
            text,
            if picked {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            },
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("Effective policy", bold)));
    match &ui.policy {
        _ if !row.is_running() => lines.push(Line::from("  not running")),
        None => lines.push(Line::from("  reading…")),
        Some(text) => {
            // Only what is set: `allow: a, b`, grants, rules, routes.
            let set: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_end().ends_with(": -"))
                .collect();
            if set.is_empty() {
                lines.push(Line::from("  nothing allowed"));
            }
            for l in set {
                lines.push(Line::from(format!("  {}", squeeze(l))));
            }
        }
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("Recent decisions", bold)));
    let room = (area.height as usize).saturating_sub(lines.len());
    let recent = &row.audit.recent;
    if recent.is_empty() {
        lines.push(Line::from("  none"));
    }
    for d in recent.iter().rev().take(room).rev() {
        let style = if d.decision == "deny" {
            theme.fg(Color::Red)
        } else {
            Style::default()
        };
        lines.push(Line::from(vec![
            Span::raw(format!("{} ", d.time)),
            Span::styled(format!("{:<6} ", d.decision), style),
            Span::raw(format!("{}  {}", d.what, d.rule)),
        ]));
    }
    Paragraph::new(lines).render(area, buf);
}

/// `allow        : a, b` as `allow: a, b`.
fn squeeze(line: &str) -> String {
    match line.split_once(" : ") {
        Some((k, v)) => format!("{}: {v}", k.trim_end()),
        None => line.to_string(),
    }
}

fn new_agent(area: Rect, buf: &mut Buffer, new: &NewAgent, theme: Theme) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let picked = Style::default().add_modifier(Modifier::REVERSED);
    let mut lines = vec![Line::from(Span::styled(
        format!("New agent (manifest: {})", new.manifest),
        bold,
    ))];
    if new.step == NewStep::Plan {
        lines.push(Line::from(format!(
            "agent {}  backend {}",
            new.agent_name().unwrap_or("?"),
            new.backend_choice().map_or("?", |b| b.name.as_str())
        )));
        lines.push(Line::from(""));
        match &new.plan {
            Some(Ok(text)) => lines.extend(text.lines().map(|l| Line::from(l.to_string()))),
            Some(Err(why)) => lines.push(Line::from(Span::styled(
                format!("no plan: {why}"),
                theme.fg(Color::Red),
            ))),
            None => lines.push(Line::from("planning…")),
        }
        Paragraph::new(lines).render(area, buf);
        return;
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("Agent", bold)));
    if new.agents.is_empty() {
        lines.push(Line::from("  the manifest defines no agent"));
    }
    for (i, name) in new.agents.iter().enumerate() {
        let here = i == new.agent;
        let text = format!("{} {name}", if here { ">" } else { " " });
        lines.push(if here && new.step == NewStep::Agent {
            Line::from(Span::styled(text, picked))
        } else {
            Line::from(text)
        });
    }
    if new.step == NewStep::Backend {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled("Backend", bold)));
        for (i, b) in new.backends.iter().enumerate() {
            let here = i == new.backend;
            let (state, style) = match &b.ready {
                Ok(detail) => (format!("ready ({detail})"), Style::default()),
                // Greyed: dim (and grey with colour), with `bottle doctor`'s reason.
                Err(why) => (
                    format!("unavailable: {why}"),
                    theme.fg(Color::DarkGray).add_modifier(Modifier::DIM),
                ),
            };
            let text = format!("{} {:<7} {state}", if here { ">" } else { " " }, b.name);
            let style = if here {
                style.add_modifier(Modifier::REVERSED)
            } else {
                style
            };
            lines.push(Line::from(Span::styled(text, style)));
        }
    }
    Paragraph::new(lines).render(area, buf);
}

#[cfg(test)]
mod tests;
