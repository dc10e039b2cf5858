//! The survey read from the text agrees with the tree-walking planner it
//! replaced: sizes, client markers, digests, settled marks and planned bodies,
//! over generated Converse and Anthropic bodies.

use super::*;
use crate::config::CachePosition;
use crate::prompt_cache::Point;
use bytes::Bytes;
use proptest::prelude::*;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,40}",
        "[a-zé漢字🙂\"\\\\/\n\t\u{1}]{0,12}",
        Just(String::new()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        Just(json!(0.1)),
        Just(json!(1e300)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::from),
        number(),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

/// Small arbitrary JSON (tool inputs, schemas).
fn data() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-zA-Z_]{1,6}", inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ttl() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![Just(None), Just(Some("5m")), Just(Some("1h"))]
}

fn converse_point() -> impl Strategy<Value = Value> {
    ttl().prop_map(|t| match t {
        Some(t) => json!({"cachePoint": {"type": "default", "ttl": t}}),
        None => json!({"cachePoint": {"type": "default"}}),
    })
}

fn converse_block() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text().prop_map(|t| json!({"text": t})),
        1 => converse_point(),
        1 => "[A-Za-z0-9+/]{0,40}".prop_map(|b| json!({"image": {"format": "png", "source": {"bytes": b}}})),
        1 => ("[A-Za-z0-9+/]{0,40}", prop_oneof![Just("pdf"), Just("txt")])
            .prop_map(|(b, f)| json!({"document": {"format": f, "name": "d", "source": {"bytes": b}}})),
        1 => data().prop_map(|i| json!({"toolUse": {"toolUseId": "t1", "name": "f", "input": i}})),
        1 => text().prop_map(|t| json!({"toolResult": {"toolUseId": "t1", "content": [{"text": t}]}})),
    ]
}

fn converse_tool() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => ("[a-z]{1,8}", text(), data()).prop_map(|(n, d, s)| json!({"toolSpec": {"name": n, "description": d, "inputSchema": {"json": s}}})),
        1 => converse_point(),
    ]
}

fn role() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("user"), Just("assistant")]
}

/// A member that is usually `ok` and sometimes of a shape the API refuses.
fn or_odd(ok: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        6 => ok.prop_map(Some),
        1 => scalar().prop_map(Some),
        1 => data().prop_map(Some),
    ]
    .boxed()
}

fn converse_body() -> impl Strategy<Value = Value> {
    let message = (
        role(),
        or_odd(
            prop::collection::vec(converse_block(), 0..5)
                .prop_map(Value::from)
                .boxed(),
        ),
    )
        .prop_map(|(r, c)| {
            let mut m = json!({"role": r});
            if let Some(c) = c {
                m["content"] = c;
            }
            m
        });
    (
        or_odd(
            prop::collection::vec(converse_tool(), 0..4)
                .prop_map(Value::from)
                .boxed(),
        ),
        or_odd(
            prop::collection::vec(converse_block(), 0..4)
                .prop_map(Value::from)
                .boxed(),
        ),
        or_odd(
            prop::collection::vec(message, 0..7)
                .prop_map(Value::from)
                .boxed(),
        ),
        prop::option::of(data()),
        any::<bool>(),
    )
        .prop_map(|(tools, system, messages, extra, config_first)| {
            let mut body = Map::new();
            if config_first {
                body.insert(
                    "inferenceConfig".into(),
                    json!({"maxTokens": 10, "temperature": 0.5}),
                );
            }
            if let Some(t) = tools {
                body.insert("toolConfig".into(), json!({"tools": t}));
            }
            if let Some(s) = system {
                body.insert("system".into(), s);
            }
            if let Some(m) = messages {
                body.insert("messages".into(), m);
            }
            if let Some(x) = extra {
                body.insert("additionalModelRequestFields".into(), json!({"x": x}));
            }
            Value::Object(body)
        })
}

fn control(block: Value, t: Option<Option<&str>>) -> Value {
    let mut block = block;
    if let (Some(t), Some(o)) = (t, block.as_object_mut()) {
        o.insert(
            "cache_control".into(),
            match t {
                Some(t) => json!({"type": "ephemeral", "ttl": t}),
                None => json!({"type": "ephemeral"}),
            },
        );
    }
    block
}

fn anthropic_block() -> impl Strategy<Value = Value> {
    let block = prop_oneof![
        4 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => "[A-Za-z0-9+/]{0,40}".prop_map(|d| json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}})),
        1 => data().prop_map(|i| json!({"type": "tool_use", "id": "t", "name": "f", "input": i})),
        1 => text().prop_map(|t| json!({"type": "tool_result", "tool_use_id": "t", "content": t})),
        1 => data().prop_map(|d| json!({"type": "other", "x": d})),
    ];
    (block, prop::option::weighted(0.2, ttl())).prop_map(|(b, t)| control(b, t))
}

