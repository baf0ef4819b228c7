//! The `octopus` binary as operators run it: `validate`, signals, graceful shutdown,
//! and the memory a streamed transfer costs the proxy process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use octopus_testkit::Upstream;
use octopus_tests::chaos::Daemon;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_octopus");

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("octopus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn validate(path: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/octopus.yaml");
    let (code, stdout, stderr) = validate(&root);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(": OK: 3 route(s), 3 cluster(s), 4 endpoint(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route payments: payments-v1 90.0%, payments-v2 10.0%"),
        "{stdout}"
    );
}

#[test]
fn validate_reports_each_kind_of_error_with_line_and_path() {
    let route = |body: &str| {
        format!("outbound:\n  listen: 127.0.0.1:15001\n  routes:\n{body}clusters:\n  c:\n    endpoints: [127.0.0.1:8080]\n")
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown-key",
            route("    - name: a\n      match: { hots: x }\n      cluster: c\n"),
            vec![
                "line 5 column",
                "outbound.routes[0].match: unknown field `hots`",
            ],
        ),
        (
            "bad-duration",
            route("    - name: a\n      cluster: c\n      timeout: 2 seconds\n"),
            vec![
                "line 6",
                "outbound.routes[0].timeout",
                "invalid duration `2 seconds`",
            ],
        ),
        (
            "bad-address",
            "clusters:\n  c:\n    endpoints: [10.0.0.1]\n".to_string(),
            vec![
                "line 3",
                "clusters.c.endpoints[0]",
                "invalid address `10.0.0.1`",
            ],
        ),
        (
            "zero-weights",
            route("    - name: a\n      split:\n        - { cluster: c, weight: 0 }\n"),
            vec!["line 5: outbound.routes[0].split: split weights are all 0"],
        ),
        (
            "unknown-cluster",
            route("    - name: a\n      cluster: nope\n"),
            vec!["line 5: outbound.routes[0].cluster: unknown cluster `nope`"],
        ),
        (
            "duplicate-route",
            route("    - name: a\n      cluster: c\n    - name: a\n      cluster: c\n"),
            vec!["line 6: outbound.routes[1].name: duplicate route name `a`"],
        ),
        (
            "missing-cert-file",
            "clusters:\n  c:\n    endpoints: [127.0.0.1:8080]\n    tls: { cert: a, key: b, ca: c, server_identity: d }\n".to_string(),
            vec!["line 4: clusters.c.tls.cert: cannot read `a`"],
        ),
        (
            "syntax",
            "outbound:\n  listen: [127.0.0.1:1\n".to_string(),
            vec!["line"],
        ),
    ];
    for (name, text, needles) in cases {
        let (code, stdout, stderr) = validate(&temp_config(&format!("{name}.yaml"), &text));
        assert_eq!(code, 1, "{name}: {stdout}");
        for n in needles {
            assert!(stderr.contains(n), "{name}: `{n}` not in:\n{stderr}");
        }
    }
    // Several semantic errors are all reported at once.
    let two = route("    - name: a\n      cluster: nope\n    - name: a\n      cluster: c\n");
    let (_, _, stderr) = validate(&temp_config("two.yaml", &two));
    assert!(stderr.contains("2 errors"), "{stderr}");
    let (code, _, stderr) = validate(Path::new("/nonexistent/octopus.yaml"));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read file"), "{stderr}");
}

fn validate_with(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("validate")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_offline_from_stdin_with_go_durations_and_suggestions() {
    // TLS files that exist only inside the pod: refused normally, checked otherwise
    // with --offline.
    let tls = "clusters:\n  c:\n    endpoints: [127.0.0.1:8080]\n    tls: { cert: /pod/tls.crt, key: /pod/tls.key, ca: /pod/ca.crt, server_identity: spiffe://x/y }\n";
    let path = temp_config("offline.yaml", tls);
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read `/pod/tls.crt`"), "{stderr}");
    let (code, stdout, stderr) =
        validate_with(&["--offline", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("offline"),
        "{stdout}"
    );
    // --offline still checks everything else.
    let broken = tls.replace("127.0.0.1:8080", "127.0.0.1");
    let (code, _, stderr) = validate_with(&["--offline", "--config", "-"], Some(&broken));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("<stdin>") && stderr.contains("invalid address"),
        "{stderr}"
    );

    // `--config -` reads the file from standard input; Go-style durations are accepted.
    let good = "outbound:\n  listen: 127.0.0.1:15001\n  routes:\n    - { name: a, match: { host: a }, cluster: payments, timeout: 1m30s }\nclusters:\n  payments:\n    endpoints: [127.0.0.1:8080]\n";
    let (code, stdout, stderr) = validate_with(&["--config", "-"], Some(good));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("<stdin>: OK: 1 route(s)"), "{stdout}");

    // Typos get a suggestion: a key, and a cluster name.
    let typo = good.replace("match: { host: a }", "match: { hots: a }");
    let (code, _, stderr) = validate_with(&["--config", "-"], Some(&typo));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown field `hots`") && stderr.contains("did you mean `host`?"),
        "{stderr}"
    );
    let typo = good.replace("cluster: payments", "cluster: payment");
    let (code, _, stderr) = validate_with(&["--config", "-"], Some(&typo));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown cluster `payment`; did you mean `payments`?"),
        "{stderr}"
    );
    let typo = good.replace("1m30s", "1m30");
    let (code, _, stderr) = validate_with(&["--config", "-"], Some(&typo));
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid duration `1m30`"), "{stderr}");
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("octopus "));
}

