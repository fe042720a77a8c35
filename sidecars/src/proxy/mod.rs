//! HTTP(S) guard proxy: allowlist, TLS interception, DLP, SSRF guard and
//! credential injection in one hop.
