//! The OpenAI-compatible and SageMaker Runtime faces, driven as their users
//! drive them: raw HTTP for the OpenAI face (JSON and SSE), SigV4-signed requests
//! and the official Rust SDK (`aws-sdk-sagemakerruntime`) for SageMaker. Streams
//! read to their end, errors in each API's shape, scripted faults, and the
//! control plane seeing both faces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use aws_sdk_bedrockruntime::config::Credentials;
use aws_sdk_sagemakerruntime::config::{BehaviorVersion, Region};
use aws_sdk_sagemakerruntime::error::ProvideErrorMetadata;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::types::error::ResponseStreamError;
use aws_sdk_sagemakerruntime::types::ResponseStream;
use bedrock_sim::chat::StreamOptions;
use bedrock_sim::config::StaticCredential;
use bedrock_sim::selfhosted::{default_models, SelfHostedModel};
use bedrock_sim::testing::{
    post_json, raw, spawn, spawn_fast, RawResponse, TEST_ACCESS_KEY, TEST_SECRET,
};
use bedrock_sim::{FaceMatch, FaultKind, FaultRule, SimConfig, SimHandle};
use bedrock_wire::client::sign_request;
use bedrock_wire::eventstream::{decode, FrameKind, FrameSplitter};
use bedrock_wire::sagemaker::{self, SageMakerOperation};
use bedrock_wire::sse::SseDecoder;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use std::time::SystemTime;

const QWEN: &str = "qwen2.5-72b-instruct";
const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";
const LLAMA_EP: &str = "llama-3-1-8b-selfhosted";
const QWEN_EP: &str = "qwen-2-5-72b-selfhosted";

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "max_tokens": 300,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]})
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
    ])
}

async fn completions(sim: &SimHandle, body: &Value) -> RawResponse {
    post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        body.to_string(),
    )
    .await
    .expect("a response")
}

/// The data events of an SSE body (JSON), and whether `[DONE]` ended it.
fn sse_events(body: &[u8]) -> (Vec<Value>, bool) {
    let mut decoder = SseDecoder::new();
    decoder.push(body);
    let mut events = Vec::new();
    let mut done = false;
    while let Some(e) = decoder.next_event().expect("well-formed SSE") {
        assert!(!done, "nothing may follow [DONE]");
        if e.is_done() {
            done = true;
        } else {
            events.push(serde_json::from_str(&e.data).expect("JSON event"));
        }
    }
    assert_eq!(decoder.pending(), 0, "the body ends on an event boundary");
    (events, done)
}

fn streamed_content(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reason(events: &[Value]) -> Option<String> {
    events
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str().map(str::to_owned))
}

async fn control(sim: &SimHandle, path: &str) -> Value {
    raw("GET", &format!("{}{path}", sim.url()), &[], Bytes::new())
        .await
        .expect("control endpoint")
        .json()
}

