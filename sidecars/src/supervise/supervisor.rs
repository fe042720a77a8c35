//! Filing, deciding and expiring requests. The agent's side (the MCP tools)
//! can only file requests and read them; the operator's side (the control
//! socket) decides. Every request and every decision is a line in the
//! bottle's audit log, written before it takes effect (fail closed: a
//! request or decision that cannot be recorded is refused).

use super::grants::{effective, Grant, Grants};
use super::ratelimit::RateLimit;
use super::request::{valid_reason, Ask, Request, Status};
use super::store::Store;
use super::{id, now_secs, SuperviseError};
use crate::audit::{AuditLog, AuditRecord, Event, Kind};
use crate::policy::{HostPattern, Policy, Route};
use crate::proxy::routes::ResolvedRoute;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Applies a policy to the running proxy (its atomic reload), with the
/// routes whose tokens the operator just handed over (read on the host by
/// `bottle policy ID route add`; the proxy reads every other route's own).
pub type ApplyPolicy = Arc<dyn Fn(Policy, &[ResolvedRoute]) -> Result<(), String> + Send + Sync>;

/// Longest `detail` in an audit line.
const MAX_DETAIL: usize = 300;

pub struct SupervisorConfig {
    /// The bottle's state directory (`supervise/`, `policy-grants.json`).
    pub state_dir: PathBuf,
    /// The manifest's policy; grants are added to it.
    pub base: Policy,
    /// Names of the git remotes git-gate serves.
    pub git_remotes: Vec<String>,
    pub audit: Arc<AuditLog>,
    pub apply: ApplyPolicy,
    /// Most requests pending at once.
    pub max_pending: usize,
    /// Most requests kept on disk (pending and decided).
    pub max_stored: usize,
    /// Most requests filed per minute.
    pub per_minute: usize,
}

impl std::fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("state_dir", &self.state_dir)
            .field("max_pending", &self.max_pending)
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl SupervisorConfig {
    /// Defaults: 32 pending, 1024 stored, 10 a minute.
    pub fn new(state_dir: PathBuf, base: Policy, audit: Arc<AuditLog>, apply: ApplyPolicy) -> Self {
        Self {
            state_dir,
            base,
            git_remotes: Vec::new(),
            audit,
            apply,
            max_pending: 32,
            max_stored: 1024,
            per_minute: 10,
        }
    }
}

pub struct Supervisor {
    config: SupervisorConfig,
    store: Store,
    /// Held across every read-modify-write of requests and grants.
    grants: Mutex<Grants>,
    limiter: Mutex<RateLimit>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Open the bottle's requests and grants, drop expired grants and apply
    /// the effective policy to the proxy.
    pub fn new(config: SupervisorConfig) -> Result<Arc<Self>, SuperviseError> {
        let store = Store::open(&config.state_dir.join(super::DIR))?;
        let mut grants = Grants::load(&config.state_dir.join(super::GRANTS_FILE))?;
        let limiter = RateLimit::new(config.per_minute, Duration::from_secs(60));
        let now = now_secs();
        if grants.expire(now) {
            grants.save(&config.state_dir.join(super::GRANTS_FILE))?;
        }
        (config.apply)(effective(&config.base, &grants, now), &[])
            .map_err(SuperviseError::Reload)?;
        Ok(Arc::new(Self {
            config,
            store,
            grants: Mutex::new(grants),
            limiter: Mutex::new(limiter),
        }))
    }

    fn lock_grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grants_path(&self) -> PathBuf {
        self.config.state_dir.join(super::GRANTS_FILE)
    }

    fn audit(
        &self,
        peer: &str,
        decision: &str,
        ask: &Ask,
        detail: String,
    ) -> Result<(), SuperviseError> {
        let mut record = AuditRecord::new(Kind::Supervise, Event::Decided);
        record.peer = peer.to_string();
        record.decision = decision.to_string();
        record.rule = ask.tool().to_string();
        record.host = ask.subject().chars().take(MAX_DETAIL).collect();
        record.detail = Some(detail.chars().take(MAX_DETAIL).collect());
        self.config.audit.append(record)?;
        Ok(())
    }

