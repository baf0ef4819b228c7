//! DNS discovery: every A/AAAA record of an endpoint name is an endpoint. A cluster's
//! names are resolved concurrently; they are re-resolved when the shortest record TTL
//! of the last answers runs out (at least [`MIN_REFRESH`] apart, at most the cluster's
//! `dns_refresh_interval`); a failed lookup keeps the last good addresses.

use super::EndpointPool;
use crate::balance::Membership;
use hickory_resolver::config::ResolveHosts;
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, ResolverBuilder, TokioResolver};
use octopus_config::HostPort;
use octopus_metrics::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A lookup slower than this counts as failed; the last good set keeps serving.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest wait between two refreshes of a cluster, whatever the TTL: a record
/// with TTL 0 (or a TTL of a few milliseconds left in a cache) cannot make the refresh
/// loop spin.
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Turns a host name into addresses. The system resolver is used in production;
/// tests substitute their own to control answers and failures.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

    /// Like [`Resolve::resolve`], with how long the answer may be cached: the smallest
    /// TTL of its records, `None` when the resolver does not know it (then the
    /// cluster's `dns_refresh_interval` alone paces the refresh). The default knows no
    /// TTL.
    #[allow(clippy::type_complexity)]
    fn resolve_ttl<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Vec<SocketAddr>, Option<Duration>)>> + Send + 'a>>
    {
        Box::pin(async move { Ok((self.resolve(host, port).await?, None)) })
    }
}

/// The system's DNS: a hickory resolver configured from `/etc/resolv.conf`
/// (nameservers, `search`/`domain`, `ndots`, `timeout`, `attempts`; so Kubernetes
/// short names work) that reports record TTLs. A name with a trailing dot is absolute
/// (no search domain is tried). A name `/etc/hosts` lists is answered from that file
/// alone, as getaddrinfo does. IP literals are answered without any lookup.
///
/// The resolver is built once per process, at its first lookup, so both files are
/// read then; its cache serves answers until their TTL ends. If the configuration
/// cannot be read, lookups go through getaddrinfo instead (tokio's blocking pool, no
/// TTL), and a warning says why, once. Its nameserver connections run on the runtime
/// that opened them; one whose runtime has ended (tests start several) is noticed as
/// failed and replaced by hickory at the next lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

/// What [`SystemResolver`] resolves through, chosen once per process: hickory, or
/// getaddrinfo (`None`) when the system configuration cannot be used.
fn system_backend() -> Option<&'static HickoryResolver> {
    static BACKEND: OnceLock<Option<HickoryResolver>> = OnceLock::new();
    BACKEND
        .get_or_init(|| match HickoryResolver::from_system_conf() {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot use the system DNS configuration (/etc/resolv.conf); resolving through getaddrinfo, without record TTLs"
                );
                None
            }
        })
        .as_ref()
}

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(self.resolve_ttl(host, port).await?.0) })
    }

    fn resolve_ttl<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Vec<SocketAddr>, Option<Duration>)>> + Send + 'a>>
    {
        Box::pin(async move {
            if let Some(addr) = literal(host, port) {
                return Ok((vec![addr], None));
            }
            match system_backend() {
                Some(resolver) => resolver.lookup(host, port).await,
                None => Ok((tokio::net::lookup_host((host, port)).await?.collect(), None)),
            }
        })
    }
}

/// The address when `host` is an IP literal: those are never looked up.
fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// A hickory `TokioResolver` and the TTL-reporting lookup over it.
pub(crate) struct HickoryResolver {
    inner: TokioResolver,
    /// `/etc/hosts`, read once. A name listed there is answered from it alone, as
    /// glibc's `hosts: files dns` does: DNS is not asked, not even for the address
    /// family the file lacks (hickory alone would add DNS's AAAA, or `::1` for
    /// `localhost`, to a name the file gives only an IPv4 address).
    hosts: Hosts,
}

