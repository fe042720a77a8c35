//! What a bottle keeps when it stops, so it can be resumed: the agent's
//! workspace and its Claude Code transcripts, copied out of the guest into
//! the state dir's `kept/` (archived with the audit log by
//! [`crate::state::StateDir::retire`]), and copied back in by `bottle resume`.

use crate::provision::WORKSPACE;
use crate::state::StateDir;
use bottle_guest::host::{Client, ClientError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory in a bottle's state dir (and its archive) holding what it kept.
pub const KEPT: &str = "kept";
/// The workspace as the agent left it.
pub const KEPT_WORKSPACE: &str = "workspace";
/// `~/.claude/projects`: Claude Code's transcripts, which `--continue` reads.
pub const KEPT_TRANSCRIPTS: &str = "claude-projects";
/// Where Claude Code keeps its transcripts in the guest.
pub const GUEST_TRANSCRIPTS: &str = "/home/agent/.claude/projects";

/// Largest workspace kept (the copy is held in memory on its way out).
pub const WORKSPACE_LIMIT: u64 = 512 << 20;
/// Largest transcript tree kept.
pub const TRANSCRIPTS_LIMIT: u64 = 256 << 20;
/// How long keeping may take before the bottle is stopped regardless.
const KEEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What `bottle resume` copies into the new guest instead of the first
/// launch's sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeFrom {
    /// Copied to the workspace instead of the working directory.
    pub workspace: Option<PathBuf>,
    /// Copied to `~/.claude/projects`.
    pub transcripts: Option<PathBuf>,
    /// supervise's grants (`policy-grants.json`), copied to the new state
    /// directory: the bundle applies those not yet expired.
    pub grants: Option<PathBuf>,
    /// supervise's requests (`supervise/`), copied to the new state
    /// directory: `request_status` and `bottle requests` still know them.
    pub requests: Option<PathBuf>,
    /// Debian packages approved since (capability requests): the image is
    /// rebuilt with them, and they are kept for the next resume.
    pub image_packages: Vec<String>,
}

/// The bottle's approved image additions, in its state dir (archived with it).
pub const IMAGE_ADDITIONS: &str = "image-additions.json";

/// The image additions recorded in `dir` (a state dir or its archive).
pub fn image_additions(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join(IMAGE_ADDITIONS))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| bottle_util::debian::is_package_name(p))
        .collect()
}

/// Record package `name` for the image of running bottle `id`; false when
/// it is not a package name (nothing recorded).
pub fn add_image_package(id: &str, name: &str) -> anyhow::Result<bool> {
    if !bottle_util::debian::is_package_name(name) {
        return Ok(false);
    }
    let root = crate::state::state_root()?;
    let dir = crate::state::StateDir::open(&root, id)?;
    let mut list = image_additions(dir.path());
    if !list.iter().any(|p| p == name) {
        list.push(name.to_string());
    }
    crate::state::write_atomic(&dir.file(IMAGE_ADDITIONS), &serde_json::to_vec(&list)?)?;
    Ok(true)
}

/// Add approved packages to a plan's image: a bottle's own image gets them
/// in its list; `debian` and `claude` become the bottle's own image with
/// them; `tiny` takes no packages.
pub fn add_packages(plan: &mut crate::plan::Plan, packages: &[String]) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let mut custom = match plan.custom_image.take() {
        Some(c) => c,
        None if plan.image == "debian" || plan.image == "claude" => {
            crate::plan::CustomImagePlan {
                packages: Vec::new(),
                claude: plan.image == "claude",
                setup: Vec::new(),
                files: Default::default(),
            }
        }
        None => anyhow::bail!(
            "the `{}` image takes no packages (approved: {}); give bottle `{}` a Debian image (`image = \"debian\"` or a `[bottles.{}.image]` table) and resume again",
            plan.image,
            packages.join(", "),
            plan.bottle,
            plan.bottle
        ),
    };
    for p in packages {
        if !custom.packages.contains(p) {
            custom.packages.push(p.clone());
        }
    }
    plan.image = format!("custom-{}", plan.bottle);
    plan.custom_image = Some(custom);
    Ok(())
}

/// What was kept (or why not), for the user.
#[derive(Debug, Default)]
pub struct KeptReport {
    pub lines: Vec<String>,
}

