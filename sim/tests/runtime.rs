//! The rest of Bedrock Runtime through the official Rust SDK: service tiers
//! (echo, validation, flex quota and faults, timing), prompt routers, guardrails
//! (ApplyGuardrail, InvokeGuardrailChecks, guardrail-configured Converse and
//! InvokeModel), async invocations on the simulated clock, and the
//! bidirectional stream (HTTP/1.1 and h2c), each as an application uses them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AsyncInvokeStatus, BidirectionalInputPayloadPart, ContentBlock, ConversationRole,
    ConverseStreamOutput, GuardrailAction, GuardrailChecksConfig, GuardrailChecksContentBlock,
    GuardrailChecksContentFilterCategory, GuardrailChecksContentFilterCategoryConfig,
    GuardrailChecksContentFilterConfig, GuardrailChecksMessage, GuardrailChecksRole,
    GuardrailChecksSensitiveInformationConfig, GuardrailChecksSensitiveInformationEntityConfig,
    GuardrailChecksSensitiveInformationEntityType, GuardrailConfiguration, GuardrailContentSource,
    GuardrailConverseContentBlock, GuardrailConverseTextBlock, GuardrailTrace,
    InferenceConfiguration, InvokeModelWithBidirectionalStreamInput,
    InvokeModelWithBidirectionalStreamOutput, Message, ServiceTier, ServiceTierType, SortOrder,
    StopReason, Trace,
};
use aws_smithy_types::Document;
use bedrock_sim::guardrail::GuardrailConfig;
use bedrock_sim::testing::{
    guarded_text, s3, sdk_client, spawn, spawn_fast, user_text, video_input,
};
use bedrock_sim::{FaultKind, FaultRule, SimConfig, SimHandle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const NOVA_PRO: &str = "us.amazon.nova-pro-v1:0";
const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const REEL: &str = "amazon.nova-reel-v1:1";
const SONIC: &str = "amazon.nova-sonic-v1:0";
const CLAUDE_ROUTER: &str =
    "arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/anthropic.claude:1";
const LLAMA_ROUTER: &str =
    "arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/meta.llama:1";

fn tier(t: ServiceTierType) -> ServiceTier {
    ServiceTier::builder()
        .r#type(t)
        .build()
        .expect("type is set")
}

fn text_of(out: &aws_sdk_bedrockruntime::operation::converse::ConverseOutput) -> String {
    out.output()
        .and_then(|o| o.as_message().ok())
        .map(|m| {
            m.content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<String>()
        })
        .unwrap_or_default()
}

async fn stats(sim: &SimHandle) -> Value {
    sim.sim.state().stats.snapshot()
}

// ---- Service tiers ------------------------------------------------------

#[tokio::test]
async fn service_tiers_are_echoed_where_offered_and_refused_elsewhere() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());

    for t in [
        ServiceTierType::Priority,
        ServiceTierType::Default,
        ServiceTierType::Flex,
    ] {
        let out = client
            .converse()
            .model_id(NOVA_PRO)
            .messages(user_text("Summarize the plot of Hamlet."))
            .service_tier(tier(t.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e:?}"));
        assert_eq!(out.service_tier().map(|s| s.r#type()), Some(&t));
    }
    let plain = client
        .converse()
        .model_id(NOVA_PRO)
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    assert!(plain.service_tier().is_none(), "no tier asked, none named");

    let mut stream = client
        .converse_stream()
        .model_id(NOVA_PRO)
        .messages(user_text("Summarize the plot of Hamlet."))
        .service_tier(tier(ServiceTierType::Flex))
        .send()
        .await
        .unwrap();
    let mut streamed_tier = None;
    while let Some(event) = stream.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::Metadata(m) = event {
            streamed_tier = m.service_tier().map(|s| s.r#type().clone());
        }
    }
    assert_eq!(streamed_tier, Some(ServiceTierType::Flex));

    let err = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .service_tier(tier(ServiceTierType::Flex))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    assert!(err.message().unwrap().contains("flex"), "{err:?}");

    let err = client
        .converse()
        .model_id(NOVA_PRO)
        .messages(user_text("hi"))
        .service_tier(tier(ServiceTierType::Reserved))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.message(), Some("Reservation not found."));

    let invoke = client
        .invoke_model()
        .model_id(HAIKU)
        .service_tier(ServiceTierType::Default)
        .body(Blob::new(
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(invoke.service_tier(), Some(&ServiceTierType::Default));
    let err = client
        .invoke_model()
        .model_id(HAIKU)
        .service_tier(ServiceTierType::Priority)
        .body(Blob::new(
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        ))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));

    let s = stats(&sim).await;
    assert_eq!(s["served_service_tier"]["flex"], 2);
    assert_eq!(s["served_service_tier"]["priority"], 1);
}

#[tokio::test]
async fn reserved_capacity_is_served_where_the_account_has_it() {
    let sim = spawn(SimConfig {
        time_scale: 0.0,
        reserved: vec!["amazon.nova-pro-v1:0".into()],
        ..SimConfig::default()
    })
    .await;
    let out = sdk_client(&sim.url())
        .converse()
        .model_id(NOVA_PRO)
        .messages(user_text("hi"))
        .service_tier(tier(ServiceTierType::Reserved))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.service_tier().map(|s| s.r#type()),
        Some(&ServiceTierType::Reserved)
    );
}

#[tokio::test]
async fn flex_is_throttled_past_its_quota_and_default_still_serves() {
    let sim = spawn(SimConfig {
        time_scale: 0.0,
        flex_rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let ask = |t: ServiceTierType| {
        client
            .converse()
            .model_id(NOVA_PRO)
            .messages(user_text("Label this review: great product."))
            .service_tier(tier(t))
            .send()
    };
    ask(ServiceTierType::Flex).await.unwrap();
    ask(ServiceTierType::Flex).await.unwrap();
    let err = ask(ServiceTierType::Flex).await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert!(err.into_service_error().is_throttling_exception());
    ask(ServiceTierType::Default).await.unwrap();
    ask(ServiceTierType::Priority).await.unwrap();
    // The quota is per minute of simulated time.
    sim.sim.state().clock.advance(Duration::from_secs(61));
    ask(ServiceTierType::Flex).await.unwrap();
    assert_eq!(stats(&sim).await["flex_throttled"], 1);
}

#[tokio::test]
async fn a_fault_rule_can_target_one_service_tier() {
    let sim = spawn_fast().await;
    sim.sim.state().faults.add(FaultRule {
        service_tier: Some("flex".into()),
        times: Some(1),
        ..FaultRule::new(FaultKind::Throttle)
    });
    let client = sdk_client(&sim.url());
    let ask = |t: ServiceTierType| {
        client
            .converse()
            .model_id(NOVA_PRO)
            .messages(user_text("hi"))
            .service_tier(tier(t))
            .send()
    };
    ask(ServiceTierType::Default).await.unwrap();
    let err = ask(ServiceTierType::Flex).await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    ask(ServiceTierType::Flex).await.unwrap();
    assert_eq!(stats(&sim).await["faults_fired"], 1);
}

#[tokio::test]
async fn fault_rules_match_face_service_tier_and_operation_together() {
    let sim = spawn_fast().await;
    let faults = format!("{}/_sim/faults", sim.url());
    let add = |rule: Value| bedrock_sim::testing::post_json(&faults, rule.to_string());
    let added = add(json!({"face": "any", "service_tier": "flex", "operation": "converse", "fault": "throttle"}))
        .await
        .unwrap();
    assert_eq!(added.status.as_u16(), 201);
    // A service tier is Bedrock's: a rule naming one for another face alone
    // could never fire, so it is refused.
    let refused = add(json!({"face": "openai", "service_tier": "flex", "fault": "throttle"}))
        .await
        .unwrap();
    assert_eq!(refused.status.as_u16(), 400);

    let client = sdk_client(&sim.url());
    let converse = |t: ServiceTierType| {
        client
            .converse()
            .model_id(NOVA_PRO)
            .messages(user_text("hi"))
            .service_tier(tier(t))
            .send()
    };
    let err = converse(ServiceTierType::Flex).await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    converse(ServiceTierType::Default).await.unwrap();
    let streamed = client
        .converse_stream()
        .model_id(NOVA_PRO)
        .messages(user_text("hi"))
        .service_tier(tier(ServiceTierType::Flex))
        .send()
        .await;
    assert!(streamed.is_ok(), "the rule names converse only");

    // The OpenAI face has no service tiers: a rule for every face that names
    // one (even `default`, which also matches a Bedrock request naming none)
    // leaves it alone and stays installed for the next Bedrock request.
    let added =
        add(json!({"face": "any", "service_tier": "default", "fault": "unavailable", "times": 1}))
            .await
            .unwrap();
    assert_eq!(added.status.as_u16(), 201);
    let chat = bedrock_sim::testing::post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        json!({"model": "qwen2.5-72b-instruct", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(chat.status.as_u16(), 200);
    let err = client
        .converse()
        .model_id(NOVA_PRO)
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ServiceUnavailableException"));

    let s = stats(&sim).await;
    assert_eq!(s["faults_fired"], 2);
    assert_eq!(s["by_face"]["bedrock"], 4);
    assert_eq!(s["by_face"]["openai"], 1);
}

#[tokio::test]
async fn embedding_models_take_service_tiers_as_text_models_do() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let embed = |t: Option<ServiceTierType>| {
        client
            .invoke_model()
            .model_id("amazon.titan-embed-text-v2:0")
            .body(Blob::new(json!({"inputText": "a cat"}).to_string()))
            .set_service_tier(t)
            .send()
    };
    let out = embed(Some(ServiceTierType::Default)).await.unwrap();
    assert_eq!(out.service_tier(), Some(&ServiceTierType::Default));
    let body: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert_eq!(body["embedding"].as_array().unwrap().len(), 1024);
    let plain = embed(None).await.unwrap();
    assert!(plain.service_tier().is_none(), "no tier asked, none named");
    let err = embed(Some(ServiceTierType::Flex)).await.unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    assert!(
        err.message().unwrap_or_default().contains("flex"),
        "{err:?}"
    );
    assert_eq!(stats(&sim).await["served_service_tier"]["default"], 2);
}

#[tokio::test]
async fn priority_answers_report_less_latency_than_flex() {
    // A small time scale keeps the test quick; latencyMs is the simulated time.
    let sim = spawn(SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let latency = |t: ServiceTierType| {
        let client = client.clone();
        async move {
            let out = client
                .converse()
                .model_id(NOVA_PRO)
                .messages(user_text("Write a haiku about autumn."))
                .inference_config(
                    InferenceConfiguration::builder()
                        .temperature(0.0)
                        .max_tokens(20)
                        .build(),
                )
                .service_tier(tier(t))
                .send()
                .await
                .unwrap();
            out.metrics().unwrap().latency_ms()
        }
    };
    let priority = latency(ServiceTierType::Priority).await;
    let default = latency(ServiceTierType::Default).await;
    let flex = latency(ServiceTierType::Flex).await;
    assert!(
        priority < default && default < flex,
        "priority {priority} ms, default {default} ms, flex {flex} ms"
    );
}

// ---- Prompt routers -----------------------------------------------------

#[tokio::test]
async fn a_prompt_router_answers_as_the_model_it_picks_and_says_which() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let routed = |prompt: &'static str| {
        let client = client.clone();
        async move {
            let out = client
                .converse()
                .model_id(CLAUDE_ROUTER)
                .messages(user_text(prompt))
                .send()
                .await
                .unwrap();
            assert!(!text_of(&out).is_empty());
            out.trace()
                .and_then(|t| t.prompt_router())
                .and_then(|r| r.invoked_model_id())
                .expect("trace.promptRouter.invokedModelId")
                .to_owned()
        }
    };
    let simple = routed("What is the capital of France?").await;
    assert_eq!(
        simple,
        "arn:aws:bedrock:us-east-2:111122223333:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
    );
    let hard = routed(
        "Explain why a B-tree beats a binary search tree on disk, and compare their cache behaviour.",
    )
    .await;
    assert!(
        hard.ends_with("us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
        "{hard}"
    );
    assert_eq!(
        routed("What is the capital of France?").await,
        simple,
        "routing is deterministic"
    );

    let mut stream = client
        .converse_stream()
        .model_id(CLAUDE_ROUTER)
        .messages(user_text("What is the capital of France?"))
        .send()
        .await
        .unwrap();
    let mut invoked = None;
    while let Some(event) = stream.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::Metadata(m) = event {
            invoked = m
                .trace()
                .and_then(|t| t.prompt_router())
                .and_then(|r| r.invoked_model_id())
                .map(str::to_owned);
        }
    }
    assert_eq!(invoked.as_deref(), Some(simple.as_str()));

    let invoke = client
        .invoke_model()
        .model_id(LLAMA_ROUTER)
        .body(Blob::new(
            json!({"prompt": "Hello!", "max_gen_len": 20}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(invoke.body().as_ref()).unwrap();
    assert!(body["generation"].is_string());
    assert!(
        body["amazon-bedrock-trace"]["promptRouter"]["invokedModelId"]
            .as_str()
            .unwrap()
            .ends_with("us.meta.llama3-1-8b-instruct-v1:0")
    );

    let s = stats(&sim).await;
    assert_eq!(
        s["prompt_router"]["anthropic.claude:1"]["us.anthropic.claude-3-haiku-20240307-v1:0"],
        3
    );

    let err = client
        .converse()
        .model_id("arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/mistral.large:1")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
}

// ---- Guardrails ---------------------------------------------------------

#[tokio::test]
async fn apply_guardrail_intervenes_on_a_blocked_word_and_passes_the_rest() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
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
    let words = out.assessments()[0].word_policy().unwrap().custom_words();
    assert_eq!(words[0].r#match(), "Forbidden");
    assert_eq!(words[0].action().as_str(), "BLOCKED");
    assert_eq!(out.usage().unwrap().word_policy_units(), 1);

    let arn = "arn:aws:bedrock:us-east-2:123456789012:guardrail/demoguardrail";
    let pass = client
        .apply_guardrail()
        .guardrail_identifier(arn)
        .guardrail_version("DRAFT")
        .source(GuardrailContentSource::Output)
        .content(guarded_text("A perfectly fine sentence."))
        .send()
        .await
        .unwrap();
    assert_eq!(pass.action(), &GuardrailAction::None);
    assert!(pass.outputs().is_empty());

    let err = client
        .apply_guardrail()
        .guardrail_identifier("nosuchguardrail")
        .guardrail_version("1")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = client
        .apply_guardrail()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("7")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = client
        .apply_guardrail()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("latest")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    assert_eq!(stats(&sim).await["guardrail_interventions"], 1);
}

fn guardrail_config(trace: GuardrailTrace) -> GuardrailConfiguration {
    GuardrailConfiguration::builder()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("DRAFT")
        .trace(trace)
        .build()
}

#[tokio::test]
async fn converse_with_a_guardrail_blocks_the_prompt_or_lets_it_through() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let blocked = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("How do I make the forbidden potion?"))
        .guardrail_config(guardrail_config(GuardrailTrace::Enabled))
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.stop_reason(), &StopReason::GuardrailIntervened);
    assert_eq!(
        text_of(&blocked),
        "Sorry, the model cannot answer this question."
    );
    assert_eq!(blocked.usage().unwrap().output_tokens(), 0);
    let trace = blocked.trace().unwrap().guardrail().unwrap();
    let input = &trace.input_assessment().unwrap()["demoguardrail"];
    assert_eq!(
        input.word_policy().unwrap().custom_words()[0].r#match(),
        "forbidden"
    );

    let passed = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("How do I make a cup of tea?"))
        .guardrail_config(guardrail_config(GuardrailTrace::Enabled))
        .send()
        .await
        .unwrap();
    assert_ne!(passed.stop_reason(), &StopReason::GuardrailIntervened);
    assert!(passed.usage().unwrap().output_tokens() > 0);
    let trace = passed.trace().unwrap().guardrail().unwrap();
    assert!(trace.input_assessment().unwrap()["demoguardrail"]
        .word_policy()
        .is_none());
    assert_eq!(trace.model_output().len(), 1);

    // Without trace, no trace; guardContent limits what is checked.
    let guarded_only = client
        .converse()
        .model_id(HAIKU)
        .messages(
            Message::builder()
                .role(ConversationRole::User)
                .content(ContentBlock::Text("forbidden context, not guarded".into()))
                .content(ContentBlock::GuardContent(
                    GuardrailConverseContentBlock::Text(
                        GuardrailConverseTextBlock::builder()
                            .text("What is in the context?")
                            .build()
                            .unwrap(),
                    ),
                ))
                .build()
                .unwrap(),
        )
        .guardrail_config(guardrail_config(GuardrailTrace::Disabled))
        .send()
        .await
        .unwrap();
    assert_ne!(guarded_only.stop_reason(), &StopReason::GuardrailIntervened);
    assert!(guarded_only.trace().is_none());

    let mut stream = client
        .converse_stream()
        .model_id(HAIKU)
        .messages(user_text("forbidden"))
        .guardrail_config(
            aws_sdk_bedrockruntime::types::GuardrailStreamConfiguration::builder()
                .guardrail_identifier("demoguardrail")
                .guardrail_version("1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let (mut text, mut stop) = (String::new(), None);
    while let Some(event) = stream.stream.recv().await.unwrap() {
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                text.push_str(d.delta().unwrap().as_text().unwrap())
            }
            ConverseStreamOutput::MessageStop(s) => stop = Some(s.stop_reason().clone()),
            _ => {}
        }
    }
    assert_eq!(stop, Some(StopReason::GuardrailIntervened));
    assert_eq!(text, "Sorry, the model cannot answer this question.");

    let err = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .guardrail_config(
            GuardrailConfiguration::builder()
                .guardrail_identifier("nosuchguardrail")
                .guardrail_version("1")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    assert_eq!(
        err.message(),
        Some("The guardrail identifier or version provided in the request does not exist.")
    );
}

#[tokio::test]
async fn a_guardrail_on_the_answer_replaces_it_after_the_model_ran() {
    // A long answer uses some of these common words; at temperature 0 it is
    // always the same answer.
    let common = [
        "the", "a", "and", "of", "to", "is", "in", "it", "with", "for",
    ];
    let sim = spawn(SimConfig {
        time_scale: 0.0,
        guardrails: vec![GuardrailConfig {
            id: "strict".into(),
            versions: vec!["DRAFT".into()],
            words: common.iter().map(|w| (*w).to_owned()).collect(),
            blocked_input_message: "Input blocked.".into(),
            blocked_output_message: "Output blocked.".into(),
        }],
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let out = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("Say something long."))
        .inference_config(
            InferenceConfiguration::builder()
                .temperature(0.0)
                .max_tokens(300)
                .build(),
        )
        .guardrail_config(
            GuardrailConfiguration::builder()
                .guardrail_identifier("strict")
                .guardrail_version("DRAFT")
                .trace(GuardrailTrace::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.stop_reason(), &StopReason::GuardrailIntervened);
    assert_eq!(text_of(&out), "Output blocked.");
    assert!(out.usage().unwrap().output_tokens() > 0, "the model ran");
    let trace = out.trace().unwrap().guardrail().unwrap();
    let outputs = &trace.output_assessments().unwrap()["strict"];
    assert!(outputs[0].word_policy().is_some());
    let said = trace.model_output()[0].to_lowercase();
    assert!(said
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| common.contains(&w)));

    let invoke = client
        .invoke_model()
        .model_id(HAIKU)
        .guardrail_identifier("strict")
        .guardrail_version("DRAFT")
        .trace(Trace::Enabled)
        .body(Blob::new(
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300, "temperature": 0,
                "messages": [{"role": "user", "content": "Say something long."}]})
            .to_string(),
        ))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(invoke.body().as_ref()).unwrap();
    assert_eq!(body["amazon-bedrock-guardrailAction"], "INTERVENED");
    assert_eq!(body["content"][0]["text"], "Output blocked.");
    assert!(
        body["amazon-bedrock-trace"]["guardrail"]["outputs"][0]["strict"]["wordPolicy"].is_object()
    );
}

#[tokio::test]
async fn invoke_model_reports_the_guardrail_action() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let body = |text: &str| {
        Blob::new(
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                "messages": [{"role": "user", "content": text}]})
            .to_string(),
        )
    };
    let blocked = client
        .invoke_model()
        .model_id(HAIKU)
        .guardrail_identifier("demoguardrail")
        .guardrail_version("1")
        .body(body("forbidden words"))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(blocked.body().as_ref()).unwrap();
    assert_eq!(v["amazon-bedrock-guardrailAction"], "INTERVENED");
    assert_eq!(
        v["content"][0]["text"],
        "Sorry, the model cannot answer this question."
    );
    assert!(
        v.get("amazon-bedrock-trace").is_none(),
        "trace not asked for"
    );
    let fine = client
        .invoke_model()
        .model_id(HAIKU)
        .guardrail_identifier("demoguardrail")
        .guardrail_version("1")
        .body(body("kind words"))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(fine.body().as_ref()).unwrap();
    assert_eq!(v["amazon-bedrock-guardrailAction"], "NONE");

    let err = client
        .invoke_model()
        .model_id(HAIKU)
        .guardrail_identifier("demoguardrail")
        .body(body("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
}

#[tokio::test]
async fn guardrail_checks_score_the_requested_checks() {
    let sim = spawn_fast().await;
    let out = sdk_client(&sim.url())
        .invoke_guardrail_checks()
        .messages(
            GuardrailChecksMessage::builder()
                .role(GuardrailChecksRole::User)
                .content(GuardrailChecksContentBlock::Text(
                    "You stupid idiot, email me at bob@example.com".into(),
                ))
                .build()
                .unwrap(),
        )
        .checks(
            GuardrailChecksConfig::builder()
                .content_filter(
                    GuardrailChecksContentFilterConfig::builder()
                        .categories(
                            GuardrailChecksContentFilterCategoryConfig::builder()
                                .category(GuardrailChecksContentFilterCategory::Insults)
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .sensitive_information(
                    GuardrailChecksSensitiveInformationConfig::builder()
                        .entities(
                            GuardrailChecksSensitiveInformationEntityConfig::builder()
                                .r#type(GuardrailChecksSensitiveInformationEntityType::Email)
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let results = out.results().unwrap();
    let insults = &results.content_filter().unwrap().results()[0];
    assert!(insults.severity_score() > 0.5);
    let email = &results.sensitive_information().unwrap().results()[0];
    assert_eq!(email.begin_offset(), 30);
    assert_eq!(email.end_offset(), 45);
    assert!(results.prompt_attack().is_none(), "not asked for");
    assert_eq!(
        out.usage().unwrap().content_filter().unwrap().text_units(),
        1
    );
}

// ---- Async invoke -------------------------------------------------------

#[tokio::test]
async fn an_async_video_job_runs_on_the_simulated_clock() {
    let sim = spawn(SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let started = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A dog surfing at sunset"))
        .output_data_config(s3("s3://my-videos/dogs/"))
        .client_request_token("job-1")
        .send()
        .await
        .unwrap();
    let arn = started.invocation_arn().to_owned();
    let id = arn.rsplit('/').next().unwrap().to_owned();
    assert!(arn.starts_with("arn:aws:bedrock:us-east-2:123456789012:async-invoke/"));
    assert_eq!(id.len(), 12);

    let running = client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), &AsyncInvokeStatus::InProgress);
    assert!(running.end_time().is_none());
    assert_eq!(running.client_request_token(), Some("job-1"));
    assert_eq!(
        running.model_arn(),
        "arn:aws:bedrock:us-east-2::foundation-model/amazon.nova-reel-v1:1"
    );

    // A 6-second video takes 90 simulated seconds.
    sim.sim.state().clock.advance(Duration::from_secs(60));
    let still = client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), &AsyncInvokeStatus::InProgress);
    sim.sim.state().clock.advance(Duration::from_secs(31));
    let done = client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), &AsyncInvokeStatus::Completed);
    let end = done.end_time().expect("endTime");
    assert!(end.secs() - done.submit_time().secs() >= 90);
    assert_eq!(done.last_modified_time(), Some(end));
    let output = done
        .output_data_config()
        .unwrap()
        .as_s3_output_data_config()
        .unwrap();
    assert_eq!(output.s3_uri(), format!("s3://my-videos/dogs/{id}"));

    // The same token and request: the same job; the token reused: a conflict.
    let again = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A dog surfing at sunset"))
        .output_data_config(s3("s3://my-videos/dogs/"))
        .client_request_token("job-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.invocation_arn(), arn);
    let err = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A cat surfing"))
        .output_data_config(s3("s3://my-videos/dogs/"))
        .client_request_token("job-1")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_conflict_exception());
    assert_eq!(stats(&sim).await["async_jobs_started"], 1);
}

#[tokio::test]
async fn async_jobs_list_filter_sort_page_and_fail_by_fault() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let mut arns = Vec::new();
    for i in 0..3 {
        if i == 2 {
            sim.sim.state().faults.add(FaultRule {
                operation: Some("start-async-invoke".into()),
                times: Some(1),
                message: Some("The video was blocked by content filters.".into()),
                ..FaultRule::new(FaultKind::JobFailure)
            });
        }
        let out = client
            .start_async_invoke()
            .model_id(REEL)
            .model_input(video_input(&format!("Scene {i}")))
            .output_data_config(s3("s3://bucket-a/out"))
            .send()
            .await
            .unwrap();
        arns.push(out.invocation_arn().to_owned());
        sim.sim.state().clock.advance(Duration::from_secs(2));
    }
    let all = client.list_async_invokes().send().await.unwrap();
    let listed: Vec<&str> = all
        .async_invoke_summaries()
        .iter()
        .map(|s| s.invocation_arn())
        .collect();
    assert_eq!(listed, [&*arns[2], &*arns[1], &*arns[0]], "newest first");

    let failed = client
        .list_async_invokes()
        .status_equals(AsyncInvokeStatus::Failed)
        .send()
        .await
        .unwrap();
    assert_eq!(failed.async_invoke_summaries().len(), 1);
    assert_eq!(
        failed.async_invoke_summaries()[0].failure_message(),
        Some("The video was blocked by content filters.")
    );

    let first = client
        .list_async_invokes()
        .sort_order(SortOrder::Ascending)
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.async_invoke_summaries().len(), 2);
    assert_eq!(first.async_invoke_summaries()[0].invocation_arn(), arns[0]);
    let token = first.next_token().expect("a second page");
    let second = client
        .list_async_invokes()
        .sort_order(SortOrder::Ascending)
        .max_results(2)
        .next_token(token)
        .send()
        .await
        .unwrap();
    assert_eq!(second.async_invoke_summaries().len(), 1);
    assert_eq!(second.async_invoke_summaries()[0].invocation_arn(), arns[2]);
    assert!(second.next_token().is_none());

    let after = client
        .list_async_invokes()
        .submit_time_after(*all.async_invoke_summaries()[1].submit_time())
        .send()
        .await
        .unwrap();
    assert_eq!(after.async_invoke_summaries().len(), 1);
}

