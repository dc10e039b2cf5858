//! Service tiers and prompt routers end to end, driven by the Rust AWS SDK
//! against the simulator: a flex route falling back to default when flex is
//! throttled, the `x-proxy-service-tier` request header, catalog checks that
//! keep a doomed tier from being sent, prices at the tier served, and a prompt
//! router's chosen model in the headers, the metrics and the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::error::{BoxError, ProvideErrorMetadata};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    InferenceConfiguration, PerformanceConfigLatency, PerformanceConfiguration, ServiceTier,
    ServiceTierType,
};
use bedrock_sim::testing::{sdk_client, user_text};
use bedrock_sim::{FaultKind, FaultRule, SimConfig};
use common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const NOVA_PRO: &str = "us.amazon.nova-pro-v1:0";
const ROUTER: &str =
    "arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/anthropic.claude:1";

fn routes() -> String {
    format!(
        r#"
[[routes]]
name = "background"
aliases = ["background"]
upstream = "sim"
upstream_model = "{NOVA_PRO}"
service_tier = "flex"
fallback = [{{ service_tier = "default" }}]
cache = {{ mode = "deterministic" }}

[[routes]]
name = "nova-pro"
aliases = ["nova-pro"]
models = ["{NOVA_PRO}"]
upstream = "sim"

[[routes]]
name = "pinned-default"
aliases = ["pinned-default"]
upstream = "sim"
upstream_model = "{NOVA_PRO}"
service_tier = "default"

[[routes]]
name = "haiku-flex"
aliases = ["haiku-flex"]
upstream = "sim"
upstream_model = "{HAIKU}"
service_tier = "flex"

[[routes]]
name = "fast-flex"
aliases = ["fast-flex"]
upstream = "sim"
upstream_model = "{NOVA_PRO}"
latency = "optimized"
service_tier = "flex"
fallback = [{{ service_tier = "default" }}]

[[routes]]
name = "router"
aliases = ["router"]
models = ["{ROUTER}"]
upstream = "sim"
cache = {{ mode = "deterministic" }}

[[routes]]
name = "claude-3-haiku"
aliases = ["claude-3-haiku"]
upstream = "sim"
upstream_model = "us.anthropic.claude-3-haiku-20240307-v1:0"
cache = {{ mode = "deterministic" }}
"#
    )
}

async fn stack() -> Stack {
    let sim = SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    };
    stack_with(sim, "", &routes()).await
}

/// The response headers of every call made through the client it is given to.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl Intercept for Seen {
    fn name(&self) -> &'static str {
        "Seen"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context
            .response()
            .headers()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        self.0.lock().unwrap().push(headers);
        Ok(())
    }
}

impl Seen {
    fn last(&self, name: &str) -> Option<String> {
        self.0.lock().unwrap().last()?.get(name).cloned()
    }
}

/// The service tier each request the simulator received asked for (`-`: none).
fn service_tiers_sent(s: &Stack) -> Vec<String> {
    s.upstream_requests()
        .iter()
        .map(|r| {
            r.body["serviceTier"]["type"]
                .as_str()
                .or_else(|| {
                    r.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("x-amzn-bedrock-service-tier"))
                        .map(|(_, v)| v.as_str())
                })
                .unwrap_or("-")
                .to_owned()
        })
        .collect()
}

fn flex_fault(times: u32) -> FaultRule {
    FaultRule {
        service_tier: Some("flex".into()),
        times: Some(times),
        ..FaultRule::new(FaultKind::Throttle)
    }
}