/// The process as operators run it (JSON logs, two workers), killed on drop.
fn start_daemon(config: &Path) -> Daemon {
    Daemon::start(Path::new(BIN), config, 2)
}

fn proxy_config(name: &str, up: SocketAddr, drain: &str) -> PathBuf {
    temp_config(
        name,
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc, timeout: 10s }}\nclusters:\n  svc:\n    endpoints: [{up}]\ndrain_timeout: {drain}\n"
        ),
    )
}

async fn send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> (u16, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", "svc")
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start("slow").await;
    let mut d = start_daemon(&proxy_config("drain.yaml", up.addr(), "5s"));
    let (outbound, admin) = (d.outbound, d.admin);
    let c = client();
    let in_flight =
        tokio::spawn(async move { send(&c, outbound, "GET", "/delay/1500", Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No longer accepting: the listener is closed while the slow request drains.
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "new connections are refused"
    );
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(
        tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(5)))
            .await
            .unwrap(),
        Some(0)
    );
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_bounds_shutdown() {
    let up = Upstream::start("stuck").await;
    let mut d = start_daemon(&proxy_config("deadline.yaml", up.addr(), "300ms"));
    let outbound = d.outbound;
    let _stuck =
        tokio::spawn(
            async move { send(&client(), outbound, "GET", "/delay/8000", Bytes::new()).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    d.signal("-TERM");
    let code = tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exited after the drain deadline, not the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_10mib_bodies_keep_proxy_memory_bounded() {
    const SIZE: usize = 10 * 1024 * 1024;
    let up = Upstream::start("big").await;
    let d = start_daemon(&proxy_config("memory.yaml", up.addr(), "1s"));
    let c = client();
    // Warm up pools and allocator arenas, then measure the peak across big transfers.
    send(&c, d.outbound, "GET", "/", Bytes::new()).await;
    let (hwm_before, idle_rss) = (d.peak_kib(), d.rss_kib());
    let upload = Bytes::from(vec![7u8; SIZE]);
    for _ in 0..3 {
        let (status, echoed) = send(&c, d.outbound, "POST", "/echo-body", upload.clone()).await;
        assert_eq!((status, echoed.len()), (200, SIZE));
        let (status, got) = send(
            &c,
            d.outbound,
            "GET",
            &format!("/bytes/{SIZE}"),
            Bytes::new(),
        )
        .await;
        assert_eq!((status, got.len()), (200, SIZE));
    }
    let (hwm_after, _) = (d.peak_kib(), d.rss_kib());
    let growth = hwm_after.saturating_sub(hwm_before);
    eprintln!("octopus idle RSS {idle_rss} KiB; peak before {hwm_before} KiB, after 60 MiB streamed {hwm_after} KiB");
    // Buffering even one body would add 10 MiB to the peak.
    assert!(
        growth < 8 * 1024,
        "proxy peak memory grew by {growth} KiB while streaming 10 MiB bodies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_is_shown_and_changed_at_run_time() {
    let up = Upstream::start("up").await;
    let config = proxy_config("log-level.yaml", up.addr(), "1s");
    let daemon = start_daemon(&config);
    let c = client();
    let (status, before) = send(&c, daemon.admin, "GET", "/log-level", Bytes::new()).await;
    assert_eq!(status, 200);
    assert!(!before.is_empty());
    let (status, now) = send(
        &c,
        daemon.admin,
        "PUT",
        "/log-level",
        Bytes::from("octopus_proxy=debug,info"),
    )
    .await;
    assert_eq!(status, 200, "{now:?}");
    let now = String::from_utf8_lossy(&now).into_owned();
    assert!(
        now.contains("octopus_proxy=debug") && now.contains("info"),
        "{now}"
    );
    let (_, shown) = send(&c, daemon.admin, "GET", "/log-level", Bytes::new()).await;
    assert_eq!(String::from_utf8_lossy(&shown), now);
    // A bad filter is refused and the old one stays.
    let (status, why) = send(
        &c,
        daemon.admin,
        "PUT",
        "/log-level",
        Bytes::from("octopus_proxy=loud"),
    )
    .await;
    assert_eq!(status, 400, "{why:?}");
    assert!(
        String::from_utf8_lossy(&why).contains("invalid filter"),
        "{why:?}"
    );
    let (status, _) = send(&c, daemon.admin, "PUT", "/log-level", Bytes::new()).await;
    assert_eq!(status, 400);
    let (_, shown) = send(&c, daemon.admin, "GET", "/log-level", Bytes::new()).await;
    assert_eq!(String::from_utf8_lossy(&shown), now);
    let (status, _) = send(&c, daemon.admin, "DELETE", "/log-level", Bytes::new()).await;
    assert_eq!(status, 405);
    // Traffic is unaffected.
    assert_eq!(upstream_name(daemon.outbound).await, "up");
}

async fn admin_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (_, body) = send(&client(), addr, "GET", path, Bytes::new()).await;
    serde_json::from_slice(&body).unwrap()
}

async fn admin_text(addr: SocketAddr, path: &str) -> String {
    let (_, body) = send(&client(), addr, "GET", path, Bytes::new()).await;
    String::from_utf8_lossy(&body).into_owned()
}

async fn wait_generation(admin: SocketAddr, want: u64) -> bool {
    for _ in 0..250 {
        if admin_json(admin, "/config").await["generation"] == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn upstream_name(outbound: SocketAddr) -> String {
    let req = http::Request::get(format!("http://{outbound}/"))
        .header("host", "svc")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    resp.headers()["x-upstream"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_are_picked_up_configmap_swap_and_editor_rename() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let cfg = |active: &str| {
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: {active} }}\nclusters:\n  blue:\n    endpoints: [{}]\n  green:\n    endpoints: [{}]\n",
            blue.addr(),
            green.addr()
        )
    };
    // The layout a Kubernetes ConfigMap volume has.
    let dir = std::env::temp_dir().join(format!("octopus-cm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/octopus.yaml"), cfg("blue")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/octopus.yaml", dir.join("octopus.yaml")).unwrap();
    let d = start_daemon(&dir.join("octopus.yaml"));
    assert_eq!(upstream_name(d.outbound).await, "blue");

    // The kubelet's atomic swap of `..data`.
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/octopus.yaml"), cfg("green")).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    assert!(
        wait_generation(d.admin, 2).await,
        "ConfigMap swap was not picked up"
    );
    assert_eq!(upstream_name(d.outbound).await, "green");
    let shown = admin_json(d.admin, "/config").await;
    assert_eq!(
        shown["sha256"],
        octopus_config::digest(cfg("green").as_bytes())
    );

    // An editor's save: write a temporary file, rename it over the config.
    std::fs::write(dir.join(".octopus.yaml.tmp"), cfg("blue")).unwrap();
    std::fs::rename(dir.join(".octopus.yaml.tmp"), dir.join("octopus.yaml")).unwrap();
    assert!(
        wait_generation(d.admin, 3).await,
        "rename-over was not picked up"
    );
    assert_eq!(upstream_name(d.outbound).await, "blue");

    // A broken save is refused and counted; the running config keeps serving.
    std::fs::write(dir.join(".octopus.yaml.tmp"), cfg("purple")).unwrap();
    std::fs::rename(dir.join(".octopus.yaml.tmp"), dir.join("octopus.yaml")).unwrap();
    let mut counted = false;
    for _ in 0..250 {
        if admin_text(d.admin, "/metrics")
            .await
            .contains(r#"octopus_config_reloads_total{result="failure"} 1"#)
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "the invalid edit was not counted");
    assert_eq!(admin_json(d.admin, "/config").await["generation"], 3);
    assert_eq!(upstream_name(d.outbound).await, "blue");

    // SIGHUP re-reads: the fixed file applies.
    std::fs::write(dir.join("octopus.yaml"), cfg("green")).unwrap();
    d.signal("-HUP");
    assert!(wait_generation(d.admin, 4).await, "SIGHUP reload");
    assert_eq!(upstream_name(d.outbound).await, "green");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_inspect_prints_identities_and_expiry() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["payments.test".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/payments"
            .try_into()
            .unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "payments");
    let pem = params.self_signed(&key).unwrap().pem();
    let file = temp_config("inspect.crt", &pem);
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("subject:    CN=payments"), "{text}");
    assert!(
        text.contains("identities: spiffe://cluster.local/ns/shop/sa/payments, payments.test"),
        "{text}"
    );
    assert!(text.contains("days from now"), "{text}");
    let bad = temp_config("bad.crt", "not a certificate");
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schema_is_json_and_describes_the_file() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Octopus control file");
    assert_eq!(schema["additionalProperties"], false);
    for key in ["admin", "outbound", "inbound", "clusters", "drain_timeout"] {
        assert!(schema["properties"][key].is_object(), "no {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_zero_only_on_success() {
    let up = Upstream::start("up").await;
    let d = start_daemon(&proxy_config("probe.yaml", up.addr(), "1s"));
    let probe = |url: String| {
        Command::new(BIN)
            .args(["probe", &url])
            .status()
            .unwrap()
            .code()
    };
    let admin = d.admin;
    let ok = tokio::task::spawn_blocking(move || probe(format!("http://{admin}/live")))
        .await
        .unwrap();
    assert_eq!(ok, Some(0));
    let missing = tokio::task::spawn_blocking(move || probe(format!("http://{admin}/nope")))
        .await
        .unwrap();
    assert_eq!(missing, Some(1), "a 404 is a failed probe");
    let dead = tokio::task::spawn_blocking(move || probe("http://127.0.0.1:1/live".into()))
        .await
        .unwrap();
    assert_eq!(dead, Some(1));
}
