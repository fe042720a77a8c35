//! supervise: the agent asks for more, a human decides.
//!
//! An MCP server on `proxy.internal:9100` (streamable HTTP at `/mcp`) whose
//! tools file requests (`request_egress`, `request_route`,
//! `request_capability`), show the policy (`list_policy`) and a request's
//! state (`request_status`). No tool approves: decisions come from the
//! operator through a unix socket in the bottle's state directory, which the
//! guest cannot reach. An approved egress request widens the running proxy's
//! policy at once (its atomic reload) until the grant expires.
//!
//! * [`id`]: random request ids, validated on every read.
//! * [`request`]: what a request holds and the caps on its fields.
//! * [`store`]: requests as `supervise/<id>.json`, written atomically.
//! * [`ratelimit`]: how fast one bottle may file requests.
//! * [`grants`]: approved egress, with expiry, kept in `policy-grants.json`.
//! * [`supervisor`]: filing, deciding and expiring, with audit lines.
//! * [`server`]: the MCP tools (rmcp).
//! * [`http`]: `Host`/`Origin` checks and serving one connection.
//! * [`control`]: the operator's socket (`bottle approve`/`reject`).

pub mod control;
pub mod grants;
pub mod http;
pub mod id;
pub mod ratelimit;
pub mod request;
pub mod server;
pub mod store;
pub mod supervisor;

pub use supervisor::{Supervisor, SupervisorConfig};

/// The port supervise listens on behind `proxy.internal`.
pub const PORT: u16 = 9100;
/// The URL the agent's MCP client is given.
pub const URL: &str = "http://proxy.internal:9100/mcp";
/// The request directory inside the bottle's state directory.
pub const DIR: &str = "supervise";
/// Approved grants (the effective policy's additions), in the state directory.
pub const GRANTS_FILE: &str = "policy-grants.json";
/// The operator's control socket, in the state directory (mode 0600).
pub const CONTROL_SOCKET: &str = "supervise.ctl";

/// Why a request was refused or a decision failed. The text is shown to the
/// agent (tool errors) or to the operator (CLI), so it says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "too many requests: at most {limit} per minute; wait a minute and poll request_status \
         for the ones already filed"
    )]
    RateLimited { limit: usize },
    #[error(
        "{limit} requests are already pending; wait for the operator to decide them (poll \
         request_status)"
    )]
    TooManyPending { limit: usize },
    #[error(
        "this bottle has {limit} requests on record; the operator must remove old ones from \
         the state directory's supervise/ before more can be filed"
    )]
    TooManyStored { limit: usize },
    #[error("no request `{0}` in this bottle")]
    NotFound(String),
    #[error("request `{id}` was already decided ({status})")]
    AlreadyDecided { id: String, status: String },
    #[error("cannot record the request in the audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot apply the new policy to the proxy: {0}")]
    Reload(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SuperviseError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
