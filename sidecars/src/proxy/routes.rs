//! Egress routes: real credentials read at launch (never logged), the
//! placeholders the agent holds, and the matcher that finds either in bytes.

use crate::policy::{Route, TokenSource};
use aho_corasick::{AhoCorasick, MatchKind};
use std::fmt;
use std::process::Command;

/// Why a route's token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("route `{route}`: environment variable `{var}` is not set (export it before launch)")]
    MissingEnv { route: String, var: String },
    #[error("route `{route}`: cannot read token file {path}")]
    File {
        route: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route `{route}`: token command is empty")]
    EmptyCommand { route: String },
    #[error("route `{route}`: cannot run token command `{program}`")]
    Spawn {
        route: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route `{route}`: token command `{program}` exited with {status}")]
    CommandFailed {
        route: String,
        program: String,
        status: String,
    },
    #[error("route `{route}`: the token is empty")]
    Empty { route: String },
    #[error("route `{route}`: the token is not valid in an HTTP header")]
    NotHeaderSafe { route: String },
    #[error("route `{route}`: header name `{header}` is not valid")]
    BadHeader { route: String, header: String },
}

/// The real credential. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A route with its token read.
#[derive(Debug, Clone)]
pub struct ResolvedRoute {
    pub route: Route,
    pub header: http::HeaderName,
    pub token: Token,
}

impl ResolvedRoute {
    /// The header value sent upstream: `prefix + token`.
    pub fn header_value(&self) -> Option<http::HeaderValue> {
        let mut value =
            http::HeaderValue::from_str(&format!("{}{}", self.route.prefix, self.token.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// Read the token of `route` from its source.
pub fn resolve(route: &Route) -> Result<ResolvedRoute, TokenError> {
    let name = || route.name.clone();
    if http::HeaderName::from_bytes(route.header.as_bytes()).is_err() {
        return Err(TokenError::BadHeader {
            route: name(),
            header: route.header.clone(),
        });
    }
    let raw = match &route.token {
        TokenSource::Env(var) => std::env::var(var).map_err(|_| TokenError::MissingEnv {
            route: name(),
            var: var.clone(),
        })?,
        TokenSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| TokenError::File {
                route: name(),
                path: path.display().to_string(),
                source,
            })?
        }
        TokenSource::Command(argv) => {
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| TokenError::EmptyCommand { route: name() })?;
            let out = Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|source| TokenError::Spawn {
                    route: name(),
                    program: program.clone(),
                    source,
                })?;
            if !out.status.success() {
                return Err(TokenError::CommandFailed {
                    route: name(),
                    program: program.clone(),
                    status: out.status.to_string(),
                });
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    with_token(route, &raw)
}

/// `route` with a token read elsewhere (by the operator's `bottle policy ID
/// route add`, on the host), checked as [`resolve`] checks a read one.
pub fn with_token(route: &Route, raw: &str) -> Result<ResolvedRoute, TokenError> {
    let name = || route.name.clone();
    let header = http::HeaderName::from_bytes(route.header.as_bytes()).map_err(|_| {
        TokenError::BadHeader {
            route: name(),
            header: route.header.clone(),
        }
    })?;
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err(TokenError::Empty { route: name() });
    }
    if http::HeaderValue::from_str(&format!("{}{}", route.prefix, token)).is_err() {
        return Err(TokenError::NotHeaderSafe { route: name() });
    }
    Ok(ResolvedRoute {
        route: route.clone(),
        header,
        token: Token(token),
    })
}

/// What a literal match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    Placeholder,
    Token,
}

/// Finds placeholders and real tokens of all routes in bytes; a token also
/// in the forms an upstream may echo it in ([`token_forms`]).
#[derive(Debug, Clone)]
pub struct Literals {
    /// Reports every match, overlapping (for DLP).
    finder: Option<AhoCorasick>,
    /// Leftmost-longest, so a longer form wins over a form inside it (for redaction).
    redactor: Option<AhoCorasick>,
    /// Per pattern: route index and kind.
    meta: Vec<(usize, LiteralKind)>,
}

impl Literals {
    pub fn new(routes: &[ResolvedRoute]) -> Self {
        let (patterns, meta): (Vec<String>, Vec<(usize, LiteralKind)>) =
            literal_patterns(routes).into_iter().unzip();
        let build = |kind| {
            (!patterns.is_empty())
                .then(|| {
                    AhoCorasick::builder()
                        .match_kind(kind)
                        .build(&patterns)
                        .ok()
                })
                .flatten()
        };
        Self {
            finder: build(MatchKind::Standard),
            redactor: build(MatchKind::LeftmostLongest),
            meta,
        }
    }

    /// Every (route index, kind) found in `data`, possibly repeated.
    pub fn find(&self, data: &[u8]) -> Vec<(usize, LiteralKind)> {
        let Some(m) = &self.finder else {
            return Vec::new();
        };
        m.find_overlapping_iter(data)
            .filter_map(|hit| self.meta.get(hit.pattern().as_usize()).copied())
            .collect()
    }

    /// Replace every real token in `data`, in any of its forms, by its
    /// route's placeholder.
    pub fn redact_tokens(&self, data: &[u8], routes: &[ResolvedRoute]) -> Option<Vec<u8>> {
        let m = self.redactor.as_ref()?;
        let mut changed = false;
        let mut out = Vec::with_capacity(data.len());
        let mut last = 0;
        for hit in m.find_iter(data) {
            let Some(&(route, LiteralKind::Token)) = self.meta.get(hit.pattern().as_usize()) else {
                continue;
            };
            out.extend_from_slice(&data[last..hit.start()]);
            if let Some(r) = routes.get(route) {
                out.extend_from_slice(r.route.placeholder().as_bytes());
            }
            last = hit.end();
            changed = true;
        }
        if !changed {
            return None;
        }
        out.extend_from_slice(&data[last..]);
        Some(out)
    }
}

/// Every literal looked for, in order: per route its placeholder, then each
/// of its token's forms ([`token_forms`]), with the route index and kind.
/// Response redaction, buffered ([`Literals::redact_tokens`]) or streamed
/// (`proxy::stream`), matches exactly these, leftmost-longest.
pub fn literal_patterns(routes: &[ResolvedRoute]) -> Vec<(String, (usize, LiteralKind))> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        out.push((r.route.placeholder(), (i, LiteralKind::Placeholder)));
        for form in token_forms(&r.token.0) {
            out.push((form, (i, LiteralKind::Token)));
        }
    }
    out
}

