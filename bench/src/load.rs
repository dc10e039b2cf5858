//! The `load` subcommand: throughput and latency under load, closed loop (N
//! workers back to back) or open loop (a fixed arrival rate, latency measured
//! from each request's scheduled start so a slow server cannot hide its queue),
//! against one target or two compared request by request.
//!
//! Bedrock Converse and OpenAI chat completions are spoken, streamed or not.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Api, Auth, AuthOptions, BenchClient, CallResult};
use crate::error::BenchError;
use crate::stats::{LatencyHistogram, LatencySummary};
use crate::table::{code_list, num, Table};

/// The API spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Bedrock Converse / ConverseStream.
    Bedrock,
    /// OpenAI chat completions.
    Openai,
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// `concurrency` workers, each sending its next request when the last ends.
    Closed { concurrency: usize },
    /// Requests start at `rate` per second whatever the answers do.
    Open { rate: f64 },
}

/// When a phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Start no request after this long.
    After(Duration),
    /// Send this many requests.
    Requests(u64),
}

/// How to run a load test.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// One base URL, or two or more to compare (A, B, C...), interleaved.
    pub targets: Vec<String>,
    pub format: Format,
    pub stream: bool,
    pub model: String,
    pub arrival: Arrival,
    pub stop: Stop,
    /// Requests sent first and left out of every number.
    pub warmup: u64,
    pub auth: AuthOptions,
    /// SigV4 signing region.
    pub region: String,
    pub max_tokens: u32,
    pub prompt: String,
    /// Make every request body distinct so response caches miss.
    pub unique: bool,
    pub timeout: Duration,
    pub progress: bool,
}

/// Counters and histograms of one target.
#[derive(Debug)]
struct TargetStats {
    requests: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    cache_hits: u64,
    output_tokens: u64,
    latency: LatencyHistogram,
    ttft: LatencyHistogram,
}

impl TargetStats {
    fn new() -> Result<TargetStats, BenchError> {
        Ok(TargetStats {
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            cache_hits: 0,
            output_tokens: 0,
            latency: LatencyHistogram::new()?,
            ttft: LatencyHistogram::new()?,
        })
    }

    fn record(&mut self, r: &CallResult) {
        self.requests += 1;
        if r.cache_hit {
            self.cache_hits += 1;
        }
        match &r.error {
            Some(code) => *self.errors.entry(code.clone()).or_insert(0) += 1,
            None => {
                self.ok += 1;
                self.latency.record(r.total);
                if let Some(t) = r.ttft {
                    self.ttft.record(t);
                }
                self.output_tokens += r.usage.map(|u| u.output_tokens).unwrap_or(0);
            }
        }
    }
}

/// What every request shares.
struct Plan {
    client: BenchClient,
    urls: Vec<String>,
    api: Api,
    options: LoadOptions,
    /// The identical body, built once (unless `unique`).
    body: bytes::Bytes,
    counter: AtomicU64,
    /// One entry per target. A std mutex: it is held only to add one result,
    /// never across an await, and costs far less than a call.
    stats: Mutex<Vec<TargetStats>>,
    progress: ProgressBar,
}

/// The Converse body a load test sends: `prompt` as one user turn,
/// deterministic (temperature 0) so response caches may answer it.
pub fn bedrock_body(prompt: &str, max_tokens: u32) -> bytes::Bytes {
    let body = json!({
        "messages": [{ "role": "user", "content": [{ "text": prompt }] }],
        "inferenceConfig": { "maxTokens": max_tokens, "temperature": 0 },
    });
    bytes::Bytes::from(body.to_string())
}

fn request_body(options: &LoadOptions, prompt: &str) -> bytes::Bytes {
    let body = match options.format {
        Format::Bedrock => return bedrock_body(prompt, options.max_tokens),
        Format::Openai => json!({
            "model": options.model,
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": options.max_tokens,
            "temperature": 0,
            "stream": options.stream,
        }),
    };
    bytes::Bytes::from(body.to_string())
}

