//! Everything built from one config: the auth table, the routes, the upstream
//! clients and the model catalog. A [`Runtime`] is swapped atomically on reload
//! ([`crate::state`]); every request holds the `Arc` it started with, so
//! in-flight requests finish on their own config.
//!
//! What survives reloads (the response cache, the prefix registry, breakers)
//! is the pipeline's, not the runtime's.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::route::RouteTable;
use crate::upstream::{BuildError, Upstreams};

/// Why a config could not be turned into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Upstream(#[from] BuildError),
    #[error("catalog.file {path}: {reason}")]
    Catalog { path: PathBuf, reason: String },
    #[error("the built-in catalog: {0}")]
    EmbeddedCatalog(String),
}

/// Everything built from one config.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub auth: Auth,
    pub routes: RouteTable,
    pub upstreams: Upstreams,
    pub catalog: Arc<Catalog>,
}

impl Runtime {
    /// Builds a runtime, reusing `previous`'s upstreams where their config is
    /// unchanged. `embedded` is the in-process simulator's URL, if any.
    pub async fn build(
        config: Config,
        embedded: Option<&str>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, RuntimeError> {
        for advice in config.advice() {
            tracing::warn!("config: {advice}");
        }
        let upstreams =
            Upstreams::build(&config.upstreams, embedded, previous.map(|p| &p.upstreams)).await?;
        let catalog = match &config.catalog_file {
            Some(path) => {
                let failed = |reason: String| RuntimeError::Catalog {
                    path: path.clone(),
                    reason,
                };
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Catalog::parse(&text).map_err(failed)?
            }
            None => Catalog::parse(crate::catalog::DEFAULT_CATALOG)
                .map_err(RuntimeError::EmbeddedCatalog)?,
        };
        Ok(Runtime {
            auth: Auth::new(&config),
            routes: RouteTable::new(&config),
            upstreams,
            catalog: Arc::new(catalog),
            config: Arc::new(config),
        })
    }
}
