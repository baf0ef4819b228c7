//! Chaos against the real binary under mixed plain and mTLS load, loopback only,
//! a few seconds per scenario: an upstream crashes and restarts, hangs, resets half
//! its connections; a reload storm with invalid edits; certificate rotation. Each
//! asserts that every request got a good answer (a healthy endpoint always existed),
//! that octopus never panicked, and that its RSS after the chaos is within 10% of
//! its RSS after the same load's warm-up. `make chaos` runs these on a release build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use octopus_tests::chaos::{Daemon, Load, Mesh, Window};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_octopus");
/// One scenario at a time: each starts its own octopus, upstreams and load, and
/// the machine may have only two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Run {
    mesh: Mesh,
    daemon: Daemon,
    load: Option<Load>,
    warm: Window,
    rss_warm: u64,
}

async fn begin(tag: &str) -> Run {
    let mesh = Mesh::new(tag, 3).await;
    let daemon = Daemon::start(Path::new(BIN), &mesh.config, 2);
    let load = Load::start(daemon.outbound, &["plain", "mtls"], 8, 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warm = load.take_window();
    let rss_warm = daemon.rss_kib();
    Run {
        mesh,
        daemon,
        load: Some(load),
        warm,
        rss_warm,
    }
}

/// Stops the load and checks the outcome every scenario promises.
async fn end(tag: &str, mut run: Run) -> (Run, Window) {
    let mut w = run
        .load
        .take()
        .expect("load runs until the end")
        .finish()
        .await;
    w.merge(&run.warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = run.daemon.rss_kib();
    let p99 = w.quantile_ms(0.99);
    eprintln!(
        "{tag}: {} requests, statuses {:?}, errors {}, p99 {p99:.1} ms, RSS {} KiB after warm-up, {} KiB after chaos, peak {} KiB",
        w.sent,
        w.by_status,
        w.errors,
        run.rss_warm,
        rss,
        run.daemon.peak_kib()
    );
    // 8 clients at 400 req/s for 3-4 s; a hung endpoint slows a third of them.
    assert!(w.sent > 500, "{tag}: the load kept flowing: {}", w.sent);
    assert_eq!(
        w.failures(),
        0,
        "{tag}: {} of {} requests failed, e.g. {:?}",
        w.failures(),
        w.sent,
        w.samples
    );
    assert!(run.daemon.running(), "{tag}: octopus is still running");
    assert_eq!(run.daemon.panics(), 0, "{tag}: octopus panicked");
    assert!(
        rss * 10 <= run.rss_warm * 11,
        "{tag}: RSS grew from {} KiB to {rss} KiB",
        run.rss_warm
    );
    (run, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_crashes_and_restarts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = begin("crash").await;
    run.mesh.restart_app(0, Duration::from_millis(800)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (run, _) = end("crash", run).await;
    assert!(
        run.mesh.apps[0].hits() > 0,
        "the restarted endpoint serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hangs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = begin("hang").await;
    run.mesh.apps[1].set_delay(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    end("hang", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_half_its_connections() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = begin("reset").await;
    run.mesh.apps[2].set_reset_half(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = run
        .daemon
        .metric(r#"octopus_upstream_retries_total{cluster="app"}"#)
        .await;
    let (_, w) = end("reset", run).await;
    assert!(m > 0.0, "resets were retried ({m} retries of {})", w.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_with_invalid_edits() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = begin("reload").await;
    for i in 0..40u32 {
        if i % 5 == 4 {
            run.mesh
                .write_raw("outbound:\n  listen: [this is not an address\n");
        } else {
            run.mesh.weights = vec![1 + i % 3, 1 + (i + 1) % 4, 1 + (i + 2) % 5];
            run.mesh.write_config();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    run.mesh.write_config();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ok = run
        .daemon
        .metric(r#"octopus_config_reloads_total{result="success"}"#)
        .await;
    let refused = run
        .daemon
        .metric(r#"octopus_config_reloads_total{result="failure"}"#)
        .await;
    end("reload", run).await;
    assert!(ok >= 5.0, "valid edits were applied ({ok})");
    assert!(refused >= 1.0, "invalid edits were refused ({refused})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = begin("rotate").await;
    for _ in 0..3 {
        run.mesh.rotate_certs();
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let marker = run.mesh.cert_marker();
    let mut served = Vec::new();
    for _ in 0..30 {
        served = run.mesh.served_sans().await;
        if served.contains(&marker) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served.contains(&marker),
        "the inbound listener serves the newest certificate ({marker}): {served:?}"
    );
    end("rotate", run).await;
}

/// The status line of a one-off request, if any answer came.
async fn status_line(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines().next().map(str::to_string)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let up = octopus_testkit::Upstream::start("up").await;
    let dir = octopus_tests::pki::dir("emfile");
    let config = dir.join("octopus.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: 127.0.0.1:0\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n  svc:\n    endpoints: [{}]\n",
            up.addr()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(Path::new(BIN), &config, 1);
    let pid = daemon.pid();
    // Leave octopus a handful of spare descriptors (prlimit, util-linux, changes the
    // limit of the running process: the only way to reach EMFILE from outside).
    let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_now + 4;
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(set.success());

    // More clients than descriptors: accepts fail with EMFILE while these are open.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(
            tokio::net::TcpStream::connect(daemon.outbound)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // A listener spinning on a pending connection it cannot accept burns a whole core
    // (about 200 ticks in 2 s); backing off 50 ms per failure uses next to nothing.
    assert!(
        used < 50,
        "octopus used {used} ticks of CPU in 2 s at EMFILE"
    );

    // Descriptors come back when the clients go; octopus serves again.
    drop(clients);
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(2), status_line(daemon.outbound)).await
        {
            if line.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
        }
    }
    assert!(served, "octopus serves again once descriptors are free");
    let errors = daemon
        .metric(r#"octopus_listener_accept_errors_total{listener="outbound"}"#)
        .await;
    assert!(errors > 0.0, "the failed accepts are counted");
    assert!(
        errors < 200.0,
        "accept failures were paced, not spun on: {errors}"
    );
    assert_eq!(daemon.panics(), 0);
}

/// 5 HTTP/2 clients x 80 slow streams on the inbound listener need 400 connections
/// to the app; under a 256-descriptor limit octopus gives each side 96 of them. The
/// streams beyond the inbound share are shed with 503 at once, and the outbound
/// listener and the admin port keep serving throughout: no accept ever fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_inbound_side_leaves_outbound_and_admin_serving() {
    let _one = ONE_AT_A_TIME.lock().await;
    let app = octopus_testkit::Upstream::start("app").await;
    let up = octopus_testkit::Upstream::start("up").await;
    let dir = octopus_tests::pki::dir("fd-budget");
    let config = dir.join("octopus.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: 127.0.0.1:0\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\ninbound:\n  listen: 127.0.0.1:0\n  forward_to: {}\nclusters:\n  svc:\n    endpoints: [{}]\n",
            app.addr(),
            up.addr()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with_nofile(Path::new(BIN), &config, 1, Some(256));
    let inbound = daemon.inbound.expect("inbound listener");
    let capacity = daemon
        .metric(r#"octopus_descriptors{side="inbound",state="capacity"}"#)
        .await;
    assert_eq!(capacity, 96.0, "(256 - 64 reserved) / 2");

    // Each client's connection is opened (one quick request) before any slow stream
    // starts: a client dialling after the first ones spent the share would be refused
    // at accept, which is the shedding working, not what this test is about.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let client = octopus_tests::HttpClient::http2(inbound);
        assert_eq!(client.get(inbound, "app", "/", &[]).await.status, 200);
        clients.push(client);
    }
    let warm_up = app.hits();
    let mut streams = Vec::new();
    for client in clients {
        for _ in 0..80 {
            let c = client.clone();
            streams.push(tokio::spawn(async move {
                let r = c.get(inbound, "app", "/delay/5000", &[]).await;
                (
                    r.status.as_u16(),
                    r.headers
                        .get("x-octopus-error")
                        .map(|v| v.to_str().unwrap().to_string()),
                )
            }));
        }
    }
    // While the inbound side is saturated (its share of app connections held by slow
    // streams), the other side and admin still answer, at once.
    assert!(
        octopus_tests::eventually(Duration::from_secs(10), async || app.hits() >= warm_up + 85)
            .await,
        "the slow streams reach the app ({} so far)",
        app.hits() - warm_up
    );
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            octopus_tests::get(daemon.outbound, "svc", "/"),
        )
        .await
        .expect("outbound answers while inbound is saturated");
        assert_eq!(r.status, 200, "outbound keeps serving: {}", r.text());
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            octopus_tests::get(daemon.admin, "admin", "/ready"),
        )
        .await
        .expect("admin answers while inbound is saturated");
        assert_eq!(r.status, 200, "admin keeps serving");
    }
    assert!(
        daemon
            .metric(r#"octopus_descriptors_refused_total{side="inbound"}"#)
            .await
            > 0.0,
        "the inbound share was spent"
    );
    let mut ok = 0;
    let mut shed = 0;
    for s in streams {
        match s.await.unwrap() {
            (200, _) => ok += 1,
            (503, Some(kind)) if kind == "circuit_open" => shed += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(ok + shed, 400);
    assert!(shed > 0 && ok > 0, "ok {ok}, shed {shed}");
    assert!(
        ok <= 96,
        "no more app connections than the inbound share: {ok}"
    );
    // The process never ran out of descriptors: no accept failed anywhere.
    let m = daemon.metrics().await;
    for listener in ["outbound", "inbound", "admin"] {
        let series = format!(r#"octopus_listener_accept_errors_total{{listener="{listener}"}} 0"#);
        assert!(m.contains(&series), "{series}: {m}");
    }
    assert!(
        m.contains(r#"octopus_descriptors_refused_total{side="outbound"} 0"#),
        "{m}"
    );
    // Descriptors come back; inbound serves again.
    let r = octopus_tests::HttpClient::http2(inbound)
        .get(inbound, "app", "/", &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(daemon.panics(), 0);
}
