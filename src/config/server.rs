//! `[server]`: the API listener, who may call it, its TLS files, and what bounds
//! each connection (the connection cap, a deadline per phase, the header size).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::names::choose;
use super::values::{duration_or, expand_env, listen_addr};

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
    /// The regions a SigV4 credential scope may name; `None`: the regions of
    /// the upstreams the routes use.
    pub sigv4_regions: Option<Vec<String>>,
    /// The upstream of the Bedrock Runtime operations that name no model
    /// (ApplyGuardrail, InvokeGuardrailChecks, ListAsyncInvokes; GetAsyncInvoke
    /// when no upstream is in its ARN's region); `None`: the first route's.
    pub operations_upstream: Option<String>,
    /// What bounds each connection.
    pub connections: Connections,
    /// Connection runtimes: connections are spread over this many
    /// single-threaded runtimes, one per thread, each running its connections'
    /// requests start to end (0: all run on the shared work-stealing runtime).
    pub workers: usize,
}

/// The bounds on each client connection: how many, how long each phase may
/// take, how large a request head may be.
#[derive(Debug, Clone, PartialEq)]
pub struct Connections {
    /// Open connections beyond this are refused with a 503.
    pub max_connections: usize,
    /// From the accept to the first byte.
    pub first_byte_timeout: Duration,
    /// Between two requests on a kept-alive connection (HTTP/1.1 and HTTP/2).
    pub idle_timeout: Duration,
    /// The whole request body, from its headers to its last byte.
    pub body_timeout: Duration,
    /// Bytes per second a body must average once `body_rate_grace` has passed
    /// (0: no minimum).
    pub body_min_rate: u64,
    pub body_rate_grace: Duration,
    /// HTTP/2 pings (`None`: none).
    pub h2_keep_alive_interval: Option<Duration>,
    pub h2_keep_alive_timeout: Duration,
    /// The largest request head (431 beyond).
    pub max_header_bytes: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_connections: 10_000,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(120),
            body_min_rate: 1024,
            body_rate_grace: Duration::from_secs(5),
            h2_keep_alive_interval: Some(Duration::from_secs(30)),
            h2_keep_alive_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthMode::default(),
            tls: None,
            sigv4_regions: None,
            operations_upstream: None,
            connections: Connections::default(),
            workers: bedrock_wire::workers::cores(),
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
    sigv4_regions: Option<Vec<String>>,
    operations_upstream: Option<String>,
    max_connections: Option<usize>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    body_min_rate: Option<u64>,
    body_rate_grace: Option<String>,
    h2_keep_alive_interval: Option<String>,
    h2_keep_alive_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    /// `"auto"` or a count.
    workers: Option<toml::Value>,
}

/// The most connection runtimes `server.workers` may ask for.
const MAX_WORKERS: usize = 1024;

fn workers(raw: Option<toml::Value>, default: usize, e: &mut Vec<String>) -> usize {
    match raw {
        None => default,
        Some(toml::Value::String(name)) if name == "auto" => bedrock_wire::workers::cores(),
        Some(toml::Value::Integer(n)) if (0..=MAX_WORKERS as i64).contains(&n) => n as usize,
        Some(other) => {
            e.push(format!(
                "server.workers: {other} is not \"auto\" (one per core) or a count from 0 (the shared runtime) to {MAX_WORKERS}"
            ));
            default
        }
    }
}

/// The connection keys of `[server]`, read apart from the listener's.
struct RawConnections {
    max_connections: Option<usize>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    body_min_rate: Option<u64>,
    body_rate_grace: Option<String>,
    h2_keep_alive_interval: Option<String>,
    h2_keep_alive_timeout: Option<String>,
    max_header_bytes: Option<usize>,
}

pub(super) fn validate(raw: RawServer, e: &mut Vec<String>) -> ServerConfig {
    let d = ServerConfig::default();
    let raw_connections = RawConnections {
        max_connections: raw.max_connections,
        first_byte_timeout: raw.first_byte_timeout,
        idle_timeout: raw.idle_timeout,
        body_timeout: raw.body_timeout,
        body_min_rate: raw.body_min_rate,
        body_rate_grace: raw.body_rate_grace,
        h2_keep_alive_interval: raw.h2_keep_alive_interval,
        h2_keep_alive_timeout: raw.h2_keep_alive_timeout,
        max_header_bytes: raw.max_header_bytes,
    };
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
    let sigv4_regions = raw.sigv4_regions.inspect(|regions| {
        if regions.is_empty() {
            e.push("server.sigv4_regions: list at least one region (leave it out for the routes' upstream regions)".into());
        }
        for r in regions {
            let valid = !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                e.push(format!(
                    "server.sigv4_regions: `{r}` is not a region name like us-east-1"
                ));
            }
        }
    });
    ServerConfig {
        listen,
        auth,
        tls,
        sigv4_regions,
        operations_upstream: raw.operations_upstream,
        connections: connections(raw_connections, e),
        workers: workers(raw.workers, d.workers, e),
    }
}

fn connections(raw: RawConnections, e: &mut Vec<String>) -> Connections {
    let d = Connections::default();
    let positive = |key: &str, value: Duration, e: &mut Vec<String>| {
        if value.is_zero() {
            e.push(format!("server.{key}: must be longer than 0s"));
        }
        value
    };
    let max_connections = raw.max_connections.unwrap_or(d.max_connections);
    if max_connections == 0 {
        e.push("server.max_connections: must be at least 1".into());
    }
    let max_header_bytes = raw.max_header_bytes.unwrap_or(d.max_header_bytes);
    if max_header_bytes < 8192 {
        e.push("server.max_header_bytes: must be at least 8192".into());
    }
    let h2_keep_alive_interval = match raw.h2_keep_alive_interval {
        None => d.h2_keep_alive_interval,
        // "0s" turns the pings off.
        Some(v) => Some(duration_or(
            "server.h2_keep_alive_interval",
            Some(v),
            Duration::ZERO,
            e,
        ))
        .filter(|d| !d.is_zero()),
    };
    Connections {
        max_connections,
        first_byte_timeout: positive(
            "first_byte_timeout",
            duration_or(
                "server.first_byte_timeout",
                raw.first_byte_timeout,
                d.first_byte_timeout,
                e,
            ),
            e,
        ),
        idle_timeout: positive(
            "idle_timeout",
            duration_or("server.idle_timeout", raw.idle_timeout, d.idle_timeout, e),
            e,
        ),
        body_timeout: positive(
            "body_timeout",
            duration_or("server.body_timeout", raw.body_timeout, d.body_timeout, e),
            e,
        ),
        body_min_rate: raw.body_min_rate.unwrap_or(d.body_min_rate),
        body_rate_grace: duration_or(
            "server.body_rate_grace",
            raw.body_rate_grace,
            d.body_rate_grace,
            e,
        ),
        h2_keep_alive_interval,
        h2_keep_alive_timeout: positive(
            "h2_keep_alive_timeout",
            duration_or(
                "server.h2_keep_alive_timeout",
                raw.h2_keep_alive_timeout,
                d.h2_keep_alive_timeout,
                e,
            ),
            e,
        ),
        max_header_bytes,
    }
}
