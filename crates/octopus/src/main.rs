//! `octopus`: the sidecar daemon and its operator commands.
#![forbid(unsafe_code)]

mod cli;
mod init;
mod logging;
mod probe;
mod run;
mod workers;

use clap::Parser;
use std::process::ExitCode;

/// jemalloc, with its background purging thread on (the `background_threads` feature
/// builds it with `background_thread:true`), instead of glibc malloc: after a burst of
/// connections, the memory goes back to the OS.
///
/// Each open client connection costs ~27 KiB (measured with 1000 idle keep-alive
/// connections, S4 of docs/benchmarks.md: hyper's HTTP/1.1 read and write
/// buffers, 8-16 KiB each, kept for the connection's life; the connection's task,
/// ~2 KiB; hyper's slot for the request future, ~1.9 KiB), and all of it is freed when
/// the burst ends (upstream connections are bounded by the pool's idle set): after idling, glibc had 0.3 MiB in use but kept ~200 MiB of free chunks
/// that `free` cannot trim, since a live chunk sits above them at the top of the heap.
/// Only `malloc_trim(0)` returned them; `MALLOC_ARENA_MAX=1` and
/// `MALLOC_TRIM_THRESHOLD_` did not. jemalloc purges freed pages after
/// `dirty_decay_ms` (10 s), from its background thread, without waiting for the next
/// allocation (without that thread it kept 61 MiB).
///
/// `bench/burst.py` (5,000 keep-alive connections, 3 requests each, 1 worker thread),
/// RSS at baseline / peak / right after / 60 s idle / 90 s idle:
///
/// - glibc:            7.6 / 159 / 159 / 158.5 / 158.5 MiB
/// - jemalloc:         8.6 / 177 / 174 /  28.2 /  12.7 MiB (2 workers: 24.1 / 14.2 at
///   60 / 90 s); the step at 60-70 s is the upstream pool closing its idle connections
/// - mimalloc 0.1.52:  15.4 / 226 / 221 / 48.6 / 58.0 MiB (v2: 12.7 / 220 / 176 / 81.5
///   / 109 MiB; it returns memory only with `MIMALLOC_PURGE_DELAY=0` set at run time)
///
/// Throughput is the same: `wrk -t1 -c32 -d5s`, 5 interleaved runs each, median
/// 19,400 req/s (glibc) and 19,360 req/s (jemalloc), 47.7 and 46.8 µs of CPU per
/// request; steady RSS under that load 10.4 and 11.8 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let log_filter = match logging::init(cli.log_format, cli.log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("octopus: {e}");
            return ExitCode::from(2);
        }
    };
    let command = match cli.command {
        Some(c) => c,
        // `octopus` alone is `octopus run`, with run's defaults and environment variables.
        None => {
            let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            args.insert(1.min(args.len()), "run".into());
            cli::Cli::parse_from(args).command.unwrap_or_default()
        }
    };
    match command {
        cli::Command::Run(args) => run::run(args, log_filter),
        cli::Command::Validate(args) => run::validate(&args),
        cli::Command::Init(args) => init::run(&args),
        cli::Command::Cert(cli::CertCommand::Inspect { file }) => run::inspect(&file),
        cli::Command::Schema => {
            let schema = octopus_config::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        cli::Command::Probe { url, timeout_ms } => {
            probe::probe(&url, std::time::Duration::from_millis(timeout_ms))
        }
    }
}
