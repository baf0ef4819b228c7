//! The running proxy: binds the listeners, serves them, swaps in reloaded configs and
//! drains on shutdown. The binary and the integration tests drive octopus through this.

use crate::cluster::{BuildContext, Resolve, SystemResolver};
use crate::handler::{self, Direction};
use crate::listener;
use crate::snapshot::{CompileError, Snapshot};
use crate::{admin, Shared};
use arc_swap::ArcSwap;
use octopus_config::{Config, ConfigErrors, HostPort};
use octopus_metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    #[error(
        "{0}: changing listener addresses needs a restart (not supported yet); nothing was changed"
    )]
    ListenerChanged(&'static str),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

pub struct Proxy {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    outbound_addr: Option<SocketAddr>,
    inbound_addr: Option<SocketAddr>,
    stop_traffic: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    traffic_tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    /// Serialises reloads: each compiles against the snapshot the previous one stored.
    reloading: tokio::sync::Mutex<()>,
}

async fn bind(listener: &'static str, addr: &HostPort) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        listener,
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

impl Proxy {
    /// Compiles `config` (already validated), binds every listener, and starts serving.
    /// Ready (`/ready` = 200) once this returns.
    pub async fn start(
        config: Config,
        source: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Proxy, StartError> {
        Self::start_with_resolver(config, source, metrics, Arc::new(SystemResolver)).await
    }

    /// [`Proxy::start`] with another DNS resolver (tests use this to control answers).
    pub async fn start_with_resolver(
        config: Config,
        source: Option<String>,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Proxy, StartError> {
        let admin_l = bind("admin", &config.admin.listen).await?;
        let outbound_l = match &config.outbound {
            Some(o) => Some(bind("outbound", &o.listen).await?),
            None => None,
        };
        let inbound_l = match &config.inbound {
            Some(i) => Some(bind("inbound", &i.listen).await?),
            None => None,
        };
        let ctx = BuildContext {
            metrics: metrics.clone(),
            resolver,
        };
        let snapshot = Snapshot::compile(config, 1, source, None, &ctx).await?;
        metrics.config_generation.set(1);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: metrics.clone(),
            build: ctx,
            ready: AtomicBool::new(false),
        });
        let local = |l: &TcpListener| l.local_addr().ok();
        let admin_addr = admin_l.local_addr().map_err(|source| StartError::Bind {
            listener: "admin",
            addr: "?".into(),
            source,
        })?;
        let (outbound_addr, inbound_addr) = (
            outbound_l.as_ref().and_then(local),
            inbound_l.as_ref().and_then(local),
        );

        let (stop_traffic, traffic_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let mut traffic_tasks = Vec::new();
        for (l, name, dir) in [
            (outbound_l, "outbound", Direction::Outbound),
            (inbound_l, "inbound", Direction::Inbound),
        ] {
            let Some(l) = l else { continue };
            let sh = shared.clone();
            let handler = move |req, peer| {
                let sh = sh.clone();
                async move { handler::handle(&sh, dir, peer, req).await }
            };
            traffic_tasks.push(tokio::spawn(listener::serve(
                l,
                name,
                metrics.clone(),
                traffic_rx.clone(),
                handler,
            )));
        }
        let sh = shared.clone();
        let admin_handler = move |req, _peer| {
            let sh = sh.clone();
            async move { admin::handle(&sh, &req) }
        };
        let admin_task = tokio::spawn(listener::serve(
            admin_l,
            "admin",
            metrics,
            admin_rx,
            admin_handler,
        ));
        shared.ready.store(true, Ordering::Release);
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(admin = %admin_addr, outbound = %show(outbound_addr), inbound = %show(inbound_addr), "octopus is serving");
        Ok(Proxy {
            shared,
            admin_addr,
            outbound_addr,
            inbound_addr,
            stop_traffic,
            stop_admin,
            traffic_tasks,
            admin_task,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }
    /// The drain deadline of the config serving now (it may have been reloaded).
    pub fn drain_timeout(&self) -> Duration {
        self.shared.snapshot.load().config.drain_timeout.get()
    }
    pub fn generation(&self) -> u64 {
        self.shared.snapshot.load().generation
    }

    /// Re-reads, validates and applies a control file. On any error nothing changes,
    /// the failure is counted, and the old config keeps serving.
    pub async fn reload_file(&self, path: &Path) -> Result<u64, ReloadError> {
        let result = match octopus_config::load_file(path) {
            Ok(c) => self.apply(c, Some(path.display().to_string())).await,
            Err(e) => Err(e.into()),
        };
        self.count_reload(&result);
        result
    }

    /// Applies an already validated config (see [`Proxy::reload_file`]).
    pub async fn reload(&self, config: Config, source: Option<String>) -> Result<u64, ReloadError> {
        let result = self.apply(config, source).await;
        self.count_reload(&result);
        result
    }

    fn count_reload(&self, result: &Result<u64, ReloadError>) {
        let label = if result.is_ok() { "success" } else { "failure" };
        self.shared
            .metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
    }

    async fn apply(&self, config: Config, source: Option<String>) -> Result<u64, ReloadError> {
        let _serial = self.reloading.lock().await;
        let current = self.shared.snapshot.load_full();
        let old = &current.config;
        if old.admin.listen != config.admin.listen {
            return Err(ReloadError::ListenerChanged("admin.listen"));
        }
        if old.outbound.as_ref().map(|o| &o.listen) != config.outbound.as_ref().map(|o| &o.listen) {
            return Err(ReloadError::ListenerChanged("outbound.listen"));
        }
        if old.inbound.as_ref().map(|i| &i.listen) != config.inbound.as_ref().map(|i| &i.listen) {
            return Err(ReloadError::ListenerChanged("inbound.listen"));
        }
        let generation = current.generation + 1;
        let next = Snapshot::compile(
            config,
            generation,
            source,
            Some(&current),
            &self.shared.build,
        )
        .await?;
        self.shared.snapshot.store(Arc::new(next));
        self.shared.metrics.config_generation.set(generation as i64);
        tracing::info!(generation, "config reloaded");
        Ok(generation)
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then stops
    /// the admin listener. Returns whether every connection drained in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.shared.ready.store(false, Ordering::Release);
        let _ = self.stop_traffic.send(true);
        let drained =
            tokio::time::timeout(drain, futures_util::future::join_all(self.traffic_tasks))
                .await
                .is_ok();
        if !drained {
            tracing::warn!(
                ?drain,
                "drain deadline passed; closing the remaining connections"
            );
        }
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_task).await;
        drained
    }
}
