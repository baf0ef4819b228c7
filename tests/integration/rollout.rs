//! Rollouts driven by editing the control file, under continuous load: reload storms,
//! blue-green flips, canary splits, sticky splits, invalid edits and mirroring.

use bytes::Bytes;
use http_body_util::BodyExt;
use octopus_tests::*;
use std::time::Duration;

fn two_colours(blue: &Upstream, green: &Upstream, route: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n{route}clusters:\n{}{}",
        cluster("blue", "http1", &[blue.addr()]),
        cluster("green", "http1", &[green.addr()])
    )
}

fn split(blue: u32, green: u32) -> String {
    format!("      split:\n        - {{ cluster: blue, weight: {blue} }}\n        - {{ cluster: green, weight: {green} }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_lose_nothing_and_keep_long_connections() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let files = [
        temp_file("storm-a", &two_colours(&blue, &green, &split(90, 10))),
        temp_file("storm-b", &two_colours(&blue, &green, &split(10, 90))),
    ];
    let proxy = start(&std::fs::read_to_string(&files[0]).unwrap()).await;
    let out = proxy.outbound_addr().unwrap();

    // Long-lived connections opened before the first reload.
    let mut ws = upgraded(out, "svc").await;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(out).await.unwrap());
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream = h2.send_request(
        http::Request::post("http://svc/echo-body")
            .body(ChannelBody(rx))
            .unwrap(),
    );
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let mut stream_body = stream.await.unwrap().into_body();
    let mut read_echo = async |want: &[u8]| {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream_body.frame())
                .await
                .expect("stream alive")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, want);
    };
    read_echo(b"first").await;

    let load = Load::start(out, "svc", 6);
    for i in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let generation = proxy.reload_file(&files[(i + 1) % 2]).await.unwrap();
        assert_eq!(generation, i as u64 + 2);
        let msg = format!("reload {i}");
        echo_round_trip(&mut ws, msg.as_bytes()).await;
        tx.send(Bytes::from(msg.clone())).await.unwrap();
        read_echo(msg.as_bytes()).await;
    }
    let results = load.finish().await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(
        results.len() > 1000,
        "load kept flowing: {} requests",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    let m = admin(&proxy, "/metrics").await.text();
    assert!(m.contains(r#"octopus_config_reloads_total{result="success"} 100"#));
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_flip_under_load() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let to = |c: &str| two_colours(&blue, &green, &format!("      cluster: {c}\n"));
    let proxy = start(&to("blue")).await;
    let out = proxy.outbound_addr().unwrap();
    let load = Load::start(out, "svc", 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.reload(parse(&to("green")), None).await.unwrap();
    // The new generation is visible from here on.
    assert_eq!(admin(&proxy, "/config").await.json()["generation"], 2);
    let flipped = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = load.finish().await;
    assert!(
        results.iter().all(|(_, status, _)| *status == 200),
        "no request failed"
    );
    let late_blue = results
        .iter()
        .filter(|(started, _, up)| *started > flipped && up == "blue")
        .count();
    assert_eq!(
        late_blue, 0,
        "a request started after the flip reached blue"
    );
    assert!(
        results.iter().any(|(_, _, up)| up == "blue")
            && results.iter().any(|(_, _, up)| up == "green")
    );
}

#[tokio::test]
async fn canary_90_10_within_two_points_and_sticky_users_stay() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let proxy = start(&two_colours(&blue, &green, &split(90, 10))).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    for _ in 0..5000 {
        assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);
    }
    let share = blue.hits() as f64 / 5000.0 * 100.0;
    assert!((88.0..=92.0).contains(&share), "stable got {share:.2}%");

    let sticky = format!("{}      hash_on: header:x-user\n", split(50, 50));
    proxy
        .reload(parse(&two_colours(&blue, &green, &sticky)), None)
        .await
        .unwrap();
    let mut sides = std::collections::HashSet::new();
    for u in 0..50 {
        let user = format!("user-{u}");
        let first = client
            .get(out, "svc", "/", &[("x-user", &user)])
            .await
            .upstream();
        for _ in 0..5 {
            assert_eq!(
                client
                    .get(out, "svc", "/", &[("x-user", &user)])
                    .await
                    .upstream(),
                first,
                "{user} moved"
            );
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "users are spread over both sides");
}

#[tokio::test]
async fn invalid_edits_are_rejected_counted_and_change_nothing() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let good = two_colours(&blue, &green, "      cluster: blue\n");
    let proxy = start(&good).await;
    let out = proxy.outbound_addr().unwrap();
    let cases = [
        (
            "syntax",
            good.replace("match: { host: svc }", "match: { host: svc"),
            "line",
        ),
        (
            "unknown-key",
            good.replace("cluster: blue\n", "clustr: blue\n"),
            "unknown field `clustr`",
        ),
        (
            "unknown-cluster",
            good.replace("cluster: blue\n", "cluster: purple\n"),
            "unknown cluster `purple`",
        ),
        (
            "zero-weights",
            two_colours(&blue, &green, &split(0, 0)),
            "split weights are all 0",
        ),
        (
            "bad-duration",
            good.replace("cluster: blue\n", "cluster: blue\n      timeout: soon\n"),
            "invalid duration `soon`",
        ),
    ];
    for (i, (name, text, expected)) in cases.iter().enumerate() {
        let file = temp_file(name, text);
        let err = proxy.reload_file(&file).await.unwrap_err().to_string();
        let _ = std::fs::remove_file(&file);
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(proxy.generation(), 1, "{name} changed the config");
        assert_eq!(
            get(out, "svc", "/").await.upstream(),
            "blue",
            "{name}: traffic keeps flowing"
        );
        let m = admin(&proxy, "/metrics").await.text();
        let counted = format!(
            r#"octopus_config_reloads_total{{result="failure"}} {}"#,
            i + 1
        );
        assert!(m.contains(&counted), "{name}: failure not counted");
    }
}

#[tokio::test]
async fn mirror_copies_a_sample_and_never_affects_the_client() {
    let (primary, shadow) = (
        Upstream::start("primary").await,
        Upstream::start("shadow").await,
    );
    let cfg = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: primary\n      mirror: {{ cluster: shadow, percent: 50 }}\nclusters:\n{}{}",
        cluster("primary", "http1", &[primary.addr()]),
        cluster("shadow", "http1", &[shadow.addr()])
    );
    let proxy = start(&cfg).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    for i in 0..400 {
        let body = format!("payload {i}");
        let req = http::Request::post(format!("http://{out}/echo-body"))
            .header("host", "svc")
            .body(http_body_util::Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = client.send(req).await;
        assert_eq!(
            (r.status.as_u16(), r.upstream(), r.text()),
            (200, "primary".to_string(), body)
        );
    }
    // Copies are asynchronous: give the last ones a moment.
    assert!(
        eventually(Duration::from_secs(2), async || primary.hits() == 400
            && shadow.hits() > 0)
        .await
    );
    let copies = shadow.hits();
    // 50% of 400, binomial sd 10: a 6-sd band.
    assert!((140..=260).contains(&copies), "shadow got {copies} copies");
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(&format!(
            r#"octopus_mirror_requests_total{{cluster="shadow",route="r"}} {copies}"#
        )),
        "{m}"
    );

    // A shadow that hangs, then one that fails: the client sees neither.
    shadow.set_delay(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(client.get(out, "svc", "/", &[]).await.upstream(), "primary");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a hanging mirror slowed the client"
    );
    shadow.set_delay(Duration::ZERO);
    for _ in 0..50 {
        let r = client.get(out, "svc", "/status/200", &[]).await;
        assert_eq!(r.status, 200);
    }
    let dead = dead_address().await;
    let cfg_dead = cfg.replace(&shadow.addr().to_string(), &dead.to_string());
    proxy.reload(parse(&cfg_dead), None).await.unwrap();
    for _ in 0..50 {
        assert_eq!(
            client.get(out, "svc", "/", &[]).await.status,
            200,
            "a dead mirror changes nothing"
        );
    }
}

#[tokio::test]
async fn a_client_cannot_pass_a_real_request_off_as_shadow_traffic() {
    let up = Upstream::start("primary").await;
    let proxy = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: primary\nclusters:\n{}",
        cluster("primary", "http1", &[up.addr()])
    ))
    .await;
    let r = HttpClient::http1()
        .get(
            proxy.outbound_addr().unwrap(),
            "svc",
            "/",
            &[("x-octopus-shadow", "true")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert!(seen["headers"]["host"].is_string(), "{seen}");
    assert!(seen["headers"].get("x-octopus-shadow").is_none(), "{seen}");
}
