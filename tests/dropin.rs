//! Issue 14 end to end: a SigV4-signed request over cleartext HTTP/2 (no `Host`
//! header, the authority in the URI); reasoning and its signature replayed
//! exactly from the response cache in the Bedrock, OpenAI and Anthropic formats,
//! whole and streamed; and the models endpoints (embedding models in the OpenAI list only).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_credential_types::Credentials;
use aws_sdk_bedrockruntime::types::{ContentBlock, ConverseStreamOutput, ReasoningContentBlock};
use bedrock_sim::testing::{raw, sdk_client, RawResponse, TEST_ACCESS_KEY, TEST_SECRET};
use bedrock_sim::SimConfig;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::SystemTime;

/// An API key of tenant `team-a` (the tenant of the SDK's key pair), on every route.
const KEY_A: &str = "bpk_team_a_test_key";

const THINKER: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

/// The harness's stack plus a route on a model with extended thinking whose
/// answers are always cached, an embedding route, and team-a's API key.
async fn thinking_stack() -> Stack {
    let key_a = bedrock_proxy::auth::hash_key(KEY_A);
    stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "",
        &format!(
            r#"
[[routes]]
name = "thinker"
aliases = ["thinker"]
models = ["{THINKER}"]
upstream = "sim"
cache = {{ mode = "always", ttl = "1h" }}
[[routes]]
name = "titan"
models = ["amazon.titan-embed-text-v2:0"]
upstream = "sim"
[[keys]]
tenant = "team-a"
key_sha256 = "{key_a}"
"#
        ),
    )
    .await
}

async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> RawResponse {
    let mut all = vec![
        ("authorization", format!("Bearer {KEY_A}")),
        ("content-type", "application/json".to_owned()),
    ];
    all.extend(headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    raw("POST", url, &pairs, body.to_string()).await.unwrap()
}

/// Server-sent events as (event name or "", data) pairs.
fn sse(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let mut name = String::new();
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name, data?))
        })
        .collect()
}

#[tokio::test]
async fn a_signed_request_verifies_over_cleartext_http2() {
    let s = stack().await;
    let url = s.op_url("haiku", "converse");
    let body = Bytes::from(converse_body("Hello over HTTP/2").to_string());
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for (secret, status) in [(TEST_SECRET, 200), ("wrong-secret", 403)] {
        let mut request = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let credentials = Credentials::new(TEST_ACCESS_KEY, secret, None, None, "test");
        bedrock_wire::client::sign_bedrock(
            &mut request,
            &body,
            credentials,
            "us-east-2",
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            request.headers().get("host").is_none(),
            "HTTP/2 carries the authority in :authority"
        );
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.status(), status);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        if status == 200 {
            assert!(answer["output"]["message"]["content"][0]["text"].is_string());
        } else {
            assert!(answer["message"].as_str().unwrap().contains("signature"));
        }
    }
    s.shutdown().await;
}

/// The reasoning of one answer: (text, signature).
type Reasoning = (String, String);

/// A replayed answer: what it is, the response, and how to read its reasoning.
type Replay<'a> = (&'a str, RawResponse, fn(&RawResponse) -> Reasoning);

fn openai_reasoning(r: &RawResponse) -> Reasoning {
    let message = &r.json()["choices"][0]["message"];
    let block = &message["thinking_blocks"][0];
    assert_eq!(block["thinking"], message["reasoning_content"]);
    (
        block["thinking"].as_str().unwrap().to_owned(),
        block["signature"].as_str().unwrap().to_owned(),
    )
}

fn openai_stream_reasoning(r: &RawResponse) -> Reasoning {
    let events = sse(&r.body);
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    let block = events
        .iter()
        .find_map(|(_, v)| v["choices"][0]["delta"]["thinking_blocks"].get(0))
        .unwrap();
    assert_eq!(block["thinking"], text.as_str());
    (text, block["signature"].as_str().unwrap().to_owned())
}

fn anthropic_reasoning(r: &RawResponse) -> Reasoning {
    let block = &r.json()["content"][0];
    assert_eq!(block["type"], "thinking");
    (
        block["thinking"].as_str().unwrap().to_owned(),
        block["signature"].as_str().unwrap().to_owned(),
    )
}

fn anthropic_stream_reasoning(r: &RawResponse) -> Reasoning {
    let events = sse(&r.body);
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["thinking"].as_str())
        .collect();
    let signature = events
        .iter()
        .find_map(|(_, v)| v["delta"]["signature"].as_str())
        .unwrap();
    (text, signature.to_owned())
}

