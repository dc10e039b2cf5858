//! The survey, read from the text element by element, against the body's tree:
//! planned bodies byte for byte what editing the tree and writing it out gives
//! (for compact text; the same JSON for any other layout, the client's bytes
//! kept), sizes as the simulator's estimator counts the whole body, the same
//! survey for any layout of the same JSON, and the prefix digests that key
//! the registry's ledgers (in Redis too) unchanged from before the survey.

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

/// The points put into the tree: the spec of what [`Survey::planned`] writes.
fn tree_apply(body: &mut Value, format: Format, plan: &Plan) {
    for point in &plan.injected {
        match format {
            Format::Converse => {
                let list = match point.position {
                    CachePosition::Tools => {
                        body.get_mut("toolConfig").and_then(|t| t.get_mut("tools"))
                    }
                    CachePosition::System => body.get_mut("system"),
                    CachePosition::Head => body
                        .get_mut("messages")
                        .and_then(Value::as_array_mut)
                        .and_then(|m| m.first_mut())
                        .and_then(|m| m.get_mut("content")),
                    CachePosition::Conversation => body
                        .get_mut("messages")
                        .and_then(Value::as_array_mut)
                        .and_then(|m| m.last_mut())
                        .and_then(|m| m.get_mut("content")),
                };
                if let Some(list) = list.and_then(Value::as_array_mut) {
                    list.push(cache_point(point.ttl_1h));
                }
            }
            Format::Anthropic => {
                let value = match point.position {
                    CachePosition::Tools => body.get_mut("tools"),
                    CachePosition::System => body.get_mut("system"),
                    CachePosition::Head | CachePosition::Conversation => body
                        .get_mut("messages")
                        .and_then(Value::as_array_mut)
                        .and_then(|m| {
                            if point.position == CachePosition::Head {
                                m.first_mut()
                            } else {
                                m.last_mut()
                            }
                        })
                        .and_then(|m| m.get_mut("content")),
                };
                let Some(value) = value else { continue };
                if let Value::String(text) = value {
                    *value = json!([{ "type": "text", "text": std::mem::take(text) }]);
                }
                if let Some(last) = value
                    .as_array_mut()
                    .and_then(|a| a.last_mut())
                    .and_then(Value::as_object_mut)
                {
                    last.insert("cache_control".into(), cache_control(point.ttl_1h));
                }
            }
        }
    }
}

/// What the body becomes, by the tree: points, then tiers, written compact.
fn tree_planned(tree: &Value, format: Format, plan: &Plan, tiers: &dyn Fn(&mut Value)) -> String {
    let mut tree = tree.clone();
    tree_apply(&mut tree, format, plan);
    tiers(&mut tree);
    tree.to_string()
}

