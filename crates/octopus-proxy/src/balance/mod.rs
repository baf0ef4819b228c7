//! Load balancing over a cluster's endpoints. The balancer sits below retries and the
//! traffic split (each retry may pick another endpoint) and above the per-endpoint
//! services (an endpoint that cannot serve simply stops being picked).
//!
//! The balancer reads a [`MemberSet`] (one lock-free `ArcSwap` load per request) in
//! which the endpoints that may take traffic are already filtered out; discovery,
//! health checks and outlier detection publish a new set when availability
//! changes, which is rare next to picks.

mod least_conn;
mod round_robin;
mod weighted;

pub use least_conn::LeastConnections;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use crate::body::Body;
use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use arc_swap::ArcSwap;
use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use octopus_config::LbPolicy;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// One endpoint of a cluster with its configured weight.
#[derive(Clone)]
pub struct Member {
    pub endpoint: Arc<Endpoint>,
    pub weight: u32,
}

impl Member {
    /// Weight 0 drains an endpoint: no new requests, in-flight ones finish.
    fn can_take_traffic(&self) -> bool {
        self.weight > 0 && self.endpoint.is_healthy() && !self.endpoint.is_ejected()
    }
}

/// A cluster's endpoints at one moment, with the subset that may take traffic.
pub struct MemberSet {
    all: Vec<Member>,
    available: Vec<Member>,
    /// Smooth-weighted-round-robin running weights over `available`; a new set starts
    /// its own rotation.
    pub(crate) swrr: std::sync::Mutex<Vec<i64>>,
}

impl MemberSet {
    pub fn new(all: Vec<Member>) -> Self {
        let available: Vec<Member> = all
            .iter()
            .filter(|m| m.can_take_traffic())
            .cloned()
            .collect();
        let swrr = std::sync::Mutex::new(vec![0; available.len()]);
        MemberSet {
            all,
            available,
            swrr,
        }
    }

    pub fn all(&self) -> &[Member] {
        &self.all
    }

    pub fn available(&self) -> &[Member] {
        &self.available
    }

    /// The least-loaded available member not in `tried`: where a retry (or a TCP
    /// connection's next dial) goes, so it lands on another endpoint when there is one.
    pub fn least_loaded_untried(&self, tried: &[std::net::SocketAddr]) -> Option<Member> {
        let fresh: Vec<Member> = self
            .available
            .iter()
            .filter(|m| !tried.contains(&m.endpoint.addr()))
            .cloned()
            .collect();
        LeastConnections.pick(&fresh).cloned()
    }

    /// Same members, same availability: no need to publish a new set.
    fn same_as(&self, other: &[Member]) -> bool {
        let key = |m: &Member| (Arc::as_ptr(&m.endpoint), m.weight, m.can_take_traffic());
        self.all.len() == other.len() && self.all.iter().zip(other).all(|(a, b)| key(a) == key(b))
    }
}

/// The live membership of one cluster, shared by its balancer, DNS refresher and
/// health checker.
pub struct Membership {
    set: ArcSwap<MemberSet>,
}

impl Membership {
    pub fn new(members: Vec<Member>) -> Arc<Self> {
        Arc::new(Membership {
            set: ArcSwap::from_pointee(MemberSet::new(members)),
        })
    }

    pub fn load(&self) -> Arc<MemberSet> {
        self.set.load_full()
    }

    /// Publishes a new member list (after discovery) if anything changed.
    pub fn replace(self: &Arc<Self>, members: Vec<Member>) -> bool {
        if self.set.load().same_as(&members) {
            return false;
        }
        self.set.store(Arc::new(MemberSet::new(members)));
        self.adopt();
        true
    }

    /// Makes this membership the one every member reports availability changes to,
    /// through the endpoint's hook (a weak reference: a replaced cluster's membership
    /// is not kept alive by its endpoints).
    pub fn adopt(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let hook: crate::endpoint::AvailabilityHook = Arc::new(move || {
            if let Some(m) = me.upgrade() {
                m.refresh();
            }
        });
        for m in self.set.load().all() {
            m.endpoint.set_availability_hook(hook.clone());
        }
    }

    /// (ejected, total) members now: what outlier detection's `max_ejection_percent`
    /// is checked against.
    pub fn ejected_share(&self) -> (usize, usize) {
        let set = self.set.load();
        let ejected = set.all().iter().filter(|m| m.endpoint.is_ejected()).count();
        (ejected, set.all().len())
    }

    /// Recomputes which members may take traffic after endpoint health changed.
    /// `rcu` retries if another updater published meanwhile, so no change is lost.
    pub fn refresh(&self) {
        self.set.rcu(|cur| MemberSet::new(cur.all.clone()));
    }
}

