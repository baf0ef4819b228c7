use crate::cli::LogFormat;
use octopus_proxy::LogControl;
use std::io::IsTerminal;
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// RUST_LOG wins over `--log-level` so an operator can always override a manifest.
/// The filter sits behind a reload handle, so the admin port's `PUT /log-level` can
/// change it in the running process.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<Arc<LogFilter>, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("invalid RUST_LOG `{v}`: {e}"))?
        }
        _ => {
            let l = level.unwrap_or("info");
            EnvFilter::try_new(l).map_err(|e| format!("invalid --log-level `{l}`: {e}"))?
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            )))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| format!("cannot initialise logging: {e}"))?;
    Ok(Arc::new(LogFilter { handle }))
}

/// Colour codes only for a person at a terminal: a log collector reading a pipe or a
/// file gets plain text, and `NO_COLOR` (any non-empty value, no-color.org) turns them
/// off even on a terminal.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The running process' log filter, as the admin port's `/log-level` sees it.
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl for LogFilter {
    fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    fn set(&self, directives: &str) -> Result<String, String> {
        let filter = EnvFilter::try_new(directives.trim())
            .map_err(|e| format!("invalid filter `{}`: {e}", directives.trim()))?;
        let shown = filter.to_string();
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the filter: {e}"))?;
        Ok(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
