//! `[upstreams.NAME]`: the Bedrock endpoints (or simulators) requests go to,
//! how each is authenticated, and its deadlines.

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
    }
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

/// One upstream Bedrock endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    pub region: String,
    /// `https://bedrock-runtime.{region}.amazonaws.com` unless overridden.
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub bearer_token: Option<String>,
    pub timeouts: Timeouts,
}

/// An unnamed upstream with every key at its default (the name is the table's).
impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            kind: UpstreamKind::default(),
            region: "us-east-2".into(),
            endpoint: None,
            profile: None,
            bearer_token: None,
            timeouts: Timeouts::default(),
        }
    }
}

impl UpstreamConfig {
    /// The endpoint to call; `None` for the embedded simulator.
    pub fn endpoint_url(&self) -> Option<String> {
        match (&self.endpoint, self.kind) {
            (Some(e), _) => Some(e.trim_end_matches('/').to_owned()),
            (None, UpstreamKind::Bedrock) => {
                Some(bedrock_wire::client::bedrock_runtime_endpoint(&self.region))
            }
            (None, UpstreamKind::Simulator) => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    kind: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    profile: Option<String>,
    bearer_token: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    total_timeout: Option<String>,
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
        .and_then(|v| choose(&format!("{key}.kind"), &v, UpstreamKind::NAMES, e))
        .unwrap_or(d.kind);
    let endpoint = raw
        .endpoint
        .map(|v| expand_env(&format!("{key}.endpoint"), &v, e));
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            e.push(format!(
                "{key}.endpoint: `{ep}` must start with http:// or https://"
            ));
        }
    }
    // An empty token (an unset `${VAR:-}`) means: sign with AWS credentials.
    let bearer_token = raw
        .bearer_token
        .map(|v| expand_env(&format!("{key}.bearer_token"), &v, e))
        .filter(|t| !t.is_empty());
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
    UpstreamConfig {
        name,
        kind,
        region: raw.region.unwrap_or(d.region),
        endpoint: endpoint.or(d.endpoint),
        profile: raw.profile.or(d.profile),
        bearer_token: bearer_token.or(d.bearer_token),
        timeouts,
    }
}
