//! Issue 15's `/v1/embeddings` end to end against the simulator: Cohere Embed
//! batches up to the catalog's `max_batch` texts per InvokeModel call, Titan one
//! text per call, fanned out and answered in order; the calls Bedrock receives
//! are the bodies its models take; a repeated batch is answered from the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::{json, Value};

/// An API key of tenant `search`, on every route.
const KEY: &str = "bpk_search_test_key";

async fn embeddings_stack() -> Stack {
    let key = bedrock_proxy::auth::hash_key(KEY);
    stack_with(
        bedrock_sim::SimConfig {
            time_scale: 0.0,
            ..bedrock_sim::SimConfig::default()
        },
        "",
        &format!(
            r#"
[[routes]]
name = "cohere"
models = ["cohere.embed-english-v3"]
upstream = "sim"
[[routes]]
name = "titan"
models = ["amazon.titan-embed-text-v2:0"]
upstream = "sim"
cache = {{ ttl = "1h" }}
[[keys]]
tenant = "search"
key_sha256 = "{key}"
"#
        ),
    )
    .await
}

async fn post(url: &str, body: Value) -> bedrock_sim::testing::RawResponse {
    bedrock_sim::testing::raw(
        "POST",
        url,
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
    .expect("the proxy answers")
}

fn embed_calls(stack: &Stack, model: &str) -> Vec<Value> {
    stack
        .upstream_requests()
        .into_iter()
        .filter(|r| r.model_id == model)
        .map(|r| r.body)
        .collect()
}

#[tokio::test]
async fn cohere_batches_by_the_catalog_and_titan_fans_out_in_order() {
    let stack = embeddings_stack().await;
    let url = format!("{}/v1/embeddings", stack.url());
    // 100 texts: Cohere Embed v3 takes 96 per call (config/models.toml).
    let texts: Vec<String> = (0..100).map(|i| format!("document number {i}")).collect();
    let r = post(
        &url,
        json!({"model": "cohere", "input": texts, "input_type": "search_query"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 100);
    assert!(data.iter().enumerate().all(|(i, d)| d["index"] == i));
    let calls = embed_calls(&stack, "cohere.embed-english-v3");
    let sizes: Vec<usize> = calls
        .iter()
        .map(|c| c["texts"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 100);
    assert!(sizes.contains(&96) && sizes.contains(&4), "{sizes:?}");
    assert!(calls.iter().all(|c| c["input_type"] == "search_query"));
    // The last text's vector is the one a call with that text alone gets.
    let alone = post(
        &url,
        json!({"model": "cohere", "input": "document number 99", "input_type": "search_query"}),
    )
    .await
    .json();
    assert_eq!(data[99]["embedding"], alone["data"][0]["embedding"]);

    let r = post(
        &url,
        json!({"model": "titan", "input": ["alpha beta", "gamma delta", "alpha beta"], "dimensions": 512}),
    )
    .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["data"][0]["embedding"], body["data"][2]["embedding"]);
    assert_ne!(body["data"][0]["embedding"], body["data"][1]["embedding"]);
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 512);
    let titan = embed_calls(&stack, "amazon.titan-embed-text-v2:0");
    assert!(titan
        .iter()
        .all(|c| c["dimensions"] == 512 && c["normalize"] == true && c["inputText"].is_string()));

    // The same batch again: every text from the cache, no new upstream call.
    let before = embed_calls(&stack, "amazon.titan-embed-text-v2:0").len();
    let again = post(
        &url,
        json!({"model": "titan", "input": ["alpha beta", "gamma delta", "alpha beta"], "dimensions": 512}),
    )
    .await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(again.json()["data"], body["data"]);
    assert_eq!(
        embed_calls(&stack, "amazon.titan-embed-text-v2:0").len(),
        before
    );
    stack.shutdown().await;
}
