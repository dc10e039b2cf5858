use super::*;
use crate::json_body::JsonBody;
use serde_json::json;

fn base() -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": "What is the capital of France?"}]}],
        "system": [{"text": "You are terse."}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0, "topP": 0.9, "stopSequences": ["END"]},
        "toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}],
            "toolChoice": {"auto": {}}},
        "additionalModelRequestFields": {"top_k": 5},
        "guardrailConfig": {"guardrailIdentifier": "g1", "guardrailVersion": "1"},
        "promptVariables": {"x": {"text": "y"}},
        "additionalModelResponseFieldPaths": ["/stop_sequence"],
        "outputConfig": {"effort": "low"}
    })
}

fn key_of(json: &Value) -> CacheKey {
    key_with(json, "tenant-a", "haiku", "model-1", Family::Converse)
}

fn key_with(json: &Value, ns: &str, route: &str, model: &str, family: Family) -> CacheKey {
    cache_key(&KeyParts {
        namespace: ns,
        route,
        upstream_model: model,
        family,
        json: Some(&JsonBody::from_value(json.clone())),
        raw: b"",
        headers: &[],
    })
}

/// Every Converse request member of the API model is classified: a new field
/// makes this test fail until someone decides whether it changes the answer.
#[test]
fn every_converse_member_of_the_api_model_is_classified() {
    let model: Value = serde_json::from_str(include_str!(
        "../../../reference/bedrock-runtime-service-2.json"
    ))
    .unwrap();
    for shape in ["ConverseRequest", "ConverseStreamRequest"] {
        let members = model["shapes"][shape]["members"].as_object().unwrap();
        assert!(members.len() >= 10, "{shape} has its members");
        for name in members.keys() {
            assert!(
                CONVERSE_FIELDS.iter().any(|(n, _)| n == name),
                "{shape}.{name} is neither in nor out of the cache key: classify it in CONVERSE_FIELDS"
            );
        }
    }
    for (name, _) in CONVERSE_FIELDS {
        assert!(
            model["shapes"]["ConverseRequest"]["members"]
                .get(*name)
                .is_some(),
            "{name} is not a Converse member"
        );
    }
}

#[test]
fn equivalent_requests_share_a_key() {
    let a = key_of(&base());
    let reordered: Value = serde_json::from_str(
        r#"{ "outputConfig":{"effort":"low"},"additionalModelResponseFieldPaths":["/stop_sequence"],
        "promptVariables":{"x":{"text":"y"}},
        "guardrailConfig":{"guardrailVersion":"1","guardrailIdentifier":"g1"},
        "additionalModelRequestFields":{"top_k":5},
        "toolConfig":{"toolChoice":{"auto":{}},"tools":[{"toolSpec":{"inputSchema":{"json":{"type":"object"}},"name":"lookup"}}]},
        "inferenceConfig":{"stopSequences":["END"],"topP":0.9,"temperature":0.0,"maxTokens":100},
        "system":[{"text":"You are terse."}],
        "messages":[{"content":[{"text":"What is the capital of France?"}],"role":"user"}] }"#,
    )
    .unwrap();
    assert_eq!(key_of(&reordered), a, "key order, whitespace and 0 vs 0.0");

    let mut marked = base();
    marked["system"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    marked["messages"][0]["content"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    marked["toolConfig"]["tools"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    assert_eq!(key_of(&marked), a, "cachePoint blocks");

    for (name, _) in CONVERSE_FIELDS
        .iter()
        .filter(|(_, k)| matches!(k, Keyed::Out(_)))
    {
        let mut with = base();
        with[*name] = json!({"latency": "optimized", "type": "priority", "app": "x"});
        assert_eq!(key_of(&with), a, "{name} is out of the key");
    }
}

#[test]
fn every_answer_changing_difference_misses() {
    let a = key_of(&base());
    type Change = Box<dyn Fn(&mut Value)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "message text",
            Box::new(|v| {
                v["messages"][0]["content"][0]["text"] = json!("What is the capital of Spain?")
            }),
        ),
        (
            "role order",
            Box::new(|v| {
                v["messages"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"role": "assistant", "content": [{"text": "Paris"}]}))
            }),
        ),
        (
            "system",
            Box::new(|v| v["system"][0]["text"] = json!("You are verbose.")),
        ),
        (
            "maxTokens",
            Box::new(|v| v["inferenceConfig"]["maxTokens"] = json!(101)),
        ),
        (
            "temperature",
            Box::new(|v| v["inferenceConfig"]["temperature"] = json!(0.1)),
        ),
        (
            "topP",
            Box::new(|v| v["inferenceConfig"]["topP"] = json!(0.8)),
        ),
        (
            "stopSequences",
            Box::new(|v| v["inferenceConfig"]["stopSequences"] = json!(["STOP"])),
        ),
        (
            "tools",
            Box::new(|v| v["toolConfig"]["tools"][0]["toolSpec"]["name"] = json!("search")),
        ),
        (
            "toolChoice",
            Box::new(|v| v["toolConfig"]["toolChoice"] = json!({"any": {}})),
        ),
        (
            "additionalModelRequestFields",
            Box::new(|v| v["additionalModelRequestFields"]["top_k"] = json!(6)),
        ),
        (
            "guardrailConfig",
            Box::new(|v| v["guardrailConfig"]["guardrailVersion"] = json!("2")),
        ),
        (
            "promptVariables",
            Box::new(|v| v["promptVariables"]["x"]["text"] = json!("z")),
        ),
        (
            "additionalModelResponseFieldPaths",
            Box::new(|v| v["additionalModelResponseFieldPaths"] = json!([])),
        ),
        (
            "outputConfig",
            Box::new(|v| v["outputConfig"]["effort"] = json!("high")),
        ),
        (
            "an unknown field",
            Box::new(|v| v["futureField"] = json!(1)),
        ),
        (
            "structured output's schema",
            Box::new(|v| {
                v["outputConfig"]["textFormat"] = json!({"type": "json_schema",
                    "structure": {"jsonSchema": {"schema": "{\"type\":\"object\"}"}}})
            }),
        ),
        (
            "thinking turned on",
            Box::new(|v| {
                v["additionalModelRequestFields"]["thinking"] =
                    json!({"type": "enabled", "budget_tokens": 1024})
            }),
        ),
        (
            "a document",
            Box::new(|v| {
                v["messages"][0]["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"document": {"format": "txt", "name": "notes",
                        "source": {"bytes": "UmV2ZW51ZSBncmV3Lg=="}}}))
            }),
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (name, change) in changes {
        let mut v = base();
        change(&mut v);
        let k = key_of(&v);
        assert_ne!(k, a, "{name} must change the key");
        assert!(seen.insert(k), "{name} collides with another change");
    }
    let b = base();
    assert_ne!(
        key_with(&b, "tenant-b", "haiku", "model-1", Family::Converse),
        a,
        "tenant"
    );
    assert_ne!(
        key_with(&b, "tenant-a", "sonnet", "model-1", Family::Converse),
        a,
        "route"
    );
    assert_ne!(
        key_with(&b, "tenant-a", "haiku", "model-2", Family::Converse),
        a,
        "model"
    );
    assert_ne!(
        key_with(&b, "tenant-a", "haiku", "model-1", Family::Invoke),
        a,
        "family"
    );
}

