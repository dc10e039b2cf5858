use super::*;
use crate::catalog::Catalog;
use crate::config::CacheTtl;
use crate::json_body::JsonBody;
use serde_json::json;
use std::time::Duration;

const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const SONNET_45: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const NOVA: &str = "us.amazon.nova-pro-v1:0";
const LLAMA: &str = "us.meta.llama3-1-70b-instruct-v1:0";

fn model(id: &str) -> ModelInfo {
    (*Catalog::embedded().get(id).unwrap().model).clone()
}

fn policy(mode: PromptCacheMode) -> PromptCacheConfig {
    PromptCacheConfig {
        mode,
        window: Duration::from_secs(600),
        ..PromptCacheConfig::default()
    }
}

/// Text of about `tokens` tokens.
fn text(tokens: usize) -> String {
    "word ".repeat(tokens * 4 / 5)
}

fn request(system_tokens: usize, turns: usize) -> Value {
    let mut messages = Vec::new();
    for i in 0..turns {
        messages.push(json!({"role": "user", "content": [{"text": format!("question {i}")}]}));
        if i + 1 < turns {
            messages
                .push(json!({"role": "assistant", "content": [{"text": format!("answer {i}")}]}));
        }
    }
    json!({"system": [{"text": text(system_tokens)}], "messages": messages})
}

impl Prefixes {
    /// The sizes the survey reads of `body`.
    fn of(body: &Value, format: Format) -> Prefixes {
        Survey::of(&JsonBody::from_value(body.clone()), format).prefixes
    }
}

/// Tools and system prompt seen `n` times, nothing learned yet.
fn seen(n: u64) -> Observations {
    let seen = || {
        Some(Observed {
            sightings: n,
            reads_per_write: 1.0,
            first_write: true,
            ..Observed::default()
        })
    };
    Observations {
        tools: seen(),
        system: seen(),
        ..Observations::default()
    }
}

fn strip_points(v: &mut Value) {
    match v {
        Value::Array(items) => {
            items.retain(|i| i.get("cachePoint").is_none());
            items.iter_mut().for_each(strip_points);
        }
        Value::Object(map) => map.values_mut().for_each(strip_points),
        _ => {}
    }
}

/// Decides and applies, as the pipeline does for one attempt.
fn plan(
    body: &mut Value,
    format: Format,
    model: Option<&ModelInfo>,
    policy: &PromptCacheConfig,
    observed: Observations,
) -> Plan {
    let json = JsonBody::parse(bytes::Bytes::from(body.to_string()), 64).unwrap();
    let survey = Survey::of(&json, format);
    let plan = decide(&survey, model, policy, &observed);
    *body = serde_json::from_slice(&survey.planned(&json, &plan, |_| {})).unwrap();
    plan
}

#[test]
fn a_long_repeated_system_prompt_gets_a_point_and_nothing_else_changes() {
    let original = request(3000, 1);
    let mut body = original.clone();
    let plan = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(2),
    );
    assert_eq!(plan.positions(), [CachePosition::System]);
    assert_eq!(
        body["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    let mut stripped = body.clone();
    strip_points(&mut stripped);
    assert_eq!(stripped, original, "only the point was added");
}

#[test]
fn auto_waits_until_the_prefix_repeats_and_always_does_not() {
    let mut body = request(3000, 1);
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(1),
    );
    assert!(p.injected.is_empty());
    assert_eq!(p.skipped, [(CachePosition::System, Skip::NotRepeated)]);
    assert_eq!(body, request(3000, 1));
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Always),
        seen(1),
    );
    assert_eq!(p.positions(), [CachePosition::System]);
}

#[test]
fn writes_without_a_premium_pay_off_at_once() {
    // Nova charges plain input price for cache writes: the first sighting is enough.
    assert_eq!(
        sightings_needed(&model(NOVA), &policy(PromptCacheMode::Auto)),
        1
    );
    assert_eq!(
        sightings_needed(&model(HAIKU), &policy(PromptCacheMode::Auto)),
        2
    );
    let mut body = request(1500, 1);
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(NOVA)),
        &policy(PromptCacheMode::Auto),
        seen(1),
    );
    assert_eq!(p.positions(), [CachePosition::System]);
}

