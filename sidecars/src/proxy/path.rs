//! Request paths read the way an upstream might read them. A front end and a
//! back end may each percent-decode once (`%252e` → `%2e` → `.`), Tomcat drops
//! `;params` before resolving `..;`, IIS splits on `\`: the proxy looks at
//! every decoding layer and refuses a path that one of them could turn into a
//! dot segment or a NUL, so it never decides on a different path than the one
//! the upstream acts on.

/// How many times a path may be percent-encoded over (`%2525252e` is four).
const MAX_LAYERS: usize = 4;

/// Why a request path is refused for every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("does not start with `/`")]
    NotAbsolute,
    #[error("has a `%` that is not followed by two hex digits")]
    BadEscape,
    #[error("holds a NUL byte (`%00`, possibly encoded more than once)")]
    Nul,
    #[error(
        "has a dot segment (`.`, `..`, `..;`, or a percent-encoded or doubly encoded form of them)"
    )]
    DotSegment,
    #[error("is percent-encoded more than {MAX_LAYERS} times over")]
    TooDeep,
}

/// A path that passed the checks every request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    /// Decoded once, for method/path rules; `None` when the raw path holds a
    /// `\` or decoding made a `/`, `\` or invalid UTF-8 (an upstream could
    /// split it differently from the rule).
    pub for_rules: Option<String>,
    /// The raw path and every decoding of it, raw first.
    layers: Vec<Vec<u8>>,
}

/// Check `raw` (the path of a request target, without the query).
pub fn inspect(raw: &str) -> Result<RequestPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let first = decode_once(raw.as_bytes(), true)?;
    let for_rules = (!raw.contains('\\') && !first.made_separator && !first.bytes.contains(&0))
        .then(|| String::from_utf8(first.bytes.clone()).ok())
        .flatten();
    let mut layers = vec![raw.as_bytes().to_vec()];
    let mut next = first;
    while next.changed {
        if layers.len() > MAX_LAYERS {
            return Err(PathError::TooDeep);
        }
        let layer = next.bytes;
        next = decode_once(&layer, false)?;
        layers.push(layer);
    }
    for layer in &layers {
        if layer.contains(&0) {
            return Err(PathError::Nul);
        }
        if has_dot_segment(layer) {
            return Err(PathError::DotSegment);
        }
    }
    Ok(RequestPath { for_rules, layers })
}

impl RequestPath {
    /// Whether any reading of the path (with `query`) is a smart-HTTP git
    /// push: `…/git-receive-pack` or `…/info/refs?service=git-receive-pack`,
    /// in any case, with trailing `/` or `;params`, the query percent-decoded.
    pub fn is_git_push(&self, query: &str) -> bool {
        let advertises_push = || {
            query
                .split(['&', ';'])
                .any(|pair| decode_all(pair.as_bytes(), true) == b"service=git-receive-pack")
        };
        self.layers.iter().any(|layer| {
            let segments = segments(layer);
            match segments.as_slice() {
                [.., last] if last.eq_ignore_ascii_case(b"git-receive-pack") => true,
                [.., info, refs]
                    if info.eq_ignore_ascii_case(b"info") && refs.eq_ignore_ascii_case(b"refs") =>
                {
                    advertises_push()
                }
                _ => false,
            }
        })
    }
}

/// The non-empty segments of a path split on `/` and `\`, each without its
/// `;params` (as servlet containers read them).
fn segments(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == b'/' || *b == b'\\')
        .map(|seg| seg.split(|b| *b == b';').next().unwrap_or_default())
        .filter(|seg| !seg.is_empty())
        .collect()
}

fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|b| *b == b'/' || *b == b'\\')
        .map(|seg| seg.split(|b| *b == b';').next().unwrap_or_default())
        .any(|seg| seg == b"." || seg == b"..")
}

struct Decoded {
    bytes: Vec<u8>,
    /// An escape was decoded.
    changed: bool,
    /// An escape decoded to `/` or `\`.
    made_separator: bool,
}

/// One round of percent-decoding. `strict`: a `%` without two hex digits is
/// an error (the request as sent); otherwise it is a literal `%` (a layer
/// that an earlier decoding produced, such as `100%` from `100%25`).
fn decode_once(data: &[u8], strict: bool) -> Result<Decoded, PathError> {
    let mut out = Decoded {
        bytes: Vec::with_capacity(data.len()),
        changed: false,
        made_separator: false,
    };
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        if b == b'%' {
            match data.get(i + 1..i + 3).and_then(hex_byte) {
                Some(v) => {
                    out.bytes.push(v);
                    out.changed = true;
                    out.made_separator |= v == b'/' || v == b'\\';
                    i += 3;
                    continue;
                }
                None if strict => return Err(PathError::BadEscape),
                None => {}
            }
        }
        out.bytes.push(b);
        i += 1;
    }
    Ok(out)
}