async fn add_fault(sim: &SimHandle, rule: &FaultRule) {
    let r = raw(
        "POST",
        &format!("{}/_sim/faults", sim.url()),
        &[("content-type", "application/json")],
        serde_json::to_vec(rule).expect("rule JSON"),
    )
    .await
    .expect("fault added");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

fn once(face: FaceMatch, fault: FaultKind) -> FaultRule {
    FaultRule {
        face: Some(face),
        times: Some(1),
        ..FaultRule::new(fault)
    }
}

#[tokio::test]
async fn openai_answers_the_same_streamed_or_not() {
    let sim = spawn_fast().await;
    let r = completions(&sim, &chat(QWEN, "Explain caching.")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
    let whole = r.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], QWEN);
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.is_empty());
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let again = completions(&sim, &chat(QWEN, "Explain caching."))
        .await
        .json();
    assert_eq!(
        again["choices"][0]["message"]["content"],
        text.as_str(),
        "temperature 0 repeats"
    );

    let mut body = chat(QWEN, "Explain caching.");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = completions(&sim, &body).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let (events, done) = sse_events(&r.body);
    assert!(done);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_content(&events), text);
    assert_eq!(
        finish_reason(&events),
        whole["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned)
    );
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
    assert_eq!(last["usage"]["prompt_tokens"], usage["prompt_tokens"]);

    body["stream_options"] = json!({"include_usage": false});
    let (events, _) = sse_events(&completions(&sim, &body).await.body);
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "no usage without include_usage"
    );

    let mut short = chat(LLAMA, "Tell me a long story.");
    short["max_completion_tokens"] = json!(4);
    let cut = completions(&sim, &short).await.json();
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn openai_calls_tools_in_parallel_and_answers_their_results() {
    let sim = spawn_fast().await;
    let mut body = chat(
        QWEN,
        "Use get_weather for Paris and get_time for Europe/Paris.",
    );
    body["tools"] = tools();
    let first = completions(&sim, &body).await.json();
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let calls = choice["message"]["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let weather: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(weather["city"].is_string());
    assert_eq!(weather["unit"], "celsius");
    assert_eq!(calls[1]["function"]["name"], "get_time");

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (events, done) = sse_events(&completions(&sim, &stream).await.body);
    assert!(done);
    let mut args = vec![String::new(); 2];
    for e in &events {
        for call in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(args[0], calls[0]["function"]["arguments"].as_str().unwrap());
    assert_eq!(args[1], calls[1]["function"]["arguments"].as_str().unwrap());

    let mut turn = body.clone();
    let messages = turn["messages"].as_array_mut().unwrap();
    messages.push(choice["message"].clone());
    for call in &calls {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "done"}));
    }
    let second = completions(&sim, &turn).await.json();
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert!(
        second["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 1
    );

    let mut forced = chat(QWEN, "Hello");
    forced["tools"] = tools();
    forced["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let r = completions(&sim, &forced).await.json();
    assert_eq!(
        r["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    assert_eq!(
        r["choices"][0]["finish_reason"], "stop",
        "a named tool_choice stops as OpenAI does"
    );
}

#[tokio::test]
async fn openai_errors_come_in_openais_shape() {
    let sim = spawn_fast().await;
    let r = completions(&sim, &chat("gpt-imaginary", "hi")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");

    let mut bad = chat(QWEN, "hi");
    bad["temperature"] = json!(5);
    let r = completions(&sim, &bad).await;
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], "temperature");

    let r = post_json(&format!("{}/v1/chat/completions", sim.url()), "{not json")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));

    let r = completions(
        &sim,
        &json!({"model": QWEN, "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 40000}),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");

    let r = raw(
        "GET",
        &format!("{}/v1/chat/completions", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string());
    let r = raw(
        "POST",
        &format!("{}/v1/completions-of-a-kind", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Invalid URL"));

    let models = raw(
        "GET",
        &format!("{}/v1/models", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap()
    .json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [QWEN, LLAMA]);
    let one = raw(
        "GET",
        &format!("{}/v1/models/{LLAMA}", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(one.json()["max_model_len"], 16384);
    let none = raw(
        "GET",
        &format!("{}/v1/models/nope", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 404);

    let stats = control(&sim, "/_sim/stats").await;
    assert_eq!(stats["by_face"]["openai"], 4);
    assert_eq!(stats["errors"]["model_not_found"], 2);
}

#[tokio::test]
async fn openai_checks_the_api_key_when_one_is_set() {
    let mut config = SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    };
    config.openai.api_key = Some("sk-local-123".into());
    let sim = spawn(config).await;
    let url = format!("{}/v1/chat/completions", sim.url());
    let body = chat(QWEN, "hi").to_string();
    let none = raw(
        "POST",
        &url,
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 401);
    let wrong = post_json(&url, body.clone()).await.unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    let right = raw(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-local-123"),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(right.status, 200);
    let models = raw(
        "GET",
        &format!("{}/v1/models", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(models.status, 401);
}

fn model_with(id: &str, stream_options: StreamOptions) -> SelfHostedModel {
    SelfHostedModel {
        id: id.into(),
        stream_options,
        ..default_models()[1].clone()
    }
}

#[tokio::test]
async fn servers_that_refuse_or_ignore_stream_options() {
    let mut config = SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    };
    config
        .self_hosted
        .push(model_with("strict", StreamOptions::Reject));
    config
        .self_hosted
        .push(model_with("lax", StreamOptions::Ignore));
    let sim = spawn(config).await;
    let mut body = chat("strict", "hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = completions(&sim, &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Unrecognized request argument supplied: stream_options"
    );
    body.as_object_mut().unwrap().remove("stream_options");
    assert_eq!(completions(&sim, &body).await.status, 200);

    body["model"] = json!("lax");
    body["stream_options"] = json!({"include_usage": true});
    let r = completions(&sim, &body).await;
    assert_eq!(r.status, 200);
    let (events, done) = sse_events(&r.body);
    assert!(done);
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "usage dropped with the option"
    );
}

#[tokio::test]
async fn faults_reach_the_openai_face_only_when_they_target_it() {
    let sim = spawn_fast().await;
    add_fault(&sim, &FaultRule::new(FaultKind::Throttle)).await;
    assert_eq!(
        completions(&sim, &chat(QWEN, "hi")).await.status,
        200,
        "a Bedrock rule"
    );
    raw(
        "DELETE",
        &format!("{}/_sim/faults", sim.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();

    add_fault(
        &sim,
        &FaultRule {
            model: Some("qwen".into()),
            ..once(FaceMatch::OpenAi, FaultKind::Throttle)
        },
    )
    .await;
    assert_eq!(
        completions(&sim, &chat(LLAMA, "hi")).await.status,
        200,
        "another model"
    );
    let r = completions(&sim, &chat(QWEN, "hi")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        completions(&sim, &chat(QWEN, "hi")).await.status,
        200,
        "used up"
    );

    let mut body = chat(QWEN, "Explain caching.");
    body["stream"] = json!(true);
    let url = format!("{}/v1/chat/completions", sim.url());
    let r = raw(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("x-sim-fault", "midstream-error=3"),
        ],
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let (events, done) = sse_events(&r.body);
    assert!(!done, "a broken stream has no [DONE]");
    assert_eq!(events.len(), 4);
    assert_eq!(events[3]["error"]["type"], "server_error");

    let cut = raw(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("x-sim-fault", "connection-reset=2"),
        ],
        body.to_string(),
    )
    .await;
    assert!(cut.is_err(), "the connection is cut mid-stream");

    let bad = raw(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("x-sim-fault", "midstream-error=1:ModelStreamError"),
        ],
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-sim-fault"));

    let log = control(&sim, "/_sim/requests").await;
    let last = log["requests"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["face"], "openai");
    assert_eq!(last["operation"], "chat-completions");
    assert_eq!(last["model_id"], QWEN);
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(last["body"]["stream"], true);
    let stats = control(&sim, "/_sim/stats").await;
    assert!(stats["faults_fired"].as_u64().unwrap() >= 3);
    assert!(stats["by_operation"]["chat-completions"].as_u64().unwrap() >= 7);
}

#[tokio::test]
async fn a_repeated_prefix_is_read_from_the_prefix_cache() {
    let sim = spawn_fast().await;
    let system =
        "Background: ".to_owned() + &"the quick brown fox jumps over the lazy dog ".repeat(60);
    let ask = |q: &str| json!({"model": LLAMA, "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]});
    let first = completions(&sim, &ask("first question")).await.json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = completions(&sim, &ask("second question")).await.json();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= 600,
        "the shared system prompt is cached: {cached}"
    );
    assert!(cached < second["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(cached % 16, 0, "whole blocks");
    let stats = control(&sim, "/_sim/stats").await;
    assert_eq!(stats["cache_read_input_tokens"].as_u64(), Some(cached));
}

// ---- SageMaker ----

fn checked_config() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        credentials: vec![StaticCredential {
            access_key_id: TEST_ACCESS_KEY.into(),
            secret_access_key: TEST_SECRET.into(),
            session_token: None,
        }],
        ..SimConfig::default()
    }
}

/// A request signed as the AWS SDKs sign it, for `service`.
async fn signed(
    sim: &SimHandle,
    endpoint: &str,
    op: SageMakerOperation,
    body: &Value,
    headers: &[(&str, &str)],
    secret: &str,
    service: &str,
) -> Result<RawResponse, String> {
    let url = format!("{}{}", sim.url(), sagemaker::endpoint_path(endpoint, op));
    let bytes = Bytes::from(body.to_string());
    let mut builder = hyper::http::Request::post(&url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut request = builder.body(Full::new(bytes.clone())).unwrap();
    sign_request(
        &mut request,
        &bytes,
        Credentials::new(TEST_ACCESS_KEY, secret, None, None, "test"),
        "us-east-2",
        service,
        SystemTime::now(),
    )
    .unwrap();
    let sent: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    raw("POST", &url, &sent, bytes).await
}

fn llama_body(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": 200, "temperature": 0})
}

#[tokio::test]
async fn sagemaker_verifies_sigv4_for_its_own_service() {
    let sim = spawn(checked_config()).await;
    let op = SageMakerOperation::InvokeEndpoint;
    let body = llama_body("Explain caching.");
    let ok = signed(&sim, LLAMA_EP, op, &body, &[], TEST_SECRET, "sagemaker")
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert_eq!(
        ok.header(sagemaker::INVOKED_VARIANT_HEADER),
        Some("AllTraffic")
    );
    assert!(ok.header("x-amzn-requestid").is_some());
    let answer = ok.json();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], LLAMA);

    let wrong = signed(
        &sim,
        LLAMA_EP,
        op,
        &body,
        &[],
        "not-the-secret",
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 403);
    assert_eq!(
        wrong.header("x-amzn-errortype"),
        Some("InvalidSignatureException")
    );
    let bedrock = signed(&sim, LLAMA_EP, op, &body, &[], TEST_SECRET, "bedrock")
        .await
        .unwrap();
    assert_eq!(bedrock.status, 403);
    assert!(bedrock.json()["message"]
        .as_str()
        .unwrap()
        .contains("'sagemaker'"));
    let bearer = post_json(
        &format!("{}/endpoints/{LLAMA_EP}/invocations", sim.url()),
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(bearer.status, 403, "SageMaker takes no bearer tokens");
    let anonymous = raw(
        "POST",
        &format!("{}/endpoints/{LLAMA_EP}/invocations", sim.url()),
        &[],
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(
        anonymous.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );

    let log = control(&sim, "/_sim/requests").await;
    let first = &log["requests"][0];
    assert_eq!(first["face"], "sagemaker");
    assert_eq!(first["operation"], "invoke-endpoint");
    assert_eq!(first["model_id"], LLAMA_EP);
    assert!(
        first["headers"].get("authorization").is_none(),
        "secrets stay out of the log"
    );
}

fn sdk(sim: &SimHandle) -> aws_sdk_sagemakerruntime::Client {
    let config = aws_sdk_sagemakerruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-2"))
        .endpoint_url(sim.url())
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY,
            TEST_SECRET,
            None,
            None,
            "test",
        ))
        .retry_config(aws_sdk_sagemakerruntime::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sagemakerruntime::Client::from_conf(config)
}

/// Reads a response stream to its end: the bytes of its parts, how many parts,
/// and the exception that ended it, if any.
async fn read_parts(
    mut out: aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamOutput,
) -> (Vec<u8>, usize, Option<ResponseStreamError>) {
    let mut bytes = Vec::new();
    let mut parts = 0;
    loop {
        match out.body.recv().await {
            Ok(Some(ResponseStream::PayloadPart(part))) => {
                parts += 1;
                bytes.extend_from_slice(part.bytes().map(Blob::as_ref).unwrap_or_default());
            }
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => return (bytes, parts, None),
            Err(e) => return (bytes, parts, e.into_service_error().into()),
        }
    }
}

#[tokio::test]
async fn the_sagemaker_sdk_reads_answers_and_streams() {
    let sim = spawn(checked_config()).await;
    let client = sdk(&sim);
    let body = llama_body("Explain caching.");
    let out = client
        .invoke_endpoint()
        .endpoint_name(LLAMA_EP)
        .content_type("application/json")
        .accept("application/json")
        .custom_attributes("trace=abc")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .expect("InvokeEndpoint");
    assert_eq!(out.content_type(), Some("application/json"));
    assert_eq!(out.invoked_production_variant(), Some("AllTraffic"));
    let whole: Value = serde_json::from_slice(out.body().unwrap().as_ref()).unwrap();
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let out = client
        .invoke_endpoint_with_response_stream()
        .endpoint_name(LLAMA_EP)
        .content_type("application/json")
        .body(Blob::new(streaming.to_string()))
        .send()
        .await
        .expect("InvokeEndpointWithResponseStream");
    assert_eq!(out.content_type(), Some("text/event-stream"));
    let (bytes, parts, error) = read_parts(out).await;
    assert!(error.is_none());
    let (events, done) = sse_events(&bytes);
    assert!(done);
    assert_ne!(
        parts,
        events.len() + 1,
        "parts are cut where the container flushed"
    );
    assert_eq!(streamed_content(&events), text, "the same answer streamed");
    assert_eq!(
        events.last().unwrap()["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );

    // Without "stream": true the container answers with the whole JSON at the end.
    let out = client
        .invoke_endpoint_with_response_stream()
        .endpoint_name(LLAMA_EP)
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), Some("application/json"));
    let (bytes, _, error) = read_parts(out).await;
    assert!(error.is_none());
    let one: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(one["choices"][0]["message"]["content"], text.as_str());

    let log = control(&sim, "/_sim/requests").await;
    let first = &log["requests"][0];
    assert_eq!(
        first["headers"]["x-amzn-sagemaker-custom-attributes"],
        "trace=abc"
    );
    assert_eq!(
        log["requests"][1]["operation"],
        "invoke-endpoint-with-response-stream"
    );
    let stats = control(&sim, "/_sim/stats").await;
    assert_eq!(stats["by_face"]["sagemaker"], 3);
}

#[tokio::test]
async fn the_sagemaker_sdk_sees_sagemakers_errors() {
    let sim = spawn(checked_config()).await;
    let client = sdk(&sim);
    let body = Blob::new(llama_body("hi").to_string());
    let invoke = |name: &str| {
        client
            .invoke_endpoint()
            .endpoint_name(name)
            .body(body.clone())
    };

    let e = invoke("no-such-endpoint")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(e, InvokeEndpointError::ValidationError(_)),
        "{e:?}"
    );
    assert_eq!(
        e.message(),
        Some("Endpoint no-such-endpoint of account 123456789012 not found.")
    );

    let bad = client
        .invoke_endpoint()
        .endpoint_name(LLAMA_EP)
        .body(Blob::new(r#"{"messages": [{"role": "user"}]}"#))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let InvokeEndpointError::ModelError(model_error) = &bad else {
        panic!("ModelError expected, got {bad:?}");
    };
    assert_eq!(model_error.original_status_code(), Some(400));
    let original: Value = serde_json::from_str(model_error.original_message().unwrap()).unwrap();
    assert_eq!(original["error"]["param"], "messages[0].content");
    assert!(model_error
        .log_stream_arn()
        .unwrap()
        .ends_with(&format!("/aws/sagemaker/Endpoints/{LLAMA_EP}")));

    add_fault(
        &sim,
        &FaultRule {
            model: Some(LLAMA_EP.into()),
            ..once(FaceMatch::SageMaker, FaultKind::Throttle)
        },
    )
    .await;
    let throttled = invoke(LLAMA_EP).send().await.unwrap_err();
    assert_eq!(
        throttled.raw_response().map(|r| r.status().as_u16()),
        Some(400)
    );
    assert_eq!(
        throttled.into_service_error().code(),
        Some("ThrottlingException")
    );

    add_fault(&sim, &once(FaceMatch::Any, FaultKind::Unavailable)).await;
    let e = invoke(QWEN_EP)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(e, InvokeEndpointError::ServiceUnavailable(_)),
        "{e:?}"
    );

    add_fault(&sim, &once(FaceMatch::SageMaker, FaultKind::ModelError)).await;
    let e = invoke(QWEN_EP)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let InvokeEndpointError::ModelError(m) = &e else {
        panic!("ModelError expected, got {e:?}");
    };
    assert_eq!(m.original_status_code(), Some(500));

    let mut streaming = llama_body("Explain caching.");
    streaming["stream"] = json!(true);
    for (header, expected) in [
        ("midstream-error=3", "ModelStreamError"),
        (
            "midstream-error=2:InternalStreamFailure",
            "InternalStreamFailure",
        ),
    ] {
        let out = client
            .invoke_endpoint_with_response_stream()
            .endpoint_name(LLAMA_EP)
            .body(Blob::new(streaming.to_string()))
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-sim-fault", header);
            })
            .send()
            .await
            .unwrap();
        let (_, parts, error) = read_parts(out).await;
        match (error.expect("the stream ends with an exception"), expected) {
            (ResponseStreamError::ModelStreamError(m), "ModelStreamError") => {
                assert_eq!(m.error_code(), Some("StreamBroken"));
                assert!(m.message().is_some());
            }
            (ResponseStreamError::InternalStreamFailure(f), "InternalStreamFailure") => {
                assert!(f.message().is_some());
            }
            (other, _) => panic!("{expected} expected, got {other:?}"),
        }
        assert!(parts >= 2);
    }
}

#[tokio::test]
async fn inference_components_are_named_by_header() {
    let sim = spawn(checked_config()).await;
    let op = SageMakerOperation::InvokeEndpoint;
    let body = llama_body("hi");
    let ic = sagemaker::INFERENCE_COMPONENT_HEADER;
    let missing = signed(
        &sim,
        "shared-selfhosted",
        op,
        &body,
        &[],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 400);
    assert_eq!(missing.header("x-amzn-errortype"), Some("ValidationError"));
    assert!(missing.json()["message"]
        .as_str()
        .unwrap()
        .contains("Inference Component Name header is required"));
    let unknown = signed(
        &sim,
        "shared-selfhosted",
        op,
        &body,
        &[(ic, "nope")],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(unknown.status, 400);
    let qwen = signed(
        &sim,
        "shared-selfhosted",
        op,
        &body,
        &[(ic, "qwen-2-5-72b-ic")],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(qwen.status, 200);
    assert_eq!(qwen.json()["model"], QWEN);
    let refused = signed(
        &sim,
        LLAMA_EP,
        op,
        &body,
        &[(ic, "qwen-2-5-72b-ic")],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(
        refused.status, 400,
        "an endpoint without components refuses the header"
    );

    add_fault(
        &sim,
        &FaultRule {
            model: Some("qwen-2-5-72b-ic".into()),
            ..once(FaceMatch::SageMaker, FaultKind::ModelNotReady)
        },
    )
    .await;
    let not_ready = signed(
        &sim,
        "shared-selfhosted",
        op,
        &body,
        &[(ic, "qwen-2-5-72b-ic")],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(not_ready.status, 429);
    assert_eq!(
        not_ready.header("x-amzn-errortype"),
        Some("ModelNotReadyException")
    );
}

#[tokio::test]
async fn raw_stream_frames_are_payload_parts() {
    let sim = spawn_fast().await;
    let mut body = llama_body("Explain caching.");
    body["stream"] = json!(true);
    let r = signed(
        &sim,
        LLAMA_EP,
        SageMakerOperation::InvokeEndpointWithResponseStream,
        &body,
        &[],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    assert_eq!(
        r.header(sagemaker::STREAM_CONTENT_TYPE_HEADER),
        Some("text/event-stream")
    );
    let mut splitter = FrameSplitter::new();
    splitter.push(&r.body);
    let mut bytes = Vec::new();
    while let Some(frame) = splitter.next_frame().unwrap() {
        let frame = decode(frame).unwrap();
        assert_eq!(frame.kind, FrameKind::Event("PayloadPart".into()));
        bytes.extend_from_slice(&frame.payload);
    }
    assert_eq!(splitter.pending(), 0);
    let (_, done) = sse_events(&bytes);
    assert!(done);

    // On /invocations a streaming payload comes back as the whole SSE text.
    let whole = signed(
        &sim,
        LLAMA_EP,
        SageMakerOperation::InvokeEndpoint,
        &body,
        &[],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap();
    assert_eq!(whole.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        streamed_content(&sse_events(&whole.body).0),
        streamed_content(&sse_events(&bytes).0)
    );
}

#[tokio::test]
async fn both_faces_give_the_same_answer_to_the_same_request() {
    let sim = spawn_fast().await;
    let body = llama_body("Compare caches.");
    let mut openai = body.clone();
    openai["model"] = json!(QWEN);
    let a = completions(&sim, &openai).await.json();
    let b = signed(
        &sim,
        QWEN_EP,
        SageMakerOperation::InvokeEndpoint,
        &body,
        &[],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap()
    .json();
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    let c = signed(
        &sim,
        LLAMA_EP,
        SageMakerOperation::InvokeEndpoint,
        &body,
        &[],
        TEST_SECRET,
        "sagemaker",
    )
    .await
    .unwrap()
    .json();
    assert_ne!(
        a["choices"][0]["message"], c["choices"][0]["message"],
        "another model answers its own way"
    );
}
