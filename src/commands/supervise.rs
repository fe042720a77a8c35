//! The operator's side of supervise: `bottle requests [ID]`, `bottle
//! approve ID REQ [--for DURATION]`, `bottle reject ID REQ [--reason TEXT]`.
//! Requests are read from the bottle's state directory; decisions go to
//! the running bundle over its control socket (the bundle writes the
//! request, the grant and the audit line, and reloads the proxy).

use super::print;
use super::UsageError;
use crate::cli::SaveFlags;
use crate::manifest::edit::Edit;
use crate::state::{self, StateDir};
use anyhow::Context;
use bottle_sidecars::policy::{HostPattern, Route, TokenSource};
use bottle_sidecars::supervise::control::{self, ControlRequest, ControlResponse};
use bottle_sidecars::supervise::request::{Ask, Request, Status};
use bottle_sidecars::supervise::store::Store;
use bottle_sidecars::supervise::{now_secs, CONTROL_SOCKET, DIR};
use std::time::Duration;

/// Parse `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, UsageError> {
    let raw = raw.trim();
    let (digits, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, ""), |i| raw.split_at(i));
    let n: u64 = digits.parse().map_err(|_| bad_duration(raw))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| bad_duration(raw))?;
    Ok(Duration::from_secs(secs))
}

fn bad_duration(raw: &str) -> UsageError {
    UsageError(format!(
        "`{raw}` is not a duration; write a number with s, m, h or d, e.g. 30s, 10m, 2h"
    ))
}

fn when(secs: u64) -> String {
    let now = now_secs();
    if secs > now {
        format!("in {}", span(secs - now))
    } else {
        format!("{} ago", span(now - secs))
    }
}

