//! HTTP(S) guard proxy: allowlist, TLS interception, DLP, SSRF guard and
//! credential injection in one hop.
//!
//! Pipeline (see `docs/proxy.md`): CONNECT or absolute-form request → target
//! parse → host/port/IP-literal allowlist → (CONNECT) SNI == CONNECT host →
//! passthrough splice, or TLS terminated with a leaf of the bottle CA → Host
//! == SNI → method/path rules and git push → body read within the cap and
//! decoded → DLP on URL, headers, body (placeholders and real route tokens
//! included) → route header injected → audit `decided` line (a failed write
//! refuses the request: nothing is dialled) → resolve, SSRF check, dial the
//! checked address (pooled) → response (route hosts: real token redacted as
//! the body streams) → audit `completed` line when the response body ends,
//! fails or is dropped.

/// The audit log moved to the crate level (git-gate and the netstack write
/// to the same chain); this path stays for compatibility.
pub use crate::audit;
mod body;
pub mod budget;
mod ca;
pub mod clienthello;
mod conn;
mod counted;
pub mod decide;
pub mod dlp;
pub mod dlp_action;
mod handler;
pub mod net;
pub mod path;
mod ratelimit;
pub mod redact_json;
pub mod routes;
mod runtime;
pub mod stream;
pub mod target;
mod upstream;

pub use ca::{BottleCa, LEAF_CACHE_CAP};
pub use net::{
    AddressPin, Dialer, IpAllowlist, PinnedResolver, Resolver, SystemResolver, TcpDialer,
};
pub use runtime::ProxyRuntime;
pub use upstream::ConnectError;

/// Does ahead of time what every proxy's start needs and what is the same
/// for all of them: compiles the built-in scanner rules (~5 ms, on the
/// calling thread) and reads the system's roots (~3 ms, on a thread of its
/// own). A bundle runs it on a thread of its own as it starts; [`Proxy::new`]
/// then takes both ready (or waits for them).
pub fn warm_up() {
    let roots = std::thread::Builder::new()
        .name("roots-warm-up".into())
        .spawn(|| {
            let _ = upstream::system_root_store();
        });
    let _ = Scanner::builtin();
    if roots.is_err() {
        let _ = upstream::system_root_store();
    }
}

use crate::policy::Policy;
use crate::scanner::{Scanner, ScannerError};
use audit::{AuditError, AuditLog, AuditOptions, AuditRecord, Kind};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ratelimit::RateLimitedLog;
use routes::{Literals, ResolvedRoute, TokenError};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use upstream::{Connector, Upstream};

