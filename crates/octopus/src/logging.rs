use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// RUST_LOG wins over `--log-level` so an operator can always override a manifest.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("invalid RUST_LOG `{v}`: {e}"))?
        }
        _ => {
            let l = level.unwrap_or("info");
            EnvFilter::try_new(l).map_err(|e| format!("invalid --log-level `{l}`: {e}"))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot initialise logging: {e}"))
}
