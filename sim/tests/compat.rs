//! What modern clients do beyond plain chat, through the official Rust SDK against
//! the simulator: extended thinking (whole, streamed, sent back with its
//! signature, tampered with), structured output checked against its schema by a
//! JSON Schema validator, forced tool choice in an agent loop, documents with
//! citations and CountTokens, and the embedding models.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, CitationLocation, CitationsConfig, ContentBlock, ContentBlockDelta,
    ConversationRole, ConverseStreamOutput, ConverseTokensRequest, CountTokensInput, DocumentBlock,
    DocumentFormat, DocumentSource, InferenceConfiguration, JsonSchemaDefinition, Message,
    OutputConfig, OutputFormat, OutputFormatStructure, OutputFormatType, ReasoningContentBlock,
    ReasoningContentBlockDelta, ReasoningTextBlock, ResponseStream, Tool, ToolChoice,
    ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolSpecification,
    ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use bedrock_sim::testing::{post_json, sdk_client, spawn, spawn_fast, user_text};
use bedrock_sim::SimConfig;
use serde_json::{json, Value};

const SONNET_45: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const SONNET_4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";
const HAIKU_45: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
const HAIKU_35: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const OPUS_45: &str = "us.anthropic.claude-opus-4-5-20251101-v1:0";
const NOVA: &str = "us.amazon.nova-pro-v1:0";
const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-english-v3";

/// A simulator whose answers are reproducible at any temperature (thinking
/// requires temperature 1).
async fn seeded() -> bedrock_sim::SimHandle {
    spawn(SimConfig {
        time_scale: 0.0,
        seed: Some(11),
        ..SimConfig::default()
    })
    .await
}

fn doc(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap())
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(doc).collect()),
        Value::Object(m) => Document::Object(m.iter().map(|(k, v)| (k.clone(), doc(v))).collect()),
    }
}

fn json_of(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => json!(b),
        Document::Number(Number::PosInt(u)) => json!(u),
        Document::Number(Number::NegInt(i)) => json!(i),
        Document::Number(Number::Float(f)) => json!(f),
        Document::String(s) => json!(s),
        Document::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        Document::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
    }
}

/// Fails the test, naming every violation, unless `instance` is valid against
/// `schema` (formats included).
fn assert_valid(schema: &Value, instance: &Value) {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} violates the schema: {errors:?}"
    );
}

fn thinking(budget: u32) -> Document {
    doc(&json!({"thinking": {"type": "enabled", "budget_tokens": budget}}))
}

fn max_tokens(n: i32) -> InferenceConfiguration {
    InferenceConfiguration::builder().max_tokens(n).build()
}

fn content(out: &ConverseOutput) -> &[ContentBlock] {
    out.output().unwrap().as_message().unwrap().content()
}

fn text_of(blocks: &[ContentBlock]) -> String {
    blocks
        .iter()
        .filter_map(|b| b.as_text().ok().cloned())
        .collect()
}

fn reasoning_of(block: &ContentBlock) -> &ReasoningTextBlock {
    match block {
        ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(r)) => r,
        other => panic!("reasoning text expected, got {other:?}"),
    }
}

fn tool(name: &str, schema: Value) -> Tool {
    Tool::ToolSpec(
        ToolSpecification::builder()
            .name(name)
            .input_schema(ToolInputSchema::Json(doc(&schema)))
            .build()
            .unwrap(),
    )
}

fn weather_tools() -> ToolConfiguration {
    ToolConfiguration::builder()
        .tools(tool(
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        ))
        .build()
        .unwrap()
}

fn message(role: ConversationRole, blocks: Vec<ContentBlock>) -> Message {
    Message::builder()
        .role(role)
        .set_content(Some(blocks))
        .build()
        .unwrap()
}

fn tool_result(id: &str, text: &str) -> Message {
    message(
        ConversationRole::User,
        vec![ContentBlock::ToolResult(
            ToolResultBlock::builder()
                .tool_use_id(id)
                .content(ToolResultContentBlock::Text(text.into()))
                .build()
                .unwrap(),
        )],
    )
}

fn tool_use_of(blocks: &[ContentBlock]) -> &ToolUseBlock {
    blocks
        .iter()
        .find_map(|b| b.as_tool_use().ok())
        .expect("a toolUse block")
}

