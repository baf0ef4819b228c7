//! `make soak`: a long mixed run against the release binary — paced plain and mTLS
//! load, reloads (valid and invalid), upstream crashes and restarts, certificate
//! rotation — printing one line per minute (requests, statuses, errors, p50/p99,
//! RSS) and failing if a request that could be served was lost, octopus panicked,
//! or its RSS grew after the first minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use octopus_tests::chaos::{octopus_bin, Daemon, Load, Mesh, Window};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The octopus binary (default: OCTOPUS_BIN, else target/release/octopus).
    #[arg(long)]
    octopus: Option<PathBuf>,
    /// Length of the run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Seconds per report line (60 = per minute; shorter for a quick try).
    #[arg(long, default_value_t = 60)]
    report_every: u64,
    /// Total request rate of the load, per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Octopus' worker threads (a sidecar's usual quota is one core).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Allowed RSS growth after the first report, in percent.
    #[arg(long, default_value_t = 10)]
    rss_tolerance: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let bin = args.octopus.clone().unwrap_or_else(octopus_bin);
    let mut mesh = Mesh::new("soak", 3).await;
    let mut daemon = Daemon::start(&bin, &mesh.config, args.worker_threads);
    let rss_start = daemon.rss_kib();
    println!(
        "soak: {} for {} min, {} req/s from {} clients over plain and mTLS routes; idle RSS {:.1} MiB",
        bin.display(),
        args.minutes,
        args.rate,
        args.clients,
        rss_start as f64 / 1024.0
    );
    println!("events: reload every 10 s (an invalid one every 60 s), an upstream crash + restart every 30 s, certificate rotation every 45 s");
    println!(
        "| t (s) | requests | statuses | errors | p50 ms | p99 ms | max ms | RSS MiB | events |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");

    let load = Load::start(daemon.outbound, &["plain", "mtls"], args.clients, args.rate);
    let start = Instant::now();
    let total_secs = args.minutes * 60;
    let mut total = Window::default();
    let mut rss = Vec::new();
    let mut events = Vec::new();
    let mut restart_next = 0;
    for sec in 1..=total_secs {
        tokio::time::sleep_until((start + Duration::from_secs(sec)).into()).await;
        if sec % 60 == 0 {
            mesh.write_raw("outbound: {listen: [broken\n");
            events.push("invalid-reload");
        } else if sec % 10 == 0 {
            let s = (sec / 10) as u32;
            mesh.weights = vec![1 + s % 3, 1 + (s + 1) % 3, 1 + (s + 2) % 3];
            mesh.write_config();
            events.push("reload");
        } else if sec % 60 == 1 && sec > 1 {
            // Back to a valid file after the invalid edit.
            mesh.write_config();
        }
        if sec % 30 == 15 {
            mesh.restart_app(restart_next, Duration::from_secs(1)).await;
            restart_next = (restart_next + 1) % mesh.apps.len();
            events.push("restart");
        }
        if sec % 45 == 0 {
            mesh.rotate_certs();
            events.push("rotate");
        }
        if sec % args.report_every == 0 {
            let mut w = load.take_window();
            let now = daemon.rss_kib();
            rss.push(now);
            let mut counted: Vec<(&str, usize)> = Vec::new();
            for e in events.drain(..) {
                match counted.iter_mut().find(|(k, _)| *k == e) {
                    Some((_, n)) => *n += 1,
                    None => counted.push((e, 1)),
                }
            }
            let events: Vec<String> = counted.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let (p50, p99, max) = (w.quantile_ms(0.5), w.quantile_ms(0.99), w.quantile_ms(1.0));
            println!(
                "| {} | {} | {:?} | {} | {p50:.2} | {p99:.2} | {max:.1} | {:.1} | {} |",
                sec,
                w.sent,
                w.by_status,
                w.errors,
                now as f64 / 1024.0,
                events.join(", ")
            );
            if !w.samples.is_empty() {
                println!("  failures, e.g.: {:?}", w.samples);
            }
            total.merge(&w);
        }
    }
    total.merge(&load.finish().await);

    let peak = daemon.peak_kib();
    let first = rss.first().copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let highest_later = rss.iter().skip(1).copied().max().unwrap_or(first);
    println!();
    let p99 = total.quantile_ms(0.99);
    println!(
        "total: {} requests, statuses {:?}, errors {}, p99 {p99:.2} ms; RSS after the first report {:.1} MiB, highest later {:.1} MiB, at the end {:.1} MiB, peak (VmHWM) {:.1} MiB",
        total.sent,
        total.by_status,
        total.errors,
        first as f64 / 1024.0,
        highest_later as f64 / 1024.0,
        last as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let mut verdict = Vec::new();
    if total.failures() > 0 {
        verdict.push(format!(
            "{} requests failed, e.g. {:?}",
            total.failures(),
            total.samples
        ));
    }
    if daemon.panics() > 0 || !daemon.running() {
        verdict.push("octopus panicked or exited".to_string());
    }
    if last * 100 > first * (100 + args.rss_tolerance) {
        verdict.push(format!(
            "RSS grew after the first report: {first} KiB -> {last} KiB"
        ));
    }
    if verdict.is_empty() {
        println!("soak: PASS");
    } else {
        println!("soak: FAIL: {}", verdict.join("; "));
        std::process::exit(1);
    }
}
