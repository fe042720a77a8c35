//! Data-loss prevention on requests: decode bodies (within a cap), then look
//! for secrets, route placeholders and real route tokens in the URL, the
//! headers and the body.

use super::budget::{self, Budget, OverBudget};
use super::routes::{LiteralKind, Literals};
use crate::scanner::{Finding, Scanner};
use bytes::Bytes;
use http::HeaderMap;
use std::io::Read;
use std::sync::Arc;

/// Why a body cannot be scanned (and so is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is larger than the {cap}-byte scanning cap")]
    TooLarge { cap: usize },
    #[error("body with content-encoding `{encoding}` cannot be decoded")]
    Undecodable { encoding: String },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// Decode a body through its `Content-Encoding` list (applied in order, so
/// undone in reverse), refusing results larger than `cap`; every decoded
/// byte is reserved in `budget` before it is held, for as long as it lives.
pub fn decode(
    encodings: &str,
    body: Bytes,
    cap: usize,
    budget: &Arc<Budget>,
) -> Result<Bytes, BodyError> {
    if body.len() > cap {
        return Err(BodyError::TooLarge { cap });
    }
    let mut data = body;
    for enc in encodings
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .rev()
    {
        data = match enc.as_str() {
            "" | "identity" => data,
            "gzip" | "x-gzip" => read_capped(
                flate2::read::MultiGzDecoder::new(&data[..]),
                cap,
                &enc,
                budget,
            )?,
            "deflate" => read_capped(flate2::read::ZlibDecoder::new(&data[..]), cap, &enc, budget)
                .or_else(|e| match e {
                    BodyError::Undecodable { .. } => read_capped(
                        flate2::read::DeflateDecoder::new(&data[..]),
                        cap,
                        &enc,
                        budget,
                    ),
                    other => Err(other),
                })?,
            "br" => read_capped(
                brotli::Decompressor::new(&data[..], 4096),
                cap,
                &enc,
                budget,
            )?,
            "zstd" => {
                let dec = zstd::stream::read::Decoder::new(&data[..]).map_err(|_| {
                    BodyError::Undecodable {
                        encoding: enc.clone(),
                    }
                })?;
                read_capped(dec, cap, &enc, budget)?
            }
            _ => return Err(BodyError::Undecodable { encoding: enc }),
        };
    }
    Ok(data)
}

fn read_capped(
    mut reader: impl Read,
    cap: usize,
    enc: &str,
    budget: &Arc<Budget>,
) -> Result<Bytes, BodyError> {
    let mut reservation = budget.reservation();
    let undecodable = || BodyError::Undecodable {
        encoding: enc.to_string(),
    };
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(undecodable()),
        };
        if out.len().saturating_add(n) > cap {
            return Err(BodyError::TooLarge { cap });
        }
        budget::grow_vec(&mut out, n, cap, &mut reservation)?;
        out.extend_from_slice(chunk.get(..n).ok_or_else(undecodable)?);
    }
    Ok(budget::hold(out, reservation))
}

/// Percent-decoding (and `+` as space for forms), lossy on bad escapes.
pub fn percent_decode(data: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'%' => {
                let hex = data
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// What was found where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    /// A scanner finding (`rule_id`, place, redacted value).
    Secret {
        rule: String,
        place: String,
        redacted: String,
    },
    /// A route placeholder outside its own header on its own host.
    Placeholder { route: String, place: String },
    /// A real route token sent by the agent.
    Token { route: String, place: String },
}

impl Hit {
    /// The audit/refusal rule name.
    pub fn rule(&self) -> String {
        match self {
            Hit::Secret { rule, .. } => format!("dlp:{rule}"),
            Hit::Placeholder { .. } => "placeholder-misuse".into(),
            Hit::Token { route, .. } => format!("route-token:{route}"),
        }
    }

    /// Whether the hit is in the request body (any of its decoded forms).
    pub fn in_body(&self) -> bool {
        self.place().starts_with("body")
    }

    pub fn place(&self) -> &str {
        match self {
            Hit::Secret { place, .. }
            | Hit::Placeholder { place, .. }
            | Hit::Token { place, .. } => place,
        }
    }
}

/// The scanning context of one bottle.
#[derive(Debug)]
pub struct Dlp<'a> {
    pub scanner: &'a Scanner,
    pub literals: &'a Literals,
    pub route_names: &'a [String],
}

