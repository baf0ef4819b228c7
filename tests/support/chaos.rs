//! The chaos and soak harness: a real octopus process (so its memory is its own, read
//! from /proc) in front of programmable upstreams, with mTLS to its own inbound
//! listener, driven by a paced load generator that records every outcome.
//!
//! Used by the binary's own tests (crates/octopus/tests/cli.rs: signals, drain,
//! memory), the fast chaos slice of `make test` (crates/octopus/tests/chaos.rs, `make
//! chaos`) and the ten-minute `make soak` (tests/bin/soak.rs).

use crate::pki;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use octopus_testkit::{Protocols, Upstream};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Identity the sidecar presents to its own inbound listener, and the one it serves.
const CLIENT_ID: &str = "spiffe://mesh.test/ns/chaos/sa/client";
const SERVER_ID: &str = "spiffe://mesh.test/ns/chaos/sa/app";
/// A DNS name in every certificate, for test clients that check the server by name.
const SERVER_NAME: &str = "app.chaos.test";

/// An octopus process started from a config file; killed (it alone) when dropped.
pub struct Daemon {
    child: Child,
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    pub inbound: Option<SocketAddr>,
    panics: Arc<AtomicUsize>,
    reloads: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `bin run --config config` and waits for it to report its listeners.
    pub fn start(bin: &Path, config: &Path, worker_threads: usize) -> Daemon {
        Self::start_with_nofile(bin, config, worker_threads, None)
    }

    /// [`Daemon::start`] under an open-file limit (soft and hard) set with prlimit
    /// (util-linux) before octopus starts, so it sizes its descriptor budget from it.
    pub fn start_with_nofile(
        bin: &Path,
        config: &Path,
        worker_threads: usize,
        nofile: Option<u64>,
    ) -> Daemon {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["--log-format", "json", "run", "--worker-threads"])
            .arg(worker_threads.to_string())
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let panics = Arc::new(AtomicUsize::new(0));
        let reloads = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, r) = (panics.clone(), reloads.clone());
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let t = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut t = t.lock().unwrap();
                    if t.len() == 20 {
                        t.remove(0);
                    }
                    t.push(line.clone());
                }
                if line.contains("panicked") {
                    eprintln!("octopus: {line}");
                    p.fetch_add(1, Ordering::SeqCst);
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let message = v["fields"]["message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .unwrap_or("");
                if message == "octopus is serving" {
                    let _ = tx.send(v.clone());
                } else if message.contains("reload") || message.contains("certificate") {
                    r.lock().unwrap().push(message.to_string());
                }
            }
        });
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "octopus did not report its listeners; its stderr:\n{}",
                    tail.lock().unwrap().join("\n")
                )
            });
        let addr = |k: &str| {
            v[k].as_str()
                .or(v["fields"][k].as_str())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {k} address in {v}"))
        };
        Daemon {
            admin: addr("admin"),
            outbound: addr("outbound"),
            inbound: v["inbound"]
                .as_str()
                .or(v["fields"]["inbound"].as_str())
                .and_then(|a| a.parse().ok()),
            child,
            panics,
            reloads,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// A figure of /proc/PID/status. Panics rather than report 0, which would let a
    /// memory bound pass for a process that is gone.
    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("octopus (pid {}) has no status: {e}", self.pid()));
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid()))
    }

    /// Sends a signal (`-TERM`, `-HUP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let sent = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "kill {sig} {}", self.pid());
    }

    /// Waits up to `limit` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running (it never exits on its own).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines of its stderr that reported a panic.
    pub fn panics(&self) -> usize {
        self.panics.load(Ordering::SeqCst)
    }

    /// Log messages about reloads and certificate rotation, oldest first.
    pub fn reload_messages(&self) -> Vec<String> {
        self.reloads.lock().unwrap().clone()
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: http::Uri = format!("http://{}/metrics", self.admin).parse().unwrap();
        let resp = client.get(uri).await.expect("admin port answers");
        let body = resp.into_body().collect().await.expect("metrics body");
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    }

    /// The value of one sample line of `/metrics` (exact name and labels), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upstreams, certificates and the config file of one chaos run.
pub struct Mesh {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The endpoints of cluster `app` (route `plain`).
    pub apps: Vec<Upstream>,
    /// The local app behind the inbound listener (route `mtls`).
    pub local: Upstream,
    inbound: SocketAddr,
    ca: pki::Ca,
    /// Certificate generation; each rotation adds a SAN naming it.
    pub cert_generation: u32,
    /// Weights of `apps`, changed by reloads.
    pub weights: Vec<u32>,
}

