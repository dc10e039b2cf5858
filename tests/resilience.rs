//! Latency-optimized inference, fallback chains, retries, circuit breakers,
//! hedging and live config reload, driven by the simulator's scripted faults.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::types::{
    ConverseStreamOutput, PerformanceConfigLatency, PerformanceConfiguration,
};
use bedrock_proxy::server::{start, StartOptions};
use bedrock_proxy::Config;
use bedrock_sim::testing::{raw, sdk_client, user_text, RawResponse};
use bedrock_sim::{FaultKind, FaultRule, SimConfig};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const OPTIMIZED_WITH_FALLBACK: &str =
    "latency = \"optimized\"\nfallback = [{ latency = \"standard\" }]\nupstream_model = \"us.anthropic.claude-3-5-haiku-20241022-v1:0\"";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

fn on_optimized(kind: FaultKind, times: Option<u32>) -> FaultRule {
    FaultRule {
        latency: Some("optimized".into()),
        times,
        ..FaultRule::new(kind)
    }
}

/// The tier each request the simulator received asked for.
fn tiers_sent(s: &Stack) -> Vec<String> {
    s.upstream_requests()
        .iter()
        .map(|r| {
            r.body["performanceConfig"]["latency"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect()
}

async fn converse(s: &Stack, text: &str) -> RawResponse {
    post_b(
        &s.op_url("haiku", "converse"),
        converse_body(text).to_string(),
    )
    .await
}

#[tokio::test]
async fn throttled_optimized_is_served_standard() {
    let s = stack_full(fast(), "", OPTIMIZED_WITH_FALLBACK, "").await;
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Throttle, Some(1)));
    let r = converse(&s, "hi").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proxy-latency-tier"), Some("standard"));
    assert_eq!(r.header("x-proxy-attempts"), Some("2"));
    assert_eq!(
        r.json()["performanceConfig"]["latency"],
        "standard",
        "Bedrock says standard served it"
    );
    assert_eq!(tiers_sent(&s), ["optimized", "standard"]);

    let healthy = converse(&s, "again").await;
    assert_eq!(healthy.header("x-proxy-latency-tier"), Some("optimized"));
    assert_eq!(healthy.header("x-proxy-attempts"), Some("1"));
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_fallbacks_total",
            &[
                "route=\"haiku\"",
                "from=\"primary\"",
                "to=\"fallback1\"",
                "reason=\"throttled\""
            ]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_served_tier_total",
            &[
                "route=\"haiku\"",
                "tier=\"optimized\"",
                "requested=\"optimized\""
            ]
        ) >= 1.0
    );
    assert!(m.contains("bedrock_proxy_ttft_seconds_bucket{route=\"haiku\",tier=\"standard\""));
    // The fallback's answer: asked optimized, served standard, as the
    // dashboards and BedrockProxyOptimizedServedStandard compare them.
    assert!(
        metric(
            &m,
            "bedrock_proxy_served_tier_total",
            &[
                "route=\"haiku\"",
                "tier=\"standard\"",
                "requested=\"optimized\""
            ]
        ) >= 1.0,
        "{m}"
    );
    // Output speed is a histogram with buckets, not a summary.
    assert!(m.contains("bedrock_proxy_output_tokens_per_second_bucket{route=\"haiku\",tier=\"standard\",le=\"5\"}"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn optimized_where_it_cannot_work_costs_no_upstream_call() {
    let sonnet = "[[routes]]\nname = \"sonnet37\"\naliases = [\"sonnet37\"]\nupstream = \"sim\"\nupstream_model = \"us.anthropic.claude-3-7-sonnet-20250219-v1:0\"\nlatency = \"optimized\"\n";
    let s = stack_full(fast(), "", "", sonnet).await;
    let client = sdk_client(&s.url());
    let out = client
        .converse()
        .model_id("sonnet37")
        .messages(user_text("hi"))
        .send()
        .await
        .expect("served");
    assert_eq!(
        out.performance_config().unwrap().latency().as_str(),
        "standard"
    );
    assert_eq!(
        tiers_sent(&s),
        ["standard"],
        "one call, standard: no doomed optimized request"
    );

    // A client asking optimized on a base model id (not an inference profile).
    let asked = client
        .converse()
        .model_id(HAIKU_BASE)
        .messages(user_text("hi"))
        .performance_config(
            PerformanceConfiguration::builder()
                .latency(PerformanceConfigLatency::Optimized)
                .build(),
        )
        .send()
        .await
        .expect("the proxy sends standard instead of a request bound to fail");
    assert_eq!(
        asked.performance_config().unwrap().latency().as_str(),
        "standard"
    );
    assert_eq!(tiers_sent(&s), ["standard", "standard"]);
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_latency_downgrades_total",
            &["route=\"sonnet37\"", "reason=\"model_unsupported\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_latency_downgrades_total",
            &["route=\"haiku\"", "reason=\"not_inference_profile\""]
        ) >= 1.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_failure_after_the_first_byte_is_an_exception_frame_not_a_fallback() {
    let s = stack_full(fast(), "", OPTIMIZED_WITH_FALLBACK, "").await;
    s.sim.sim.state().faults.add(FaultRule {
        after_events: Some(4),
        exception: Some("throttlingException".into()),
        ..on_optimized(FaultKind::MidstreamError, Some(1))
    });
    let client = sdk_client(&s.url());
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    let err = loop {
        match out.stream.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the failure must reach the client"),
            Err(e) => break e,
        }
    };
    assert!(err.into_service_error().is_throttling_exception());
    assert_eq!(
        tiers_sent(&s),
        ["optimized"],
        "no fallback once events reached the client"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn before_the_first_event_a_stream_falls_back() {
    let s = stack_full(fast(), "", OPTIMIZED_WITH_FALLBACK, "").await;
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Unavailable, Some(1)));
    let client = sdk_client(&s.url());
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    let mut tier = None;
    while let Some(event) = out.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::Metadata(m) = event {
            tier = m
                .performance_config()
                .map(|p| p.latency().as_str().to_owned());
        }
    }
    assert_eq!(tier.as_deref(), Some("standard"));
    assert_eq!(tiers_sent(&s), ["optimized", "standard"]);
    s.shutdown().await;
}

#[tokio::test]
async fn retries_back_off_on_the_same_target() {
    let s = stack_full(fast(), "", "latency = \"optimized\"\nretries = 2\nbackoff = \"10ms\"\nupstream_model = \"us.anthropic.claude-3-5-haiku-20241022-v1:0\"", "").await;
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Throttle, Some(2)));
    let r = converse(&s, "hi").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proxy-attempts"), Some("3"));
    assert_eq!(r.header("x-proxy-latency-tier"), Some("optimized"));
    assert_eq!(tiers_sent(&s), ["optimized", "optimized", "optimized"]);
    s.shutdown().await;
}