impl Dlp<'_> {
    /// Scan one piece; `place` names it in messages.
    pub fn scan(&self, place: &str, data: &[u8], hits: &mut Vec<Hit>) {
        for f in self.scanner.scan(data) {
            hits.push(Hit::Secret {
                rule: f.rule_id,
                place: place.into(),
                redacted: f.redacted,
            });
        }
        for (route, kind) in self.literals.find(data) {
            hits.push(self.literal_hit(route, kind, place));
        }
    }

    fn literal_hit(&self, route: usize, kind: LiteralKind, place: &str) -> Hit {
        let route = self.route_names.get(route).cloned().unwrap_or_default();
        match kind {
            LiteralKind::Placeholder => Hit::Placeholder {
                route,
                place: place.into(),
            },
            LiteralKind::Token => Hit::Token {
                route,
                place: place.into(),
            },
        }
    }

    /// The scanner's findings in `data`, with their positions; a route
    /// placeholder or real route token in it is returned as the error (those
    /// are refused, never rewritten).
    pub fn secrets_in(&self, place: &str, data: &[u8]) -> Result<Vec<Finding>, Hit> {
        if let Some((route, kind)) = self.literals.find(data).into_iter().next() {
            return Err(self.literal_hit(route, kind, place));
        }
        Ok(self.scanner.scan(data))
    }

    fn finds_anything(&self, data: &[u8]) -> bool {
        !self.scanner.scan(data).is_empty() || !self.literals.find(data).is_empty()
    }

    /// Scan the request target, headers and decoded body.
    pub fn scan_request(&self, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        let url = path_and_query.as_bytes();
        self.scan("URL", url, &mut hits);
        let decoded = percent_decode(url, true);
        if decoded != url {
            self.scan("URL (decoded)", &decoded, &mut hits);
        }
        // One pass over all header lines; only when it finds something are
        // the lines scanned one by one to name the header.
        let lines: Vec<Vec<u8>> = headers
            .iter()
            .map(|(name, value)| {
                let mut line = Vec::with_capacity(name.as_str().len() + 2 + value.len());
                line.extend_from_slice(name.as_str().as_bytes());
                line.extend_from_slice(b": ");
                line.extend_from_slice(value.as_bytes());
                line
            })
            .collect();
        let block = lines.join(&b'\n');
        if self.finds_anything(&block) {
            for ((name, _), line) in headers.iter().zip(&lines) {
                self.scan(&format!("header {name}"), line, &mut hits);
            }
        }
        if !body.is_empty() {
            self.scan("body", body, &mut hits);
            let is_form = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| {
                    ct.to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            if is_form {
                let decoded = percent_decode(body, true);
                if decoded != body {
                    self.scan("body (form-decoded)", &decoded, &mut hits);
                }
            }
        }
        hits.dedup();
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CAP: usize = 1 << 20;

    fn decode(encodings: &str, body: Bytes, cap: usize) -> Result<Bytes, BodyError> {
        super::decode(encodings, body, cap, &Budget::new(usize::MAX))
    }

    #[test]
    fn every_supported_encoding_round_trips() {
        let plain = b"hello AKIA secret body".repeat(10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode("gzip", gz.clone().into(), CAP).unwrap(), plain);
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&plain).unwrap();
        assert_eq!(
            decode("deflate", zl.finish().unwrap().into(), CAP).unwrap(),
            plain
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&plain).unwrap();
        assert_eq!(
            decode("Deflate", raw.finish().unwrap().into(), CAP).unwrap(),
            plain
        );
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&plain)
            .unwrap();
        assert_eq!(decode("br", br.into(), CAP).unwrap(), plain);
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(decode("zstd", zs.into(), CAP).unwrap(), plain);
        // Stacked: gzip applied first, then zstd.
        let stacked = zstd::encode_all(&gz[..], 3).unwrap();
        assert_eq!(decode("gzip, zstd", stacked.into(), CAP).unwrap(), plain);
        assert_eq!(
            decode("identity", Bytes::from_static(b"x"), CAP).unwrap(),
            &b"x"[..]
        );
    }

    #[test]
    fn bombs_over_the_cap_and_garbage_are_refused() {
        let zeros = vec![0u8; 4 << 20];
        let zs = zstd::encode_all(&zeros[..], 3).unwrap();
        assert_eq!(
            decode("zstd", zs.into(), CAP),
            Err(BodyError::TooLarge { cap: CAP })
        );
        assert!(matches!(
            decode("gzip", Bytes::from_static(b"not gzip"), CAP),
            Err(BodyError::Undecodable { .. })
        ));
        assert!(matches!(
            decode("compress", Bytes::from_static(b"x"), CAP),
            Err(BodyError::Undecodable { .. })
        ));
        assert_eq!(
            decode("", Bytes::from(vec![1u8; 11]), 10),
            Err(BodyError::TooLarge { cap: 10 })
        );
    }

    #[test]
    fn decoding_counts_against_the_budget_while_the_result_lives() {
        let plain = vec![b'x'; 200_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let budget = Budget::new(100_000);
        assert!(matches!(
            super::decode("gzip", gz.clone(), CAP, &budget),
            Err(BodyError::OverBudget(_))
        ));
        assert_eq!(budget.used(), 0);
        let budget = Budget::new(1 << 20);
        let decoded = super::decode("gzip", gz, CAP, &budget).unwrap();
        assert_eq!(decoded, plain);
        assert!(budget.used() >= 200_000);
        drop(decoded);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn header_findings_name_the_header_they_are_in() {
        let scanner = Scanner::builtin().unwrap();
        let literals = Literals::new(&[]);
        let dlp = Dlp {
            scanner: &scanner,
            literals: &literals,
            route_names: &[],
        };
        let mut headers = HeaderMap::new();
        headers.insert("accept", "*/*".parse().unwrap());
        headers.insert(
            "x-key",
            "ghp_FAKEq4LghH8rOvhUGZSBEIMiJI51WbVrk7gN".parse().unwrap(),
        );
        let hits = dlp.scan_request("/", &headers, b"");
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| h.place() == "header x-key"), "{hits:?}");
        headers.remove("x-key");
        assert!(dlp.scan_request("/?q=1", &headers, b"{}").is_empty());
    }

    #[test]
    fn percent_decoding_handles_forms_and_bad_escapes() {
        assert_eq!(percent_decode(b"a%41+b%zz%", true), b"aA b%zz%");
        assert_eq!(percent_decode(b"a+b", false), b"a+b");
    }
}
