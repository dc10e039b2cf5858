//! Live config reload: when the config file changes (watched with `notify`), on
//! SIGHUP, or on `POST /admin/reload`, the file is read and validated, a new
//! runtime is built (unchanged upstreams keep their connection pools and
//! credentials), and it replaces the running one atomically. Requests in flight
//! finish on the runtime they started with. A file that does not validate
//! changes nothing: the reason is logged and `bedrock_proxy_config_reload_failures_total` grows.
//!
//! Listener addresses, TLS files, limits on concurrency, the cache tiers, the
//! stored-responses store (`[responses]`), trace export and EMF output are
//! read at start only; a reload that changes them says so in the log.

use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::runtime::{Runtime, RuntimeError};
use crate::state::AppState;

/// Events closer together than this make one reload (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Reloads `path`; returns the new config's hash, or why it was refused.
pub async fn reload(state: &AppState, path: &Path) -> Result<String, ReloadError> {
    let result = async {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| ReloadError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        let config = Config::parse(&text)?;
        let current = state.runtime();
        if config.hash == current.config.hash {
            return Ok(config.hash);
        }
        let old = &current.config;
        for (what, changed) in [
            (
                "server.listen / server.tls_*",
                old.server.listen != config.server.listen || old.server.tls != config.server.tls,
            ),
            ("admin.listen", old.admin.listen != config.admin.listen),
            (
                "server.workers",
                old.server.workers != config.server.workers,
            ),
            (
                "limits.max_concurrent_requests",
                old.limits.max_concurrent_requests != config.limits.max_concurrent_requests,
            ),
            ("[cache]", old.cache != config.cache),
            ("[responses]", old.responses != config.responses),
            (
                "[tracing], logging.cloudwatch_emf / cloudwatch_namespace",
                old.tracing != config.tracing
                    || old.logging.cloudwatch_emf != config.logging.cloudwatch_emf
                    || old.logging.cloudwatch_namespace != config.logging.cloudwatch_namespace,
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "this setting takes effect at the next start, not on reload"
                );
            }
        }
        let hash = config.hash.clone();
        let runtime = Runtime::build(config, state.embedded_url.as_deref(), Some(&current)).await?;
        state.swap_runtime(runtime);
        Ok(hash)
    }
    .await;
    match &result {
        Ok(hash) => {
            metrics::config_reload(true);
            tracing::info!(file = %path.display(), hash = %hash, "config reloaded");
        }
        Err(reason) => {
            metrics::config_reload(false);
            tracing::error!(file = %path.display(), %reason, "config reload refused; the running config stays");
        }
    }
    result
}

/// Watches `path` and SIGHUP until `stop`, reloading on each.
///
/// The file watch is in place when this returns (not once the task first
/// runs), so a change made right after startup is never missed.
pub fn watch(state: AppState, path: PathBuf, stop: CancellationToken) -> JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let file_name = path.file_name().map(|n| n.to_owned());
    let watched_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    // Editors replace files by renaming, so the directory is watched and
    // events are filtered by name. A Kubernetes ConfigMap volume never
    // touches the file itself: it writes a new `..<timestamp>` directory and
    // swaps the `..data` symlink the file points through, so events on
    // `..`-names count too (a reload of unchanged content changes nothing).
    let sender = tx;
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| {
                let name = p.file_name();
                name.map(|n| n.to_owned()) == file_name
                    || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
            });
            if ours && (event.kind.is_modify() || event.kind.is_create()) {
                let _ = sender.try_send(());
            }
        }
    });
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&watched_dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /admin/reload");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; reload with SIGHUP or POST /admin/reload");
            None
        }
    };
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<()>();
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                () = hup => tracing::info!("SIGHUP: reloading the config"),
            }
            let _ = reload(&state, &path).await;
        }
    })
}
