//! End to end: `soak` and `hold` against a bedrock-proxy in front of a
//! simulator, both in this process (so the process sampled is this one), for a
//! few seconds each. The checks are what a reader of the report relies on:
//! every kind was sent and counted, hits were hits, injected faults were told
//! apart from errors, and RSS and descriptor samples were taken.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use bedrock_bench::client::AuthOptions;
use bedrock_bench::hold::{self, HoldOptions};
use bedrock_bench::load::{Arrival, Format, LoadOptions, Stop};
use bedrock_bench::soak::{self, Mix, SoakOptions};
use bedrock_proxy::server::{start, ProxyHandle, StartOptions};
use bedrock_proxy::Config;
use bedrock_sim::{SimConfig, SimHandle, Simulator};
use std::net::SocketAddr;
use std::time::Duration;

const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const NOVA: &str = "us.amazon.nova-micro-v1:0";
const KEY: &str = "soak-test-key";
/// Not a timing assertion: a bound so that a hang fails instead of blocking CI.
const HANG: Duration = Duration::from_secs(300);

async fn stack() -> (SimHandle, ProxyHandle) {
    let sim = Simulator::new(SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .unwrap()
    .spawn("127.0.0.1:0".parse().unwrap())
    .await
    .unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[logging]
level = "warn"
[upstreams.sim]
kind = "simulator"
endpoint = "{sim}"
[[routes]]
name = "haiku"
models = ["{HAIKU}"]
upstream = "sim"
cache = {{ mode = "deterministic", ttl = "1h" }}
[[routes]]
name = "errors"
models = ["{NOVA}"]
upstream = "sim"
[[keys]]
tenant = "bench"
key_sha256 = "{hash}"
"#,
        sim = sim.url(),
        hash = bedrock_proxy::auth::hash_key(KEY),
    );
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = start(
        Config::parse(&config).unwrap(),
        None,
        StartOptions {
            listen: Some(loopback),
            admin_listen: Some(loopback),
            config_path: None,
        },
    )
    .await
    .unwrap();
    (sim, proxy)
}

