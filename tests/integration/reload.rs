//! Config swaps: blue-green flip, in-flight requests finish on the old config, invalid
//! files change nothing, and cluster state survives.

use octopus_tests::*;
use std::time::Duration;

fn config(active: &str, blue: &Upstream, green: &Upstream) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: {active} }}\nclusters:\n{}{}",
        cluster("blue", "http1", &[blue.addr()]),
        cluster("green", "http1", &[green.addr()])
    )
}

fn temp_file(text: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("octopus-test-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn blue_green_flip_keeps_in_flight_requests() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let proxy = start(&config("blue", &blue, &green)).await;
    let out = proxy.outbound_addr().unwrap();
    assert_eq!(get(out, "svc", "/").await.upstream(), "blue");

    let in_flight = tokio::spawn(async move { get(out, "svc", "/delay/400").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flipped = parse(&config("green", &blue, &green));
    assert_eq!(proxy.reload(flipped, None).await.unwrap(), 2);
    for _ in 0..10 {
        assert_eq!(
            get(out, "svc", "/").await.upstream(),
            "green",
            "no new request reaches the old colour"
        );
    }
    let slow = in_flight.await.unwrap();
    assert_eq!(
        (slow.status.as_u16(), slow.upstream()),
        (200, "blue".to_string())
    );
    assert_eq!(admin(&proxy, "/config").await.json()["generation"], 2);
    assert!(admin(&proxy, "/metrics")
        .await
        .text()
        .contains("octopus_config_generation 2"));
}

#[tokio::test]
async fn invalid_file_is_rejected_and_old_config_serves() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let proxy = start(&config("blue", &blue, &green)).await;
    let out = proxy.outbound_addr().unwrap();
    let bad = temp_file(&config("purple", &blue, &green));
    let err = proxy.reload_file(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("unknown cluster `purple`") && err.contains("line 5"),
        "{err}"
    );
    let _ = std::fs::remove_file(&bad);
    assert_eq!(proxy.generation(), 1);
    assert_eq!(get(out, "svc", "/").await.upstream(), "blue");
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_config_reloads_total{result="failure"} 1"#),
        "{m}"
    );

    // A listener moved to a port that is taken: refused, nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = config("green", &blue, &green).replace(
        "listen: 127.0.0.1:0\n  routes",
        &format!("listen: {}\n  routes", taken.local_addr().unwrap()),
    );
    let err = proxy
        .reload(parse(&moved), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot bind the outbound listener"), "{err}");
    assert_eq!(proxy.generation(), 1);
    assert_eq!(get(out, "svc", "/").await.upstream(), "blue");

    let good = temp_file(&config("green", &blue, &green));
    assert_eq!(proxy.reload_file(&good).await.unwrap(), 2);
    let _ = std::fs::remove_file(&good);
    assert_eq!(get(out, "svc", "/").await.upstream(), "green");
}

#[tokio::test]
async fn unchanged_clusters_keep_their_state_across_reloads() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let proxy = start(&config("blue", &blue, &green)).await;
    for _ in 0..4 {
        get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    }
    proxy
        .reload(parse(&config("green", &blue, &green)), None)
        .await
        .unwrap();
    let clusters = admin(&proxy, "/clusters").await.json();
    assert_eq!(
        clusters["clusters"]["blue"]["endpoints"][0]["requests_total"], 4,
        "blue's counters survived the reload"
    );
}

#[tokio::test]
async fn a_moved_listener_is_rebound_and_the_others_keep_serving() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let app = Upstream::start("app").await;
    let with_inbound = |outbound: &str| {
        config("blue", &blue, &green).replace(
            "listen: 127.0.0.1:0\n  routes",
            &format!("listen: {outbound}\n  routes"),
        ) + &format!(
            "inbound:\n  listen: 127.0.0.1:0\n  forward_to: {}\n",
            app.addr()
        )
    };
    let proxy = start(&with_inbound("127.0.0.1:0")).await;
    let (old_out, inbound) = (
        proxy.outbound_addr().unwrap(),
        proxy.inbound_addr().unwrap(),
    );
    // A keep-alive client on the inbound listener must not notice the reload.
    let inbound_client = HttpClient::http1();
    assert_eq!(
        inbound_client.get(inbound, "app", "/", &[]).await.status,
        200
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        proxy
            .reload(parse(&with_inbound(&free.to_string())), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(proxy.outbound_addr(), Some(free));
    assert_eq!(get(free, "svc", "/").await.upstream(), "blue");
    assert!(
        eventually(Duration::from_secs(2), async || {
            tokio::net::TcpStream::connect(old_out).await.is_err()
        })
        .await,
        "the old outbound port closes"
    );
    assert_eq!(proxy.inbound_addr(), Some(inbound));
    assert_eq!(
        inbound_client.get(inbound, "app", "/", &[]).await.status,
        200
    );
}
