//! Prompt-cache economics end to end: what the planner learns from the usage
//! Bedrock (the simulator) reports, over simulated minutes and hours. Both
//! clocks are moved, never waited for: the simulator's with its own clock,
//! the proxy's learning clock through `AppState::advance_prompt_cache_clock`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::types::{
    CachePointBlock, CachePointType, CacheTtl, ContentBlock, ConversationRole, Message,
    SystemContentBlock,
};
use bedrock_sim::testing::{raw, sdk_client};
use bedrock_sim::SimConfig;
use bedrock_wire::catalog::Catalog;
use bedrock_wire::converse::Usage;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const KEY_C: &str = "bpk_team_c_test_key";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

/// A `sonnet` route (Claude Sonnet 4.5 offers the 1-hour TTL) with `policy`,
/// and an API key of tenant `team-c` for every route.
fn sonnet_route(policy: &str) -> String {
    let key_c = bedrock_proxy::auth::hash_key(KEY_C);
    format!(
        "[[routes]]\nname = \"sonnet\"\naliases = [\"sonnet\"]\nmodels = [\"{SONNET}\"]\nupstream = \"sim\"\nprompt_cache = {policy}\n[[keys]]\ntenant = \"team-c\"\nkey_sha256 = \"{key_c}\"\n"
    )
}

/// A system prompt of about 3,000 tokens, different for each `n`.
fn system(n: usize) -> String {
    format!("Policy set {n}. ")
        + &"You are the support assistant of an online bookshop. Answer briefly and politely. "
            .repeat(150)
}

fn request(system: &str, user: &str) -> Value {
    json!({"system": [{"text": system}], "messages": [{"role": "user", "content": [{"text": user}]}]})
}

