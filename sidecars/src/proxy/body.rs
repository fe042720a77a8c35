//! Reading a body into memory within the scanning cap and the bottle's
//! memory budget. A body whose length is announced is reserved whole before
//! the first byte is read; one that is not is reserved as it grows.

use super::budget::{self, Budget, OverBudget};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// How long the rest of a refused body is read and thrown away, at most, so
/// the client sees the refusal rather than a reset connection. 500 parallel
/// 16 MiB uploads over budget (tests/exhaust.rs) need more than 10 s to
/// drain through a container's forward: with 10 s, 402 of them were resets.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the body is larger than the {cap}-byte scanning cap")]
    TooLarge { cap: usize },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("the body was cut off")]
    Cut,
}

/// Read `body` whole: at most `cap` bytes, every allocated byte reserved in
/// `budget` for as long as the returned bytes live. Over the budget, the rest
/// of the body (up to `cap`) is read and dropped before returning, so the
/// connection can carry the refusal.
pub async fn read<B>(mut body: B, cap: usize, budget: &Arc<Budget>) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut reservation = budget.reservation();
    let announced = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut buf = Vec::new();
    if let Some(n) = announced {
        if n > cap {
            return Err(ReadError::TooLarge { cap });
        }
        if let Err(e) = budget::grow_vec(&mut buf, n, n, &mut reservation) {
            drain(body, cap).await;
            return Err(e.into());
        }
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Cut)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len().saturating_add(data.len()) > cap {
            return Err(ReadError::TooLarge { cap });
        }
        if let Err(e) = budget::grow_vec(&mut buf, data.len(), cap, &mut reservation) {
            drain(body, cap.saturating_sub(buf.len())).await;
            return Err(e.into());
        }
        buf.extend_from_slice(&data);
    }
    Ok(budget::hold(buf, reservation))
}

/// Read and drop up to `limit` bytes of `body` (bounded in time).
async fn drain<B>(mut body: B, limit: usize)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async move {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > limit {
                    break;
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(parts: &[&'static [u8]]) -> impl hyper::body::Body<Data = Bytes> + Unpin {
        let frames: Vec<Result<_, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn an_announced_body_is_reserved_whole_while_it_lives() {
        let budget = Budget::new(1000);
        let got = read(Full::new(Bytes::from_static(&[7u8; 600])), 1000, &budget)
            .await
            .unwrap();
        assert_eq!(got.len(), 600);
        assert_eq!(budget.used(), 600);
        assert_eq!(
            read(Full::new(Bytes::from_static(&[7u8; 600])), 1000, &budget).await,
            Err(ReadError::OverBudget(OverBudget { limit: 1000 }))
        );
        assert_eq!(budget.used(), 600, "a refused body reserves nothing");
        drop(got);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_is_reserved_as_it_grows_and_capped() {
        let budget = Budget::new(1 << 20);
        let got = read(chunked(&[b"abc", b"def"]), 100, &budget)
            .await
            .unwrap();
        assert_eq!(&got[..], b"abcdef");
        assert!(budget.used() >= 6 && budget.used() <= 100);
        drop(got);
        assert_eq!(
            read(chunked(&[&[0u8; 60], &[0u8; 60]]), 100, &budget).await,
            Err(ReadError::TooLarge { cap: 100 })
        );
        let tiny = Budget::new(50);
        assert!(matches!(
            read(chunked(&[&[0u8; 60]]), 100, &tiny).await,
            Err(ReadError::OverBudget(_))
        ));
        assert_eq!(
            read(Full::new(Bytes::from_static(&[1u8; 101])), 100, &tiny).await,
            Err(ReadError::TooLarge { cap: 100 })
        );
        assert_eq!(budget.used() + tiny.used(), 0);
    }
}