fn span(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn line(bottle: &str, r: &Request) -> String {
    let state = match (r.status, r.until) {
        (Status::Approved, Some(until)) if until <= now_secs() => "expired".to_string(),
        (Status::Approved, Some(until)) => format!("approved, ends {}", when(until)),
        (s, _) => s.as_str().to_string(),
    };
    let mut out = format!(
        "{bottle}  {}  {:<9}  {}  ({}; filed {})\n    reason: {}\n",
        r.id,
        state,
        r.ask.summary(),
        r.ask.tool(),
        when(r.created),
        r.reason.replace('\n', " ")
    );
    if let Some(note) = &r.note {
        out.push_str(&format!("    note: {note}\n"));
    }
    out
}

/// `bottle requests [ID]`: the requests of one bottle (running, or stopped
/// and kept for `bottle resume`), or of every running one.
pub fn requests(id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    // (identity, directory holding `supervise/`): a running bottle's state
    // dir, or what a stopped one kept.
    let dirs: Vec<(String, std::path::PathBuf)> = match id {
        Some(id) => match StateDir::open(&root, id) {
            Ok(dir) => vec![(id.to_string(), dir.path().to_path_buf())],
            Err(e) => match state::archived(&root, id) {
                Some(archive) => vec![(id.to_string(), archive)],
                None => return Err(e.into()),
            },
        },
        None => state::list(&root)?
            .into_iter()
            .filter_map(|e| match e {
                state::Entry::Ok(dir, meta) if crate::bundle::is_alive(&meta) => {
                    Some((dir.identity().to_string(), dir.path().to_path_buf()))
                }
                _ => None,
            })
            .collect(),
    };
    let mut all = Vec::new();
    for (identity, dir) in &dirs {
        let path = dir.join(DIR);
        if !path.is_dir() {
            continue;
        }
        let store = Store::open(&path)?;
        for r in store.list()? {
            all.push((identity.clone(), r));
        }
    }
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(b, r)| serde_json::json!({"bottle": b, "request": r}))
            .collect();
        return print(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    if all.is_empty() {
        return print("no requests\n");
    }
    // Pending first, then the rest, newest first.
    all.sort_by_key(|(_, r)| (r.status != Status::Pending, std::cmp::Reverse(r.created)));
    let text: String = all.iter().map(|(b, r)| line(b, r)).collect();
    print(&text)
}

fn decide(id: &str, request: ControlRequest) -> anyhow::Result<Request> {
    match control_call(id, &request)? {
        ControlResponse::Ok(r) => Ok(r),
        ControlResponse::Error(e) => Err(UsageError(e).into()),
        other => anyhow::bail!("the bundle answered {other:?}"),
    }
}

/// `bottle policy ID [allow HOST[:PORT] [--for D] | deny HOST | route add|rm …]`,
/// with `--save` writing the change into the manifest too.
pub fn policy(
    id: &str,
    change: Option<crate::cli::PolicyChange>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::cli::{PolicyChange, RouteChange};
    let (request, edits, save) = match change {
        None => (ControlRequest::Show, Vec::new(), SaveFlags::default()),
        Some(PolicyChange::Allow {
            target,
            r#for,
            save,
        }) => {
            let (host, port) = split_target(&target)?;
            let mut edits = vec![allow_edit(&host)];
            edits.extend(port.map(Edit::AllowPort));
            let request = ControlRequest::Allow {
                host,
                port,
                for_secs: r#for
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .map(|d| d.as_secs()),
            };
            (request, edits, save)
        }
        Some(PolicyChange::Deny { host, save }) => (
            ControlRequest::Deny { host: host.clone() },
            vec![Edit::RemoveHost(host)],
            save,
        ),
        Some(PolicyChange::Route(RouteChange::Add {
            host,
            header,
            prefix,
            name,
            from_env,
            from_file,
            from_command,
            save,
        })) => {
            let source = TokenFrom {
                env: from_env,
                file: from_file,
                command: from_command,
            };
            let (route, token, edit) = route_from_host(id, &host, header, prefix, name, source)?;
            (
                ControlRequest::RouteAdd {
                    route,
                    token: control::Secret(token),
                },
                vec![edit],
                save,
            )
        }
        Some(PolicyChange::Route(RouteChange::Rm { host })) => (
            ControlRequest::RouteRm { host },
            Vec::new(),
            SaveFlags::default(),
        ),
    };
    let pending = match save.save {
        true => prepare_save(id, &edits, save.yes)?,
        false => None,
    };
    match control_call(id, &request)? {
        ControlResponse::Policy(v) if json => {
            print(&format!("{}\n", serde_json::to_string_pretty(&v)?))
        }
        ControlResponse::Policy(v) => print(&render_policy(&v)),
        ControlResponse::Done(text) => {
            print(&format!("{text}; the proxy applies it now\n"))?;
            finish_save(pending.as_ref())
        }
        ControlResponse::Error(e) => Err(UsageError(e).into()),
        other => anyhow::bail!("the bundle answered {other:?}"),
    }
}

/// A running bottle's effective policy, as its bundle reports it.
pub(crate) fn policy_show(id: &str) -> anyhow::Result<serde_json::Value> {
    match control_call(id, &ControlRequest::Show)? {
        ControlResponse::Policy(v) => Ok(v),
        ControlResponse::Error(e) => Err(UsageError(e).into()),
        other => anyhow::bail!("the bundle answered {other:?}"),
    }
}

/// [`policy_show`] as the lines `bottle policy ID` prints.
pub(crate) fn policy_text(id: &str) -> anyhow::Result<String> {
    Ok(render_policy(&policy_show(id)?))
}

/// Allow `target` (`HOST` or `HOST:PORT`) in a running bottle, for
/// `duration` (`10m`…) or as long as it exists: `bottle policy ID allow`.
pub(crate) fn policy_allow(
    id: &str,
    target: &str,
    duration: Option<&str>,
) -> anyhow::Result<String> {
    let (host, port) = split_target(target)?;
    let for_secs = duration
        .map(parse_duration)
        .transpose()?
        .map(|d| d.as_secs());
    policy_change(
        id,
        ControlRequest::Allow {
            host,
            port,
            for_secs,
        },
    )
}

/// Deny `host` in a running bottle: `bottle policy ID deny`.
pub(crate) fn policy_deny(id: &str, host: &str) -> anyhow::Result<String> {
    policy_change(
        id,
        ControlRequest::Deny {
            host: host.to_string(),
        },
    )
}

fn policy_change(id: &str, request: ControlRequest) -> anyhow::Result<String> {
    match control_call(id, &request)? {
        ControlResponse::Done(text) => Ok(format!("{text}; the proxy applies it now")),
        ControlResponse::Error(e) => Err(UsageError(e).into()),
        other => anyhow::bail!("the bundle answered {other:?}"),
    }
}

/// The manifest edit that allows `host`: an IP address goes to `allow_ips`.
fn allow_edit(host: &str) -> Edit {
    if host.parse::<std::net::IpAddr>().is_ok() {
        Edit::AllowIp(host.to_string())
    } else {
        Edit::AllowHost(host.to_string())
    }
}

/// The change `--save` makes, computed, shown and confirmed before the
/// running bottle changes (so a refusal changes nothing anywhere); none
/// when the manifest already says so.
fn prepare_save(
    id: &str,
    edits: &[Edit],
    yes: bool,
) -> anyhow::Result<Option<super::save::Pending>> {
    let (_, meta) = super::lifecycle::open(id)?;
    let pending = super::save::prepare(&meta, edits)?;
    match &pending {
        Some(p) => p.confirm(yes)?,
        None => eprintln!("the manifest already says so: nothing to save"),
    }
    Ok(pending)
}

fn finish_save(pending: Option<&super::save::Pending>) -> anyhow::Result<()> {
    match pending {
        Some(p) => {
            let said = p
                .write()
                .context("the running bottle changed, but the manifest was not saved")?;
            print(&format!("{said}\n"))
        }
        None => Ok(()),
    }
}

/// Where `route add` reads the token: one of `--from-env`, `--from-file`,
/// `--from-command`.
struct TokenFrom {
    env: Option<String>,
    file: Option<std::path::PathBuf>,
    command: Option<String>,
}

/// A route for `route add`, its token read here on the host, and the
/// manifest entry `--save` writes (the source, never the token).
fn route_from_host(
    id: &str,
    host: &str,
    header: String,
    prefix: String,
    name: Option<String>,
    from: TokenFrom,
) -> anyhow::Result<(Route, String, Edit)> {
    use crate::manifest::edit::TokenSourceEdit;
    let pattern = HostPattern::parse(host)
        .map_err(|e| UsageError(format!("`{host}` is not a host pattern: {e}")))?;
    let (token, source) = match (from.env, from.file, from.command) {
        (Some(var), None, None) => (TokenSource::Env(var.clone()), TokenSourceEdit::Env(var)),
        (None, Some(path), None) => {
            let abs = std::path::absolute(&path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            let shown = abs.display().to_string();
            (TokenSource::File(abs), TokenSourceEdit::File(shown))
        }
        (None, None, Some(line)) => {
            let argv = shlex::split(&line)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    UsageError(format!(
                        "--from-command `{line}` is not a command (empty, or an unclosed quote)"
                    ))
                })?;
            (
                TokenSource::Command(argv.clone()),
                TokenSourceEdit::Command(argv),
            )
        }
        _ => return Err(UsageError(
            "name where the token comes from: exactly one of --from-env VAR, --from-file PATH or --from-command COMMAND"
                .into(),
        )
        .into()),
    };
    let route_name = name.clone().unwrap_or_else(|| {
        crate::manifest::route_name(&crate::manifest::Route {
            name: None,
            host: host.to_string(),
            header: header.clone(),
            prefix: String::new(),
            token: Default::default(),
        })
    });
    let route = Route {
        name: route_name,
        host: pattern,
        header: header.clone(),
        prefix: prefix.clone(),
        token,
    };
    let resolved = bottle_sidecars::proxy::routes::resolve(&route)
        .map_err(|e| UsageError(format!("{e}; bottle {id} was not changed")))?;
    let edit = Edit::Route {
        name,
        host: host.to_string(),
        header,
        prefix,
        source,
    };
    Ok((route, resolved.token.expose().to_string(), edit))
}

