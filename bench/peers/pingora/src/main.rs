//! pingora-peer: a minimal reverse proxy on Cloudflare's `pingora-proxy`, run by bench/run.py
//! beside nginx and HAProxy as another reference point for octopus.
//!
//! Tuned like the other peers: one worker thread (nginx `worker_processes 1`, HAProxy
//! `nbthread 1`, octopus `--worker-threads 1`; pingora adds a signal-handling thread and a
//! timer thread, whose CPU bench/run.py counts with the rest); upstream HTTP/1.1 with
//! keep-alive reuse through pingora's connection pool (128 idle connections, as nginx's
//! `keepalive 128`); no logger is installed, so nothing is logged on the request path. Both
//! listeners belong to ONE service, because pingora gives every service its own threads; h2c
//! is enabled on that service, so each new connection is peeked once for the HTTP/2 preface
//! and served as HTTP/1.1 without it.
//!
//! Usage: pingora-peer --listen 127.0.0.1:25301 --listen-h2c 127.0.0.1:25302 --upstream 127.0.0.1:28081
//! SIGTERM or SIGINT stops it within about a second.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

/// Every request goes to the one upstream, plaintext HTTP/1.1.
struct Forward {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _: &mut Session,
        _: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "pingora-peer: {msg}\nusage: pingora-peer --listen ADDR --listen-h2c ADDR --upstream ADDR"
    );
    std::process::exit(2)
}

fn main() {
    let (mut listen, mut listen_h2c, mut upstream) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--listen-h2c" => &mut listen_h2c,
            "--upstream" => &mut upstream,
            other => usage(&format!("unknown argument {other}")),
        };
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        value
            .parse::<SocketAddr>()
            .unwrap_or_else(|_| usage(&format!("{flag} {value}: not IP:PORT")));
        *slot = Some(value);
    }
    let (Some(listen), Some(listen_h2c), Some(upstream)) = (listen, listen_h2c, upstream) else {
        usage("--listen, --listen-h2c and --upstream are all required");
    };

    let conf = ServerConf {
        threads: 1,
        // One current-thread runtime rather than a one-worker work-stealing one.
        work_stealing: false,
        upstream_keepalive_pool_size: 128,
        // SIGTERM is a graceful stop with a 5-minute grace period by default: a benchmark peer
        // needs none.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let peer = HttpPeer::new(upstream.as_str(), false, String::new());
    let mut service = http_proxy_service(&server.configuration, Forward { peer });
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // keepalive_request_limit stays None: no cap on requests per client connection, as the
    // other peers (nginx: keepalive_requests 1000000).
    service.app_logic_mut().expect("proxy app").server_options = Some(options);
    service.add_tcp(&listen);
    service.add_tcp(&listen_h2c);
    server.add_service(service);

    eprintln!(
        "pingora-peer: HTTP/1.1 on {listen}, h2c on {listen_h2c}, upstream {upstream}, 1 thread"
    );
    server.run_forever();
}