fn validation_message<E: ProvideErrorMetadata>(e: E) -> String {
    assert_eq!(e.code(), Some("ValidationException"), "{:?}", e.message());
    e.message().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn reasoning_comes_signed_before_the_text_whole_and_streamed() {
    let sim = seeded().await;
    let client = sdk_client(&sim.url());
    let out = client
        .converse()
        .model_id(SONNET_45)
        .messages(user_text("Is 1,001 a prime number?"))
        .inference_config(max_tokens(4000))
        .additional_model_request_fields(thinking(2000))
        .send()
        .await
        .expect("converse with thinking");
    let blocks = content(&out);
    let reasoning = reasoning_of(&blocks[0]);
    assert!(!reasoning.text().is_empty());
    let signature = reasoning.signature().expect("signed").to_owned();
    let answer = text_of(blocks);
    assert!(!answer.is_empty(), "text follows the reasoning");
    let usage = out.usage().unwrap();
    let words = |s: &str| s.split_whitespace().count() as i32;
    assert_eq!(
        usage.output_tokens(),
        words(reasoning.text()) + words(&answer),
        "reasoning is counted in output tokens"
    );
    assert!(words(reasoning.text()) >= 2000 / 4, "sized from the budget");

    let mut stream = client
        .converse_stream()
        .model_id(SONNET_45)
        .messages(user_text("Is 1,001 a prime number?"))
        .inference_config(max_tokens(4000))
        .additional_model_request_fields(thinking(2000))
        .send()
        .await
        .expect("converse-stream with thinking");
    let (mut thought, mut text, mut signatures) = (String::new(), String::new(), Vec::new());
    let mut order = Vec::new();
    while let Some(event) = stream.stream.recv().await.expect("event") {
        if let ConverseStreamOutput::ContentBlockDelta(d) = event {
            match d.delta().unwrap() {
                ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::Text(t)) => {
                    assert!(text.is_empty(), "reasoning deltas come before the text");
                    thought.push_str(t);
                    order.push("reasoning");
                }
                ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::Signature(s)) => {
                    signatures.push(s.clone());
                    order.push("signature");
                }
                ContentBlockDelta::Text(t) => {
                    text.push_str(t);
                    order.push("text");
                }
                other => panic!("unexpected delta {other:?}"),
            }
        }
    }
    assert_eq!(
        thought,
        reasoning.text(),
        "the stream thinks what the body thought"
    );
    assert_eq!(signatures, [signature]);
    assert_eq!(text, answer);
    let first_text = order.iter().position(|k| *k == "text").unwrap();
    assert_eq!(order[first_text - 1], "signature");
}