fn total(tree: &Value, format: Format) -> u32 {
    match format {
        Format::Converse => tokens::converse_request(tree),
        Format::Anthropic => tokens::anthropic_request(tree),
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn a_planned_body_is_the_tree_edited((tree, format) in body(), plan in plan(), which in 0u8..3) {
        let text = tree.to_string();
        let json = JsonBody::parse(Bytes::from(text), 64).unwrap();
        let survey = Survey::of(&json, format);
        prop_assert_eq!(survey.prefixes.total, total(&tree, format));
        let tiers = tiers(which);
        let got = survey.planned(&json, &plan, &tiers);
        let wanted = tree_planned(&tree, format, &plan, &tiers);
        prop_assert_eq!(std::str::from_utf8(&got).unwrap(), wanted.as_str());
        prop_assert!(!json.has_tree(), "planned without the tree");

        // The same JSON laid out otherwise reads the same and plans the same.
        let pretty = serde_json::to_string_pretty(&tree).unwrap();
        let json = JsonBody::parse(Bytes::from(pretty), 64).unwrap();
        let other = Survey::of(&json, format);
        prop_assert_eq!(other.prefixes, survey.prefixes);
        prop_assert_eq!(&other.client, &survey.client);
        prop_assert_eq!(&other.settle, &survey.settle);
        prop_assert_eq!(other.digests, survey.digests);
        let got: Value = serde_json::from_slice(&other.planned(&json, &plan, &tiers)).unwrap();
        let wanted: Value = serde_json::from_str(&wanted).unwrap();
        prop_assert_eq!(got, wanted);
    }
}

fn representative() -> Vec<(Value, Format)> {
    vec![
        (
            json!({
                "toolConfig": {"tools": [
                    {"toolSpec": {"name": "weather", "description": "Wetter für 東京 🙂", "inputSchema": {"json": {"type": "object", "properties": {"n": {"type": "number", "maximum": 1.5e3}}}}}},
                    {"cachePoint": {"type": "default", "ttl": "1h"}}
                ]},
                "system": [{"text": "You are terse. \"Quotes\" and \\ backslashes"}, {"cachePoint": {"type": "default"}}],
                "messages": [
                    {"role": "user", "content": [
                        {"text": "What is in this image? ∑"},
                        {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                        {"document": {"format": "txt", "name": "notes", "source": {"bytes": "aGVsbG8="}}}
                    ]},
                    {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"days": 3, "ratio": 0.25, "big": 12345678901234567890u64}}}]},
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": -4.5}}]}}]}
                ],
                "inferenceConfig": {"maxTokens": 512, "temperature": 0.0}
            }),
            Format::Converse,
        ),
        (
            json!({
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 100,
                "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
                "system": "Plain system prompt, ünïcödé",
                "messages": [
                    {"role": "user", "content": "first question"},
                    {"role": "assistant", "content": [{"type": "text", "text": "answer", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
                    {"role": "user", "content": [{"type": "text", "text": "again"}]}
                ]
            }),
            Format::Anthropic,
        ),
    ]
}

/// Every plan the positions allow, each TTL.
fn every_plan() -> Vec<Plan> {
    let positions = [
        CachePosition::Tools,
        CachePosition::System,
        CachePosition::Head,
        CachePosition::Conversation,
    ];
    (0u32..256)
        .map(|bits| Plan {
            injected: positions
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(i, &position)| Point {
                    position,
                    ttl_1h: bits & (1 << (i + 4)) != 0,
                })
                .collect(),
            skipped: Vec::new(),
        })
        .collect()
}

#[test]
fn representative_bodies_are_planned_byte_for_byte_as_the_tree_would_be() {
    for (tree, format) in representative() {
        let json = JsonBody::parse(Bytes::from(tree.to_string()), 64).unwrap();
        let survey = Survey::of(&json, format);
        for plan in every_plan() {
            for which in 0..3 {
                let tiers = tiers(which);
                assert_eq!(
                    std::str::from_utf8(&survey.planned(&json, &plan, &tiers)).unwrap(),
                    tree_planned(&tree, format, &plan, &tiers),
                    "{format:?} {plan:?} tiers {which}"
                );
            }
        }
        assert!(!json.has_tree());
    }
}

