//! CloudWatch Embedded Metric Format: with `[logging] cloudwatch_emf = true`,
//! one JSON line per request on stdout, which CloudWatch Logs turns into
//! metrics with no agent or API call of the proxy's own (Lambda, ECS with the
//! `awslogs` driver, EC2 with the CloudWatch agent reading the output).
//!
//! Each line carries the request's metrics under the dimension sets
//! `[Route, Tier]` and `[Route]`, and searchable properties (request id,
//! operation, status, cache outcome, trace id) that are not dimensions, so
//! they cost nothing as metrics. Like the Prometheus metrics, it is built from
//! plain values; a background thread writes the lines, so a request never
//! waits on stdout.

use bedrock_wire::converse::Usage;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

/// Where the lines go, set once at start when EMF is on.
struct Sink {
    namespace: String,
    writer: NonBlocking,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts writing EMF lines to stdout under `namespace`; keep the guard alive
/// (dropping it flushes what is queued).
pub fn install(namespace: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let _ = SINK.set(Sink {
        namespace: namespace.to_owned(),
        writer,
    });
    guard
}

/// Whether EMF lines are written.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// One request, as its EMF line reports it.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// Dimensions: the route (or `unrouted`) and the latency tier that served
    /// it (else the one asked for, else `standard`).
    pub route: &'a str,
    pub tier: &'static str,
    pub operation: &'static str,
    pub status: u16,
    /// `hit`, `miss` or `bypass`.
    pub cache: &'static str,
    pub request_id: &'a str,
    pub tenant: Option<&'a str>,
    pub attempts: u32,
    pub target: Option<&'a str>,
    pub trace_id: Option<String>,
    pub duration: Duration,
    /// Upstream answers only, as `bedrock_proxy_ttft_seconds`.
    pub ttft: Option<Duration>,
    pub output_tokens_per_second: Option<f64>,
    pub usage: Option<&'a Usage>,
    /// What Bedrock billed (upstream answers), at catalog prices.
    pub cost_usd: Option<f64>,
    /// What a cache hit did not spend, at catalog prices.
    pub saved_usd: Option<f64>,
}

/// Writes `request`'s line, if EMF is on.
pub fn request(request: &Request<'_>) {
    let Some(sink) = SINK.get() else { return };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut line = render(&sink.namespace, now, request).to_string();
    line.push('\n');
    // The writer queues the line for its thread; a full queue drops it
    // rather than block the request.
    let _ = sink.writer.clone().write_all(line.as_bytes());
}