/// `HOST` or `HOST:PORT`.
fn split_target(raw: &str) -> Result<(String, Option<u16>), UsageError> {
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                UsageError(format!("`{port}` in `{raw}` is not a port (1-65535)"))
            })?;
            Ok((host.to_string(), Some(port)))
        }
        _ => Ok((raw.to_string(), None)),
    }
}

fn render_policy(v: &serde_json::Value) -> String {
    let list = |key: &str| -> String {
        match v[key].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".to_string(),
        }
    };
    let mut out = format!(
        "allow        : {}\nallow_ports  : {}\nallow_ips    : {}\npassthrough  : {}\ndenied       : {}\n",
        list("allow"),
        list("allow_ports"),
        list("allow_ips"),
        list("passthrough"),
        list("denied"),
    );
    for r in v["rules"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "rule         : {} methods {} paths {}\n",
            r["host"].as_str().unwrap_or("?"),
            r["methods"],
            r["paths"]
        ));
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "route        : {} ({}) header {}\n",
            r["host"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?"),
            r["header"].as_str().unwrap_or("?")
        ));
    }
    for g in v["grants"].as_array().into_iter().flatten() {
        let ends = g["until_unix"]
            .as_u64()
            .map_or_else(|| "no end".to_string(), |u| format!("ends {}", when(u)));
        out.push_str(&format!(
            "grant        : {}{} ({}, {ends})\n",
            g["host"].as_str().unwrap_or("?"),
            g["port"]
                .as_u64()
                .map(|p| format!(":{p}"))
                .unwrap_or_default(),
            g["request"].as_str().unwrap_or("?"),
        ));
    }
    out
}

