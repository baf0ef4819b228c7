//! End-to-end tests: octopus on ephemeral 127.0.0.1 ports in front of real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_log;
mod admin;
mod balancing;
mod chaos;
mod errors;
mod kubernetes;
mod limits;
mod mtls;
mod observability;
mod pool;
mod probes;
mod protocols;
mod rate_limit;
mod reload;
mod resilience;
mod rollout;
mod routing;
mod tcp;
mod tracing;
mod trust;
