//! Provisioning a launched bottle through the guest agent, the same for both
//! backends, its steps logged on stderr always in this order: CA → proxy env
//! → prompt → skills → workspace → git config → route placeholders → agent
//! settings → supervise's MCP server (when on). Each step is idempotent (it
//! writes whole files). The small files go in two sessions (root's: CA and
//! env; the agent's: prompt, git config, settings, MCP server) before the
//! copies, since each round trip to the guest costs milliseconds under TCG.

use crate::manifest::BackendName;
use crate::plan::{placeholder_env, Plan, Prompt};
use bottle_guest::host::{Client, GuestFile};
use bottle_guest::proto::User;
use bottle_util::shell_quote;
use std::path::Path;

/// Where things go in the guest. A VM's agent is root-capable (the guest
/// agent is PID 1), so the CA joins the system trust store; a container's
/// root is read-only and its agent unprivileged, so everything lives in the
/// agent's (tmpfs) home.
#[derive(Debug, Clone, Copy)]
pub struct GuestLayout {
    pub privileged: bool,
    /// The bottle CA alone (`NODE_EXTRA_CA_CERTS`).
    pub ca_pem: &'static str,
    /// System roots plus the bottle CA (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`).
    pub ca_bundle: &'static str,
    /// Shell profile exporting the agent's environment.
    pub profile: &'static str,
}

pub const VM_LAYOUT: GuestLayout = GuestLayout {
    privileged: true,
    ca_pem: "/etc/bottle/ca.pem",
    ca_bundle: "/etc/ssl/certs/ca-certificates.crt",
    profile: "/etc/profile.d/bottle.sh",
};

pub const DOCKER_LAYOUT: GuestLayout = GuestLayout {
    privileged: false,
    ca_pem: "/home/agent/.bottle/ca.pem",
    ca_bundle: "/home/agent/.bottle/ca-bundle.pem",
    profile: "/home/agent/.profile",
};

/// The layout for the plan's backend.
pub fn layout(plan: &Plan) -> GuestLayout {
    match plan.backend {
        BackendName::Vm => VM_LAYOUT,
        BackendName::Docker => DOCKER_LAYOUT,
    }
}

/// The agent's home in the guest, and the agent user (see the contract).
pub use bottle_contract::agent_user::{HOME as AGENT_HOME, NAME as AGENT_NAME, UID as AGENT_UID};
/// The agent's workspace in the guest.
pub const WORKSPACE: &str = "/workspace";

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioning step `{step}` failed")]
    Step {
        step: &'static str,
        #[source]
        source: bottle_guest::host::ClientError,
    },
    #[error("provisioning step `{step}` failed: {why}")]
    Host { step: &'static str, why: String },
}

fn step(step: &'static str) -> impl FnOnce(bottle_guest::host::ClientError) -> ProvisionError {
    move |source| ProvisionError::Step { step, source }
}

