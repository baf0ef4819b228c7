//! DNS discovery: every A/AAAA record of an endpoint name is an endpoint. Names are
//! re-resolved on an interval; a failed lookup keeps the last good addresses.

use super::EndpointPool;
use crate::balance::Membership;
use octopus_config::HostPort;
use octopus_metrics::Metrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A lookup slower than this counts as failed; the last good set keeps serving.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns a host name into addresses. The system resolver is used in production;
/// tests substitute their own to control answers and failures.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    >;
}

/// getaddrinfo through tokio's blocking pool: honours /etc/hosts and resolv.conf.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Resolves `names`, keeping `previous` addresses for any name whose lookup fails.
pub(super) async fn resolve_all(
    cluster: &str,
    names: &[HostPort],
    previous: &HashMap<HostPort, Vec<SocketAddr>>,
    metrics: &Metrics,
    resolver: &dyn Resolve,
) -> HashMap<HostPort, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for name in names {
        let lookup =
            tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(&name.host, name.port)).await;
        let result = match lookup {
            Ok(Ok(mut addrs)) => {
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    Err("no addresses".to_string())
                } else {
                    Ok(addrs)
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {LOOKUP_TIMEOUT:?}")),
        };
        match result {
            Ok(addrs) => {
                out.insert(name.clone(), addrs);
            }
            Err(error) => {
                metrics
                    .dns_failures_total
                    .with_label_values(&[cluster])
                    .inc();
                let kept = previous.get(name).cloned().unwrap_or_default();
                tracing::warn!(cluster, name = %name, %error, kept = kept.len(), "DNS resolution failed; keeping the last good addresses");
                out.insert(name.clone(), kept);
            }
        }
    }
    out
}

pub(super) struct Refresher {
    pub cluster: Arc<str>,
    pub names: Vec<HostPort>,
    pub resolved: HashMap<HostPort, Vec<SocketAddr>>,
    /// Where the cluster keeps the last good answers for its successor.
    pub shared: Arc<std::sync::Mutex<HashMap<HostPort, Vec<SocketAddr>>>>,
    pub pool: EndpointPool,
    pub members: Arc<Membership>,
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<dyn Resolve>,
    pub interval: Duration,
}

impl Refresher {
    pub async fn run(mut self) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.resolved = resolve_all(
                &self.cluster,
                &self.names,
                &self.resolved,
                &self.metrics,
                &*self.resolver,
            )
            .await;
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = self.resolved.clone();
            // Endpoints that left the set are forgotten, so they are rebuilt fresh if
            // they come back; those that stayed keep their state.
            let current: std::collections::HashSet<SocketAddr> =
                self.resolved.values().flatten().copied().collect();
            self.pool.known.retain(|addr, _| {
                current.contains(addr)
                    || self
                        .pool
                        .spec
                        .endpoints
                        .iter()
                        .any(|e| e.address.socket_addr() == Some(*addr))
            });
            let members = self.pool.members(&self.resolved);
            if self.members.replace(members) {
                tracing::info!(cluster = %self.cluster, endpoints = current.len(), "DNS changed the endpoint set");
            }
        }
    }
}