/// Decode until nothing changes (at most [`MAX_LAYERS`] rounds), lower-cased;
/// `plus_is_space` for query strings.
fn decode_all(data: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut cur: Vec<u8> = if plus_is_space {
        data.iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect()
    } else {
        data.to_vec()
    };
    for _ in 0..MAX_LAYERS {
        match decode_once(&cur, false) {
            Ok(next) if next.changed => cur = next.bytes,
            _ => break,
        }
    }
    cur.make_ascii_lowercase();
    cur
}

fn hex_byte(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    match hex {
        [hi, lo] => u8::try_from(digit(*hi)? << 4 | digit(*lo)?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(raw: &str) -> Option<PathError> {
        inspect(raw).err()
    }

    #[test]
    fn plain_and_singly_encoded_paths_pass_and_decode_once_for_rules() {
        let p = inspect("/v1/%6dessages").unwrap();
        assert_eq!(p.for_rules.as_deref(), Some("/v1/messages"));
        assert_eq!(inspect("/").unwrap().for_rules.as_deref(), Some("/"));
        // A literal `%` that came from `%25` is data, not an escape.
        assert_eq!(
            inspect("/search/100%25").unwrap().for_rules.as_deref(),
            Some("/search/100%")
        );
        // Names that only start or end with dots are not dot segments.
        assert!(inspect("/a/.well-known/x/...").is_ok());
    }

    #[test]
    fn encoded_separators_pass_but_not_for_rules() {
        for raw in ["/api/v4/projects/group%2Fproject", "/a%5Cb"] {
            let p = inspect(raw).unwrap();
            assert_eq!(p.for_rules, None, "{raw}");
        }
    }

    #[test]
    fn dot_segments_in_any_layer_and_any_case_are_refused() {
        for raw in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2E/b",
            "/a/%252e%252e/b",
            "/a/%252E%252e/b",
            "/a/%25252e%25252e/b",
            "/a/..;/b",
            "/a/..;jsessionid=1/b",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a\\..\\b",
            "/a/..%5cb",
            "/a%2f..%2fb",
            "/a%252f..%252fb",
        ] {
            assert_eq!(err(raw), Some(PathError::DotSegment), "{raw}");
        }
    }

    #[test]
    fn nul_bad_escapes_depth_and_relative_paths_are_refused() {
        assert_eq!(err("/a%00"), Some(PathError::Nul));
        assert_eq!(err("/a%2500"), Some(PathError::Nul));
        assert_eq!(err("/a%zz"), Some(PathError::BadEscape));
        assert_eq!(err("/a%2"), Some(PathError::BadEscape));
        assert_eq!(err("*"), Some(PathError::NotAbsolute));
        assert_eq!(err("/a%252525252e"), Some(PathError::TooDeep));
    }

    fn push(pq: &str) -> bool {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        inspect(path).unwrap().is_git_push(query)
    }

    #[test]
    fn git_push_is_seen_in_any_case_with_trailing_slash_params_or_encoding() {
        for pq in [
            "/o/r.git/git-receive-pack",
            "/o/r.git/GIT-RECEIVE-PACK",
            "/o/r.git/git-receive-pack/",
            "/o/r.git/git-receive-pack//",
            "/o/r.git/git-receive-pack;x=1",
            "/o/r.git/git%2Dreceive-pack",
            "/o/r.git%2Fgit-receive-pack",
            "/o/r.git%252Fgit-receive-pack",
            "/o/r.git\\git-receive-pack",
            "/o/r.git/info/refs?service=git-receive-pack",
            "/o/r.git/info/refs/?service=git-receive-pack",
            "/o/r.git/INFO/Refs?SERVICE=Git-Receive-Pack",
            "/o/r.git/info/refs?service=git%2Dreceive-pack",
            "/o/r.git/info/refs?service=git%252Dreceive%252Dpack",
            "/o/r.git/info/refs?x=1&%73ervice=git-receive-pack",
            "/o/r.git/info/refs?x=1;service=git-receive-pack",
            "/o/r.git/info%2Frefs?service=git-receive-pack",
        ] {
            assert!(push(pq), "{pq}");
        }
        for pq in [
            "/o/r.git/git-upload-pack",
            "/o/r.git/info/refs?service=git-upload-pack",
            "/o/r.git/info/refs",
            "/o/git-receive-pack-docs",
            "/o/r.git/info/refs?service=git-receive-pack-x",
        ] {
            assert!(!push(pq), "{pq}");
        }
    }

    proptest! {
        #[test]
        fn accepted_paths_hold_no_dot_segment_or_nul_in_any_layer(
            raw in "/[a-z./;%0-9A-F\\\\]{0,30}"
        ) {
            if let Ok(p) = inspect(&raw) {
                for layer in &p.layers {
                    prop_assert!(!has_dot_segment(layer));
                    prop_assert!(!layer.contains(&0));
                }
                if let Some(rules) = p.for_rules {
                    prop_assert!(rules.starts_with('/'));
                    prop_assert!(!rules.contains('\\'));
                }
            }
        }

        #[test]
        fn inspecting_arbitrary_text_never_panics(raw in "\\PC{0,60}", query in "\\PC{0,30}") {
            if let Ok(p) = inspect(&raw) {
                let _ = p.is_git_push(&query);
            }
        }
    }
}