/// The agent's whole environment in the guest (no real secret is ever in it).
pub fn agent_env(plan: &Plan) -> Vec<(String, String)> {
    let proxy = bottle_contract::proxy_url();
    let l = layout(plan);
    let mut env: Vec<(String, String)> = vec![
        ("HTTPS_PROXY".into(), proxy.clone()),
        ("HTTP_PROXY".into(), proxy.clone()),
        ("https_proxy".into(), proxy.clone()),
        ("http_proxy".into(), proxy),
        ("NO_PROXY".into(), bottle_contract::PROXY_HOST.into()),
        ("no_proxy".into(), bottle_contract::PROXY_HOST.into()),
        ("NODE_EXTRA_CA_CERTS".into(), l.ca_pem.into()),
        ("SSL_CERT_FILE".into(), l.ca_bundle.into()),
        ("REQUESTS_CA_BUNDLE".into(), l.ca_bundle.into()),
        ("GIT_SSL_CAINFO".into(), l.ca_bundle.into()),
        // Telemetry and auto-update off: they would only be refused anyway.
        ("DISABLE_TELEMETRY".into(), "1".into()),
        ("DISABLE_AUTOUPDATER".into(), "1".into()),
        ("DISABLE_ERROR_REPORTING".into(), "1".into()),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
            "1".into(),
        ),
        ("BOTTLE_IDENTITY".into(), plan.identity.clone()),
        // A container image may have no passwd entry for the agent's uid.
        ("HOME".into(), AGENT_HOME.into()),
        ("USER".into(), AGENT_NAME.into()),
        ("LOGNAME".into(), AGENT_NAME.into()),
    ];
    env.extend(placeholder_env(&plan.routes));
    env.extend(plan.agent_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Who owns the agent's files and runs its commands: uid 1000 asked of a
/// privileged guest agent; in a container the guest agent already is that user.
pub fn agent_user(plan: &Plan) -> Option<User> {
    layout(plan).privileged.then_some(User::Uid(AGENT_UID))
}

/// How the plan's agent runs its commands (kept for `exec` and `attach`).
pub fn session(plan: &Plan) -> crate::session::SessionSpec {
    crate::session::SessionSpec {
        env: agent_env(plan),
        cwd: agent_cwd(plan),
        uid: layout(plan).privileged.then_some(AGENT_UID),
    }
}

/// The working directory the agent's command starts in.
pub fn agent_cwd(plan: &Plan) -> String {
    let resumed_workspace = plan.resume.as_ref().is_some_and(|r| r.workspace.is_some());
    if plan.copy_cwd || resumed_workspace {
        WORKSPACE.to_string()
    } else {
        AGENT_HOME.to_string()
    }
}

/// Run every provisioning step.
pub async fn provision(client: &Client, plan: &Plan, ca_pem: &str) -> Result<(), ProvisionError> {
    provision_with(client, plan, ca_pem, None).await
}

/// [`provision`] for a claimed pooled guest (`bottle pool`), which booted
/// without the bottle's name: `root_script` (its hostname, see
/// [`crate::pool::hostname_script`]) runs as root first, in the same shell
/// as the CA step (one exec less under TCG).
pub async fn provision_claimed(
    client: &Client,
    plan: &Plan,
    ca_pem: &str,
    root_script: &str,
) -> Result<(), ProvisionError> {
    provision_with(client, plan, ca_pem, Some(root_script)).await
}

async fn provision_with(
    client: &Client,
    plan: &Plan,
    ca_pem: &str,
    root_script: Option<&str>,
) -> Result<(), ProvisionError> {
    // Each step's line, and its finish time for `bench/boot.sh` (BOTTLE_TIMING=1).
    let log = |step: &str, what: String| {
        eprintln!("bottle: provision: {what}");
        crate::timing::step(&format!("provision-{step}"));
    };
    let l = layout(plan);
    // Files only root may write go as root in a VM; in a container the agent writes its own.
    let root = if l.privileged {
        Some(User::Uid(0))
    } else {
        None
    };

    // Each step's files are gathered first and written in two sessions,
    // root's and the agent's, after the reads they depend on (run at once):
    // under TCG every round trip to the guest costs milliseconds.
    let hash = if l.privileged {
        Some(
            crate::cert_hash::subject_hash_pem(ca_pem).map_err(|e| ProvisionError::Host {
                step: "ca",
                why: format!("cannot hash the bottle CA's subject: {e}"),
            })?,
        )
    } else {
        None
    };
    let mcp_path = format!("{AGENT_HOME}/.claude.json");
    let (roots, link, mcp_existing) = tokio::join!(
        guest_file(client, SYSTEM_ROOTS),
        async {
            match &hash {
                Some(hash) => free_hash_link(client, hash, ca_pem).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            if plan.supervise {
                client.read_file(&mcp_path).await.ok()
            } else {
                None
            }
        },
    );

    // 1. CA: alone, and joined to the system roots.
    let mut root_files = vec![guest_file_of(l.ca_pem, ca_pem.as_bytes(), 0o644)];
    // Joined to the store without a shell and without rehashing it
    // (`update-ca-certificates` costs about a minute under TCG, and each
    // program a shell runs costs tens of ms): the PEM appended to the
    // bundle every TLS library reads, through the agent's own file calls.
    let (roots_path, system_roots) = match roots {
        Ok(found) => found,
        // A container's agent writes its own bundle: system roots it cannot
        // read are left out of it, as they always were.
        Err(_) if !l.privileged => (SYSTEM_ROOTS.to_string(), None),
        Err(e) => return Err(step("ca")(e)),
    };
    // In a VM the system bundle itself (where a symlink leads, as `cat >>`
    // would), in a container the agent's own.
    let bundle_path = if l.privileged {
        roots_path.as_str()
    } else {
        l.ca_bundle
    };
    root_files.push(guest_file_of(
        bundle_path,
        &joined_bundle(system_roots.as_deref().unwrap_or_default(), ca_pem),
        0o644,
    ));
    // In a VM, a copy where a later `update-ca-certificates` in the guest
    // keeps it, and `<subject hash>.N` (hash computed here on the host) for
    // OpenSSL's directory lookup, at the first N no other CA holds.
    if let Some(link) = link.map_err(step("ca"))? {
        for path in [
            "/usr/local/share/ca-certificates/bottle.crt",
            "/etc/ssl/certs/bottle.pem",
            link.as_str(),
        ] {
            root_files.push(guest_file_of(path, ca_pem.as_bytes(), 0o644));
        }
    }

    // 2. Proxy environment, for login shells too (written with the CA).
    let env = agent_env(plan);
    let profile: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect();
    root_files.push(guest_file_of(l.profile, profile.as_bytes(), 0o644));
    client
        .write_files(&root_files, root.clone())
        .await
        .map_err(step("ca"))?;
    if let Some(script) = root_script {
        let done = client
            .run_capture(
                vec!["/bin/sh".into(), "-c".into(), format!("set -e\n{script}")],
                Vec::new(),
                None,
                root.clone(),
            )
            .await
            .map_err(step("ca"))?;
        if done.status.shell_code() != 0 {
            return Err(ProvisionError::Host {
                step: "ca",
                why: String::from_utf8_lossy(&done.stderr).into_owned(),
            });
        }
    }
    log(
        "ca",
        format!(
            "bottle CA installed ({}, trusted through {})",
            l.ca_pem, l.ca_bundle
        ),
    );
    log(
        "env",
        format!(
            "HTTP(S)_PROXY={} and CA variables set",
            bottle_contract::proxy_url()
        ),
    );

    // The agent's own small files, written in one session before the
    // copies: the prompt (3), git config (6), settings (8) and supervise's
    // MCP server (9). Each is logged in its turn below.
    let mut agent_files = Vec::new();

    // 3. Prompt, where Claude Code reads the user's memory.
    let prompt = match &plan.prompt {
        Some(Prompt::Inline(text)) => Some(text.clone()),
        Some(Prompt::File(f)) => {
            // Checked again here (the plan did it too): a path swapped for a
            // symlink since is still refused.
            let path =
                crate::manifest::paths::checked(&plan.cwd, f, agent_path_key(plan, "prompt_file"))
                    .map_err(|e| ProvisionError::Host {
                        step: "prompt",
                        why: e.to_string(),
                    })?;
            Some(
                std::fs::read_to_string(&path).map_err(|e| ProvisionError::Host {
                    step: "prompt",
                    why: format!("cannot read {}: {e}", path.display()),
                })?,
            )
        }
        None => None,
    };
    if let Some(prompt) = &prompt {
        agent_files.push(guest_file_of(
            &format!("{AGENT_HOME}/.claude/CLAUDE.md"),
            prompt.as_bytes(),
            0o644,
        ));
    }

    // 6. git config: every declared upstream goes through git-gate.
    let mut gitconfig = String::from(
        "[user]\n\tname = bottle agent\n\temail = agent@bottle.invalid\n[safe]\n\tdirectory = *\n",
    );
    gitconfig.push_str(&bottle_sidecars::gitgate::agent_git_config(
        &plan.git_remotes,
    ));
    agent_files.push(guest_file_of(
        &format!("{AGENT_HOME}/.gitconfig"),
        gitconfig.as_bytes(),
        0o644,
    ));

    // 8. Agent settings: no telemetry or auto-update.
    let settings = serde_json::json!({
        "env": { "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1" },
    });
    agent_files.push(guest_file_of(
        &format!("{AGENT_HOME}/.claude/settings.json"),
        settings.to_string().as_bytes(),
        0o644,
    ));

    // 9. supervise: the `bottle` MCP server in Claude Code's user scope
    // (`~/.claude.json`, merged into what the image has there).
    if plan.supervise {
        agent_files.push(guest_file_of(
            &mcp_path,
            &mcp_user_settings(mcp_existing.as_deref()),
            0o600,
        ));
    }
    // One session for all of them: a failure is the batch's (the agent's
    // error names the file).
    client
        .write_files(&agent_files, agent_user(plan))
        .await
        .map_err(step(
            "agent files (prompt, git config, settings, MCP server)",
        ))?;
    if prompt.is_some() {
        log(
            "prompt",
            "prompt written to ~/.claude/CLAUDE.md".to_string(),
        );
    }

    // 4. Skills.
    for skill in &plan.skills {
        let name = skill
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "skill".into());
        // Checked again here (the plan did it too): a path swapped for a
        // symlink since is still refused. The real path is what is copied.
        let skill =
            &crate::manifest::paths::checked(&plan.cwd, skill, agent_path_key(plan, "skills"))
                .map_err(|e| ProvisionError::Host {
                    step: "skills",
                    why: e.to_string(),
                })?;
        if !skill.is_dir() {
            return Err(ProvisionError::Host {
                step: "skills",
                why: format!("{} is not a directory", skill.display()),
            });
        }
        client
            .copy_dir_in(
                skill,
                &format!("{AGENT_HOME}/.claude/skills/{name}"),
                agent_user(plan),
            )
            .await
            .map_err(step("skills"))?;
        log("skills", format!("skill `{name}` copied"));
    }

    // 5. Workspace (a copy: the host tree is never written by the guest);
    // a resumed bottle gets the workspace and transcripts it kept instead.
    let resume = plan.resume.clone().unwrap_or_default();
    let source = match &resume.workspace {
        Some(kept) => Some(kept.clone()),
        None => plan.copy_cwd.then(|| plan.cwd.clone()),
    };
    if let Some(source) = source {
        let entries = client
            .copy_dir_in(&source, WORKSPACE, agent_user(plan))
            .await
            .map_err(step("workspace"))?;
        log(
            "workspace",
            format!(
                "workspace {} copied to {WORKSPACE} ({entries} entries)",
                source.display()
            ),
        );
    }
    if let Some(transcripts) = &resume.transcripts {
        let entries = client
            .copy_dir_in(
                transcripts,
                crate::kept::GUEST_TRANSCRIPTS,
                agent_user(plan),
            )
            .await
            .map_err(step("workspace"))?;
        log(
            "workspace",
            format!(
                "agent transcripts restored to {} ({entries} entries)",
                crate::kept::GUEST_TRANSCRIPTS
            ),
        );
    }

    log(
        "git",
        format!(
            "git config written ({} remote{} through git-gate)",
            plan.git.len(),
            if plan.git.len() == 1 { "" } else { "s" }
        ),
    );

    // 7. Route placeholders are in the environment (step 2); say which.
    for route in &plan.routes {
        log(
            "routes",
            format!(
                "route {}: the agent holds {}",
                route.host, route.placeholder
            ),
        );
    }

    log(
        "settings",
        "agent settings written (no telemetry, no auto-update)".to_string(),
    );
    if plan.supervise {
        log(
            "supervise",
            format!(
                "MCP server `{}` registered at {}",
                bottle_sidecars::supervise::server::SERVER_NAME,
                bottle_sidecars::supervise::URL
            ),
        );
    }
    Ok(())
}

/// Claude Code's user-scope settings with the `bottle` MCP server added
/// (`mcpServers.bottle`, type `http`), keeping everything else of
/// `existing`; a file that is not a JSON object is replaced.
fn mcp_user_settings(existing: Option<&[u8]>) -> Vec<u8> {
    let mut root = existing
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let server = serde_json::json!({
        "type": "http",
        "url": bottle_sidecars::supervise::URL,
    });
    if !root["mcpServers"].is_object() {
        root["mcpServers"] = serde_json::json!({});
    }
    root["mcpServers"][bottle_sidecars::supervise::server::SERVER_NAME] = server;
    serde_json::to_vec_pretty(&root).unwrap_or_default()
}

/// The plan's paths are absolute, so the base they are checked against
/// (the plan's cwd) does not change them.
fn agent_path_key<'a>(plan: &'a Plan, key: &'static str) -> crate::manifest::paths::PathKey<'a> {
    crate::manifest::paths::PathKey {
        table: "agents",
        name: &plan.agent,
        key,
        allow_secret_paths: plan.allow_secret_paths,
    }
}

fn guest_file_of(path: &str, bytes: &[u8], mode: u32) -> GuestFile {
    GuestFile {
        path: path.to_string(),
        bytes: bytes.to_vec(),
        mode,
    }
}

/// The first `/etc/ssl/certs/<hash>.N` that is free or already holds
/// `ca_pem` (at most N = 16, where it is taken over).
async fn free_hash_link(
    client: &Client,
    hash: &str,
    ca_pem: &str,
) -> Result<String, bottle_guest::host::ClientError> {
    let mut n = 0;
    loop {
        let candidate = format!("/etc/ssl/certs/{hash}.{n}");
        match guest_file(client, &candidate).await? {
            (_, Some(held)) if held != ca_pem.as_bytes() && n < 16 => n += 1,
            _ => return Ok(candidate),
        }
    }
}

/// Where Debian keeps the system's root bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A guest file's bytes, symlinks followed as `cat` follows them, with the
/// path they led to; `None` when nothing is there (a dangling link's
/// target included). Any other failure is an error, never "empty".
async fn guest_file(
    client: &Client,
    path: &str,
) -> Result<(String, Option<Vec<u8>>), bottle_guest::host::ClientError> {
    use bottle_guest::host::ClientError;
    use bottle_guest::proto::EntryKind;
    let mut path = path.to_string();
    for _ in 0..8 {
        let mut entries = match client
            .read_tree(&path, bottle_guest::host::client::READ_FILE_LIMIT)
            .await
        {
            Ok(entries) => entries,
            // The agent's words for ENOENT (an io::Error after the path).
            Err(ClientError::Remote(why)) if why.ends_with("(os error 2)") => {
                return Ok((path, None))
            }
            Err(e) => return Err(e),
        };
        match entries.pop().map(|e| (e.kind, e.data)) {
            Some((EntryKind::File { .. }, data)) if entries.is_empty() => {
                return Ok((path, Some(data)))
            }
            Some((EntryKind::Symlink { target }, _)) if entries.is_empty() => {
                path = link_target(&path, &target);
            }
            _ => return Err(ClientError::Remote(format!("{path} is not a regular file"))),
        }
    }
    Err(ClientError::Remote(format!(
        "{path}: too many levels of symbolic links"
    )))
}

/// Where the symlink at `link` pointing to `target` leads.
fn link_target(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return target.to_string();
    }
    let dir = link.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{dir}/{target}")
}