#[tokio::test]
async fn async_invoke_refuses_what_bedrock_refuses() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let err = client
        .start_async_invoke()
        .model_id(HAIKU)
        .model_input(video_input("x"))
        .output_data_config(s3("s3://bucket-a/out"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    let err = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(Document::Object(HashMap::new()))
        .output_data_config(s3("s3://bucket-a/out"))
        .send()
        .await
        .unwrap_err();
    assert!(err.message().unwrap().contains("taskType"), "{err:?}");
    let err = client
        .get_async_invoke()
        .invocation_arn("arn:aws:bedrock:us-east-2:123456789012:async-invoke/abcdefabcdef")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    let err = client
        .converse()
        .model_id(REEL)
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
}

// ---- Bidirectional stream -----------------------------------------------

/// The events sent on `rx`, as the SDK's input stream. Fused: the SDK polls
/// once more after the end.
fn input_stream(
    rx: tokio::sync::mpsc::Receiver<InvokeModelWithBidirectionalStreamInput>,
) -> impl futures_util::Stream<
    Item = Result<
        InvokeModelWithBidirectionalStreamInput,
        aws_sdk_bedrockruntime::types::error::InvokeModelWithBidirectionalStreamInputError,
    >,
> + Send
       + 'static {
    use futures_util::StreamExt;
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
    .fuse()
}