    /// File a request from the agent: validated, rate-limited, capped,
    /// audited, stored. Returns it pending.
    pub fn submit(&self, ask: Ask, reason: &str, peer: &str) -> Result<Request, SuperviseError> {
        let ask = ask.validated()?;
        valid_reason(reason)?;
        let _guard = self.lock_grants();
        {
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            if !limiter.try_take(Instant::now()) {
                return Err(SuperviseError::RateLimited {
                    limit: limiter.limit(),
                });
            }
        }
        let (pending, stored) = self.store.counts()?;
        if pending >= self.config.max_pending {
            return Err(SuperviseError::TooManyPending {
                limit: self.config.max_pending,
            });
        }
        if stored >= self.config.max_stored {
            return Err(SuperviseError::TooManyStored {
                limit: self.config.max_stored,
            });
        }
        let request = Request {
            id: id::generate(),
            ask,
            reason: reason.to_string(),
            created: now_secs(),
            status: Status::Pending,
            decided: None,
            until: None,
            note: None,
        };
        self.audit(
            peer,
            "request",
            &request.ask,
            format!("request {}: {}", request.id, request.reason),
        )?;
        self.store.save(&request)?;
        Ok(request)
    }

    /// A request, by id (validated).
    pub fn status(&self, id: &str) -> Result<Request, SuperviseError> {
        self.store.get(id)
    }

    /// Every request of the bottle, oldest first.
    pub fn list(&self) -> Result<Vec<Request>, SuperviseError> {
        self.store.list()
    }

    /// The operator approves `id`, for `duration` (none: as long as the
    /// bottle exists). An egress request widens the running policy at once.
    pub fn approve(&self, id: &str, duration: Option<Duration>) -> Result<Request, SuperviseError> {
        let mut grants = self.lock_grants();
        let mut request = self.pending(id)?;
        let now = now_secs();
        let grants = &mut *grants;
        let until = duration.map(|d| now + d.as_secs().max(1));
        let lasting = until.map_or_else(
            || "until the bottle is removed".to_string(),
            |_| format!("for {} s", duration.map_or(0, |d| d.as_secs().max(1))),
        );
        self.audit(
            "operator",
            "allow",
            &request.ask,
            format!("request {} approved {lasting}", request.id),
        )?;
        if let Ask::RequestEgress {
            host,
            port,
            methods,
            paths,
        } = &request.ask
        {
            let mut next = grants.clone();
            next.denied.retain(|d| d != host);
            next.grants.push(Grant {
                request: request.id.clone(),
                host: host.clone(),
                port: *port,
                methods: methods.clone(),
                paths: paths.clone(),
                until,
            });
            self.swap(grants, next, now)?;
        }
        request.status = Status::Approved;
        request.decided = Some(now);
        request.until = until;
        self.store.save(&request)?;
        Ok(request)
    }

    /// Save `next` and apply it to the proxy; on a failed reload the old
    /// grants are saved back and stay in force.
    fn swap(&self, grants: &mut Grants, next: Grants, now: u64) -> Result<(), SuperviseError> {
        self.swap_with(grants, next, now, &[])
    }

    fn swap_with(
        &self,
        grants: &mut Grants,
        next: Grants,
        now: u64,
        fresh: &[ResolvedRoute],
    ) -> Result<(), SuperviseError> {
        next.save(&self.grants_path())?;
        if let Err(e) = (self.config.apply)(effective(&self.config.base, &next, now), fresh) {
            grants.save(&self.grants_path())?;
            return Err(SuperviseError::Reload(e));
        }
        *grants = next;
        Ok(())
    }

    /// The operator allows `host` (and `port`) directly, without a request
    /// (`bottle policy ID allow`). Returns the grant.
    pub fn allow(
        &self,
        host: &str,
        port: Option<u16>,
        duration: Option<Duration>,
    ) -> Result<Grant, SuperviseError> {
        let ask = Ask::RequestEgress {
            host: host.to_string(),
            port,
            methods: vec![],
            paths: vec![],
        }
        .validated()?;
        let Ask::RequestEgress { host, .. } = &ask else {
            return Err(SuperviseError::Invalid("not an egress grant".into()));
        };
        let mut grants = self.lock_grants();
        let now = now_secs();
        let grant = Grant {
            request: format!("operator-{}", id::generate()),
            host: host.clone(),
            port,
            methods: vec![],
            paths: vec![],
            until: duration.map(|d| now + d.as_secs().max(1)),
        };
        self.audit(
            "operator",
            "allow",
            &ask,
            format!("{} allowed by the operator", grant.request),
        )?;
        let mut next = grants.clone();
        next.denied.retain(|d| d != host);
        next.grants.push(grant.clone());
        self.swap(&mut grants, next, now)?;
        Ok(grant)
    }

