//! `[upstreams.NAME]`: the endpoints requests go to (Bedrock, a simulator, an
//! OpenAI-compatible server, a SageMaker endpoint), how each is authenticated,
//! its deadlines and, for self-hosted models, what it costs.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::names::choose;
use super::values::{duration_or, expand_env};

named_enum! {
    /// Which service an upstream is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum UpstreamKind {
        /// Amazon Bedrock, signed with AWS credentials or a Bedrock API key.
        #[default]
        Bedrock = "bedrock",
        /// bedrock-sim: at `endpoint`, or embedded in the proxy when none is given.
        Simulator = "simulator",
        /// Any OpenAI-compatible Chat Completions server (vLLM, SGLang, TGI,
        /// Ollama, LiteLLM, a regional provider's compatible mode), at `base_url`.
        OpenAi = "openai",
        /// SageMaker Runtime's InvokeEndpoint, the body in the OpenAI-style
        /// messages API of the LMI, vLLM and TGI serving containers.
        SageMaker = "sagemaker",
    }
}

impl UpstreamKind {
    /// Whether requests reach it as OpenAI chat requests, translated from
    /// Converse on the way out (the others take Converse and InvokeModel as they are).
    pub fn speaks_chat(self) -> bool {
        matches!(self, UpstreamKind::OpenAi | UpstreamKind::SageMaker)
    }

    /// Whether it is Bedrock's API (Bedrock or the simulator's Bedrock face),
    /// where latency and service tiers and prompt caching apply.
    pub fn is_bedrock(self) -> bool {
        !self.speaks_chat()
    }
}

named_enum! {
    /// Which HTTP version the proxy speaks to an upstream.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum HttpProtocol {
        /// HTTP/2 where an https server picks it by ALPN (Bedrock does),
        /// else HTTP/1.1 (plain http included).
        #[default]
        Auto = "auto",
        /// HTTP/1.1 only.
        Http1 = "http1",
        /// HTTP/2 only: by ALPN on https, with prior knowledge (h2c) on plain http.
        Http2 = "http2",
    }
}

/// How the proxy connects to an upstream and keeps its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamConnections {
    pub http: HttpProtocol,
    /// HTTP/2 connections requests are spread over (each multiplexes streams).
    pub http2_connections: usize,
    /// HTTP/2 PING interval (also while idle); `None`: no pings.
    pub http2_keep_alive_interval: Option<Duration>,
    /// A PING unanswered this long closes its connection.
    pub http2_keep_alive_timeout: Duration,
    /// How long an unused connection is kept open.
    pub pool_idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept (per HTTP/2 connection slot).
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConnections {
    fn default() -> Self {
        UpstreamConnections {
            http: HttpProtocol::default(),
            http2_connections: 2,
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

impl UpstreamConnections {
    /// The wire client's options, with `connect_timeout`.
    pub fn client_options(&self, connect_timeout: Duration) -> bedrock_wire::client::ClientOptions {
        use bedrock_wire::client::{ClientOptions, HttpVersion};
        ClientOptions {
            connect_timeout,
            version: match self.http {
                HttpProtocol::Auto => HttpVersion::Auto,
                HttpProtocol::Http1 => HttpVersion::Http1,
                HttpProtocol::Http2 => HttpVersion::Http2,
            },
            pool_idle_timeout: self.pool_idle_timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            http2_keep_alive_interval: self.http2_keep_alive_interval,
            http2_keep_alive_timeout: self.http2_keep_alive_timeout,
            http2_adaptive_window: true,
        }
    }

    /// How many clients requests are spread over: one per HTTP/2 connection
    /// when HTTP/2 may be spoken, one pool for HTTP/1.1.
    pub fn spread(&self) -> usize {
        match self.http {
            HttpProtocol::Http1 => 1,
            HttpProtocol::Auto | HttpProtocol::Http2 => self.http2_connections.max(1),
        }
    }
}

/// The value of `base_url` (openai) or `endpoint` (sagemaker) that means the
/// simulator embedded in the proxy (demo mode).
pub const EMBEDDED: &str = "embedded";

/// What answers from a self-hosted model cost: the instance's price per hour,
/// shared by the requests it serves at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourlyCost {
    pub usd_per_hour: f64,
    /// Requests the deployment serves at once (a vLLM instance batches many);
    /// each request is charged `usd_per_hour / 3600 × seconds / concurrency`.
    pub concurrency: u32,
}

/// Deadlines for calls to one upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers (and, for streams, the first event).
    pub first_byte: Duration,
    /// Longest silence between two events of a stream.
    pub idle: Duration,
    /// The whole call.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    pub region: String,
    /// `https://bedrock-runtime.{region}.amazonaws.com` (sagemaker:
    /// `https://runtime.sagemaker.{region}.amazonaws.com`) unless overridden.
    pub endpoint: Option<String>,
    /// `openai`: the server's base URL (`.../v1`); requests go to
    /// `{base_url}/chat/completions`.
    pub base_url: Option<String>,
    /// The in-process simulator answers (a `simulator` without `endpoint`, or
    /// `base_url` / `endpoint` = `"embedded"`).
    pub embedded: bool,
    pub profile: Option<String>,
    pub bearer_token: Option<String>,
    /// `openai`: sent as `Authorization: Bearer` (none when unset or empty).
    pub api_key: Option<String>,
    /// Headers added to every request (`openai`, `sagemaker`).
    pub headers: Vec<(String, String)>,
    /// `openai`, `sagemaker`: ask streams for usage with
    /// `stream_options.include_usage` (dropped for a server that refuses it).
    pub include_usage: bool,
    /// A self-hosted model's price, when it is billed by the hour.
    pub hourly: Option<HourlyCost>,
    pub timeouts: Timeouts,
    pub connections: UpstreamConnections,
}

/// An unnamed upstream with every key at its default (the name is the table's).
impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            kind: UpstreamKind::default(),
            region: "us-east-2".into(),
            endpoint: None,
            base_url: None,
            embedded: false,
            profile: None,
            bearer_token: None,
            api_key: None,
            headers: Vec::new(),
            include_usage: true,
            hourly: None,
            timeouts: Timeouts::default(),
            connections: UpstreamConnections::default(),
        }
    }
}