fn anthropic_content() -> BoxedStrategy<Value> {
    prop_oneof![
        text().prop_map(Value::from),
        prop::collection::vec(anthropic_block(), 0..4).prop_map(Value::from),
    ]
    .boxed()
}

fn anthropic_body() -> impl Strategy<Value = Value> {
    let tool = (
        "[a-z]{1,8}",
        text(),
        data(),
        prop::option::weighted(0.2, ttl()),
    )
        .prop_map(|(n, d, s, t)| {
            control(json!({"name": n, "description": d, "input_schema": s}), t)
        });
    let message = (role(), or_odd(anthropic_content())).prop_map(|(r, c)| {
        let mut m = json!({"role": r});
        if let Some(c) = c {
            m["content"] = c;
        }
        m
    });
    (
        or_odd(
            prop::collection::vec(tool, 0..4)
                .prop_map(Value::from)
                .boxed(),
        ),
        or_odd(anthropic_content()),
        or_odd(
            prop::collection::vec(message, 0..7)
                .prop_map(Value::from)
                .boxed(),
        ),
        any::<bool>(),
    )
        .prop_map(|(tools, system, messages, temperature)| {
            let mut body = Map::new();
            body.insert("anthropic_version".into(), "bedrock-2023-05-31".into());
            body.insert("max_tokens".into(), 10.into());
            if let Some(t) = tools {
                body.insert("tools".into(), t);
            }
            if let Some(s) = system {
                body.insert("system".into(), s);
            }
            if let Some(m) = messages {
                body.insert("messages".into(), m);
            }
            if temperature {
                body.insert("temperature".into(), json!(0.0));
            }
            Value::Object(body)
        })
}

fn body() -> impl Strategy<Value = (Value, Format)> {
    prop_oneof![
        converse_body().prop_map(|b| (b, Format::Converse)),
        anthropic_body().prop_map(|b| (b, Format::Anthropic)),
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    prop::collection::vec(any::<bool>(), 8).prop_map(|bits| {
        let positions = [
            CachePosition::Tools,
            CachePosition::System,
            CachePosition::Head,
            CachePosition::Conversation,
        ];
        Plan {
            injected: positions
                .iter()
                .enumerate()
                .filter(|(i, _)| bits[*i])
                .map(|(i, &position)| Point {
                    position,
                    ttl_1h: bits[i + 4],
                })
                .collect(),
            skipped: Vec::new(),
        }
    })
}

fn tiers(which: u8) -> impl Fn(&mut Value) {
    move |v: &mut Value| match which {
        1 => crate::latency::apply_converse(v, bedrock_wire::tier::LatencyTier::Optimized),
        2 => crate::service_tier::apply_converse(v, bedrock_wire::tier::ServiceTier::Flex),
        _ => {}
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn the_survey_agrees_with_the_tree_walk((tree, format) in body(), plan in plan(), which in 0u8..3) {
        let text = tree.to_string();
        let json = JsonBody::parse(Bytes::from(text.clone()), 64).unwrap();
        let survey = Survey::of(&json, format);
        prop_assert_eq!(survey.prefixes, Prefixes::of(&tree, format));
        prop_assert_eq!(&survey.client, &super::super::client_marks(&tree, format));
        prop_assert_eq!(&survey.settle, &super::super::settle::client_marks(&tree, format));
        for section in [CachePosition::Tools, CachePosition::System, CachePosition::Head, CachePosition::Conversation] {
            prop_assert_eq!(
                survey.digest(section),
                super::super::registry::section_digest(&tree, format, section),
                "{:?}", section
            );
        }
        prop_assert!(!json.has_tree());
        let tiers = tiers(which);
        let got = survey.planned(&json, &plan, &tiers);
        let wanted = crate::pipeline::plan::planned_body(&tree, format, &plan, &tiers);
        prop_assert_eq!(std::str::from_utf8(&got).unwrap(), std::str::from_utf8(&wanted).unwrap());
        prop_assert!(!json.has_tree());

        // The same body laid out otherwise reads the same and plans the same.
        let pretty = serde_json::to_string_pretty(&tree).unwrap();
        let json = JsonBody::parse(Bytes::from(pretty), 64).unwrap();
        let other = Survey::of(&json, format);
        prop_assert_eq!(other.prefixes, survey.prefixes);
        prop_assert_eq!(&other.client, &survey.client);
        prop_assert_eq!(&other.settle, &survey.settle);
        prop_assert_eq!(other.digests, survey.digests);
        let got: Value = serde_json::from_slice(&other.planned(&json, &plan, &tiers)).unwrap();
        let wanted: Value = serde_json::from_slice(&wanted).unwrap();
        prop_assert_eq!(got, wanted);
    }
}