#[tokio::test]
async fn the_clients_own_invalid_request_is_never_retried() {
    let s = stack_full(
        fast(),
        "",
        &format!("{OPTIMIZED_WITH_FALLBACK}\nretries = 3"),
        "",
    )
    .await;
    let bad = json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]});
    let r = post_b(&s.op_url("haiku", "converse"), bad.to_string()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-proxy-attempts"), Some("1"));
    assert_eq!(s.upstream_requests().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_recovers() {
    let policy = format!(
        "{OPTIMIZED_WITH_FALLBACK}\nbreaker = {{ consecutive_failures = 2, open_for = \"400ms\" }}"
    );
    let s = stack_full(fast(), "", &policy, "").await;
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Unavailable, None));
    for i in 0..2 {
        let r = converse(&s, &format!("q{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-proxy-attempts"),
            Some("2"),
            "primary tried, then the fallback"
        );
    }
    let before = s.upstream_requests().len();
    let r = converse(&s, "while open").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-proxy-attempts"),
        Some("1"),
        "the open breaker skipped the primary"
    );
    assert_eq!(&tiers_sent(&s)[before..], ["standard"]);
    let breakers = raw(
        "GET",
        &format!("{}/admin/breakers", s.proxy.admin_url()),
        &[],
        "",
    )
    .await
    .unwrap()
    .json();
    assert!(
        breakers["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["state"] == "open"),
        "{breakers}"
    );

    // The optimized tier recovers; after open_for one probe goes through and closes it.
    s.sim.sim.state().faults.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = converse(&s, "probe").await;
    assert_eq!(probe.header("x-proxy-latency-tier"), Some("optimized"));
    let after = converse(&s, "closed again").await;
    assert_eq!(after.header("x-proxy-latency-tier"), Some("optimized"));
    assert_eq!(after.header("x-proxy-attempts"), Some("1"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_hedge_beats_a_slow_first_byte() {
    let policy = format!("{OPTIMIZED_WITH_FALLBACK}\nhedge_after = \"100ms\"");
    let s = stack_full(fast(), "", &policy, "").await;
    s.sim.sim.state().faults.add(FaultRule {
        ms: Some(5000),
        ..on_optimized(FaultKind::SlowFirstByte, Some(1))
    });
    let r = converse(&s, "hurry").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-proxy-latency-tier"),
        Some("standard"),
        "the hedged standard attempt answered"
    );
    assert_eq!(r.header("x-proxy-attempts"), Some("2"));
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_hedges_total",
            &["route=\"haiku\"", "outcome=\"won\""]
        ) >= 1.0,
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_hedged_route_still_retries_and_falls_back_when_its_target_fails_fast() {
    // The hedge never fires (the throttle comes at once), so the failure is an
    // ordinary attempt: retried on its target, then the fallback serves it.
    let policy =
        format!("{OPTIMIZED_WITH_FALLBACK}\nhedge_after = \"3s\"\nretries = 1\nbackoff = \"1ms\"");
    let s = stack_full(fast(), "", &policy, "").await;
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Throttle, Some(1)));
    let r = converse(&s, "retried").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-proxy-attempts"), Some("2"), "one retry");
    assert_eq!(r.header("x-proxy-latency-tier"), Some("optimized"));

    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Throttle, Some(2)));
    let r = converse(&s, "fell back").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-proxy-attempts"),
        Some("3"),
        "two tries, then standard"
    );
    assert_eq!(r.header("x-proxy-latency-tier"), Some("standard"));
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "bedrock_proxy_hedges_total", &["route=\"haiku\""]),
        0.0,
        "no hedge fired: {m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_deadline_bounds_every_attempt_together() {
    let policy = format!("{OPTIMIZED_WITH_FALLBACK}\ndeadline = \"300ms\"\nretries = 5");
    let s = stack_full(fast(), "", &policy, "").await;
    s.sim.sim.state().faults.add(FaultRule {
        ms: Some(2000),
        ..FaultRule::new(FaultKind::SlowFirstByte)
    });
    let r = converse(&s, "late").await;
    assert_eq!(r.status, 408);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ModelTimeoutException"));
    s.shutdown().await;
}