/// Shortest base64 fragment worth matching: shorter ones could turn up in
/// unrelated base64 by chance.
const MIN_BASE64_FRAGMENT: usize = 8;

/// `token` as it is, JSON-escaped (minimal, with `\/`, with Go's `\u003c`
/// HTML escapes), percent-encoded (RFC 3986 upper and lower case hex,
/// `encodeURIComponent`), and base64 (standard and URL-safe alphabets, at
/// each of the three byte alignments it can have inside a longer encoded
/// string such as `user:token` in Basic auth: the characters that depend on
/// the token alone). Deduplicated.
pub fn token_forms(token: &str) -> Vec<String> {
    let mut forms = vec![token.to_string()];
    let json = json_escape(token);
    forms.push(json.replace('/', "\\/"));
    forms.push(
        json.replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026"),
    );
    forms.push(json);
    forms.push(percent_encode(token, b"-._~", b"0123456789ABCDEF"));
    forms.push(percent_encode(token, b"-._~", b"0123456789abcdef"));
    forms.push(percent_encode(token, b"-._~!'()*", b"0123456789ABCDEF"));
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3 {
            if let Some(fragment) = base64_fragment(engine, token.as_bytes(), offset) {
                forms.push(fragment);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    forms.retain(|f| !f.is_empty() && seen.insert(f.clone()));
    forms
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string()
}

fn percent_encode(s: &str, keep: &[u8], hex: &[u8; 16]) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(hex[usize::from(b >> 4)]));
            out.push(char::from(hex[usize::from(b & 15)]));
        }
    }
    out
}