#[tokio::test]
async fn reasoning_sent_back_with_tool_use_is_verified() {
    let sim = seeded().await;
    let client = sdk_client(&sim.url());
    let question = user_text("Use get_weather to tell me the weather in Paris.");
    let first = client
        .converse()
        .model_id(SONNET_45)
        .messages(question.clone())
        .tool_config(weather_tools())
        .inference_config(max_tokens(3000))
        .additional_model_request_fields(thinking(1024))
        .send()
        .await
        .expect("first turn");
    assert_eq!(first.stop_reason().as_str(), "tool_use");
    let assistant = first.output().unwrap().as_message().unwrap().clone();
    reasoning_of(&assistant.content()[0]);
    let call_id = tool_use_of(assistant.content()).tool_use_id().to_owned();

    let continue_with = |assistant: Message, extra: Option<Document>| {
        client
            .converse()
            .model_id(SONNET_45)
            .messages(question.clone())
            .messages(assistant)
            .messages(tool_result(&call_id, "18 C and sunny"))
            .tool_config(weather_tools())
            .inference_config(max_tokens(3000))
            .additional_model_request_fields(extra.unwrap_or_else(|| thinking(1024)))
            .send()
    };
    let second = continue_with(assistant.clone(), None)
        .await
        .expect("the signed thinking is accepted");
    assert_eq!(second.stop_reason().as_str(), "end_turn");
    assert!(
        content(&second).iter().all(|b| !b.is_reasoning_content()),
        "without the interleaved beta the model does not think again after a tool result"
    );
    let interleaved = doc(
        &json!({"thinking": {"type": "enabled", "budget_tokens": 1024},
        "anthropic_beta": ["interleaved-thinking-2025-05-14"]}),
    );
    let third = continue_with(assistant.clone(), Some(interleaved))
        .await
        .unwrap();
    reasoning_of(&content(&third)[0]);

    let mut tampered = assistant.content().to_vec();
    let original = reasoning_of(&tampered[0]).clone();
    tampered[0] = ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(
        ReasoningTextBlock::builder()
            .text(format!("{} I am sure.", original.text()))
            .signature(original.signature().unwrap())
            .build()
            .unwrap(),
    ));
    let err = continue_with(message(ConversationRole::Assistant, tampered), None)
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        validation_message(err),
        "The model returned the following errors: messages.1.content.0: Invalid `signature` in `thinking` block"
    );

    let without_thinking: Vec<ContentBlock> = assistant.content()[1..].to_vec();
    let err = continue_with(message(ConversationRole::Assistant, without_thinking), None)
        .await
        .unwrap_err()
        .into_service_error();
    let msg = validation_message(err);
    assert!(
        msg.contains("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`"),
        "{msg}"
    );

    let mut redacted = assistant.content().to_vec();
    redacted[0] = ContentBlock::ReasoningContent(ReasoningContentBlock::RedactedContent(
        Blob::new(b"opaque reasoning".to_vec()),
    ));
    continue_with(message(ConversationRole::Assistant, redacted), None)
        .await
        .expect("redacted reasoning is accepted as is");
}

#[tokio::test]
async fn thinking_is_refused_where_bedrock_refuses_it() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let ask = |model: &'static str, fields: Value, temperature: Option<f32>| {
        let mut config = InferenceConfiguration::builder().max_tokens(4000);
        if let Some(t) = temperature {
            config = config.temperature(t);
        }
        client
            .converse()
            .model_id(model)
            .messages(user_text("hi"))
            .inference_config(config.build())
            .additional_model_request_fields(doc(&fields))
            .send()
    };
    let on = json!({"thinking": {"type": "enabled", "budget_tokens": 2000}});
    for (model, fields, temperature, expected) in [
        (
            HAIKU_35,
            on.clone(),
            None,
            "extraneous key [thinking] is not permitted",
        ),
        (
            SONNET_45,
            json!({"thinking": {"type": "enabled", "budget_tokens": 512}}),
            None,
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            SONNET_45,
            json!({"thinking": {"type": "enabled", "budget_tokens": 5000}}),
            None,
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            SONNET_45,
            on.clone(),
            Some(0.2),
            "`temperature` may only be set to 1 when thinking is enabled",
        ),
    ] {
        let err = ask(model, fields, temperature)
            .await
            .unwrap_err()
            .into_service_error();
        let msg = validation_message(err);
        assert!(
            msg.starts_with("The model returned the following errors: "),
            "{msg}"
        );
        assert!(msg.contains(expected), "{msg}");
    }
    let forced = client
        .converse()
        .model_id(SONNET_45)
        .messages(user_text("hi"))
        .tool_config(
            ToolConfiguration::builder()
                .tools(tool("get_weather", json!({"type": "object"})))
                .tool_choice(ToolChoice::Any(AnyToolChoice::builder().build()))
                .build()
                .unwrap(),
        )
        .inference_config(max_tokens(4000))
        .additional_model_request_fields(doc(&on))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(forced)
        .contains("Thinking may not be enabled when tool_choice forces tool use."));
}

