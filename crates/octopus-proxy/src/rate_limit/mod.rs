//! Local rate limiting per route, as Envoy's local rate limit: a token bucket refilled
//! at `requests_per_second` and holding `burst` requests. A request over the limit is
//! answered `429 rate_limited` with `retry-after` at once; it never reaches the
//! upstream. The bucket is lock-free and outlives reloads that leave the limit as it
//! was (see `Bucket::reuse`).

mod bucket;
mod layer;

pub use bucket::Bucket;
pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};
