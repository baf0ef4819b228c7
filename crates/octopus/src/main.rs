//! `octopus`: the sidecar daemon and its operator commands.
#![forbid(unsafe_code)]

mod cli;
mod logging;
mod probe;
mod run;
mod workers;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("octopus: {e}");
        return ExitCode::from(2);
    }
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
        cli::Command::Run(args) => run::run(args),
        cli::Command::Validate(args) => run::validate(&args),
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