impl Plan {
    fn body(&self) -> bytes::Bytes {
        if self.options.unique {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            request_body(&self.options, &format!("{} [{n}]", self.options.prompt))
        } else {
            self.body.clone()
        }
    }

    async fn send(&self, target: usize, start: Instant, record: bool) {
        let body = self.body();
        let result = self
            .client
            .call(
                self.api,
                &self.urls[target],
                &self.options.region,
                body,
                start,
            )
            .await;
        if record {
            if let Ok(mut stats) = self.stats.lock() {
                stats[target].record(&result);
            }
        }
        self.progress.inc(1);
    }
}

/// Runs one phase; returns how long it took until its last answer.
async fn phase(plan: &Arc<Plan>, stop: Stop, record: bool) -> Duration {
    let started = Instant::now();
    let deadline = match stop {
        Stop::After(d) => Some(started + d),
        Stop::Requests(_) => None,
    };
    let limit = match stop {
        Stop::Requests(n) => Some(n),
        Stop::After(_) => None,
    };
    let targets = plan.urls.len();
    let mut tasks = JoinSet::new();
    match plan.options.arrival {
        Arrival::Closed { concurrency } => {
            let issued = Arc::new(AtomicU64::new(0));
            for worker in 0..concurrency {
                let plan = plan.clone();
                let issued = issued.clone();
                tasks.spawn(async move {
                    // Each worker alternates A, B, A, B...; odd workers start with
                    // B so both targets are busy at every moment.
                    let mut target = worker % targets;
                    loop {
                        if let Some(n) = limit {
                            if issued.fetch_add(1, Ordering::Relaxed) >= n {
                                break;
                            }
                        }
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        plan.send(target, Instant::now(), record).await;
                        target = (target + 1) % targets;
                    }
                });
            }
        }
        Arrival::Open { rate } => {
            let mut k: u64 = 0;
            loop {
                if limit.is_some_and(|n| k >= n) {
                    break;
                }
                let scheduled = started + Duration::from_secs_f64(k as f64 / rate);
                if deadline.is_some_and(|d| scheduled >= d) {
                    break;
                }
                tokio::time::sleep_until(scheduled).await;
                let plan = plan.clone();
                let target = (k % targets as u64) as usize;
                tasks.spawn(async move { plan.send(target, scheduled, record).await });
                // Reap finished requests so a long run does not keep them all.
                while tasks.try_join_next().is_some() {}
                k += 1;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

/// One target's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub label: String,
    pub url: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Successful answers per second over the measured phase.
    pub throughput_rps: f64,
    pub cache_hits: u64,
    pub output_tokens: u64,
    pub latency_ms: Option<LatencySummary>,
    /// Streams only.
    pub ttft_ms: Option<LatencySummary>,
}

/// A target against A at one percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    /// The target compared with A (`B`, `C`...).
    pub target: String,
    pub metric: String,
    pub a_ms: f64,
    pub b_ms: f64,
    /// target - A: the latency the target adds.
    pub diff_ms: f64,
    /// target / A.
    pub ratio: f64,
    /// With three targets or more: this target's added latency over B's (B is
    /// the yardstick, such as nginx in front of the same upstream).
    pub added_vs_b: Option<f64>,
}

/// The whole run (`load.json`).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub format: Format,
    pub stream: bool,
    pub model: String,
    pub arrival: Arrival,
    pub warmup: u64,
    pub unique: bool,
    pub max_tokens: u32,
    pub elapsed_s: f64,
    pub targets: Vec<TargetReport>,
    /// Each target after the first against A.
    pub comparison: Vec<Delta>,
}

fn deltas(a: &TargetReport, b: &TargetReport) -> Vec<Delta> {
    let mut out = Vec::new();
    let pairs = [
        ("latency", a.latency_ms, b.latency_ms),
        ("TTFT", a.ttft_ms, b.ttft_ms),
    ];
    for (name, a, b_summary) in pairs {
        let (Some(a), Some(b_summary)) = (a, b_summary) else {
            continue;
        };
        for (q, av, bv) in [
            ("p50", a.p50, b_summary.p50),
            ("p90", a.p90, b_summary.p90),
            ("p99", a.p99, b_summary.p99),
        ] {
            out.push(Delta {
                target: b.label.clone(),
                metric: format!("{name} {q}"),
                a_ms: av,
                b_ms: bv,
                diff_ms: bv - av,
                ratio: if av > 0.0 { bv / av } else { f64::NAN },
                added_vs_b: None,
            });
        }
    }
    out
}

/// Every target after A against A; with three or more targets, each added
/// latency also as a multiple of B's at the same metric.
fn comparison(targets: &[TargetReport]) -> Vec<Delta> {
    let Some((a, rest)) = targets.split_first() else {
        return Vec::new();
    };
    let mut out: Vec<Delta> = rest.iter().flat_map(|t| deltas(a, t)).collect();
    if targets.len() >= 3 {
        let b_added: Vec<(String, f64)> = out
            .iter()
            .filter(|d| d.target == "B")
            .map(|d| (d.metric.clone(), d.diff_ms))
            .collect();
        for d in &mut out {
            d.added_vs_b = b_added
                .iter()
                .find(|(m, _)| *m == d.metric)
                .and_then(|&(_, b)| (b > 0.0).then(|| d.diff_ms / b));
        }
    }
    out
}

fn check(options: &LoadOptions) -> Result<(), BenchError> {
    client::check_targets(&options.targets, client::MAX_TARGETS)?;
    match options.arrival {
        Arrival::Closed { concurrency: 0 } => {
            return Err(BenchError::Options(
                "--concurrency must be at least 1".into(),
            ))
        }
        Arrival::Open { rate } if !(rate > 0.0 && rate.is_finite()) => {
            return Err(BenchError::Options("--rate must be positive".into()))
        }
        _ => {}
    }
    if options.stop == Stop::Requests(0) || options.stop == Stop::After(Duration::ZERO) {
        return Err(BenchError::Options(
            "--requests and --duration must be positive".into(),
        ));
    }
    if options.model.is_empty() {
        return Err(BenchError::Options("--model is empty".into()));
    }
    Ok(())
}

/// Runs the warmup, then the measured phase, and reports.
pub async fn run(options: LoadOptions) -> Result<LoadReport, BenchError> {
    check(&options)?;
    let api = match (options.format, options.stream) {
        (Format::Bedrock, false) => Api::Converse,
        (Format::Bedrock, true) => Api::ConverseStream,
        (Format::Openai, false) => Api::OpenAiChat,
        (Format::Openai, true) => Api::OpenAiChatStream,
    };
    let auth = match options.format {
        Format::Bedrock => Auth::bedrock(&options.auth, true, &options.region).await?,
        Format::Openai => Auth::openai(&options.auth)?,
    };
    let pool = match options.arrival {
        Arrival::Closed { concurrency } => concurrency,
        // Enough idle connections for a second of arrivals.
        Arrival::Open { rate } => rate.ceil() as usize,
    };
    let urls: Vec<String> = options
        .targets
        .iter()
        .map(|t| match options.format {
            Format::Bedrock => client::bedrock_url(t, &options.model, options.stream),
            Format::Openai => client::openai_url(t),
        })
        .collect();
    let mut stats = Vec::new();
    for _ in &urls {
        stats.push(TargetStats::new()?);
    }
    let progress = if options.progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {pos} requests, {per_sec}") {
        progress.set_style(style);
    }
    let plan = Arc::new(Plan {
        client: BenchClient::new(auth, options.timeout, pool),
        urls,
        api,
        body: request_body(&options, &options.prompt),
        counter: AtomicU64::new(0),
        stats: Mutex::new(stats),
        options,
        progress,
    });
    if plan.options.warmup > 0 {
        plan.progress.set_message("warmup");
        phase(&plan, Stop::Requests(plan.options.warmup), false).await;
    }
    plan.progress.set_position(0);
    plan.progress.reset_elapsed();
    plan.progress.set_message("measuring");
    if plan.options.progress {
        plan.progress.enable_steady_tick(Duration::from_millis(200));
    }
    let elapsed = phase(&plan, plan.options.stop, true).await;
    plan.progress.finish_and_clear();

    let elapsed_s = elapsed.as_secs_f64();
    let stats = plan
        .stats
        .lock()
        .map_err(|_| BenchError::Histogram("a worker panicked while recording".into()))?;
    let targets: Vec<TargetReport> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| TargetReport {
            label: client::target_label(i, plan.urls.len()).into(),
            url: plan.options.targets[i].clone(),
            requests: s.requests,
            ok: s.ok,
            errors: s.errors.clone(),
            throughput_rps: if elapsed_s > 0.0 {
                s.ok as f64 / elapsed_s
            } else {
                0.0
            },
            cache_hits: s.cache_hits,
            output_tokens: s.output_tokens,
            latency_ms: s.latency.summary(),
            ttft_ms: s.ttft.summary(),
        })
        .collect();
    let comparison = comparison(&targets);
    let o = &plan.options;
    Ok(LoadReport {
        format: o.format,
        stream: o.stream,
        model: o.model.clone(),
        arrival: o.arrival,
        warmup: o.warmup,
        unique: o.unique,
        max_tokens: o.max_tokens,
        elapsed_s,
        targets,
        comparison,
    })
}