impl UpstreamConfig {
    /// The endpoint to call (for `openai`, the base URL); `None` for the
    /// embedded simulator.
    pub fn endpoint_url(&self) -> Option<String> {
        if self.embedded {
            return None;
        }
        let configured = match self.kind {
            UpstreamKind::OpenAi => &self.base_url,
            _ => &self.endpoint,
        };
        match (configured, self.kind) {
            (Some(e), _) => Some(e.trim_end_matches('/').to_owned()),
            (None, UpstreamKind::Bedrock) => {
                Some(bedrock_wire::client::bedrock_runtime_endpoint(&self.region))
            }
            (None, UpstreamKind::SageMaker) => {
                Some(bedrock_wire::sagemaker::runtime_endpoint(&self.region))
            }
            (None, UpstreamKind::Simulator | UpstreamKind::OpenAi) => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    kind: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    base_url: Option<String>,
    profile: Option<String>,
    bearer_token: Option<String>,
    api_key: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    include_usage: Option<bool>,
    usd_per_hour: Option<f64>,
    concurrency: Option<u32>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    total_timeout: Option<String>,
    http: Option<String>,
    http2_connections: Option<usize>,
    h2_keep_alive_interval: Option<String>,
    h2_keep_alive_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<usize>,
}

pub(super) fn validate(
    raw: BTreeMap<String, RawUpstream>,
    e: &mut Vec<String>,
) -> BTreeMap<String, UpstreamConfig> {
    if raw.is_empty() {
        e.push("upstreams: at least one [upstreams.NAME] table is needed".into());
    }
    raw.into_iter()
        .map(|(name, u)| (name.clone(), upstream(name, u, e)))
        .collect()
}

fn upstream(name: String, raw: RawUpstream, e: &mut Vec<String>) -> UpstreamConfig {
    let key = format!("upstreams.{name}");
    let d = UpstreamConfig::default();
    let kind = raw
        .kind
        .as_deref()
        .and_then(|v| choose(&format!("{key}.kind"), v, UpstreamKind::NAMES, e))
        .unwrap_or(d.kind);
    refuse_foreign_keys(&key, kind, &raw, e);
    let url = |field: &str, value: Option<String>, e: &mut Vec<String>| {
        let value = value.map(|v| expand_env(&format!("{key}.{field}"), &v, e))?;
        let embedded = value == EMBEDDED && kind.speaks_chat();
        if !(embedded || value.starts_with("http://") || value.starts_with("https://")) {
            e.push(format!(
                "{key}.{field}: `{value}` must start with http:// or https://"
            ));
        }
        Some(value)
    };
    let mut endpoint = url("endpoint", raw.endpoint, e);
    let mut base_url = url("base_url", raw.base_url, e);
    let embedded = match kind {
        UpstreamKind::Simulator => endpoint.is_none(),
        UpstreamKind::OpenAi => base_url.as_deref() == Some(EMBEDDED),
        UpstreamKind::SageMaker => endpoint.as_deref() == Some(EMBEDDED),
        UpstreamKind::Bedrock => false,
    };
    if embedded && kind.speaks_chat() {
        endpoint = None;
        base_url = None;
    }
    if kind == UpstreamKind::OpenAi && base_url.is_none() && !embedded {
        e.push(format!(
            "{key}.base_url: an openai upstream needs the server's base URL, e.g. \
             \"https://dashscope.aliyuncs.com/compatible-mode/v1\" or \"http://vllm:8000/v1\""
        ));
    }
    // An empty token (an unset `${VAR:-}`) means: sign with AWS credentials.
    let bearer_token = raw
        .bearer_token
        .map(|v| expand_env(&format!("{key}.bearer_token"), &v, e))
        .filter(|t| !t.is_empty());
    // An empty key (an unset `${VAR:-}`) means: a server without keys.
    let api_key = raw
        .api_key
        .map(|v| expand_env(&format!("{key}.api_key"), &v, e))
        .filter(|k| !k.is_empty());
    if let Some(k) = &api_key {
        if axum::http::HeaderValue::from_str(&format!("Bearer {k}")).is_err() {
            e.push(format!("{key}.api_key: not a valid header value"));
        }
    }
    let headers = raw
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(h, v)| {
            let field = format!("{key}.headers.{h}");
            let v = expand_env(&field, &v, e);
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                e.push(format!("{field}: `{h}` is not a header name"));
            } else if axum::http::HeaderValue::from_str(&v).is_err() {
                e.push(format!("{field}: not a valid header value"));
            }
            (h.to_ascii_lowercase(), v)
        })
        .collect();
    let hourly = match (raw.usd_per_hour, raw.concurrency) {
        (None, None) => None,
        (None, Some(_)) => {
            e.push(format!(
                "{key}.concurrency: only means something with usd_per_hour"
            ));
            None
        }
        (Some(usd), concurrency) => {
            if !(usd.is_finite() && usd >= 0.0) {
                e.push(format!("{key}.usd_per_hour: must be a price of 0 or more"));
            }
            if concurrency == Some(0) {
                e.push(format!("{key}.concurrency: must be 1 or more"));
            }
            Some(HourlyCost {
                usd_per_hour: usd,
                concurrency: concurrency.unwrap_or(1).max(1),
            })
        }
    };
    let timeout = |field: &str, v: Option<String>, default: Duration, e: &mut Vec<String>| {
        duration_or(&format!("{key}.{field}"), v, default, e)
    };
    let dt = d.timeouts;
    let timeouts = Timeouts {
        connect: timeout("connect_timeout", raw.connect_timeout, dt.connect, e),
        first_byte: timeout(
            "first_byte_timeout",
            raw.first_byte_timeout,
            dt.first_byte,
            e,
        ),
        idle: timeout("idle_timeout", raw.idle_timeout, dt.idle, e),
        total: timeout("total_timeout", raw.total_timeout, dt.total, e),
    };
    let dc = d.connections;
    if raw.http2_connections == Some(0) {
        e.push(format!("{key}.http2_connections: must be 1 or more"));
    }
    let connections = UpstreamConnections {
        http: raw
            .http
            .as_deref()
            .and_then(|v| choose(&format!("{key}.http"), v, HttpProtocol::NAMES, e))
            .unwrap_or(dc.http),
        http2_connections: raw.http2_connections.unwrap_or(dc.http2_connections).max(1),
        // "0s" turns pings off.
        http2_keep_alive_interval: match raw.h2_keep_alive_interval {
            Some(v) => Some(timeout(
                "h2_keep_alive_interval",
                Some(v),
                Duration::ZERO,
                e,
            ))
            .filter(|d| !d.is_zero()),
            None => dc.http2_keep_alive_interval,
        },
        http2_keep_alive_timeout: timeout(
            "h2_keep_alive_timeout",
            raw.h2_keep_alive_timeout,
            dc.http2_keep_alive_timeout,
            e,
        ),
        pool_idle_timeout: timeout(
            "pool_idle_timeout",
            raw.pool_idle_timeout,
            dc.pool_idle_timeout,
            e,
        ),
        pool_max_idle_per_host: raw
            .pool_max_idle_per_host
            .unwrap_or(dc.pool_max_idle_per_host),
    };
    UpstreamConfig {
        name,
        kind,
        region: raw.region.unwrap_or(d.region),
        endpoint: endpoint.or(d.endpoint),
        base_url: base_url.or(d.base_url),
        embedded,
        profile: raw.profile.or(d.profile),
        bearer_token: bearer_token.or(d.bearer_token),
        api_key: api_key.or(d.api_key),
        headers,
        include_usage: raw.include_usage.unwrap_or(d.include_usage),
        hourly,
        timeouts,
        connections,
    }
}

