//! Upstreams that are not Bedrock, driven by the Rust SDK: an OpenAI-compatible
//! server (the simulator's OpenAI face) answers a Converse app when Bedrock
//! throttles, as a Converse answer the SDK cannot tell from Bedrock's; a stream
//! that breaks on such a server reaches the app as a stream error and is never
//! cached.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, InferenceConfiguration, StopReason};
use bedrock_sim::testing::{sdk_client, user_text};
use bedrock_sim::{Face, FaceMatch, FaultKind, FaultRule, SimConfig};
use common::*;

/// A simulator, and a proxy whose `haiku` route falls back to the
/// simulator's OpenAI face (`upstreams.vllm`), and whose `self` route is
/// served there, with its response cache on.
async fn stack_with_a_self_hosted_model() -> Stack {
    let sim = bedrock_sim::testing::spawn(SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    })
    .await;
    let extra = format!(
        r#"
[upstreams.vllm]
kind = "openai"
base_url = "{}/v1"
[[routes]]
name = "self"
aliases = ["self"]
upstream = "vllm"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
cache = {{ mode = "deterministic" }}
"#,
        sim.url()
    );
    let fallback = r#"fallback = [{ upstream = "vllm", model = "qwen2.5-72b-instruct" }]"#;
    let proxy = proxy_for(&sim.url(), "", fallback, &extra).await;
    Stack { sim, proxy }
}

async fn events(
    mut out: aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput,
) -> Result<Vec<ConverseStreamOutput>, String> {
    let mut all = Vec::new();
    loop {
        match out.stream.recv().await {
            Ok(Some(event)) => all.push(event),
            Ok(None) => return Ok(all),
            Err(e) => return Err(format!("{:?}", e.into_service_error())),
        }
    }
}

fn text(events: &[ConverseStreamOutput]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ConverseStreamOutput::ContentBlockDelta(d) => d.delta()?.as_text().ok().cloned(),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_throttled_bedrock_is_answered_by_a_self_hosted_model() {
    let s = stack_with_a_self_hosted_model().await;
    s.sim.sim.state().faults.add(FaultRule {
        model: Some("haiku".into()),
        ..FaultRule::new(FaultKind::Throttle)
    });
    let client = sdk_client(&s.url());
    let out = client
        .converse()
        .model_id("haiku")
        .messages(user_text("Name a colour."))
        .send()
        .await
        .unwrap();
    let message = out.output().unwrap().as_message().unwrap();
    assert!(!message.content()[0].as_text().unwrap().is_empty());
    assert!(matches!(
        out.stop_reason(),
        StopReason::EndTurn | StopReason::MaxTokens
    ));
    let usage = out.usage().unwrap();
    assert!(usage.input_tokens() > 0 && usage.output_tokens() > 0);

    let streamed = events(
        client
            .converse_stream()
            .model_id("haiku")
            .messages(user_text("Name a colour."))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(matches!(
        streamed.first(),
        Some(ConverseStreamOutput::MessageStart(_))
    ));
    let Some(ConverseStreamOutput::Metadata(meta)) = streamed.last() else {
        panic!("a stream ends with its metadata: {streamed:?}");
    };
    assert!(meta.usage().unwrap().output_tokens() > 0);
    assert!(!text(&streamed).is_empty());

    let r = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("Name a colour.").to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-proxy-upstream"], "vllm");
    assert_eq!(r.headers["x-proxy-served-model"], "qwen2.5-72b-instruct");
    let faces: Vec<Face> = s.upstream_requests().iter().map(|r| r.face).collect();
    assert_eq!(
        faces,
        [Face::Bedrock, Face::OpenAi].repeat(3),
        "each call: Bedrock throttles, the self-hosted model answers"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_stream_broken_by_a_self_hosted_server_is_an_error_and_never_cached() {
    let s = stack_with_a_self_hosted_model().await;
    s.sim.sim.state().faults.add(FaultRule {
        face: Some(FaceMatch::OpenAi),
        after_events: Some(3),
        times: Some(1),
        ..FaultRule::new(FaultKind::MidstreamError)
    });
    let client = sdk_client(&s.url());
    let ask = || {
        client
            .converse_stream()
            .model_id("self")
            .messages(user_text("Tell me about the sea."))
            .inference_config(
                InferenceConfiguration::builder()
                    .temperature(0.0)
                    .max_tokens(60)
                    .build(),
            )
            .send()
    };
    let broken = events(ask().await.unwrap()).await.unwrap_err();
    assert!(broken.contains("ModelStreamErrorException"), "{broken}");
    let whole = events(ask().await.unwrap()).await.unwrap();
    assert!(!text(&whole).is_empty());
    let again = events(ask().await.unwrap()).await.unwrap();
    assert_eq!(text(&again), text(&whole));
    assert_eq!(
        s.upstream_requests().len(),
        2,
        "the broken stream was not stored; the complete one was, and answered the third call"
    );
    s.shutdown().await;
}
