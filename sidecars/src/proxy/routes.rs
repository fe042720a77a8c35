//! Egress routes: real credentials read at launch (never logged), the
//! placeholders the agent holds, and the matcher that finds either in bytes.

use crate::policy::{Route, TokenSource};
use aho_corasick::AhoCorasick;
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
    let header = http::HeaderName::from_bytes(route.header.as_bytes()).map_err(|_| {
        TokenError::BadHeader {
            route: name(),
            header: route.header.clone(),
        }
    })?;
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

/// Finds placeholders and real tokens of all routes in bytes.
#[derive(Debug, Clone)]
pub struct Literals {
    matcher: Option<AhoCorasick>,
    /// Per pattern: route index and kind.
    meta: Vec<(usize, LiteralKind)>,
}

impl Literals {
    pub fn new(routes: &[ResolvedRoute]) -> Self {
        let mut patterns = Vec::new();
        let mut meta = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            patterns.push(r.route.placeholder());
            meta.push((i, LiteralKind::Placeholder));
            patterns.push(r.token.0.clone());
            meta.push((i, LiteralKind::Token));
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::new(&patterns).ok()
        };
        Self { matcher, meta }
    }

    /// Every (route index, kind) found in `data`, possibly repeated.
    pub fn find(&self, data: &[u8]) -> Vec<(usize, LiteralKind)> {
        let Some(m) = &self.matcher else {
            return Vec::new();
        };
        m.find_overlapping_iter(data)
            .filter_map(|hit| self.meta.get(hit.pattern().as_usize()).copied())
            .collect()
    }

    /// Replace every real token in `data` by its route's placeholder.
    pub fn redact_tokens(&self, data: &[u8], routes: &[ResolvedRoute]) -> Option<Vec<u8>> {
        let m = self.matcher.as_ref()?;
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
}
