//! The operator's control socket: `<state dir>/supervise.ctl`, mode 0600,
//! in a directory only the operator can enter and the guest never sees.
//! One JSON line in (approve or reject), one JSON line out. Only the bundle
//! writes requests, grants and audit lines; the CLI asks it here.

use super::request::Request;
use super::Supervisor;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest control line.
const MAX_LINE: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    Approve {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
    },
    Reject {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Allow a host (and port) without a request.
    Allow {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
    },
    /// Remove a host from the allowlist.
    Deny { host: String },
    /// Add an egress route; `token` is its value, read on the host by the
    /// CLI (the route names only where it comes from).
    RouteAdd {
        route: crate::policy::Route,
        token: Secret,
    },
    /// Remove the routes for a host.
    RouteRm { host: String },
    /// The effective policy.
    Show,
}

/// A credential on its way to the bundle: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlResponse {
    Ok(Request),
    /// A direct change: what it did.
    Done(String),
    /// The effective policy (as `list_policy` shows it).
    Policy(serde_json::Value),
    Error(String),
}

fn handle(supervisor: &Supervisor, line: &str) -> ControlResponse {
    let request: ControlRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return ControlResponse::Error(format!("not a control request: {e}")),
    };
    let result = match request {
        ControlRequest::Approve { id, for_secs } => {
            supervisor.approve(&id, for_secs.map(Duration::from_secs))
        }
        ControlRequest::Reject { id, reason } => supervisor.reject(&id, reason),
        ControlRequest::Allow {
            host,
            port,
            for_secs,
        } => {
            return match supervisor.allow(&host, port, for_secs.map(Duration::from_secs)) {
                Ok(g) => ControlResponse::Done(format!(
                    "allowed {}{}{}",
                    g.host,
                    g.port.map(|p| format!(" and port {p}")).unwrap_or_default(),
                    g.until
                        .map(|u| format!(" until {u} (unix time)"))
                        .unwrap_or_default()
                )),
                Err(e) => ControlResponse::Error(e.to_string()),
            }
        }
        ControlRequest::Deny { host } => {
            return match supervisor.deny(&host) {
                Ok(()) => ControlResponse::Done(format!("denied {host}")),
                Err(e) => ControlResponse::Error(e.to_string()),
            }
        }
        ControlRequest::RouteAdd { route, token } => {
            let what = format!(
                "route `{}` for {} (header {}) added",
                route.name, route.host, route.header
            );
            return match supervisor.add_route(route, &token.0) {
                Ok(()) => ControlResponse::Done(what),
                Err(e) => ControlResponse::Error(e.to_string()),
            };
        }
        ControlRequest::RouteRm { host } => {
            return match supervisor.remove_route(&host) {
                Ok(true) => ControlResponse::Done(format!("route for {host} removed")),
                Ok(false) => ControlResponse::Error(format!(
                    "no route for `{host}` (`bottle policy ID` lists them)"
                )),
                Err(e) => ControlResponse::Error(e.to_string()),
            };
        }
        ControlRequest::Show => return ControlResponse::Policy(supervisor.policy_view()),
    };
    match result {
        Ok(r) => ControlResponse::Ok(r),
        Err(e) => ControlResponse::Error(e.to_string()),
    }
}

/// Serve the control socket until the listener fails.
pub async fn serve(listener: tokio::net::UnixListener, supervisor: Arc<Supervisor>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("supervise control: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sup = supervisor.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE as u64));
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
            let response = match read {
                Ok(Ok(_)) => tokio::task::spawn_blocking(move || handle(&sup, &line))
                    .await
                    .unwrap_or_else(|_| ControlResponse::Error("the decision failed".into())),
                _ => ControlResponse::Error("no request line".into()),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

/// Bind the control socket at `path` (mode 0600, a stale one replaced).
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The CLI's side: send one request to the bundle and read its answer.
pub fn call(path: &Path, request: &ControlRequest) -> std::io::Result<ControlResponse> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| {
        std::io::Error::other(format!(
            "the bundle's answer is not a control response: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::request::{Ask, Status};
    use super::super::SupervisorConfig;
    use super::*;

    #[tokio::test]
    async fn approve_and_reject_over_the_socket() {
        let t = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(SupervisorConfig::new(
            t.path().to_path_buf(),
            crate::policy::Policy::default(),
            Arc::new(crate::audit::AuditLog::disabled()),
            Arc::new(|_, _| Ok(())),
        ))
        .unwrap();
        let sock = t.path().join("supervise.ctl");
        tokio::spawn(serve(bind(&sock).unwrap(), sup.clone()));
        let ask = Ask::RequestCapability { name: "jq".into() };
        let a = sup.submit(ask.clone(), "x", "g").unwrap();
        let b = sup.submit(ask, "y", "g").unwrap();
        let (s2, a_id, b_id) = (sock.clone(), a.id.clone(), b.id.clone());
        let answers = tokio::task::spawn_blocking(move || {
            (
                call(
                    &s2,
                    &ControlRequest::Approve {
                        id: a_id.clone(),
                        for_secs: Some(5),
                    },
                )
                .unwrap(),
                call(
                    &s2,
                    &ControlRequest::Reject {
                        id: b_id,
                        reason: Some("no".into()),
                    },
                )
                .unwrap(),
                call(
                    &s2,
                    &ControlRequest::Approve {
                        id: a_id,
                        for_secs: None,
                    },
                )
                .unwrap(),
                call(
                    &s2,
                    &ControlRequest::Approve {
                        id: "../x".into(),
                        for_secs: None,
                    },
                )
                .unwrap(),
            )
        })
        .await
        .unwrap();
        assert!(
            matches!(&answers.0, ControlResponse::Ok(r) if r.status == Status::Approved && r.until.is_some())
        );
        assert!(matches!(&answers.1, ControlResponse::Ok(r) if r.status == Status::Rejected));
        assert!(matches!(&answers.2, ControlResponse::Error(e) if e.contains("already decided")));
        assert!(matches!(&answers.3, ControlResponse::Error(e) if e.contains("not a request id")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
