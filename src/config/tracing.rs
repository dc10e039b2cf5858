//! `[tracing]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf): whether
//! they are on, where they go, and whether prompts and completions may be put
//! in spans. Keys left out fall back to the standard `OTEL_*` environment
//! variables, read when the exporter starts (`telemetry::install`), not here.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::values::{expand_env, optional_duration};

/// OpenTelemetry trace export.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TracingConfig {
    /// `Some(true)`: export; `Some(false)`: never; `None`: export when an
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variable is set.
    pub enabled: Option<bool>,
    /// The collector's base URL (`/v1/traces` is appended), like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Headers sent with every export (an API key), like `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the spans, like `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// Share of new traces kept (a client's sampled `traceparent` is always followed).
    pub sample_ratio: Option<f64>,
    /// Longest wait for the collector per export, like `OTEL_EXPORTER_OTLP_TIMEOUT`.
    pub timeout: Option<Duration>,
    /// Prompts and completions as span attributes (off: they are customer data).
    pub capture_content: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    enabled: Option<bool>,
    endpoint: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    timeout: Option<String>,
    capture_content: Option<bool>,
}

pub(super) fn validate(raw: RawTracing, e: &mut Vec<String>) -> TracingConfig {
    let d = TracingConfig::default();
    let endpoint = raw.endpoint.map(|v| {
        let url = expand_env("tracing.endpoint", &v, e);
        let valid = url
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !valid {
            e.push(format!(
                "tracing.endpoint: `{url}` is not an http:// or https:// URL like http://collector:4318"
            ));
        }
        url
    });
    let mut headers = BTreeMap::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        let key = format!("tracing.headers.{name}");
        let value = expand_env(&key, &value, e);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.push(format!("{key}: not a valid HTTP header name"));
        } else if http::HeaderValue::from_str(&value).is_err() {
            e.push(format!("{key}: not a valid HTTP header value"));
        }
        headers.insert(name, value);
    }
    let service_name = raw.service_name.filter(|name| {
        let ok = !name.trim().is_empty();
        if !ok {
            e.push("tracing.service_name: must not be empty".into());
        }
        ok
    });
    let sample_ratio = raw.sample_ratio.filter(|r| {
        let ok = (0.0..=1.0).contains(r);
        if !ok {
            e.push(format!(
                "tracing.sample_ratio: {r} is not between 0 and 1 (1 keeps every trace)"
            ));
        }
        ok
    });
    let timeout = optional_duration("tracing.timeout", raw.timeout, e).filter(|t| {
        let ok = !t.is_zero();
        if !ok {
            e.push("tracing.timeout: must be more than zero".into());
        }
        ok
    });
    TracingConfig {
        enabled: raw.enabled.or(d.enabled),
        endpoint,
        headers,
        service_name,
        sample_ratio,
        timeout,
        capture_content: raw.capture_content.unwrap_or(d.capture_content),
    }
}