#[tokio::test]
async fn fallback_reaches_another_region_and_another_model() {
    let west = bedrock_sim::testing::spawn(SimConfig {
        region: "us-west-2".into(),
        ..fast()
    })
    .await;
    let extra = format!(
        "[upstreams.west]\nkind = \"simulator\"\nregion = \"us-west-2\"\nendpoint = \"{}\"\n\
         [[routes]]\nname = \"resilient\"\naliases = [\"resilient\"]\nupstream = \"sim\"\n\
         upstream_model = \"us.anthropic.claude-3-5-haiku-20241022-v1:0\"\nlatency = \"optimized\"\n\
         fallback = [{{ upstream = \"west\" }}, {{ model = \"us.amazon.nova-pro-v1:0\", latency = \"standard\" }}]\n",
        west.url()
    );
    let s = stack_full(fast(), "", "", &extra).await;
    let client = sdk_client(&s.url());
    s.sim
        .sim
        .state()
        .faults
        .add(on_optimized(FaultKind::Unavailable, Some(1)));
    client
        .converse()
        .model_id("resilient")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    let west_got = west.sim.state().log.recent(10);
    assert_eq!(west_got.len(), 1, "the other region answered");
    assert_eq!(
        west_got[0].body["performanceConfig"]["latency"], "optimized",
        "optimized works in us-west-2 too"
    );

    // Haiku down in both regions: the chain ends on another model.
    s.sim.sim.state().faults.add(FaultRule {
        model: Some("haiku".into()),
        ..FaultRule::new(FaultKind::Unavailable)
    });
    west.sim
        .state()
        .faults
        .add(FaultRule::new(FaultKind::Unavailable));
    let out = client
        .converse()
        .model_id("resilient")
        .messages(user_text("hi again"))
        .send()
        .await
        .unwrap();
    assert!(out.output().is_some());
    let last = s.upstream_requests().pop().unwrap();
    assert_eq!(
        last.model_id, "us.amazon.nova-pro-v1:0",
        "the last resort is another model"
    );
    s.shutdown().await;
    west.shutdown().await;
}

