//! Framing: a 4-byte big-endian length, a kind byte, a 4-byte big-endian
//! session id, then the payload (JSON for control frames, raw bytes for data).
//!
//! A frame whose length is out of bounds breaks the stream and closes the
//! connection; a well-framed frame with an unknown kind or bad JSON only
//! fails its session ([`BadFrame`]).

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{Frame, Msg, Stream};

/// Bytes of kind + session id after the length prefix.
pub const HEADER_LEN: usize = 5;
/// Largest accepted frame body (kind + session + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest data payload senders put in one frame.
pub const DATA_CHUNK: usize = 64 * 1024;

const KIND_CONTROL: u8 = 0;
const KIND_STDIN: u8 = 1;
const KIND_STDOUT: u8 = 2;
const KIND_STDERR: u8 = 3;
const KIND_FILE: u8 = 4;

/// Errors that break the framing; the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame i/o")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("control message does not encode")]
    Encode(#[from] serde_json::Error),
}

/// A well-framed frame whose contents are invalid; fails its session only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame on session {session}: {reason}")]
pub struct BadFrame {
    pub session: u32,
    pub reason: String,
}

/// Decodes one frame body (everything after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Result<Frame, BadFrame>, FrameError> {
    let Some((header, payload)) = body.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::TooShort(body.len()));
    };
    let [kind, s0, s1, s2, s3] = *header;
    let session = u32::from_be_bytes([s0, s1, s2, s3]);
    let stream = match kind {
        KIND_CONTROL => {
            return Ok(serde_json::from_slice::<Msg>(payload)
                .map(|msg| Frame::Control { session, msg })
                .map_err(|e| BadFrame {
                    session,
                    reason: format!("bad control message: {e}"),
                }));
        }
        KIND_STDIN => Stream::Stdin,
        KIND_STDOUT => Stream::Stdout,
        KIND_STDERR => Stream::Stderr,
        KIND_FILE => Stream::File,
        other => {
            return Ok(Err(BadFrame {
                session,
                reason: format!("unknown frame kind {other}"),
            }))
        }
    };
    Ok(Ok(Frame::Data {
        session,
        stream,
        bytes: Bytes::copy_from_slice(payload),
    }))
}

/// Encodes a frame, length prefix included.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let (kind, session, payload): (u8, u32, std::borrow::Cow<'_, [u8]>) = match frame {
        Frame::Control { session, msg } => {
            (KIND_CONTROL, *session, serde_json::to_vec(msg)?.into())
        }
        Frame::Data {
            session,
            stream,
            bytes,
        } => {
            let kind = match stream {
                Stream::Stdin => KIND_STDIN,
                Stream::Stdout => KIND_STDOUT,
                Stream::Stderr => KIND_STDERR,
                Stream::File => KIND_FILE,
            };
            (kind, *session, bytes.as_ref().into())
        }
    };
    let body_len = HEADER_LEN + payload.len();
    if body_len > MAX_FRAME {
        return Err(FrameError::TooLarge(body_len));
    }
    let len = u32::try_from(body_len).map_err(|_| FrameError::TooLarge(body_len))?;
    let mut out = Vec::with_capacity(4 + body_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream between frames.
    pub async fn read(&mut self) -> Result<Option<Result<Frame, BadFrame>>, FrameError> {
        let mut len = [0u8; 4];
        match self.inner.read(&mut len[..1]).await? {
            0 => return Ok(None),
            _ => self.read_exact(&mut len[1..]).await?,
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len < HEADER_LEN {
            return Err(FrameError::TooShort(len));
        }
        let mut body = std::mem::take(&mut self.buf);
        body.resize(len, 0);
        self.read_exact(&mut body).await?;
        let frame = decode_body(&body);
        self.buf = body;
        frame.map(Some)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    pub async fn write(&mut self, frame: &Frame) -> Result<(), FrameError> {
        let bytes = encode(frame)?;
        self.inner.write_all(&bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Writes raw bytes (tests use it to send malformed frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// Splits `data` into data frames of at most [`DATA_CHUNK`] bytes.
pub fn data_frames(session: u32, stream: Stream, data: Bytes) -> impl Iterator<Item = Frame> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(DATA_CHUNK);
        Some(Frame::Data {
            session,
            stream,
            bytes: rest.split_to(n),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ExitStatus;
    use proptest::prelude::*;

    async fn round_trip(frame: &Frame) -> Frame {
        let bytes = encode(frame).unwrap();
        let mut reader = FrameReader::new(&bytes[..]);
        reader.read().await.unwrap().unwrap().unwrap()
    }

    #[tokio::test]
    async fn control_and_data_frames_round_trip() {
        let exit = Frame::control(
            7,
            Msg::Exit {
                status: ExitStatus::Signal(9),
            },
        );
        assert_eq!(round_trip(&exit).await, exit);
        let data = Frame::Data {
            session: 3,
            stream: Stream::Stderr,
            bytes: Bytes::from_static(b"\0\xff"),
        };
        assert_eq!(round_trip(&data).await, data);
    }

    #[tokio::test]
    async fn unknown_kind_fails_only_its_session() {
        let bytes = [0, 0, 0, 6, 9, 0, 0, 0, 5, 1];
        let mut reader = FrameReader::new(&bytes[..]);
        let bad = reader.read().await.unwrap().unwrap().unwrap_err();
        assert_eq!(bad.session, 5);
        assert!(reader.read().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_breaks_the_stream() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0];
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(reader.read().await, Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_frame_is_truncation() {
        let bytes = [0, 0, 0, 9, 0, 0];
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(reader.read().await, Err(FrameError::Truncated)));
    }

    #[test]
    fn large_data_is_split_into_chunks() {
        let frames: Vec<_> =
            data_frames(1, Stream::File, Bytes::from(vec![7u8; DATA_CHUNK * 2 + 1])).collect();
        assert_eq!(frames.len(), 3);
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body(&body);
        }

        #[test]
        fn random_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut reader = FrameReader::new(&bytes[..]);
                while let Ok(Some(_)) = reader.read().await {}
            });
        }

        #[test]
        fn control_bodies_with_random_json_never_panic(s in ".{0,200}") {
            let mut body = vec![0u8, 0, 0, 0, 1];
            body.extend_from_slice(s.as_bytes());
            let _ = decode_body(&body);
        }
    }
}
