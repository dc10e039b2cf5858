//! End to end: each subcommand's code path run against an in-process simulator
//! that answers as fast as it can, checking counts and error codes the way a
//! user reading the report would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use bedrock_bench::client::AuthOptions;
use bedrock_bench::latency::{self, LatencyOptions};
use bedrock_bench::load::{self, Arrival, Format, LoadOptions, Stop};
use bedrock_bench::workload::{self, WorkloadOptions};
use bedrock_sim::{SimConfig, Simulator};
use std::time::Duration;

async fn simulator() -> bedrock_sim::SimHandle {
    Simulator::new(SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .unwrap()
    .spawn("127.0.0.1:0".parse().unwrap())
    .await
    .unwrap()
}

fn load_options(targets: Vec<String>, stream: bool) -> LoadOptions {
    LoadOptions {
        targets,
        format: Format::Bedrock,
        stream,
        model: "us.anthropic.claude-3-5-haiku-20241022-v1:0".into(),
        arrival: Arrival::Closed { concurrency: 4 },
        stop: Stop::Requests(40),
        warmup: 5,
        auth: AuthOptions::default(),
        region: "us-east-2".into(),
        max_tokens: 16,
        prompt: "Say something about the sea.".into(),
        unique: false,
        timeout: Duration::from_secs(10),
        progress: false,
    }
}

#[tokio::test]
async fn load_closed_loop_streams_count_every_request() {
    let sim = simulator().await;
    let report = load::run(load_options(vec![sim.url()], true))
        .await
        .unwrap();
    let t = &report.targets[0];
    assert_eq!(t.requests, 40, "warmup is left out");
    assert_eq!(t.ok, 40, "errors: {:?}", t.errors);
    assert!(t.errors.is_empty());
    assert!(t.throughput_rps > 0.0);
    let latency = t.latency_ms.unwrap();
    let ttft = t.ttft_ms.unwrap();
    assert_eq!(latency.count, 40);
    assert!(ttft.p50 <= latency.p50 + 0.01);
    assert!(t.output_tokens > 0);
    assert!(load::render(&report).contains("TTFT"));
}

#[tokio::test]
async fn load_open_loop_compare_alternates_targets() {
    let a = simulator().await;
    let b = simulator().await;
    let mut options = load_options(vec![a.url(), b.url()], false);
    options.arrival = Arrival::Open { rate: 400.0 };
    options.unique = true;
    let report = load::run(options).await.unwrap();
    assert_eq!(report.targets.len(), 2);
    for t in &report.targets {
        assert_eq!(t.requests, 20, "{}: alternating splits evenly", t.label);
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        assert!(t.ttft_ms.is_none(), "no TTFT without streaming");
    }
    assert_eq!(report.comparison.len(), 3);
    let dir = std::env::temp_dir().join(format!("bench-load-{}", std::process::id()));
    bedrock_bench::write_json(&report, &dir, "load.json").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("load.json")).unwrap()).unwrap();
    assert_eq!(json["targets"][1]["requests"], 20);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn load_counts_errors_by_code() {
    let sim = simulator().await;
    let mut options = load_options(vec![sim.url()], true);
    options.model = "no.such-model-v1:0".into();
    options.stop = Stop::Requests(6);
    options.warmup = 0;
    let report = load::run(options).await.unwrap();
    let t = &report.targets[0];
    assert_eq!(t.ok, 0);
    assert_eq!(t.errors.get("ValidationException"), Some(&6));
}

const PROMPTS: &str = r#"{"text_prompt": "Explain machine learning.", "expected_output_tokens": 30, "task_type": "Text-Generation", "model_id": "us.anthropic.claude-3-5-haiku-20241022-v1:0", "region": "us-east-2", "inference_profile": "optimized"}
{"text_prompt": "Explain machine learning.", "expected_output_tokens": 30, "task_type": "Text-Generation", "model_id": "us.anthropic.claude-3-5-haiku-20241022-v1:0", "region": "us-east-2", "inference_profile": "standard"}
{"text_prompt": "Explain machine learning.", "expected_output_tokens": 30, "model_id": "anthropic.claude-3-5-haiku-20241022-v1:0", "region": "us-east-2", "inference_profile": "optimized"}
"#;

