//! Prompt caching without client changes: what the simulator receives after the
//! planner's edits, the usage Bedrock reports back, and the planner's limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message, SystemContentBlock};
use bedrock_sim::testing::{raw, sdk_client, user_text};
use bedrock_sim::SimConfig;
use common::*;
use serde_json::{json, Value};

const AUTO: &str = "prompt_cache = { mode = \"auto\" }";
const ALWAYS: &str = "prompt_cache = { mode = \"always\" }";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

/// A system prompt of about 3,000 tokens (Haiku's minimum per checkpoint is 2,048).
fn long_system() -> String {
    "You are the support assistant of an online bookshop. Answer briefly and politely. ".repeat(150)
}

fn request(system: &str, user: &str) -> Value {
    json!({"system": [{"text": system}], "messages": [{"role": "user", "content": [{"text": user}]}]})
}

fn points(body: &Value) -> usize {
    let count = |v: &Value| {
        v.as_array().map_or(0, |a| {
            a.iter().filter(|b| b.get("cachePoint").is_some()).count()
        })
    };
    count(&body["system"])
        + count(&body["toolConfig"]["tools"])
        + body["messages"]
            .as_array()
            .map_or(0, |m| m.iter().map(|m| count(&m["content"])).sum())
}

fn last_received(s: &Stack) -> Value {
    s.upstream_requests()
        .pop()
        .expect("a request reached the simulator")
        .body
}

