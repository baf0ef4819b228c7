//! The running proxy: binds the listeners, serves them, swaps in reloaded configs and
//! drains on shutdown. The binary and the integration tests drive octopus through this.

use crate::cluster::{BuildContext, Resolve, SystemResolver};
use crate::error::CompileError;
use crate::handler::{self, Direction};
use crate::listener;
use crate::snapshot::Snapshot;
use crate::{admin, Shared};
use arc_swap::ArcSwap;
use octopus_config::{Config, ConfigErrors, HostPort};
use octopus_metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Compile(#[from] CompileError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    /// A moved listener could not be bound; nothing changed.
    #[error("{0}; nothing was changed")]
    Bind(StartError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// A listener: one of the two traffic directions, admin, or the metrics-only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Admin,
    Metrics,
    Traffic(Direction),
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::OUTBOUND, Kind::INBOUND, Kind::Admin, Kind::Metrics];
    const OUTBOUND: Kind = Kind::Traffic(Direction::Outbound);
    const INBOUND: Kind = Kind::Traffic(Direction::Inbound);

    fn name(self) -> &'static str {
        match self {
            Kind::Admin => "admin",
            Kind::Metrics => "metrics",
            Kind::Traffic(d) => d.name(),
        }
    }

    fn address(self, c: &Config) -> Option<&HostPort> {
        match self {
            Kind::Admin => Some(&c.admin.listen),
            Kind::Metrics => c.admin.metrics_listen.as_ref(),
            Kind::OUTBOUND => c.outbound.as_ref().map(|o| &o.listen),
            Kind::INBOUND => c.inbound.as_ref().map(|i| &i.listen),
        }
    }
}

/// One bound, serving listener.
struct Listener {
    configured: HostPort,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Listeners {
    admin: Option<Listener>,
    metrics: Option<Listener>,
    outbound: Option<Listener>,
    inbound: Option<Listener>,
    /// Listeners replaced by a reload, still draining their connections.
    retired: Vec<JoinHandle<()>>,
}

impl Listeners {
    fn slot(&mut self, kind: Kind) -> &mut Option<Listener> {
        match kind {
            Kind::Admin => &mut self.admin,
            Kind::Metrics => &mut self.metrics,
            Kind::OUTBOUND => &mut self.outbound,
            Kind::INBOUND => &mut self.inbound,
        }
    }
}

pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Mutex<Listeners>,
    /// Serialises reloads: each compiles against the snapshot the previous one stored.
    reloading: tokio::sync::Mutex<()>,
    /// Digest and errors of the last file rejected, so repeated events for the same
    /// broken file are reported without being counted again.
    last_rejected: Mutex<Option<(String, Vec<octopus_config::ConfigError>)>>,
}

async fn bind(kind: Kind, addr: &HostPort) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        listener: kind.name(),
        addr: addr.to_string(),
        source,
    };
    let sa = addr.socket_addr().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an IP address",
        ))
    })?;
    TcpListener::bind(sa).await.map_err(err)
}

fn spawn(kind: Kind, l: TcpListener, configured: HostPort, shared: &Arc<Shared>) -> Listener {
    let local = l
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (stop, stop_rx) = watch::channel(false);
    let metrics = shared.metrics.clone();
    let sh = shared.clone();
    let task = match kind {
        Kind::Admin => tokio::spawn(listener::serve(
            l,
            kind.name(),
            metrics,
            stop_rx,
            listener::Fixed,
            move |req, conn| {
                let sh = sh.clone();
                async move { admin::handle(&sh, req, conn.peer).await }
            },
        )),
        Kind::Metrics => tokio::spawn(listener::serve(
            l,
            kind.name(),
            metrics,
            stop_rx,
            listener::Fixed,
            move |req, _conn| {
                let sh = sh.clone();
                async move { admin::metrics_only(&sh, req).await }
            },
        )),
        Kind::Traffic(dir) => {
            let settings = FromSnapshot {
                shared: shared.clone(),
                kind,
            };
            tokio::spawn(listener::serve(
                l,
                kind.name(),
                metrics,
                stop_rx,
                settings,
                move |req, conn| {
                    let sh = sh.clone();
                    async move { handler::handle(&sh, dir, &conn, req).await }
                },
            ))
        }
    };
    Listener {
        configured,
        local,
        stop,
        task,
    }
}

/// A traffic listener's settings, read from the config serving now.
struct FromSnapshot {
    shared: Arc<Shared>,
    kind: Kind,
}

