//! Route timeout: bounds the whole request, retries included; on expiry the inner
//! future is dropped (cancelling the upstream request) and the client gets 504.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use service::Timeout;
