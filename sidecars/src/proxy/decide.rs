//! Policy decisions that need no I/O: target allowlist, ports, IP literals,
//! per-host method/path rules and git push. Each refusal names its rule and
//! says how to allow the request.

use super::net::IpAllowlist;
use super::path;
use super::target::Target;
use crate::policy::Policy;
use http::StatusCode;

/// A refused request: the status, the rule that refused it and a message for
/// the agent that says how to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub rule: String,
    pub message: String,
}

impl Refusal {
    pub fn forbidden(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            rule: rule.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            rule: rule.into(),
            message: message.into(),
        }
    }

    /// The response body: what was refused, the rule, and what to do.
    pub fn body(&self) -> String {
        format!(
            "bottle proxy refused this request: {}\nrule: {}\n",
            self.message, self.rule
        )
    }
}

/// How a refused agent gets a policy widened: with supervise on, the
/// `request_egress` tool (a human decides, the running policy changes at
/// once); without it, the operator edits the manifest and runs the bottle
/// again.
fn how_to_widen(policy: &Policy) -> &'static str {
    if policy.supervise {
        "or call the `request_egress` tool of the `bottle` MCP server \
         (http://proxy.internal:9100/mcp) to ask the operator, who can allow it at once"
    } else {
        "then ask the operator to run the bottle again with the changed manifest"
    }
}

/// Whether the destination may be reached at all (before any byte is relayed).
pub fn check_target(policy: &Policy, ips: &IpAllowlist, t: &Target) -> Result<(), Refusal> {
    let widen = how_to_widen(policy);
    if let Some(ip) = t.ip {
        if !ips.contains(ip) {
            return Err(Refusal::forbidden(
                "ip-literal",
                format!(
                    "`{}` is an IP address; only host names are allowed. To allow it, add \"{ip}\" to \
                     `allow_ips` in the bottle's manifest, {widen}.",
                    t.authority()
                ),
            ));
        }
    } else if let Some(denied) = policy.deny.iter().find(|p| p.matches_normalized(&t.host)) {
        return Err(Refusal::forbidden(
            "host-denied",
            format!(
                "host `{}` was denied by the operator (`{denied}`), whatever `allow` says; only \
                 the operator can allow it again (`bottle policy ID allow {}`).",
                t.host, t.host
            ),
        ));
    } else if !policy.allow.iter().any(|p| p.matches_normalized(&t.host)) {
        return Err(Refusal::forbidden(
            "host-not-allowed",
            format!(
                "host `{}` is not in the allowlist. To allow it, add \"{}\" to `allow` in the \
                 bottle's manifest, {widen}.",
                t.host, t.host
            ),
        ));
    }
    if !policy.allow_ports.contains(&t.port) {
        return Err(Refusal::forbidden(
            "port-not-allowed",
            format!(
                "port {} of `{}` is not allowed. To allow it, add {} to `allow_ports` in the bottle's \
                 manifest, {widen}.",
                t.port, t.host, t.port
            ),
        ));
    }
    Ok(())
}

/// Whether `host` is spliced without interception.
pub fn is_passthrough(policy: &Policy, t: &Target) -> bool {
    t.ip.is_none()
        && policy
            .passthrough
            .iter()
            .any(|p| p.matches_normalized(&t.host))
}

