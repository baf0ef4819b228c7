//! Circuit breaking at the cluster level: limits on connections, requests waiting for
//! a connection, and requests in flight. A request over a limit is answered 503
//! `circuit open: <limit>` at once and never queued: an overloaded upstream sheds load
//! instead of building a backlog in the sidecar.

mod layer;
mod limits;

pub use layer::{CircuitBreaker, CircuitBreakerLayer};
pub use limits::{Circuit, ConnectionSlot, RequestSlot};
