use super::*;
use crate::catalog::Catalog;
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

fn seen(n: u64) -> Sightings {
    Sightings {
        tools: Some(n),
        system: Some(n),
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
    sightings: Sightings,
) -> Plan {
    let prefixes = Prefixes::of(body, format);
    let plan = decide(body, format, model, policy, sightings, prefixes);
    apply(body, format, &plan);
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
    assert_eq!(plan.injected, [CachePosition::System]);
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
    assert_eq!(p.injected, [CachePosition::System]);
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
    assert_eq!(p.injected, [CachePosition::System]);
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
        p.injected,
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
        !p.injected.contains(&CachePosition::Conversation),
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
    assert_eq!(p.injected, [CachePosition::Conversation]);
    assert_eq!(p.skipped, [(CachePosition::System, Skip::ClientHasIt)]);

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
    assert!(p.injected.contains(&CachePosition::Tools), "{p:?}");
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
        ttl_1h: true,
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
        p.injected,
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