/// Checks on one HTTP request to an allowed target.
pub fn check_request(
    policy: &Policy,
    t: &Target,
    method: &str,
    path_and_query: &str,
) -> Result<(), Refusal> {
    let (raw_path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = path::inspect(raw_path).map_err(|why| {
        Refusal::forbidden(
            "path-not-normal",
            format!(
                "path `{raw_path}` on `{}` {why}; an upstream could read it as a different path \
                 than the proxy checked. Send the plain path.",
                t.host
            ),
        )
    })?;
    if path.is_git_push(query) {
        return Err(Refusal::forbidden(
            "git-push",
            format!(
                "git push over HTTP(S) to `{}` is not allowed; push through git-gate instead \
                 (`git push` to the `git://proxy.internal/<name>.git` remote configured in the \
                 manifest's `git` section), where pushes are scanned and forwarded over SSH.",
                t.host
            ),
        ));
    }
    let widen = how_to_widen(policy);
    let rules: Vec<_> = policy
        .rules
        .iter()
        .filter(|r| r.host.matches_normalized(&t.host))
        .collect();
    if rules.is_empty() {
        return Ok(());
    }
    let Some(path) = path.for_rules else {
        return Err(Refusal::forbidden(
            "path-not-normal",
            format!(
                "path `{raw_path}` on `{}` has encoded slashes or backslashes (or is not UTF-8 once \
                 decoded), and this host has method/path rules; send the plain path.",
                t.host
            ),
        ));
    };
    let allowed = rules.iter().any(|r| {
        (r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (r.paths.is_empty() || r.paths.iter().any(|p| path_has_prefix(&path, p)))
    });
    if allowed {
        return Ok(());
    }
    let shape = rules
        .iter()
        .map(|r| format!("methods {:?} paths {:?}", r.methods, r.paths))
        .collect::<Vec<_>>()
        .join("; ");
    Err(Refusal::forbidden(
        "method-path-rule",
        format!(
            "{method} {path} on `{}` matches none of its rules ({shape}). To allow it, add a \
             `[[bottles.<name>.rules]]` entry with host = \"{}\", methods and paths in the manifest, \
             {widen}.",
            t.host, t.host
        ),
    ))
}

/// `/a/b` prefix matching on segment boundaries; `/` matches everything.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" || path == prefix {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HostPattern, RequestRule};
    use crate::proxy::target::parse_authority;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_checks_never_panic(method in "[A-Z]{1,8}", pq in "\\PC{0,40}") {
            let _ = check_request(&policy(), &t("api.example.com:443"), &method, &pq);
        }
    }

    fn policy() -> Policy {
        Policy {
            allow: vec![
                HostPattern::parse("github.com").unwrap(),
                HostPattern::parse("*.example.com").unwrap(),
            ],
            allow_ports: vec![443],
            passthrough: vec![HostPattern::parse("pinned.example.com").unwrap()],
            rules: vec![
                RequestRule {
                    host: HostPattern::parse("github.com").unwrap(),
                    methods: vec!["GET".into(), "HEAD".into()],
                    paths: vec![],
                },
                RequestRule {
                    host: HostPattern::parse("api.example.com").unwrap(),
                    methods: vec!["POST".into()],
                    paths: vec!["/v1/messages".into()],
                },
            ],
            ..Policy::default()
        }
    }

    fn t(raw: &str) -> Target {
        parse_authority(raw, None).unwrap()
    }

    fn rule_of<T>(r: Result<T, Refusal>) -> String {
        r.err().map(|e| e.rule).unwrap_or_else(|| "allowed".into())
    }

    #[test]
    fn listed_hosts_on_listed_ports_are_allowed() {
        let ips = IpAllowlist::default();
        assert_eq!(
            rule_of(check_target(&policy(), &ips, &t("GitHub.com.:443"))),
            "allowed"
        );
        assert_eq!(
            rule_of(check_target(&policy(), &ips, &t("a.example.com:443"))),
            "allowed"
        );
    }

    #[test]
    fn unlisted_hosts_are_refused_with_how_to_allow() {
        let r = check_target(&policy(), &IpAllowlist::default(), &t("evil.test:443")).unwrap_err();
        assert_eq!(r.rule, "host-not-allowed");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(
            r.body().contains("evil.test")
                && r.body().contains("`allow`")
                && r.body().contains("run the bottle again")
        );
        // No tool that is not served is named.
        assert!(!r.body().contains("request_egress"));
        assert_eq!(
            rule_of(check_target(
                &policy(),
                &IpAllowlist::default(),
                &t("example.com:443")
            )),
            "host-not-allowed"
        );
    }

    #[test]
    fn with_supervise_on_refusals_name_the_request_egress_tool() {
        let mut p = policy();
        p.supervise = true;
        let none = IpAllowlist::default();
        for target in ["evil.test:443", "github.com:22", "10.0.0.1:443"] {
            let r = check_target(&p, &none, &t(target)).unwrap_err();
            assert!(
                r.body().contains("`request_egress` tool")
                    && r.body().contains("http://proxy.internal:9100/mcp"),
                "{}",
                r.body()
            );
            assert!(!r.body().contains("run the bottle again"));
        }
        let r = check_request(&p, &t("github.com:443"), "DELETE", "/x").unwrap_err();
        assert!(r.body().contains("request_egress"));
    }

    #[test]
    fn unlisted_ports_are_refused() {
        let r = check_target(&policy(), &IpAllowlist::default(), &t("github.com:22")).unwrap_err();
        assert_eq!(r.rule, "port-not-allowed");
        assert!(r.body().contains("allow_ports"));
    }

    #[test]
    fn ip_literals_are_refused_unless_in_allow_ips() {
        let none = IpAllowlist::default();
        assert_eq!(
            rule_of(check_target(&policy(), &none, &t("10.0.0.1:443"))),
            "ip-literal"
        );
        assert_eq!(
            rule_of(check_target(&policy(), &none, &t("[::1]:443"))),
            "ip-literal"
        );
        let some = IpAllowlist::parse(&["10.0.0.0/8".into()]).unwrap();
        assert_eq!(
            rule_of(check_target(&policy(), &some, &t("10.0.0.1:443"))),
            "allowed"
        );
        assert_eq!(
            rule_of(check_target(&policy(), &some, &t("10.0.0.1:80"))),
            "port-not-allowed"
        );
    }

    #[test]
    fn passthrough_is_per_host_and_never_for_ip_literals() {
        assert!(is_passthrough(&policy(), &t("pinned.example.com:443")));
        assert!(!is_passthrough(&policy(), &t("a.example.com:443")));
    }

    #[test]
    fn method_rule_allows_get_and_refuses_post_on_the_same_host() {
        let gh = t("github.com:443");
        assert_eq!(
            rule_of(check_request(&policy(), &gh, "GET", "/org/repo")),
            "allowed"
        );
        assert_eq!(
            rule_of(check_request(&policy(), &gh, "HEAD", "/")),
            "allowed"
        );
        let r = check_request(&policy(), &gh, "POST", "/org/repo").unwrap_err();
        assert_eq!(r.rule, "method-path-rule");
        assert!(r.body().contains("rules"), "{}", r.body());
    }

    #[test]
    fn path_rule_matches_on_segment_boundaries() {
        let api = t("api.example.com:443");
        assert_eq!(
            rule_of(check_request(&policy(), &api, "POST", "/v1/messages")),
            "allowed"
        );
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &api,
                "POST",
                "/v1/messages/batches?x=1"
            )),
            "allowed"
        );
        assert_eq!(
            rule_of(check_request(&policy(), &api, "POST", "/v1/messagesX")),
            "method-path-rule"
        );
        assert_eq!(
            rule_of(check_request(&policy(), &api, "POST", "/v1/other")),
            "method-path-rule"
        );
        assert_eq!(
            rule_of(check_request(&policy(), &api, "GET", "/v1/messages")),
            "method-path-rule"
        );
    }

    #[test]
    fn dot_segments_and_encoded_slashes_cannot_escape_a_path_rule() {
        let api = t("api.example.com:443");
        for p in [
            "/v1/messages/../admin",
            "/v1/messages%2f..%2fadmin",
            "/v1/messages/%2e%2e/admin",
            "/v1\\messages",
        ] {
            assert_eq!(
                rule_of(check_request(&policy(), &api, "POST", p)),
                "path-not-normal",
                "{p}"
            );
        }
        assert_eq!(
            rule_of(check_request(&policy(), &api, "POST", "/v1/%6dessages")),
            "allowed"
        );
    }

    #[test]
    fn tomcat_and_doubly_encoded_traversal_cannot_escape_a_path_rule() {
        let api = t("api.example.com:443");
        for p in [
            "/v1/messages/..;/admin",
            "/v1/messages/..;x=1/admin",
            "/v1/messages/%252e%252e/admin",
            "/v1/messages/%252E%252e/admin",
            "/v1/messages/%2E%2e/admin",
            "/v1/messages%252f..%252fadmin",
        ] {
            let r = check_request(&policy(), &api, "POST", p).unwrap_err();
            assert_eq!(r.rule, "path-not-normal", "{p}");
            assert!(r.body().contains("dot segment"), "{p}: {}", r.body());
        }
    }

    #[test]
    fn traversal_and_nul_are_refused_on_hosts_without_rules_too() {
        let h = t("b.example.com:443");
        for p in ["/a/../b", "/a/%2e%2e/b", "/a/..;/b", "/a%00", "/a%zz"] {
            assert_eq!(
                rule_of(check_request(&policy(), &h, "GET", p)),
                "path-not-normal",
                "{p}"
            );
        }
        // Encoded slashes stay allowed where no rule has to match them (GitLab's API uses them).
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &h,
                "GET",
                "/api/v4/projects/g%2Fp"
            )),
            "allowed"
        );
    }

    #[test]
    fn git_push_in_other_case_with_trailing_slash_or_encoded_service_is_refused() {
        let h = t("b.example.com:443");
        for pq in [
            "/o/r.git/GIT-RECEIVE-PACK",
            "/o/r.git/git-receive-pack/",
            "/o/r.git/git-receive-pack/.",
            "/o/r.git/git-receive-pack%00",
            "/o/r.git%2Fgit-receive-pack",
            "/o/r.git/info/refs?service=git%2Dreceive-pack",
            "/o/r.git/info/refs/?service=git-receive-pack",
        ] {
            let rule = rule_of(check_request(&policy(), &h, "POST", pq));
            assert!(
                rule == "git-push" || rule == "path-not-normal",
                "{pq}: {rule}"
            );
        }
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &h,
                "POST",
                "/o/r.git/GIT-RECEIVE-PACK/"
            )),
            "git-push"
        );
    }

    #[test]
    fn hosts_without_rules_allow_any_method() {
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &t("b.example.com:443"),
                "DELETE",
                "/x"
            )),
            "allowed"
        );
    }

    #[test]
    fn git_push_is_refused_pointing_at_git_gate() {
        let h = t("b.example.com:443");
        let r = check_request(
            &policy(),
            &h,
            "GET",
            "/o/r.git/info/refs?service=git-receive-pack",
        )
        .unwrap_err();
        assert_eq!(r.rule, "git-push");
        assert!(r.body().contains("git-gate"));
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &h,
                "POST",
                "/o/r.git/git-receive-pack"
            )),
            "git-push"
        );
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &h,
                "POST",
                "/o/r.git/git%2Dreceive-pack"
            )),
            "git-push"
        );
        assert_eq!(
            rule_of(check_request(
                &policy(),
                &h,
                "GET",
                "/o/r.git/info/refs?service=git-upload-pack"
            )),
            "allowed"
        );
    }
}