/// The system roots (`system`, possibly empty) with the bottle CA after
/// them, as the one bundle the guest's TLS libraries read.
fn joined_bundle(system: &[u8], ca_pem: &str) -> Vec<u8> {
    let mut bundle = system.to_vec();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(ca_pem.as_bytes());
    bundle
}

/// Read the CA the bundle wrote.
pub fn read_ca(state_dir: &Path) -> Result<String, ProvisionError> {
    let path = state_dir.join(crate::bundle::files::CA);
    std::fs::read_to_string(&path).map_err(|e| ProvisionError::Host {
        step: "ca",
        why: format!("cannot read {}: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_lead_where_cat_would_follow_them() {
        assert_eq!(
            link_target("/etc/ssl/certs/ca-certificates.crt", "/usr/share/ca.crt"),
            "/usr/share/ca.crt"
        );
        assert_eq!(
            link_target("/etc/ssl/certs/abcd1234.0", "bottle.pem"),
            "/etc/ssl/certs/bottle.pem"
        );
        assert_eq!(
            link_target("/etc/ssl/certs/x.pem", "../../usr/share/x.crt"),
            "/etc/ssl/certs/../../usr/share/x.crt"
        );
    }

    #[test]
    fn the_bottle_ca_joins_the_system_roots_on_a_line_of_its_own() {
        let ca = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(joined_bundle(b"", ca), ca.as_bytes());
        let system = b"-----BEGIN CERTIFICATE-----\nS\n-----END CERTIFICATE-----";
        let joined = String::from_utf8(joined_bundle(system, ca)).unwrap();
        assert_eq!(
            joined,
            format!("{}\n{ca}", String::from_utf8_lossy(system)),
            "a bundle without a final newline must not glue two PEM lines"
        );
    }

    #[test]
    fn the_mcp_server_is_merged_into_claude_user_settings() {
        let fresh: serde_json::Value = serde_json::from_slice(&mcp_user_settings(None)).unwrap();
        assert_eq!(
            fresh,
            serde_json::json!({"mcpServers": {"bottle": {
                "type": "http", "url": "http://proxy.internal:9100/mcp"}}})
        );
        let merged: serde_json::Value = serde_json::from_slice(&mcp_user_settings(Some(
            br#"{"theme":"dark","mcpServers":{"other":{"type":"stdio","command":"x"}}}"#,
        )))
        .unwrap();
        assert_eq!(merged["theme"], "dark");
        assert_eq!(merged["mcpServers"]["other"]["command"], "x");
        assert_eq!(merged["mcpServers"]["bottle"]["type"], "http");
        let replaced: serde_json::Value =
            serde_json::from_slice(&mcp_user_settings(Some(b"not json"))).unwrap();
        assert_eq!(replaced["mcpServers"]["bottle"]["type"], "http");
    }
}