#[tokio::test]
async fn latency_measures_every_call_and_counts_refusals() {
    let sim = simulator().await;
    let prompts = latency::parse_prompts(PROMPTS, "test.jsonl").unwrap();
    let run = latency::run(LatencyOptions {
        prompts,
        endpoint: Some(sim.url()),
        region: "us-east-2".into(),
        concurrency: 2,
        repetitions: 3,
        pause: Duration::ZERO,
        auth: AuthOptions::default(),
        timeout: Duration::from_secs(10),
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!(run.calls_total, 9);
    assert_eq!(run.groups.len(), 3);
    let optimized = &run.groups[0];
    assert_eq!((optimized.count, optimized.errors), (3, 0));
    assert_eq!(optimized.served.get("optimized"), Some(&3));
    let standard = &run.groups[1];
    assert_eq!((standard.count, standard.errors), (3, 0));
    assert_eq!(standard.served.get("standard"), Some(&3));
    let ttft = standard.ttft_ms.unwrap();
    let total = standard.total_ms.unwrap();
    assert!(ttft.max <= total.max);
    assert!(standard.otps.unwrap().mean > 0.0);
    assert_eq!(standard.output_tokens.unwrap().max, 30.0);
    // Optimized inference on a base model id is refused by Bedrock.
    let base = &run.groups[2];
    assert_eq!((base.count, base.errors), (3, 3));
    assert_eq!(run.errors_by_code.get("ValidationException"), Some(&3));

    let dir = std::env::temp_dir().join(format!("bench-latency-{}", std::process::id()));
    latency::write_outputs(&run, &dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["errors_by_code"]["ValidationException"], 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn workload_sends_conversations_and_repeats() {
    let sim = simulator().await;
    let report = workload::run(WorkloadOptions {
        shape: workload::Shape::App,
        time_scale: 1.0,
        targets: vec![sim.url()],
        model: "us.anthropic.claude-3-5-haiku-20241022-v1:0".into(),
        conversations: 4,
        system_prompts: 2,
        system_tokens: 500,
        turns: 2,
        repeat_share: 0.2,
        concurrency: 2,
        max_tokens: 32,
        seed: 1,
        auth: AuthOptions::default(),
        region: "us-east-2".into(),
        catalog: bedrock_wire::catalog::Catalog::embedded(),
        timeout: Duration::from_secs(10),
        progress: false,
    })
    .await
    .unwrap();
    let t = &report.targets[0];
    assert_eq!(t.requests, 10, "8 turns and 2 repeats");
    assert_eq!(t.repeats, 2);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    // Without cachePoint blocks nothing is read from Bedrock's prompt cache.
    assert!(t.billed.input_tokens > 10 * 500);
    assert_eq!(t.billed.cache_read_input_tokens, 0);
    let cost = t.cost.unwrap();
    assert!(cost.billed_usd > 0.0);
    assert!((cost.billed_usd - cost.without_caching_usd).abs() < 1e-12);
    assert_eq!(t.proxy_cache_hits, 0);
}

#[tokio::test]
async fn workload_long_tail_and_slow_shapes_run_on_a_fast_clock() {
    let sim = simulator().await;
    let options = |shape, conversations, turns| WorkloadOptions {
        shape,
        time_scale: 0.0001,
        targets: vec![sim.url()],
        model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0".into(),
        conversations,
        system_prompts: 2,
        system_tokens: 1200,
        turns,
        repeat_share: 0.2,
        concurrency: 4,
        max_tokens: 16,
        seed: 1,
        auth: AuthOptions::default(),
        region: "us-east-2".into(),
        catalog: bedrock_wire::catalog::Catalog::embedded(),
        timeout: Duration::from_secs(10),
        progress: false,
    };
    let tail = workload::run(options(workload::Shape::LongTail, 30, 5))
        .await
        .unwrap();
    let t = &tail.targets[0];
    assert_eq!(t.requests, 30, "one turn each, no repeats");
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert!(workload::render(&tail).contains("long tail: 30 one-turn requests"));
    let slow = workload::run(options(workload::Shape::Slow, 3, 3))
        .await
        .unwrap();
    let t = &slow.targets[0];
    assert_eq!(t.requests, 9, "3 conversations x 3 turns, no repeats");
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let cost = t.cost.unwrap();
    assert!(cost.input_usd > 0.0 && cost.input_usd < cost.billed_usd);
}

/// Serves a baseline on an ephemeral port for the length of the test.
async fn baseline(kind: bedrock_bench::baseline::Baseline) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(bedrock_wire::serve::serve(
        listener,
        bedrock_bench::baseline::router(kind),
        Default::default(),
        std::future::pending(),
    ));
    url
}

#[tokio::test]
async fn the_static_baseline_answers_like_a_converse_call() {
    use bedrock_bench::baseline::{Baseline, CONVERSE_ANSWER};
    let url = baseline(Baseline::with_body(CONVERSE_ANSWER.into())).await;
    let report = load::run(load_options(vec![url], false)).await.unwrap();
    let t = &report.targets[0];
    assert_eq!(t.ok, 40, "errors: {:?}", t.errors);
    assert_eq!(
        t.output_tokens,
        40 * 24,
        "the built-in answer's usage is read"
    );
}

/// The body of `url`'s answer to a Converse `request`.
async fn answer_of(url: &str, request: bytes::Bytes) -> bytes::Bytes {
    use http_body_util::{BodyExt, Full};
    let client = bedrock_wire::client::http_client(Duration::from_secs(5), 1, false);
    let call = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer bench-key")
        .body(Full::new(request))
        .unwrap();
    let response = client.request(call).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn a_copied_baseline_sends_the_simulators_answers_byte_for_byte() {
    use bedrock_bench::baseline::Baseline;
    use bedrock_bench::client::bedrock_url;
    let sim = simulator().await;
    let o = load_options(vec![], false);
    let request = load::bedrock_body(&o.prompt, o.max_tokens);
    let copied = Baseline::copy(&sim.url(), &o.model, request.clone(), "bench-key")
        .await
        .unwrap();
    let url = baseline(copied).await;
    for stream in [false, true] {
        let original = answer_of(&bedrock_url(&sim.url(), &o.model, stream), request.clone()).await;
        let copy = answer_of(&bedrock_url(&url, &o.model, stream), request.clone()).await;
        assert!(!original.is_empty());
        assert_eq!(copy, original, "stream: {stream}");
    }
    // A load test reads the same usage from the copy as from the simulator.
    let direct = load::run(load_options(vec![sim.url()], true))
        .await
        .unwrap();
    assert_eq!(direct.targets[0].ok, 40, "{:?}", direct.targets[0].errors);
    let from_copy = load::run(load_options(vec![url], true)).await.unwrap();
    assert_eq!(
        from_copy.targets[0].ok, 40,
        "{:?}",
        from_copy.targets[0].errors
    );
    assert_eq!(
        from_copy.targets[0].output_tokens,
        direct.targets[0].output_tokens
    );
}

#[tokio::test]
async fn copying_from_a_server_that_refuses_is_an_error_naming_it() {
    use bedrock_bench::baseline::Baseline;
    let sim = simulator().await;
    let refused = Baseline::copy(&sim.url(), "no.such-model", "{}".into(), "k").await;
    let message = refused.expect_err("an error").to_string();
    assert!(
        message.contains("/model/no.such-model/converse"),
        "{message}"
    );
    assert!(message.contains("answered 4"), "{message}");
}

#[tokio::test]
async fn the_forward_baseline_passes_requests_and_streams_through() {
    let sim = simulator().await;
    let url = baseline(bedrock_bench::baseline::Baseline::Forward(sim.url())).await;
    let report = load::run(LoadOptions {
        auth: AuthOptions {
            api_key: Some("bench-key".into()),
            ..AuthOptions::default()
        },
        ..load_options(vec![url], true)
    })
    .await
    .unwrap();
    let t = &report.targets[0];
    assert_eq!(t.ok, 40, "errors: {:?}", t.errors);
    assert!(
        t.ttft_ms.is_some(),
        "event-stream frames arrive through the forwarder"
    );
    let stats = sim.sim.state().stats.snapshot();
    assert_eq!(
        stats["by_operation"]["converse-stream"], 45,
        "the simulator saw the 40 calls and 5 warmups: {stats}"
    );
}
