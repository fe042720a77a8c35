//! Streaming redaction of route-host responses: every real token, in every
//! form the buffered redaction knows ([`routes::literal_patterns`]), is
//! replaced by its route's placeholder while the body flows. A chunk is
//! passed on as soon as it arrives except for a tail of at most (longest
//! form − 1) bytes that could still be the start of a form completed by the
//! next chunk. Tokens hold no newline, so a chunk ending on a line or an SSE
//! event boundary (`\n\n`) is passed on whole. The body is read one frame at
//! a time, as the client takes it: back-pressure (HTTP/2 flow control
//! included) reaches the upstream unchanged.

use super::routes::{self, LiteralKind, ResolvedRoute};
use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One literal: a token form (replaced) or a placeholder (left as it is,
/// matched so that a form inside it is not replaced, as the buffered path).
struct Needle {
    bytes: Box<[u8]>,
    replacement: Option<Bytes>,
}

/// The compiled literals of one policy: what a [`Redactor`] looks for.
pub struct Redaction {
    matcher: Option<AhoCorasick>,
    needles: Vec<Needle>,
    /// Length of the longest needle.
    longest: usize,
    /// Bytes some needle starts with.
    starts: [bool; 256],
}

impl fmt::Debug for Redaction {
    /// Never shows the needles: they are real tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redaction")
            .field("needles", &self.needles.len())
            .field("longest", &self.longest)
            .finish_non_exhaustive()
    }
}

impl Redaction {
    pub fn new(routes: &[ResolvedRoute]) -> Self {
        let mut needles = Vec::new();
        for (pattern, (route, kind)) in routes::literal_patterns(routes) {
            let replacement = match kind {
                LiteralKind::Token => routes
                    .get(route)
                    .map(|r| Bytes::from(r.route.placeholder())),
                LiteralKind::Placeholder => None,
            };
            needles.push(Needle {
                bytes: pattern.into_bytes().into_boxed_slice(),
                replacement,
            });
        }
        let matcher = (!needles.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(needles.iter().map(|n| &n.bytes[..]))
                    .ok()
            })
            .flatten();
        let mut starts = [false; 256];
        for n in &needles {
            if let Some(&b) = n.bytes.first() {
                starts[usize::from(b)] = true;
            }
        }
        Self {
            matcher,
            longest: needles.iter().map(|n| n.bytes.len()).max().unwrap_or(0),
            needles,
            starts,
        }
    }

    /// The most bytes a [`Redactor`] ever holds back.
    pub fn max_held(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    /// Whether `tail` is shorter than some needle and starts it: more bytes
    /// could complete (or lengthen) a match that begins here.
    fn could_grow(&self, tail: &[u8]) -> bool {
        tail.first().is_some_and(|&b| self.starts[usize::from(b)])
            && self
                .needles
                .iter()
                .any(|n| n.bytes.len() > tail.len() && n.bytes.starts_with(tail))
    }

    /// Redact `data` up to where more input could change the result
    /// (everything when `at_end`). Returns the output and how many bytes of
    /// `data` it covers; the rest is to be held until more arrives.
    fn run(&self, data: &Bytes, at_end: bool) -> (Bytes, usize) {
        let Some(matcher) = &self.matcher else {
            return (data.clone(), data.len());
        };
        // Positions where a needle could still begin and run past the end:
        // only the last `longest - 1` bytes can be such positions.
        let growable: Vec<usize> = if at_end {
            Vec::new()
        } else {
            (data.len().saturating_sub(self.max_held())..data.len())
                .filter(|&i| data.get(i..).is_some_and(|t| self.could_grow(t)))
                .collect()
        };
        let first_growable_from = |from: usize| growable.iter().copied().find(|&p| p >= from);
        let mut out: Option<Vec<u8>> = None;
        let mut done = 0;
        for m in matcher.find_iter(&data[..]) {
            // A match is final unless a needle could still begin at or
            // before its start (leftmost-longest would then choose anew).
            if first_growable_from(done).is_some_and(|p| p <= m.start()) {
                break;
            }
            let Some(replacement) = self
                .needles
                .get(m.pattern().as_usize())
                .and_then(|n| n.replacement.as_ref())
            else {
                continue; // a placeholder: passed on as it is
            };
            let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            buf.extend_from_slice(&data[done..m.start()]);
            buf.extend_from_slice(replacement);
            done = m.end();
        }
        let hold = first_growable_from(done).unwrap_or(data.len());
        match out {
            Some(mut buf) => {
                buf.extend_from_slice(&data[done..hold]);
                (Bytes::from(buf), hold)
            }
            None => (data.slice(..hold), hold),
        }
    }
}

