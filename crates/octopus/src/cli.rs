use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Octopus: a small, fast service-mesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "octopus", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "OCTOPUS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `octopus_proxy=debug`); RUST_LOG overrides it.
    #[arg(long, global = true, env = "OCTOPUS_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default when no command is given).
    Run(RunArgs),
    /// Check a config file without starting anything: exit 0 and a summary, or exit 1
    /// and every error with its line and field path.
    Validate(ValidateArgs),
    /// Print the JSON Schema of the control file (for editor validation).
    Schema,
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: a health probe for images
    /// without curl (e.g. `octopus probe http://127.0.0.1:9901/live`).
    Probe {
        /// An `http://host:port/path` URL.
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Write the pod's traffic-capture rules (iptables nat, IPv4 and IPv6): run once by
    /// an init container with NET_ADMIN and NET_RAW. Idempotent.
    Init(InitArgs),
    /// Certificate tools for operators.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Print subject, issuer, SANs (identities) and validity of each certificate in a
    /// PEM file.
    Inspect {
        /// A PEM file with one or more certificates.
        file: PathBuf,
    },
}

impl Default for Command {
    fn default() -> Self {
        Command::Run(RunArgs {
            config: ConfigArg {
                config: default_config(),
            },
            worker_threads: None,
        })
    }
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The YAML control file.
    #[arg(long, short, default_value_os_t = default_config(), env = "OCTOPUS_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The YAML control file; `-` reads it from standard input.
    #[arg(long, short, default_value_os_t = default_config(), env = "OCTOPUS_CONFIG")]
    pub config: PathBuf,
    /// Do not open the TLS files the config names (for CI, where they exist only
    /// inside the pod); everything else is checked.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where captured outbound TCP goes (outbound.listen's port).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Where captured inbound TCP goes (inbound.listen's port).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The UID octopus runs as: its own connections are never captured.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Inbound destination ports left alone (comma-separated), e.g. the metrics port.
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destinations left alone (comma-separated CIDRs), e.g. 169.254.169.254/32.
    #[arg(long, value_delimiter = ',')]
    pub skip_cidrs: Vec<crate::init::Cidr>,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove octopus' chains and the jumps into them.
    #[arg(long)]
    pub remove: bool,
    /// Leave IPv6 alone even where the kernel has it.
    #[arg(long)]
    pub no_ipv6: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Runtime worker threads; default: the container's CPU quota (cgroup v2 `cpu.max`),
    /// rounded up, else 1, so a sidecar never takes every core of the node.
    #[arg(long, env = "OCTOPUS_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

fn default_config() -> PathBuf {
    PathBuf::from("config/octopus.yaml")
}