    /// The operator denies `host` (`bottle policy ID deny`): its grants are
    /// removed and the host leaves the allowlist, the manifest's included,
    /// until allowed again.
    pub fn deny(&self, host: &str) -> Result<(), SuperviseError> {
        let ask = Ask::RequestEgress {
            host: host.to_string(),
            port: None,
            methods: vec![],
            paths: vec![],
        }
        .validated()?;
        let host = ask.subject().to_string();
        let mut grants = self.lock_grants();
        self.audit(
            "operator",
            "deny",
            &ask,
            format!("{host} denied by the operator"),
        )?;
        let mut next = grants.clone();
        next.grants.retain(|g| g.host != host);
        if !next.denied.contains(&host) {
            next.denied.push(host);
        }
        self.swap(&mut grants, next, now_secs())
    }

    /// The operator adds an egress route (`bottle policy ID route add`):
    /// `route` names where its token is read from (kept in the grants, so a
    /// restarted bundle reads it there); `token` is the value the CLI read
    /// on the host, handed to the proxy in memory only. A route the
    /// manifest or an earlier `route add` has for the same host is replaced.
    pub fn add_route(&self, route: Route, token: &str) -> Result<(), SuperviseError> {
        let resolved = crate::proxy::routes::with_token(&route, token)
            .map_err(|e| SuperviseError::Invalid(e.to_string()))?;
        let host = route.host.to_string();
        let mut grants = self.lock_grants();
        let now = now_secs();
        let current = effective(&self.config.base, &grants, now);
        if let Some(other) = current
            .routes
            .iter()
            .find(|r| r.name == route.name && r.host != route.host)
        {
            return Err(SuperviseError::Invalid(format!(
                "route name `{}` is taken by the route for `{}`; pick another with --name",
                route.name, other.host
            )));
        }
        let ask = Ask::RequestRoute { host: host.clone() };
        self.audit(
            "operator",
            "allow",
            &ask,
            format!(
                "route `{}` for {host} (header {}) added by the operator",
                route.name, route.header
            ),
        )?;
        let mut next = grants.clone();
        next.routes.retain(|r| r.host != route.host);
        if !next.unrouted.contains(&host) {
            next.unrouted.push(host);
        }
        next.routes.push(route);
        self.swap_with(&mut grants, next, now, &[resolved])
    }

    /// The operator removes the routes for `host` (`bottle policy ID route
    /// rm`), the manifest's included; false when there was none.
    pub fn remove_route(&self, host: &str) -> Result<bool, SuperviseError> {
        let pattern = HostPattern::parse(host)
            .map_err(|e| SuperviseError::Invalid(format!("`{host}` is not a host: {e}")))?;
        let mut grants = self.lock_grants();
        let now = now_secs();
        if !effective(&self.config.base, &grants, now)
            .routes
            .iter()
            .any(|r| r.host == pattern)
        {
            return Ok(false);
        }
        let host = pattern.to_string();
        self.audit(
            "operator",
            "deny",
            &Ask::RequestRoute { host: host.clone() },
            format!("route for {host} removed by the operator"),
        )?;
        let mut next = grants.clone();
        next.routes.retain(|r| r.host != pattern);
        if !next.unrouted.contains(&host) {
            next.unrouted.push(host);
        }
        self.swap(&mut grants, next, now)?;
        Ok(true)
    }

    /// The operator rejects `id`, with an optional note for the agent.
    pub fn reject(&self, id: &str, note: Option<String>) -> Result<Request, SuperviseError> {
        let _grants = self.lock_grants();
        let mut request = self.pending(id)?;
        let note = note.map(|n| {
            n.chars()
                .take(super::request::MAX_REASON)
                .collect::<String>()
        });
        self.audit(
            "operator",
            "deny",
            &request.ask,
            format!(
                "request {} rejected{}",
                request.id,
                note.as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ),
        )?;
        request.status = Status::Rejected;
        request.decided = Some(now_secs());
        request.note = note;
        self.store.save(&request)?;
        Ok(request)
    }

    fn pending(&self, id: &str) -> Result<Request, SuperviseError> {
        let request = self.store.get(id)?;
        if request.status != Status::Pending {
            return Err(SuperviseError::AlreadyDecided {
                id: request.id,
                status: request.status.as_str().to_string(),
            });
        }
        Ok(request)
    }

    /// Remove grants that ended from the running policy; true if any did.
    pub fn expire(&self) -> Result<bool, SuperviseError> {
        let mut grants = self.lock_grants();
        let now = now_secs();
        let ended: Vec<Grant> = grants
            .grants
            .iter()
            .filter(|g| !g.live(now))
            .cloned()
            .collect();
        if ended.is_empty() {
            return Ok(false);
        }
        let mut next = grants.clone();
        next.expire(now);
        (self.config.apply)(effective(&self.config.base, &next, now), &[])
            .map_err(SuperviseError::Reload)?;
        next.save(&self.grants_path())?;
        *grants = next;
        for g in ended {
            let ask = Ask::RequestEgress {
                host: g.host.clone(),
                port: g.port,
                methods: vec![],
                paths: vec![],
            };
            // The grant is already gone (fail closed); a lost line is logged.
            if let Err(e) = self.audit(
                "operator",
                "expire",
                &ask,
                format!("request {} expired", g.request),
            ) {
                tracing::warn!("supervise: cannot record an expiry: {e}");
            }
        }
        Ok(true)
    }

