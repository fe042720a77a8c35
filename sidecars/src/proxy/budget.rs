//! The memory budget for buffered bodies: one per bottle's proxy, shared by
//! every request (each HTTP/1.1 request and each HTTP/2 stream). Bytes are
//! reserved before they are held and given back when the reservation drops;
//! a reservation that would go over the limit fails at once (the request
//! gets 503), it never waits. A buffer handed on is a [`Bytes`] that owns its
//! reservation ([`hold`]), so the bytes stay counted for exactly as long as
//! they exist, wherever hyper keeps them.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A shared limit on buffered bytes.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// A reservation would take the budget over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {limit}-byte budget for buffered bodies is in use")]
pub struct OverBudget {
    pub limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A reservation holding nothing yet.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// Bytes held against a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    /// Reserve `n` more bytes, or fail without reserving any.
    pub fn grow(&mut self, n: usize) -> Result<(), OverBudget> {
        let over = OverBudget {
            limit: self.budget.limit,
        };
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n)
                    .filter(|next| *next <= self.budget.limit)
            })
            .map_err(|_| over)?;
        self.held += n;
        Ok(())
    }

    /// Bytes this reservation holds.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// A buffer that owns the reservation of its allocation.
struct Held {
    data: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` as [`Bytes`] that give `reservation` back when the last clone or
/// slice of them is dropped.
pub fn hold(data: Vec<u8>, reservation: Reservation) -> Bytes {
    Bytes::from_owner(Held {
        data,
        _reservation: reservation,
    })
}

/// Make room in `buf` for `extra` more bytes, reserving whatever capacity
/// the buffer gains (doubling, but never past `cap`), so the budget counts
/// allocated bytes rather than used ones.
pub fn grow_vec(
    buf: &mut Vec<u8>,
    extra: usize,
    cap: usize,
    reservation: &mut Reservation,
) -> Result<(), OverBudget> {
    let need = buf.len().saturating_add(extra);
    if need <= buf.capacity() {
        return Ok(());
    }
    let target = buf
        .capacity()
        .saturating_mul(2)
        .max(4096)
        .min(cap)
        .max(need);
    reservation.grow(target - buf.capacity())?;
    buf.reserve_exact(target - buf.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_limit_and_give_bytes_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        a.grow(60).unwrap();
        assert_eq!(b.grow(41), Err(OverBudget { limit: 100 }));
        assert_eq!(b.held(), 0, "a failed grow reserves nothing");
        b.grow(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn growing_a_vec_reserves_its_capacity_and_stops_at_the_cap() {
        let budget = Budget::new(1 << 20);
        let mut r = budget.reservation();
        let mut buf = Vec::new();
        for _ in 0..10 {
            grow_vec(&mut buf, 3000, 20_000, &mut r).unwrap();
            buf.extend_from_slice(&[0u8; 3000]);
            assert!(
                r.held() >= buf.capacity(),
                "{} < {}",
                r.held(),
                buf.capacity()
            );
        }
        assert!(buf.capacity() <= 30_000);
        let small = Budget::new(5000);
        let mut r = small.reservation();
        let mut buf = Vec::new();
        grow_vec(&mut buf, 3000, 1 << 20, &mut r).unwrap();
        buf.extend_from_slice(&[0u8; 3000]);
        assert!(grow_vec(&mut buf, 3000, 1 << 20, &mut r).is_err());
    }

    #[test]
    fn held_bytes_keep_their_reservation_until_the_last_slice_is_dropped() {
        let budget = Budget::new(1000);
        let mut r = budget.reservation();
        let mut buf = Vec::new();
        grow_vec(&mut buf, 100, 100, &mut r).unwrap();
        buf.extend_from_slice(&[1u8; 100]);
        let bytes = hold(buf, r);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(budget.used(), 100);
        assert_eq!(&slice[..], &[1u8; 10]);
        drop(slice);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let budget = Budget::new(1000);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                let peak = peak.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut r = budget.reservation();
                        if r.grow(300).is_ok() {
                            peak.fetch_max(budget.used(), Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 1000);
        assert_eq!(budget.used(), 0);
    }
}