/// The base64 characters that only `data`'s bits decide when `data` starts
/// `offset` bytes into the encoded input.
fn base64_fragment(
    engine: &base64::engine::GeneralPurpose,
    data: &[u8],
    offset: usize,
) -> Option<String> {
    use base64::Engine as _;
    let mut input = vec![0u8; offset];
    input.extend_from_slice(data);
    let encoded = engine.encode(&input);
    let start = (8 * offset).div_ceil(6);
    let end = 8 * (offset + data.len()) / 6;
    let fragment = encoded.get(start..end)?;
    (fragment.len() >= MIN_BASE64_FRAGMENT).then(|| fragment.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HostPattern;

    fn route(name: &str, token: TokenSource) -> Route {
        Route {
            name: name.into(),
            host: HostPattern::parse("api.example").unwrap(),
            header: "authorization".into(),
            prefix: "Bearer ".into(),
            token,
        }
    }

    #[test]
    fn tokens_are_read_from_file_and_command_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "  file-secret-123\n").unwrap();
        let r = resolve(&route("f", TokenSource::File(path))).unwrap();
        assert_eq!(r.token.expose(), "file-secret-123");
        assert_eq!(r.header_value().unwrap(), "Bearer file-secret-123");
        let r = resolve(&route(
            "c",
            TokenSource::Command(vec!["echo".into(), "cmd-secret".into()]),
        ))
        .unwrap();
        assert_eq!(r.token.expose(), "cmd-secret");
    }

    #[test]
    fn missing_sources_fail_with_the_route_named() {
        let e = resolve(&route(
            "gh",
            TokenSource::Env("BOTTLE_TEST_SURELY_UNSET_VAR".into()),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("route `gh`"), "{e}");
        assert!(resolve(&route("c", TokenSource::Command(vec!["false".into()]))).is_err());
        assert!(resolve(&route("c", TokenSource::Command(vec![]))).is_err());
        assert!(resolve(&route("f", TokenSource::File("/nonexistent/tok".into()))).is_err());
    }

    #[test]
    fn token_debug_output_hides_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "hunter2-token").unwrap();
        let r = resolve(&route("f", TokenSource::File(path))).unwrap();
        assert!(!format!("{r:?}").contains("hunter2-token"));
    }

    #[test]
    fn literals_find_placeholders_and_tokens_and_redact_tokens_to_placeholders() {
        let r = resolve(&route(
            "api",
            TokenSource::Command(vec!["echo".into(), "real-tok-9".into()]),
        ))
        .unwrap();
        let routes = vec![r];
        let lit = Literals::new(&routes);
        assert_eq!(
            lit.find(b"x bottle-placeholder-api y"),
            vec![(0, LiteralKind::Placeholder)]
        );
        assert_eq!(lit.find(b"real-tok-9"), vec![(0, LiteralKind::Token)]);
        assert_eq!(
            lit.redact_tokens(b"a real-tok-9 b", &routes).unwrap(),
            b"a bottle-placeholder-api b"
        );
        assert_eq!(lit.redact_tokens(b"nothing", &routes), None);
    }

    #[test]
    fn encoded_forms_of_a_token_are_found_and_redacted() {
        use base64::Engine as _;
        let token = "ab/cd+ef=\"gh<ij>&kl~mn";
        let r = resolve(&route(
            "api",
            TokenSource::Command(vec!["echo".into(), token.into()]),
        ))
        .unwrap();
        let routes = vec![r];
        let lit = Literals::new(&routes);
        let b64 = base64::engine::general_purpose::STANDARD;
        let cases = [
            r#"ab\/cd+ef=\"gh<ij>&kl~mn"#.to_string(),
            r#"ab/cd+ef=\"gh<ij>&kl~mn"#.to_string(),
            r#"ab/cd+ef=\"gh\u003cij\u003e\u0026kl~mn"#.to_string(),
            "ab%2Fcd%2Bef%3D%22gh%3Cij%3E%26kl~mn".to_string(),
            "ab%2fcd%2bef%3d%22gh%3cij%3e%26kl~mn".to_string(),
            b64.encode(token),
            base64::engine::general_purpose::URL_SAFE.encode(token),
            b64.encode(format!("user:{token}")),
            b64.encode(format!("u:{token}")),
            b64.encode(format!("x{token}y")),
        ];
        for form in cases {
            let data = format!("before {form} after");
            assert!(
                lit.find(data.as_bytes()).contains(&(0, LiteralKind::Token)),
                "{form}"
            );
            let redacted = lit.redact_tokens(data.as_bytes(), &routes).unwrap();
            let redacted = String::from_utf8(redacted).unwrap();
            assert!(redacted.contains("bottle-placeholder-api"), "{form}");
            assert!(!redacted.contains(&form), "{form} -> {redacted}");
        }
        // Unrelated base64 is left alone.
        let other = b64.encode("some other credential entirely");
        assert_eq!(lit.redact_tokens(other.as_bytes(), &routes), None);
    }

    #[test]
    fn base64_fragments_are_the_characters_only_the_token_decides() {
        use base64::Engine as _;
        let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
        for offset in 0..3 {
            let f = base64_fragment(engine, b"0123456789abcdef", offset).unwrap();
            for prefix in [b"\0\0".as_slice(), b"\xff\xff", b"ab"] {
                let mut input = prefix[..offset.min(2)].to_vec();
                input.resize(offset, b'q');
                input.extend_from_slice(b"0123456789abcdef");
                input.extend_from_slice(b"tail");
                assert!(engine.encode(&input).contains(&f), "offset {offset}");
            }
        }
        assert_eq!(base64_fragment(engine, b"short", 1), None);
    }
}