    /// Expire grants every half second until the task is dropped.
    pub fn spawn_expiry(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if let Err(e) = me.expire() {
                    tracing::warn!("supervise: {e}");
                }
            }
        })
    }

    /// What `list_policy` shows the agent: the effective allowlist, ports,
    /// rules, route hosts (never a credential or where it comes from), git
    /// remote names and the live grants.
    pub fn policy_view(&self) -> serde_json::Value {
        let grants = self.lock_grants().clone();
        let now = now_secs();
        let p = effective(&self.config.base, &grants, now);
        serde_json::json!({
            "allow": p.allow.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "allow_ports": p.allow_ports,
            "allow_ips": p.allow_ips,
            "passthrough": p.passthrough.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "rules": p.rules.iter().map(|r| serde_json::json!({
                "host": r.host.to_string(), "methods": r.methods, "paths": r.paths,
            })).collect::<Vec<_>>(),
            "routes": p.routes.iter().map(|r| serde_json::json!({
                "name": r.name, "host": r.host.to_string(), "header": r.header,
            })).collect::<Vec<_>>(),
            "git_remotes": self.config.git_remotes,
            "denied": grants.denied,
            "grants": grants.grants.iter().filter(|g| g.live(now)).map(|g| serde_json::json!({
                "request": g.request, "host": g.host, "port": g.port,
                "until_unix": g.until,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HostPattern;

    struct Fixture {
        _dir: tempfile::TempDir,
        sup: Arc<Supervisor>,
        applied: Arc<Mutex<Vec<Policy>>>,
        audit: PathBuf,
    }

    fn base() -> Policy {
        Policy {
            allow: vec![HostPattern::parse("a.test").unwrap()],
            allow_ports: vec![443],
            ..Policy::default()
        }
    }

    fn fixture_in(dir: tempfile::TempDir) -> Fixture {
        let audit = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&audit, crate::audit::AuditOptions::new("b1")).unwrap());
        let applied = Arc::new(Mutex::new(Vec::new()));
        let a = applied.clone();
        let apply: ApplyPolicy = Arc::new(move |p, _| {
            a.lock().unwrap().push(p);
            Ok(())
        });
        let sup = Supervisor::new(SupervisorConfig::new(
            dir.path().to_path_buf(),
            base(),
            log,
            apply,
        ))
        .unwrap();
        Fixture {
            _dir: dir,
            sup,
            applied,
            audit,
        }
    }

    fn fixture() -> Fixture {
        fixture_in(tempfile::tempdir().unwrap())
    }

    fn egress(host: &str) -> Ask {
        Ask::RequestEgress {
            host: host.into(),
            port: Some(8443),
            methods: vec![],
            paths: vec![],
        }
    }

    fn last_policy(f: &Fixture) -> Policy {
        f.applied.lock().unwrap().last().cloned().unwrap()
    }

    #[test]
    fn an_approved_egress_widens_the_running_policy_and_expires() {
        let f = fixture();
        let r = f.sup.submit(egress("b.test"), "docs", "guest").unwrap();
        assert_eq!(r.status, Status::Pending);
        assert_eq!(last_policy(&f), base());
        let approved = f.sup.approve(&r.id, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(approved.status, Status::Approved);
        let p = last_policy(&f);
        assert!(p.allow.contains(&HostPattern::parse("b.test").unwrap()));
        assert!(p.allow_ports.contains(&8443));
        assert!(matches!(
            f.sup.approve(&r.id, None),
            Err(SuperviseError::AlreadyDecided { .. })
        ));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(f.sup.expire().unwrap());
        assert_eq!(last_policy(&f), base());
        let audit = std::fs::read_to_string(&f.audit).unwrap();
        for word in [
            r#""decision":"request""#,
            r#""decision":"allow""#,
            r#""decision":"expire""#,
        ] {
            assert!(audit.contains(word), "{word} in {audit}");
        }
        crate::audit::read_verified(&f.audit).unwrap();
    }

    #[test]
    fn the_operator_allows_and_denies_directly() {
        let f = fixture();
        let g = f.sup.allow("B.test", Some(8080), None).unwrap();
        assert_eq!(g.host, "b.test");
        let p = last_policy(&f);
        assert!(p.allow.contains(&HostPattern::parse("b.test").unwrap()));
        assert!(p.allow_ports.contains(&8080));
        f.sup.deny("b.test").unwrap();
        f.sup.deny("a.test").unwrap();
        assert!(last_policy(&f).allow.is_empty(), "the manifest's host too");
        assert!(f.sup.allow("not a host", None, None).is_err());
        f.sup.allow("a.test", None, None).unwrap();
        assert_eq!(
            last_policy(&f).allow,
            vec![HostPattern::parse("a.test").unwrap()]
        );
        let audit = std::fs::read_to_string(&f.audit).unwrap();
        assert_eq!(audit.matches(r#""decision":"deny""#).count(), 2);
    }

    #[test]
    fn an_added_route_reaches_the_proxy_with_its_token_and_the_disk_without() {
        use crate::policy::TokenSource;
        let t = tempfile::tempdir().unwrap();
        /// Each applied policy with the tokens handed over with it.
        type Applied = Vec<(Policy, Vec<String>)>;
        let seen: Arc<Mutex<Applied>> = Arc::default();
        let s2 = seen.clone();
        let apply: ApplyPolicy = Arc::new(move |p, fresh| {
            let tokens = fresh.iter().map(|r| r.token.expose().to_string()).collect();
            s2.lock().unwrap().push((p, tokens));
            Ok(())
        });
        let sup = Supervisor::new(SupervisorConfig::new(
            t.path().to_path_buf(),
            base(),
            Arc::new(AuditLog::disabled()),
            apply,
        ))
        .unwrap();
        let route = Route {
            name: "a-test".into(),
            host: HostPattern::parse("a.test").unwrap(),
            header: "x-api-key".into(),
            prefix: String::new(),
            token: TokenSource::Env("A_TOKEN".into()),
        };
        assert!(sup.add_route(route.clone(), "").is_err(), "an empty token");
        sup.add_route(route.clone(), "s3cr3t-value\n").unwrap();
        let (p, tokens) = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(p.routes, vec![route.clone()]);
        assert_eq!(tokens, ["s3cr3t-value"]);
        let on_disk = std::fs::read_to_string(t.path().join(super::super::GRANTS_FILE)).unwrap();
        assert!(
            on_disk.contains("A_TOKEN") && !on_disk.contains("s3cr3t"),
            "{on_disk}"
        );
        assert!(sup.policy_view().to_string().contains("x-api-key"));
        assert!(sup.remove_route("a.test").unwrap());
        assert!(!sup.remove_route("a.test").unwrap());
        assert!(seen.lock().unwrap().last().unwrap().0.routes.is_empty());
    }

    #[test]
    fn grants_and_requests_survive_a_restart() {
        let f = fixture();
        let r = f.sup.submit(egress("b.test"), "docs", "guest").unwrap();
        let pending = f.sup.submit(egress("c.test"), "more", "guest").unwrap();
        f.sup.approve(&r.id, None).unwrap();
        let Fixture { _dir, .. } = f;
        let again = fixture_in(_dir);
        assert!(last_policy(&again)
            .allow
            .contains(&HostPattern::parse("b.test").unwrap()));
        assert_eq!(
            again.sup.status(&pending.id).unwrap().status,
            Status::Pending
        );
        again.sup.reject(&pending.id, Some("no".into())).unwrap();
        assert_eq!(
            again.sup.status(&pending.id).unwrap().note.as_deref(),
            Some("no")
        );
    }

    #[test]
    fn floods_are_rate_limited_and_pending_requests_capped() {
        let f = fixture();
        let mut filed = 0;
        let mut limited = 0;
        for _ in 0..10_000 {
            match f.sup.submit(egress("b.test"), "x", "guest") {
                Ok(_) => filed += 1,
                Err(SuperviseError::RateLimited { limit: 10 }) => limited += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((filed, limited), (10, 9_990));
        // The pending cap, with the rate limit out of the way.
        let t = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::disabled());
        let mut c =
            SupervisorConfig::new(t.path().to_path_buf(), base(), log, Arc::new(|_, _| Ok(())));
        c.per_minute = 1000;
        let sup = Supervisor::new(c).unwrap();
        for _ in 0..32 {
            sup.submit(egress("b.test"), "x", "guest").unwrap();
        }
        let e = sup.submit(egress("b.test"), "x", "guest").unwrap_err();
        assert!(
            matches!(e, SuperviseError::TooManyPending { limit: 32 }),
            "{e}"
        );
        assert!(e.to_string().contains("32 requests are already pending"));
    }
}