#[tokio::test]
async fn anthropic_bodies_think_stream_thinking_and_verify_it() {
    let sim = seeded().await;
    let client = sdk_client(&sim.url());
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3000,
        "thinking": {"type": "enabled", "budget_tokens": 1500},
        "messages": [{"role": "user", "content": "Why is the sky blue?"}]});
    let invoke = |body: &Value| {
        client
            .invoke_model()
            .model_id(SONNET_4)
            .content_type("application/json")
            .body(Blob::new(body.to_string()))
            .send()
    };
    let out = invoke(&body).await.expect("invoke with thinking");
    let answer: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert_eq!(answer["content"][0]["type"], "thinking");
    assert!(answer["content"][0]["signature"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(answer["content"][1]["type"], "text");

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id(SONNET_4)
        .content_type("application/json")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut thought = String::new();
    while let Some(event) = stream.body.recv().await.unwrap() {
        if let ResponseStream::Chunk(part) = event {
            let v: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
            if let Some(kind) = v["delta"]["type"].as_str() {
                if kinds.last().map(String::as_str) != Some(kind) {
                    kinds.push(kind.to_owned());
                }
                if kind == "thinking_delta" {
                    thought.push_str(v["delta"]["thinking"].as_str().unwrap());
                }
            }
        }
    }
    assert_eq!(kinds, ["thinking_delta", "signature_delta", "text_delta"]);
    assert_eq!(thought, answer["content"][0]["thinking"].as_str().unwrap());

    let mut next = body.clone();
    next["messages"] = json!([
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": "And at sunset?"}]);
    invoke(&next)
        .await
        .expect("a signed thinking block goes back as is");
    next["messages"][1]["content"][0]["signature"] = json!("c2lnbmF0dXJl");
    let err = invoke(&next).await.unwrap_err().into_service_error();
    assert_eq!(
        validation_message(err),
        "messages.1.content.0: Invalid `signature` in `thinking` block"
    );
}

/// What pydantic v2 emits for `class Report(BaseModel)` with a nested model, a
/// list of them, an enum, an optional field and a constrained number.
fn pydantic_schema() -> Value {
    json!({
        "$defs": {
            "Priority": {"enum": ["low", "high"], "title": "Priority", "type": "string"},
            "Step": {"properties": {
                    "title": {"title": "Title", "type": "string"},
                    "minutes": {"title": "Minutes", "type": "integer", "minimum": 1, "maximum": 90},
                    "priority": {"$ref": "#/$defs/Priority"}},
                "required": ["title", "minutes", "priority"], "title": "Step", "type": "object",
                "additionalProperties": false}
        },
        "properties": {
            "summary": {"title": "Summary", "type": "string"},
            "steps": {"items": {"$ref": "#/$defs/Step"}, "title": "Steps", "type": "array", "minItems": 2},
            "owner": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}], "title": "Owner"},
            "confidence": {"title": "Confidence", "type": "number", "minimum": 0, "maximum": 1},
            "created": {"title": "Created", "type": "string", "format": "date-time"}
        },
        "required": ["summary", "steps", "owner", "confidence", "created"],
        "title": "Report", "type": "object", "additionalProperties": false
    })
}

fn output_config(schema: &str) -> OutputConfig {
    OutputConfig::builder()
        .text_format(
            OutputFormat::builder()
                .r#type(OutputFormatType::JsonSchema)
                .structure(OutputFormatStructure::JsonSchema(
                    JsonSchemaDefinition::builder()
                        .schema(schema)
                        .name("Report")
                        .description("A plan")
                        .build()
                        .unwrap(),
                ))
                .build()
                .unwrap(),
        )
        .build()
}

