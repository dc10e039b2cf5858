//! The response cache as applications see it: hits and misses through the Rust
//! SDK and raw HTTP, streams and bodies serving each other, single-flight,
//! broken streams never stored, tenants kept apart, per-request directives,
//! admin and metrics, and two proxies sharing a real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, InferenceConfiguration, ResponseStream};
use bedrock_sim::testing::{raw, sdk_client, user_text, RawResponse};
use bedrock_sim::{FaultKind, FaultRule, SimConfig};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CACHED: &str = "cache = { mode = \"deterministic\", ttl = \"10m\" }";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

async fn cached_stack() -> Stack {
    stack_full(fast(), "", CACHED, "").await
}

fn deterministic(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"temperature": 0, "maxTokens": 300}})
}

fn calls(s: &Stack) -> usize {
    s.upstream_requests().len()
}

fn text_of_body(r: &RawResponse) -> String {
    r.json()["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache() {
    let s = cached_stack().await;
    let url = s.op_url("haiku", "converse");
    let first = post_b(&url, deterministic("Name a color.").to_string()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("miss"));
    // Same meaning, different spelling: key order, whitespace, a cachePoint,
    // performanceConfig and requestMetadata do not change the answer.
    let respelled = r#"{"inferenceConfig":{"maxTokens":300,"temperature":0.0},
        "requestMetadata":{"app":"other"}, "performanceConfig":{"latency":"standard"},
        "messages":[{"content":[{"text":"Name a color."},{"cachePoint":{"type":"default"}}],"role":"user"}]}"#;
    let second = post_b(&url, respelled).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert!(second.header("age").is_some());
    assert_eq!(second.header("x-proxy-attempts"), Some("0"));
    assert_eq!(text_of_body(&second), text_of_body(&first));
    assert_eq!(
        second.json()["usage"],
        first.json()["usage"],
        "hits report the original usage"
    );
    assert_eq!(calls(&s), 1, "the upstream was called once");

    let different = post_b(&url, deterministic("Name a shape.").to_string()).await;
    assert_eq!(different.header("x-cache"), Some("miss"));
    assert_eq!(calls(&s), 2);

    let sampled = post_b(
        &url,
        json!({"messages": [{"role": "user", "content": [{"text": "Name a color."}]}],
        "inferenceConfig": {"temperature": 0.7}})
        .to_string(),
    )
    .await;
    assert_eq!(
        sampled.header("x-cache"),
        Some("bypass"),
        "deterministic mode skips sampled requests"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_rust_sdk_gets_identical_answers_from_hits_streams_included() {
    let s = cached_stack().await;
    let client = sdk_client(&s.url());
    let config = InferenceConfiguration::builder()
        .temperature(0.0)
        .max_tokens(300)
        .build();
    let ask = || {
        client
            .converse()
            .model_id("haiku")
            .messages(user_text("Explain caches."))
            .inference_config(config.clone())
            .send()
    };
    let miss = ask().await.unwrap();
    let hit = ask().await.unwrap();
    assert_eq!(hit.output(), miss.output());
    assert_eq!(hit.usage(), miss.usage());
    assert_eq!(calls(&s), 1);

    // A streaming request is answered from the entry a non-streaming one stored,
    // and the SDK parses the replay as a valid event stream.
    let mut stream = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("Explain caches."))
        .inference_config(config.clone())
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let mut kinds = Vec::new();
    while let Some(event) = stream.stream.recv().await.expect("a valid replayed stream") {
        match &event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                text.push_str(d.delta().unwrap().as_text().unwrap())
            }
            ConverseStreamOutput::Metadata(m) => assert_eq!(m.usage(), miss.usage()),
            _ => {}
        }
        kinds.push(format!("{event:?}").split('(').next().unwrap().to_owned());
    }
    let body_text = miss.output().unwrap().as_message().unwrap().content()[0]
        .as_text()
        .unwrap()
        .clone();
    assert_eq!(text, body_text);
    assert_eq!(kinds.first().map(String::as_str), Some("MessageStart"));
    assert_eq!(kinds.last().map(String::as_str), Some("Metadata"));
    assert_eq!(calls(&s), 1, "the stream was a hit");

    // And the other way: a stream stored, then a body served from it.
    let streamed_first = |prompt: &'static str| {
        client
            .converse_stream()
            .model_id("haiku")
            .messages(user_text(prompt))
            .inference_config(config.clone())
            .send()
    };
    let mut out = streamed_first("Explain queues.").await.unwrap();
    let mut streamed = String::new();
    while let Some(e) = out.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(d) = e {
            streamed.push_str(d.delta().unwrap().as_text().unwrap());
        }
    }
    let body = client
        .converse()
        .model_id("haiku")
        .messages(user_text("Explain queues."))
        .inference_config(config)
        .send()
        .await
        .unwrap();
    assert_eq!(
        body.output().unwrap().as_message().unwrap().content()[0]
            .as_text()
            .unwrap(),
        &streamed
    );
    assert_eq!(calls(&s), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn another_models_answer_from_a_fallback_is_served_but_not_stored() {
    let route = format!(
        "{CACHED}\nupstream_model = \"us.anthropic.claude-3-5-haiku-20241022-v1:0\"\n\
         fallback = [{{ model = \"us.amazon.nova-pro-v1:0\" }}]"
    );
    let s = stack_full(fast(), "", &route, "").await;
    s.sim.sim.state().faults.add(FaultRule {
        model: Some("haiku".into()),
        times: Some(1),
        ..FaultRule::new(FaultKind::Unavailable)
    });
    let url = s.op_url("haiku", "converse");
    let body = deterministic("Who answers?").to_string();
    let first = post_b(&url, body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        s.upstream_requests().pop().unwrap().model_id,
        "us.amazon.nova-pro-v1:0",
        "the fallback model answered"
    );
    let second = post_b(&url, body.clone()).await;
    assert_eq!(
        second.header("x-cache"),
        Some("miss"),
        "Nova's answer was not kept for Haiku's key"
    );
    assert_eq!(
        s.upstream_requests().pop().unwrap().model_id,
        "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    );
    let third = post_b(&url, body).await;
    assert_eq!(
        third.header("x-cache"),
        Some("hit"),
        "Haiku's own answer is"
    );
    assert_eq!(text_of_body(&third), text_of_body(&second));
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_streaming_and_whole_requests_each_get_their_own_shape() {
    // Converse and ConverseStream share cache entries, but one in flight cannot
    // answer the other: a whole request gets JSON, a streaming one a stream.
    let sim = SimConfig {
        time_scale: 0.2,
        jitter: 0.0,
        ..SimConfig::default()
    };
    let s = stack_full(sim, "", CACHED, "").await;
    let body = deterministic("Both shapes at once").to_string();
    let tasks: Vec<_> = ["converse-stream", "converse", "converse-stream", "converse"]
        .into_iter()
        .map(|op| {
            let (url, body) = (s.op_url("haiku", op), body.clone());
            tokio::spawn(async move { (op, post_b(&url, body).await) })
        })
        .collect();
    for t in tasks {
        let (op, r) = t.await.unwrap();
        assert_eq!(r.status, 200, "{op}");
        let content_type = r.header("content-type").unwrap_or_default();
        if op == "converse" {
            assert_eq!(content_type, "application/json", "{op}");
            assert_eq!(r.json()["stopReason"], "end_turn");
        } else {
            assert_eq!(content_type, "application/vnd.amazon.eventstream", "{op}");
            assert!(!r.body.starts_with(b"{"), "{op}: frames, not JSON");
        }
    }
    assert!(calls(&s) <= 2, "at most one upstream call per shape");
    let again = post_b(&s.op_url("haiku", "converse"), body).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    s.shutdown().await;
}

#[tokio::test]
async fn sixteen_identical_concurrent_requests_cost_one_upstream_call() {
    let sim = SimConfig {
        time_scale: 0.2,
        jitter: 0.0,
        ..SimConfig::default()
    };
    let s = stack_full(sim, "", CACHED, "").await;
    for op in ["converse", "converse-stream"] {
        let before = calls(&s);
        let url = s.op_url("haiku", op);
        let body = deterministic(&format!("Concurrent {op}")).to_string();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                tokio::spawn(async move { post_b(&url, body).await })
            })
            .collect();
        let mut responses = Vec::new();
        for t in tasks {
            responses.push(t.await.unwrap());
        }
        assert_eq!(
            calls(&s) - before,
            1,
            "{op}: one upstream call for 16 requests"
        );
        let misses = responses
            .iter()
            .filter(|r| r.header("x-cache") == Some("miss"))
            .count();
        let hits = responses
            .iter()
            .filter(|r| r.header("x-cache") == Some("hit"))
            .count();
        assert_eq!((misses, hits), (1, 15), "{op}");
        for r in &responses {
            assert_eq!(r.status, 200);
            assert_eq!(
                r.body, responses[0].body,
                "{op}: every client got the same bytes"
            );
        }
    }
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_cache_single_flight_joins_total",
            &["route=\"haiku\""]
        ) >= 30.0,
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_never_stored() {
    let s = cached_stack().await;
    let client = sdk_client(&s.url());
    let ask = || {
        client
            .converse_stream()
            .model_id("haiku")
            .messages(user_text("A fragile stream."))
            .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
            .send()
    };
    s.sim.sim.state().faults.add(FaultRule {
        times: Some(1),
        after_events: Some(3),
        ..FaultRule::new(FaultKind::MidstreamError)
    });
    let mut broken = ask().await.unwrap();
    let mut failed = false;
    loop {
        match broken.stream.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the client saw the failure");
    let mut whole = ask().await.unwrap();
    while whole.stream.recv().await.unwrap().is_some() {}
    assert_eq!(
        calls(&s),
        2,
        "the broken stream was not stored: the retry went upstream"
    );
    let body = client
        .converse()
        .model_id("haiku")
        .messages(user_text("A fragile stream."))
        .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
        .send()
        .await
        .unwrap();
    assert!(body.output().is_some());
    assert_eq!(
        calls(&s),
        2,
        "the complete stream was stored and answered the body request"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn tenants_never_see_each_others_entries_unless_the_route_shares() {
    let key_c = "bpk_team_c";
    let extra = format!(
        "[[keys]]\ntenant = \"team-c\"\nkey_sha256 = \"{}\"\n",
        bedrock_proxy::auth::hash_key(key_c)
    );
    let s = stack_full(fast(), "", CACHED, &extra).await;
    let url = s.op_url("haiku", "converse");
    let body = deterministic("A private question.").to_string();
    let as_c = |b: String| {
        let url = url.clone();
        async move { raw("POST", &url, &[("x-api-key", key_c)], b).await.unwrap() }
    };
    assert_eq!(
        post_b(&url, body.clone()).await.header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        as_c(body.clone()).await.header("x-cache"),
        Some("miss"),
        "team-c does not get team-b's entry"
    );
    assert_eq!(as_c(body.clone()).await.header("x-cache"), Some("hit"));
    assert_eq!(calls(&s), 2);
    s.shutdown().await;

    let shared = "cache = { mode = \"deterministic\", shared = true }";
    let s = stack_full(fast(), "", shared, &extra).await;
    let url = s.op_url("haiku", "converse");
    assert_eq!(
        post_b(&url, body.clone()).await.header("x-cache"),
        Some("miss")
    );
    let r = raw("POST", &url, &[("x-api-key", key_c)], body)
        .await
        .unwrap();
    assert_eq!(
        r.header("x-cache"),
        Some("hit"),
        "a shared route serves every tenant"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn cache_control_directives() {
    let s = cached_stack().await;
    let url = s.op_url("haiku", "converse");
    let body = deterministic("Directives.").to_string();
    let with = |cc: &'static str| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            raw(
                "POST",
                &url,
                &[("x-api-key", KEY_B), ("cache-control", cc)],
                body,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(with("no-store").await.header("x-cache"), Some("bypass"));
    assert_eq!(
        post_b(&url, body.clone()).await.header("x-cache"),
        Some("miss"),
        "no-store stored nothing"
    );
    assert_eq!(
        with("no-cache").await.header("x-cache"),
        Some("miss"),
        "no-cache skips the lookup"
    );
    assert_eq!(calls(&s), 3);
    assert_eq!(
        post_b(&url, body.clone()).await.header("x-cache"),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        with("max-age=0").await.header("x-cache"),
        Some("miss"),
        "older than max-age"
    );
    assert_eq!(with("max-age=3600").await.header("x-cache"), Some("hit"));
    s.shutdown().await;
}

#[tokio::test]
async fn invoke_model_is_cached_by_its_body_and_streams_replay_their_chunks() {
    let s = cached_stack().await;
    let client = sdk_client(&s.url());
    let body =
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 60, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me about caching."}]})
        .to_string();
    let invoke = || {
        client
            .invoke_model()
            .model_id("haiku")
            .body(Blob::new(body.clone()))
            .send()
    };
    let a = invoke().await.unwrap();
    let b = invoke().await.unwrap();
    assert_eq!(a.body().as_ref(), b.body().as_ref());
    assert_eq!(calls(&s), 1);

    let stream_texts = || async {
        let mut out = client
            .invoke_model_with_response_stream()
            .model_id("haiku")
            .body(Blob::new(body.clone()))
            .send()
            .await
            .unwrap();
        let mut types = Vec::new();
        while let Some(ResponseStream::Chunk(part)) = out.body.recv().await.unwrap() {
            let v: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
            types.push(v["type"].as_str().unwrap().to_owned());
        }
        types
    };
    let first = stream_texts().await;
    let second = stream_texts().await;
    assert_eq!(first, second);
    assert_eq!(second.last().map(String::as_str), Some("message_stop"));
    assert_eq!(
        calls(&s),
        2,
        "invoke and invoke-stream keep separate entries; the replay was a hit"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn admin_shows_and_clears_the_cache_and_metrics_count_savings() {
    let s = cached_stack().await;
    let url = s.op_url("haiku", "converse");
    for i in 0..3 {
        let body = deterministic(&format!("Question {i}")).to_string();
        post_b(&url, body.clone()).await;
        assert_eq!(post_b(&url, body).await.header("x-cache"), Some("hit"));
    }
    let admin = s.proxy.admin_url();
    let stats = raw("GET", &format!("{admin}/admin/cache"), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(stats["entries"], 3);
    assert_eq!(stats["hits"], 3);
    assert_eq!(stats["hit_ratio"], 0.5);
    assert!(stats["bytes"].as_u64().unwrap() > 0);

    // Metrics are process-wide: other tests running in this process may add to
    // them, so these check growth, not exact values.
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_cache_requests_total",
            &["route=\"haiku\"", "result=\"hit\"", "tier=\"l1\""]
        ) >= 3.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_cache_tokens_saved_total",
            &["route=\"haiku\"", "kind=\"output\""]
        ) > 0.0
    );
    assert!(
        metric(&m, "bedrock_proxy_cache_saved_usd", &["route=\"haiku\""]) > 0.0,
        "{m}"
    );

    let cleared = raw(
        "DELETE",
        &format!("{admin}/admin/cache?tenant=someone-else"),
        &[],
        "",
    )
    .await
    .unwrap()
    .json();
    assert_eq!(cleared["removed_l1"], 0);
    let cleared = raw(
        "DELETE",
        &format!("{admin}/admin/cache?tenant=team-b&route=haiku"),
        &[],
        "",
    )
    .await
    .unwrap()
    .json();
    assert_eq!(cleared["removed_l1"], 3);
    assert_eq!(
        post_b(&url, deterministic("Question 0").to_string())
            .await
            .header("x-cache"),
        Some("miss")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_memory_tier_stays_within_max_bytes() {
    let s = stack_full(fast(), "", CACHED, "[cache]\nmax_bytes = 20000\n").await;
    let url = s.op_url("haiku", "converse");
    for i in 0..40 {
        post_b(&url, deterministic(&format!("Fill {i}")).to_string()).await;
    }
    let admin = s.proxy.admin_url();
    let stats = raw("GET", &format!("{admin}/admin/cache"), &[], "")
        .await
        .unwrap()
        .json();
    assert!(stats["bytes"].as_u64().unwrap() <= 20_000, "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    s.shutdown().await;
}

#[tokio::test]
async fn two_proxies_share_entries_through_redis_and_survive_its_loss() {
    let redis = RedisServer::start().await;
    let cache = format!(
        "[cache.redis]\nurl = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let a = proxy_for(&sim.url(), "", CACHED, &cache).await;
    let b = proxy_for(&sim.url(), "", CACHED, &cache).await;
    let admin_b = b.admin_url();
    let wait_connected = |admin: String| async move {
        for _ in 0..100 {
            let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
                .await
                .unwrap()
                .json();
            if d["redis"]["connected"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never connected to redis");
    };
    wait_connected(a.admin_url()).await;
    wait_connected(admin_b.clone()).await;

    let body = deterministic("Shared between replicas.").to_string();
    let first = post_b(&format!("{}/model/haiku/converse", a.url()), body.clone()).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let mut from_b = None;
    for _ in 0..50 {
        // The write to Redis happens off the response path; give it a moment.
        let r = post_b(&format!("{}/model/haiku/converse", b.url()), body.clone()).await;
        if r.header("x-cache") == Some("hit") {
            from_b = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from_b = from_b.expect("proxy B answered from the entry proxy A stored");
    assert_eq!(text_of_body(&from_b), text_of_body(&first));
    assert_eq!(
        sim.sim.state().log.recent(100).len(),
        1,
        "one upstream call for both replicas"
    );

    // Redis dies: requests still succeed from memory and upstream.
    redis.kill();
    let fresh = post_b(
        &format!("{}/model/haiku/converse", b.url()),
        deterministic("After the crash.").to_string(),
    )
    .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-cache"), Some("miss"));
    let again = post_b(
        &format!("{}/model/haiku/converse", b.url()),
        deterministic("After the crash.").to_string(),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-cache"), Some("hit"), "L1 still serves");
    let m = raw("GET", &format!("{admin_b}/metrics"), &[], "")
        .await
        .unwrap();
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        metric(&m, "bedrock_proxy_cache_redis_errors_total", &[]) >= 1.0,
        "errors are counted: {m}"
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failed_leader_does_not_poison_its_followers() {
    let s = cached_stack().await;
    // The first upstream call is throttled, slowly enough that every other
    // request has joined it before it fails (a second: on a loaded machine a
    // request arriving after 300 ms started a flight of its own).
    s.sim.sim.state().faults.add(FaultRule {
        times: Some(1),
        ms: Some(1000),
        ..FaultRule::new(FaultKind::Throttle)
    });
    let url = s.op_url("haiku", "converse");
    let body = deterministic("Poison?").to_string();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post_b(&url, body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 200, 429],
        "only the leader saw its throttle"
    );
    assert_eq!(calls(&s), 2, "the followers shared one retry");
    s.shutdown().await;
}

#[tokio::test]
async fn two_proxies_share_entries_through_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let a = proxy_for(&sim.url(), "", CACHED, &cluster.config()).await;
    let b = proxy_for(&sim.url(), "", CACHED, &cluster.config()).await;
    for admin in [a.admin_url(), b.admin_url()] {
        let mut connected = false;
        for _ in 0..100 {
            let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
                .await
                .unwrap()
                .json();
            if d["redis"]["connected"] == true {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(connected, "connected to the cluster");
    }
    // Several keys, so they land on different nodes' slots.
    for i in 0..6 {
        let body = deterministic(&format!("Cluster question {i}")).to_string();
        assert_eq!(
            post_b(&format!("{}/model/haiku/converse", a.url()), body.clone())
                .await
                .header("x-cache"),
            Some("miss")
        );
        let mut hit = false;
        for _ in 0..50 {
            let r = post_b(&format!("{}/model/haiku/converse", b.url()), body.clone()).await;
            if r.header("x-cache") == Some("hit") {
                hit = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(hit, "proxy B found question {i} in the cluster");
    }
    assert_eq!(
        sim.sim.state().log.recent(100).len(),
        6,
        "each question went upstream once"
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// Waits until the proxy at `admin` reports its Redis tier connected.
async fn redis_connected(admin: &str) {
    for _ in 0..100 {
        let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
            .await
            .unwrap()
            .json();
        if d["redis"]["connected"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never connected to redis");
}

#[tokio::test]
async fn streamed_hits_replay_the_stored_bytes_and_entries_of_another_version_miss() {
    let redis = RedisServer::start().await;
    // Uncompressed values, so the test can rewrite an entry's version in place.
    let cache = format!(
        "[cache.redis]\nurl = \"{}\"\ntimeout = \"200ms\"\ncompress_min_bytes = 100000000\n",
        redis.url()
    );
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let a = proxy_for(&sim.url(), "", CACHED, &cache).await;
    let b = proxy_for(&sim.url(), "", CACHED, &cache).await;
    redis_connected(&a.admin_url()).await;
    redis_connected(&b.admin_url()).await;
    let body = deterministic("Stream the same answer twice.").to_string();
    let stream_from = |url: String| {
        let body = body.clone();
        async move { post_b(&format!("{url}/model/haiku/converse-stream"), body).await }
    };

    let miss = stream_from(a.url()).await;
    assert_eq!(miss.header("x-cache"), Some("miss"));
    let l1 = stream_from(a.url()).await;
    assert_eq!(l1.header("x-cache"), Some("hit"));
    assert_eq!(
        l1.body, miss.body,
        "a hit sends the bytes the upstream sent"
    );
    let mut l2 = None;
    for _ in 0..50 {
        // The write to Redis happens off the response path.
        let r = stream_from(b.url()).await;
        if r.header("x-cache") == Some("hit") {
            l2 = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l2 = l2.expect("proxy B answered from the entry A stored in Redis");
    assert_eq!(
        l2.body, miss.body,
        "a hit through Redis sends the same bytes"
    );
    assert_eq!(
        sim.sim.state().log.recent(100).len(),
        1,
        "the streams above were hits"
    );
    // And the SDK reads a replay as the stream it is (its own tenant's entry:
    // a miss, then a hit).
    let sdk_stream = || async {
        let mut out = sdk_client(&a.url())
            .converse_stream()
            .model_id(HAIKU)
            .messages(user_text("Stream the same answer twice."))
            .inference_config(
                InferenceConfiguration::builder()
                    .temperature(0.0)
                    .max_tokens(300)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(event) = out.stream.recv().await.unwrap() {
            if let ConverseStreamOutput::ContentBlockDelta(d) = event {
                text.push_str(d.delta().unwrap().as_text().unwrap());
            }
        }
        text
    };
    let first = sdk_stream().await;
    let replayed = sdk_stream().await;
    assert!(!first.is_empty());
    assert_eq!(replayed, first);
    assert_eq!(
        sim.sim.state().log.recent(100).len(),
        2,
        "the second was a hit"
    );

    // The entry as an older proxy version wrote it: a third replica (its
    // memory empty) misses, answers from upstream, and does not fail.
    let port = redis.port.to_string();
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &port, "--scan", "--pattern", "*:haiku:*"])
        .output()
        .unwrap();
    let keys = String::from_utf8(keys.stdout).unwrap();
    assert!(!keys.trim().is_empty(), "the entry is in Redis");
    for key in keys.lines() {
        // Byte 0 says compressed or not; the entry's version follows.
        let set = std::process::Command::new("redis-cli")
            .args(["-p", &port, "setrange", key, "1", "BPCE3"])
            .status()
            .unwrap();
        assert!(set.success());
    }
    let c = proxy_for(&sim.url(), "", CACHED, &cache).await;
    redis_connected(&c.admin_url()).await;
    let old = stream_from(c.url()).await;
    assert_eq!(old.status, 200);
    assert_eq!(old.header("x-cache"), Some("miss"));
    assert_eq!(old.body, miss.body);
    assert_eq!(
        sim.sim.state().log.recent(100).len(),
        3,
        "asked upstream again"
    );
    for p in [a, b, c] {
        p.shutdown().await;
    }
    sim.shutdown().await;
}

/// A streamed hit replays stored frames without reading them again: the
/// stored answer's usage still reaches the books (tokens saved) once the
/// replay has gone out whole.
#[tokio::test]
async fn a_streamed_hit_counts_the_stored_usage_as_saved() {
    let s = cached_stack().await;
    let client = sdk_client(&s.url());
    let config = InferenceConfiguration::builder()
        .temperature(0.0)
        .max_tokens(200)
        .build();
    let stream_usage = || async {
        let mut stream = client
            .converse_stream()
            .model_id("haiku")
            .messages(user_text("Count what a replay saves."))
            .inference_config(config.clone())
            .send()
            .await
            .unwrap();
        let mut usage = None;
        while let Some(event) = stream.stream.recv().await.unwrap() {
            if let ConverseStreamOutput::Metadata(m) = &event {
                usage = m.usage().cloned();
            }
        }
        usage.expect("the stream ends with its usage")
    };
    let saved = |m: &str| {
        metric(
            m,
            "bedrock_proxy_cache_tokens_saved_total",
            &["route=\"haiku\"", "kind=\"output\""],
        )
    };
    let miss = stream_usage().await;
    let before = saved(&s.metrics().await);
    let hit = stream_usage().await;
    assert_eq!(calls(&s), 1, "the second stream is a hit");
    assert_eq!(hit, miss);
    let after = saved(&s.metrics().await);
    assert!(miss.output_tokens() > 0);
    assert!(
        after - before >= f64::from(miss.output_tokens()),
        "saved output tokens grew by {} for a hit of {}",
        after - before,
        miss.output_tokens()
    );
}
