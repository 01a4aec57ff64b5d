//! Config reload on SIGHUP or when the config file changes. The new file is validated in
//! full first; an invalid one is refused with a log line and the running snapshot stays.
//! Requests in flight keep the snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
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

/// Watches the config file's directory (editors and Kubernetes ConfigMaps replace the file
/// rather than write it in place) and sends a tick on `tx` for every change that concerns it,
/// for as long as the returned watcher lives.
pub fn watch(
    path: &Path,
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let file: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let name = file.file_name().map(|n| n.to_os_string());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        // Kubernetes swaps a `..data` symlink; any change in the directory may concern us.
        let concerns = event.paths.iter().any(|p| {
            p.file_name().map(|n| n.to_os_string()) == name
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        });
        if concerns {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Debounces ticks from [`watch`] and SIGHUP into reloads until the channel closes.
pub async fn run(
    shared: Arc<Shared>,
    accounts: Arc<Accounts>,
    live: LiveSnapshot,
    path: PathBuf,
    mut ticks: mpsc::Receiver<()>,
) {
    while ticks.recv().await.is_some() {
        tokio::time::sleep(DEBOUNCE).await;
        while ticks.try_recv().is_ok() {}
        let (s, a, l, p) = (shared.clone(), accounts.clone(), live.clone(), path.clone());
        // Reading the file and the templates is blocking I/O: keep it off the runtime threads.
        let _ = tokio::task::spawn_blocking(move || reload(&s, &a, &l, &p)).await;
    }
}