#[tokio::test]
async fn structured_output_follows_the_schema_whole_and_streamed() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let schema = pydantic_schema();
    let ask = || {
        client
            .converse()
            .model_id(HAIKU_45)
            .messages(user_text("Plan a release."))
            .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
            .output_config(output_config(&schema.to_string()))
    };
    let out = ask().send().await.expect("structured output");
    let text = text_of(content(&out));
    let value: Value = serde_json::from_str(&text).expect("the answer is JSON");
    assert_valid(&schema, &value);
    assert!(value["steps"].as_array().unwrap().len() >= 2);

    let mut stream = client
        .converse_stream()
        .model_id(HAIKU_45)
        .messages(user_text("Plan a release."))
        .inference_config(InferenceConfiguration::builder().temperature(0.0).build())
        .output_config(output_config(&schema.to_string()))
        .send()
        .await
        .unwrap();
    let mut streamed = String::new();
    let mut deltas = 0;
    while let Some(event) = stream.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(d) = event {
            if let Ok(t) = d.delta().unwrap().as_text() {
                streamed.push_str(t);
                deltas += 1;
            }
        }
    }
    assert!(deltas > 3, "the JSON arrives in several text deltas");
    assert_eq!(streamed, text);

    let tool_schema = json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": true}},
        "required": ["when", "tags"]});
    let called = client
        .converse()
        .model_id(HAIKU_45)
        .messages(user_text("Schedule it with plan_release."))
        .tool_config(
            ToolConfiguration::builder()
                .tools(tool("plan_release", tool_schema.clone()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_valid(
        &tool_schema,
        &json_of(tool_use_of(content(&called)).input()),
    );
}

#[tokio::test]
async fn structured_output_and_effort_are_refused_where_bedrock_refuses_them() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let schema = pydantic_schema().to_string();
    let err = client
        .converse()
        .model_id(SONNET_4)
        .messages(user_text("Plan"))
        .output_config(output_config(&schema))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        validation_message(err),
        "This model doesn't support the outputConfig.textFormat field. Remove outputConfig.textFormat and try again."
    );
    let err = client
        .converse()
        .model_id(HAIKU_45)
        .messages(user_text("Plan"))
        .output_config(output_config("{\"type\": \"object\""))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(err).contains("is not valid JSON"));

    let effort = |model: &'static str, level: &'static str| {
        client
            .converse()
            .model_id(model)
            .messages(user_text("Plan"))
            .output_config(OutputConfig::builder().effort(level).build())
            .send()
    };
    effort(OPUS_45, "low").await.expect("Opus 4.5 takes effort");
    let err = effort(SONNET_45, "low")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(err).contains("outputConfig.effort"));
    let err = effort(OPUS_45, "max")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(err).contains("needs extended thinking"));
    let err = effort(OPUS_45, "extreme")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(err)
        .contains("Member must satisfy enum value set: [low, medium, high, xhigh, max]"));
}