#[test]
fn below_the_minimum_and_unsupported_models_are_untouched() {
    let mut short = request(500, 1);
    let p = plan(
        &mut short,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert_eq!(p.skipped, [(CachePosition::System, Skip::BelowMinimum)]);
    assert_eq!(short, request(500, 1));

    let mut llama = request(3000, 2);
    let p = plan(
        &mut llama,
        Format::Converse,
        Some(&model(LLAMA)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert!(p.injected.is_empty());
    assert!(p.skipped.iter().all(|(_, s)| *s == Skip::UnsupportedModel));
    assert_eq!(llama, request(3000, 2));
    let p = plan(
        &mut llama,
        Format::Converse,
        None,
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert!(
        p.injected.is_empty(),
        "a model missing from the catalog is left alone"
    );
}

#[test]
fn multi_turn_conversations_get_a_tail_point() {
    let mut body = request(3000, 3);
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(2),
    );
    assert_eq!(
        p.positions(),
        [CachePosition::System, CachePosition::Conversation]
    );
    let last = body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["content"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    let mut single = request(3000, 1);
    let p = plan(
        &mut single,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(2),
    );
    assert!(
        !p.positions().contains(&CachePosition::Conversation),
        "one turn is not a conversation yet"
    );
}

#[test]
fn the_clients_own_points_count_and_are_not_duplicated() {
    let mut marked = request(3000, 3);
    marked["system"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    let p = plan(
        &mut marked,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert_eq!(p.positions(), [CachePosition::Conversation]);
    assert_eq!(
        p.skipped,
        [
            (CachePosition::System, Skip::ClientHasIt),
            (CachePosition::Head, Skip::BelowMinimum)
        ]
    );

    // Four points of the client's own in its messages: nothing more may be added.
    let mut full = request(3000, 3);
    for m in full["messages"].as_array_mut().unwrap().iter_mut().take(4) {
        m["content"]
            .as_array_mut()
            .unwrap()
            .push(json!({"cachePoint": {"type": "default"}}));
    }
    let mut first_messages = full.clone();
    let p = plan(
        &mut first_messages,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert!(p.injected.is_empty());
    assert!(
        p.skipped.contains(&(CachePosition::System, Skip::NoBudget)),
        "{p:?}"
    );
    assert_eq!(first_messages, full);
}

#[test]
fn tools_are_cached_only_where_the_model_allows() {
    let tool = json!({"toolSpec": {"name": "search", "description": text(2500), "inputSchema": {"json": {"type": "object"}}}});
    let mut body = request(10, 1);
    body["toolConfig"] = json!({"tools": [tool]});
    let mut claude = body.clone();
    let p = plan(
        &mut claude,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert!(p.positions().contains(&CachePosition::Tools), "{p:?}");
    assert_eq!(
        claude["toolConfig"]["tools"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    let mut nova = body.clone();
    let p = plan(
        &mut nova,
        Format::Converse,
        Some(&model(NOVA)),
        &policy(PromptCacheMode::Always),
        seen(9),
    );
    assert!(p
        .skipped
        .contains(&(CachePosition::Tools, Skip::ToolsNotCacheable)));
    assert!(nova["toolConfig"]["tools"].as_array().unwrap().len() == 1);
}

#[test]
fn the_one_hour_ttl_is_asked_for_only_where_it_exists() {
    let one_hour = PromptCacheConfig {
        ttl: CacheTtl::OneHour,
        ..policy(PromptCacheMode::Always)
    };
    let mut sonnet = request(3000, 1);
    plan(
        &mut sonnet,
        Format::Converse,
        Some(&model(SONNET_45)),
        &one_hour,
        seen(9),
    );
    assert_eq!(
        sonnet["system"][1],
        json!({"cachePoint": {"type": "default", "ttl": "1h"}})
    );
    let mut haiku = request(3000, 1);
    let p = plan(
        &mut haiku,
        Format::Converse,
        Some(&model(HAIKU)),
        &one_hour,
        seen(9),
    );
    assert_eq!(
        haiku["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    assert!(p.skipped.iter().any(|(_, s)| *s == Skip::TtlUnavailable));
}

#[test]
fn anthropic_bodies_get_cache_control() {
    let mut body = json!({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
        "system": text(3000),
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
            {"role": "user", "content": "q2"}
        ]
    });
    assert_eq!(Format::of_invoke_body(&body), Some(Format::Anthropic));
    let p = plan(
        &mut body,
        Format::Anthropic,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(2),
    );
    assert_eq!(
        p.positions(),
        [CachePosition::System, CachePosition::Conversation]
    );
    assert_eq!(
        body["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(body["system"][0]["text"], json!(text(3000)));
    assert_eq!(
        body["messages"][2]["content"][0],
        json!({"type": "text", "text": "q2", "cache_control": {"type": "ephemeral"}})
    );
    assert_eq!(
        body["messages"][0]["content"],
        json!("q1"),
        "earlier turns are untouched"
    );
}

#[test]
fn prefix_sizes_follow_the_simulators_estimator() {
    let body = request(3000, 2);
    let p = Prefixes::of(&body, Format::Converse);
    assert_eq!(p.total, bedrock_wire::tokens::converse_request(&body));
    assert!(p.system_end >= 2048 && p.system_end < p.total);
    assert_eq!(p.user_turns, 2);
}

/// An observation of a prefix seen `n` times with what learning says about it.
fn observed(n: u64, f: impl FnOnce(&mut Observed)) -> Option<Observed> {
    let mut o = Observed {
        sightings: n,
        reads_per_write: 1.0,
        first_write: true,
        ..Observed::default()
    };
    f(&mut o);
    Some(o)
}

#[test]
fn learning_holds_back_what_did_not_pay_and_asks_a_class_for_more() {
    let auto = policy(PromptCacheMode::Auto);
    let mut body = request(3000, 1);
    let held = Observations {
        system: observed(5, |o| o.hold = Some(Hold::Unpaid)),
        ..Observations::default()
    };
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        held.clone(),
    );
    assert_eq!(p.skipped, [(CachePosition::System, Skip::Unpaid)]);
    assert_eq!(body, request(3000, 1));
    // Without learning the static rule applies.
    let static_auto = PromptCacheConfig {
        learn: false,
        ..auto.clone()
    };
    let p = plan(
        &mut body.clone(),
        Format::Converse,
        Some(&model(HAIKU)),
        &static_auto,
        held,
    );
    assert_eq!(p.positions(), [CachePosition::System]);

    // Its class learned that a second sighting is not enough...
    let class = Observations {
        system: observed(2, |o| o.extra = 1),
        ..Observations::default()
    };
    let p = plan(
        &mut body.clone(),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        class,
    );
    assert_eq!(p.skipped, [(CachePosition::System, Skip::NotRepeated)]);
    let third = Observations {
        system: observed(3, |o| o.extra = 1),
        ..Observations::default()
    };
    let p = plan(
        &mut body.clone(),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        third,
    );
    assert_eq!(p.positions(), [CachePosition::System]);
    // ...unless the prefix's own record has paid.
    let proven = Observations {
        system: observed(2, |o| {
            o.extra = 1;
            o.proven = true;
        }),
        ..Observations::default()
    };
    let p = plan(
        &mut body.clone(),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        proven,
    );
    assert_eq!(p.positions(), [CachePosition::System]);

    // A conversation class may need a third user turn.
    let conversations = Observations {
        system: observed(2, |_| {}),
        conversation: observed(2, |o| o.extra = 1),
        ..Observations::default()
    };
    let p = plan(
        &mut request(3000, 2),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        conversations.clone(),
    );
    assert_eq!(p.positions(), [CachePosition::System]);
    assert!(p
        .skipped
        .contains(&(CachePosition::Conversation, Skip::NotRepeated)));
    let p = plan(
        &mut request(3000, 3),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto,
        conversations,
    );
    assert_eq!(
        p.positions(),
        [CachePosition::System, CachePosition::Conversation]
    );
}

#[test]
fn auto_ttl_follows_each_prefix_and_keeps_longer_ttls_first() {
    let auto_ttl = PromptCacheConfig {
        ttl: CacheTtl::Auto,
        ..policy(PromptCacheMode::Auto)
    };
    let slow_tail = Observations {
        system: observed(2, |_| {}),
        conversation: observed(3, |o| o.ttl_1h = true),
        ..Observations::default()
    };
    let mut body = request(3000, 3);
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(SONNET_45)),
        &auto_ttl,
        slow_tail.clone(),
    );
    // The tail wants the hour; the system point before it must not be shorter.
    assert_eq!(
        p.injected,
        [
            Point {
                position: CachePosition::System,
                ttl_1h: true
            },
            Point {
                position: CachePosition::Conversation,
                ttl_1h: true
            },
        ]
    );
    assert_eq!(
        body["system"][1],
        json!({"cachePoint": {"type": "default", "ttl": "1h"}})
    );
    // A model without the hour gets 5 minutes, silently: auto asked for nothing it lacks.
    let p = plan(
        &mut request(3000, 3),
        Format::Converse,
        Some(&model(HAIKU)),
        &auto_ttl,
        slow_tail.clone(),
    );
    assert!(p.injected.iter().all(|p| !p.ttl_1h));
    assert!(!p.skipped.iter().any(|(_, s)| *s == Skip::TtlUnavailable));
    // The client's own 5-minute point in the history caps the tail at 5 minutes.
    let mut marked = request(3000, 3);
    marked["messages"][0]["content"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    let p = plan(
        &mut marked,
        Format::Converse,
        Some(&model(SONNET_45)),
        &auto_ttl,
        slow_tail,
    );
    assert_eq!(
        p.positions(),
        [CachePosition::System, CachePosition::Conversation]
    );
    assert!(p.injected.iter().all(|p| !p.ttl_1h), "{p:?}");
    // The client's own 1-hour point later on lifts ours before it to the hour.
    let mut later_hour = request(3000, 3);
    let last = later_hour["messages"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap();
    last["content"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default", "ttl": "1h"}}));
    let p = plan(
        &mut later_hour,
        Format::Converse,
        Some(&model(SONNET_45)),
        &auto_ttl,
        seen(2),
    );
    assert_eq!(
        p.injected,
        [Point {
            position: CachePosition::System,
            ttl_1h: true
        }]
    );
}

#[test]
fn a_long_opening_message_gets_its_own_point() {
    let mut body = request(1100, 3);
    body["messages"][0]["content"][0]["text"] = json!(text(1500));
    let opened = Observations {
        system: observed(2, |_| {}),
        head: observed(2, |_| {}),
        ..Observations::default()
    };
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(SONNET_45)),
        &policy(PromptCacheMode::Auto),
        opened.clone(),
    );
    assert_eq!(
        p.positions(),
        [
            CachePosition::System,
            CachePosition::Head,
            CachePosition::Conversation
        ]
    );
    assert_eq!(
        body["messages"][0]["content"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    // A short opening adds too little to be worth a point.
    let p = plan(
        &mut request(1100, 3),
        Format::Converse,
        Some(&model(SONNET_45)),
        &policy(PromptCacheMode::Auto),
        opened,
    );
    assert!(
        p.skipped
            .contains(&(CachePosition::Head, Skip::BelowMinimum)),
        "{p:?}"
    );
}

#[test]
fn a_short_budget_goes_to_the_most_tokens_reused_per_write() {
    // Three points of the client's own leave one.
    let mut body = request(3000, 3);
    body["toolConfig"] = json!({"tools": [
        {"toolSpec": {"name": "search", "description": text(2000), "inputSchema": {"json": {"type": "object"}}}},
        {"cachePoint": {"type": "default"}}
    ]});
    let messages = body["messages"].as_array_mut().unwrap();
    for m in messages.iter_mut().take(2) {
        m["content"]
            .as_array_mut()
            .unwrap()
            .push(json!({"cachePoint": {"type": "default"}}));
    }
    messages[4]["content"][0]["text"] = json!(text(1000));
    // The conversation's tail re-used far more per write than the system prompt.
    let observed = Observations {
        system: observed(9, |o| o.reads_per_write = 0.1),
        conversation: observed(3, |o| o.reads_per_write = 5.0),
        ..Observations::default()
    };
    let p = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        observed,
    );
    assert_eq!(p.positions(), [CachePosition::Conversation], "{p:?}");
    assert!(p.skipped.contains(&(CachePosition::System, Skip::NoBudget)));
}
/// A PDF of `pages` pages, as base64 (its `/Type /Page` objects counted).
fn pdf(pages: usize) -> String {
    use base64::Engine;
    let mut bytes = b"%PDF-1.4\n".to_vec();
    for i in 0..pages {
        bytes.extend(format!("{} 0 obj << /Type /Page >> endobj\n", i + 3).as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn documents_count_in_prefix_sizes_and_earn_a_tail_point() {
    // A short question about a two-page PDF, then a follow-up: the document is
    // most of the conversation's prefix.
    let data = pdf(2);
    let converse = json!({"messages": [
        {"role": "user", "content": [
            {"document": {"format": "pdf", "name": "report", "source": {"bytes": data}}},
            {"text": "Summarize."}]},
        {"role": "assistant", "content": [{"text": "Revenue grew."}]},
        {"role": "user", "content": [{"text": "By how much?"}]}]});
    let p = Prefixes::of(&converse, Format::Converse);
    assert!(p.total >= 3000, "two pages at 1,500 tokens: {}", p.total);
    assert_eq!(p.total, bedrock_wire::tokens::converse_request(&converse));
    let anthropic = json!({"messages": [
        {"role": "user", "content": [
            {"type": "document", "title": "report",
                "source": {"type": "base64", "media_type": "application/pdf", "data": data}},
            {"type": "text", "text": "Summarize."}]},
        {"role": "assistant", "content": "Revenue grew."},
        {"role": "user", "content": "By how much?"}]});
    assert_eq!(Prefixes::of(&anthropic, Format::Anthropic).total, p.total);

    let mut body = converse.clone();
    let plan = plan(
        &mut body,
        Format::Converse,
        Some(&model(HAIKU)),
        &policy(PromptCacheMode::Auto),
        seen(2),
    );
    assert_eq!(
        plan.injected,
        [Point {
            position: CachePosition::Conversation,
            ttl_1h: false
        }]
    );
    assert_eq!(
        body["messages"][2]["content"][1],
        json!({"cachePoint": {"type": "default"}})
    );
}

#[test]
fn a_prompt_router_is_planned_with_its_most_restrictive_model() {
    let catalog = crate::catalog::Catalog::parse(
        r#"
[[models]]
id = "small"
profiles = ["us.small"]
prompt_cache = true
cache_min_tokens = 1024
max_cache_points = 4
cache_tools = true
price = { input = 1.0, output = 2.0, cache_write = 1.25, cache_read = 0.1 }

[[models]]
id = "large"
profiles = ["us.large"]
prompt_cache = true
cache_min_tokens = 2048
max_cache_points = 2
price = { input = 3.0, output = 6.0, cache_write = 3.0, cache_read = 0.3 }

[[models]]
id = "plain"
profiles = ["us.plain"]
price = { input = 1.0, output = 1.0 }

[[routers]]
id = "both:1"
models = ["us.small", "us.large"]

[[routers]]
id = "mixed:1"
models = ["us.small", "us.plain"]
"#,
    )
    .unwrap();
    let arn =
        |id: &str| format!("arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/{id}");
    let both = super::limits_for(&catalog, &arn("both:1")).unwrap();
    assert!(both.prompt_cache);
    assert_eq!(both.cache_min_tokens, 2048, "the larger minimum");
    assert_eq!(both.max_cache_points, 2, "the fewer points");
    assert!(!both.cache_tools, "tools only if every member caches them");
    assert_eq!(both.id, "both:1");
    assert_eq!(
        both.price.cache_write,
        Some(1.25),
        "the dearest write relative to input decides how many sightings it takes"
    );
    let mixed = super::limits_for(&catalog, &arn("mixed:1")).unwrap();
    assert!(
        !mixed.prompt_cache,
        "a member without a prompt cache: leave it alone"
    );
    assert_eq!(super::limits_for(&catalog, "us.large").unwrap().id, "large");
    assert!(super::limits_for(&catalog, &arn("unknown:1")).is_none());
}
