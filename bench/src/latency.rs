//! The `latency` subcommand: AWS's latency-benchmark prompts (JSONL), each sent
//! as a ConverseStream call, measured per call (TTFT, total, OTPS, served tier)
//! and summarized per model and inference profile.
//!
//! The HTML report is drawn by `report`; the calls themselves go through `client`.

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Api, Auth, AuthOptions, BenchClient, CallResult};
use crate::error::BenchError;
use crate::report;
use crate::stats::{count_codes, Distribution};
use crate::table::{code_list, num, Table};

pub use bedrock_wire::tier::LatencyTier as Tier;

/// One line of the input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The line number in the file, from 1.
    pub line: usize,
    pub text: String,
    /// `expected_output_tokens`, sent as `maxTokens`.
    pub max_tokens: u32,
    pub task_type: Option<String>,
    pub model_id: String,
    pub region: Option<String>,
    /// `inference_profile`: the latency tier asked for.
    pub tier: Tier,
}

/// The file format: AWS's fields; others are ignored.
#[derive(Debug, Deserialize)]
struct RawPrompt {
    text_prompt: String,
    expected_output_tokens: u32,
    #[serde(default)]
    task_type: Option<String>,
    model_id: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    inference_profile: Option<String>,
}

/// serde_json's message without its "at line 1 column N", which would
/// contradict the file's line number; the column stays.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(head) => format!("{head} (column {})", e.column()),
        None => text,
    }
}

/// Parses the JSONL text of `source` (named in errors); blank lines are skipped,
/// and any other line that is not a valid prompt is an error naming its number.
pub fn parse_prompts(text: &str, source: &str) -> Result<Vec<Prompt>, BenchError> {
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let bad = |message: String| BenchError::Input {
            path: source.to_owned(),
            line: number,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawPrompt = serde_json::from_str(line).map_err(|e| bad(json_message(&e)))?;
        if raw.text_prompt.is_empty() {
            return Err(bad("`text_prompt` is empty".into()));
        }
        if raw.model_id.trim().is_empty() {
            return Err(bad("`model_id` is empty".into()));
        }
        if raw.expected_output_tokens == 0 {
            return Err(bad("`expected_output_tokens` must be at least 1".into()));
        }
        let tier = match raw.inference_profile.as_deref() {
            None | Some("standard") => Tier::Standard,
            Some("optimized") => Tier::Optimized,
            Some(other) => {
                return Err(bad(format!(
                    "`inference_profile` is `{other}`; expected `optimized` or `standard`"
                )))
            }
        };
        prompts.push(Prompt {
            line: number,
            text: raw.text_prompt,
            max_tokens: raw.expected_output_tokens,
            task_type: raw.task_type,
            model_id: raw.model_id,
            region: raw.region.filter(|r| !r.is_empty()),
            tier,
        });
    }
    if prompts.is_empty() {
        return Err(BenchError::Input {
            path: source.to_owned(),
            line: 0,
            message: "no prompts in the file".into(),
        });
    }
    Ok(prompts)
}

/// Reads and parses a JSONL prompt file.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    parse_prompts(&text, &path.display().to_string())
}