impl listener::Settings for FromSnapshot {
    fn limits(&self) -> octopus_config::ListenerLimits {
        let snap = self.shared.snapshot.load();
        let c = &snap.config;
        let limits = match self.kind {
            Kind::OUTBOUND => c.outbound.as_ref().map(|o| o.limits()),
            Kind::INBOUND => c.inbound.as_ref().map(|i| i.limits()),
            Kind::Admin | Kind::Metrics => None,
        };
        limits.unwrap_or_default()
    }

    fn descriptors(&self) -> Option<Arc<crate::descriptors::Group>> {
        let d = &self.shared.descriptors;
        match self.kind {
            Kind::OUTBOUND => Some(d.outbound.clone()),
            Kind::INBOUND => Some(d.inbound.clone()),
            Kind::Admin | Kind::Metrics => None,
        }
    }

    fn plan(&self, dst: SocketAddr, captured: bool) -> listener::Plan {
        let snap = self.shared.snapshot.load();
        match self.kind {
            Kind::OUTBOUND => {
                let Some(out) = snap.outbound.as_ref() else {
                    return listener::Plan::http();
                };
                let t = &out.tcp;
                // A direct connection no TCP route takes is HTTP as it always was: no
                // detection, no delay, no cost (decided before anything is cloned).
                if !captured && !t.has_routes() {
                    return listener::Plan::http();
                }
                let opaque = t.destination(dst, captured, self.descriptors());
                if !captured && opaque.is_none() {
                    return listener::Plan::http();
                }
                listener::Plan {
                    opaque_only: t.is_opaque_port(dst.port()),
                    detect: true,
                    detect_timeout: t.detect_timeout(),
                    refused: Some(t.passthrough_metrics().clone()),
                    http_to: (captured && t.unmatched() == octopus_config::Unmatched::Passthrough)
                        .then_some(dst),
                    opaque,
                    log: out.access_log.clone().filter(|l| l.sampled()),
                }
            }
            Kind::INBOUND => {
                let Some(inb) = snap.inbound.as_ref() else {
                    return listener::Plan::http();
                };
                // A connection goes to the app port the peer connected to (captured),
                // or to forward_to's port (a connection made to the listener itself).
                let port = if captured {
                    dst.port()
                } else {
                    inb.forward_to.port()
                };
                let app = SocketAddr::new(inb.forward_to.ip(), port);
                // Octopus' own ports are never a destination: a peer must not reach the
                // loopback-only admin port (or loop into a listener) by connecting to
                // the pod's 9901.
                let own = captured && inb.own_ports.contains(&port);
                // Raw bytes reach the app only on ports its config declares opaque:
                // elsewhere octopus frames what the app gets (HTTP, with its trust
                // rules), so a peer cannot dress a request up as "not HTTP" to carry a
                // forged x-octopus-peer-identity past them.
                let declared = !own && inb.opaque_ports.contains(&port);
                listener::Plan {
                    opaque: declared.then(|| {
                        crate::tcp::Destination::local_app(
                            app,
                            inb.tcp_idle_timeout,
                            inb.tcp.clone(),
                            self.descriptors(),
                            inb.cluster.limits(),
                        )
                    }),
                    opaque_only: declared,
                    detect: captured,
                    detect_timeout: inb.detect_timeout,
                    refused: Some(inb.tcp.clone()),
                    // HTTP to another app port than forward_to's goes to that port;
                    // to an octopus port, to forward_to (never to admin).
                    http_to: (captured && port != inb.forward_to.port() && !own).then_some(app),
                    log: inb.access_log.clone().filter(|l| l.sampled()),
                }
            }
            Kind::Admin | Kind::Metrics => listener::Plan::http(),
        }
    }

    fn tls(&self) -> Option<Arc<octopus_tls::ServerTls>> {
        match self.kind {
            Kind::INBOUND => self
                .shared
                .snapshot
                .load()
                .inbound
                .as_ref()
                .and_then(|i| i.tls.clone()),
            _ => None,
        }
    }
}

