//! A real Prometheus scrapes octopus: the series exist, the counters match the traffic
//! sent, and `promtool` accepts the exposition and the shipped rules and config.

use octopus_tests::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = pki::dir("prometheus");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: octopus\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "the `prometheus` binary is required (`.ci/run` installs Debian's prometheus package)",
        );
    Prometheus { child, addr, dir }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a PromQL query that returns one sample, if it does yet.
async fn query(p: &Prometheus, q: &str) -> Option<f64> {
    use http_body_util::BodyExt;
    // Prometheus may still be starting: a refused connection is just "not yet".
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = format!("http://{}/api/v1/query?query={}", p.addr, encode(q));
    let resp = client.get(uri.parse().ok()?).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_octopus_and_counts_match_the_traffic() {
    let up = Upstream::start("up").await;
    let proxy = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    for _ in 0..100 {
        assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);
    }
    let prom = start_prometheus(proxy.admin_addr());
    let total =
        r#"sum(octopus_requests_total{direction="outbound",route="r",cluster="svc",code="200"})"#;
    assert!(
        eventually(Duration::from_secs(30), async || query(&prom, total).await
            == Some(100.0))
        .await,
        "Prometheus never saw the first 100 requests"
    );
    for _ in 0..200 {
        client.get(out, "svc", "/", &[]).await;
    }
    assert!(
        eventually(Duration::from_secs(15), async || query(&prom, total).await
            == Some(300.0))
        .await,
        "Prometheus never saw all 300 requests"
    );
    // A rate over the counter reflects the 200 requests of the second burst.
    let increase = query(
        &prom,
        r#"sum(increase(octopus_requests_total{route="r",code="200"}[1m]))"#,
    )
    .await
    .unwrap();
    assert!(
        (150.0..=450.0).contains(&increase),
        "increase over 1m was {increase}"
    );
    assert_eq!(query(&prom, r#"up{job="octopus"}"#).await, Some(1.0));
    assert_eq!(query(&prom, "octopus_config_generation").await, Some(1.0));
    assert!(query(
        &prom,
        r#"octopus_request_duration_seconds_count{route="r"}"#
    )
    .await
    .is_some());
    // The dashboard's error ratios read 0, not "No data", while no 5xx has happened
    // (there is no code="5xx" series at all).
    for title in [
        "5xx ratio",
        "Error ratio (5xx) by route",
        "Error ratio by cluster",
    ] {
        let expr = dashboard_expr(title)
            .replace("$__rate_interval", "1m")
            .replace("$job", "octopus")
            .replace("$split_route", "r");
        let expr = ["$namespace", "$pod", "$instance", "$route", "$cluster"]
            .iter()
            .fold(expr, |e, v| e.replace(v, ".*"));
        assert_eq!(query(&prom, &expr).await, Some(0.0), "{title}: {expr}");
    }
}

/// The first query of the dashboard panel titled `title`.
fn dashboard_expr(title: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/octopus-dashboard.json")).unwrap(),
    )
    .unwrap();
    fn find(panels: &serde_json::Value, title: &str) -> Option<String> {
        panels.as_array()?.iter().find_map(|p| {
            if p["title"] == title {
                return p["targets"][0]["expr"].as_str().map(str::to_string);
            }
            find(&p["panels"], title)
        })
    }
    find(&dash["panels"], title).unwrap_or_else(|| panic!("no panel {title}"))
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`promtool` is required (`.ci/run` installs Debian's prometheus package)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_accepts_the_metrics_exposition() {
    let up = Upstream::start("up").await;
    let proxy = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc, retry: {{ attempts: 2 }} }}\nclusters:\n{}    outlier_detection: {{}}\n    circuit_breaker: {{}}\n",
        cluster("svc", "http1", &[up.addr()])
    ))
    .await;
    get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    get(proxy.outbound_addr().unwrap(), "nowhere", "/").await;
    let text = admin(&proxy, "/metrics").await.text();
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics: {out}");
    // Every counter series the config implies exists at 0 before anything happened, so
    // an alert's increase() sees the first burst.
    for series in [
        r#"octopus_upstream_retries_total{cluster="svc"} 0"#,
        r#"octopus_retry_budget_exhausted_total{cluster="svc"} 0"#,
        r#"octopus_circuit_overflow_total{cluster="svc",limit="max_requests"} 0"#,
        r#"octopus_circuit_overflow_total{cluster="svc",limit="max_pending_requests"} 0"#,
        r#"octopus_circuit_overflow_total{cluster="svc",limit="max_connections"} 0"#,
        r#"octopus_proxy_errors_total{cluster="svc",direction="outbound",kind="connect_failed",route="r"} 0"#,
        r#"octopus_trace_spans_total{result="dropped"} 0"#,
        r#"octopus_access_log_dropped_total 0"#,
    ] {
        assert!(text.contains(series), "{series} missing");
    }
}