/// The digests of [`representative`] bodies as the registry computed them
/// before the survey (from the tree): ledgers in Redis are keyed by them, so
/// a change here would make every learned prefix a stranger.
#[test]
fn prefix_digests_are_those_the_tree_gave() {
    let wanted = [
        [
            "08223211dec79951ec3dd0060b16643c1efeff2eba96438336af63ad08656781",
            "4d82863c4fa27d0a32c3b20e6a00be31128d80f83dd9720c15591407ee5c04b8",
            "264f5c4a98cab147156783829fe9d485345937ff1138499565016e97bf66c484",
        ],
        [
            "bd42ebe2c4f67ec74194881487bafb312fb682eb96c84807c4491e78e68bf0d7",
            "fb74598d00d86c535b7295e50b517463037add74bc4978c7866dfe19c0320c6e",
            "112730658e6a917869ba8ab962a254d1545062ed3bb73049315635a8b7ff83de",
        ],
    ];
    for ((tree, format), wanted) in representative().into_iter().zip(wanted) {
        // Compact, pretty and with escaped non-ASCII: one digest per section.
        let escaped: String = tree
            .to_string()
            .chars()
            .flat_map(|c| match c as u32 {
                0..=0x7f => vec![c.to_string()],
                n if n <= 0xffff => vec![format!("\\u{n:04x}")],
                n => {
                    let n = n - 0x10000;
                    vec![format!(
                        "\\u{:04x}\\u{:04x}",
                        0xd800 + (n >> 10),
                        0xdc00 + (n & 0x3ff)
                    )]
                }
            })
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&escaped).unwrap(), tree);
        for text in [
            tree.to_string(),
            serde_json::to_string_pretty(&tree).unwrap(),
            escaped,
        ] {
            let survey = Survey::of(&JsonBody::parse(Bytes::from(text), 64).unwrap(), format);
            let got = [
                CachePosition::Tools,
                CachePosition::System,
                CachePosition::Head,
            ]
            .map(|s| survey.digest(s).map(hex::encode).unwrap_or_default());
            assert_eq!(got, wanted, "{format:?}");
            assert_eq!(
                survey.digest(CachePosition::Conversation),
                survey.digest(CachePosition::Head)
            );
        }
    }
}

#[test]
fn the_clients_bytes_go_out_as_they_came_around_the_points() {
    // Spacing, escapes and number spellings a tree would rewrite.
    let text = "{ \"messages\" : [\n  {\"role\":\"user\", \"content\":[ {\"text\":\"caf\\u00e9 1.0E2\"} ]},\n  {\"role\":\"assistant\",\"content\":[{\"text\":\"ok\"}]},\n  {\"role\":\"user\",\"content\":[]}\n ],\n \"system\": [ ],\n \"inferenceConfig\": {\"temperature\": 1.0E0, \"maxTokens\": 1e2} }";
    let json = JsonBody::parse(Bytes::from(text), 64).unwrap();
    let survey = Survey::of(&json, Format::Converse);
    let plan = Plan {
        injected: [
            CachePosition::System,
            CachePosition::Head,
            CachePosition::Conversation,
        ]
        .map(|position| Point {
            position,
            ttl_1h: false,
        })
        .to_vec(),
        skipped: Vec::new(),
    };
    let got = String::from_utf8(survey.planned(&json, &plan, |_| {}).to_vec()).unwrap();
    let point = r#"{"cachePoint":{"type":"default"}}"#;
    assert_eq!(
        got.replace(&format!(",{point}"), "").replace(point, ""),
        text,
        "only the points were added: {got}"
    );
    let mut tree: Value = serde_json::from_str(text).unwrap();
    tree_apply(&mut tree, Format::Converse, &plan);
    assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), tree);
}

#[test]
fn a_long_conversation_is_surveyed_and_planned_without_its_tree() {
    let messages: Vec<Value> = (0..20_000)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": [{"text": format!("message {i}")}]}))
        .collect();
    let tree = json!({"system": [{"text": "be brief"}], "messages": messages});
    let json = JsonBody::parse(Bytes::from(tree.to_string()), 64).unwrap();
    let survey = Survey::of(&json, Format::Converse);
    assert_eq!(survey.prefixes.messages, 20_000);
    assert_eq!(survey.prefixes.user_turns, 10_000);
    assert_eq!(survey.prefixes.total, tokens::converse_request(&tree));
    let plan = Plan {
        injected: vec![Point {
            position: CachePosition::Conversation,
            ttl_1h: true,
        }],
        skipped: Vec::new(),
    };
    let got = survey.planned(&json, &plan, |_| {});
    assert!(!json.has_tree(), "the tree was never built");
    assert_eq!(
        std::str::from_utf8(&got).unwrap(),
        tree_planned(&tree, Format::Converse, &plan, &|_| {})
    );
}