fn control_call(id: &str, request: &ControlRequest) -> anyhow::Result<ControlResponse> {
    let (dir, meta) = super::lifecycle::open(id)?;
    if !crate::bundle::is_alive(&meta) {
        anyhow::bail!(
            "bottle {id} is not running; its requests and policy can be changed only while it runs"
        );
    }
    let sock = dir.path().join(CONTROL_SOCKET);
    if !sock.exists() {
        anyhow::bail!(
            "bottle {id} has no supervise control socket: its manifest does not set \
             `supervise = true`"
        );
    }
    control::call(&sock, request)
        .with_context(|| format!("cannot reach bottle {id}'s bundle at {}", sock.display()))
}

/// The manifest edits that save an approval of `ask`, or why it cannot be saved.
fn approval_edits(ask: &Ask) -> Result<Vec<Edit>, UsageError> {
    match ask {
        Ask::RequestEgress {
            host,
            port,
            methods,
            paths,
        } => {
            let mut edits = vec![allow_edit(host)];
            edits.extend(port.map(Edit::AllowPort));
            if !methods.is_empty() || !paths.is_empty() {
                edits.push(Edit::Rule {
                    host: host.clone(),
                    methods: methods.clone(),
                    paths: paths.clone(),
                });
            }
            Ok(edits)
        }
        Ask::RequestCapability { name } if bottle_util::debian::is_package_name(name) => {
            Ok(vec![Edit::AddPackage(name.clone())])
        }
        Ask::RequestCapability { name } => Err(UsageError(format!(
            "`{name}` is not a Debian package name, so there is nothing bottle can write for it; \
             approve without --save and change the manifest yourself; nothing was changed"
        ))),
        Ask::RequestRoute { host } => Err(UsageError(format!(
            "a route needs a header and a place to read the credential from, which only you can \
             name; nothing was changed. Approve without --save, then add it with `bottle policy \
             ID route add {host} --header NAME --from-env VAR --save`"
        ))),
    }
}