#[test]
fn promtool_accepts_the_shipped_rules_and_scrape_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("deploy/prometheus/alerts.yml");
    let config = root.join("deploy/prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = promtool(&["check", "config", config.to_str().unwrap()], None);
    assert!(ok, "promtool check config: {out}");
    let compose = root.join("deploy/prometheus/prometheus-compose.yml");
    let (ok, out) = promtool(&["check", "config", compose.to_str().unwrap()], None);
    assert!(ok, "promtool check config (compose): {out}");
    // Each alert fires on synthetic series with the labels and annotations it promises.
    let unit = root.join("deploy/prometheus/alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", unit.to_str().unwrap()], None);
    assert!(ok, "promtool test rules: {out}");
}

fn yaml_docs(path: &std::path::Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The config embedded in a manifest or compose file must pass octopus' own checks;
/// only certificate files that exist in the pod, not here, may be missing.
fn assert_valid_octopus_config(text: &str, origin: &str) {
    if let Err(e) = octopus_config::load_str(text, origin) {
        let real: Vec<_> = e
            .errors
            .iter()
            .filter(|e| !e.message.starts_with("cannot read"))
            .collect();
        assert!(real.is_empty(), "{origin}: {real:?}");
    }
}

/// Kubernetes manifests: every document parses, names its kind, and the sidecar is
/// probed on the admin port. (kubeconform is not installable here; this is the check.)
#[test]
fn kubernetes_manifests_parse_and_wire_the_sidecar() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml" && e != "yml") {
            continue;
        }
        for doc in yaml_docs(&path) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", path.display()));
            assert!(
                doc["apiVersion"].is_string() && doc["metadata"]["name"].is_string(),
                "{}: {kind}",
                path.display()
            );
            kinds.push(kind.to_string());
            if kind == "ConfigMap" {
                for (name, text) in doc["data"].as_mapping().unwrap() {
                    if name.as_str().is_some_and(|n| n.ends_with(".yaml")) {
                        assert_valid_octopus_config(
                            text.as_str().unwrap(),
                            &format!("{}:{name:?}", path.display()),
                        );
                    }
                }
            }
            if kind == "Deployment" {
                let spec = &doc["spec"]["template"]["spec"];
                let all: Vec<&serde_yaml::Value> = spec["containers"]
                    .as_sequence()
                    .into_iter()
                    .chain(spec["initContainers"].as_sequence())
                    .flatten()
                    .collect();
                let sidecar = all
                    .iter()
                    .find(|c| c["name"].as_str().is_some_and(|n| n.contains("octopus")))
                    .unwrap_or_else(|| panic!("{}: no octopus container", path.display()));
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert!(
                        !sidecar[probe].is_null(),
                        "{}: sidecar has no {probe}",
                        path.display()
                    );
                }
            }
        }
    }
    for wanted in [
        "Deployment",
        "ConfigMap",
        "Certificate",
        "PodMonitor",
        "ServiceMonitor",
    ] {
        assert!(
            kinds.iter().any(|k| k == wanted),
            "no {wanted} among {kinds:?}"
        );
    }
}

#[test]
fn compose_configs_and_grafana_dashboard_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let configs = root.join("docker/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            assert_valid_octopus_config(
                &std::fs::read_to_string(&path).unwrap(),
                &path.display().to_string(),
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no sidecar configs under {}",
        configs.display()
    );
    assert!(!yaml_docs(&root.join("docker/compose.yaml")).is_empty());
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/octopus-dashboard.json")).unwrap(),
    )
    .unwrap();
    let text = dash.to_string();
    for metric in [
        "octopus_requests_total",
        "octopus_request_duration_seconds_bucket",
        "octopus_endpoint_ejected",
        "octopus_config_generation",
        "octopus_proxy_errors_total",
        "octopus_tcp_connections_total",
        "octopus_tcp_bytes_total",
        "octopus_protocol_detect_seconds_bucket",
        "octopus_protocol_detect_timeouts_total",
    ] {
        assert!(text.contains(metric), "dashboard does not use {metric}");
    }
    // Kubernetes users pick a namespace and a pod; every octopus query honours both.
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"namespace") && vars.contains(&"pod"),
        "{vars:?}"
    );
    let instance_filters = text.matches(r#"instance=~\"$instance\""#).count();
    let scoped = text
        .matches(r#"namespace=~\"$namespace\", pod=~\"$pod\", instance=~\"$instance\""#)
        .count();
    assert!(instance_filters > 10);
    assert_eq!(
        scoped, instance_filters,
        "a query filters by instance but not namespace/pod"
    );
}
