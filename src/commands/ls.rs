//! `bottle ls`: the bottles on this host, from their state directories.

use super::print;
use crate::state::{self, Entry};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    identity: String,
    agent: String,
    status: String,
    started: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

pub fn ls(json: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    let rows: Vec<Row> = state::list(&root)?
        .into_iter()
        .map(|entry| match entry {
            Entry::Ok(_, meta) => {
                let alive = crate::bundle::is_alive(&meta);
                Row {
                    backend: meta.backend.to_string(),
                    identity: meta.identity,
                    agent: meta.agent,
                    status: if alive || meta.status != state::Status::Running {
                        meta.status.as_str().to_string()
                    } else {
                        "dead".to_string()
                    },
                    started: meta.started_at,
                    problem: (!alive && meta.status == state::Status::Running)
                        .then(|| "its processes are gone; `bottle cleanup` removes it".to_string()),
                }
            }
            Entry::Broken { dir, reason } => Row {
                backend: "?".into(),
                identity: dir.identity().to_string(),
                agent: "?".into(),
                status: "broken".into(),
                started: "?".into(),
                problem: Some(format!("{reason}; `bottle cleanup` removes it")),
            },
        })
        .collect();
    if json {
        return print(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    }
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            r.backend, r.identity, r.agent, r.status, r.started
        ));
    }
    // Pooled guests (`bottle pool`), apart from the bottles.
    out.push_str(&super::pool::ls_lines(&root));
    print(&out)?;
    for r in rows.iter().filter(|r| r.problem.is_some()) {
        eprintln!(
            "note: {}: {}",
            r.identity,
            r.problem.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}
