//! Ways out of the proxy found by attacking it as a hostile agent would
//! (issue 13), each against listeners of the test's own on loopback.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use proxy_env::*;

#[test]
fn plain_http_to_a_route_host_is_refused_and_never_carries_the_real_token() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    // The test's own plain-HTTP listener stands in for the route host on port 80.
    let plain = format!("http://routed.test:{}/v1", env.plain.port());
    for args in [
        vec!["-H", "Authorization: Bearer bottle-placeholder-api", &plain],
        vec![plain.as_str()],
    ] {
        let (code, body) = env.curl_status(&args);
        assert_eq!(code, "403", "{body}");
        assert!(
            body.contains("route-needs-https") && body.contains("https://routed.test"),
            "{body}"
        );
    }
    assert!(
        env.plain.seen().is_empty(),
        "the plain listener was reached: {:?}",
        env.plain.seen()
    );
    // A placeholder in plain HTTP to another host: refused, and told to use https.
    let (code, body) = env.curl_status(&[
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &format!("http://allowed.test:{}/", env.plain.port()),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("placeholder-misuse") && body.contains("https"),
        "{body}"
    );
    assert!(env.plain.seen().is_empty());
    // The TLS route still injects.
    let (code, body) = env.curl_status(&[
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &env.url("routed.test", "/v1"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        env.upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    assert!(env.audited_rule("route-needs-https") && env.audited_rule("route"));
}
