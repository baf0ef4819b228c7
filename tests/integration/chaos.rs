//! Chaos under load, bounded in time, loopback only: an upstream crashes mid-load and
//! comes back, another one hangs. Every client request must still get a good answer
//! while a healthy endpoint exists.

use octopus_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_and_hang_under_load_lose_no_request() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let a_addr = a.addr();
    let proxy = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n      timeout: 5s\n      retry: {{ attempts: 3, per_try_timeout: 300ms, retry_on: [connect-failure, reset, gateway-error], backoff: {{ base: 5ms, max: 20ms }}, budget: {{ ratio: 1.0, min_per_second: 50 }} }}\nclusters:\n  svc:\n    endpoints: [{a_addr}, {}, {}]\n    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 300ms, max_ejection_percent: 34 }}\n",
        b.addr(),
        c.addr()
    ))
    .await;
    let load = Load::start(proxy.outbound_addr().unwrap(), "svc", 8);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // `a` crashes: open connections reset, new ones refused.
    a.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // `a` comes back on the same port.
    let a2 = Upstream::start_with("a", Protocols::Auto, a_addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // `b` hangs.
    b.set_delay(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let results = load.finish().await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(results.len() > 300, "load kept flowing: {}", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    assert!(a2.hits() > 0, "the restarted endpoint takes traffic again");
}