/// Default cap on request bodies (and decoded bodies) the proxy scans: 16 MiB.
pub const DEFAULT_BODY_CAP: usize = 16 << 20;
/// Default memory budget for buffered bodies, shared by all of a bottle's
/// requests: 256 MiB (eight bodies at the cap, raw and decoded).
pub const DEFAULT_BODY_BUDGET: usize = 256 << 20;
/// Default cap on client connections open at once (tunnels included): 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Why the proxy could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot make the bottle CA or a leaf certificate")]
    Ca(#[source] rcgen::Error),
    #[error("cannot load a leaf key into rustls")]
    LeafKey(#[source] rustls::Error),
    #[error("upstream TLS roots")]
    Roots(#[from] upstream::RootsError),
    #[error(transparent)]
    AllowIps(#[from] net::BadNet),
    #[error("egress route token")]
    Token(#[from] TokenError),
    #[error("DLP rules")]
    Scanner(#[from] ScannerError),
    #[error("audit log")]
    Audit(#[from] AuditError),
    #[error(
        "body_budget ({budget} bytes) is smaller than body_cap ({cap} bytes), so a body at the cap \
         could never be scanned; raise body_budget or lower body_cap"
    )]
    BudgetBelowCap { budget: usize, cap: usize },
    #[error(
        "max_connections must be between 1 and {}",
        tokio::sync::Semaphore::MAX_PERMITS
    )]
    MaxConnections,
}

/// Everything the proxy needs besides the CA and the scanner.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Bottle identity, written in every audit line.
    pub identity: String,
    pub policy: Policy,
    /// PEM roots trusted for upstream TLS besides the system roots.
    pub extra_root_pems: Vec<String>,
    /// Whether the system roots are trusted (tests turn this off).
    pub system_roots: bool,
    /// Where the chained audit log is appended; `None` keeps no log.
    pub audit_path: Option<PathBuf>,
    /// Size at which the audit file is rotated (the chain continues in the
    /// next file), and how many rotated files are kept.
    pub audit_max_bytes: u64,
    pub audit_keep: usize,
    pub resolver: Arc<dyn Resolver>,
    pub dialer: Arc<dyn Dialer>,
    /// Largest request body (raw and decoded) that is scanned; larger is refused.
    pub body_cap: usize,
    /// Bytes of bodies buffered at once across all requests (HTTP/2 streams
    /// included): request bodies raw and decoded, compressed route-host
    /// responses (others stream); a request that would go over gets 503. At
    /// least `body_cap`.
    pub body_budget: usize,
    /// Client connections served at once (an open CONNECT tunnel counts);
    /// one more gets 503 and is closed.
    pub max_connections: usize,
    /// Offer HTTP/2 to clients inside intercepted TLS.
    pub http2: bool,
}

impl ProxyConfig {
    /// Defaults: system resolver and roots, 16 MiB body cap, 256 MiB body
    /// budget, 1024 connections, HTTP/2 on, no audit file.
    pub fn new(identity: impl Into<String>, policy: Policy) -> Self {
        Self {
            identity: identity.into(),
            policy,
            extra_root_pems: Vec::new(),
            system_roots: true,
            audit_path: None,
            audit_max_bytes: audit::DEFAULT_MAX_BYTES,
            audit_keep: audit::DEFAULT_KEEP,
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
            body_cap: DEFAULT_BODY_CAP,
            body_budget: DEFAULT_BODY_BUDGET,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http2: true,
        }
    }
}

/// The policy in force, compiled; replaced as a whole on reload.
#[derive(Debug)]
pub struct State {
    pub policy: Policy,
    pub ips: IpAllowlist,
    pub routes: Vec<ResolvedRoute>,
    pub route_names: Vec<String>,
    pub literals: Literals,
    /// The same literals, for redacting route-host responses as they stream.
    pub redaction: Arc<stream::Redaction>,
    pub scanner: Scanner,
    /// Every rule (none disabled) plus the route tokens: what audit lines
    /// are redacted with.
    pub redactor: Scanner,
}

impl State {
    fn build(
        policy: Policy,
        base: &Scanner,
        previous: Option<&State>,
        fresh: &[ResolvedRoute],
    ) -> Result<Self, ProxyError> {
        let ips = IpAllowlist::parse(&policy.allow_ips)?;
        let mut routes = Vec::with_capacity(policy.routes.len());
        for route in &policy.routes {
            let reused = fresh
                .iter()
                .find(|r| &r.route == route)
                .or_else(|| previous.and_then(|p| p.routes.iter().find(|r| &r.route == route)))
                .cloned();
            routes.push(match reused {
                Some(r) => r,
                None => routes::resolve(route)?,
            });
        }
        let literal_secrets = routes
            .iter()
            .map(|r| {
                (
                    format!("route-token:{}", r.route.name),
                    r.token.expose().as_bytes().to_vec(),
                )
            })
            .collect();
        let scanner = base
            .clone()
            .disable_rules(&policy.dlp.disable_rules)?
            .with_literal_secrets(literal_secrets);
        // Found tokens show as `[redacted:route-token:<name>]`.
        let redactor = base.clone().with_literal_secrets(
            routes
                .iter()
                .map(|r| (r.route.name.clone(), r.token.expose().as_bytes().to_vec()))
                .collect(),
        );
        Ok(Self {
            ips,
            route_names: routes.iter().map(|r| r.route.name.clone()).collect(),
            literals: Literals::new(&routes),
            redaction: Arc::new(stream::Redaction::new(&routes)),
            routes,
            scanner,
            redactor,
            policy,
        })
    }
}

type HttpClient = Client<Connector, Full<Bytes>>;

/// Big or encoded bodies inspected at once: one per core, at most four.
fn scan_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// One bottle's proxy. Serve client connections with [`Proxy::serve`].
#[derive(Debug)]
pub struct Proxy {
    identity: String,
    ca: BottleCa,
    base_scanner: Scanner,
    state: Arc<RwLock<Arc<State>>>,
    upstream: Arc<Upstream>,
    client: HttpClient,
    audit: Arc<AuditLog>,
    body_cap: usize,
    budget: Arc<budget::Budget>,
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    /// One permit per body inspected on the blocking pool at a time.
    scans: Arc<tokio::sync::Semaphore>,
    http2: bool,
    log: RateLimitedLog,
}

impl Proxy {
    /// Build the proxy; reads every route token now (a missing source fails here).
    pub fn new(
        config: ProxyConfig,
        ca: BottleCa,
        scanner: Scanner,
    ) -> Result<Arc<Self>, ProxyError> {
        if config.body_budget < config.body_cap {
            return Err(ProxyError::BudgetBelowCap {
                budget: config.body_budget,
                cap: config.body_cap,
            });
        }
        if config.max_connections == 0
            || config.max_connections > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(ProxyError::MaxConnections);
        }
        let state = State::build(config.policy, &scanner, None, &[])?;
        let state = Arc::new(RwLock::new(Arc::new(state)));
        let tls = upstream::client_config(config.system_roots, &config.extra_root_pems)?;
        let upstream = Arc::new(Upstream {
            resolver: config.resolver,
            dialer: config.dialer,
            tls: Arc::new(tls),
            state: state.clone(),
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(Connector(upstream.clone()));
        let audit = Arc::new(match &config.audit_path {
            Some(path) => AuditLog::open(
                path,
                AuditOptions {
                    identity: config.identity.clone(),
                    max_bytes: config.audit_max_bytes,
                    keep: config.audit_keep,
                },
            )?,
            None => AuditLog::disabled(),
        });
        Ok(Arc::new(Self {
            identity: config.identity,
            ca,
            base_scanner: scanner,
            state,
            upstream,
            client,
            audit,
            body_cap: config.body_cap,
            budget: budget::Budget::new(config.body_budget),
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            scans: Arc::new(tokio::sync::Semaphore::new(scan_threads())),
            http2: config.http2,
            log: RateLimitedLog::new(20, Duration::from_secs(10)),
        }))
    }

    /// Swap in a new policy; open connections keep working, new requests
    /// are decided by it. Tokens of unchanged routes are not read again.
    pub fn reload(&self, policy: Policy) -> Result<(), ProxyError> {
        self.reload_with(policy, &[])
    }

    /// [`Proxy::reload`], with routes whose tokens were read elsewhere (the
    /// operator's `route add`): those are used instead of reading their
    /// source here. Tokens stay in memory only.
    pub fn reload_with(&self, policy: Policy, fresh: &[ResolvedRoute]) -> Result<(), ProxyError> {
        let current = self.current();
        let next = State::build(policy, &self.base_scanner, Some(&current), fresh)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.current().policy.clone()
    }

    /// The bottle CA (for its PEM and fingerprint).
    pub fn ca(&self) -> &BottleCa {
        &self.ca
    }

    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The audit log every guard of this bottle writes to (git-gate and the
    /// netstack summary share the proxy's chain).
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// An audit line for a request: host, path and query with secrets
    /// redacted (a blocked secret must not end up in the log).
    fn line(
        &self,
        state: &State,
        kind: Kind,
        peer: &str,
        method: &str,
        host: &str,
        path_and_query: &str,
    ) -> AuditRecord {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        // The common case, nothing to redact, costs one scan (two when the
        // URL has percent escapes).
        let clean = audit::redact::is_clean(&state.redactor, &format!("{host}\n{path_and_query}"));
        let redact = |t: &str| {
            if clean {
                t.to_string()
            } else {
                audit::redact::redact_url_part(&state.redactor, t).into_owned()
            }
        };
        let mut record = AuditRecord::new(kind, audit::Event::Decided);
        record.identity = self.identity.clone();
        record.peer = peer.to_string();
        record.method = method.to_string();
        record.host = redact(host);
        record.path = redact(path);
        record.query = query.map(redact);
        record
    }

    /// Record a refusal (one `decided` line with decision `deny`). The
    /// request is refused either way, so a failed write is only logged.
    fn record_deny(&self, mut record: AuditRecord, rule: &str, bytes: u64) {
        record.decision = "deny".into();
        record.rule = rule.to_string();
        record.bytes = bytes;
        if let Err(e) = self.audit.append(record) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Record a refusal of a request (`path_and_query` as the client sent it).
    fn record_refusal(
        &self,
        peer: &str,
        method: &str,
        host: &str,
        path_and_query: &str,
        rule: &str,
    ) {
        let state = self.current();
        let record = self.line(&state, Kind::Request, peer, method, host, path_and_query);
        self.record_deny(record, rule, 0);
    }

    /// 503 when the decision cannot be recorded: nothing is dialled.
    fn audit_failed(&self, e: &AuditError) -> decide::Refusal {
        let why = match e {
            AuditError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        self.log.warn(format_args!(
            "request refused: cannot write the audit log: {e}"
        ));
        decide::Refusal {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            rule: "audit-unavailable".into(),
            message: format!(
                "the audit log could not be written ({why}), so nothing was sent: the proxy \
                 refuses what it cannot record. The host running the bottle must free disk space \
                 in the bottle's state directory (or restart the bottle if the log stays closed)."
            ),
        }
    }
}

/// Accept connections forever, one task each (tests and benchmarks).
pub async fn serve_tcp(proxy: Arc<Proxy>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.serve(stream, peer.to_string()).await });
            }
            Err(e) => {
                proxy.log.warn(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HostPattern, Route, TokenSource};

    fn policy() -> Policy {
        Policy {
            allow: vec![HostPattern::parse("a.example").unwrap()],
            allow_ports: vec![443],
            ..Policy::default()
        }
    }

    fn proxy(policy: Policy) -> Result<Arc<Proxy>, ProxyError> {
        let mut config = ProxyConfig::new("t-abcde", policy);
        config.system_roots = false;
        Proxy::new(config, BottleCa::generate("t-abcde")?, Scanner::default())
    }

    #[test]
    fn new_fails_naming_the_route_when_its_token_source_is_missing() {
        let mut p = policy();
        p.routes.push(Route {
            name: "gh".into(),
            host: HostPattern::parse("a.example").unwrap(),
            header: "authorization".into(),
            prefix: String::new(),
            token: TokenSource::Env("BOTTLE_TEST_UNSET_TOKEN_VAR".into()),
        });
        let err = proxy(p).unwrap_err();
        assert!(matches!(err, ProxyError::Token(_)));
        assert!(std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("route `gh`"));
    }

    #[test]
    fn a_failed_reload_keeps_the_policy_in_force() {
        let proxy = proxy(policy()).unwrap();
        let mut bad = policy();
        bad.allow_ips.push("not-an-address".into());
        assert!(matches!(proxy.reload(bad), Err(ProxyError::AllowIps(_))));
        assert_eq!(proxy.policy(), policy());
        let mut good = policy();
        good.allow_ports.push(8443);
        proxy.reload(good.clone()).unwrap();
        assert_eq!(proxy.policy(), good);
    }

    #[test]
    fn a_budget_below_the_cap_or_no_connections_is_refused() {
        let mut config = ProxyConfig::new("t", policy());
        config.system_roots = false;
        config.body_budget = config.body_cap - 1;
        let err = Proxy::new(
            config.clone(),
            BottleCa::generate("t").unwrap(),
            Scanner::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ProxyError::BudgetBelowCap { .. }), "{err}");
        config.body_budget = DEFAULT_BODY_BUDGET;
        config.max_connections = 0;
        let err =
            Proxy::new(config, BottleCa::generate("t").unwrap(), Scanner::default()).unwrap_err();
        assert!(matches!(err, ProxyError::MaxConnections), "{err}");
    }

    #[test]
    fn extra_roots_that_hold_no_certificate_are_refused() {
        let mut config = ProxyConfig::new("t", policy());
        config.system_roots = false;
        config.extra_root_pems = vec!["not a pem".into()];
        let err =
            Proxy::new(config, BottleCa::generate("t").unwrap(), Scanner::default()).unwrap_err();
        assert!(matches!(err, ProxyError::Roots(_)));
    }
}