/// How to run the latency benchmark.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub prompts: Vec<Prompt>,
    /// Base URL of a simulator or proxy; `None` calls Bedrock in each prompt's region.
    pub endpoint: Option<String>,
    /// Region for prompts that name none.
    pub region: String,
    pub concurrency: usize,
    pub repetitions: usize,
    /// Pause between one worker's calls.
    pub pause: Duration,
    pub auth: AuthOptions,
    pub timeout: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One call's measurements (a row of `results.csv`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// Order in which calls were queued.
    pub seq: usize,
    pub repetition: usize,
    pub line: usize,
    pub model_id: String,
    pub region: String,
    pub task_type: String,
    pub inference_profile: Tier,
    /// The tier that answered (`performanceConfig.latency`, standard when absent).
    pub served_tier: Option<String>,
    pub started_unix_ms: u128,
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_write_input_tokens: Option<u64>,
    /// Output tokens per second as AWS defines it: output tokens / total latency.
    pub otps: Option<f64>,
    /// Generation speed alone: (output tokens - 1) / (total - TTFT).
    pub generation_otps: Option<f64>,
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl CallRecord {
    fn new(seq: usize, repetition: usize, prompt: &Prompt, region: &str, started: u128) -> Self {
        CallRecord {
            seq,
            repetition,
            line: prompt.line,
            model_id: prompt.model_id.clone(),
            region: region.to_owned(),
            task_type: prompt.task_type.clone().unwrap_or_default(),
            inference_profile: prompt.tier,
            served_tier: None,
            started_unix_ms: started,
            ttft_ms: None,
            total_ms: 0.0,
            input_tokens: None,
            output_tokens: None,
            cache_read_input_tokens: None,
            cache_write_input_tokens: None,
            otps: None,
            generation_otps: None,
            status: None,
            error: None,
        }
    }

    /// Fills in the measurements of a finished call.
    pub fn measure(&mut self, result: &CallResult) {
        self.status = result.status;
        self.total_ms = ms(result.total);
        self.ttft_ms = result.ttft.map(ms);
        self.error = result.error.clone();
        if let Some(u) = result.usage {
            self.input_tokens = Some(u.input_tokens);
            self.output_tokens = Some(u.output_tokens);
            self.cache_read_input_tokens = Some(u.cache_read_input_tokens);
            self.cache_write_input_tokens = Some(u.cache_write_input_tokens);
        }
        if result.is_ok() {
            self.served_tier = Some(
                result
                    .served_tier
                    .clone()
                    .unwrap_or_else(|| Tier::Standard.name().to_owned()),
            );
            let (otps, generation) =
                output_speed(self.output_tokens.unwrap_or(0), result.total, result.ttft);
            self.otps = otps;
            self.generation_otps = generation;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// OTPS as AWS defines it (output tokens over the whole call) and the
/// generation-only speed that leaves out the wait for the first token; `None`
/// where the call has too few tokens or too little time to say.
pub fn output_speed(
    output_tokens: u64,
    total: Duration,
    ttft: Option<Duration>,
) -> (Option<f64>, Option<f64>) {
    let total_s = total.as_secs_f64();
    let otps = (output_tokens > 0 && total_s > 0.0).then(|| output_tokens as f64 / total_s);
    let generation = ttft.and_then(|ttft| {
        let gen_s = total_s - ttft.as_secs_f64();
        (output_tokens > 1 && gen_s > 0.0).then(|| (output_tokens - 1) as f64 / gen_s)
    });
    (otps, generation)
}

/// One (model, inference profile) group's results.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub model_id: String,
    pub inference_profile: Tier,
    pub count: usize,
    pub errors: usize,
    pub errors_by_code: BTreeMap<String, usize>,
    /// Successful calls by the tier that served them.
    pub served: BTreeMap<String, usize>,
    pub ttft_ms: Option<Distribution>,
    pub otps: Option<Distribution>,
    pub generation_otps: Option<Distribution>,
    pub total_ms: Option<Distribution>,
    pub output_tokens: Option<Distribution>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    pub endpoint: String,
    pub calls_total: usize,
    pub errors_total: usize,
    pub errors_by_code: BTreeMap<String, usize>,
    pub elapsed_s: f64,
    pub groups: Vec<GroupSummary>,
    #[serde(skip)]
    pub calls: Vec<CallRecord>,
}

/// Groups calls by (model, asked-for profile), in the order groups first appear.
pub fn summarize(calls: &[CallRecord]) -> Vec<GroupSummary> {
    let mut order: Vec<(String, Tier)> = Vec::new();
    for c in calls {
        let key = (c.model_id.clone(), c.inference_profile);
        if !order.contains(&key) {
            order.push(key);
        }
    }
    order
        .into_iter()
        .map(|(model_id, tier)| {
            let group: Vec<&CallRecord> = calls
                .iter()
                .filter(|c| c.model_id == model_id && c.inference_profile == tier)
                .collect();
            let ok: Vec<&&CallRecord> = group.iter().filter(|c| c.error.is_none()).collect();
            let errors_by_code = count_codes(group.iter().filter_map(|c| c.error.as_deref()));
            let mut served = BTreeMap::new();
            for c in &ok {
                if let Some(t) = &c.served_tier {
                    *served.entry(t.clone()).or_insert(0) += 1;
                }
            }
            GroupSummary {
                model_id,
                inference_profile: tier,
                count: group.len(),
                errors: group.len() - ok.len(),
                errors_by_code,
                served,
                ttft_ms: Distribution::of(ok.iter().filter_map(|c| c.ttft_ms)),
                otps: Distribution::of(ok.iter().filter_map(|c| c.otps)),
                generation_otps: Distribution::of(ok.iter().filter_map(|c| c.generation_otps)),
                total_ms: Distribution::of(ok.iter().map(|c| c.total_ms)),
                output_tokens: Distribution::of(
                    ok.iter().filter_map(|c| c.output_tokens.map(|t| t as f64)),
                ),
            }
        })
        .collect()
}

/// The ConverseStream body of a prompt.
fn request_body(prompt: &Prompt) -> bytes::Bytes {
    let body = json!({
        "messages": [{ "role": "user", "content": [{ "text": prompt.text }] }],
        "inferenceConfig": { "maxTokens": prompt.max_tokens },
        "performanceConfig": { "latency": prompt.tier.name() },
    });
    bytes::Bytes::from(body.to_string())
}

struct Job {
    seq: usize,
    repetition: usize,
    prompt: usize,
}

/// Runs every prompt `repetitions` times on `concurrency` workers and
/// summarizes. Fails only on bad options or credentials; failed calls are
/// counted by code.
pub async fn run(options: LatencyOptions) -> Result<LatencyRun, BenchError> {
    if options.concurrency == 0 || options.repetitions == 0 {
        return Err(BenchError::Options(
            "--concurrency and --repetitions must be at least 1".into(),
        ));
    }
    let Some(first) = options.prompts.first() else {
        return Err(BenchError::Options("no prompts to send".into()));
    };
    if let Some(endpoint) = &options.endpoint {
        client::check_base_url(endpoint)?;
    }
    let first_region = first.region.clone().unwrap_or(options.region.clone());
    let auth = Auth::bedrock(&options.auth, options.endpoint.is_some(), &first_region).await?;
    let client = BenchClient::new(auth, options.timeout, options.concurrency);

    let jobs: Vec<Job> = (0..options.repetitions)
        .flat_map(|repetition| (0..options.prompts.len()).map(move |prompt| (repetition, prompt)))
        .enumerate()
        .map(|(seq, (repetition, prompt))| Job {
            seq,
            repetition,
            prompt,
        })
        .collect();
    let progress = if options.progress {
        let bar = ProgressBar::new(jobs.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} calls, {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    let shared = Arc::new((options, jobs, AtomicUsize::new(0), AtomicUsize::new(0)));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..shared.0.concurrency.min(shared.1.len()) {
        let shared = shared.clone();
        let client = client.clone();
        let progress = progress.clone();
        workers.spawn(async move {
            let (options, jobs, next, errors) = &*shared;
            let mut records = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let prompt = &options.prompts[job.prompt];
                let region = prompt.region.as_deref().unwrap_or(&options.region);
                let base = options
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| client::bedrock_runtime_endpoint(region));
                let url = client::bedrock_url(&base, &prompt.model_id, true);
                let body = request_body(prompt);
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let mut record = CallRecord::new(job.seq, job.repetition, prompt, region, unix);
                let result = client
                    .call(Api::ConverseStream, &url, region, body, Instant::now())
                    .await;
                record.measure(&result);
                if record.error.is_some() {
                    let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.set_message(format!("{n} errors"));
                }
                progress.inc(1);
                records.push(record);
                if !options.pause.is_zero() && next.load(Ordering::Relaxed) < jobs.len() {
                    tokio::time::sleep(options.pause).await;
                }
            }
            records
        });
    }
    let mut calls = Vec::new();
    while let Some(done) = workers.join_next().await {
        // A worker only ends by finishing its loop; a panic there is a bug
        // worth surfacing rather than a result to drop silently.
        match done {
            Ok(records) => calls.extend(records),
            Err(e) => return Err(BenchError::Client(format!("a worker failed: {e}"))),
        }
    }
    progress.finish_and_clear();
    calls.sort_by_key(|c| c.seq);

    let errors_by_code = count_codes(calls.iter().filter_map(|c| c.error.as_deref()));
    let (options, _, _, _) = &*shared;
    Ok(LatencyRun {
        endpoint: options
            .endpoint
            .clone()
            .unwrap_or_else(|| client::bedrock_runtime_endpoint("{region}")),
        calls_total: calls.len(),
        errors_total: errors_by_code.values().sum(),
        errors_by_code,
        elapsed_s: started.elapsed().as_secs_f64(),
        groups: summarize(&calls),
        calls,
    })
}

/// The terminal table: per group, one row per metric.
pub fn render_table(run: &LatencyRun) -> String {
    let mut t = Table::new(&[
        "model", "profile", "calls", "errors", "metric", "mean", "p50", "p90", "p99", "std",
    ]);
    for g in &run.groups {
        let metrics = [
            ("TTFT ms", g.ttft_ms, 1),
            ("OTPS", g.otps, 1),
            ("total ms", g.total_ms, 1),
        ];
        for (i, (name, d, decimals)) in metrics.into_iter().enumerate() {
            let head = if i == 0 {
                vec![
                    g.model_id.clone(),
                    g.inference_profile.name().to_owned(),
                    g.count.to_string(),
                    g.errors.to_string(),
                ]
            } else {
                vec![String::new(); 4]
            };
            let mut row = head;
            row.push(name.to_owned());
            for v in [
                d.map(|d| d.mean),
                d.map(|d| d.p50),
                d.map(|d| d.p90),
                d.map(|d| d.p99),
                d.map(|d| d.std),
            ] {
                row.push(num(v, decimals));
            }
            t.row(row);
        }
    }
    let mut out = t.render();
    let _ = writeln!(
        out,
        "{} calls in {:.1}s, {} errors{}",
        run.calls_total,
        run.elapsed_s,
        run.errors_total,
        if run.errors_by_code.is_empty() {
            String::new()
        } else {
            format!(": {}", code_list(&run.errors_by_code))
        }
    );
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `results.csv`: one row per call, empty cells where a value is unknown.
pub fn render_csv(calls: &[CallRecord]) -> String {
    let mut out = String::from(
        "seq,repetition,line,model_id,region,task_type,inference_profile,served_tier,started_unix_ms,ttft_ms,total_ms,input_tokens,output_tokens,cache_read_input_tokens,cache_write_input_tokens,otps,generation_otps,status,error\n",
    );
    let opt_f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    let opt_u = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    for c in calls {
        let fields = [
            c.seq.to_string(),
            c.repetition.to_string(),
            c.line.to_string(),
            csv_field(&c.model_id),
            csv_field(&c.region),
            csv_field(&c.task_type),
            c.inference_profile.name().to_owned(),
            csv_field(c.served_tier.as_deref().unwrap_or("")),
            c.started_unix_ms.to_string(),
            opt_f(c.ttft_ms),
            format!("{:.3}", c.total_ms),
            opt_u(c.input_tokens),
            opt_u(c.output_tokens),
            opt_u(c.cache_read_input_tokens),
            opt_u(c.cache_write_input_tokens),
            opt_f(c.otps),
            opt_f(c.generation_otps),
            c.status.map(|s| s.to_string()).unwrap_or_default(),
            csv_field(c.error.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Writes `results.csv`, `summary.json` and `report.html` into `dir`.
pub fn write_outputs(run: &LatencyRun, dir: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| BenchError::io(path, e))
    };
    write("results.csv", render_csv(&run.calls))?;
    crate::write_json(run, dir, "summary.json")?;
    write("report.html", report::latency_html(run))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"text_prompt": "Explain ML.", "expected_output_tokens": 50, "task_type": "Text-Generation", "model_id": "us.anthropic.claude-3-5-haiku-20241022-v1:0", "region": "us-east-2", "inference_profile": "optimized", "extra": [1, 2]}

{"text_prompt": "Hi", "expected_output_tokens": 5, "model_id": "amazon.nova-micro-v1:0"}
"#;

    #[test]
    fn good_lines_parse_and_unknown_fields_are_ignored() {
        let prompts = parse_prompts(GOOD, "p.jsonl").unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(prompts[0].line, 1);
        assert_eq!(prompts[0].tier, Tier::Optimized);
        assert_eq!(prompts[0].max_tokens, 50);
        assert_eq!(prompts[0].region.as_deref(), Some("us-east-2"));
        assert_eq!(prompts[1].line, 3, "blank lines keep numbering");
        assert_eq!(prompts[1].tier, Tier::Standard);
        assert_eq!(prompts[1].region, None);
    }

    #[test]
    fn the_reference_file_parses() {
        let text = include_str!("../../reference/latency-benchmark-prompts.jsonl");
        let prompts = parse_prompts(text, "reference").unwrap();
        assert!(prompts.len() >= 4);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let text = format!("{GOOD}{{\"text_prompt\": \"x\", \"model_id\": \"m\"}}\n");
        let err = parse_prompts(&text, "p.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("p.jsonl: line 4: "), "{err}");
        assert!(err.contains("expected_output_tokens"), "{err}");

        let err = parse_prompts("not json\n", "p.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.jsonl: line 1: "), "{err}");

        let bad_tier = r#"{"text_prompt": "x", "expected_output_tokens": 1, "model_id": "m", "inference_profile": "fast"}"#;
        let err = parse_prompts(bad_tier, "f").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("fast"), "{err}");

        assert!(parse_prompts("\n\n", "empty").is_err());
    }

    #[test]
    fn output_speed_follows_the_definitions() {
        let (otps, generation) = output_speed(
            101,
            Duration::from_millis(2000),
            Some(Duration::from_millis(1000)),
        );
        assert!((otps.unwrap() - 50.5).abs() < 1e-9);
        assert!((generation.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(
            output_speed(1, Duration::from_secs(1), Some(Duration::ZERO)),
            (Some(1.0), None)
        );
        assert_eq!(output_speed(0, Duration::from_secs(1), None), (None, None));
    }

    fn record(model: &str, tier: Tier, ttft: f64, total: f64, error: Option<&str>) -> CallRecord {
        let prompt = Prompt {
            line: 1,
            text: "x".into(),
            max_tokens: 10,
            task_type: None,
            model_id: model.into(),
            region: None,
            tier,
        };
        let mut r = CallRecord::new(0, 0, &prompt, "us-east-2", 0);
        r.measure(&CallResult {
            status: Some(200),
            ttft: Some(Duration::from_secs_f64(ttft / 1000.0)),
            total: Duration::from_secs_f64(total / 1000.0),
            usage: Some(bedrock_wire::converse::Usage {
                output_tokens: 10,
                ..Default::default()
            }),
            error: error.map(str::to_owned),
            ..Default::default()
        });
        r
    }

    #[test]
    fn groups_summarize_successes_and_count_errors() {
        let calls = vec![
            record("a", Tier::Standard, 100.0, 1000.0, None),
            record("a", Tier::Standard, 300.0, 2000.0, None),
            record("a", Tier::Optimized, 50.0, 500.0, None),
            record("a", Tier::Standard, 0.0, 10.0, Some("ThrottlingException")),
        ];
        let groups = summarize(&calls);
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        assert_eq!((g.count, g.errors), (3, 1));
        assert_eq!(g.errors_by_code["ThrottlingException"], 1);
        assert_eq!(g.served["standard"], 2);
        let ttft = g.ttft_ms.unwrap();
        assert!((ttft.mean - 200.0).abs() < 1e-6);
        let otps = g.otps.unwrap();
        assert!((otps.p50 - 7.5).abs() < 1e-6, "10/1s and 10/2s");
        assert_eq!(groups[1].inference_profile, Tier::Optimized);

        let csv = render_csv(&calls);
        assert_eq!(csv.lines().count(), 5);
        assert!(csv
            .lines()
            .nth(4)
            .unwrap()
            .ends_with(",ThrottlingException"));
    }
}