impl Proxy {
    /// Compiles `config` (already validated), binds every listener, and starts serving.
    /// Ready (`/ready` = 200) once this returns.
    pub async fn start(
        config: Config,
        source: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Proxy, StartError> {
        Self::start_with_resolver(config, source, None, metrics, Arc::new(SystemResolver)).await
    }

    /// [`Proxy::start`] with the file's digest (shown in `/config`) and a DNS resolver
    /// of the caller's choice (tests use this to control answers).
    pub async fn start_with_resolver(
        config: Config,
        source: Option<String>,
        digest: Option<String>,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Proxy, StartError> {
        let mut bound = Vec::new();
        for kind in Kind::ALL {
            if let Some(addr) = kind.address(&config) {
                bound.push((kind, bind(kind, addr).await?, addr.clone()));
            }
        }
        let descriptors = crate::descriptors::Budget::from_limit(
            crate::descriptors::nofile_limit(),
            Some(&metrics),
        );
        tracing::info!(
            outbound = descriptors.outbound.capacity(),
            inbound = descriptors.inbound.capacity(),
            "file descriptors per side (connections from clients plus to upstreams)"
        );
        let ctx = BuildContext {
            metrics: metrics.clone(),
            resolver,
            descriptors: Some(descriptors.outbound.clone()),
            inbound_descriptors: Some(descriptors.inbound.clone()),
        };
        let snapshot = Snapshot::compile(config, 1, source, digest, None, &ctx).await?;
        metrics.config_generation.set(1);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            build: ctx,
            ready: AtomicBool::new(false),
            outbound_requests: crate::admission::Admission::new(),
            inbound_requests: crate::admission::Admission::new(),
            descriptors,
            log_control: std::sync::OnceLock::new(),
            app_probes: Default::default(),
            failures: Default::default(),
        });
        let source: std::sync::Weak<dyn octopus_metrics::EndpointSource> =
            Arc::downgrade(&shared) as _;
        shared.metrics.set_endpoint_source(source);
        let mut listeners = Listeners::default();
        for (kind, l, configured) in bound {
            *listeners.slot(kind) = Some(spawn(kind, l, configured, &shared));
        }
        shared.ready.store(true, Ordering::Release);
        let proxy = Proxy {
            shared,
            listeners: Mutex::new(listeners),
            reloading: tokio::sync::Mutex::new(()),
            last_rejected: Mutex::new(None),
        };
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(
            admin = %proxy.admin_addr(),
            outbound = %show(proxy.outbound_addr()),
            inbound = %show(proxy.inbound_addr()),
            "octopus is serving"
        );
        Ok(proxy)
    }