/// Keys that mean nothing for `kind` are errors, so a key written for another
/// kind (an `api_key` on SageMaker, an `endpoint` where `base_url` is meant)
/// does not pass unnoticed.
fn refuse_foreign_keys(key: &str, kind: UpstreamKind, raw: &RawUpstream, e: &mut Vec<String>) {
    let chat = kind.speaks_chat();
    let present = [
        (
            "endpoint",
            raw.endpoint.is_some(),
            kind != UpstreamKind::OpenAi,
            "base_url",
        ),
        (
            "base_url",
            raw.base_url.is_some(),
            kind == UpstreamKind::OpenAi,
            "endpoint",
        ),
        (
            "region",
            raw.region.is_some(),
            kind != UpstreamKind::OpenAi,
            "",
        ),
        (
            "profile",
            raw.profile.is_some(),
            kind != UpstreamKind::OpenAi,
            "api_key",
        ),
        ("bearer_token", raw.bearer_token.is_some(), !chat, "api_key"),
        (
            "api_key",
            raw.api_key.is_some(),
            kind == UpstreamKind::OpenAi,
            "",
        ),
        ("headers", raw.headers.is_some(), chat, ""),
        ("include_usage", raw.include_usage.is_some(), chat, ""),
        ("usd_per_hour", raw.usd_per_hour.is_some(), chat, ""),
        ("concurrency", raw.concurrency.is_some(), chat, ""),
    ];
    for (field, given, allowed, instead) in present {
        if given && !allowed {
            let hint = if instead.is_empty() {
                String::new()
            } else {
                format!(" (did you mean `{instead}`?)")
            };
            e.push(format!(
                "{key}.{field}: not a key of a `{kind}` upstream{hint}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, UpstreamKind};

    fn with(upstreams: &str, route_extra: &str) -> Result<Config, Vec<String>> {
        Config::parse(&format!(
            r#"
[server]
auth = "none"
{upstreams}
[[routes]]
name = "r"
aliases = ["r"]
upstream = "u"
upstream_model = "m"
{route_extra}
"#
        ))
        .map_err(|e| e.0)
    }

    #[test]
    fn openai_and_sagemaker_upstreams_read_their_keys() {
        let c = with(
            r#"
[upstreams.u]
kind = "openai"
base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1/"
api_key = "sk-1"
headers = { "X-DashScope-SSE" = "enable" }
include_usage = false
usd_per_hour = 1.5
concurrency = 8
[upstreams.sm]
kind = "sagemaker"
region = "cn-northwest-1"
"#,
            "",
        )
        .unwrap();
        let u = &c.upstreams["u"];
        assert_eq!(u.kind, UpstreamKind::OpenAi);
        assert_eq!(
            u.endpoint_url().as_deref(),
            Some("https://dashscope.aliyuncs.com/compatible-mode/v1")
        );
        assert_eq!(u.api_key.as_deref(), Some("sk-1"));
        assert_eq!(
            u.headers,
            [("x-dashscope-sse".to_owned(), "enable".to_owned())]
        );
        assert!(!u.include_usage);
        let h = u.hourly.unwrap();
        assert_eq!((h.usd_per_hour, h.concurrency), (1.5, 8));
        let sm = &c.upstreams["sm"];
        assert_eq!(
            sm.endpoint_url().as_deref(),
            Some("https://runtime.sagemaker.cn-northwest-1.amazonaws.com.cn")
        );
        assert!(sm.include_usage && sm.hourly.is_none());
        assert!(!c.needs_embedded_simulator());
    }

    #[test]
    fn connection_keys_choose_the_protocol_and_pool() {
        use crate::config::HttpProtocol;
        use std::time::Duration;
        let c = with(
            r#"
[upstreams.u]
kind = "simulator"
endpoint = "http://127.0.0.1:9"
http = "http2"
http2_connections = 4
h2_keep_alive_interval = "0s"
h2_keep_alive_timeout = "5s"
pool_idle_timeout = "20s"
pool_max_idle_per_host = 8
[upstreams.d]
kind = "bedrock"
"#,
            "",
        )
        .unwrap();
        let u = c.upstreams["u"].connections;
        assert_eq!(u.http, HttpProtocol::Http2);
        assert_eq!(u.spread(), 4);
        assert_eq!(u.http2_keep_alive_interval, None, "0s: no pings");
        assert_eq!(u.http2_keep_alive_timeout, Duration::from_secs(5));
        let options = u.client_options(Duration::from_secs(1));
        assert_eq!(options.pool_idle_timeout, Duration::from_secs(20));
        assert_eq!(options.pool_max_idle_per_host, 8);
        assert_eq!(options.version, bedrock_wire::client::HttpVersion::Http2);
        let d = c.upstreams["d"].connections;
        assert_eq!(d.http, HttpProtocol::Auto);
        assert_eq!(d.http2_keep_alive_interval, Some(Duration::from_secs(30)));

        let e = with(
            "[upstreams.u]\nkind = \"simulator\"\nhttp = \"h3\"\nhttp2_connections = 0\n",
            "",
        )
        .unwrap_err();
        assert!(
            e.iter().any(|m| m.starts_with("upstreams.u.http: ")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m == "upstreams.u.http2_connections: must be 1 or more"),
            "{e:?}"
        );
    }

    #[test]
    fn embedded_means_the_demo_simulator() {
        let c = with(
            "[upstreams.u]\nkind = \"openai\"\nbase_url = \"embedded\"\n[upstreams.sm]\nkind = \"sagemaker\"\nendpoint = \"embedded\"\n",
            "",
        )
        .unwrap();
        assert!(c.upstreams["u"].embedded && c.upstreams["sm"].embedded);
        assert_eq!(c.upstreams["u"].endpoint_url(), None);
        assert_eq!(c.upstreams["sm"].endpoint_url(), None);
        assert!(c.needs_embedded_simulator());
    }

    #[test]
    fn keys_of_another_kind_are_refused_by_name() {
        let e = with(
            "[upstreams.u]\nkind = \"openai\"\nendpoint = \"http://x\"\nprofile = \"p\"\n",
            "",
        )
        .unwrap_err();
        assert!(e.iter().any(|m| m.starts_with(
            "upstreams.u.endpoint: not a key of a `openai` upstream (did you mean `base_url`?)"
        )));
        assert!(e.iter().any(|m| m.starts_with("upstreams.u.profile:")));
        assert!(
            e.iter()
                .any(|m| m.starts_with("upstreams.u.base_url: an openai upstream needs")),
            "{e:?}"
        );
        let e = with(
            "[upstreams.u]\nkind = \"sagemaker\"\napi_key = \"k\"\n[upstreams.b]\nkind = \"bedrock\"\nusd_per_hour = 1.0\n",
            "",
        )
        .unwrap_err();
        assert!(
            e.iter().any(|m| m.starts_with("upstreams.u.api_key:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("upstreams.b.usd_per_hour:")),
            "{e:?}"
        );
        let e = with(
            "[upstreams.u]\nkind = \"openai\"\nbase_url = \"embedded-ish\"\nusd_per_hour = -1.0\nconcurrency = 0\nheaders = { \"bad header\" = \"x\" }\n",
            "",
        )
        .unwrap_err();
        for key in [
            "base_url",
            "usd_per_hour",
            "concurrency",
            "headers.bad header",
        ] {
            assert!(
                e.iter()
                    .any(|m| m.starts_with(&format!("upstreams.u.{key}:"))),
                "{key}: {e:?}"
            );
        }
    }
}