fn key() -> AuthOptions {
    AuthOptions {
        api_key: Some(KEY.into()),
        ..AuthOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sends_every_kind_and_samples_the_process() {
    let (sim, proxy) = stack().await;
    let run = soak::run(SoakOptions {
        sim: Some(sim.url()),
        pid: Some(std::process::id()),
        rate: 60.0,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        sample_every: Duration::from_millis(500),
        mix: Mix::parse("hit=3,miss=2,stream=2,error=2,slow-body=1,slow-read=1,idle=2").unwrap(),
        hit_prompts: 2,
        slow_read_max_tokens: 100,
        slow_body: Duration::from_millis(300),
        slow_body_pieces: 3,
        slow_read_pause: Duration::from_millis(1),
        idle_max: 5,
        idle_hold: Duration::from_millis(500),
        timeout: Duration::from_secs(10),
        auth: key(),
        ..SoakOptions::new(proxy.url())
    });
    let report = tokio::time::timeout(HANG, run)
        .await
        .expect("the soak stops by itself")
        .unwrap();

    assert_eq!(report.arrivals, 240, "60/s for 4 s");
    let sent: u64 =
        report.kinds.iter().map(|k| k.sent).sum::<u64>() + report.faults.as_ref().unwrap().sent;
    let idle = report.idle.as_ref().unwrap();
    assert_eq!(
        sent + idle.counts.attempted + idle.skipped_at_max + report.skipped_in_flight,
        report.arrivals,
        "every arrival is counted once"
    );
    let names: Vec<&str> = report.kinds.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(
        names,
        ["hit", "miss", "stream", "slow-body", "slow-read"],
        "valid kinds, in order"
    );
    for k in &report.kinds {
        assert!(k.sent > 0, "{} was sent", k.kind);
        assert!(k.errors.is_empty(), "{}: {:?}", k.kind, k.errors);
        assert!(k.latency_ms.is_some(), "{} has latencies", k.kind);
    }
    assert_eq!(report.errors_total, 0);
    let hit = &report.kinds[0];
    assert!(
        hit.cache_hits >= hit.sent - 2,
        "two distinct bodies: all but their first sends hit ({} of {})",
        hit.cache_hits,
        hit.sent
    );
    assert_eq!(report.kinds[1].cache_hits, 0, "misses are unique");
    assert!(report.kinds[2].ttft_ms.is_some(), "streams measure TTFT");

    let faults = report.faults.as_ref().unwrap();
    assert!(faults.sent > 0);
    assert_eq!(faults.ok, 0, "the simulator rule fails every error request");
    assert_eq!(
        faults.errors.values().sum::<u64>(),
        faults.sent,
        "faults are counted apart from errors: {:?}",
        faults.errors
    );
    assert!(idle.counts.attempted > 0);
    assert_eq!(idle.counts.refused, 0);

    assert!(
        report.sampling_error.is_none(),
        "{:?}",
        report.sampling_error
    );
    assert!(
        report.samples.len() >= 8,
        "{} samples",
        report.samples.len()
    );
    assert!(report
        .samples
        .iter()
        .all(|s| s.process.rss_kb > 0 && s.process.fds > 0));
    let growth = report.growth.expect("samples after the warm-up");
    assert!(growth.samples >= 2);
    assert!(growth.rss_mb.start > 0.0 && growth.fds.start > 0.0);
    assert!(report.settled.is_some());

    let text = soak::render(&report);
    assert!(text.contains("valid requests failed: 0"), "{text}");
    assert!(text.contains("after the warm-up"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["kinds"][0]["kind"], "hit");
    assert!(json["samples"][0]["rss_kb"].as_u64().unwrap() > 0);

    // The fault rule is cleared after the run.
    let rules = sim.sim.state().faults.list();
    assert_eq!(rules, serde_json::json!([]));
    proxy.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_measures_with_and_without_held_connections() {
    let (sim, proxy) = stack().await;
    let run = hold::run(HoldOptions {
        measure: LoadOptions {
            targets: vec![proxy.url()],
            format: Format::Bedrock,
            stream: false,
            model: HAIKU.into(),
            arrival: Arrival::Closed { concurrency: 2 },
            stop: Stop::Requests(50),
            warmup: 5,
            auth: key(),
            region: "us-east-2".into(),
            max_tokens: 16,
            prompt: "Say something about the sea.".into(),
            unique: true,
            timeout: Duration::from_secs(10),
            progress: false,
        },
        slow: 20,
        idle: 30,
        byte_every: Duration::from_millis(100),
        content_length: 1000,
        held_auth: None,
        settle: Duration::from_millis(200),
        connect_parallelism: 8,
        connect_timeout: Duration::from_secs(5),
        pid: Some(std::process::id()),
    });
    let report = tokio::time::timeout(HANG, run)
        .await
        .expect("the hold stops by itself")
        .unwrap();
    assert_eq!(report.unloaded.requests, 50);
    assert_eq!(report.held.requests, 50);
    assert!(
        report.unloaded.errors.is_empty(),
        "{:?}",
        report.unloaded.errors
    );
    assert!(report.p99_ratio.is_some());
    assert_eq!(report.slow.attempted, 20);
    assert_eq!(report.idle.attempted, 30);
    assert_eq!(report.slow.refused + report.idle.refused, 0);
    for held in [&report.slow, &report.idle] {
        assert_eq!(
            held.open_at_release + held.ended_by_server() + held.refused,
            held.attempted
        );
    }
    assert_eq!(report.samples.len(), 3);
    if report.slow.open_at_release + report.idle.open_at_release == 50 {
        assert!(
            report.samples[1].fds >= report.samples[0].fds + 50,
            "this process holds the 50 client sockets (and the proxy their peers): {:?}",
            report.samples
        );
    }
    assert!(hold::render(&report).contains("held / unloaded"));
    proxy.shutdown().await;
    sim.shutdown().await;
}
