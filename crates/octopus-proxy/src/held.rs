//! A count octopus keeps per request (admitted on a listener, in flight to a cluster,
//! in flight to an endpoint), released when the request's response body is done.
//!
//! Each is an `Arc` to the owner of the count, type-erased without an allocation (an
//! `Arc<Owner>` coerces to `Arc<dyn Release>` in place), so the response [`Body`]
//! can carry them in fixed slots instead of a boxed wrapper per layer.
//!
//! [`Body`]: crate::body::Body

use std::sync::Arc;

/// The owner of a per-request count: gives one back.
pub trait Release: Send + Sync {
    fn release(&self);
}

/// One unit of a count, given back when dropped.
pub struct Held(Arc<dyn Release>);

impl Held {
    /// Takes a unit the caller has already counted on `owner`.
    pub fn new(owner: Arc<dyn Release>) -> Self {
        Held(owner)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}