#[tokio::test]
async fn flex_throttled_is_served_by_default_and_says_so() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    s.sim.sim.state().faults.add(flex_fault(1));

    let out = client
        .converse()
        .model_id("background")
        .messages(user_text("Summarise last night's batch"))
        .customize()
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.service_tier().map(|t| t.r#type()),
        Some(&ServiceTierType::Default),
        "Bedrock says default served it"
    );
    assert_eq!(
        seen.last("x-proxy-service-tier").as_deref(),
        Some("default")
    );
    assert_eq!(seen.last("x-proxy-attempts").as_deref(), Some("2"));
    assert_eq!(service_tiers_sent(&s), ["flex", "default"]);

    let calm = client
        .converse()
        .model_id("background")
        .messages(user_text("And tonight's"))
        .customize()
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        calm.service_tier().map(|t| t.r#type()),
        Some(&ServiceTierType::Flex)
    );
    assert_eq!(seen.last("x-proxy-service-tier").as_deref(), Some("flex"));
    assert_eq!(seen.last("x-proxy-attempts").as_deref(), Some("1"));

    let m = s.metrics().await;
    let served = |tier: &str| {
        metric(
            &m,
            "bedrock_proxy_service_tier_served_total",
            &[
                "route=\"background\"",
                &format!("served=\"{tier}\""),
                "requested=\"flex\"",
            ],
        )
    };
    assert_eq!(served("default"), 1.0, "{m}");
    assert_eq!(served("flex"), 1.0, "{m}");

    // Each answer is priced at the tier that served it: the default one at
    // Nova Pro's on-demand price, the flex one at its flex price.
    let usage = |o: &aws_sdk_bedrockruntime::operation::converse::ConverseOutput| {
        let u = o.usage().unwrap();
        (u.input_tokens() as f64, u.output_tokens() as f64)
    };
    let ((i1, o1), (i2, o2)) = (usage(&out), usage(&calm));
    let expected = (i1 * 0.80 + o1 * 3.20 + i2 * 0.40 + o2 * 1.60) / 1e6;
    let cost = metric(&m, "bedrock_proxy_cost_usd", &["route=\"background\""]);
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost}, expected {expected}"
    );

    // Flex being throttled did not take the model's default tier out of rotation.
    s.sim.sim.state().faults.add(flex_fault(20));
    for n in 0..6 {
        let r = client
            .converse()
            .model_id("background")
            .messages(user_text(&format!("Batch {n}")))
            .customize()
            .interceptor(seen.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.service_tier().map(|t| t.r#type()),
            Some(&ServiceTierType::Default)
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_replayed_stream_reports_the_tier_that_served_it() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    for expected_cache in ["miss", "hit"] {
        let out = client
            .converse_stream()
            .model_id("background")
            .messages(user_text("Stream the nightly report"))
            .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
            .customize()
            .interceptor(seen.clone())
            .send()
            .await
            .unwrap();
        let mut stream = out.stream;
        let mut served = None;
        while let Some(event) = stream.recv().await.unwrap() {
            if let aws_sdk_bedrockruntime::types::ConverseStreamOutput::Metadata(m) = event {
                served = m.service_tier().map(|t| t.r#type().clone());
            }
        }
        assert_eq!(served, Some(ServiceTierType::Flex), "{expected_cache}");
        assert_eq!(seen.last("x-cache").as_deref(), Some(expected_cache));
        assert_eq!(
            seen.last("x-proxy-service-tier").as_deref(),
            Some("flex"),
            "{expected_cache}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_request_header_marks_one_call_where_the_route_allows_it() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    let marked = |tier: &'static str| {
        move |req: &mut aws_sdk_bedrockruntime::config::http::HttpRequest| {
            req.headers_mut().insert("x-proxy-service-tier", tier);
        }
    };

    let out = client
        .converse()
        .model_id("nova-pro")
        .messages(user_text("Background work"))
        .customize()
        .mutate_request(marked("flex"))
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.service_tier().map(|t| t.r#type()),
        Some(&ServiceTierType::Flex)
    );
    assert_eq!(seen.last("x-proxy-service-tier").as_deref(), Some("flex"));

    // InvokeModel carries the tier in Bedrock's header; Claude 3.5 Haiku
    // offers no priority, so the catalog turns the ask into default.
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Background work"}]
    });
    let invoked = client
        .invoke_model()
        .model_id("haiku")
        .body(Blob::new(body.to_string()))
        .customize()
        .mutate_request(marked("priority"))
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        invoked.service_tier(),
        Some(&ServiceTierType::Default),
        "InvokeModel's answer names the tier in its header"
    );
    assert_eq!(
        seen.last("x-proxy-service-tier").as_deref(),
        Some("default")
    );

    // A route with a fixed tier decides; the header does not override it.
    let pinned = client
        .converse()
        .model_id("pinned-default")
        .messages(user_text("Background work"))
        .customize()
        .mutate_request(marked("flex"))
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        pinned.service_tier().map(|t| t.r#type()),
        Some(&ServiceTierType::Default)
    );
    assert_eq!(service_tiers_sent(&s), ["flex", "default", "default"]);
    let sent = s.upstream_requests();
    assert!(
        sent.iter().all(|r| !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-proxy-service-tier"))),
        "the proxy's own header stays with the proxy"
    );

    // A value that is no tier is the caller's mistake.
    let refused = client
        .converse()
        .model_id("nova-pro")
        .messages(user_text("Background work"))
        .customize()
        .mutate_request(marked("cheap"))
        .send()
        .await
        .unwrap_err();
    let refused = refused.into_service_error();
    assert!(refused.is_validation_exception(), "{refused:?}");
    assert!(refused.message().unwrap().contains("cheap"));
    assert_eq!(
        s.upstream_requests().len(),
        3,
        "refused before any upstream call"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_tier_the_catalog_does_not_offer_is_never_sent() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    // The route wants flex; Claude 3.5 Haiku offers none: default is sent, once.
    let out = client
        .converse()
        .model_id("haiku-flex")
        .messages(user_text("hi"))
        .customize()
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.service_tier().map(|t| t.r#type()),
        Some(&ServiceTierType::Default)
    );
    assert_eq!(
        seen.last("x-proxy-service-tier").as_deref(),
        Some("default")
    );
    assert_eq!(seen.last("x-proxy-attempts").as_deref(), Some("1"));
    // A client asking flex in its body on a `client` route: the same.
    client
        .converse()
        .model_id("haiku")
        .messages(user_text("hi"))
        .service_tier(
            ServiceTier::builder()
                .r#type(ServiceTierType::Flex)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(service_tiers_sent(&s), ["default", "default"]);
    let m = s.metrics().await;
    for route in ["haiku-flex", "haiku"] {
        assert_eq!(
            metric(
                &m,
                "bedrock_proxy_service_tier_downgrades_total",
                &[&format!("route=\"{route}\""), "reason=\"not_offered\""]
            ),
            1.0,
            "{m}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn flex_goes_with_the_standard_latency_tier() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    s.sim.sim.state().faults.add(flex_fault(1));
    client
        .converse()
        .model_id("fast-flex")
        .messages(user_text("hi"))
        .performance_config(
            PerformanceConfiguration::builder()
                .latency(PerformanceConfigLatency::Optimized)
                .build(),
        )
        .customize()
        .interceptor(seen.clone())
        .send()
        .await
        .unwrap();
    let sent: Vec<(String, String)> = s
        .upstream_requests()
        .iter()
        .map(|r| {
            (
                r.body["serviceTier"]["type"].as_str().unwrap_or("-").into(),
                r.body["performanceConfig"]["latency"]
                    .as_str()
                    .unwrap_or("-")
                    .into(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("flex".to_owned(), "standard".to_owned()),
            ("default".to_owned(), "optimized".to_owned())
        ],
        "flex is sent with standard latency; the default fallback gets optimized back"
    );
    assert_eq!(
        seen.last("x-proxy-latency-tier").as_deref(),
        Some("optimized")
    );
    assert_eq!(
        seen.last("x-proxy-service-tier").as_deref(),
        Some("default")
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "bedrock_proxy_latency_downgrades_total",
            &["route=\"fast-flex\"", "reason=\"service_tier_flex\""]
        ),
        1.0,
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_prompt_router_names_the_model_it_chose() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let seen = Seen::default();
    let ask = |model: &'static str, seen: Seen| {
        client
            .converse()
            .model_id(model)
            .messages(user_text("What is the capital of France?"))
            .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
            .customize()
            .interceptor(seen)
            .send()
    };

    let out = ask("router", seen.clone()).await.unwrap();
    let invoked = out
        .trace()
        .and_then(|t| t.prompt_router())
        .and_then(|r| r.invoked_model_id())
        .unwrap()
        .to_owned();
    assert!(
        invoked.ends_with("/us.anthropic.claude-3-haiku-20240307-v1:0"),
        "a short, easy prompt goes to the router's small model: {invoked}"
    );
    assert_eq!(seen.last("x-proxy-invoked-model"), Some(invoked.clone()));
    assert_eq!(seen.last("x-proxy-served-model").as_deref(), Some(ROUTER));
    assert_eq!(seen.last("x-cache").as_deref(), Some("miss"));

    // The router's ARN as the model id, from another account, finds the route.
    let other = "arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/anthropic.claude:1";
    let direct = ask(other, seen.clone()).await.unwrap();
    assert!(direct.trace().is_some());
    assert_eq!(seen.last("x-proxy-route").as_deref(), Some("router"));

    // Again: a cache hit that still names the model that answered.
    ask("router", seen.clone()).await.unwrap();
    assert_eq!(seen.last("x-cache").as_deref(), Some("hit"));
    assert_eq!(seen.last("x-proxy-invoked-model"), Some(invoked.clone()));

    // The same request to the model the router chose is not the router's entry.
    ask("claude-3-haiku", seen.clone()).await.unwrap();
    assert_eq!(seen.last("x-cache").as_deref(), Some("miss"));
    assert_eq!(seen.last("x-proxy-invoked-model"), None);

    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "bedrock_proxy_prompt_router_invoked_total",
            &[
                "route=\"router\"",
                "model=\"anthropic.claude-3-haiku-20240307-v1:0\""
            ]
        ),
        2.0,
        "{m}"
    );
    let usage = out.usage().unwrap();
    let expected =
        2.0 * (usage.input_tokens() as f64 * 0.25 + usage.output_tokens() as f64 * 1.25) / 1e6;
    let cost = metric(&m, "bedrock_proxy_cost_usd", &["route=\"router\""]);
    assert!(
        (cost - expected).abs() < 1e-9,
        "priced as Claude 3 Haiku: {cost}, expected {expected}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_unknown_prompt_router_gets_bedrocks_error() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let e = client
        .converse()
        .model_id("arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/meta.llama:1")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_validation_exception(), "{e:?}");
    s.shutdown().await;
}
