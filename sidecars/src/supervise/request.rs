//! What a request holds, and the caps on what the agent may put in it.

use super::SuperviseError;
use crate::policy::HostPattern;
use serde::{Deserialize, Serialize};

/// Longest `reason`, in bytes.
pub const MAX_REASON: usize = 2048;
/// Longest host name (DNS limit).
pub const MAX_HOST: usize = 253;
/// Longest capability name.
pub const MAX_NAME: usize = 128;
/// Most methods or paths in one egress request.
pub const MAX_ITEMS: usize = 16;
/// Longest path prefix.
pub const MAX_PATH: usize = 256;

/// What the agent asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum Ask {
    /// Reach `host` (on `port`, with only `methods`/`paths` if given).
    RequestEgress {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        methods: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
    },
    /// Attach a credential the operator holds to requests to `host`.
    RequestRoute { host: String },
    /// Something the bottle lacks (a package, a tool, more resources).
    RequestCapability { name: String },
}

impl Ask {
    /// The tool that filed it.
    pub fn tool(&self) -> &'static str {
        match self {
            Self::RequestEgress { .. } => "request_egress",
            Self::RequestRoute { .. } => "request_route",
            Self::RequestCapability { .. } => "request_capability",
        }
    }

    /// The host or name it is about.
    pub fn subject(&self) -> &str {
        match self {
            Self::RequestEgress { host, .. } | Self::RequestRoute { host } => host,
            Self::RequestCapability { name } => name,
        }
    }

    /// One line for the operator: `request_egress api.example.com:443 GET /v1`.
    pub fn summary(&self) -> String {
        match self {
            Self::RequestEgress {
                host,
                port,
                methods,
                paths,
            } => {
                let mut s = format!("egress {host}");
                if let Some(p) = port {
                    s.push_str(&format!(":{p}"));
                }
                if !methods.is_empty() {
                    s.push_str(&format!(" methods {}", methods.join(",")));
                }
                if !paths.is_empty() {
                    s.push_str(&format!(" paths {}", paths.join(",")));
                }
                s
            }
            Self::RequestRoute { host } => format!("route {host}"),
            Self::RequestCapability { name } => format!("capability {name}"),
        }
    }

    /// Check every field against its cap and normalise host names and
    /// methods. Refusals say which field and what is allowed.
    pub fn validated(self) -> Result<Self, SuperviseError> {
        Ok(match self {
            Self::RequestEgress {
                host,
                port,
                methods,
                paths,
            } => {
                let host = valid_host(&host)?;
                if port == Some(0) {
                    return Err(invalid("`port` must be 1 to 65535"));
                }
                if methods.len() > MAX_ITEMS || paths.len() > MAX_ITEMS {
                    return Err(invalid(&format!(
                        "at most {MAX_ITEMS} `methods` and {MAX_ITEMS} `paths`"
                    )));
                }
                let methods = methods
                    .iter()
                    .map(|m| {
                        let up = m.to_ascii_uppercase();
                        if up.is_empty()
                            || up.len() > 16
                            || !up.bytes().all(|b| b.is_ascii_uppercase())
                        {
                            Err(invalid(
                                "`methods` are HTTP method names such as GET or POST",
                            ))
                        } else {
                            Ok(up)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for p in &paths {
                    if !p.starts_with('/')
                        || p.len() > MAX_PATH
                        || p.chars().any(|c| c.is_control() || c.is_whitespace())
                    {
                        return Err(invalid(&format!(
                            "`paths` are path prefixes starting with `/`, at most {MAX_PATH} bytes, \
                             without spaces"
                        )));
                    }
                }
                Self::RequestEgress {
                    host,
                    port,
                    methods,
                    paths,
                }
            }
            Self::RequestRoute { host } => Self::RequestRoute {
                host: valid_host(&host)?,
            },
            Self::RequestCapability { name } => {
                if name.trim().is_empty()
                    || name.len() > MAX_NAME
                    || name.chars().any(char::is_control)
                {
                    return Err(invalid(&format!(
                        "`name` must be 1 to {MAX_NAME} bytes of text on one line"
                    )));
                }
                Self::RequestCapability { name }
            }
        })
    }
}

/// Check a reason: not empty, at most [`MAX_REASON`] bytes.
pub fn valid_reason(reason: &str) -> Result<(), SuperviseError> {
    if reason.trim().is_empty() {
        return Err(invalid("`reason` is required: say why the task needs it"));
    }
    if reason.len() > MAX_REASON {
        return Err(invalid(&format!(
            "`reason` is {} bytes; at most {MAX_REASON} are accepted: say it shorter",
            reason.len()
        )));
    }
    Ok(())
}

fn valid_host(host: &str) -> Result<String, SuperviseError> {
    // An IP literal (the proxy refuses those unless in `allow_ips`).
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(ip.to_string());
    }
    if host.len() > MAX_HOST {
        return Err(invalid(&format!(
            "`host` is {} bytes; host names are at most {MAX_HOST}",
            host.len()
        )));
    }
    let pattern = HostPattern::parse(host).map_err(|e| {
        invalid(&format!(
            "`host` must be a host name such as api.example.com (or *.example.com), or an IP \
             address: {e}"
        ))
    })?;
    Ok(pattern.to_string())
}

fn invalid(why: &str) -> SuperviseError {
    SuperviseError::Invalid(why.to_string())
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// One request, as stored in `supervise/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    #[serde(flatten)]
    pub ask: Ask,
    pub reason: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<u64>,
    /// An approval's end (seconds since the epoch); none: until the bottle
    /// is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// The operator's note (a rejection's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Request {
    /// What `request_status` tells the agent.
    pub fn for_agent(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "status": self.status.as_str(),
            "request": self.ask.summary(),
        });
        if let Some(until) = self.until {
            v["until_unix"] = until.into();
        }
        if let Some(note) = &self.note {
            v["note"] = note.clone().into();
        }
        v["next"] = match self.status {
            Status::Pending => "A human decides; poll request_status again in a little while.",
            Status::Approved => match self.ask {
                Ask::RequestEgress { .. } => {
                    "Approved: the proxy allows it now; retry the request."
                }
                _ => "Approved: the operator acts on it (this may need a restart of the bottle).",
            },
            Status::Rejected => {
                "Rejected: do not ask again for the same thing; find another way or report it."
            }
        }
        .into();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(host: &str) -> Ask {
        Ask::RequestEgress {
            host: host.into(),
            port: None,
            methods: vec![],
            paths: vec![],
        }
    }

    #[test]
    fn hosts_are_normalised_and_bad_ones_refused() {
        assert_eq!(
            egress("API.Example.COM").validated().unwrap(),
            egress("api.example.com")
        );
        assert_eq!(egress("[::1]").validated().unwrap(), egress("::1"));
        assert_eq!(egress("10.0.0.1").validated().unwrap(), egress("10.0.0.1"));
        for bad in ["", "a b", "http://x.test/", "x.test/../y", &"a".repeat(300)] {
            assert!(egress(bad).validated().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oversized_fields_are_refused_with_the_cap_named() {
        let e = valid_reason(&"x".repeat(10 << 20)).unwrap_err().to_string();
        assert!(e.contains("2048"), "{e}");
        assert!(valid_reason(" ").is_err());
        assert!(valid_reason(&"x".repeat(MAX_REASON)).is_ok());
        let many = Ask::RequestEgress {
            host: "x.test".into(),
            port: Some(443),
            methods: vec!["GET".into(); 17],
            paths: vec![],
        };
        assert!(many.validated().is_err());
        let path = Ask::RequestEgress {
            host: "x.test".into(),
            port: Some(443),
            methods: vec!["get".into()],
            paths: vec!["no-slash".into()],
        };
        assert!(path.validated().is_err());
        let name = Ask::RequestCapability {
            name: "x".repeat(MAX_NAME + 1),
        };
        assert!(name.validated().is_err());
    }

    #[test]
    fn a_request_round_trips_through_json() {
        let r = Request {
            id: super::super::id::generate(),
            ask: Ask::RequestEgress {
                host: "x.test".into(),
                port: Some(8443),
                methods: vec!["GET".into()],
                paths: vec!["/v1".into()],
            },
            reason: "docs".into(),
            created: 1,
            status: Status::Pending,
            decided: None,
            until: None,
            note: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""tool":"request_egress""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
    }
}