impl Mesh {
    pub async fn new(tag: &str, apps: usize) -> Mesh {
        let dir = pki::dir(tag);
        let ca = pki::Ca::new("chaos-ca");
        ca.write(&dir, "ca.crt");
        let mut apps_v = Vec::new();
        for i in 0..apps {
            apps_v.push(Upstream::start(&format!("app-{i}")).await);
        }
        let local = Upstream::start("local").await;
        // A port for the inbound listener, which the outbound cluster must name.
        let inbound = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut mesh = Mesh {
            config: dir.join("octopus.yaml"),
            dir,
            apps: apps_v,
            local,
            inbound,
            ca,
            cert_generation: 0,
            weights: vec![1; apps],
        };
        mesh.rotate_certs();
        mesh.write_config();
        mesh
    }

    /// Issues fresh server and client certificates (same CA, same identities, one more
    /// SAN naming the generation) and swaps them in with a rename, as a secret
    /// mount's update would.
    pub fn rotate_certs(&mut self) {
        self.cert_generation += 1;
        let marker = format!("gen-{}.chaos.test", self.cert_generation);
        for (file, id) in [("server", SERVER_ID), ("client", CLIENT_ID)] {
            let leaf = self.ca.issue(
                &self.dir,
                &format!("{file}-next"),
                &[id, SERVER_NAME, &marker],
                false,
            );
            std::fs::rename(&leaf.key, self.dir.join(format!("{file}.key"))).unwrap();
            std::fs::rename(&leaf.cert, self.dir.join(format!("{file}.crt"))).unwrap();
        }
    }

    /// The SAN marking the newest certificate generation.
    pub fn cert_marker(&self) -> String {
        format!("gen-{}.chaos.test", self.cert_generation)
    }

    pub fn yaml(&self) -> String {
        let d = self.dir.display();
        let endpoints: Vec<String> = self
            .apps
            .iter()
            .zip(&self.weights)
            .map(|(a, w)| format!("{{ address: {}, weight: {w} }}", a.addr()))
            .collect();
        let (inbound, local, eps) = (self.inbound, self.local.addr(), endpoints.join(", "));
        let retry =
            "backoff: { base: 5ms, max: 20ms }, budget: { ratio: 1.0, min_per_second: 100 }";
        [
            "admin:".to_string(),
            "  listen: 127.0.0.1:0".into(),
            "outbound:".into(),
            "  listen: 127.0.0.1:0".into(),
            "  routes:".into(),
            "    - name: plain".into(),
            "      match: { host: plain }".into(),
            "      cluster: app".into(),
            "      timeout: 5s".into(),
            format!("      retry: {{ attempts: 3, per_try_timeout: 300ms, retry_on: [connect-failure, reset, gateway-error], {retry} }}"),
            "    - name: mtls".into(),
            "      match: { host: mtls }".into(),
            "      cluster: mesh".into(),
            "      timeout: 5s".into(),
            format!("      retry: {{ attempts: 3, retry_on: [connect-failure, reset], {retry} }}"),
            "inbound:".into(),
            format!("  listen: {inbound}"),
            format!("  forward_to: {local}"),
            "  tls:".into(),
            format!("    cert: {d}/server.crt"),
            format!("    key: {d}/server.key"),
            format!("    client_ca: {d}/ca.crt"),
            format!("    allowed_identities: [\"{CLIENT_ID}\"]"),
            "clusters:".into(),
            "  app:".into(),
            "    lb: weighted".into(),
            format!("    endpoints: [{eps}]"),
            "    connect_timeout: 200ms".into(),
            "    outlier_detection: { consecutive_failures: 3, base_ejection_time: 500ms, max_ejection_percent: 50 }".into(),
            "    health_check: { path: /healthz, interval: 200ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 1 }".into(),
            "    circuit_breaker: { max_requests: 1024 }".into(),
            "  mesh:".into(),
            format!("    endpoints: [{inbound}]"),
            "    connect_timeout: 500ms".into(),
            format!("    tls: {{ cert: {d}/client.crt, key: {d}/client.key, ca: {d}/ca.crt, server_identity: \"{SERVER_ID}\" }}"),
        ]
        .join("\n")
            + "\n"
    }

