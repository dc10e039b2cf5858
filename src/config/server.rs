//! `[server]`: the API listener, who may call it, and its TLS files.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::names::choose;
use super::values::{expand_env, listen_addr};

named_enum! {
    /// Who may call the API port.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum AuthMode {
        /// Every request carries a configured API key or a proxy-issued SigV4 key.
        #[default]
        Keys = "keys",
        /// Anyone on the listener may call; only allowed on a loopback address.
        None = "none",
    }
}

/// The API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub auth: AuthMode,
    /// PEM certificate chain and key: serve HTTPS (boto3 sends Bedrock API keys
    /// only over HTTPS).
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthMode::default(),
            tls: None,
        }
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    auth: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

pub(super) fn validate(raw: RawServer, e: &mut Vec<String>) -> ServerConfig {
    let d = ServerConfig::default();
    let listen = listen_addr("server.listen", raw.listen, d.listen, e);
    let auth = raw
        .auth
        .and_then(|v| choose("server.auth", &v, AuthMode::NAMES, e))
        .unwrap_or(d.auth);
    if auth == AuthMode::None && !listen.ip().is_loopback() {
        e.push(format!(
            "server.auth: `none` is only allowed on a loopback address, not {listen}; configure [[keys]] instead"
        ));
    }
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: expand_env("server.tls_cert", &cert, e).into(),
            key: expand_env("server.tls_key", &key, e).into(),
        }),
        (None, None) => d.tls,
        _ => {
            e.push("server.tls_cert and server.tls_key go together".into());
            None
        }
    };
    ServerConfig { listen, auth, tls }
}