#[tokio::test]
async fn reasoning_replays_from_the_cache_exactly_in_every_format() {
    let s = thinking_stack().await;
    let chat = format!("{}/v1/chat/completions", s.url());
    let messages = format!("{}/v1/messages", s.url());
    let question = "Why is the sky blue?";
    // Three spellings of one Converse request: thinking with a 1,024-token
    // budget (reasoning_effort minimal), maxTokens 1,024 + 4,096.
    let openai = |stream: bool| {
        json!({"model": "thinker", "reasoning_effort": "minimal", "stream": stream,
            "messages": [{"role": "user", "content": question}]})
    };
    let anthropic = |stream: bool| {
        json!({"model": "thinker", "max_tokens": 5120, "stream": stream,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": question}]})
    };
    let version = [("anthropic-version", "2023-06-01")];

    let first = post(&chat, &[], &openai(false)).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("x-cache"), Some("miss"));
    let original = openai_reasoning(&first);
    assert!(!original.0.is_empty() && !original.1.is_empty());

    let replays: Vec<Replay> = vec![
        (
            "openai stream",
            post(&chat, &[], &openai(true)).await,
            openai_stream_reasoning,
        ),
        (
            "anthropic",
            post(&messages, &version, &anthropic(false)).await,
            anthropic_reasoning,
        ),
        (
            "anthropic stream",
            post(&messages, &version, &anthropic(true)).await,
            anthropic_stream_reasoning,
        ),
    ];
    for (name, r, read) in replays {
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("x-cache"), Some("hit"), "{name}");
        assert_eq!(read(&r), original, "{name} replays the reasoning exactly");
    }

    // The Bedrock API: whole and streamed, from the same entry.
    let client = sdk_client(&s.url());
    let thinking = aws_smithy_types::Document::Object(
        [(
            "thinking".to_owned(),
            aws_smithy_types::Document::Object(
                [
                    ("type".to_owned(), "enabled".into()),
                    (
                        "budget_tokens".to_owned(),
                        aws_smithy_types::Document::Number(aws_smithy_types::Number::PosInt(1024)),
                    ),
                ]
                .into(),
            ),
        )]
        .into(),
    );
    let inference = aws_sdk_bedrockruntime::types::InferenceConfiguration::builder()
        .max_tokens(5120)
        .build();
    let whole = client
        .converse()
        .model_id("thinker")
        .messages(bedrock_sim::testing::user_text(question))
        .inference_config(inference.clone())
        .additional_model_request_fields(thinking.clone())
        .send()
        .await
        .unwrap();
    let content = whole.output().unwrap().as_message().unwrap().content();
    let ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(r)) = &content[0]
    else {
        panic!("reasoning first: {content:?}");
    };
    assert_eq!(
        (r.text().to_owned(), r.signature().unwrap().to_owned()),
        original
    );
    let mut stream = client
        .converse_stream()
        .model_id("thinker")
        .messages(bedrock_sim::testing::user_text(question))
        .inference_config(inference)
        .additional_model_request_fields(thinking)
        .send()
        .await
        .unwrap();
    let (mut text, mut signature) = (String::new(), String::new());
    while let Some(event) = stream.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(d) = event {
            if let Some(aws_sdk_bedrockruntime::types::ContentBlockDelta::ReasoningContent(r)) =
                d.delta()
            {
                match r {
                    aws_sdk_bedrockruntime::types::ReasoningContentBlockDelta::Text(t) => {
                        text.push_str(t)
                    }
                    aws_sdk_bedrockruntime::types::ReasoningContentBlockDelta::Signature(s) => {
                        signature = s.clone()
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!((text, signature), original);

    // The replayed signature is the model's: Bedrock takes the reasoning back.
    let (thought, signature) = original;
    let back = |signature: &str| {
        json!({"model": "thinker", "max_tokens": 5120, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": thought, "signature": signature},
                    {"type": "text", "text": "Rayleigh scattering."}]},
                {"role": "user", "content": "And sunsets?"}]})
    };
    let accepted = post(&messages, &version, &back(&signature)).await;
    assert_eq!(
        accepted.status,
        200,
        "{}",
        String::from_utf8_lossy(&accepted.body)
    );
    let refused = post(&messages, &version, &back("dGFtcGVyZWQ=")).await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signature"));
    s.shutdown().await;
}

#[tokio::test]
async fn models_lists_routes_in_either_shape() {
    let s = thinking_stack().await;
    let get = |path: &str, anthropic: bool| {
        let url = format!("{}{path}", s.url());
        async move {
            let auth = format!("Bearer {KEY_A}");
            let mut headers = vec![("authorization", auth.as_str())];
            if anthropic {
                headers.push(("anthropic-version", "2023-06-01"));
            }
            raw("GET", &url, &headers, "").await.unwrap()
        }
    };
    let list = get("/v1/models", false).await.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"haiku") && ids.contains(&"thinker"),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"titan"),
        "OpenAI's list has its embedding models: {ids:?}"
    );

    let one = get("/v1/models/thinker", false).await;
    assert_eq!(one.status, 200);
    assert_eq!(
        one.json(),
        json!({"id": "thinker", "object": "model", "created": 0, "owned_by": "bedrock-proxy"})
    );
    let by_model_id = get(&format!("/v1/models/{THINKER}"), false).await;
    assert_eq!(by_model_id.json()["id"], THINKER);
    assert_eq!(get("/v1/models/titan", false).await.status, 200);
    assert_eq!(get("/v1/models/titan", true).await.status, 404);
    for missing in ["/v1/models/gpt-4o"] {
        let r = get(missing, false).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["code"], "model_not_found");
        assert_eq!(r.json()["error"]["param"], "model");
    }

    let list = get("/v1/models", true).await.json();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != "titan"),
        "the Anthropic API has no embeddings"
    );
    assert_eq!(list["has_more"], false);
    assert_eq!(list["data"][0]["type"], "model");
    assert_eq!(list["first_id"], list["data"][0]["id"]);
    let one = get("/v1/models/thinker", true).await.json();
    assert_eq!(one["type"], "model");
    assert_eq!(one["display_name"], "thinker");
    let missing = get("/v1/models/claude-9", true).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
    s.shutdown().await;
}