/// The terminal report.
pub fn render(report: &LoadReport) -> String {
    let mut out = String::new();
    let mode = match report.arrival {
        Arrival::Closed { concurrency } => format!("closed loop, {concurrency} workers"),
        Arrival::Open { rate } => format!("open loop, {rate} req/s"),
    };
    let _ = writeln!(
        out,
        "{} {}, model {}, {mode}, {:.1}s measured after {} warmup requests, {} bodies",
        match report.format {
            Format::Bedrock => "bedrock",
            Format::Openai => "openai",
        },
        if report.stream { "streams" } else { "requests" },
        report.model,
        report.elapsed_s,
        report.warmup,
        if report.unique { "unique" } else { "identical" },
    );
    let mut t = Table::new(&[
        "target", "metric", "requests", "errors", "req/s", "mean ms", "p50 ms", "p90 ms", "p99 ms",
        "p99.9 ms", "max ms",
    ]);
    for target in &report.targets {
        let label = if report.targets.len() == 1 {
            target.url.clone()
        } else {
            format!("{} {}", target.label, target.url)
        };
        let errors: u64 = target.errors.values().sum();
        let mut rows = vec![("latency", target.latency_ms)];
        if report.stream {
            rows.push(("TTFT", target.ttft_ms));
        }
        for (i, (metric, s)) in rows.into_iter().enumerate() {
            let mut row = if i == 0 {
                vec![
                    label.clone(),
                    metric.to_owned(),
                    target.requests.to_string(),
                    errors.to_string(),
                    format!("{:.1}", target.throughput_rps),
                ]
            } else {
                vec![
                    String::new(),
                    metric.to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]
            };
            for v in [
                s.map(|s| s.mean),
                s.map(|s| s.p50),
                s.map(|s| s.p90),
                s.map(|s| s.p99),
                s.map(|s| s.p999),
                s.map(|s| s.max),
            ] {
                row.push(num(v, 2));
            }
            t.row(row);
        }
    }
    out.push_str(&t.render());
    for target in &report.targets {
        if !target.errors.is_empty() {
            let _ = writeln!(
                out,
                "errors {}: {}",
                target.label,
                code_list(&target.errors)
            );
        }
        if target.cache_hits > 0 {
            let _ = writeln!(
                out,
                "response-cache hits {}: {} of {}",
                target.label, target.cache_hits, target.requests
            );
        }
    }
    if !report.comparison.is_empty() {
        let many = report.targets.len() >= 3;
        let mut header = vec![
            "vs A",
            "metric",
            "A ms",
            "target ms",
            "added ms",
            "target/A",
        ];
        if many {
            header.push("added / B's added");
        }
        let mut t = Table::new(&header);
        for d in &report.comparison {
            let mut row = vec![
                d.target.clone(),
                d.metric.clone(),
                format!("{:.2}", d.a_ms),
                format!("{:.2}", d.b_ms),
                format!("{:+.2}", d.diff_ms),
                format!("{:.3}x", d.ratio),
            ];
            if many {
                row.push(d.added_vs_b.map_or("-".into(), |r| format!("{r:.2}x")));
            }
            t.row(row);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: Format, stream: bool) -> LoadOptions {
        LoadOptions {
            targets: vec!["http://127.0.0.1:1".into()],
            format,
            stream,
            model: "m:0".into(),
            arrival: Arrival::Closed { concurrency: 1 },
            stop: Stop::Requests(1),
            warmup: 0,
            auth: AuthOptions::default(),
            region: "us-east-2".into(),
            max_tokens: 7,
            prompt: "hi".into(),
            unique: false,
            timeout: Duration::from_secs(1),
            progress: false,
        }
    }

    #[test]
    fn bodies_follow_each_api() {
        let b: serde_json::Value =
            serde_json::from_slice(&request_body(&options(Format::Bedrock, true), "hi")).unwrap();
        assert_eq!(b["messages"][0]["content"][0]["text"], "hi");
        assert_eq!(b["inferenceConfig"]["maxTokens"], 7);
        assert_eq!(b["inferenceConfig"]["temperature"], 0);
        let o: serde_json::Value =
            serde_json::from_slice(&request_body(&options(Format::Openai, true), "hi")).unwrap();
        assert_eq!(o["model"], "m:0");
        assert_eq!(o["messages"][0]["content"], "hi");
        assert_eq!(o["stream"], true);
        assert_eq!(o["max_tokens"], 7);
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = options(Format::Bedrock, false);
        o.arrival = Arrival::Open { rate: 0.0 };
        assert!(check(&o).is_err());
        let mut o = options(Format::Bedrock, false);
        o.targets = vec!["nope".into()];
        assert!(check(&o).is_err());
        assert!(check(&options(Format::Bedrock, false)).is_ok());
    }

    #[test]
    fn deltas_are_b_minus_a() {
        let s = |p50| LatencySummary {
            count: 1,
            mean: p50,
            p50,
            p90: p50,
            p99: p50,
            p999: p50,
            max: p50,
        };
        let t = |label: &str, p50| TargetReport {
            label: label.into(),
            url: String::new(),
            requests: 1,
            ok: 1,
            errors: BTreeMap::new(),
            throughput_rps: 1.0,
            cache_hits: 0,
            output_tokens: 0,
            latency_ms: Some(s(p50)),
            ttft_ms: None,
        };
        let d = comparison(&[t("A", 10.0), t("B", 15.0)]);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].target, "B");
        assert_eq!(d[0].metric, "latency p50");
        assert_eq!(d[0].diff_ms, 5.0);
        assert_eq!(d[0].added_vs_b, None, "two targets: no yardstick");
        let d = comparison(&[t("A", 10.0), t("B", 12.0), t("C", 15.0)]);
        assert_eq!(d.len(), 6);
        assert_eq!(d[0].added_vs_b, Some(1.0));
        assert_eq!(d[3].target, "C");
        assert_eq!(d[3].diff_ms, 5.0);
        assert_eq!(d[3].added_vs_b, Some(2.5), "C adds 5 ms where B adds 2");
        let text = render(&LoadReport {
            format: Format::Bedrock,
            stream: false,
            model: "m".into(),
            arrival: Arrival::Closed { concurrency: 1 },
            warmup: 0,
            unique: true,
            max_tokens: 1,
            elapsed_s: 1.0,
            targets: vec![t("A", 10.0), t("B", 12.0), t("C", 15.0)],
            comparison: d.clone(),
        });
        assert!(text.contains("added / B's added"));
        assert!(text.contains("2.50x"));
        assert_eq!(d[3].ratio, 1.5);
    }
}