/// Redaction of one body, fed chunk by chunk.
#[derive(Debug)]
pub struct Redactor {
    redaction: Arc<Redaction>,
    held: Vec<u8>,
}

impl Redactor {
    pub fn new(redaction: Arc<Redaction>) -> Self {
        Self {
            redaction,
            held: Vec::new(),
        }
    }

    /// Take in `chunk`; returns what can be passed on now (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let data = if self.held.is_empty() {
            chunk
        } else {
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(&chunk);
            Bytes::from(joined)
        };
        let (out, used) = self.redaction.run(&data, false);
        self.held = data.get(used..).map(<[u8]>::to_vec).unwrap_or_default();
        out
    }

    /// The end of the body: what is still held, redacted.
    pub fn finish(&mut self) -> Bytes {
        let data = Bytes::from(std::mem::take(&mut self.held));
        self.redaction.run(&data, true).0
    }

    /// Bytes held back right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// A body passed on through a [`Redactor`]. Trailers are dropped (they are
/// not redacted), as the buffered path always did.
#[derive(Debug)]
pub struct RedactedBody<B> {
    inner: B,
    redactor: Redactor,
    ended: bool,
}

impl<B> RedactedBody<B> {
    pub fn new(inner: B, redaction: Arc<Redaction>) -> Self {
        Self {
            inner,
            redactor: Redactor::new(redaction),
            ended: false,
        }
    }
}

