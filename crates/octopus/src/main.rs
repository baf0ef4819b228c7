//! `octopus`: the sidecar daemon and its operator commands.
#![forbid(unsafe_code)]

mod cli;
mod logging;
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
    match cli.command.unwrap_or_default() {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Validate(args) => run::validate(&args),
    }
}
