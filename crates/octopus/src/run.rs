use crate::cli::{RunArgs, ValidateArgs};
use octopus_config::Config;
use octopus_metrics::Metrics;
use octopus_proxy::cluster::SystemResolver;
use octopus_proxy::Proxy;
use std::process::ExitCode;
use std::sync::Arc;

pub fn inspect(file: &std::path::Path) -> ExitCode {
    match octopus_tls::inspect::inspect(&file.display().to_string()) {
        Ok(certs) => {
            for (i, c) in certs.iter().enumerate() {
                println!("certificate {i}:");
                println!("  subject:    {}", c.subject);
                println!("  issuer:     {}", c.issuer);
                println!(
                    "  identities: {}",
                    if c.sans.is_empty() {
                        "(none)".to_string()
                    } else {
                        c.sans.join(", ")
                    }
                );
                println!("  not before: {}", c.not_before);
                println!(
                    "  not after:  {} ({} days from now)",
                    c.not_after, c.expires_in_days
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("octopus: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn validate(args: &ValidateArgs) -> ExitCode {
    let checks = octopus_config::Checks {
        offline: args.offline,
    };
    let from_stdin = args.config.as_os_str() == "-";
    let origin = if from_stdin {
        "<stdin>".to_string()
    } else {
        args.config.display().to_string()
    };
    let text = if from_stdin {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.config)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{origin}: cannot read file: {e}");
            return ExitCode::FAILURE;
        }
    };
    match octopus_config::load_str_with(&text, &origin, checks) {
        Ok(config) => {
            let offline = if args.offline {
                " (offline: TLS files not opened)"
            } else {
                ""
            };
            println!("{origin}: OK: {}{offline}", config.summary());
            for line in split_report(&config) {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// Effective traffic shares of each split route, so an operator can check a canary
/// edit before saving it.
fn split_report(config: &Config) -> Vec<String> {
    let Some(out) = &config.outbound else {
        return Vec::new();
    };
    out.routes
        .iter()
        .filter_map(|r| {
            let split = r.split.as_ref()?;
            let total: u64 = split.iter().map(|t| u64::from(t.weight)).sum();
            let shares: Vec<String> = split
                .iter()
                .map(|t| {
                    format!(
                        "{} {:.1}%",
                        t.cluster,
                        100.0 * f64::from(t.weight) / total.max(1) as f64
                    )
                })
                .collect();
            Some(format!("route {}: {}", r.name, shares.join(", ")))
        })
        .collect()
}

pub fn run(args: RunArgs, log_filter: Arc<crate::logging::LogFilter>) -> ExitCode {
    let path = args.config.config;
    let (config, digest) = match octopus_config::load_file_with_digest(&path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            tracing::error!("refusing to start: invalid config\n{errors}");
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    // Before anything opens descriptors: the proxy sizes its per-side budgets from it.
    let nofile = octopus_proxy::descriptors::raise_nofile_limit();
    tracing::debug!(nofile, "open-file limit");
    let workers = args
        .worker_threads
        .unwrap_or_else(crate::workers::default_worker_threads)
        .max(1);
    // One worker: the current-thread scheduler skips the work-stealing machinery (and
    // its wake-ups) that only pays off with several workers.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("octopus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), workers, "starting: {}", config.summary());
    runtime.block_on(async move {
        // Signal handlers first: a SIGTERM or SIGHUP while start-up waits on DNS must be
        // queued, not kill the process by the default action.
        let signals = match signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let source = Some(path.display().to_string());
        let resolver = Arc::new(SystemResolver);
        let proxy = match Proxy::start_with_resolver(
            config,
            source,
            Some(digest),
            Metrics::new(),
            resolver,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("octopus: {e}");
                return ExitCode::FAILURE;
            }
        };
        proxy.set_log_control(log_filter);
        signals.serve_until_shutdown(&proxy, &path).await;
        let drain = proxy.drain_timeout();
        tracing::info!(?drain, "shutting down: draining in-flight requests");
        let drained = proxy.shutdown(drain).await;
        tracing::info!(drained, "stopped");
        ExitCode::SUCCESS
    })
}

mod signals {
    use octopus_config::ConfigWatcher;
    use octopus_proxy::Proxy;
    use std::path::Path;
    use tokio::signal::unix::{signal, Signal, SignalKind};

    pub struct Signals {
        term: Signal,
        int: Signal,
        hup: Signal,
        usr1: Signal,
    }

    impl Signals {
        pub fn install() -> std::io::Result<Self> {
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
                usr1: signal(SignalKind::user_defined1())?,
            })
        }

        /// Reloads the config file when it changes on disk or on SIGHUP, and reopens the
        /// access-log files on SIGUSR1 (logrotate), until SIGTERM or SIGINT arrives.
        pub async fn serve_until_shutdown(mut self, proxy: &Proxy, path: &Path) {
            let Signals {
                term,
                int,
                hup,
                usr1,
            } = &mut self;
            // Without a watcher (e.g. inotify limits reached) SIGHUP still works.
            let mut watcher = match ConfigWatcher::new(path) {
                Ok(w) => {
                    tracing::info!(dir = %w.dir().display(), "watching the config file for changes");
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
                    None
                }
            };
            loop {
                let trigger = tokio::select! {
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                    _ = hup.recv() => "SIGHUP",
                    _ = usr1.recv() => {
                        tracing::info!("SIGUSR1: reopening the access-log files");
                        proxy.reopen_access_logs();
                        continue;
                    }
                    Some(()) = async { match watcher.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => "file change",
                };
                let before = proxy.generation();
                match proxy.reload_file(path).await {
                    Ok(generation) if generation == before => {
                        tracing::debug!(trigger, file = %path.display(), "config unchanged")
                    }
                    Ok(generation) => {
                        tracing::info!(trigger, generation, file = %path.display(), "config reloaded")
                    }
                    Err(e) => tracing::error!(
                        trigger,
                        file = %path.display(),
                        "reload rejected, the previous config keeps serving: {e}"
                    ),
                }
            }
        }
    }
}
