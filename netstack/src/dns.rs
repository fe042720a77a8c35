//! The DNS answerer: knows one name, forwards nothing.
//!
//! `A <name>` → the gateway; `AAAA <name>` → empty NOERROR; `A`/`AAAA` of any
//! other name → NXDOMAIN; any other type → NOTIMP; other classes → REFUSED;
//! other opcodes → NOTIMP. Responses, truncated or malformed queries get no
//! answer at all.

use std::net::Ipv4Addr;

const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NOERROR: u16 = 0;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;
/// TTL of the one answer, in seconds.
const ANSWER_TTL: u32 = 60;
/// Largest query accepted (UDP and TCP alike).
pub const MAX_QUERY: usize = 4096;

/// Why a query was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("query shorter than its header or question")]
    Truncated,
    #[error("query larger than {MAX_QUERY} bytes")]
    TooLarge,
    #[error("message is a response, not a query")]
    NotQuery,
    #[error("query must hold exactly one question and no answers")]
    Counts,
    #[error("malformed question name")]
    Name,
}

fn be16(b: &[u8], at: usize) -> Result<u16, DnsError> {
    match b.get(at..at + 2) {
        Some(&[h, l]) => Ok(u16::from_be_bytes([h, l])),
        _ => Err(DnsError::Truncated),
    }
}

/// Where the question name ends (one past its terminating zero label), and
/// whether it equals `name` (ASCII case-insensitive).
fn parse_name(q: &[u8], name: &str) -> Result<(usize, bool), DnsError> {
    let mut pos = HEADER_LEN;
    let mut total = 0usize;
    let mut want = name.trim_end_matches('.').split('.');
    let mut matches = true;
    loop {
        let len = usize::from(*q.get(pos).ok_or(DnsError::Truncated)?);
        pos += 1;
        if len == 0 {
            if want.next().is_some() {
                matches = false;
            }
            return Ok((pos, matches));
        }
        // Compression pointers and extended label types do not belong in a question.
        if len > 63 {
            return Err(DnsError::Name);
        }
        total += len + 1;
        if total > 255 {
            return Err(DnsError::Name);
        }
        let label = q.get(pos..pos + len).ok_or(DnsError::Truncated)?;
        pos += len;
        match want.next() {
            Some(w) if w.as_bytes().eq_ignore_ascii_case(label) => {}
            _ => matches = false,
        }
    }
}

/// Builds the response to `query`, or says why it gets none.
pub fn answer(query: &[u8], name: &str, gateway: Ipv4Addr) -> Result<Vec<u8>, DnsError> {
    if query.len() > MAX_QUERY {
        return Err(DnsError::TooLarge);
    }
    let flags = be16(query, 2)?;
    if query.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotQuery);
    }
    if be16(query, 4)? != 1 || be16(query, 6)? != 0 || be16(query, 8)? != 0 {
        return Err(DnsError::Counts);
    }
    let (name_end, is_ours) = parse_name(query, name)?;
    let qtype = be16(query, name_end)?;
    let qclass = be16(query, name_end + 2)?;
    let question = &query[HEADER_LEN..name_end + 4];
    let opcode = (flags >> 11) & 0xf;

    let rcode = if opcode != 0 {
        RCODE_NOTIMP
    } else if qclass != CLASS_IN {
        RCODE_REFUSED
    } else if qtype != TYPE_A && qtype != TYPE_AAAA {
        RCODE_NOTIMP
    } else if !is_ours {
        RCODE_NXDOMAIN
    } else {
        RCODE_NOERROR
    };
    let with_answer = rcode == RCODE_NOERROR && qtype == TYPE_A;

    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + 16);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode echoed, AA, RD echoed, RA clear.
    let rflags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | rcode;
    out.extend_from_slice(&rflags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(with_answer).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    if with_answer {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ANSWER_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&gateway.octets());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn rcode(r: &[u8]) -> u16 {
        u16::from_be_bytes([r[2], r[3]]) & 0xf
    }

    #[test]
    fn a_query_for_our_name_gets_the_gateway() {
        let r = answer(&query("proxy.internal", TYPE_A), "proxy.internal", GW).unwrap();
        assert_eq!(rcode(&r), RCODE_NOERROR);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[10, 0, 2, 2]);
    }

    #[test]
    fn name_match_ignores_case() {
        let r = answer(&query("Proxy.INTERNAL", TYPE_A), "proxy.internal", GW).unwrap();
        assert_eq!(rcode(&r), RCODE_NOERROR);
    }

    #[test]
    fn aaaa_query_for_our_name_gets_an_empty_answer() {
        let r = answer(&query("proxy.internal", TYPE_AAAA), "proxy.internal", GW).unwrap();
        assert_eq!(rcode(&r), RCODE_NOERROR);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
    }

    #[test]
    fn dns_query_for_other_name_gets_nxdomain() {
        for name in [
            "example.com",
            "proxy.internal.evil",
            "internal",
            "xproxy.internal",
        ] {
            let r = answer(&query(name, TYPE_A), "proxy.internal", GW).unwrap();
            assert_eq!(rcode(&r), RCODE_NXDOMAIN, "{name}");
        }
    }

    #[test]
    fn other_query_types_get_notimp() {
        let r = answer(&query("proxy.internal", 15), "proxy.internal", GW).unwrap();
        assert_eq!(rcode(&r), RCODE_NOTIMP);
    }

    #[test]
    fn responses_and_compressed_names_are_dropped() {
        let mut resp = query("proxy.internal", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(answer(&resp, "proxy.internal", GW), Err(DnsError::NotQuery));
        let mut ptr = query("a", TYPE_A);
        ptr[12] = 0xc0;
        assert_eq!(answer(&ptr, "proxy.internal", GW), Err(DnsError::Name));
    }

    #[test]
    fn truncated_queries_are_dropped() {
        let q = query("proxy.internal", TYPE_A);
        for cut in 0..q.len() {
            assert!(
                answer(&q[..cut], "proxy.internal", GW).is_err(),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = answer(&bytes, "proxy.internal", GW);
        }

        #[test]
        fn mutated_queries_never_panic(pos in 0usize..32, val in any::<u8>()) {
            let mut q = query("proxy.internal", TYPE_A);
            let i = pos % q.len();
            q[i] = val;
            let _ = answer(&q, "proxy.internal", GW);
        }
    }
}
