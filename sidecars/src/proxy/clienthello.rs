//! Reading the SNI of a TLS ClientHello without terminating TLS, for
//! passthrough hosts. Works through a checked cursor: never panics.
//!
//! A hello that carries Encrypted Client Hello (or the older encrypted SNI
//! drafts) is refused: its outer SNI, the only one the proxy can read, need
//! not be where the encrypted inner hello goes.

/// Largest ClientHello we wait for (records beyond this are refused).
pub const MAX_HELLO: usize = 64 * 1024;

/// Why bytes are not a ClientHello we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake record")]
    NotHandshake,
    #[error("not a ClientHello")]
    NotClientHello,
    #[error("ClientHello is malformed")]
    Malformed,
    #[error("ClientHello is larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("server name is not valid UTF-8")]
    BadName,
    #[error("ClientHello carries more than one server name")]
    SeveralNames,
    #[error(
        "ClientHello carries Encrypted Client Hello (extension {0:#06x}), which hides the real \
         server name; a passthrough host must be reached without ECH"
    )]
    Encrypted(u16),
}

/// Extension types of Encrypted Client Hello (RFC 9849's `0xfe0d` and the
/// draft code points `0xfe08`–`0xfe0c` before it) and of the encrypted SNI
/// drafts (`0xffce`).
fn hides_server_name(kind: u16) -> bool {
    (0xfe08..=0xfe0d).contains(&kind) || kind == 0xffce
}

/// Outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed.
    Incomplete,
    /// A complete ClientHello; its SNI host name if it carried one.
    Hello { sni: Option<String> },
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.buf.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<usize, HelloError> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(usize::from(b[0]) << 8 | usize::from(b[1]))
    }
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Look at the first bytes a client sent after CONNECT.
pub fn peek(buf: &[u8]) -> Result<Peek, HelloError> {
    // Reassemble the handshake message from as many records as it spans.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Ok(Peek::Incomplete);
        }
        if rest[0] != 22 || rest[1] != 3 {
            return Err(HelloError::NotHandshake);
        }
        let len = usize::from(rest[3]) << 8 | usize::from(rest[4]);
        if len == 0 {
            return Err(HelloError::Malformed);
        }
        if rest.len() < 5 + len {
            return if buf.len() > MAX_HELLO {
                Err(HelloError::TooLarge)
            } else {
                Ok(Peek::Incomplete)
            };
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(HelloError::NotClientHello);
            }
            let body_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body_len + 4 > MAX_HELLO {
                return Err(HelloError::TooLarge);
            }
            if handshake.len() >= body_len + 4 {
                return parse_body(&handshake[4..4 + body_len]).map(|sni| Peek::Hello { sni });
            }
        }
    }
}

