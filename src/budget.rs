//! The proxy-wide budget of request-body bytes in memory
//! (`limits.max_inflight_body_bytes`): a body reserves its declared length
//! before a byte is read, or its bytes as they arrive when it declares none,
//! and gives them back when its request is done. A reservation that does not
//! fit is refused, so many large bodies at once get 503s instead of taking the
//! process's memory.
//!
//! The limit is passed at each reservation (it comes from the current config
//! and may change on reload); the count survives reloads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics;

/// Bytes reserved by bodies in flight.
#[derive(Debug, Default, Clone)]
pub struct BodyBudget {
    used: Arc<AtomicUsize>,
}

impl BodyBudget {
    /// Bytes reserved now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` if the total stays within `limit`.
    pub fn reserve(&self, bytes: usize, limit: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            used: self.used.clone(),
            bytes: 0,
        };
        reservation.grow_to(bytes, limit).then_some(reservation)
    }
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Reservation {
    /// Grows the reservation to `bytes` if the total stays within `limit`;
    /// false (and unchanged) when it would not.
    pub fn grow_to(&mut self, bytes: usize, limit: usize) -> bool {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|m| *m > 0) else {
            return true;
        };
        let grown = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|total| *total <= limit)
            });
        match grown {
            Ok(before) => {
                self.bytes = bytes;
                metrics::body_bytes_in_flight(before + more);
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let before = self.used.fetch_sub(self.bytes, Ordering::AcqRel);
            metrics::body_bytes_in_flight(before.saturating_sub(self.bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_are_given_back() {
        let budget = BodyBudget::default();
        let a = budget.reserve(60, 100).expect("fits");
        assert!(budget.reserve(50, 100).is_none(), "60 + 50 > 100");
        let mut b = budget.reserve(10, 100).expect("fits");
        assert!(b.grow_to(40, 100));
        assert!(!b.grow_to(41, 100), "would pass the limit");
        assert_eq!(b.bytes(), 40);
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow_to(90, 100));
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(0, 0).is_some(), "an empty body always fits");
    }
}
