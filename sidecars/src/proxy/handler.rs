//! One HTTP request to an allowed target: policy re-check (reload-aware),
//! method/path rules, body within the cap, DLP, route injection, the pooled
//! upstream call, response redaction for route hosts (streamed), audit (`decided` before
//! the dial, `completed` when the response body ends).

use super::body::{self, ReadError};
use super::budget::{self, OverBudget};
use super::counted::AuditedBody;
use super::decide::{self, Refusal};
use super::dlp::{self, BodyError, Dlp, Hit};
use super::dlp_action::{self, Verdict};
use super::stream::RedactedBody;
use super::target::Target;
use super::upstream::ConnectError;
use super::{Proxy, State};
use crate::audit::{Completion, Exchange, Kind, Outcome};
use bottle_util::error_chain;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use std::sync::Arc;

/// Response bodies handed to hyper.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Whether the request arrived in plain HTTP or inside an intercepted tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The proxy's own answer to a refused request.
pub fn refusal_response(refusal: &Refusal) -> Response<Body> {
    let mut resp = Response::new(full(refusal.body()));
    *resp.status_mut() = refusal.status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(rule) = HeaderValue::from_str(&refusal.rule) {
        headers.insert(HeaderName::from_static("x-bottle-rule"), rule);
    }
    if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Proxy {
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        target: Arc<Target>,
        scheme: Scheme,
        peer: Arc<String>,
    ) -> Response<Body> {
        let state = self.current();
        let method = req.method().as_str().to_string();
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let line = self.line(&state, Kind::Request, &peer, &method, &target.host, &pq);
        let deny = |refusal: Refusal, bytes: u64| {
            self.record_deny(line.clone(), &refusal.rule, bytes);
            refusal_response(&refusal)
        };
        if let Err(r) = decide::check_target(&state.policy, &state.ips, &target) {
            return deny(r, 0);
        }
        if let Err(r) = decide::check_request(&state.policy, &target, &method, &pq) {
            return deny(r, 0);
        }
        // Credentials go only into requests whose upstream leg is TLS,
        // verified against the trusted roots (`upstream::connect_uri`): a
        // route host over plain HTTP is refused before anything is read.
        let routes: Vec<_> = state
            .routes
            .iter()
            .filter(|r| target.ip.is_none() && r.route.host.matches_normalized(&target.host))
            .collect();
        if scheme == Scheme::Http {
            if let Some(r) = routes.first() {
                return deny(route_needs_https(&r.route.name, &target, &pq), 0);
            }
        }
        let (mut parts, body) = req.into_parts();
        // Buffered bodies (raw and decoded) count against the bottle's budget
        // for as long as they live (until hyper has sent them upstream).
        let raw = match body::read(body, self.body_cap, &self.budget).await {
            Ok(raw) => raw,
            Err(ReadError::OverBudget(e)) => return deny(self.over_budget("request", e), 0),
            Err(ReadError::TooLarge { .. } | ReadError::Cut) => {
                return deny(
                    Refusal::forbidden(
                        "body-too-large",
                        format!(
                        "the request body is larger than the {}-byte scanning cap or was cut off",
                        self.body_cap
                    ),
                    ),
                    0,
                )
            }
        };
        let bytes = u64::try_from(raw.len()).unwrap_or(u64::MAX);
        // Read before the hop-by-hop headers go: a `Connection` header may
        // name `Content-Encoding`, and the body is still encoded.
        let encoding = content_encoding(&parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        for r in &routes {
            parts.headers.remove(&r.header);
        }
        // Decoding and scanning are CPU work: a big or encoded body is
        // inspected on the blocking pool, so that the proxy's thread goes on
        // serving the other connections meanwhile.
        let inspected = if inspect_inline(raw.len(), &encoding) {
            self.inspect_request(&state, &target, &pq, &encoding, parts, raw)
        } else {
            let (state, target, pq) = (state.clone(), target.clone(), pq.clone());
            self.off_thread(move |me| {
                me.inspect_request(&state, &target, &pq, &encoding, parts, raw)
            })
            .await
        };
        let Inspected {
            mut parts,
            body,
            warned,
            redacted,
        } = match inspected {
            Ok(i) => i,
            Err(refusal) => return deny(refusal, bytes),
        };
        for r in &routes {
            if let Some(value) = r.header_value() {
                parts.headers.insert(r.header.clone(), value);
            }
        }
        if !routes.is_empty() {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let scheme_str = match scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let uri = match Uri::builder()
            .scheme(scheme_str)
            .authority(target.authority())
            .path_and_query(pq.as_str())
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                return deny(
                    Refusal::bad_request("bad-target", format!("request URI: {e}")),
                    bytes,
                )
            }
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        // The upstream sees exactly the checked target as Host (no fronting
        // through a different virtual host on an allowed address).
        if let Ok(host) = HeaderValue::from_str(&target.authority()) {
            parts.headers.insert(header::HOST, host);
        }
        let body_len = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let upstream_req = Request::from_parts(parts, Full::new(body));
        // The decision is on record before anything is dialled; if it cannot
        // be, nothing is.
        let mut decided = line;
        (decided.decision, decided.rule) = match warned {
            Some(rule) if redacted.is_some() => ("redact".into(), rule),
            Some(rule) => ("warn".into(), rule),
            None => (
                "allow".into(),
                if routes.is_empty() { "allow" } else { "route" }.into(),
            ),
        };
        decided.bytes = bytes;
        decided.redacted = redacted;
        let mut exchange = match self.audit.decide(decided) {
            Ok(exchange) => exchange,
            Err(e) => return refusal_response(&self.audit_failed(&e)),
        };
        exchange.bytes_up = body_len;
        // Dropped here (client gone before the answer): `cancelled`.
        let resp = match self.client.request(upstream_req).await {
            Ok(resp) => resp,
            Err(e) => {
                let (refusal, outcome) = self.upstream_failure(&e, &target);
                if outcome == Outcome::Refused {
                    exchange.bytes_up = 0; // refused before the dial
                }
                return refuse_after_decision(exchange, refusal, outcome);
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let resp = if routes.is_empty() {
            Response::from_parts(parts, body.boxed())
        } else {
            match self.redacted_response(parts, body, &state).await {
                Ok(resp) => resp,
                Err(refusal) => return refuse_after_decision(exchange, refusal, Outcome::Refused),
            }
        };
        let status = resp.status().as_u16();
        resp.map(|body| AuditedBody::new(body, exchange, status).boxed())
    }

    /// Route hosts: every real token in headers and body is replaced by its
    /// placeholder. An uncompressed body streams through a redactor that
    /// holds back only what could be the start of a token; a compressed one
    /// (the proxy asked for `identity`, but an upstream may ignore that) is
    /// read whole (within the cap and the budget), decoded and redacted, or
    /// refused when it cannot be decoded.
    async fn redacted_response(
        self: &Arc<Self>,
        mut parts: http::response::Parts,
        body: Incoming,
        state: &Arc<State>,
    ) -> Result<Response<Body>, Refusal> {
        redact_headers(&mut parts.headers, state);
        let encoding = content_encoding(&parts.headers);
        if is_identity(&encoding) {
            parts.headers.remove(header::CONTENT_ENCODING);
            if !hyper::body::Body::is_end_stream(&body) {
                // Redaction may change the length.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let body = RedactedBody::new(body, state.redaction.clone());
            return Ok(Response::from_parts(parts, body.boxed()));
        }
        let raw = match body::read(body, self.body_cap, &self.budget).await {
            Ok(raw) => raw,
            Err(ReadError::OverBudget(e)) => return Err(self.over_budget("response", e)),
            Err(ReadError::TooLarge { .. } | ReadError::Cut) => {
                return Err(bad_gateway(
                    "the route host's response is larger than the scanning cap or was cut off",
                ))
            }
        };
        parts.headers.remove(header::CONTENT_ENCODING);
        // An encoded body may decode to the cap: off the proxy's thread.
        let state = state.clone();
        let body = self
            .off_thread(move |me| me.redact_whole(&encoding, raw, &state))
            .await?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(Response::from_parts(parts, full(body)))
    }

    /// Runs `inspect` on the blocking pool, at most `scan_threads` at once
    /// (the others wait their turn, their bodies already counted in the
    /// budget), so that big bodies cannot take every thread the pool may
    /// start, which the resolver needs too.
    async fn off_thread<T: Send + 'static>(
        self: &Arc<Self>,
        inspect: impl FnOnce(&Proxy) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<T, Refusal> {
        let Ok(_turn) = self.scans.clone().acquire_owned().await else {
            return Err(inspection_failed("the proxy is stopping"));
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || inspect(&me))
            .await
            .unwrap_or_else(|e| Err(inspection_failed(&e.to_string())))
    }

    /// Decodes a request body (`encoding`: its `Content-Encoding` as it
    /// arrived), scans it with its URL and headers, and
    /// applies the host's DLP action: the request as it may go upstream, or
    /// why it may not. CPU only, no I/O.
    fn inspect_request(
        &self,
        state: &State,
        target: &Target,
        pq: &str,
        encoding: &str,
        mut parts: http::request::Parts,
        raw: Bytes,
    ) -> Result<Inspected, Refusal> {
        let decoded = match dlp::decode(encoding, raw.clone(), self.body_cap, &self.budget) {
            Ok(d) => d,
            Err(BodyError::OverBudget(e)) => return Err(self.over_budget("request", e)),
            Err(e) => {
                return Err(Refusal::forbidden(
                    "body-unscannable",
                    format!("{e}; it cannot be scanned"),
                ))
            }
        };
        let dlp = Dlp {
            scanner: &state.scanner,
            literals: &state.literals,
            route_names: &state.route_names,
        };
        let hits = dlp.scan_request(pq, &parts.headers, &decoded);
        let action = state.policy.dlp.action_for(&target.host);
        let verdict = dlp_action::apply(&dlp, action, hits, &parts.headers, &decoded, &target.host);
        drop(decoded);
        let (mut body, mut warned, mut redacted) = (raw, None, None);
        match verdict {
            Verdict::Clean => {}
            Verdict::Warn { rule } => warned = Some(rule),
            Verdict::Block(hit) => return Err(hit_refusal(&hit, target)),
            Verdict::Refuse(refusal) => return Err(refusal),
            Verdict::Redacted {
                body: new,
                counts,
                rule,
            } => {
                // Sent as rewritten: decoded, so without its encoding.
                let mut reservation = self.budget.reservation();
                if let Err(e) = reservation.grow(new.capacity()) {
                    return Err(self.over_budget("request", e));
                }
                body = budget::hold(new, reservation);
                parts.headers.remove(header::CONTENT_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                (warned, redacted) = (Some(rule), Some(counts));
            }
        }
        Ok(Inspected {
            parts,
            body,
            warned,
            redacted,
        })
    }

    /// A route host's whole (encoded) response, decoded and with every real
    /// token replaced by its placeholder. CPU only, no I/O.
    fn redact_whole(&self, encoding: &str, raw: Bytes, state: &State) -> Result<Bytes, Refusal> {
        let decoded = match dlp::decode(encoding, raw, self.body_cap, &self.budget) {
            Ok(d) => d,
            Err(BodyError::OverBudget(e)) => return Err(self.over_budget("response", e)),
            Err(e) => {
                return Err(bad_gateway(&format!(
                    "the route host's response cannot be scanned: {e}"
                )))
            }
        };
        Ok(
            match state.literals.redact_tokens(&decoded, &state.routes) {
                Some(new) => {
                    drop(decoded);
                    let mut reservation = self.budget.reservation();
                    if let Err(e) = reservation.grow(new.capacity()) {
                        return Err(self.over_budget("response", e));
                    }
                    budget::hold(new, reservation)
                }
                None => decoded,
            },
        )
    }

    /// 503 when the budget for buffered bodies is in use.
    fn over_budget(&self, what: &str, e: OverBudget) -> Refusal {
        self.log.warn(format_args!(
            "{what} refused: {e} ({} bytes held)",
            self.budget.used()
        ));
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            rule: "over-budget".into(),
            message: format!(
                "the proxy holds bodies in memory to scan them, and its {}-byte budget for this \
                 bottle is in use by other requests, so this {what} cannot be held now. Retry when \
                 fewer large requests are in flight (Retry-After), or raise the proxy's body budget.",
                e.limit
            ),
        }
    }

    /// Why the upstream call failed, as the client's answer and the outcome
    /// of the exchange (an SSRF address found at dial time is a refusal).
    fn upstream_failure(
        &self,
        e: &hyper_util::client::legacy::Error,
        target: &Target,
    ) -> (Refusal, Outcome) {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(ce) = err.downcast_ref::<ConnectError>() {
                return match ce {
                    ConnectError::Ssrf { .. } => (
                        Refusal::forbidden(
                            "ssrf",
                            format!(
                                "{ce}. Internal addresses are refused; to allow one, add it to \
                                 `allow_ips` in the bottle's manifest"
                            ),
                        ),
                        Outcome::Refused,
                    ),
                    other => {
                        let refusal = Refusal {
                            status: StatusCode::BAD_GATEWAY,
                            rule: "upstream-error".into(),
                            message: error_chain(other),
                        };
                        self.log
                            .warn(format_args!("upstream {target}: {}", refusal.message));
                        (refusal, Outcome::UpstreamFailed)
                    }
                };
            }
            source = err.source();
        }
        let message = error_chain(e);
        self.log.warn(format_args!("upstream {target}: {message}"));
        (
            Refusal {
                status: StatusCode::BAD_GATEWAY,
                rule: "upstream-error".into(),
                message,
            },
            Outcome::UpstreamFailed,
        )
    }
}

/// Plain bodies up to this size are scanned on the proxy's own thread
/// (well under a millisecond).
const INLINE_INSPECT_MAX: usize = 64 << 10;

/// Whether a request body is inspected where the request is served: small
/// and not encoded (an encoded body may decode to the cap). Others go to
/// the blocking pool.
fn inspect_inline(len: usize, encoding: &str) -> bool {
    len <= INLINE_INSPECT_MAX && is_identity(encoding)
}

/// A `Content-Encoding` (values joined by commas) that leaves the body as is.
fn is_identity(encoding: &str) -> bool {
    encoding
        .split(',')
        .all(|e| matches!(e.trim().to_ascii_lowercase().as_str(), "" | "identity"))
}

/// A request that passed inspection, as it may go upstream.
struct Inspected {
    parts: http::request::Parts,
    body: Bytes,
    /// The rule of a finding let through (`warn`) or redacted.
    warned: Option<String>,
    redacted: Option<std::collections::BTreeMap<String, u64>>,
}

/// The inspection of a body could not finish: refused.
fn inspection_failed(why: &str) -> Refusal {
    Refusal::forbidden(
        "body-unscannable",
        format!("the body's inspection could not finish ({why}), so it was not sent"),
    )
}

/// Answer `refusal` to a request whose `decided` line is written, and
/// complete it with `outcome` and the refusal's rule.
fn refuse_after_decision(exchange: Exchange, refusal: Refusal, outcome: Outcome) -> Response<Body> {
    let bytes_up = exchange.bytes_up;
    let _ = exchange.complete(Completion {
        outcome,
        status: Some(refusal.status.as_u16()),
        bytes_up,
        bytes_down: 0,
        rule: Some(refusal.rule.clone()),
    });
    refusal_response(&refusal)
}

/// Replace every real token in header values by its placeholder.
fn redact_headers(headers: &mut HeaderMap, state: &State) {
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut replaced = Vec::with_capacity(values.len());
        for v in values {
            match state.literals.redact_tokens(v.as_bytes(), &state.routes) {
                Some(new) => {
                    changed = true;
                    replaced.push(
                        HeaderValue::from_bytes(&new).unwrap_or(HeaderValue::from_static("")),
                    );
                }
                None => replaced.push(v),
            }
        }
        if changed {
            headers.remove(&name);
            for v in replaced {
                headers.append(name.clone(), v);
            }
        }
    }
}

fn content_encoding(headers: &HeaderMap) -> String {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

fn bad_gateway(message: &str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_GATEWAY,
        rule: "response-unscannable".into(),
        message: message.into(),
    }
}

fn route_needs_https(route: &str, target: &Target, path_and_query: &str) -> Refusal {
    let path = path_and_query.split('?').next().unwrap_or("/");
    Refusal::forbidden(
        "route-needs-https",
        format!(
            "`{}` is the host of route `{route}`, whose credential is only sent over TLS; this request \
             is plain http. Use https://{}{path} instead (with HTTPS_PROXY set, clients tunnel it \
             through the proxy).",
            target.host,
            target.host
        ),
    )
}

fn hit_refusal(hit: &Hit, target: &Target) -> Refusal {
    let message = match hit {
        Hit::Secret { rule, place, redacted } => format!(
            "a secret matching DLP rule `{rule}` ({redacted}) is in the {place} of a request to `{}`. \
             Remove it; if this is a false positive, add \"{rule}\" to `dlp.disable_rules` in the \
             bottle's manifest; to let the request through without it, set the host's DLP action \
             to \"redact\" (JSON bodies) in `dlp.hosts`.",
            target.host
        ),
        Hit::Placeholder { route, place } => format!(
            "the placeholder of route `{route}` is in the {place} of a request to `{}`; a placeholder \
             is only replaced in the route's own header, on the route's own host, over https, and may \
             not appear anywhere else.",
            target.host
        ),
        Hit::Token { route, place } => format!(
            "the real credential of route `{route}` is in the {place} of a request to `{}`; it is never \
             allowed to leave through the agent.",
            target.host
        ),
    };
    Refusal::forbidden(hit.rule(), message)
}
