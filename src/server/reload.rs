//! Config reload on SIGHUP or when the config file changes. The new file is validated in
//! full first; an invalid one is refused with a log line and the running snapshot stays.
//! Requests in flight keep the snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::accounts::Accounts;
use crate::config::{self, ConfigError};
use crate::mail::Mailer;
use crate::metrics::ReloadResult;
use crate::state::{LiveSnapshot, Shared, Snapshot};

/// Events closer together than this are one reload (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The mail settings or templates of the new file do not build a mailer.
    #[error("accounts.email: {0}")]
    Mail(#[from] crate::mail::MailError),
}

/// Re-reads `path` and swaps the snapshot in when it is valid. The mailer is rebuilt from
/// the new file too (its templates may have changed on disk even when the file did not);
/// a mail setting that does not work refuses the whole reload.
pub fn reload(
    shared: &Shared,
    accounts: &Accounts,
    live: &LiveSnapshot,
    path: &Path,
) -> Result<(), ReloadError> {
    let old = live.load();
    let loaded = config::load(path)
        .map_err(ReloadError::from)
        .and_then(|new| {
            let mailer = Mailer::start(&new.accounts.email, shared.metrics.clone())?;
            Ok((new, mailer))
        });
    match loaded {
        Ok((new, mailer)) => {
            if new.listen != old.config.listen || new.admin_listen != old.config.admin_listen {
                tracing::warn!(target: "gatehouse::reload", "listen addresses changed; they take effect after a restart");
            }
            if new.tls.is_some() != old.config.tls.is_some() {
                tracing::warn!(target: "gatehouse::reload", "tls settings changed; they take effect after a restart");
            }
            let routes = new.routes.len();
            let previous = live.load_full();
            live.store(Arc::new(Snapshot::build(new, shared, Some(&previous))));
            accounts.set_mailer(Arc::new(mailer));
            shared.metrics.reload(ReloadResult::success);
            tracing::info!(target: "gatehouse::reload", routes, "configuration reloaded");
            Ok(())
        }
        Err(err) => {
            shared.metrics.reload(ReloadResult::failure);
            if let ReloadError::Config(ConfigError::Invalid(diags)) = &err {
                for d in diags {
                    tracing::error!(target: "gatehouse::reload", "{d}");
                }
            }
            tracing::error!(target: "gatehouse::reload", error = %err, "new configuration refused; keeping the running one");
            Err(err)
        }
    }
}

/// How often the config file is read to see whether it changed.
///
/// A poll from the runtime rather than an inotify watcher: the watcher needs a thread of its
/// own, and on one CPU the gateway serves from a single thread, which lets Linux skip taking
/// a file reference on every socket call (a shared fd table makes it take one). Reading a
/// config file of a few KiB once a second costs microseconds; editors and Kubernetes
/// ConfigMaps (a swapped `..data` symlink) both show up as different bytes at the path.
const POLL: Duration = Duration::from_secs(1);

/// Changes that do not settle within this many debounce periods are loaded as they are.
const MAX_SETTLE_ROUNDS: u32 = 20;

/// The bytes at `path` now, following symlinks; `None` while it cannot be read (a swap in
/// progress or a deleted file: the running config keeps serving).
fn read(path: &Path) -> Option<Vec<u8>> {
    // Blocking, but a local read of a small file; tokio::fs would take a blocking-pool
    // thread every second, which is what the poll is there to avoid.
    std::fs::read(path).ok()
}

/// What the file at `path` holds once it has stopped changing, if that is not `seen`.
async fn changed(path: &Path, seen: Option<&[u8]>) -> Option<Vec<u8>> {
    let now = read(path)?;
    if Some(now.as_slice()) == seen {
        return None;
    }
    settle(now, || read(path)).await
}