impl HickoryResolver {
    /// From `/etc/resolv.conf`, with `/etc/hosts`.
    fn from_system_conf() -> io::Result<Self> {
        let mut builder = TokioResolver::builder_tokio().map_err(io::Error::other)?;
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let hosts = Hosts::from_system().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read /etc/hosts; names are resolved through DNS only");
            Hosts::default()
        });
        Self::build(builder, hosts)
    }

    /// Asks only the nameserver at `addr` (UDP), without `/etc/hosts` or search domains.
    #[cfg(test)]
    pub(crate) fn with_nameserver(addr: SocketAddr) -> io::Result<Self> {
        Self::with_config(addr, Vec::new(), Hosts::default())
    }

    /// Asks only the nameserver at `addr` (UDP) with the given search domains, after
    /// `hosts` (standing for `/etc/hosts`).
    #[cfg(test)]
    pub(crate) fn with_config(
        addr: SocketAddr,
        search: Vec<Name>,
        hosts: Hosts,
    ) -> io::Result<Self> {
        use hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
        };
        let mut connection = ConnectionConfig::udp();
        connection.port = addr.port();
        let server = NameServerConfig::new(addr.ip(), true, vec![connection]);
        let config = ResolverConfig::from_parts(None, search, vec![server]);
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        Self::build(
            hickory_resolver::Resolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            )
            .with_options(opts),
            hosts,
        )
    }

    fn build(builder: ResolverBuilder<TokioRuntimeProvider>, hosts: Hosts) -> io::Result<Self> {
        Ok(Self {
            inner: builder.build().map_err(io::Error::other)?,
            hosts,
        })
    }

    /// The addresses `/etc/hosts` gives `host` (taken as written: no search domain),
    /// if it lists it.
    fn hosts_answer(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let name = Name::from_utf8(host).ok()?;
        let addrs: Vec<SocketAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), t))
            })
            .flat_map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        (!addrs.is_empty()).then_some(addrs)
    }

    /// The addresses of `host` on `port` and how long they are valid: from
    /// `/etc/hosts` if it lists the name (no TTL: the interval paces those), else the
    /// A and AAAA records DNS gives (searched as resolv.conf says unless the name ends
    /// with a dot) with their smallest TTL.
    pub(crate) async fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<(Vec<SocketAddr>, Option<Duration>)> {
        if let Some(addr) = literal(host, port) {
            return Ok((vec![addr], None));
        }
        if let Some(addrs) = self.hosts_answer(host, port) {
            return Ok((addrs, None));
        }
        let lookup = self.inner.lookup_ip(host).await.map_err(io::Error::other)?;
        let addrs = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        Ok((addrs, Some(answer_ttl(&lookup))))
    }
}

/// How long an answer stays valid: its records' smallest TTL (counted down when it
/// comes from the cache; CNAMEs on the way included), else its cache deadline.
fn answer_ttl(lookup: &LookupIp) -> Duration {
    let now = std::time::Instant::now();
    lookup
        .as_lookup()
        .answers()
        .iter()
        .map(|r| r.ttl)
        .min()
        .map(|secs| Duration::from_secs(secs.into()))
        .unwrap_or_else(|| lookup.valid_until().saturating_duration_since(now))
}