fn parse_body(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut c = Cursor { buf: body };
    c.take(2 + 32)?; // legacy_version, random
    c.vec8()?; // session id
    c.vec16()?; // cipher suites
    c.vec8()?; // compression methods
    if c.buf.is_empty() {
        return Ok(None);
    }
    let mut exts = Cursor { buf: c.vec16()? };
    let mut sni = None;
    let mut seen_sni = false;
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        let kind = u16::try_from(kind).map_err(|_| HelloError::Malformed)?;
        if hides_server_name(kind) {
            return Err(HelloError::Encrypted(kind));
        }
        if kind != 0 {
            continue;
        }
        if seen_sni {
            return Err(HelloError::SeveralNames);
        }
        seen_sni = true;
        let mut list = Cursor {
            buf: Cursor { buf: data }.vec16()?,
        };
        while !list.buf.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type != 0 {
                continue;
            }
            if sni.is_some() {
                return Err(HelloError::SeveralNames);
            }
            let name = std::str::from_utf8(name).map_err(|_| HelloError::BadName)?;
            sni = Some(name.to_string());
        }
    }
    Ok(sni)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ClientHello carrying `sni`, split over records of `chunk` bytes.
    fn hello(sni: Option<&str>, chunk: usize) -> Vec<u8> {
        hello_with(sni, chunk, &[])
    }

    /// Like [`hello`], with extra `(type, data)` extensions after the SNI.
    fn hello_with(sni: Option<&str>, chunk: usize, extra: &[(u16, &[u8])]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend((name.len() as u16).to_be_bytes());
            entry.extend(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend(entry);
            exts.extend(0u16.to_be_bytes());
            exts.extend((list.len() as u16).to_be_bytes());
            exts.extend(list);
        }
        exts.extend(43u16.to_be_bytes()); // supported_versions, ignored
        exts.extend(3u16.to_be_bytes());
        exts.extend([2, 3, 4]);
        for (kind, data) in extra {
            exts.extend(kind.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(*data);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut out = Vec::new();
        for part in hs.chunks(chunk) {
            out.extend([22, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    #[test]
    fn sni_is_read_from_a_single_record() {
        assert_eq!(
            peek(&hello(Some("a.example"), 4096)),
            Ok(Peek::Hello {
                sni: Some("a.example".into())
            })
        );
    }

    #[test]
    fn sni_is_read_across_records_and_partial_input_asks_for_more() {
        let bytes = hello(Some("split.example"), 10);
        assert_eq!(peek(&bytes[..bytes.len() - 1]), Ok(Peek::Incomplete));
        assert_eq!(
            peek(&bytes),
            Ok(Peek::Hello {
                sni: Some("split.example".into())
            })
        );
    }

    #[test]
    fn hello_without_sni_is_reported_as_such() {
        assert_eq!(peek(&hello(None, 4096)), Ok(Peek::Hello { sni: None }));
    }

    #[test]
    fn encrypted_client_hello_and_encrypted_sni_are_refused() {
        let ech: &[u8] = &[0, 0, 1, 0, 1, 7, 0, 1, 9, 0, 1, 9];
        for kind in [0xfe0d, 0xfe0a, 0xffce] {
            assert_eq!(
                peek(&hello_with(Some("outer.example"), 4096, &[(kind, ech)])),
                Err(HelloError::Encrypted(kind)),
                "{kind:#x}"
            );
        }
        // Also when the extension comes first and the SNI after it, across records.
        assert_eq!(
            peek(&hello_with(
                None,
                16,
                &[(0xfe0d, ech), (0, &[0, 5, 0, 0, 2, b'a', b'b'])]
            )),
            Err(HelloError::Encrypted(0xfe0d))
        );
        // Other unknown extensions are fine.
        assert_eq!(
            peek(&hello_with(Some("a.example"), 4096, &[(0x1a1a, &[])])),
            Ok(Peek::Hello {
                sni: Some("a.example".into())
            })
        );
    }

    #[test]
    fn a_second_server_name_is_refused() {
        let second: &[u8] = &[0, 5, 0, 0, 2, b'a', b'b'];
        assert_eq!(
            peek(&hello_with(Some("a.example"), 4096, &[(0, second)])),
            Err(HelloError::SeveralNames)
        );
        let two_in_one: &[u8] = &[0, 10, 0, 0, 2, b'a', b'b', 0, 0, 2, b'c', b'd'];
        assert_eq!(
            peek(&hello_with(None, 4096, &[(0, two_in_one)])),
            Err(HelloError::SeveralNames)
        );
    }

    #[test]
    fn plain_http_is_not_a_handshake() {
        assert_eq!(
            peek(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HelloError::NotHandshake)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = peek(&bytes);
        }

        #[test]
        fn truncated_or_mutated_hellos_never_panic(cut in 0usize..120, flip in 0usize..120, bit in 0u8..8) {
            let mut bytes = hello(Some("x.example"), 4096);
            if flip < bytes.len() { bytes[flip] ^= 1 << bit; }
            let cut = cut.min(bytes.len());
            let _ = peek(&bytes[..cut]);
            let _ = peek(&bytes);
        }
    }
}
