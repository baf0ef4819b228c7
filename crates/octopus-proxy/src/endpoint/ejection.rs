//! An endpoint's ejection state: the data of outlier detection, kept with the
//! endpoint so it survives reloads that reuse the endpoint. The policy (when to eject,
//! for how long, how much of a cluster) is the `outlier` layer's.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

pub(crate) const CLOSED: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const HALF_OPEN: u8 = 2;

/// Per-endpoint ejection state: atomics only, updated on every response.
#[derive(Debug, Default)]
pub struct Ejection {
    pub(crate) consecutive: AtomicU32,
    pub(crate) state: AtomicU8,
    pub(crate) times_ejected: AtomicU32,
}

impl Ejection {
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    pub fn name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            OPEN => "open",
            HALF_OPEN => "half_open",
            _ => "closed",
        }
    }

    /// Back to closed with a clean slate (the cluster no longer detects outliers).
    pub(crate) fn reset(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.times_ejected.store(0, Ordering::Release);
        self.state.store(CLOSED, Ordering::Release);
    }
}