async fn post_c(url: &str, body: &Value) -> bedrock_sim::testing::RawResponse {
    raw(
        "POST",
        url,
        &[
            ("authorization", &format!("Bearer {KEY_C}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
    .expect("the proxy answers")
}

/// Moves the simulator's and the proxy's clocks forward together.
fn pass(s: &Stack, by: Duration) {
    s.sim.sim.state().clock.advance(by);
    s.proxy.state.advance_prompt_cache_clock(by);
}

fn points_sent(s: &Stack) -> Vec<Value> {
    let body = s.upstream_requests().pop().unwrap().body;
    let mut out = Vec::new();
    let mut collect = |list: &Value| {
        for b in list.as_array().into_iter().flatten() {
            if let Some(p) = b.get("cachePoint") {
                out.push(p.clone());
            }
        }
    };
    collect(&body["toolConfig"]["tools"]);
    collect(&body["system"]);
    for m in body["messages"].as_array().into_iter().flatten() {
        collect(&m["content"]);
    }
    out
}

async fn admin(s: &Stack, path: &str) -> Value {
    let r = raw("GET", &format!("{}{path}", s.proxy.admin_url()), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    r.json()
}

/// Learning has effects that land after the answer (the ledgers are written
/// off the response path): asks until `check` holds, a bounded number of times.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for {what}");
}

async fn writes_recorded(s: &Stack, n: i64) {
    eventually("the proxy to record Bedrock's writes", async || {
        let report = admin(s, "/admin/prompt-cache").await;
        report["prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["writes"].as_i64().unwrap())
            .sum::<i64>()
            >= n
    })
    .await;
}

#[tokio::test]
async fn prefixes_seen_twice_then_never_again_stop_being_written_once_their_writes_go_unread() {
    let s = stack_full(fast(), "", "prompt_cache = { mode = \"auto\" }", "").await;
    let url = s.op_url("haiku", "converse");
    // Three system prompts, each seen twice: the second sighting is written,
    // and nothing ever reads it.
    for n in 0..3 {
        let first = post_b(&url, request(&system(n), "Where is my order?").to_string()).await;
        assert_eq!(first.header("x-proxy-cache-points"), Some("0"));
        let second = post_b(&url, request(&system(n), "Can I return it?").to_string()).await;
        assert_eq!(
            second.header("x-proxy-cache-points"),
            Some("1"),
            "static rule: seen twice"
        );
        assert!(
            second.json()["usage"]["cacheWriteInputTokens"]
                .as_u64()
                .unwrap()
                >= 2048
        );
    }
    writes_recorded(&s, 3).await;
    // Before the 5-minute TTL runs out nothing is judged yet.
    pass(&s, Duration::from_secs(60));
    post_b(&url, request(&system(3), "a").to_string()).await;
    let early = post_b(&url, request(&system(3), "b").to_string()).await;
    assert_eq!(early.header("x-proxy-cache-points"), Some("1"));
    // Fifteen minutes on, the first writes are judged: unread. A new prompt
    // seen twice is no longer written...
    pass(&s, Duration::from_secs(15 * 60));
    for (turn, expected) in [("a", "0"), ("b", "0"), ("c", "1")] {
        let r = post_b(&url, request(&system(9), turn).to_string()).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-proxy-cache-points"),
            Some(expected),
            "sighting {turn} of a new prompt"
        );
    }
    // ...until its third sighting, whose write the fourth reads.
    let fourth = post_b(&url, request(&system(9), "d").to_string()).await;
    assert!(
        fourth.json()["usage"]["cacheReadInputTokens"]
            .as_u64()
            .unwrap()
            >= 2048
    );
    let report = admin(&s, "/admin/prompt-cache").await;
    let class = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["section"] == "system")
        .unwrap()
        .clone();
    assert_eq!(class["extra_needed"], 1, "{report:#}");
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_skipped_total",
            &[
                "route=\"haiku\"",
                "position=\"system\"",
                "reason=\"not_repeated\""
            ]
        ) >= 5.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_prefix_whose_write_went_unread_is_backed_off_then_tried_again() {
    let s = stack_full(fast(), "", "prompt_cache = { mode = \"auto\" }", "").await;
    let url = s.op_url("haiku", "converse");
    let sys = system(1);
    let send = |q: &'static str| post_b(&url, request(&sys, q).to_string());
    assert_eq!(send("a").await.header("x-proxy-cache-points"), Some("0"));
    assert_eq!(send("b").await.header("x-proxy-cache-points"), Some("1"));
    writes_recorded(&s, 1).await;
    // Twenty minutes later (its 5-minute write long gone, unread) it comes back twice.
    pass(&s, Duration::from_secs(20 * 60));
    assert_eq!(send("c").await.header("x-proxy-cache-points"), Some("0"));
    let held = send("d").await;
    assert_eq!(
        held.header("x-proxy-cache-points"),
        Some("0"),
        "the static rule would write it again"
    );
    assert!(held.json()["usage"].get("cacheWriteInputTokens").is_none());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_skipped_total",
            &[
                "route=\"haiku\"",
                "position=\"system\"",
                "reason=\"unpaid\""
            ]
        ),
        1.0
    );
    let report = admin(&s, "/admin/prompt-cache").await;
    let prefix = &report["prefixes"][0];
    assert!(
        prefix["backed_off_for_s"].as_i64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(prefix["writes"], 1);
    assert_eq!(prefix["reads"], 0);
    assert!(prefix["saved_usd"].as_f64().unwrap() < 0.0);
    // After the 15-minute back-off it is tried again, and this time read back.
    pass(&s, Duration::from_secs(16 * 60));
    assert_eq!(send("e").await.header("x-proxy-cache-points"), Some("0"));
    assert_eq!(send("f").await.header("x-proxy-cache-points"), Some("1"));
    let read = send("g").await;
    assert!(
        read.json()["usage"]["cacheReadInputTokens"]
            .as_u64()
            .unwrap()
            >= 2048
    );
    s.shutdown().await;
}

/// Turns of one conversation on `model`, `gap` apart; each turn's usage as the
/// SDK reports it, and the cache points the simulator received.
async fn slow_conversation(
    s: &Stack,
    model: &str,
    turns: usize,
    gap: Duration,
) -> Vec<(aws_sdk_bedrockruntime::types::TokenUsage, Vec<Value>)> {
    let client = sdk_client(&s.url());
    let mut messages: Vec<Message> = Vec::new();
    let mut out = Vec::new();
    for turn in 0..turns {
        if turn > 0 {
            pass(s, gap);
        }
        messages.push(bedrock_sim::testing::user_text(&format!(
            "Question {turn}: what about my order?"
        )));
        let answer = client
            .converse()
            .model_id(model)
            .system(SystemContentBlock::Text(system(0)))
            .set_messages(Some(messages.clone()))
            .send()
            .await
            .unwrap();
        out.push((answer.usage().unwrap().clone(), points_sent(s)));
        let reply = answer.output().unwrap().as_message().unwrap().content()[0]
            .as_text()
            .unwrap()
            .clone();
        messages.push(
            Message::builder()
                .role(ConversationRole::Assistant)
                .content(ContentBlock::Text(reply))
                .build()
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn a_conversation_with_seven_minute_gaps_moves_to_the_hour_and_then_reads_every_turn() {
    let seven = Duration::from_secs(7 * 60);
    let s = stack_full(
        fast(),
        "",
        "",
        &sonnet_route("{ mode = \"auto\", ttl = \"auto\" }"),
    )
    .await;
    let turns = slow_conversation(&s, "sonnet", 5, seven).await;
    // Turn 1: one user turn, the system prompt seen once: nothing to mark.
    assert!(turns[0].1.is_empty());
    // Turn 2: 7 minutes since the last use of both prefixes: the hour pays.
    assert_eq!(
        turns[1].1,
        [
            json!({"type": "default", "ttl": "1h"}),
            json!({"type": "default", "ttl": "1h"})
        ]
    );
    let written = turns[1].0.cache_write_input_tokens().unwrap_or(0);
    assert!(written > 3000);
    let details = turns[1].0.cache_details();
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].ttl(), &CacheTtl::OneHour);
    assert_eq!(details[0].input_tokens(), written as i32);
    // Every later turn reads all the turn before it sent, 7 minutes on.
    for (n, pair) in turns.windows(2).enumerate().skip(1) {
        let before = &pair[0].0;
        let prompt_before = before.input_tokens()
            + before.cache_read_input_tokens().unwrap_or(0)
            + before.cache_write_input_tokens().unwrap_or(0);
        assert_eq!(
            pair[1].0.cache_read_input_tokens(),
            Some(prompt_before),
            "turn {} reads turn {}",
            n + 2,
            n + 1
        );
    }

    // The same conversation on 5-minute points: each turn writes again, reads nothing.
    let s5 = stack_full(
        fast(),
        "",
        "",
        &sonnet_route("{ mode = \"auto\", learn = false }"),
    )
    .await;
    let static_turns = slow_conversation(&s5, "sonnet", 5, seven).await;
    for (usage, points) in &static_turns[2..] {
        assert!(points.iter().all(|p| p.get("ttl").is_none()));
        assert_eq!(usage.cache_read_input_tokens().unwrap_or(0), 0);
        assert!(usage.cache_write_input_tokens().unwrap_or(0) > 3000);
    }
    s.shutdown().await;
    s5.shutdown().await;
}

#[tokio::test]
async fn the_clients_own_points_are_passed_as_sent_whatever_the_planner_learns() {
    let s = stack_full(
        fast(),
        "",
        "",
        &sonnet_route("{ mode = \"auto\", ttl = \"auto\" }"),
    )
    .await;
    let client = sdk_client(&s.url());
    let hour = CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .ttl(CacheTtl::OneHour)
        .build()
        .unwrap();
    let five = CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .build()
        .unwrap();
    let text = |role: ConversationRole, t: &str| {
        Message::builder()
            .role(role)
            .content(ContentBlock::Text(t.to_owned()))
    };
    // The client marks its system prompt (1 hour) and its opening (5 minutes),
    // and sends the same three-turn conversation every 20 minutes: the tail
    // point the proxy adds is never read.
    let messages = vec![
        text(
            ConversationRole::User,
            &"Tell me about the shop. ".repeat(200),
        )
        .content(ContentBlock::CachePoint(five))
        .build()
        .unwrap(),
        text(ConversationRole::Assistant, "It sells books.")
            .build()
            .unwrap(),
        text(ConversationRole::User, "Which ones?").build().unwrap(),
        text(ConversationRole::Assistant, "Old ones.")
            .build()
            .unwrap(),
        text(ConversationRole::User, "How old?").build().unwrap(),
    ];
    let mut ours = Vec::new();
    for round in 0..6 {
        if round > 0 {
            pass(&s, Duration::from_secs(20 * 60));
        }
        let answer = client
            .converse()
            .model_id("sonnet")
            .system(SystemContentBlock::Text(system(0)))
            .system(SystemContentBlock::CachePoint(hour.clone()))
            .set_messages(Some(messages.clone()))
            .send()
            .await
            .unwrap();
        assert!(
            answer
                .usage()
                .unwrap()
                .cache_write_input_tokens()
                .unwrap_or(0)
                > 0
        );
        let sent = s.upstream_requests().pop().unwrap().body;
        assert_eq!(sent["system"].as_array().unwrap().len(), 2);
        assert_eq!(
            sent["system"][1],
            json!({"cachePoint": {"type": "default", "ttl": "1h"}})
        );
        assert_eq!(
            sent["messages"][0]["content"].as_array().unwrap()[1..],
            [json!({"cachePoint": {"type": "default"}})]
        );
        let tail = sent["messages"][4]["content"].as_array().unwrap().len() == 2;
        if tail {
            // After the client's 5-minute point, the proxy's may not ask for the hour.
            assert_eq!(
                sent["messages"][4]["content"][1],
                json!({"cachePoint": {"type": "default"}})
            );
        }
        ours.push(tail);
        // Wait until the proxy has recorded this round's write.
        let writes = ours.iter().filter(|t| **t).count() as i64;
        eventually("the tail's writes recorded", async || {
            let report = admin(&s, "/admin/prompt-cache").await;
            report["prefixes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["section"] == "conversation" && p["writes"].as_i64() == Some(writes))
        })
        .await;
    }
    // Written, excused once (the hour would have kept it, but the client's
    // point caps it at 5 minutes), backed off 15 minutes, tried again, backed
    // off 30 minutes: the client's points went through every time.
    assert_eq!(ours, [true, true, false, true, false, false]);
    s.shutdown().await;
}

#[tokio::test]
async fn savings_in_the_admin_api_match_the_reported_usage_priced_by_the_catalog() {
    let s = stack_full(
        fast(),
        "",
        "",
        &sonnet_route("{ mode = \"auto\", ttl = \"1h\" }"),
    )
    .await;
    let url = s.op_url("sonnet", "converse");
    let catalog = Catalog::embedded();
    let price = catalog.get(SONNET).unwrap().model.price;
    let mut expected = 0.0;
    let mut usages = Vec::new();
    // One-hour writes, reads, and a 5-minute write of the client's own.
    let mut bodies: Vec<Value> = (0..4)
        .map(|i| request(&system(0), &format!("q{i}")))
        .collect();
    let mut own = request(&system(5), "mine");
    own["system"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cachePoint": {"type": "default"}}));
    bodies.push(own);
    for body in &bodies {
        let r = post_c(&url, body).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        let usage = Usage::from_json(&r.json()["usage"]);
        expected += price.prompt_cache_savings(&usage);
        usages.push(usage);
    }
    assert!(usages.iter().any(|u| u.cache_write_1h_input_tokens > 0));
    assert!(usages.iter().any(|u| u.cache_read_input_tokens > 0));
    assert!(usages.iter().any(|u| u.cache_write_5m_input_tokens() > 0));
    eventually("the last answer's totals", async || {
        admin(&s, "/admin/prompt-cache").await["totals"][0]["answers"] == bodies.len()
    })
    .await;
    let report = admin(&s, "/admin/prompt-cache").await;
    let totals = report["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["route"] == "sonnet" && t["tenant"] == "team-c")
        .unwrap()
        .clone();
    assert_eq!(totals["model"], "anthropic.claude-sonnet-4-5-20250929-v1:0");
    assert_eq!(totals["answers"], bodies.len());
    let saved = totals["saved_usd"].as_f64().unwrap();
    assert!(
        (saved - expected).abs() < 1e-9,
        "admin {saved} vs usage {expected}"
    );
    assert_eq!(
        totals["write_tokens_1h"].as_u64().unwrap(),
        usages
            .iter()
            .map(|u| u.cache_write_1h_input_tokens)
            .sum::<u64>()
    );
    let m = s.metrics().await;
    let metric_saved = metric(
        &m,
        "bedrock_proxy_prompt_cache_saved_usd",
        &["route=\"sonnet\"", "tenant=\"team-c\""],
    );
    assert!(
        (metric_saved - expected).abs() < 1e-9,
        "metric {metric_saved} vs {expected}"
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_points_injected_total",
            &["route=\"sonnet\"", "ttl=\"1h\""]
        ) >= 3.0
    );
    assert!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_write_tokens_total",
            &["route=\"sonnet\"", "ttl=\"1h\""]
        ) > 0.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn replicas_share_what_they_learn_through_redis() {
    let redis = RedisServer::start().await;
    let shared = format!("[cache.redis]\nurl = \"{}\"\n", redis.url());
    let sim = bedrock_sim::testing::spawn(fast()).await;
    let auto = "prompt_cache = { mode = \"auto\" }";
    let a = proxy_for(&sim.url(), "", auto, &shared).await;
    let b = proxy_for(&sim.url(), "", auto, &shared).await;
    for admin in [a.admin_url(), b.admin_url()] {
        for _ in 0..100 {
            let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
                .await
                .unwrap()
                .json();
            if d["redis"]["connected"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sys = system(2);
    let on = |p: &bedrock_proxy::server::ProxyHandle, q: &str| {
        let url = format!("{}/model/haiku/converse", p.url());
        let body = request(&sys, q).to_string();
        async move { post_b(&url, body).await }
    };
    assert_eq!(on(&a, "1").await.header("x-proxy-cache-points"), Some("0"));
    assert_eq!(
        on(&b, "2").await.header("x-proxy-cache-points"),
        Some("1"),
        "B counts A's sighting"
    );
    // B's write is recorded in the shared ledger; twenty minutes on, nobody read it.
    for _ in 0..100 {
        let report = raw(
            "GET",
            &format!("{}/admin/prompt-cache", b.admin_url()),
            &[],
            "",
        )
        .await
        .unwrap()
        .json();
        if report["prefixes"][0]["writes"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let twenty = Duration::from_secs(20 * 60);
    sim.sim.state().clock.advance(twenty);
    a.state.advance_prompt_cache_clock(twenty);
    b.state.advance_prompt_cache_clock(twenty);
    assert_eq!(on(&a, "3").await.header("x-proxy-cache-points"), Some("0"));
    // A judged B's write unread and backed the prefix off: B holds it back too.
    assert_eq!(on(&b, "4").await.header("x-proxy-cache-points"), Some("0"));
    let m = raw("GET", &format!("{}/metrics", b.admin_url()), &[], "")
        .await
        .unwrap();
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    assert_eq!(
        metric(
            &m,
            "bedrock_proxy_prompt_cache_skipped_total",
            &[
                "route=\"haiku\"",
                "position=\"system\"",
                "reason=\"unpaid\""
            ]
        ),
        1.0
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}