/// The EMF document of one request at `timestamp_ms`.
pub fn render(namespace: &str, timestamp_ms: u64, r: &Request<'_>) -> Value {
    let mut root = Map::new();
    let mut metrics = Vec::new();
    let mut metric = |name: &'static str, unit: &'static str, value: f64| {
        metrics.push(json!({ "Name": name, "Unit": unit }));
        root.insert(name.to_owned(), json!(value));
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    metric("Requests", "Count", 1.0);
    metric(
        "ServerErrors",
        "Count",
        if r.status >= 500 { 1.0 } else { 0.0 },
    );
    metric(
        "ClientErrors",
        "Count",
        if (400..500).contains(&r.status) {
            1.0
        } else {
            0.0
        },
    );
    metric("Latency", "Milliseconds", ms(r.duration));
    if let Some(ttft) = r.ttft {
        metric("TTFT", "Milliseconds", ms(ttft));
    }
    if let Some(tps) = r.output_tokens_per_second {
        metric("OutputTokensPerSecond", "Count/Second", tps);
    }
    if r.cache != "bypass" {
        metric(
            "CacheHit",
            "Count",
            if r.cache == "hit" { 1.0 } else { 0.0 },
        );
    }
    if let Some(u) = r.usage {
        metric("InputTokens", "Count", u.input_tokens as f64);
        metric("OutputTokens", "Count", u.output_tokens as f64);
        metric(
            "CacheReadInputTokens",
            "Count",
            u.cache_read_input_tokens as f64,
        );
        metric(
            "CacheWriteInputTokens",
            "Count",
            u.cache_write_input_tokens as f64,
        );
    }
    if let Some(usd) = r.cost_usd {
        metric("CostUSD", "None", usd);
    }
    if let Some(usd) = r.saved_usd {
        metric("CacheSavedUSD", "None", usd);
    }
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Route", "Tier"], ["Route"]],
                "Metrics": metrics,
            }],
        }),
    );
    root.insert("Route".into(), r.route.into());
    root.insert("Tier".into(), r.tier.into());
    root.insert("RequestId".into(), r.request_id.into());
    root.insert("Operation".into(), r.operation.into());
    root.insert("Status".into(), r.status.into());
    root.insert("Cache".into(), r.cache.into());
    root.insert("Attempts".into(), r.attempts.into());
    if let Some(tenant) = r.tenant {
        root.insert("Tenant".into(), tenant.into());
    }
    if let Some(target) = r.target {
        root.insert("Target".into(), target.into());
    }
    if let Some(id) = &r.trace_id {
        root.insert("TraceId".into(), id.as_str().into());
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(doc: &Value) -> Vec<String> {
        doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_upstream_answer_carries_ttft_speed_tokens_and_cost_under_route_and_tier() {
        let usage = Usage {
            input_tokens: 120,
            output_tokens: 40,
            total_tokens: 160,
            cache_read_input_tokens: 1000,
            cache_write_input_tokens: 0,
            cache_write_1h_input_tokens: 0,
        };
        let doc = render(
            "BedrockProxy",
            1_700_000_000_123,
            &Request {
                route: "haiku",
                tier: "optimized",
                operation: "converse",
                status: 200,
                cache: "miss",
                request_id: "req-1",
                attempts: 2,
                target: Some("fallback1"),
                trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
                duration: Duration::from_millis(900),
                ttft: Some(Duration::from_millis(250)),
                output_tokens_per_second: Some(57.5),
                usage: Some(&usage),
                cost_usd: Some(0.0012),
                ..Request::default()
            },
        );
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_123u64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "BedrockProxy");
        assert_eq!(
            directive["Dimensions"],
            json!([["Route", "Tier"], ["Route"]])
        );
        assert_eq!(
            (doc["Route"].as_str(), doc["Tier"].as_str()),
            (Some("haiku"), Some("optimized"))
        );
        // Every metric named in the directive is a number at the top level.
        for name in names(&doc) {
            assert!(doc[&name].is_number(), "{name} has no value");
        }
        assert_eq!(doc["TTFT"], 250.0);
        assert_eq!(doc["OutputTokensPerSecond"], 57.5);
        assert_eq!(doc["CacheHit"], 0.0);
        assert_eq!(doc["CacheReadInputTokens"], 1000.0);
        assert_eq!(doc["CostUSD"], 0.0012);
        assert_eq!(doc["ServerErrors"], 0.0);
        assert_eq!(doc["Target"], "fallback1");
        assert_eq!(doc["TraceId"], "0af7651916cd43dd8448eb211c80319c");
        assert!(doc.get("CacheSavedUSD").is_none());
    }

    #[test]
    fn a_hit_counts_as_a_hit_and_an_error_has_no_token_metrics() {
        let hit = render(
            "Acme/LLM",
            1,
            &Request {
                route: "haiku",
                tier: "standard",
                status: 200,
                cache: "hit",
                saved_usd: Some(0.5),
                ..Request::default()
            },
        );
        assert_eq!(hit["CacheHit"], 1.0);
        assert_eq!(hit["CacheSavedUSD"], 0.5);
        assert!(!names(&hit).contains(&"TTFT".to_owned()));

        let failed = render(
            "BedrockProxy",
            1,
            &Request {
                route: "unrouted",
                tier: "standard",
                status: 503,
                cache: "bypass",
                ..Request::default()
            },
        );
        assert_eq!(failed["ServerErrors"], 1.0);
        assert_eq!(failed["ClientErrors"], 0.0);
        let listed = names(&failed);
        assert!(
            !listed.contains(&"CacheHit".to_owned()),
            "a bypass is no cache lookup"
        );
        assert!(!listed.contains(&"InputTokens".to_owned()));
    }
}
