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

/// Calls `reload` whenever any of `paths` changes, until the task is aborted.
pub(crate) fn watch(
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
