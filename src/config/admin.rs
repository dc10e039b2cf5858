//! `[admin]`: the admin listener (metrics, health, admin API) and its token.

use serde::Deserialize;
use std::net::SocketAddr;

use super::values::{listen_addr, sha256_hex};

/// The admin listener (metrics, health, admin API).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// SHA-256 of the bearer token `/admin/*` (and `/_sim/*`) require. Without
    /// one they are served only on a loopback admin listener.
    pub token_sha256: Option<[u8; 32]>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_sha256: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<String>,
    token_sha256: Option<String>,
}

pub(super) fn validate(raw: RawAdmin, e: &mut Vec<String>) -> AdminConfig {
    let d = AdminConfig::default();
    AdminConfig {
        token_sha256: raw
            .token_sha256
            .map(|hash| sha256_hex("admin.token_sha256", &hash, e))
            .or(d.token_sha256),
        listen: listen_addr("admin.listen", raw.listen, d.listen, e),
    }
}
