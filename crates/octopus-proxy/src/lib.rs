//! The Octopus data plane: listeners, the handler, and the tower layers a request
//! passes through, composed in one place: [`stack`] (the map; see also
//! `docs/architecture.md`). Modules depend downwards only; `tests/layering.rs`
//! checks that there is no import cycle.
#![forbid(unsafe_code)]

pub mod access_log;
mod activity;
mod admin;
pub mod admission;
pub mod balance;
pub mod body;
mod boxed;
mod cause;
pub mod circuit_breaker;
pub mod cluster;
pub mod counted;
pub mod descriptors;
pub mod detect;
pub mod endpoint;
pub mod error;
pub mod exchange;
mod failure_log;
pub mod handler;
pub mod headers;
pub mod held;
pub mod in_flight;
pub mod listener;
pub mod mirror;
pub mod original_dst;
pub mod outlier;
mod proxy;
pub mod rate_limit;
pub mod retry;
pub mod router;
pub mod snapshot;
pub mod split;
pub mod stack;
pub mod tcp;
pub mod timeout;
pub mod trace;

use arc_swap::ArcSwap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use error::ProxyError;
pub use proxy::{Proxy, ReloadError, StartError};

pub use admin::LogControl;
pub use boxed::BoxService;

/// State shared by every connection of one proxy.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<snapshot::Snapshot>,
    pub(crate) metrics: Arc<octopus_metrics::Metrics>,
    pub(crate) build: cluster::BuildContext,
    pub(crate) ready: AtomicBool,
    /// Requests in progress per traffic listener side (`max_requests`); kept across
    /// reloads and listener moves.
    pub(crate) outbound_requests: Arc<admission::Admission>,
    pub(crate) inbound_requests: Arc<admission::Admission>,
    /// Each side's share of file descriptors.
    pub(crate) descriptors: descriptors::Budget,
    /// Failed requests in the log, one line per kind per interval.
    pub(crate) failures: failure_log::FailureLog,
    /// The process' log filter, when the binary hands one in (`/log-level`).
    pub(crate) log_control: std::sync::OnceLock<Arc<dyn admin::LogControl>>,
    /// App probes in progress, shared by concurrent callers (`/app-health`).
    pub(crate) app_probes: admin::AppProbes,
}

impl Shared {
    pub(crate) fn admission(&self, dir: handler::Direction) -> &Arc<admission::Admission> {
        match dir {
            handler::Direction::Outbound => &self.outbound_requests,
            handler::Direction::Inbound => &self.inbound_requests,
        }
    }
}
