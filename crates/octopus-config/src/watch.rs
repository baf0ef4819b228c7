//! Notices edits of the control file. The file's directory is watched rather than the
//! file itself, because the two ways operators replace it both swap directory entries:
//! editors write a temporary file and rename it over the old one, and Kubernetes
//! ConfigMaps re-point a `..data` symlink. Only events that name the config file, its
//! symlink target in the same directory, or `..data` count: a log file or an editor's
//! swap file beside the config must not trigger reloads (with debug logging to a file
//! in the config's directory, every reload's own log lines were an event, a loop).
//! Events are debounced; the caller re-reads the file and compares digests, so spurious
//! events cost one read.

use notify::{RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last event before a change is reported: editors and the
/// kubelet touch several entries per save, within a few milliseconds.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A change is reported at most this long after its first event even if events keep
/// coming, so a file rewritten continuously still gets reloaded.
const MAX_DELAY: Duration = Duration::from_millis(250);

pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    dir: PathBuf,
}

impl ConfigWatcher {
    /// Watches the directory that holds `path`.
    pub fn new(path: &Path) -> Result<Self, notify::Error> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let names = watched_names(path);
        let (tx, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if !ev.kind.is_access() && concerns(&ev, &names) {
                        // A full channel already holds a pending notice: nothing is lost.
                        let _ = tx.try_send(());
                    }
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            events,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The directory entries whose changes can change what `path` reads: the file itself,
/// the target of a symlink in the same directory (`octopus.yaml -> live.yaml`), and
/// Kubernetes' `..data` (a ConfigMap swaps it; `octopus.yaml -> ..data/octopus.yaml`).
fn watched_names(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    names.push(OsString::from("..data"));
    if let Ok(target) = std::fs::read_link(path) {
        // The first component of a relative target lives in the watched directory.
        if let Some(std::path::Component::Normal(first)) = target.components().next() {
            if target.is_relative() {
                names.push(first.to_os_string());
            }
        }
    }
    names
}

/// Whether an event may have changed the config: it names one of the watched entries,
/// or names nothing (an overflowed queue or rescan: better one spare read).
fn concerns(ev: &notify::Event, names: &[OsString]) -> bool {
    ev.need_rescan()
        || ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.iter().any(|w| w.as_os_str() == n))
        })
}

impl ConfigWatcher {
    /// Waits for the next burst of changes to settle. `None` if the watcher stopped.
    pub async fn changed(&mut self) -> Option<()> {
        self.events.recv().await?;
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            match tokio::time::timeout_at(quiet.min(deadline), self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!(
            "octopus-watch-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn sees_rename_over_and_symlink_swap() {
        // Editor style: write a temporary file, rename it over the config.
        let d = temp_dir("rename");
        let cfg = d.join("octopus.yaml");
        std::fs::write(&cfg, "a").unwrap();
        let mut w = ConfigWatcher::new(&cfg).unwrap();
        std::fs::write(d.join(".octopus.yaml.swp"), "b").unwrap();
        std::fs::rename(d.join(".octopus.yaml.swp"), &cfg).unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .is_some());
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "b");

        // ConfigMap style: octopus.yaml -> ..data/octopus.yaml, ..data -> ..v1, swapped to ..v2.
        let d = temp_dir("configmap");
        for v in ["..v1", "..v2"] {
            std::fs::create_dir(d.join(v)).unwrap();
            std::fs::write(d.join(v).join("octopus.yaml"), v).unwrap();
        }
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/octopus.yaml", d.join("octopus.yaml")).unwrap();
        let cfg = d.join("octopus.yaml");
        let mut w = ConfigWatcher::new(&cfg).unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .is_some());
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "..v2");
    }

    #[tokio::test]
    async fn other_files_in_the_directory_are_ignored() {
        let d = temp_dir("neighbours");
        let cfg = d.join("octopus.yaml");
        std::fs::write(&cfg, "a").unwrap();
        let mut w = ConfigWatcher::new(&cfg).unwrap();
        // A log file and an editor's swap file beside the config: 50 writes, no event.
        for i in 0..50 {
            std::fs::write(d.join("octopus.log"), format!("line {i}\n")).unwrap();
            std::fs::write(d.join(".octopus.yaml.swx"), "x").unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(600), w.changed())
                .await
                .is_err(),
            "writes to other files must not count as config changes"
        );
        // The config itself still does.
        std::fs::write(&cfg, "b").unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn an_edit_of_the_symlinked_file_counts() {
        let d = temp_dir("symlink");
        std::fs::write(d.join("live.yaml"), "a").unwrap();
        std::os::unix::fs::symlink("live.yaml", d.join("octopus.yaml")).unwrap();
        let mut w = ConfigWatcher::new(&d.join("octopus.yaml")).unwrap();
        std::fs::write(d.join("live.yaml"), "b").unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn continuous_edits_do_not_starve_the_reload() {
        let d = temp_dir("storm");
        let cfg = d.join("octopus.yaml");
        std::fs::write(&cfg, "0").unwrap();
        let mut w = ConfigWatcher::new(&cfg).unwrap();
        // Rewrite every 20 ms for 2 s: quieter than the debounce, never long enough.
        let writer = tokio::spawn(async move {
            for i in 0..100 {
                std::fs::write(&cfg, i.to_string()).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a change is reported while edits go on"
        );
        assert!(!writer.is_finished());
        writer.await.unwrap();
    }
}