#[tokio::test]
async fn forced_tool_choice_drives_an_agent_loop_to_its_final_answer() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let final_schema = json!({"type": "object", "properties": {
        "answer": {"type": "string"}, "sources": {"type": "array", "items": {"type": "string", "format": "uri"}, "minItems": 1}},
        "required": ["answer", "sources"]});
    let tools = ToolConfiguration::builder()
        .tools(tool("search", json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})))
        .tools(tool("fetch_page", json!({"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}, "required": ["url"]})))
        .tools(tool("final_answer", final_schema.clone()))
        .tool_choice(ToolChoice::Any(AnyToolChoice::builder().build()))
        .build()
        .unwrap();
    let mut messages = vec![user_text("Who designed the Eiffel Tower?")];
    let mut called = Vec::new();
    let final_input = loop {
        assert!(called.len() < 5, "the loop ends: {called:?}");
        let out = client
            .converse()
            .model_id(HAIKU_35)
            .set_messages(Some(messages.clone()))
            .tool_config(tools.clone())
            .send()
            .await
            .expect("a turn of the loop");
        assert_eq!(
            out.stop_reason().as_str(),
            "tool_use",
            "any forces a tool every turn"
        );
        let assistant = out.output().unwrap().as_message().unwrap().clone();
        let call = tool_use_of(assistant.content()).clone();
        called.push(call.name().to_owned());
        if call.name() == "final_answer" {
            break json_of(call.input());
        }
        messages.push(assistant);
        messages.push(tool_result(call.tool_use_id(), "Gustave Eiffel's company"));
    };
    assert_eq!(
        called,
        ["search", "fetch_page", "final_answer"],
        "each turn calls a tool not yet called"
    );
    assert_valid(&final_schema, &final_input);

    // `tool` names the tool, after a tool result too.
    let named = ToolConfiguration::builder()
        .tools(tool("search", json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})))
        .tool_choice(ToolChoice::Tool(
            aws_sdk_bedrockruntime::types::SpecificToolChoice::builder().name("search").build().unwrap(),
        ))
        .build()
        .unwrap();
    let first = client
        .converse()
        .model_id(HAIKU_35)
        .messages(user_text("Look it up"))
        .tool_config(named.clone())
        .send()
        .await
        .unwrap();
    let assistant = first.output().unwrap().as_message().unwrap().clone();
    let id = tool_use_of(assistant.content()).tool_use_id().to_owned();
    let again = client
        .converse()
        .model_id(HAIKU_35)
        .messages(user_text("Look it up"))
        .messages(assistant)
        .messages(tool_result(&id, "nothing found"))
        .tool_config(named)
        .send()
        .await
        .unwrap();
    assert_eq!(tool_use_of(content(&again)).name(), "search");
}

/// A two-page PDF whose first page says `text`.
fn pdf(text: &str) -> Vec<u8> {
    format!(
        "%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
         2 0 obj << /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >> endobj\n\
         3 0 obj << /Type /Page /Parent 2 0 R /Contents 5 0 R >> endobj\n\
         4 0 obj << /Type /Page /Parent 2 0 R >> endobj\n\
         5 0 obj << /Length 44 >> stream\nBT /F1 12 Tf 72 712 Td ({text}) Tj ET\nendstream endobj\n%%EOF\n"
    )
    .into_bytes()
}

fn document(
    name: &str,
    format: DocumentFormat,
    source: DocumentSource,
    cite: bool,
) -> ContentBlock {
    let mut b = DocumentBlock::builder()
        .name(name)
        .format(format)
        .source(source);
    if cite {
        b = b.citations(CitationsConfig::builder().enabled(true).build().unwrap());
    }
    ContentBlock::Document(b.build().unwrap())
}

#[tokio::test]
async fn documents_are_counted_cited_and_agree_with_count_tokens() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let question = ContentBlock::Text("What do these say?".into());
    let with_docs = message(
        ConversationRole::User,
        vec![
            document(
                "Annual report",
                DocumentFormat::Pdf,
                DocumentSource::Bytes(Blob::new(pdf("Revenue grew 12% in 2024."))),
                false,
            ),
            document(
                "notes",
                DocumentFormat::Md,
                DocumentSource::Text("The launch moved to May. Marketing agrees.".into()),
                false,
            ),
            question.clone(),
        ],
    );
    let plain = message(ConversationRole::User, vec![question.clone()]);
    let converse = |m: Message| client.converse().model_id(HAIKU_35).messages(m).send();
    let with = converse(with_docs.clone())
        .await
        .expect("documents are accepted");
    let without = converse(plain).await.unwrap();
    let (with_in, without_in) = (
        with.usage().unwrap().input_tokens(),
        without.usage().unwrap().input_tokens(),
    );
    assert!(
        with_in >= without_in + 2 * 1500,
        "a two-page PDF costs at least 1,500 tokens a page: {with_in} vs {without_in}"
    );
    let counted = client
        .count_tokens()
        .model_id("anthropic.claude-3-5-haiku-20241022-v1:0")
        .input(CountTokensInput::Converse(
            ConverseTokensRequest::builder().messages(with_docs).build(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        counted.input_tokens(),
        with_in,
        "CountTokens agrees with Converse"
    );

    let cited_request = message(
        ConversationRole::User,
        vec![
            document(
                "facts",
                DocumentFormat::Txt,
                DocumentSource::Text(
                    "The Eiffel Tower is 330 metres tall. It opened in 1889.".into(),
                ),
                true,
            ),
            question.clone(),
        ],
    );
    let cited = converse(cited_request.clone()).await.unwrap();
    let block = content(&cited)
        .iter()
        .find_map(|b| b.as_citations_content().ok())
        .expect("a citationsContent block");
    let citation = &block.citations()[0];
    assert_eq!(citation.title(), Some("facts"));
    assert_eq!(
        citation.source_content()[0].as_text().unwrap(),
        "The Eiffel Tower is 330 metres tall."
    );
    let Some(CitationLocation::DocumentChar(at)) = citation.location() else {
        panic!("a character location: {:?}", citation.location());
    };
    assert_eq!(
        (at.document_index(), at.start(), at.end()),
        (Some(0), Some(0), Some(36))
    );

    let mut stream = client
        .converse_stream()
        .model_id(HAIKU_35)
        .messages(cited_request)
        .send()
        .await
        .unwrap();
    let mut citations = 0;
    while let Some(event) = stream.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(d) = event {
            if let Ok(c) = d.delta().unwrap().as_citation() {
                assert_eq!(c.title(), Some("facts"));
                citations += 1;
            }
        }
    }
    assert_eq!(citations, 1, "the stream carries the citation");

    let pdf_cited = message(
        ConversationRole::User,
        vec![
            document(
                "report",
                DocumentFormat::Pdf,
                DocumentSource::Bytes(Blob::new(pdf("Revenue grew 12% in 2024."))),
                true,
            ),
            question.clone(),
        ],
    );
    let out = converse(pdf_cited).await.unwrap();
    let c = &content(&out)
        .iter()
        .find_map(|b| b.as_citations_content().ok())
        .unwrap()
        .citations()[0];
    assert!(
        matches!(c.location(), Some(CitationLocation::DocumentPage(p)) if p.start() == Some(1))
    );
    assert_eq!(
        c.source_content()[0].as_text().unwrap(),
        "Revenue grew 12% in 2024."
    );

    let nova = client
        .converse()
        .model_id(NOVA)
        .messages(message(
            ConversationRole::User,
            vec![
                document(
                    "facts",
                    DocumentFormat::Txt,
                    DocumentSource::Text("x".into()),
                    true,
                ),
                question.clone(),
            ],
        ))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(nova).contains("citations"));
    let bad_name = converse(message(
        ConversationRole::User,
        vec![
            document(
                "report.pdf",
                DocumentFormat::Pdf,
                DocumentSource::Bytes(Blob::new(pdf("x"))),
                false,
            ),
            question,
        ],
    ))
    .await
    .unwrap_err()
    .into_service_error();
    assert!(validation_message(bad_name)
        .starts_with("The document file name can only contain alphanumeric characters"));
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn titan_embeddings_have_bedrocks_shape_and_meaningful_distances() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let embed = |body: Value| {
        client
            .invoke_model()
            .model_id(TITAN)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string()))
            .send()
    };
    let out = embed(json!({"inputText": "The cat sat on the warm mat."}))
        .await
        .expect("titan");
    let body: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    let cat = floats(&body["embedding"]);
    assert_eq!(cat.len(), 1024, "1,024 dimensions by default");
    assert!(
        (cat.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-3,
        "normalized by default"
    );
    assert_eq!(body["inputTextTokenCount"], 7, "28 bytes, a token per 4");
    assert_eq!(floats(&body["embeddingsByType"]["float"]), cat);

    let vector = |text: &'static str| {
        let embed = &embed;
        async move {
            let out = embed(json!({"inputText": text, "dimensions": 256}))
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
            floats(&body["embedding"])
        }
    };
    let paraphrase = vector("A cat was sitting on the mat.").await;
    let unrelated = vector("Quarterly revenue beat analyst forecasts.").await;
    let cat256 = vector("The cat sat on the warm mat.").await;
    assert_eq!(cat256.len(), 256);
    assert!(cosine(&cat256, &paraphrase) > cosine(&cat256, &unrelated) + 0.2);
    assert_eq!(
        cat256,
        vector("The cat sat on the warm mat.").await,
        "deterministic"
    );

    let binary =
        embed(json!({"inputText": "hello", "embeddingTypes": ["binary"], "dimensions": 512}))
            .await
            .unwrap();
    let body: Value = serde_json::from_slice(binary.body().as_ref()).unwrap();
    let bits = body["embeddingsByType"]["binary"].as_array().unwrap();
    assert_eq!(bits.len(), 512);
    assert!(bits.iter().all(|b| b == 0 || b == 1));

    for (body, expected) in [
        (
            json!({"inputText": "x", "dimensions": 300}),
            "#/dimensions: 300 is not a valid enum value",
        ),
        (
            json!({"inputText": "word ".repeat(9000)}),
            "Too many input tokens. Max input tokens: 8192",
        ),
        (
            json!({"inputText": "x".repeat(50_001)}),
            "expected maxLength: 50000",
        ),
        (
            json!({"texts": ["x"]}),
            "extraneous key [texts] is not permitted",
        ),
    ] {
        let err = embed(body).await.unwrap_err().into_service_error();
        let msg = validation_message(err);
        assert!(msg.contains(expected), "{msg}");
    }
    let raw = post_json(
        &format!("{}/model/{TITAN}/invoke", sim.url()),
        json!({"inputText": "The cat sat on the warm mat."}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(raw.header("x-amzn-bedrock-input-token-count"), Some("7"));
    let err = client
        .converse()
        .model_id(TITAN)
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        validation_message(err),
        "This action doesn't support the model that you provided. Try again with a supported text or chat model."
    );
}