/// Resolves `names` concurrently, each lookup bounded by [`LOOKUP_TIMEOUT`], keeping
/// `previous` addresses for any name whose lookup fails. Also returns the smallest TTL
/// among the successful answers (`None` if no answer had one).
pub(super) async fn resolve_all(
    cluster: &str,
    names: &[HostPort],
    previous: &HashMap<HostPort, Vec<SocketAddr>>,
    metrics: &Metrics,
    resolver: &dyn Resolve,
) -> (HashMap<HostPort, Vec<SocketAddr>>, Option<Duration>) {
    let lookups = names.iter().map(|name| async move {
        let lookup =
            tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve_ttl(&name.host, name.port)).await;
        let result = match lookup {
            Ok(Ok((mut addrs, ttl))) => {
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    Err("no addresses".to_string())
                } else {
                    Ok((addrs, ttl))
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {LOOKUP_TIMEOUT:?}")),
        };
        (name, result)
    });
    let mut out = HashMap::new();
    let mut min_ttl: Option<Duration> = None;
    // join_all keeps the order of `names`, so the log lines below do too.
    for (name, result) in futures_util::future::join_all(lookups).await {
        match result {
            Ok((addrs, ttl)) => {
                out.insert(name.clone(), addrs);
                min_ttl = match (min_ttl, ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
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
    (out, min_ttl)
}

/// The wait before the next refresh, counted from the end of the previous one: the
/// last answers' smallest TTL, but never less than [`MIN_REFRESH`] and never more than
/// `interval` (the cluster's `dns_refresh_interval`). Without a TTL (getaddrinfo, a
/// test resolver, or every lookup failed) it is `interval`. An interval below
/// [`MIN_REFRESH`] wins over the floor: it was asked for explicitly.
pub(super) fn refresh_delay(interval: Duration, ttl: Option<Duration>) -> Duration {
    ttl.map_or(interval, |ttl| ttl.max(MIN_REFRESH).min(interval))
}

/// Re-resolves a cluster's names for as long as the cluster lives (its task is aborted
/// when the cluster is dropped or replaced), each round [`refresh_delay`] after the
/// previous one, and publishes the endpoint set when it changes.
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
    /// The cluster's `dns_refresh_interval`: the longest wait between two rounds.
    pub interval: Duration,
    /// The smallest TTL of the answers `resolved` came from (the first lookup's).
    pub ttl: Option<Duration>,
}

impl Refresher {
    pub async fn run(mut self) {
        loop {
            tokio::time::sleep(refresh_delay(self.interval, self.ttl)).await;
            (self.resolved, self.ttl) = resolve_all(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn hp(s: &str) -> HostPort {
        let (host, port) = s.rsplit_once(':').expect("host:port");
        HostPort {
            host: host.to_string(),
            port: port.parse().expect("port"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Answers from a table, with a TTL; `None` fails the lookup. Records when each
    /// lookup started and how many ran at once.
    #[derive(Default)]
    struct Fake {
        answers: Mutex<HashMap<String, Option<Vec<IpAddr>>>>,
        ttl: Mutex<Option<Duration>>,
        delay: Mutex<Duration>,
        started: Mutex<Vec<Instant>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl Fake {
        fn set(&self, host: &str, answer: Option<&[&str]>) {
            self.answers.lock().unwrap().insert(
                host.to_string(),
                answer.map(|a| a.iter().map(|s| ip(s)).collect()),
            );
        }
        fn set_ttl(&self, ttl: Option<Duration>) {
            *self.ttl.lock().unwrap() = ttl;
        }
        fn started(&self) -> Vec<Instant> {
            self.started.lock().unwrap().clone()
        }
    }

    impl Resolve for Fake {
        fn resolve<'a>(
            &'a self,
            host: &'a str,
            port: u16,
        ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
            Box::pin(async move { Ok(self.resolve_ttl(host, port).await?.0) })
        }

        fn resolve_ttl<'a>(
            &'a self,
            host: &'a str,
            port: u16,
        ) -> Pin<
            Box<dyn Future<Output = io::Result<(Vec<SocketAddr>, Option<Duration>)>> + Send + 'a>,
        > {
            Box::pin(async move {
                self.started.lock().unwrap().push(Instant::now());
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let delay = *self.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let answer = self.answers.lock().unwrap().get(host).cloned().flatten();
                let ttl = *self.ttl.lock().unwrap();
                match answer {
                    Some(ips) => Ok((
                        ips.into_iter()
                            .map(|ip| SocketAddr::new(ip, port))
                            .collect(),
                        ttl,
                    )),
                    None => Err(io::Error::other(format!("no answer for {host}"))),
                }
            })
        }
    }

    /// A resolver that only implements `resolve`: the trait's default gives no TTL.
    struct Plain;

    impl Resolve for Plain {
        fn resolve<'a>(
            &'a self,
            _host: &'a str,
            port: u16,
        ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
            Box::pin(async move { Ok(vec![SocketAddr::new(ip("10.0.0.1"), port)]) })
        }
    }

    #[test]
    fn refresh_delay_follows_ttl_with_floor_and_cap() {
        let interval = Duration::from_secs(30);
        assert_eq!(refresh_delay(interval, None), interval);
        assert_eq!(
            refresh_delay(interval, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(refresh_delay(interval, Some(Duration::ZERO)), MIN_REFRESH);
        assert_eq!(
            refresh_delay(interval, Some(Duration::from_millis(300))),
            MIN_REFRESH
        );
        assert_eq!(
            refresh_delay(interval, Some(Duration::from_secs(3600))),
            interval
        );
        // An interval below the floor was asked for explicitly: it wins.
        let short = Duration::from_millis(200);
        assert_eq!(refresh_delay(short, Some(Duration::ZERO)), short);
        assert_eq!(refresh_delay(short, None), short);
    }

    #[tokio::test]
    async fn default_resolve_ttl_reports_no_ttl() {
        let (addrs, ttl) = Plain.resolve_ttl("x", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("10.0.0.1"), 80)]);
        assert_eq!(ttl, None);
    }

    #[tokio::test]
    async fn system_resolver_answers_ip_literals_without_lookup() {
        let (addrs, ttl) = SystemResolver.resolve_ttl("10.1.2.3", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("10.1.2.3"), 80)]);
        assert_eq!(ttl, None);
        let (addrs, _) = SystemResolver.resolve_ttl("::1", 81).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("::1"), 81)]);
    }

    #[tokio::test(start_paused = true)]
    async fn resolve_all_runs_lookups_concurrently_and_returns_smallest_ttl() {
        let fake = Fake::default();
        *fake.delay.lock().unwrap() = Duration::from_millis(200);
        fake.set("a", Some(&["10.0.0.1"]));
        fake.set("b", Some(&["10.0.0.2", "10.0.0.3"]));
        fake.set("c", Some(&["10.0.0.4"]));
        fake.set_ttl(Some(Duration::from_secs(9)));
        let names = [hp("a:80"), hp("b:80"), hp("c:80")];
        let metrics = Metrics::new();
        let (out, ttl) = resolve_all("c1", &names, &HashMap::new(), &metrics, &fake).await;
        assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 3);
        assert_eq!(out.len(), 3);
        assert_eq!(out[&hp("b:80")].len(), 2);
        assert_eq!(ttl, Some(Duration::from_secs(9)));
    }

    #[tokio::test(start_paused = true)]
    async fn resolve_all_keeps_last_good_on_failure_and_timeout() {
        struct Mixed;
        impl Resolve for Mixed {
            fn resolve<'a>(
                &'a self,
                _: &'a str,
                _: u16,
            ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>
            {
                unreachable!("resolve_all asks for TTLs")
            }
            fn resolve_ttl<'a>(
                &'a self,
                host: &'a str,
                port: u16,
            ) -> Pin<
                Box<
                    dyn Future<Output = io::Result<(Vec<SocketAddr>, Option<Duration>)>>
                        + Send
                        + 'a,
                >,
            > {
                Box::pin(async move {
                    match host {
                        "ok" => Ok((
                            vec![SocketAddr::new(ip("10.0.0.1"), port)],
                            Some(Duration::from_secs(4)),
                        )),
                        "fails" => Err(io::Error::other("SERVFAIL")),
                        "empty" => Ok((Vec::new(), Some(Duration::from_secs(1)))),
                        _ => std::future::pending().await,
                    }
                })
            }
        }
        let names = [hp("ok:80"), hp("fails:80"), hp("empty:80"), hp("hangs:80")];
        let previous: HashMap<_, _> = names[1..]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), vec![SocketAddr::new(ip("10.9.9.9"), i as u16)]))
            .collect();
        let metrics = Metrics::new();
        let (out, ttl) = resolve_all("c1", &names, &previous, &metrics, &Mixed).await;
        assert_eq!(out[&names[0]], vec![SocketAddr::new(ip("10.0.0.1"), 80)]);
        for n in &names[1..] {
            assert_eq!(out[n], previous[n], "{n} keeps its last good answer");
        }
        // Failed lookups contribute no TTL.
        assert_eq!(ttl, Some(Duration::from_secs(4)));
        assert_eq!(
            metrics.dns_failures_total.with_label_values(&["c1"]).get(),
            3
        );
        // A brand-new name with no answer yet contributes nothing.
        let (out, ttl) = resolve_all("c2", &names[1..2], &HashMap::new(), &metrics, &Mixed).await;
        assert_eq!(out[&names[1]], Vec::<SocketAddr>::new());
        assert_eq!(ttl, None);
    }

    async fn cluster_with(fake: Arc<Fake>, yaml: &str) -> Arc<super::super::Cluster> {
        let spec: octopus_config::ClusterConfig = serde_yaml::from_str(yaml).unwrap();
        let ctx = super::super::BuildContext {
            metrics: Metrics::new(),
            resolver: fake,
            descriptors: None,
            inbound_descriptors: None,
        };
        super::super::Cluster::build("c1", &spec, None, &ctx)
            .await
            .unwrap()
    }

    /// Offsets of the lookups from the first one, in whole milliseconds.
    fn gaps(started: &[Instant]) -> Vec<u128> {
        started
            .iter()
            .map(|t| t.duration_since(started[0]).as_millis())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_follows_ttl_between_floor_and_interval() {
        let yaml = "endpoints: [\"api.test:80\"]\ndns_refresh_interval: 10s\n";
        for (ttl, expected) in [
            (Some(3), vec![0, 3000, 6000, 9000]),
            (Some(0), vec![0, 1000, 2000, 3000, 4000]),
            (Some(60), vec![0, 10_000]),
            (None, vec![0, 10_000]),
        ] {
            let fake = Arc::new(Fake::default());
            fake.set("api.test", Some(&["10.0.0.1"]));
            fake.set_ttl(ttl.map(Duration::from_secs));
            let cluster = cluster_with(fake.clone(), yaml).await;
            // The lookup at build time plus the refreshes; paused time makes the
            // timing exact.
            let stop = expected.last().copied().unwrap_or(0) as u64 + 500;
            tokio::time::sleep(Duration::from_millis(stop)).await;
            assert_eq!(gaps(&fake.started()), expected, "ttl {ttl:?}");
            drop(cluster);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_keeps_endpoints_that_stay_and_last_good_on_failure() {
        let fake = Arc::new(Fake::default());
        fake.set("api.test", Some(&["10.0.0.1", "10.0.0.2"]));
        fake.set_ttl(Some(Duration::from_secs(2)));
        let cluster = cluster_with(
            fake.clone(),
            "endpoints: [\"api.test:80\"]\ndns_refresh_interval: 10s\n",
        )
        .await;
        let before = cluster.members();
        assert_eq!(before.len(), 2);
        fake.set("api.test", Some(&["10.0.0.2", "10.0.0.3"]));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = cluster.members();
        let addrs: Vec<SocketAddr> = after.iter().map(|m| m.endpoint.addr()).collect();
        assert_eq!(
            addrs,
            vec![
                SocketAddr::new(ip("10.0.0.2"), 80),
                SocketAddr::new(ip("10.0.0.3"), 80)
            ]
        );
        // 10.0.0.2 stayed: the same endpoint, with its state.
        let stayed = |set: &[crate::balance::Member]| {
            set.iter()
                .find(|m| m.endpoint.addr() == SocketAddr::new(ip("10.0.0.2"), 80))
                .map(|m| m.endpoint.clone())
                .unwrap()
        };
        assert!(Arc::ptr_eq(&stayed(&before), &stayed(&after)));
        // DNS fails: the set stays, and refreshes go on (the failure gives no TTL, so
        // at the interval).
        fake.set("api.test", None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(cluster.members().len(), 2);
        let n = fake.started().len();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.started().len(), n + 1);
        assert_eq!(cluster.members().len(), 2);
    }

    /// A tiny authoritative DNS server on 127.0.0.1: A records from `zone` with `ttl`,
    /// NOERROR without records for other types of a known name, NXDOMAIN otherwise.
    async fn dns_server(zone: Vec<(&'static str, Ipv4Addr)>, ttl: u32) -> SocketAddr {
        use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
        use hickory_resolver::proto::rr::{rdata::A, RData, Record};
        use std::str::FromStr;
        let zone: Vec<(Name, Ipv4Addr)> = zone
            .into_iter()
            .map(|(n, ip)| (Name::from_str(n).unwrap(), ip))
            .collect();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = Message::response(request.metadata.id, OpCode::Query);
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                let mut known = false;
                for query in &request.queries {
                    response.add_query(query.clone());
                    for (name, ip) in &zone {
                        if name == query.name() {
                            known = true;
                            if query.query_type() == RecordType::A {
                                response.add_answer(Record::from_rdata(
                                    query.name().clone(),
                                    ttl,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                    }
                }
                if !known {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                let bytes = response.to_vec().unwrap();
                let _ = socket.send_to(&bytes, peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn hickory_resolves_through_a_nameserver_with_ttl() {
        let server = dns_server(
            vec![
                ("api.svc.test.", Ipv4Addr::new(10, 0, 0, 7)),
                ("api.svc.test.", Ipv4Addr::new(10, 0, 0, 8)),
            ],
            7,
        )
        .await;
        let resolver = HickoryResolver::with_nameserver(server).unwrap();
        let (mut addrs, ttl) = resolver.lookup("api.svc.test", 8080).await.unwrap();
        addrs.sort();
        assert_eq!(
            addrs,
            vec![
                SocketAddr::new(ip("10.0.0.7"), 8080),
                SocketAddr::new(ip("10.0.0.8"), 8080)
            ]
        );
        assert_eq!(ttl, Some(Duration::from_secs(7)));
        // Absolute form, same answer.
        let (addrs, _) = resolver.lookup("api.svc.test.", 80).await.unwrap();
        assert_eq!(addrs.len(), 2);
        // Unknown name: an error, which resolve_all turns into "keep the last good".
        assert!(resolver.lookup("nope.svc.test.", 80).await.is_err());
        // IP literals never reach the server.
        let (addrs, ttl) = resolver.lookup("10.1.1.1", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("10.1.1.1"), 80)]);
        assert_eq!(ttl, None);
    }

    #[tokio::test]
    async fn hickory_uses_search_domains_unless_the_name_ends_with_a_dot() {
        use std::str::FromStr;
        let server = dns_server(vec![("api.svc.test.", Ipv4Addr::new(10, 0, 0, 9))], 30).await;
        let resolver = HickoryResolver::with_config(
            server,
            vec![Name::from_str("svc.test.").unwrap()],
            Hosts::default(),
        )
        .unwrap();
        // A short name (fewer dots than ndots + 1) is tried with the search domain.
        let (addrs, ttl) = resolver.lookup("api", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("10.0.0.9"), 80)]);
        assert_eq!(ttl, Some(Duration::from_secs(30)));
        // With a trailing dot it is absolute: `api.` alone, which does not exist.
        assert!(resolver.lookup("api.", 80).await.is_err());
    }

    #[tokio::test]
    async fn hickory_answers_names_in_hosts_from_the_file_alone() {
        // DNS knows api.svc.test (A 10.0.0.7) and localhost would get ::1 by RFC 6761;
        // the hosts file wins for the names it lists, with both of its families.
        let server = dns_server(vec![("api.svc.test.", Ipv4Addr::new(10, 0, 0, 7))], 30).await;
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(
                "10.0.0.5 api.svc.test\n127.0.0.1 localhost\nfd00::6 both.test\n10.0.0.6 both.test\n"
                    .as_bytes(),
            )
            .unwrap();
        let resolver = HickoryResolver::with_config(server, Vec::new(), hosts).unwrap();
        let (addrs, ttl) = resolver.lookup("api.svc.test", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("10.0.0.5"), 80)]);
        assert_eq!(ttl, None);
        let (addrs, _) = resolver.lookup("localhost", 80).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("127.0.0.1"), 80)]);
        let (mut addrs, _) = resolver.lookup("both.test.", 80).await.unwrap();
        addrs.sort();
        assert_eq!(
            addrs,
            vec![
                SocketAddr::new(ip("10.0.0.6"), 80),
                SocketAddr::new(ip("fd00::6"), 80)
            ]
        );
    }
}