/// Picks one available member for a request.
pub enum Picker {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    Weighted(SmoothWeighted),
}

impl Picker {
    pub fn new(policy: LbPolicy) -> Self {
        match policy {
            LbPolicy::RoundRobin => Picker::RoundRobin(RoundRobin::default()),
            LbPolicy::LeastConnections => Picker::LeastConnections(LeastConnections),
            LbPolicy::Weighted => Picker::Weighted(SmoothWeighted),
        }
    }

    pub fn pick<'a>(&self, set: &'a MemberSet) -> Option<&'a Member> {
        match self {
            Picker::RoundRobin(p) => p.pick(set.available()),
            Picker::LeastConnections(p) => p.pick(set.available()),
            Picker::Weighted(p) => p.pick(set),
        }
    }
}

/// Endpoints already tried for one request, set by the retry layer: a retry goes to an
/// endpoint not tried yet whenever one is available.
#[derive(Debug, Clone, Default)]
pub struct Attempted(Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>);

impl Attempted {
    fn tried(&self) -> Vec<std::net::SocketAddr> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn push(&self, addr: std::net::SocketAddr) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(addr);
    }
}

/// Makes the service a request to one member goes through (its endpoint stack, see
/// `stack::endpoint`): the balancer is generic over it and knows nothing of what it
/// holds.
pub trait MakeEndpoint: Send + Sync + 'static {
    type Service: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future: Send + 'static,
        > + Send
        + 'static;
    fn make(&self, endpoint: Arc<Endpoint>) -> Self::Service;
}

impl<F, S> MakeEndpoint for F
where
    F: Fn(Arc<Endpoint>) -> S + Send + Sync + 'static,
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future: Send + 'static,
        > + Send
        + 'static,
{
    type Service = S;
    fn make(&self, endpoint: Arc<Endpoint>) -> S {
        self(endpoint)
    }
}

/// The cluster's balancing service: picks a member and forwards to its service.
pub struct Balancer<M> {
    cluster: Arc<str>,
    members: Arc<Membership>,
    picker: Arc<Picker>,
    make: Arc<M>,
}

impl<M> Clone for Balancer<M> {
    fn clone(&self) -> Self {
        Balancer {
            cluster: self.cluster.clone(),
            members: self.members.clone(),
            picker: self.picker.clone(),
            make: self.make.clone(),
        }
    }
}

impl<M: MakeEndpoint> Balancer<M> {
    pub fn new(cluster: Arc<str>, members: Arc<Membership>, policy: LbPolicy, make: M) -> Self {
        Balancer {
            cluster,
            members,
            picker: Arc::new(Picker::new(policy)),
            make: Arc::new(make),
        }
    }
}

type Unavailable = Ready<Result<Response<Body>, ProxyError>>;

impl<M: MakeEndpoint> Service<Request<Body>> for Balancer<M> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Either<<M::Service as Service<Request<Body>>>::Future, Unavailable>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let set = self.members.load();
        let attempted = req.extensions().get::<Attempted>().cloned();
        // Read the tried list once: it is behind a lock shared with the retry layer.
        let tried = attempted.as_ref().map(Attempted::tried).unwrap_or_default();
        let picked = match &attempted {
            Some(_) if !tried.is_empty() => {
                // A retry takes the least-loaded endpoint not tried yet; if every one
                // was tried, any available endpoint will do.
                match set.least_loaded_untried(&tried) {
                    Some(m) => Some(m),
                    None => self.picker.pick(&set).cloned(),
                }
            }
            _ => self.picker.pick(&set).cloned(),
        };
        match picked {
            Some(m) => {
                if let Some(a) = &attempted {
                    a.push(m.endpoint.addr());
                }
                // Each member's service is made per pick (reference counts only), so
                // the balancer holds no per-member state of its own.
                Either::Left(self.make.make(m.endpoint).call(req))
            }
            None => Either::Right(ready(Err(ProxyError::NoHealthyEndpoint {
                cluster: self.cluster.clone(),
            }))),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::endpoint::ConnectionSpec;
    use octopus_config::Protocol;
    use std::time::Duration;

    /// Members on unroutable test addresses; no connection is ever made.
    pub fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                endpoint: Endpoint::new(
                    "test".into(),
                    std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                    &ConnectionSpec::new(Protocol::Http1, Duration::from_secs(1)),
                    None,
                    None,
                    None,
                    None,
                ),
                weight,
            })
            .collect()
    }

    pub fn index_of(set: &[Member], m: &Member) -> usize {
        set.iter()
            .position(|x| Arc::ptr_eq(&x.endpoint, &m.endpoint))
            .expect("picked a member of the set")
    }
}