#[tokio::test]
async fn auto_marks_a_system_prompt_once_it_repeats() {
    let s = stack_full(fast(), "", AUTO, "").await;
    let url = s.op_url("haiku", "converse");
    let system = long_system();

    let first = post_b(&url, request(&system, "Where is my order?").to_string()).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-proxy-cache-points"),
        Some("0"),
        "seen once: no write premium yet"
    );
    assert_eq!(points(&last_received(&s)), 0);
    assert!(first.json()["usage"].get("cacheWriteInputTokens").is_none());

    let second = post_b(&url, request(&system, "Can I return a book?").to_string()).await;
    assert_eq!(second.header("x-proxy-cache-points"), Some("1"));
    let sent = last_received(&s);
    assert_eq!(sent["system"].as_array().unwrap().len(), 2);
    assert_eq!(
        sent["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"text": "Can I return a book?"}]}]),
        "nothing else changed"
    );
    let written = second.json()["usage"]["cacheWriteInputTokens"]
        .as_u64()
        .expect("Bedrock wrote the prefix");
    assert!(written >= 2048);

    let third = post_b(&url, request(&system, "Do you ship abroad?").to_string()).await;
    assert_eq!(
        third.json()["usage"]["cacheReadInputTokens"].as_u64(),
        Some(written),
        "and read it back"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn short_prompts_and_models_without_prompt_caching_are_untouched() {
    let llama_cached = "[[routes]]\nname = \"llama-cached\"\naliases = [\"llama-cached\"]\nupstream = \"sim\"\nupstream_model = \"us.meta.llama3-1-70b-instruct-v1:0\"\nprompt_cache = { mode = \"always\" }\n";
    let s = stack_full(fast(), "", ALWAYS, llama_cached).await;
    let short = request("You are terse.", "Hi");
    let r = post_b(&s.op_url("haiku", "converse"), short.to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proxy-cache-points"), Some("0"));
    assert_eq!(
        last_received(&s),
        short,
        "below the minimum: byte-for-byte the client's request"
    );

    // team-a (the SDK's key pair) may use every route.
    let client = sdk_client(&s.url());
    let out = client
        .converse()
        .model_id("llama-cached")
        .system(SystemContentBlock::Text(long_system()))
        .messages(user_text("Hi"))
        .send()
        .await
        .expect("no doomed cachePoint was sent to a model without prompt caching");
    assert!(out.usage().unwrap().cache_write_input_tokens().is_none());
    assert_eq!(points(&last_received(&s)), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn the_clients_own_points_count_toward_the_limit() {
    let s = stack_full(fast(), "", ALWAYS, "").await;
    let system = long_system();
    // Three points of the client's own, none after the system prompt.
    let mut body = json!({"system": [{"text": system}], "messages": []});
    let messages = body["messages"].as_array_mut().unwrap();
    for i in 0..3 {
        messages.push(json!({"role": "user", "content": [{"text": format!("q{i}")}, {"cachePoint": {"type": "default"}}]}));
        messages.push(json!({"role": "assistant", "content": [{"text": format!("a{i}")}]}));
    }
    messages.push(json!({"role": "user", "content": [{"text": "last"}]}));
    let r = post_b(&s.op_url("haiku", "converse"), body.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        r.header("x-proxy-cache-points"),
        Some("1"),
        "one slot was left"
    );
    let sent = last_received(&s);
    assert_eq!(points(&sent), 4);
    assert_eq!(
        sent["system"][1],
        json!({"cachePoint": {"type": "default"}}),
        "the system prompt got it"
    );

    // With four of its own, the client's request goes through untouched.
    let mut full = body.clone();
    full["system"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    let r = post_b(&s.op_url("haiku", "converse"), full.to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proxy-cache-points"), Some("0"));
    assert_eq!(last_received(&s), full);
    s.shutdown().await;
}

#[tokio::test]
async fn a_conversation_reads_more_of_itself_turn_by_turn() {
    let s = stack_full(fast(), "", AUTO, "").await;
    let client = sdk_client(&s.url());
    let mut messages: Vec<Message> = Vec::new();
    let mut reads = Vec::new();
    for turn in 0..4 {
        messages.push(user_text(&format!("Question number {turn}: tell me more.")));
        let out = client
            .converse()
            .model_id("haiku")
            .system(SystemContentBlock::Text(long_system()))
            .set_messages(Some(messages.clone()))
            .send()
            .await
            .unwrap();
        let usage = out.usage().unwrap();
        reads.push(usage.cache_read_input_tokens().unwrap_or(0));
        let reply = out.output().unwrap().as_message().unwrap().content()[0]
            .as_text()
            .unwrap()
            .clone();
        messages.push(
            Message::builder()
                .role(ConversationRole::Assistant)
                .content(ContentBlock::Text(reply))
                .build()
                .unwrap(),
        );
    }
    assert_eq!(reads[0], 0, "{reads:?}");
    assert!(
        reads[2] > reads[1] && reads[3] > reads[2],
        "cache reads grow turn by turn: {reads:?}"
    );
    let sent = last_received(&s);
    let tail = sent["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        tail["content"].as_array().unwrap().last().unwrap(),
        &json!({"cachePoint": {"type": "default"}})
    );
    s.shutdown().await;
}

#[tokio::test]
async fn anthropic_bodies_on_invoke_get_cache_control() {
    let s = stack_full(fast(), "", ALWAYS, "").await;
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 40,
        "system": long_system(), "messages": [{"role": "user", "content": "Hello"}]});
    let first = post_b(&s.op_url("haiku", "invoke"), body.to_string()).await;
    assert_eq!(first.status, 200, "{:?}", first.json());
    assert_eq!(first.header("x-proxy-cache-points"), Some("1"));
    let sent = last_received(&s);
    assert_eq!(
        sent["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(sent["system"][0]["text"], json!(long_system()));
    assert!(
        first.json()["usage"]["cache_creation_input_tokens"]
            .as_u64()
            .unwrap()
            >= 2048
    );
    let second = post_b(&s.op_url("haiku", "invoke"), body.to_string()).await;
    assert!(
        second.json()["usage"]["cache_read_input_tokens"]
            .as_u64()
            .unwrap()
            >= 2048
    );
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_count_points_and_what_bedrocks_cache_saved() {
    let s = stack_full(fast(), "", ALWAYS, "").await;
    let url = s.op_url("haiku", "converse");
    for q in ["a", "b", "c"] {
        post_b(&url, request(&long_system(), q).to_string()).await;
    }
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_points_injected_total",
            &["route=\"haiku\"", "position=\"system\""]
        ) >= 3.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_tokens_total",
            &["route=\"haiku\"", "kind=\"read\""]
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_tokens_total",
            &["route=\"haiku\"", "kind=\"write\""]
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_saved_usd",
            &["route=\"haiku\""]
        ) > 0.0,
        "two reads repay one write: {m}"
    );
    let prefixes = raw(
        "GET",
        &format!("{}/admin/prefixes", s.proxy.admin_url()),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(prefixes.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn two_proxies_agree_on_sightings_through_redis() {
    let redis = RedisServer::start().await;
    let shared = format!("[cache.redis]\nurl = \"{}\"\n", redis.url());
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let a = proxy_for(&sim.url(), "", AUTO, &shared).await;
    let b = proxy_for(&sim.url(), "", AUTO, &shared).await;
    for admin in [a.admin_url(), b.admin_url()] {
        for _ in 0..100 {
            let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
                .await
                .unwrap()
                .json();
            if d["redis"]["connected"] == true {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let system = long_system();
    let on_a = post_b(
        &format!("{}/model/haiku/converse", a.url()),
        request(&system, "one").to_string(),
    )
    .await;
    assert_eq!(on_a.header("x-proxy-cache-points"), Some("0"));
    let on_b = post_b(
        &format!("{}/model/haiku/converse", b.url()),
        request(&system, "two").to_string(),
    )
    .await;
    assert_eq!(
        on_b.header("x-proxy-cache-points"),
        Some("1"),
        "B counts A's sighting"
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}
