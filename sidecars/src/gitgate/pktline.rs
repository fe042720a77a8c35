//! The git:// request line: one pkt-line, parsed through a checked view.
//!
//! `git-proto-request = request-command SP pathname NUL [host-parameter NUL] [NUL extra-parameters]`
//! (gitprotocol-pack(5)). Nothing here can panic on any input.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest pkt-line git allows (4 length bytes + 65516 payload bytes).
pub const MAX_PKT_LEN: usize = 65520;

/// Why a request was refused before any git process ran.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PktLineError {
    #[error("connection closed before a request arrived")]
    Eof,
    #[error("bad pkt-line length")]
    BadLength,
    #[error("flush or delim packet where a request was expected")]
    NotData,
    #[error("request line is not `<service> <path>\\0host=...\\0`")]
    Malformed,
    #[error("service `{0}` is not offered (only git-upload-pack and git-receive-pack)")]
    UnknownService(String),
    #[error("repository path `{0}` is not of the form /<name>.git")]
    BadPath(String),
}

/// The two services the gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    /// The `git` subcommand that implements the service.
    pub fn subcommand(self) -> &'static str {
        match self {
            Service::UploadPack => "upload-pack",
            Service::ReceivePack => "receive-pack",
        }
    }
}

/// A parsed git:// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: Service,
    /// Mirror name: the path without the leading `/` and the `.git` suffix.
    pub repo: String,
    /// The `host=` parameter, if sent.
    pub host: Option<String>,
    /// The protocol version asked for in the extra parameters (`version=2`).
    pub protocol_version: Option<u8>,
}

/// A checked view of one data pkt-line: the length prefix has been validated
/// against the buffer, so `payload` cannot fail afterwards.
#[derive(Debug)]
pub struct PktLine<'a> {
    buf: &'a [u8],
}

impl<'a> PktLine<'a> {
    /// Validate a whole pkt-line (`XXXX` + payload) held in `buf`.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, PktLineError> {
        let head = buf.get(..4).ok_or(PktLineError::BadLength)?;
        let len = parse_len(head)?;
        if len < 4 {
            return Err(PktLineError::NotData);
        }
        if len != buf.len() {
            return Err(PktLineError::BadLength);
        }
        Ok(Self { buf })
    }

    /// The bytes after the length prefix.
    pub fn payload(&self) -> &'a [u8] {
        self.buf.get(4..).unwrap_or_default()
    }
}

/// Parse 4 hex digits into a pkt-line length; 1..=3 are invalid, 0..=2 are
/// special packets (flush, delim, response-end) reported as `< 4`.
pub fn parse_len(head: &[u8]) -> Result<usize, PktLineError> {
    if head.len() != 4 {
        return Err(PktLineError::BadLength);
    }
    let mut len = 0usize;
    for &b in head {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(PktLineError::BadLength),
        };
        len = len * 16 + usize::from(digit);
    }
    if len == 3 || len > MAX_PKT_LEN {
        return Err(PktLineError::BadLength);
    }
    Ok(len)
}

/// Read exactly one pkt-line from `stream` (never more, so the rest of the
/// stream stays for the git process) and parse it as a request.
pub async fn read_request<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Request, PktLineError> {
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|_| PktLineError::Eof)?;
    let len = parse_len(&head)?;
    if len < 4 {
        return Err(PktLineError::NotData);
    }
    let mut buf = vec![0u8; len];
    buf[..4].copy_from_slice(&head);
    stream
        .read_exact(&mut buf[4..])
        .await
        .map_err(|_| PktLineError::Eof)?;
    parse_request(PktLine::new_checked(&buf)?.payload())
}

/// Parse the payload of the request pkt-line.
pub fn parse_request(payload: &[u8]) -> Result<Request, PktLineError> {
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    let space = payload
        .iter()
        .position(|&b| b == b' ')
        .ok_or(PktLineError::Malformed)?;
    let (command, rest) = payload.split_at(space);
    let rest = rest.get(1..).ok_or(PktLineError::Malformed)?;
    let command = std::str::from_utf8(command).map_err(|_| PktLineError::Malformed)?;
    let service = match command {
        "git-upload-pack" => Service::UploadPack,
        "git-receive-pack" => Service::ReceivePack,
        other => return Err(PktLineError::UnknownService(printable(other))),
    };
    let mut fields = rest.split(|&b| b == 0);
    let path = fields.next().ok_or(PktLineError::Malformed)?;
    let path = std::str::from_utf8(path).map_err(|_| PktLineError::Malformed)?;
    let repo = repo_name(path)?;

    let mut host = None;
    let mut protocol_version = None;
    let mut in_extra = false;
    for field in fields {
        if field.is_empty() {
            in_extra = true;
            continue;
        }
        let field = std::str::from_utf8(field).map_err(|_| PktLineError::Malformed)?;
        if !in_extra {
            if let Some(h) = field.strip_prefix("host=") {
                host = Some(h.to_string());
                continue;
            }
            return Err(PktLineError::Malformed);
        }
        // Extra parameters: only a known protocol version is passed on.
        if let Some(v) = field.strip_prefix("version=") {
            protocol_version = match v {
                "0" => Some(0),
                "1" => Some(1),
                "2" => Some(2),
                _ => protocol_version,
            };
        }
    }
    Ok(Request {
        service,
        repo,
        host,
        protocol_version,
    })
}