/// Reads again every [`DEBOUNCE`] until two reads agree (editors write in several steps) and
/// gives what they agree on; `None` if the file went away meanwhile.
async fn settle(mut now: Vec<u8>, mut read: impl FnMut() -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    for _ in 0..MAX_SETTLE_ROUNDS {
        tokio::time::sleep(DEBOUNCE).await;
        let again = read()?;
        if again == now {
            break;
        }
        now = again;
    }
    Some(now)
}

/// Reloads on SIGHUP (ticks on `hup`, debounced) and when the file's bytes change, until
/// `hup` closes. A SIGHUP always reloads (templates may have changed); the poll reloads only
/// bytes not loaded yet, so a change a SIGHUP already loaded is not loaded again.
pub async fn run(
    shared: Arc<Shared>,
    accounts: Arc<Accounts>,
    live: LiveSnapshot,
    path: PathBuf,
    mut hup: mpsc::Receiver<()>,
) {
    let mut seen = read(&path);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        tokio::select! {
            tick = hup.recv() => {
                if tick.is_none() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                // Read before loading: a write landing in between is seen by the next poll.
                seen = read(&path);
            }
            _ = poll.tick() => {
                match changed(&path, seen.as_deref()).await {
                    Some(settled) => seen = Some(settled),
                    None => continue,
                }
            }
        }
        while hup.try_recv().is_ok() {}
        let (s, a, l, p) = (shared.clone(), accounts.clone(), live.clone(), path.clone());
        // Reading the file and the templates is blocking I/O: keep it off the runtime threads.
        let _ = tokio::task::spawn_blocking(move || reload(&s, &a, &l, &p)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_what_the_bytes_say() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, "routes: []\n").unwrap();
        let seen = read(&path);
        assert_eq!(changed(&path, seen.as_deref()).await, None, "unchanged");

        // Same length, written within the file system's timestamp granularity: a check of
        // size and mtime could miss it, the bytes do not.
        std::fs::write(&path, "routes: {}\n").unwrap();
        assert_eq!(
            changed(&path, seen.as_deref()).await.as_deref(),
            Some(&b"routes: {}\n"[..]),
            "rewritten in place"
        );
        let seen = read(&path);
        std::fs::write(&path, "routes: {}\n").unwrap();
        assert_eq!(
            changed(&path, seen.as_deref()).await,
            None,
            "same bytes again"
        );

        // A ConfigMap-style swap: the path is a symlink whose target is replaced.
        let data = dir.path().join("..data");
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        std::fs::create_dir(dir.path().join("v2")).unwrap();
        std::fs::write(dir.path().join("v1/gateway.yaml"), "a: 1\n").unwrap();
        std::fs::write(dir.path().join("v2/gateway.yaml"), "a: 2\n").unwrap();
        std::os::unix::fs::symlink("v1", &data).unwrap();
        let linked = dir.path().join("linked.yaml");
        std::os::unix::fs::symlink("..data/gateway.yaml", &linked).unwrap();
        let seen = read(&linked);
        assert_eq!(seen.as_deref(), Some(&b"a: 1\n"[..]));
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("v2", &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert_eq!(
            changed(&linked, seen.as_deref()).await.as_deref(),
            Some(&b"a: 2\n"[..]),
            "symlink swapped"
        );

        // Gone (mid-swap or deleted): nothing to load, the running config stays.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(changed(&path, seen.as_deref()).await, None, "missing file");
    }

    #[tokio::test]
    async fn a_file_still_being_written_is_waited_for() {
        // What successive reads of a file being written see.
        let mut reads = [&b"new"[..], b"new\n", b"new\n", b"never read"]
            .into_iter()
            .map(|r| Some(r.to_vec()));
        let settled = settle(b"ne".to_vec(), || reads.next().flatten()).await;
        assert_eq!(settled.as_deref(), Some(&b"new\n"[..]));
        assert_eq!(reads.next(), Some(Some(b"never read".to_vec())));

        let mut reads = [Some(b"ne".to_vec()), None].into_iter();
        let gone = settle(b"n".to_vec(), || reads.next().flatten()).await;
        assert_eq!(gone, None, "deleted while settling");
    }
}
