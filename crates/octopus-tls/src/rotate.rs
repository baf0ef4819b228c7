//! Notices replaced certificate, key and CA files by polling their metadata twice a
//! second: cheap, and it follows every way files get replaced (in place, rename-over,
//! a Kubernetes Secret's symlink swap), so new handshakes use new material within a
//! second.

use std::time::{Duration, SystemTime};

const POLL: Duration = Duration::from_millis(500);

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[String]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Rebuilds a TLS config with `build` whenever one of `paths` changes and swaps it
/// into `current`; a failed build is logged and the previous config keeps serving.
pub(crate) fn rebuild_on_change<T: Send + Sync + 'static>(
    side: &'static str,
    paths: Vec<String>,
    current: std::sync::Arc<arc_swap::ArcSwap<T>>,
    build: impl Fn() -> Result<T, crate::TlsError> + Send + 'static,
) -> tokio::task::AbortHandle {
    let cert = paths.first().cloned().unwrap_or_default();
    watch(paths, move || match build() {
        Ok(new) => {
            current.store(std::sync::Arc::new(new));
            tracing::info!(%cert, "{side} TLS: new certificate material in use for new handshakes");
        }
        Err(e) => tracing::error!(
            "{side} TLS: rejected the changed files, the previous certificates keep serving: {e}"
        ),
    })
}

/// Calls `reload` whenever any of `paths` changes, until the task is aborted.
fn watch(
    paths: Vec<String>,
    mut reload: impl FnMut() + Send + 'static,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut last = stamp(&paths);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamp(&paths);
            if now != last {
                // Let a writer finish a multi-file update before reading.
                tokio::time::sleep(Duration::from_millis(50)).await;
                last = stamp(&paths);
                reload();
            }
        }
    })
    .abort_handle()
}