    /// Writes the config with a rename, so the watcher never reads half a file.
    pub fn write_config(&self) {
        self.write_raw(&self.yaml());
    }

    /// Writes any text as the config file (for invalid edits).
    pub fn write_raw(&self, text: &str) {
        let tmp = self.dir.join(".octopus.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Crashes app `i` (open connections reset, new ones refused) and starts it again
    /// on the same port after `down`.
    pub async fn restart_app(&mut self, i: usize, down: Duration) {
        let addr = self.apps[i].addr();
        self.apps[i].kill();
        tokio::time::sleep(down).await;
        self.apps[i] = Upstream::start_with(&format!("app-{i}"), Protocols::Auto, addr).await;
    }

    /// The SANs of the certificate the inbound listener serves now.
    pub async fn served_sans(&self) -> Vec<String> {
        let client_key = std::fs::read_to_string(self.dir.join("client.key")).unwrap();
        let client_crt = std::fs::read_to_string(self.dir.join("client.crt")).unwrap();
        let c = crate::TlsClient::new(
            &self.ca.pem,
            Some((&client_crt, &client_key)),
            SERVER_NAME,
            &[b"http/1.1"],
        );
        match c.connect(self.inbound).await {
            Ok(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| octopus_tls::identities(der))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// What the load saw in one window of time.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub sent: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer at all (connection to octopus failed).
    pub errors: u64,
    /// First few failures, for the report.
    pub samples: Vec<String>,
    latencies_us: Vec<u32>,
}

impl Window {
    pub fn failures(&self) -> u64 {
        self.errors
            + self
                .by_status
                .iter()
                .filter(|(s, _)| **s != 200)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    /// Latency quantile in milliseconds (q in 0..=1).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub fn merge(&mut self, other: &Window) {
        self.sent += other.sent;
        self.errors += other.errors;
        for (s, n) in &other.by_status {
            *self.by_status.entry(*s).or_default() += n;
        }
        for s in &other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s.clone());
            }
        }
        self.latencies_us.extend_from_slice(&other.latencies_us);
    }
}

/// A paced, closed-loop load: `clients` keep-alive clients, together about `rate`
/// requests per second, alternating between the given hosts.
pub struct Load {
    stop: Arc<AtomicBool>,
    window: Arc<Mutex<Window>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, hosts: &[&str], clients: usize, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let window = Arc::new(Mutex::new(Window::default()));
        let period = Duration::from_secs_f64(clients as f64 / f64::from(rate.max(1)));
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let tasks = (0..clients)
            .map(|n| {
                let (stop, window, hosts) = (stop.clone(), window.clone(), hosts.clone());
                tokio::spawn(async move {
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    let client = Client::builder(TokioExecutor::new()).build(connector);
                    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = n;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let host = &hosts[i % hosts.len()];
                        i += 1;
                        let req = http::Request::get(uri.clone())
                            .header(http::header::HOST, host.as_str())
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let started = Instant::now();
                        let outcome = match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                match resp.into_body().collect().await {
                                    Ok(_) => Ok(status),
                                    Err(e) => Err(format!("{host}: body: {e}")),
                                }
                            }
                            Err(e) => Err(format!("{host}: {e:?}")),
                        };
                        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        let mut w = window.lock().unwrap();
                        w.sent += 1;
                        w.latencies_us.push(us);
                        match outcome {
                            Ok(status) => {
                                *w.by_status.entry(status).or_default() += 1;
                                if status != 200 && w.samples.len() < 5 {
                                    w.samples.push(format!("{host}: status {status}"));
                                }
                            }
                            Err(e) => {
                                w.errors += 1;
                                if w.samples.len() < 5 {
                                    w.samples.push(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            window,
            tasks,
        }
    }

    /// The outcomes since the last call, and a fresh window.
    pub fn take_window(&self) -> Window {
        std::mem::take(&mut *self.window.lock().unwrap())
    }

    /// Stops the clients (each finishes its request in flight) and returns the rest.
    pub async fn finish(mut self) -> Window {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.take_window()
    }
}

/// Path of the octopus binary for harness users outside its own package: the
/// `OCTOPUS_BIN` environment variable, else `target/{release,debug}/octopus`.
pub fn octopus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OCTOPUS_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("octopus");
        if p.exists() {
            return p;
        }
    }
    panic!("no octopus binary: build it (cargo build --release) or set OCTOPUS_BIN")
}