#[tokio::test]
async fn cohere_embeddings_batch_by_type_and_validate() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let embed = |body: Value| {
        client
            .invoke_model()
            .model_id(COHERE)
            .content_type("application/json")
            .body(Blob::new(body.to_string()))
            .send()
    };
    let texts = [
        "How do I reset my password?",
        "Steps to reset a forgotten password",
        "Opening hours of the museum",
    ];
    let out = embed(json!({"texts": texts, "input_type": "search_document"}))
        .await
        .expect("cohere");
    let body: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert_eq!(body["response_type"], "embeddings_floats");
    assert_eq!(body["texts"], json!(texts));
    let vectors: Vec<Vec<f64>> = body["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    assert_eq!(vectors.len(), 3);
    assert!(vectors.iter().all(|v| v.len() == 1024));
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]));

    let typed = embed(json!({"texts": ["hi"], "input_type": "search_query", "embedding_types": ["float", "int8"]})).await.unwrap();
    let body: Value = serde_json::from_slice(typed.body().as_ref()).unwrap();
    assert_eq!(body["response_type"], "embeddings_by_type");
    let int8 = body["embeddings"]["int8"][0].as_array().unwrap();
    assert!(int8
        .iter()
        .all(|v| (-128..=127).contains(&v.as_i64().unwrap())));

    for (body, expected) in [
        (
            json!({"texts": ["x"]}),
            "#: required key [input_type] not found",
        ),
        (
            json!({"texts": vec!["x"; 97], "input_type": "clustering"}),
            "expected maximum item count: 96, found: 97",
        ),
        (
            json!({"texts": ["x"], "input_type": "poetry"}),
            "#/input_type: poetry is not a valid enum value",
        ),
    ] {
        let err = embed(body).await.unwrap_err().into_service_error();
        let msg = validation_message(err);
        assert!(msg.contains(expected), "{msg}");
    }
}

