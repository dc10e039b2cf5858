//! Bedrock Runtime's guardrail and async-invoke operations through the proxy,
//! driven by the Rust SDK as an app drives Bedrock: ApplyGuardrail,
//! InvokeGuardrailChecks, StartAsyncInvoke, GetAsyncInvoke and
//! ListAsyncInvokes answer as the simulator behind the proxy does, a key may
//! use only the guardrails and async models its config names (Bedrock's
//! AccessDeniedException otherwise, before any upstream call), and none of
//! them is cached. (boto3 drives the same operations in
//! tests/python/test_runtime_operations.py; the bidirectional stream is in
//! tests/bidirectional.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::types::{AsyncInvokeStatus, GuardrailAction, GuardrailContentSource};
use bedrock_sim::testing::{guarded_text, s3, sdk_client, sdk_client_signed, video_input};
use bedrock_sim::SimConfig;
use common::*;
use std::time::Duration;

const REEL: &str = "amazon.nova-reel-v1:1";

/// A route for Nova Reel, and tenant `team-c` (a SigV4 key) allowed one other
/// guardrail and no async-invoke model.
const EXTRA: &str = r#"
[[routes]]
name = "reel"
aliases = ["reel"]
models = ["amazon.nova-reel-v1:1"]
upstream = "sim"
[[keys]]
tenant = "team-c"
access_key_id = "AKIDTEAMC"
secret_access_key = "team-c-secret"
guardrails = ["otherguardrail"]
async_invoke_models = []
"#;

async fn ops_stack() -> Stack {
    stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "",
        EXTRA,
    )
    .await
}

#[tokio::test]
async fn apply_guardrail_answers_through_the_proxy_every_time() {
    let s = ops_stack().await;
    let client = sdk_client(&s.url());
    for _ in 0..2 {
        let out = client
            .apply_guardrail()
            .guardrail_identifier("demoguardrail")
            .guardrail_version("1")
            .source(GuardrailContentSource::Input)
            .content(guarded_text("Tell me the Forbidden recipe."))
            .send()
            .await
            .unwrap();
        assert_eq!(out.action(), &GuardrailAction::GuardrailIntervened);
        assert_eq!(
            out.outputs()[0].text(),
            Some("Sorry, the model cannot answer this question.")
        );
    }
    let pass = client
        .apply_guardrail()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("DRAFT")
        .source(GuardrailContentSource::Output)
        .content(guarded_text("A perfectly fine sentence."))
        .send()
        .await
        .unwrap();
    assert_eq!(pass.action(), &GuardrailAction::None);
    // Bedrock's own errors reach the SDK as Bedrock's.
    let missing = client
        .apply_guardrail()
        .guardrail_identifier("nosuchguardrail")
        .guardrail_version("1")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("x"))
        .send()
        .await
        .unwrap_err();
    assert!(missing
        .into_service_error()
        .is_resource_not_found_exception());
    let applied = s
        .upstream_requests()
        .iter()
        .filter(|r| r.path.ends_with("/apply"))
        .count();
    assert_eq!(applied, 4, "never answered from a cache");
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_uses_only_the_guardrails_and_async_models_it_is_given() {
    let s = ops_stack().await;
    let client = sdk_client_signed(&s.url(), "AKIDTEAMC", "team-c-secret");
    let before = s.upstream_requests().len();
    let refused = client
        .apply_guardrail()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("1")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("hello"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(refused.is_access_denied_exception(), "{refused:?}");
    let refused = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A dog surfing"))
        .output_data_config(s3("s3://my-videos/dogs/"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(refused.is_access_denied_exception(), "{refused:?}");
    assert_eq!(
        s.upstream_requests().len(),
        before,
        "refused requests never reach the upstream"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_async_video_job_is_started_followed_and_listed_through_the_proxy() {
    let s = stack_with(
        SimConfig {
            time_scale: 1.0,
            ..SimConfig::default()
        },
        "",
        EXTRA,
    )
    .await;
    let client = sdk_client(&s.url());
    let started = client
        .start_async_invoke()
        .model_id("reel")
        .model_input(video_input("A dog surfing at sunset"))
        .output_data_config(s3("s3://my-videos/dogs/"))
        .client_request_token("job-1")
        .send()
        .await
        .unwrap();
    let arn = started.invocation_arn().to_owned();
    assert!(arn.contains(":async-invoke/"), "{arn}");

    let running = client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), &AsyncInvokeStatus::InProgress);
    assert_eq!(
        running.client_request_token(),
        Some("job-1"),
        "the client sees its own token back"
    );
    // A 6-second video takes 90 simulated seconds.
    s.sim.sim.state().clock.advance(Duration::from_secs(91));
    let done = client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), &AsyncInvokeStatus::Completed);

    let listed = client.list_async_invokes().send().await.unwrap();
    let summaries = listed.async_invoke_summaries();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].invocation_arn(), arn);
    assert_eq!(summaries[0].client_request_token(), Some("job-1"));
    s.shutdown().await;
}
