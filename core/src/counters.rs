use std::sync::atomic::{AtomicU64, Ordering};

/// Lock-free counters for one table row.
#[derive(Debug, Default)]
pub struct CallCounters {
    /// Calls that reached the handler.
    pub calls: AtomicU64,
    /// Of those, calls that returned an error or a fault.
    pub errors: AtomicU64,
    /// Calls refused by the deny/allow lists.
    pub denied: AtomicU64,
    /// Calls refused for the caller's ring.
    pub wrong_ring: AtomicU64,
}

/// Lock-free counters for refusals that have no row.
#[derive(Debug, Default)]
pub struct RefusalCounters {
    /// Calls made while hypercalls were disabled.
    pub disabled: AtomicU64,
    /// Calls with a number no row has, or a reserved, unimplemented row.
    pub unknown: AtomicU64,
    /// Calls the personality's decoder rejected (malformed input).
    pub malformed: AtomicU64,
}

/// A point-in-time copy of one row's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CounterSnapshot {
    /// Calls that reached the handler.
    pub calls: u64,
    /// Of those, calls that returned an error or a fault.
    pub errors: u64,
    /// Calls refused by the deny/allow lists.
    pub denied: u64,
    /// Calls refused for the caller's ring.
    pub wrong_ring: u64,
}

impl CallCounters {
    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            wrong_ring: self.wrong_ring.load(Ordering::Relaxed),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
