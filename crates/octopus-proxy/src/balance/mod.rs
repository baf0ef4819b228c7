//! Load balancing over a cluster's endpoints. The balancer sits below retries and the
//! traffic split (each retry may pick another endpoint) and above the per-endpoint
//! services (an endpoint that cannot serve simply stops being picked).

mod round_robin;

pub use round_robin::RoundRobin;