/// `/name.git` or `/name` → `name`, where a name is `[A-Za-z0-9._-]+`, not
/// starting with `.` or `-`.
fn repo_name(path: &str) -> Result<String, PktLineError> {
    let bad = || PktLineError::BadPath(printable(path));
    let name = path.strip_prefix('/').ok_or_else(bad)?;
    let name = name.strip_suffix('/').unwrap_or(name);
    let name = name.strip_suffix(".git").unwrap_or(name);
    if is_valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(bad())
    }
}

/// Whether `name` is usable as a mirror name (and so as a file name).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Encode `ERR <msg>` as a pkt-line; the client prints `fatal: remote error: <msg>`.
pub fn err_packet(msg: &str) -> Vec<u8> {
    let mut msg: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let limit = MAX_PKT_LEN - 4 - "ERR \n".len();
    if msg.len() > limit {
        let mut cut = limit;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    let body = format!("ERR {msg}\n");
    let mut out = format!("{:04x}", body.len() + 4).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Keep untrusted text short and printable before it goes into a message.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(payload: &[u8]) -> Vec<u8> {
        let mut v = format!("{:04x}", payload.len() + 4).into_bytes();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn upload_pack_request_with_host_parses() {
        let r = parse_request(b"git-upload-pack /work.git\0host=proxy.internal\0").unwrap();
        assert_eq!(r.service, Service::UploadPack);
        assert_eq!(r.repo, "work");
        assert_eq!(r.host.as_deref(), Some("proxy.internal"));
        assert_eq!(r.protocol_version, None);
    }

    #[test]
    fn version_two_in_extra_parameters_is_seen() {
        let r = parse_request(b"git-upload-pack /a.git\0host=h\0\0version=2\0").unwrap();
        assert_eq!(r.protocol_version, Some(2));
    }

    #[test]
    fn unknown_protocol_version_is_ignored() {
        let r = parse_request(b"git-upload-pack /a.git\0host=h\0\0version=9:x\0").unwrap();
        assert_eq!(r.protocol_version, None);
    }

    #[test]
    fn receive_pack_without_host_parses() {
        let r = parse_request(b"git-receive-pack /a\0").unwrap();
        assert_eq!(r.service, Service::ReceivePack);
        assert_eq!(r.repo, "a");
    }

    #[test]
    fn upload_archive_is_refused() {
        let e = parse_request(b"git-upload-archive /a.git\0").unwrap_err();
        assert_eq!(e, PktLineError::UnknownService("git-upload-archive".into()));
    }

    #[test]
    fn path_traversal_is_refused() {
        for p in [
            "/../etc.git",
            "/a/b.git",
            "a.git",
            "/.git",
            "/-x.git",
            "/~root.git",
        ] {
            let line = format!("git-upload-pack {p}\0");
            assert!(
                matches!(
                    parse_request(line.as_bytes()),
                    Err(PktLineError::BadPath(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn flush_packet_is_not_a_request() {
        assert_eq!(
            PktLine::new_checked(b"0000").unwrap_err(),
            PktLineError::NotData
        );
    }

    #[test]
    fn length_three_and_non_hex_are_bad_lengths() {
        assert_eq!(parse_len(b"0003"), Err(PktLineError::BadLength));
        assert_eq!(parse_len(b"00g4"), Err(PktLineError::BadLength));
        assert_eq!(parse_len(b"ffff"), Err(PktLineError::BadLength));
    }

    #[test]
    fn err_packet_has_its_own_length() {
        let p = err_packet("no such repository");
        let line = PktLine::new_checked(&p).unwrap();
        assert_eq!(line.payload(), b"ERR no such repository\n");
    }

    #[test]
    fn err_packet_of_huge_message_still_fits() {
        let p = err_packet(&"é".repeat(70_000));
        assert!(PktLine::new_checked(&p).is_ok());
    }

    #[tokio::test]
    async fn read_request_reads_no_more_than_one_packet() {
        let mut data = pkt(b"git-upload-pack /a.git\0host=h\0");
        data.extend_from_slice(b"0000rest");
        let mut cursor = std::io::Cursor::new(data);
        let r = read_request(&mut cursor).await.unwrap();
        assert_eq!(r.repo, "a");
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"0000rest");
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&payload);
        }

        #[test]
        fn arbitrary_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read_request(&mut std::io::Cursor::new(data)));
        }

        #[test]
        fn valid_names_round_trip(name in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,30}", v in 0u8..3) {
            let line = format!("git-upload-pack /{name}.git\0host=x\0\0version={v}\0");
            let r = parse_request(line.as_bytes()).unwrap();
            prop_assert_eq!(r.repo, name);
            prop_assert_eq!(r.protocol_version, Some(v));
        }
    }
}