#[test]
fn invoke_keys_follow_the_native_format() {
    let anthropic = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "temperature": 0,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let mut unmarked = anthropic.clone();
    unmarked["system"][0]
        .as_object_mut()
        .unwrap()
        .remove("cache_control");
    let k = |v: &Value, headers: &[(&str, &[u8])]| {
        cache_key(&KeyParts {
            namespace: "t",
            route: "r",
            upstream_model: "m",
            family: Family::Invoke,
            json: Some(&JsonBody::from_value(v.clone())),
            raw: b"",
            headers,
        })
    };
    assert_eq!(
        k(&anthropic, &[]),
        k(&unmarked, &[]),
        "cache_control is a marker"
    );
    assert_ne!(
        k(&anthropic, &[]),
        k(&anthropic, &[("x-amzn-bedrock-guardrailidentifier", b"g")]),
        "the guardrail changes the answer"
    );
    assert_eq!(
        k(&anthropic, &[]),
        k(
            &anthropic,
            &[("x-amzn-bedrock-performanceconfig-latency", b"optimized")]
        ),
        "the tier does not"
    );
    let raw = |body: &[u8]| {
        cache_key(&KeyParts {
            namespace: "t",
            route: "r",
            upstream_model: "m",
            family: Family::Invoke,
            json: None,
            raw: body,
            headers: &[],
        })
    };
    assert_ne!(
        raw(b"abc"),
        raw(b"abd"),
        "non-JSON bodies are keyed by their bytes"
    );
}

#[test]
fn determinism_means_temperature_zero() {
    assert!(is_deterministic(Some(
        &json!({"inferenceConfig": {"temperature": 0}})
    )));
    assert!(is_deterministic(Some(
        &json!({"inferenceConfig": {"temperature": 0.0}})
    )));
    assert!(is_deterministic(Some(
        &json!({"temperature": 0, "anthropic_version": "x"})
    )));
    assert!(!is_deterministic(Some(
        &json!({"inferenceConfig": {"maxTokens": 5}})
    )));
    assert!(!is_deterministic(Some(
        &json!({"inferenceConfig": {"temperature": 0.2}})
    )));
    assert!(!is_deterministic(None));
}

/// Every header member of the InvokeModel operations is forwarded, and whether
/// it is in the key follows from INVOKE_HEADERS_OUT.
#[test]
fn every_invoke_header_member_is_forwarded() {
    let model: Value = serde_json::from_str(include_str!(
        "../../../reference/bedrock-runtime-service-2.json"
    ))
    .unwrap();
    for shape in ["InvokeModelRequest", "InvokeModelWithResponseStreamRequest"] {
        for (name, member) in model["shapes"][shape]["members"].as_object().unwrap() {
            if member["location"] != "header" {
                continue;
            }
            let header = member["locationName"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase();
            assert!(
                crate::ingress::bedrock::FORWARDED.contains(&header.as_str()),
                "{shape}.{name} ({header}) is not forwarded by the Bedrock ingress"
            );
        }
    }
    for (out, _) in INVOKE_HEADERS_OUT {
        assert!(crate::ingress::bedrock::FORWARDED.contains(out));
    }
}

/// Reasoning sent back is part of what the model reads in the current turn:
/// with or without it, or with another signature, is another request.
#[test]
fn reasoning_sent_back_is_in_the_key() {
    let conversation = |reasoning: Option<&str>| {
        let mut assistant =
            vec![json!({"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {}}})];
        if let Some(signature) = reasoning {
            assistant.insert(
                0,
                json!({"reasoningContent": {"reasoningText": {"text": "Look it up.", "signature": signature}}}),
            );
        }
        let mut v = base();
        let messages = v["messages"].as_array_mut().unwrap();
        messages.push(json!({"role": "assistant", "content": assistant}));
        messages.push(json!({"role": "user", "content": [
            {"toolResult": {"toolUseId": "t1", "content": [{"text": "Paris"}]}}]}));
        key_of(&v)
    };
    let without = conversation(None);
    let with = conversation(Some("c2ln"));
    assert_ne!(with, without);
    assert_ne!(conversation(Some("b3RoZXI=")), with);
    assert_eq!(conversation(Some("c2ln")), with);
}