    fn local(&self, kind: Kind) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slot(kind)
            .as_ref()
            .map(|l| l.local)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.local(Kind::Admin)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    /// The metrics-only listener (`admin.metrics_listen`), when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.local(Kind::Metrics)
    }
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.local(Kind::OUTBOUND)
    }
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.local(Kind::INBOUND)
    }

    /// Lets the admin port's `/log-level` read and change the process' log filter.
    /// Only the first control given is kept (one process, one filter).
    pub fn set_log_control(&self, control: Arc<dyn crate::admin::LogControl>) {
        let _ = self.shared.log_control.set(control);
    }

    /// Reopens the access-log files (after logrotate moved them; `SIGUSR1`).
    pub fn reopen_access_logs(&self) {
        let snap = self.shared.snapshot.load();
        let out = snap.outbound.as_ref().and_then(|o| o.access_log.as_ref());
        let inb = snap.inbound.as_ref().and_then(|i| i.access_log.as_ref());
        for log in out.into_iter().chain(inb) {
            log.reopen();
        }
    }

    /// The drain deadline of the config serving now (it may have been reloaded).
    pub fn drain_timeout(&self) -> Duration {
        self.shared.snapshot.load().config.drain_timeout.get()
    }
    pub fn generation(&self) -> u64 {
        self.shared.snapshot.load().generation
    }

    /// Re-reads, validates and applies a control file. A file whose bytes did not
    /// change is a no-op (editors and the kubelet touch files without editing them).
    /// On any error nothing changes, the failure is counted and logged by the caller,
    /// and the old config keeps serving.
    pub async fn reload_file(&self, path: &Path) -> Result<u64, ReloadError> {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.count_reload(false);
                let err = octopus_config::ConfigError::new("", format!("cannot read file: {e}"));
                return Err(ConfigErrors {
                    origin,
                    errors: vec![err],
                }
                .into());
            }
        };
        // Compare bytes before parsing: a touch, or another event for the same bad
        // file, is neither a new generation nor another counted failure.
        let digest = octopus_config::digest(text.as_bytes());
        let current = self.shared.snapshot.load();
        if current.digest.as_deref() == Some(digest.as_str()) {
            tracing::debug!(file = %origin, "config file unchanged; nothing to reload");
            return Ok(current.generation);
        }
        drop(current);
        let config = match self.check_new_file(&text, &origin, &digest) {
            Ok(c) => c,
            Err(e) => {
                if e.1 {
                    self.count_reload(false);
                }
                return Err(ReloadError::Invalid(e.0));
            }
        };
        let result = self
            .apply(config, Some(path.display().to_string()), Some(digest))
            .await;
        self.count_reload(result.is_ok());
        result
    }

    /// Parses and validates new file text. The error says whether it is news (to be
    /// counted) or the same rejected file again.
    fn check_new_file(
        &self,
        text: &str,
        origin: &str,
        digest: &str,
    ) -> Result<Config, (ConfigErrors, bool)> {
        let mut last_rejected = self.last_rejected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, errors)) = last_rejected.as_ref() {
            if d == digest {
                return Err((
                    ConfigErrors {
                        origin: origin.to_string(),
                        errors: errors.clone(),
                    },
                    false,
                ));
            }
        }
        match octopus_config::load_str(text, origin) {
            Ok(c) => {
                *last_rejected = None;
                Ok(c)
            }
            Err(e) => {
                *last_rejected = Some((digest.to_string(), e.errors.clone()));
                Err((e, true))
            }
        }
    }

    /// Applies an already validated config (see [`Proxy::reload_file`]).
    pub async fn reload(&self, config: Config, source: Option<String>) -> Result<u64, ReloadError> {
        let result = self.apply(config, source, None).await;
        self.count_reload(result.is_ok());
        result
    }

    fn count_reload(&self, ok: bool) {
        let label = if ok { "success" } else { "failure" };
        self.shared
            .metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
    }

    async fn apply(
        &self,
        config: Config,
        source: Option<String>,
        digest: Option<String>,
    ) -> Result<u64, ReloadError> {
        let _serial = self.reloading.lock().await;
        // Bind moved listeners first: a port that cannot be bound rejects the reload
        // before anything changes.
        let mut moved = Vec::new();
        for kind in Kind::ALL {
            let want = kind.address(&config).cloned();
            let have = self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .slot(kind)
                .as_ref()
                .map(|l| l.configured.clone());
            if want != have {
                let l = match &want {
                    Some(addr) => Some((
                        bind(kind, addr).await.map_err(ReloadError::Bind)?,
                        addr.clone(),
                    )),
                    None => None,
                };
                moved.push((kind, l));
            }
        }
        let current = self.shared.snapshot.load_full();
        let generation = current.generation + 1;
        let next = Snapshot::compile(
            config,
            generation,
            source,
            digest,
            Some(&current),
            &self.shared.build,
        )
        .await?;
        let next = Arc::new(next);
        self.shared.snapshot.store(next.clone());
        // Replaced clusters stop their background work now; their successors took it
        // over. In-flight requests may still use them.
        for (name, old) in &current.clusters {
            if next
                .clusters
                .get(name)
                .is_none_or(|new| !Arc::ptr_eq(new, old))
            {
                old.stop_background();
            }
        }
        self.shared.metrics.config_generation.set(generation as i64);
        // Swap listeners after the new config is in place; the old ones drain.
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, l) in moved {
            let new = l.map(|(l, configured)| spawn(kind, l, configured, &self.shared));
            if let Some(n) = &new {
                tracing::info!(listener = kind.name(), address = %n.local, "listener bound");
            }
            if let Some(old) = std::mem::replace(listeners.slot(kind), new) {
                tracing::info!(listener = kind.name(), address = %old.local, "listener closed; draining its connections");
                let _ = old.stop.send(true);
                listeners.retired.push(old.task);
            }
        }
        listeners.retired.retain(|t| !t.is_finished());
        tracing::debug!(generation, "config swapped in");
        Ok(generation)
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then stops
    /// the admin listener. Returns whether every connection drained in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.shared.ready.store(false, Ordering::Release);
        let mut listeners = self
            .listeners
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let mut draining = std::mem::take(&mut listeners.retired);
        for l in [listeners.outbound.take(), listeners.inbound.take()]
            .into_iter()
            .flatten()
        {
            let _ = l.stop.send(true);
            draining.push(l.task);
        }
        let drained = tokio::time::timeout(drain, futures_util::future::join_all(draining))
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                ?drain,
                "drain deadline passed; closing the remaining connections"
            );
        }
        for l in [listeners.admin.take(), listeners.metrics.take()]
            .into_iter()
            .flatten()
        {
            let _ = l.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), l.task).await;
        }
        drained
    }
}