fn chunk(event: Value) -> InvokeModelWithBidirectionalStreamInput {
    InvokeModelWithBidirectionalStreamInput::Chunk(
        BidirectionalInputPayloadPart::builder()
            .bytes(Blob::new(event.to_string()))
            .build(),
    )
}

/// The name and body of a Nova Sonic output event.
fn sonic_event(out: InvokeModelWithBidirectionalStreamOutput) -> (String, Value) {
    let InvokeModelWithBidirectionalStreamOutput::Chunk(part) = out else {
        panic!("a chunk expected, got {out:?}");
    };
    let v: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
    let (name, body) = v["event"].as_object().unwrap().iter().next().unwrap();
    (name.clone(), body.clone())
}

/// Talks to the simulated Nova Sonic: each user turn is answered before the
/// next input is sent, so the answers must come as input arrives.
async fn sonic_conversation(client: aws_sdk_bedrockruntime::Client) {
    let (tx, rx) = tokio::sync::mpsc::channel::<InvokeModelWithBidirectionalStreamInput>(16);
    let input = input_stream(rx);
    tx.send(chunk(json!({"event": {"sessionStart": {"inferenceConfiguration": {"maxTokens": 256, "topP": 0.9, "temperature": 0.7}}}})))
        .await
        .unwrap();
    let mut out = client
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input.into())
        .send()
        .await
        .expect("the stream opens");
    let send = |e: Value| {
        let tx = tx.clone();
        async move { tx.send(chunk(json!({"event": e}))).await.unwrap() }
    };
    send(json!({"promptStart": {"promptName": "p1",
        "textOutputConfiguration": {"mediaType": "text/plain"},
        "audioOutputConfiguration": {"mediaType": "audio/lpcm", "sampleRateHertz": 24000, "sampleSizeBits": 16,
            "channelCount": 1, "voiceId": "matthew", "encoding": "base64", "audioType": "SPEECH"}}}))
    .await;
    send(json!({"contentStart": {"promptName": "p1", "contentName": "sys", "type": "TEXT", "interactive": false,
        "role": "SYSTEM", "textInputConfiguration": {"mediaType": "text/plain"}}}))
    .await;
    send(json!({"textInput": {"promptName": "p1", "contentName": "sys", "content": "You are a friendly assistant."}})).await;
    send(json!({"contentEnd": {"promptName": "p1", "contentName": "sys"}})).await;
    send(json!({"contentStart": {"promptName": "p1", "contentName": "q1", "type": "TEXT", "interactive": true,
        "role": "USER", "textInputConfiguration": {"mediaType": "text/plain"}}}))
    .await;
    send(json!({"textInput": {"promptName": "p1", "contentName": "q1", "content": "What's the weather like?"}})).await;
    send(json!({"contentEnd": {"promptName": "p1", "contentName": "q1"}})).await;

    // The text turn's answer arrives while the input stream is still open.
    let mut names = Vec::new();
    let mut reply = String::new();
    loop {
        let (name, body) = sonic_event(out.body.recv().await.unwrap().expect("an answer"));
        if name == "textOutput" {
            assert_eq!(body["role"], "ASSISTANT");
            reply = body["content"].as_str().unwrap().to_owned();
        }
        names.push(name.clone());
        if name == "usageEvent" {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "completionStart",
            "contentStart",
            "textOutput",
            "contentEnd",
            "usageEvent"
        ]
    );
    assert!(!reply.is_empty());

    // Then a spoken turn: a second of 16 kHz 16-bit silence, in two chunks.
    send(json!({"contentStart": {"promptName": "p1", "contentName": "a1", "type": "AUDIO", "interactive": true,
        "role": "USER", "audioInputConfiguration": {"mediaType": "audio/lpcm", "sampleRateHertz": 16000,
            "sampleSizeBits": 16, "channelCount": 1, "audioType": "SPEECH", "encoding": "base64"}}}))
    .await;
    use base64::Engine;
    let half = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 16_000]);
    for _ in 0..2 {
        send(json!({"audioInput": {"promptName": "p1", "contentName": "a1", "content": half}}))
            .await;
    }
    send(json!({"contentEnd": {"promptName": "p1", "contentName": "a1"}})).await;
    let mut audio_bytes = 0;
    let mut roles = Vec::new();
    loop {
        let (name, body) = sonic_event(out.body.recv().await.unwrap().expect("an answer"));
        match name.as_str() {
            "textOutput" => roles.push(body["role"].as_str().unwrap().to_owned()),
            "audioOutput" => {
                audio_bytes += base64::engine::general_purpose::STANDARD
                    .decode(body["content"].as_str().unwrap())
                    .unwrap()
                    .len()
            }
            "usageEvent" => {
                assert!(
                    body["details"]["delta"]["output"]["speechTokens"]
                        .as_u64()
                        .unwrap()
                        > 0
                );
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        roles,
        ["USER", "ASSISTANT", "ASSISTANT"],
        "transcript, plan, final text"
    );
    assert!(audio_bytes > 0 && audio_bytes % 2 == 0, "16-bit audio");

    send(json!({"promptEnd": {"promptName": "p1"}})).await;
    let (name, body) = sonic_event(out.body.recv().await.unwrap().unwrap());
    assert_eq!(name, "completionEnd");
    assert_eq!(body["stopReason"], "END_TURN");
    send(json!({"sessionEnd": {}})).await;
    drop(tx);
    assert!(out.body.recv().await.unwrap().is_none(), "the session ends");
}

#[tokio::test]
async fn nova_sonic_answers_each_turn_as_it_arrives() {
    let sim = spawn_fast().await;
    sonic_conversation(sdk_client(&sim.url())).await;
    let s = stats(&sim).await;
    assert_eq!(s["bidi_sessions"], 1);
    assert_eq!(s["by_operation"]["invoke-with-bidirectional-stream"], 1);
    assert_eq!(s["bidi_events_in"], 14, "every event the client sent");
    assert!(s["bidi_events_out"].as_u64().unwrap() > 10);
}

#[tokio::test]
async fn nova_sonic_speaks_http2_with_prior_knowledge() {
    let sim = spawn_fast().await;
    let mut http = hyper_014::client::HttpConnector::new();
    http.enforce_http(true);
    let h2c = aws_smithy_http_client::hyper_014::HyperClientBuilder::new()
        .hyper_builder({
            let mut b = hyper_014::client::Builder::default();
            b.http2_only(true);
            b
        })
        .build(http);
    let conf = sdk_client(&sim.url())
        .config()
        .to_builder()
        .http_client(h2c)
        .build();
    sonic_conversation(aws_sdk_bedrockruntime::Client::from_conf(conf)).await;
}

#[tokio::test]
async fn the_bidirectional_stream_refuses_other_models_and_bad_input() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let (tx, rx) = tokio::sync::mpsc::channel::<InvokeModelWithBidirectionalStreamInput>(4);
    let input = input_stream(rx);
    let err = client
        .invoke_model_with_bidirectional_stream()
        .model_id(HAIKU)
        .body(input.into())
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    drop(tx);

    let (tx, rx) = tokio::sync::mpsc::channel::<InvokeModelWithBidirectionalStreamInput>(4);
    let input = input_stream(rx);
    tx.send(chunk(
        json!({"event": {"promptStart": {"promptName": "p"}}}),
    ))
    .await
    .unwrap();
    let mut out = client
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input.into())
        .send()
        .await
        .unwrap();
    let err = out.body.recv().await.unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_validation_exception(), "{err:?}");
    assert!(err
        .meta()
        .message()
        .unwrap()
        .contains("before sessionStart"));
}