/// `bottle approve ID REQ [--for DURATION] [--save [--yes]]`.
pub fn approve(id: &str, req: &str, duration: Option<&str>, save: SaveFlags) -> anyhow::Result<()> {
    let for_secs = duration
        .map(parse_duration)
        .transpose()?
        .map(|d| d.as_secs());
    let pending = if save.save {
        let (dir, _) = super::lifecycle::open(id)?;
        let request = Store::open(&dir.path().join(DIR))?.get(req)?;
        if request.status != Status::Pending {
            return Err(UsageError(format!(
                "request `{req}` was already decided ({}); nothing was changed",
                request.status.as_str()
            ))
            .into());
        }
        prepare_save(id, &approval_edits(&request.ask)?, save.yes)?
    } else {
        None
    };
    let r = decide(
        id,
        ControlRequest::Approve {
            id: req.to_string(),
            for_secs,
        },
    )?;
    let lasting = r.until.map_or_else(
        || "until the bottle is removed".to_string(),
        |u| format!("ends {}", when(u)),
    );
    let effect = match &r.ask {
        Ask::RequestEgress { .. } => "the proxy allows it now".to_string(),
        Ask::RequestCapability { name } => {
            match crate::kept::add_image_package(id, name)? {
                true => format!(
                    "package `{name}` joins the image of {id}: `bottle stop {id}` then `bottle resume {id}` rebuilds the image with it and brings the agent back with its workspace"
                ),
                false => "recorded; it is not a Debian package name, so act on it yourself".to_string(),
            }
        }
        _ => "recorded; act on it yourself (this kind of request changes nothing by itself)"
            .to_string(),
    };
    print(&format!(
        "approved {} ({}): {effect}; {lasting}\n",
        r.id,
        r.ask.summary()
    ))?;
    finish_save(pending.as_ref())
}

/// `bottle reject ID REQ [--reason TEXT]`.
pub fn reject(id: &str, req: &str, reason: Option<String>) -> anyhow::Result<()> {
    let r = decide(
        id,
        ControlRequest::Reject {
            id: req.to_string(),
            reason,
        },
    )?;
    print(&format!("rejected {} ({})\n", r.id, r.ask.summary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_command(line: &str) -> TokenFrom {
        TokenFrom {
            env: None,
            file: None,
            command: Some(line.into()),
        }
    }

    #[test]
    fn a_route_token_from_a_command_is_read_now_and_saved_as_its_argv() {
        let (route, token, edit) = route_from_host(
            "t-abcde",
            "api.example.com",
            "authorization".into(),
            "Bearer ".into(),
            None,
            from_command("printf '%s\\n' 'tok en-123'"),
        )
        .unwrap();
        assert_eq!(token, "tok en-123");
        let argv: Vec<String> = ["printf", "%s\\n", "tok en-123"].map(String::from).into();
        assert_eq!(route.token, TokenSource::Command(argv.clone()));
        let Edit::Route { source, .. } = edit else {
            panic!("not a route edit")
        };
        assert_eq!(
            source,
            crate::manifest::edit::TokenSourceEdit::Command(argv)
        );
        let refused = |line: &str| {
            route_from_host(
                "t-abcde",
                "api.example.com",
                "authorization".into(),
                String::new(),
                None,
                from_command(line),
            )
            .unwrap_err()
            .to_string()
        };
        // An unclosed quote or nothing at all is refused, and nothing runs.
        for bad in ["gh 'auth", "", "   "] {
            let err = refused(bad);
            assert!(err.contains("is not a command"), "{bad}: {err}");
        }
        // A command that fails leaves the bottle unchanged, and says so.
        let err = refused("false");
        assert!(err.contains("was not changed"), "{err}");
    }

    #[test]
    fn allow_targets_split_into_host_and_port() {
        assert_eq!(split_target("a.test").unwrap(), ("a.test".into(), None));
        assert_eq!(
            split_target("a.test:8443").unwrap(),
            ("a.test".into(), Some(8443))
        );
        assert!(split_target("a.test:0").is_err());
        assert!(split_target("a.test:x").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "0s", "m", "1.5h", "10x", "-3s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