/// A proxy reading its config from a file, for reload tests.
async fn proxy_from_file(
    sim_url: &str,
    dir: &tempfile::TempDir,
    haiku_extra: &str,
) -> (bedrock_proxy::server::ProxyHandle, std::path::PathBuf) {
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_with_route(sim_url, "", haiku_extra, "")).unwrap();
    let config = Config::load(&path).unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = start(
        config,
        None,
        StartOptions {
            listen: Some(loopback),
            admin_listen: Some(loopback),
            config_path: Some(path.clone()),
        },
    )
    .await
    .unwrap();
    (proxy, path)
}

async fn config_hash(admin: &str) -> String {
    raw("GET", &format!("{admin}/admin/config"), &[], "")
        .await
        .unwrap()
        .json()["hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_reload_changes_a_route_without_dropping_an_in_flight_stream() {
    let sim = bedrock_sim::testing::spawn(SimConfig {
        time_scale: 1.0,
        jitter: 0.0,
        seed: Some(7),
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = proxy_from_file(
        &sim.url(),
        &dir,
        "upstream_model = \"us.anthropic.claude-3-5-haiku-20241022-v1:0\"",
    )
    .await;
    let admin = proxy.admin_url();
    let before = config_hash(&admin).await;

    let client = sdk_client(&proxy.url());
    let mut stream = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("a long story"))
        .send()
        .await
        .unwrap();
    stream.stream.recv().await.unwrap();

    // The file changes on disk: the watcher reloads it.
    std::fs::write(
        &path,
        config_with_route(
            &sim.url(),
            "",
            "upstream_model = \"us.amazon.nova-micro-v1:0\"",
            "",
        ),
    )
    .unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if config_hash(&admin).await != before {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the file watcher applied the new config");

    let mut stop_reason = None;
    while let Some(event) = stream
        .stream
        .recv()
        .await
        .expect("the in-flight stream keeps going")
    {
        if let ConverseStreamOutput::MessageStop(m) = event {
            stop_reason = Some(m.stop_reason().clone());
        }
    }
    assert!(
        stop_reason.is_some(),
        "the stream started before the reload finished"
    );
    assert_eq!(
        sim.sim.state().log.recent(1)[0].model_id,
        "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    );

    let fast_sim_reply = post_b(
        &format!("{}/model/haiku/converse", proxy.url()),
        converse_body("new route").to_string(),
    )
    .await;
    assert_eq!(fast_sim_reply.status, 200);
    assert_eq!(
        sim.sim.state().log.recent(1)[0].model_id,
        "us.amazon.nova-micro-v1:0",
        "new requests follow the new config"
    );
    proxy.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = proxy_from_file(&sim.url(), &dir, "").await;
    let admin = proxy.admin_url();
    let before = config_hash(&admin).await;
    let failures = |m: &str| metric(m, "bedrock_proxy_config_reload_failures_total", &[]);
    let metrics_text = || async {
        String::from_utf8(
            raw("GET", &format!("{admin}/metrics"), &[], "")
                .await
                .unwrap()
                .body
                .to_vec(),
        )
        .unwrap()
    };
    let failures_before = failures(&metrics_text().await);

    std::fs::write(
        &path,
        "[[routes]]\nname = \"broken\"\nupstream = \"nowhere\"\nbogus_key = 1\n",
    )
    .unwrap();
    let refused = raw("POST", &format!("{admin}/admin/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
    let error: Value = refused.json();
    assert!(
        error["error"].as_str().unwrap().contains("bogus_key"),
        "{error}"
    );
    assert_eq!(
        config_hash(&admin).await,
        before,
        "the running config stays"
    );
    assert!(failures(&metrics_text().await) > failures_before);
    let r = post_b(
        &format!("{}/model/haiku/converse", proxy.url()),
        converse_body("still here").to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    proxy.shutdown().await;
    sim.shutdown().await;
}