#[tokio::test]
async fn anthropic_bodies_take_documents_citations_and_output_config() {
    use base64::Engine;
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let pdf64 = base64::engine::general_purpose::STANDARD.encode(pdf("Revenue grew 12% in 2024."));
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 400, "temperature": 0,
        "messages": [{"role": "user", "content": [
            {"type": "document", "title": "Annual report", "citations": {"enabled": true},
             "source": {"type": "base64", "media_type": "application/pdf", "data": pdf64}},
            {"type": "text", "text": "How did revenue do?"}]}]});
    let invoke = |model: &'static str, body: &Value| {
        client
            .invoke_model()
            .model_id(model)
            .body(Blob::new(body.to_string()))
            .send()
    };
    let out = invoke(HAIKU_35, &body).await.expect("a PDF document");
    let answer: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    let citation = answer["content"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|b| b["citations"].get(0))
        .expect("a cited text block")
        .clone();
    assert_eq!(
        citation,
        json!({"type": "page_location", "cited_text": "Revenue grew 12% in 2024.", "document_index": 0,
            "document_title": "Annual report", "start_page_number": 1, "end_page_number": 2})
    );
    let counted = client
        .count_tokens()
        .model_id("anthropic.claude-3-5-haiku-20241022-v1:0")
        .input(CountTokensInput::InvokeModel(
            aws_sdk_bedrockruntime::types::InvokeModelTokensRequest::builder()
                .body(Blob::new(body.to_string()))
                .build()
                .unwrap(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        i64::from(counted.input_tokens()),
        answer["usage"]["input_tokens"].as_i64().unwrap()
    );
    assert!(counted.input_tokens() > 2 * 1500, "two PDF pages");

    let schema = pydantic_schema();
    let structured = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Plan a release."}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}});
    let out = invoke(HAIKU_45, &structured)
        .await
        .expect("output_config on Haiku 4.5");
    let answer: Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert_valid(
        &schema,
        &serde_json::from_str(answer["content"][0]["text"].as_str().unwrap()).unwrap(),
    );
    let err = invoke(SONNET_4, &structured)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(validation_message(err).contains("extraneous key [output_config] is not permitted"));
}
