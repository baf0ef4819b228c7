//! Demo upstreams for `make run`: each `NAME=ADDR` argument starts one echo server
//! (see the `octopus-testkit` crate docs for what it answers).
#![forbid(unsafe_code)]

use clap::Parser;
use octopus_testkit::{Protocols, Upstream};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Start named demo upstream servers on loopback")]
struct Args {
    /// `name=127.0.0.1:port`, one per upstream.
    #[arg(required = true)]
    upstreams: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut running = Vec::new();
    for spec in &args.upstreams {
        let Some((name, addr)) = spec.split_once('=') else {
            eprintln!("expected NAME=ADDR, got `{spec}`");
            return std::process::ExitCode::FAILURE;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            eprintln!("`{addr}` is not an IP:port address");
            return std::process::ExitCode::FAILURE;
        };
        let up = Upstream::start_with(name, Protocols::Auto, addr).await;
        println!("demo upstream {name} listening on {}", up.addr());
        running.push(up);
    }
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