#[tokio::test]
async fn signed_requests_verify_for_streamed_uploads_and_get_requests() {
    use bedrock_sim::config::StaticCredential;
    use bedrock_sim::testing::{sdk_client_signed, TEST_ACCESS_KEY, TEST_SECRET};
    let sim = spawn(SimConfig {
        time_scale: 0.0,
        credentials: vec![StaticCredential {
            access_key_id: TEST_ACCESS_KEY.into(),
            secret_access_key: TEST_SECRET.into(),
            session_token: None,
        }],
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    sonic_conversation(client.clone()).await;
    let arn = client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A signed request"))
        .output_data_config(s3("s3://bucket-a/out"))
        .send()
        .await
        .unwrap()
        .invocation_arn()
        .to_owned();
    // The ARN travels percent-encoded in the path; the signature covers it.
    client
        .get_async_invoke()
        .invocation_arn(&arn)
        .send()
        .await
        .unwrap();
    client
        .list_async_invokes()
        .status_equals(AsyncInvokeStatus::Completed)
        .sort_order(SortOrder::Ascending)
        .max_results(5)
        .send()
        .await
        .unwrap();

    let wrong = sdk_client_signed(&sim.url(), TEST_ACCESS_KEY, "not-the-secret");
    let (_tx, rx) = tokio::sync::mpsc::channel::<InvokeModelWithBidirectionalStreamInput>(1);
    let err = wrong
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input_stream(rx).into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidSignatureException"));
    let err = wrong.list_async_invokes().send().await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidSignatureException"));
}

#[tokio::test]
async fn a_scripted_fault_cuts_the_bidirectional_stream_with_an_exception() {
    let sim = spawn_fast().await;
    sim.sim.state().faults.add(FaultRule {
        operation: Some("invoke-with-bidirectional-stream".into()),
        fault: FaultKind::MidstreamError,
        after_events: Some(2),
        exception: Some("throttlingException".into()),
        times: Some(1),
        ..FaultRule::new(FaultKind::MidstreamError)
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<InvokeModelWithBidirectionalStreamInput>(16);
    for e in [
        json!({"sessionStart": {}}),
        json!({"promptStart": {"promptName": "p"}}),
        json!({"contentStart": {"promptName": "p", "contentName": "c", "type": "TEXT", "role": "USER", "interactive": true}}),
        json!({"textInput": {"promptName": "p", "contentName": "c", "content": "Hello"}}),
        json!({"contentEnd": {"promptName": "p", "contentName": "c"}}),
    ] {
        tx.send(chunk(json!({ "event": e }))).await.unwrap();
    }
    let mut out = sdk_client(&sim.url())
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input_stream(rx).into())
        .send()
        .await
        .unwrap();
    let mut seen = 0;
    let err = loop {
        match out.body.recv().await {
            Ok(Some(_)) => seen += 1,
            Ok(None) => panic!("the stream ended without the scripted exception"),
            Err(e) => break e.into_service_error(),
        }
    };
    assert_eq!(seen, 2);
    assert!(err.is_throttling_exception(), "{err:?}");
    drop(tx);
}

#[tokio::test]
async fn the_control_plane_sees_the_new_operations() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let rule = bedrock_sim::testing::post_json(
        &format!("{}/_sim/faults", sim.url()),
        json!({"operation": "apply-guardrail", "fault": "unavailable", "times": 1}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(rule.status.as_u16(), 201);
    let err = client
        .apply_guardrail()
        .guardrail_identifier("demoguardrail")
        .guardrail_version("1")
        .source(GuardrailContentSource::Input)
        .content(guarded_text("hello"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_service_unavailable_exception());
    client
        .start_async_invoke()
        .model_id(REEL)
        .model_input(video_input("A logged request"))
        .output_data_config(s3("s3://bucket-a/out"))
        .send()
        .await
        .unwrap();
    client.list_async_invokes().send().await.unwrap();

    let log = bedrock_sim::testing::raw("GET", &format!("{}/_sim/requests", sim.url()), &[], "")
        .await
        .unwrap()
        .json();
    let requests = log["requests"].as_array().unwrap();
    assert!(requests.iter().all(|r| r["face"] == "bedrock"), "{log}");
    let ops: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["model_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("apply-guardrail", "demoguardrail"),
            ("start-async-invoke", REEL),
            ("list-async-invokes", ""),
        ]
    );
    let s = stats(&sim).await;
    assert_eq!(s["by_operation"]["start-async-invoke"], 1);
    assert_eq!(s["errors"]["ServiceUnavailableException"], 1);
    let bad = bedrock_sim::testing::post_json(
        &format!("{}/_sim/faults", sim.url()),
        json!({"operation": "fly", "fault": "throttle"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(bad.status.as_u16(), 400);
}
