//! OpenSSL's subject-name hash of a certificate (`openssl x509 -hash`), so
//! the bottle CA can be linked into a guest's `/etc/ssl/certs` as
//! `<hash>.0` without running `update-ca-certificates` (or even `openssl`)
//! in the guest, where rehashing the whole store under TCG takes a minute.
//!
//! The hash is the first four bytes, little-endian, of SHA-1 over the
//! subject's canonical encoding: each RDN's SET re-encoded with string
//! values as UTF8String, trimmed, ASCII-lowercased and with inner runs of
//! whitespace collapsed to one space; the RDN SETs concatenated without the
//! outer SEQUENCE (OpenSSL `x509_name_canon`).

use sha1::{Digest, Sha1};

/// Why a certificate's subject could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum CertHashError {
    #[error("not a PEM certificate")]
    NotPem,
    #[error("malformed DER in the certificate: {0}")]
    Der(&'static str),
}

/// `openssl x509 -hash -noout` of the first certificate in `pem`.
pub fn subject_hash_pem(pem: &str) -> Result<String, CertHashError> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| CertHashError::NotPem)?;
    if der.is_empty() {
        return Err(CertHashError::NotPem);
    }
    subject_hash_der(&der)
}

/// The subject hash of a DER certificate.
pub fn subject_hash_der(der: &[u8]) -> Result<String, CertHashError> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    for (tag, what) in [(0x02, "serial"), (0x30, "signature"), (0x30, "issuer")] {
        rest = tlv(rest, tag).map_err(|_| CertHashError::Der(what))?.1;
    }
    rest = tlv(rest, 0x30)?.1; // validity
    let (subject, _) = tlv(rest, 0x30)?;
    let canon = canonical_name(subject)?;
    let digest = Sha1::digest(&canon);
    let h = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    Ok(format!("{h:08x}"))
}

/// The canonical encoding of a Name's RDN sequence (its content octets).
fn canonical_name(mut rdns: &[u8]) -> Result<Vec<u8>, CertHashError> {
    let mut out = Vec::new();
    while !rdns.is_empty() {
        let (set, rest) = tlv(rdns, 0x31)?;
        rdns = rest;
        let mut set_body = Vec::new();
        let mut avas = set;
        while !avas.is_empty() {
            let (ava, rest) = tlv(avas, 0x30)?;
            avas = rest;
            let (oid, value) = tlv(ava, 0x06)?;
            let mut ava_body = Vec::new();
            encode(0x06, oid, &mut ava_body);
            let (&tag, _) = value
                .split_first()
                .ok_or(CertHashError::Der("empty value"))?;
            let (content, _) = tlv(value, tag)?;
            match tag {
                // UTF8String, PrintableString, T61String, IA5String: canonical UTF-8.
                0x0c | 0x13 | 0x14 | 0x16 => {
                    encode(0x0c, canonical_string(content).as_bytes(), &mut ava_body)
                }
                _ => ava_body.extend_from_slice(value),
            }
            encode(0x30, &ava_body, &mut set_body);
        }
        encode(0x31, &set_body, &mut out);
    }
    Ok(out)
}

/// Trim, lowercase ASCII, collapse inner whitespace runs to one space.
fn canonical_string(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    out
}

/// One DER TLV with `tag` at the start of `input`: (content, rest).
fn tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertHashError> {
    let (&t, rest) = input.split_first().ok_or(CertHashError::Der("truncated"))?;
    if t != tag {
        return Err(CertHashError::Der("unexpected tag"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(CertHashError::Der("truncated"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(CertHashError::Der("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(CertHashError::Der("truncated"));
    }
    Ok(rest.split_at(len))
}

fn encode(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings_are_trimmed_lowercased_and_collapsed() {
        assert_eq!(
            canonical_string(b"  Bottle   CA\tdemo-X1 "),
            "bottle ca demo-x1"
        );
    }

    #[test]
    fn the_hash_matches_openssl_for_the_bottle_ca() {
        let ca = bottle_sidecars::proxy::BottleCa::generate("demo-Ab3  x").unwrap();
        let pem = ca.cert_pem();
        let ours = subject_hash_pem(&pem).unwrap();
        assert_eq!(ours.len(), 8);
        // Compare with OpenSSL itself where it is installed (scripts/install-deps.sh).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &pem).unwrap();
        match std::process::Command::new("openssl")
            .args(["x509", "-hash", "-noout", "-in"])
            .arg(&path)
            .output()
        {
            Ok(out) if out.status.success() => {
                assert_eq!(ours, String::from_utf8_lossy(&out.stdout).trim());
            }
            // Skips (or fails under BOTTLE_TEST_STRICT=1).
            _ => {
                bottle_test_harness::skip::require(false, "openssl not installed");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(subject_hash_pem("hello").is_err());
        assert!(subject_hash_der(&[0x30, 0x85, 1, 2]).is_err());
        assert!(subject_hash_der(&[0x30, 0x03, 0x30, 0x01]).is_err());
    }
}