impl<B> HttpBody for RedactedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            // One frame at a time: nothing is read before the client asked.
            let out = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.redactor.push(data),
                    Err(_trailers) => continue,
                },
                Some(Err(e)) => {
                    // What is held is never passed on unredacted.
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.ended = true;
                    this.redactor.finish()
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.inner.is_end_stream() && self.redactor.held() == 0)
    }

    fn size_hint(&self) -> SizeHint {
        // Redaction changes the length; nothing is promised.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HostPattern, Route, TokenSource};
    use crate::proxy::routes::{resolve, token_forms, Literals};
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    const TOKEN: &str = "sk-ant-ab/cd+ef=\"gh<ij>&kl~mn-0123";

    fn routes(token: &str) -> Vec<ResolvedRoute> {
        vec![resolve(&Route {
            name: "api".into(),
            host: HostPattern::parse("api.example").unwrap(),
            header: "x-api-key".into(),
            prefix: String::new(),
            token: TokenSource::Command(vec!["echo".into(), token.into()]),
        })
        .unwrap()]
    }

    fn redaction(token: &str) -> Arc<Redaction> {
        Arc::new(Redaction::new(&routes(token)))
    }

    /// Feed `data` in the given pieces; everything that came out, in order.
    fn stream(r: &Arc<Redaction>, pieces: &[&[u8]]) -> Vec<u8> {
        let mut red = Redactor::new(r.clone());
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&red.push(Bytes::copy_from_slice(p)));
            assert!(red.held() <= r.max_held());
        }
        out.extend_from_slice(&red.finish());
        out
    }

    fn encoded(token: &str) -> Vec<String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut all = token_forms(token);
        // Whole encodings as an upstream would write them.
        all.push(b64.encode(token));
        all.push(b64.encode(format!("user:{token}")));
        all.push(base64::engine::general_purpose::URL_SAFE.encode(format!("x{token}")));
        all
    }

    #[test]
    fn a_token_split_at_every_boundary_is_redacted_in_every_form() {
        let r = redaction(TOKEN);
        let routes = routes(TOKEN);
        let literals = Literals::new(&routes);
        let forms = encoded(TOKEN);
        assert!(forms.len() >= 10, "{forms:?}");
        for form in &forms {
            let data = format!("data: {{\"text\":\"before {form} after\"}}\n\n");
            let data = data.as_bytes();
            // What the buffered path makes of it is the reference.
            let want = literals.redact_tokens(data, &routes).unwrap();
            assert!(!want.windows(form.len()).any(|w| w == form.as_bytes()));
            for cut in 0..=data.len() {
                let (a, b) = data.split_at(cut);
                assert_eq!(stream(&r, &[a, b]), want, "{form} cut at {cut}");
            }
            for (i, j) in [(3, 9), (7, 8), (10, 30), (12, 13)] {
                let (a, rest) = data.split_at(i);
                let (b, c) = rest.split_at(j);
                assert_eq!(stream(&r, &[a, b, c]), want, "{form} cut at {i},{j}");
            }
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(stream(&r, &bytes), want, "{form} in 1-byte chunks");
        }
    }

    #[test]
    fn streamed_redaction_matches_the_buffered_one_on_overlapping_forms() {
        // Tokens whose forms overlap themselves and each other.
        for token in [
            "aaaaaaaaaaab",
            "abababababab",
            "a%b%c%d%e%f%",
            "tok/tok/tok/tok",
        ] {
            let r = redaction(token);
            let routes = routes(token);
            let literals = Literals::new(&routes);
            let mut data = Vec::new();
            for form in encoded(token) {
                data.extend_from_slice(b"..");
                data.extend_from_slice(&form.as_bytes()[..form.len() / 2]);
                data.extend_from_slice(form.as_bytes());
                data.extend_from_slice(&form.as_bytes()[form.len() / 2..]);
            }
            let want = literals
                .redact_tokens(&data, &routes)
                .unwrap_or(data.clone());
            for size in [1, 2, 3, 5, 7, 11, 64] {
                let pieces: Vec<&[u8]> = data.chunks(size).collect();
                assert_eq!(stream(&r, &pieces), want, "{token} in {size}-byte chunks");
            }
        }
    }

    #[test]
    fn a_token_that_begins_another_waits_for_the_longer_one() {
        let mut both = routes("sk-shared-prefix-01");
        let mut long = routes("sk-shared-prefix-01-and-more");
        long[0].route.name = "long".into();
        both.append(&mut long);
        let r = Arc::new(Redaction::new(&both));
        let literals = Literals::new(&both);
        let data = b"a sk-shared-prefix-01-and-more b sk-shared-prefix-01 c";
        let want = literals.redact_tokens(data, &both).unwrap();
        assert_eq!(
            want,
            b"a bottle-placeholder-long b bottle-placeholder-api c".to_vec()
        );
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(stream(&r, &[a, b]), want, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_cannot_start_a_token_are_passed_on_at_once() {
        let r = redaction(TOKEN);
        let mut red = Redactor::new(r.clone());
        let event = b"event: content_block_delta\ndata: {\"text\":\"hi\"}\n\n";
        assert_eq!(&red.push(Bytes::from_static(event))[..], event);
        assert_eq!(red.held(), 0);
        // Only a possible token start is held, and only until it is settled.
        assert_eq!(&red.push(Bytes::from_static(b"data: sk-an"))[..], b"data: ");
        assert_eq!(red.held(), 5);
        assert_eq!(
            &red.push(Bytes::from_static(b"swer\n\n"))[..],
            b"sk-answer\n\n"
        );
        assert_eq!(red.held(), 0);
        // The tail at the end of the body is passed on.
        assert_eq!(&red.push(Bytes::from_static(b"sk-a"))[..], b"");
        assert_eq!(&red.finish()[..], b"sk-a");
    }

    fn channel_body() -> (
        mpsc::Sender<Bytes>,
        RedactedBody<impl HttpBody<Data = Bytes, Error = Infallible> + Unpin>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(data)), rx))
        });
        let body = RedactedBody::new(StreamBody::new(Box::pin(frames)), redaction(TOKEN));
        (tx, body)
    }

    async fn next_data(
        body: &mut (impl HttpBody<Data = Bytes, Error = Infallible> + Unpin),
    ) -> Option<Bytes> {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s")?;
        Some(frame.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn sse_events_arrive_one_by_one_before_the_next_is_sent() {
        let (tx, mut body) = channel_body();
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\"}\n\n".to_string(),
            format!("event: content_block_delta\ndata: {{\"text\":\"key {TOKEN}\"}}\n\n"),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string(),
        ];
        for event in &events {
            tx.send(Bytes::from(event.clone())).await.unwrap();
            // Nothing more is sent until this event came out whole.
            let got = next_data(&mut body).await.unwrap();
            let got = String::from_utf8(got.to_vec()).unwrap();
            assert_eq!(got, event.replace(TOKEN, "bottle-placeholder-api"));
        }
        drop(tx);
        assert!(next_data(&mut body).await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_token_split_across_frames_comes_out_once_completed() {
        let (tx, mut body) = channel_body();
        let (a, b) = TOKEN.split_at(9);
        tx.send(Bytes::from(format!("data: {a}"))).await.unwrap();
        assert_eq!(&next_data(&mut body).await.unwrap()[..], b"data: ");
        tx.send(Bytes::from(format!("{b}\n\n"))).await.unwrap();
        assert_eq!(
            &next_data(&mut body).await.unwrap()[..],
            b"bottle-placeholder-api\n\n"
        );
    }

    #[tokio::test]
    async fn the_body_is_read_only_as_the_client_reads_it() {
        let (tx, mut body) = channel_body();
        // The channel holds one chunk.
        tx.try_send(Bytes::from_static(b"one\n")).unwrap();
        assert!(tx.try_send(Bytes::from_static(b"two\n")).is_err());
        assert_eq!(&next_data(&mut body).await.unwrap()[..], b"one\n");
        tx.try_send(Bytes::from_static(b"two\n")).unwrap();
        // The client took one frame: the body read one, not the next.
        assert!(tx.try_send(Bytes::from_static(b"three\n")).is_err());
    }

    #[tokio::test]
    async fn a_hundred_mib_stream_passes_in_bounded_memory() {
        let r = redaction(TOKEN);
        const CHUNK: usize = 64 * 1024;
        const TOTAL: usize = 100 << 20;
        let mut chunk = vec![b'x'; CHUNK];
        // A token straddling every chunk boundary.
        let t = TOKEN.as_bytes();
        chunk[CHUNK - 10..].copy_from_slice(&t[..10]);
        chunk[..t.len() - 10].copy_from_slice(&t[10..]);
        let chunk = Bytes::from(chunk);
        let frames = futures_util::stream::iter(
            (0..TOTAL / CHUNK).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        let mut body = RedactedBody::new(StreamBody::new(frames), r.clone());
        let (mut total, mut frames_out, mut biggest) = (0usize, 0usize, 0usize);
        let mut tokens = 0usize;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(!data.windows(t.len()).any(|w| w == t));
            tokens += data
                .windows(b"bottle-placeholder-api".len())
                .filter(|w| w == b"bottle-placeholder-api")
                .count();
            biggest = biggest.max(data.len());
            total += data.len();
            frames_out += 1;
            assert!(body.redactor.held() <= r.max_held());
        }
        // One frame out per frame in (and the held tail at the end), none
        // much bigger than a chunk.
        assert_eq!(frames_out, TOTAL / CHUNK + 1);
        assert!(biggest <= CHUNK + r.max_held() + 64, "{biggest}");
        assert_eq!(tokens, TOTAL / CHUNK - 1);
        let grow = "bottle-placeholder-api".len() as isize - t.len() as isize;
        assert_eq!(
            total as isize,
            TOTAL as isize + grow * (tokens as isize),
            "every other byte came out"
        );
    }
}