/// Copy the workspace and the transcripts out of the running guest into
/// `dir/kept/`, replacing what an earlier run kept. Never fails the stop:
/// what cannot be kept is said in the report.
pub async fn keep(client: &Client, dir: &StateDir) -> KeptReport {
    let mut report = KeptReport::default();
    let kept = dir.file(KEPT);
    let _ = std::fs::remove_dir_all(&kept);
    if let Err(e) = create_private_dir(&kept) {
        report.lines.push(format!(
            "nothing kept: cannot create {}: {e}",
            kept.display()
        ));
        return report;
    }
    for (guest, name, limit, what) in [
        (WORKSPACE, KEPT_WORKSPACE, WORKSPACE_LIMIT, "workspace"),
        (
            GUEST_TRANSCRIPTS,
            KEPT_TRANSCRIPTS,
            TRANSCRIPTS_LIMIT,
            "agent transcripts",
        ),
    ] {
        let to = kept.join(name);
        let copied = tokio::time::timeout(KEEP_TIMEOUT, client.copy_dir_out(guest, &to, limit))
            .await
            .unwrap_or_else(|_| Err(ClientError::Remote("timed out".into())));
        match copied {
            // An empty directory (a container's bare /workspace) is nothing.
            Ok(n) if n <= 1 => {
                let _ = std::fs::remove_dir_all(&to);
            }
            Ok(n) => report.lines.push(format!(
                "kept the {what} ({guest}, {n} entries) in {}",
                to.display()
            )),
            Err(ClientError::TooLarge(..)) => {
                let _ = std::fs::remove_dir_all(&to);
                report.lines.push(format!(
                    "the {what} ({guest}) is over {} MiB and was not kept; copy what you need with `bottle cp` before stopping",
                    limit >> 20
                ));
            }
            // Nothing there (no workspace copied in, no Claude Code run).
            Err(ClientError::Remote(m))
                if m.contains("No such file") || m.contains("not found") =>
            {
                let _ = std::fs::remove_dir_all(&to);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&to);
                report
                    .lines
                    .push(format!("the {what} ({guest}) was not kept: {e}"));
            }
        }
    }
    report
}

/// Keep what a running bottle has, through its control socket; a guest that
/// does not answer keeps nothing (said in the report).
pub fn keep_running(dir: &StateDir) -> KeptReport {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return KeptReport {
                lines: vec![format!("nothing kept: {e}")],
            }
        }
    };
    let control = dir.file(crate::bundle::files::CONTROL);
    let report = runtime.block_on(async {
        let connected = tokio::time::timeout(Duration::from_secs(5), async {
            let client = Client::connect(&control).await?;
            client.wait_ready(Duration::from_secs(5)).await?;
            Ok::<_, ClientError>(client)
        })
        .await;
        match connected {
            Ok(Ok(client)) => keep(&client, dir).await,
            Ok(Err(e)) => KeptReport {
                lines: vec![format!("nothing kept: the guest does not answer ({e})")],
            },
            Err(_) => KeptReport {
                lines: vec!["nothing kept: the guest does not answer".to_string()],
            },
        }
    });
    runtime.shutdown_background();
    report
}

/// What a stopped bottle kept, in its archive: (workspace, transcripts).
pub fn kept_in(archive: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let kept = archive.join(KEPT);
    let dir = |name: &str| Some(kept.join(name)).filter(|p| p.is_dir());
    (dir(KEPT_WORKSPACE), dir(KEPT_TRANSCRIPTS))
}

/// The command `bottle resume` runs: Claude Code continues its last
/// conversation (`--continue`); any other agent runs its command again.
pub fn resume_command(command: &[String]) -> Vec<String> {
    let is_claude = command
        .first()
        .and_then(|c| Path::new(c).file_name())
        .is_some_and(|n| n == "claude");
    let continues = command
        .iter()
        .any(|a| matches!(a.as_str(), "--continue" | "-c" | "--resume" | "-r"));
    let mut out = command.to_vec();
    if is_claude && !continues {
        out.push("--continue".to_string());
    }
    out
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn claude_continues_and_other_agents_run_again() {
        assert_eq!(
            resume_command(&argv(&["claude"])),
            argv(&["claude", "--continue"])
        );
        assert_eq!(
            resume_command(&argv(&["/usr/local/bin/claude", "--model", "x"])),
            argv(&["/usr/local/bin/claude", "--model", "x", "--continue"])
        );
        assert_eq!(
            resume_command(&argv(&["claude", "-c"])),
            argv(&["claude", "-c"])
        );
        assert_eq!(resume_command(&argv(&["bash"])), argv(&["bash"]));
    }

    #[test]
    fn only_existing_kept_dirs_are_offered() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(kept_in(t.path()), (None, None));
        std::fs::create_dir_all(t.path().join(KEPT).join(KEPT_TRANSCRIPTS)).unwrap();
        let (w, tr) = kept_in(t.path());
        assert!(w.is_none());
        assert!(tr.unwrap().ends_with("kept/claude-projects"));
    }
}
