//! The command line: flags of each subcommand (clap), turned into the options
//! the subcommand modules take, and what is printed or written afterwards.
//!
//! Nothing is measured here; tests call the subcommand modules directly.

use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use crate::baseline::{self, Baseline};
use crate::client::AuthOptions;
use crate::error::BenchError;
use crate::load::{self, Arrival, Format, LoadOptions, Stop};
use crate::soak::{self, Mix, SoakOptions};
use crate::{hold, latency, workload};
use bedrock_wire::catalog::Catalog;

/// Latency and load benchmarks for Amazon Bedrock, bedrock-proxy and
/// OpenAI-compatible gateways.
#[derive(Debug, Parser)]
#[command(name = "bedrock-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// TTFT, OTPS and total latency per model and inference profile, from AWS's
    /// latency-benchmark JSONL format.
    Latency(LatencyArgs),
    /// Throughput and latency percentiles under load, closed or open loop.
    Load(LoadArgs),
    /// Multi-turn conversations over shared system prompts: TTFT, tokens, cost.
    Workload(WorkloadArgs),
    /// Serve a yardstick for the report: a static axum server, or a bare forwarder.
    Baseline(BaselineArgs),
    /// Mixed traffic at a fixed rate for a while, sampling the proxy's RSS and
    /// open descriptors: growth after warm-up, latency and errors by kind.
    Soak(SoakArgs),
    /// Hold slow-body and idle connections against a proxy while measuring
    /// other traffic's latency, compared with the unloaded proxy.
    Hold(HoldArgs),
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Base URL of the proxy.
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// The proxy's PID: its RSS and open descriptors are sampled from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Arrivals per second, all kinds together.
    #[arg(long, default_value_t = 50.0, value_name = "RPS")]
    pub rate: f64,
    /// Arrivals stop after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Left out of latencies and growth.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Shares of the arrivals: hit, miss, stream, error, slow-body, slow-read, idle.
    #[arg(long, default_value = soak::DEFAULT_MIX, value_parser = Mix::parse)]
    pub mix: Mix,
    #[arg(long, default_value = "us.anthropic.claude-3-5-haiku-20241022-v1:0")]
    pub model: String,
    /// The model `error` requests name; the simulator fails it (see --sim).
    #[arg(long, default_value = "us.amazon.nova-micro-v1:0")]
    pub error_model: String,
    /// The simulator fault of `error` requests (throttle, unavailable, internal,
    /// model-not-ready, model-timeout, validation).
    #[arg(long, default_value = "internal")]
    pub fault: String,
    /// The simulator behind the proxy: a rule failing --error-model is added
    /// for the run, and its fault rules are all cleared after it.
    #[arg(long, value_name = "URL")]
    pub sim: Option<String>,
    /// Distinct bodies `hit` requests cycle through.
    #[arg(long, default_value_t = 16)]
    pub hit_prompts: usize,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// maxTokens of slow-read streams.
    #[arg(long, default_value_t = 400)]
    pub slow_read_max_tokens: u32,
    /// How long a slow body takes to send.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub slow_body: Duration,
    #[arg(long, default_value_t = 10)]
    pub slow_body_pieces: u32,
    /// Pause after each chunk a slow reader reads.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub slow_read_pause: Duration,
    /// Idle connections open at once, at most.
    #[arg(long, default_value_t = 100)]
    pub idle_max: usize,
    /// How long an idle connection is kept unless the server closes it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_hold: Duration,
    /// Requests in flight at once, at most; arrivals beyond are skipped and counted.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write DIR/soak.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Base URL of the proxy (plain http).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Slow-body connections held.
    #[arg(long, default_value_t = 1000)]
    pub slow: usize,
    /// Idle connections held.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Each slow connection sends one body byte this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub byte_every: Duration,
    /// The Content-Length slow connections announce.
    #[arg(long, default_value_t = 1000)]
    pub content_length: usize,
    /// Bearer key of the held connections (another tenant); default: the
    /// measured traffic's credentials.
    #[arg(long, value_name = "KEY")]
    pub held_api_key: Option<String>,
    /// Wait this long after opening before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The proxy's PID, sampled before and while held.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Measured traffic: closed-loop workers.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Measured traffic: requests per phase (unloaded, then held).
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Measured traffic: requests sent before each phase, left out.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Measured traffic: stream (ConverseStream) instead of Converse.
    #[arg(long)]
    pub stream: bool,
    /// Measured traffic: a distinct body per request (no cache hits).
    #[arg(long)]
    pub unique: bool,
    #[arg(long, default_value = "us.anthropic.claude-3-5-haiku-20241022-v1:0")]
    pub model: String,
    /// Write DIR/hold.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["static_body", "copy", "forward"])))]
pub struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18090")]
    pub listen: std::net::SocketAddr,
    /// Answer every request with this JSON file (`-` for a built-in Converse answer).
    #[arg(long = "static", value_name = "FILE")]
    pub static_body: Option<String>,
    /// Answer like this server: its Converse and ConverseStream answers to the
    /// load test's request (--model, --prompt, --max-tokens) are asked once at
    /// startup and served byte for byte.
    #[arg(long, value_name = "URL")]
    pub copy: Option<String>,
    /// With --copy: the model asked.
    #[arg(long, default_value = "us.anthropic.claude-3-5-haiku-20241022-v1:0")]
    pub model: String,
    /// With --copy: the prompt asked.
    #[arg(long, default_value = "Write one sentence about the sea.")]
    pub prompt: String,
    /// With --copy: the answer's token limit.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// With --copy: the key sent as `Authorization: Bearer KEY`.
    #[arg(long, value_name = "KEY", default_value = "bedrock-bench")]
    pub api_key: String,
    /// Forward every request to this base URL, nothing else.
    #[arg(long, value_name = "URL")]
    pub forward: Option<String>,
}

/// Credentials and signing, shared by every subcommand.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Send `Authorization: Bearer KEY` instead of signing.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Sign with this access key (with --secret-key).
    #[arg(long, value_name = "ID")]
    pub access_key: Option<String>,
    /// Secret of --access-key.
    #[arg(long, value_name = "SECRET")]
    pub secret_key: Option<String>,
    /// SigV4 region (latency: for prompts without `region`).
    #[arg(long, default_value = "us-east-2")]
    pub region: String,
    /// Give up on a call after this long (counted as `Timeout`).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl AuthArgs {
    fn options(&self) -> AuthOptions {
        AuthOptions {
            api_key: self.api_key.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Prompts in AWS's latency-benchmark JSONL format.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Base URL of a simulator or proxy; without it, Bedrock in each prompt's region.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Where results.csv, summary.json and report.html go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Times each prompt is sent.
    #[arg(long, default_value_t = 1)]
    pub repetitions: usize,
    /// Pause between one worker's calls, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["endpoint", "compare"])))]
pub struct LoadArgs {
    /// Base URL of the server under test.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Two to eight base URLs; requests rotate among them (A, B, C...).
    #[arg(long, num_args = 2..=8, value_names = ["URL_A", "URL_B"])]
    pub compare: Option<Vec<String>>,
    /// The API spoken.
    #[arg(long, value_enum, default_value = "bedrock")]
    pub format: Format,
    /// Stream answers (ConverseStream / SSE) and measure TTFT.
    #[arg(long)]
    pub stream: bool,
    /// Model id (bedrock: in the path; openai: the `model` field).
    #[arg(long, default_value = "us.anthropic.claude-3-5-haiku-20241022-v1:0")]
    pub model: String,
    /// Closed loop: workers sending back to back [default: 8].
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: requests started per second.
    #[arg(long, value_name = "RPS")]
    pub rate: Option<f64>,
    /// How long to measure [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests to measure (instead of --duration).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Requests sent first and left out of the numbers.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    #[arg(long, default_value = "Write one sentence about the sea.")]
    pub prompt: String,
    /// Append a counter to the prompt so that every request differs.
    #[arg(long)]
    pub unique: bool,
    /// Write DIR/load.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["endpoint", "compare"])))]
pub struct WorkloadArgs {
    /// Base URL of the server under test.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The traffic: app (conversations over shared system prompts, repeats),
    /// long-tail (one-turn requests whose prompts mostly never repeat), slow
    /// (conversations whose turns are 6 to 10 minutes apart).
    #[arg(long, default_value = "app", value_parser = workload::Shape::parse)]
    pub shape: workload::Shape,
    /// Simulated time runs this much faster than real time: pair with the
    /// simulator's (and proxy's) time scale; 0.01 makes 10 minutes 6 seconds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Two base URLs, run one after the other (A first).
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"])]
    pub compare: Option<Vec<String>>,
    /// Model id or inference-profile id.
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 40)]
    pub conversations: usize,
    /// Distinct system prompts, assigned to conversations round-robin.
    #[arg(long, default_value_t = 3)]
    pub system_prompts: usize,
    /// Approximate tokens per system prompt.
    #[arg(long, default_value_t = 3000)]
    pub system_tokens: usize,
    /// User turns per conversation.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// Share of requests that exactly repeat an earlier one.
    #[arg(long, default_value_t = 0.2)]
    pub repeat_share: f64,
    /// Conversations in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: u32,
    /// Seed of the generated text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model catalog with prices [default: the embedded config/models.toml].
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Write DIR/workload.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

fn targets(endpoint: Option<String>, compare: Option<Vec<String>>) -> Vec<String> {
    match (endpoint, compare) {
        (_, Some(pair)) => pair,
        (Some(one), None) => vec![one],
        (None, None) => Vec::new(),
    }
}

/// Runs the chosen subcommand, printing its table on stdout.
pub async fn run(cli: Cli) -> Result<(), BenchError> {
    match cli.command {
        Command::Latency(a) => {
            let prompts = latency::read_prompts(&a.input)?;
            let run = latency::run(latency::LatencyOptions {
                prompts,
                endpoint: a.endpoint,
                region: a.auth.region.clone(),
                concurrency: a.concurrency,
                repetitions: a.repetitions,
                pause: Duration::from_millis(a.pause_ms),
                auth: a.auth.options(),
                timeout: a.auth.timeout,
                progress: !a.auth.no_progress,
            })
            .await?;
            print!("{}", latency::render_table(&run));
            latency::write_outputs(&run, &a.out)?;
            eprintln!(
                "wrote {}/{{results.csv,summary.json,report.html}}",
                a.out.display()
            );
        }
        Command::Baseline(a) => {
            let baseline = match (a.forward, a.copy, a.static_body.as_deref()) {
                (Some(url), _, _) => Baseline::Forward(url),
                (None, Some(url), _) => {
                    let request = load::bedrock_body(&a.prompt, a.max_tokens);
                    Baseline::copy(&url, &a.model, request, &a.api_key).await?
                }
                (None, None, None | Some("-")) => Baseline::builtin(),
                (None, None, Some(path)) => Baseline::with_body(
                    std::fs::read(path)
                        .map_err(|e| BenchError::io(path, e))?
                        .into(),
                ),
            };
            baseline::run(a.listen, baseline).await?;
        }
        Command::Load(a) => {
            let arrival = match (a.rate, a.concurrency) {
                (Some(rate), _) => Arrival::Open { rate },
                (None, c) => Arrival::Closed {
                    concurrency: c.unwrap_or(8),
                },
            };
            let stop = match (a.requests, a.duration) {
                (Some(n), _) => Stop::Requests(n),
                (None, d) => Stop::After(d.unwrap_or(Duration::from_secs(30))),
            };
            let report = load::run(LoadOptions {
                targets: targets(a.endpoint, a.compare),
                format: a.format,
                stream: a.stream,
                model: a.model,
                arrival,
                stop,
                warmup: a.warmup,
                auth: a.auth.options(),
                region: a.auth.region.clone(),
                max_tokens: a.max_tokens,
                prompt: a.prompt,
                unique: a.unique,
                timeout: a.auth.timeout,
                progress: !a.auth.no_progress,
            })
            .await?;
            print!("{}", load::render(&report));
            if let Some(dir) = &a.out {
                crate::write_json(&report, dir, "load.json")?;
                eprintln!("wrote {}/load.json", dir.display());
            }
        }
        Command::Workload(a) => {
            let catalog = match &a.catalog {
                Some(path) => Catalog::read(path).map_err(BenchError::Catalog)?,
                None => Catalog::embedded(),
            };
            if catalog.get(&a.model).is_none() {
                eprintln!(
                    "warning: {} is not in the catalog; costs will not be shown",
                    a.model
                );
            }
            let report = workload::run(workload::WorkloadOptions {
                shape: a.shape,
                time_scale: a.time_scale,
                targets: targets(a.endpoint, a.compare),
                model: a.model,
                conversations: a.conversations,
                system_prompts: a.system_prompts,
                system_tokens: a.system_tokens,
                turns: a.turns,
                repeat_share: a.repeat_share,
                concurrency: a.concurrency,
                max_tokens: a.max_tokens,
                seed: a.seed,
                auth: a.auth.options(),
                region: a.auth.region.clone(),
                catalog,
                timeout: a.auth.timeout,
                progress: !a.auth.no_progress,
            })
            .await?;
            print!("{}", workload::render(&report));
            if let Some(dir) = &a.out {
                crate::write_json(&report, dir, "workload.json")?;
                eprintln!("wrote {}/workload.json", dir.display());
            }
        }
        Command::Soak(a) => {
            let report = soak::run(SoakOptions {
                endpoint: a.endpoint,
                model: a.model,
                error_model: a.error_model,
                fault: a.fault,
                sim: a.sim,
                pid: a.pid,
                rate: a.rate,
                duration: a.duration,
                warmup: a.warmup,
                sample_every: a.sample_every,
                mix: a.mix,
                hit_prompts: a.hit_prompts,
                max_tokens: a.max_tokens,
                slow_read_max_tokens: a.slow_read_max_tokens,
                slow_body: a.slow_body,
                slow_body_pieces: a.slow_body_pieces,
                slow_read_pause: a.slow_read_pause,
                idle_max: a.idle_max,
                idle_hold: a.idle_hold,
                max_in_flight: a.max_in_flight,
                seed: a.seed,
                auth: a.auth.options(),
                region: a.auth.region.clone(),
                timeout: a.auth.timeout,
                progress: !a.auth.no_progress,
            })
            .await?;
            print!("{}", soak::render(&report));
            if let Some(dir) = &a.out {
                crate::write_json(&report, dir, "soak.json")?;
                eprintln!("wrote {}/soak.json", dir.display());
            }
        }
        Command::Hold(a) => {
            let report = hold::run(hold_options(a.measure(), &a)).await?;
            print!("{}", hold::render(&report));
            if let Some(dir) = &a.out {
                crate::write_json(&report, dir, "hold.json")?;
                eprintln!("wrote {}/hold.json", dir.display());
            }
        }
    }
    Ok(())
}

impl HoldArgs {
    /// The measured traffic of a hold, as a load run.
    fn measure(&self) -> LoadOptions {
        LoadOptions {
            targets: vec![self.endpoint.clone()],
            format: Format::Bedrock,
            stream: self.stream,
            model: self.model.clone(),
            arrival: Arrival::Closed {
                concurrency: self.concurrency,
            },
            stop: Stop::Requests(self.requests),
            warmup: self.warmup,
            auth: self.auth.options(),
            region: self.auth.region.clone(),
            max_tokens: 64,
            prompt: "Write one sentence about the sea.".into(),
            unique: self.unique,
            timeout: self.auth.timeout,
            progress: false,
        }
    }
}

fn hold_options(measure: LoadOptions, a: &HoldArgs) -> hold::HoldOptions {
    hold::HoldOptions {
        measure,
        slow: a.slow,
        idle: a.idle,
        byte_every: a.byte_every,
        content_length: a.content_length,
        held_auth: a.held_api_key.as_ref().map(|key| AuthOptions {
            api_key: Some(key.clone()),
            ..AuthOptions::default()
        }),
        settle: a.settle,
        connect_parallelism: 64,
        connect_timeout: Duration::from_secs(5),
        pid: a.pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn load_needs_one_target_kind_and_one_arrival() {
        assert!(Cli::try_parse_from(["b", "load"]).is_err());
        assert!(Cli::try_parse_from([
            "b",
            "load",
            "--endpoint",
            "http://x",
            "--compare",
            "http://a",
            "http://b"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "b",
            "load",
            "--endpoint",
            "http://x",
            "--rate",
            "5",
            "--concurrency",
            "2"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "b",
            "load",
            "--compare",
            "http://a",
            "http://b",
            "--rate",
            "50",
            "--requests",
            "10",
            "--format",
            "openai",
            "--stream",
            "--timeout",
            "5s",
        ])
        .unwrap();
        let Command::Load(a) = cli.command else {
            panic!("load expected")
        };
        assert_eq!(a.compare.unwrap().len(), 2);
        assert_eq!(a.format, Format::Openai);
        assert_eq!(a.auth.timeout, Duration::from_secs(5));
        assert!(
            Cli::try_parse_from(["b", "load", "--compare", "http://a", "http://b", "http://c"])
                .is_ok(),
            "three targets compare"
        );
    }

    #[test]
    fn soak_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from([
            "b",
            "soak",
            "--endpoint",
            "http://127.0.0.1:8080",
            "--pid",
            "42",
            "--duration",
            "90s",
            "--mix",
            "hit=1,idle=1",
        ])
        .unwrap();
        let Command::Soak(a) = cli.command else {
            panic!("soak expected")
        };
        assert_eq!(a.pid, Some(42));
        assert_eq!(a.duration, Duration::from_secs(90));
        assert_eq!(a.warmup, Duration::from_secs(60));
        assert_eq!(a.mix.share(soak::Kind::Idle), 0.5);
        assert_eq!(a.rate, 50.0);
        assert!(Cli::try_parse_from([
            "b",
            "soak",
            "--endpoint",
            "http://x",
            "--mix",
            "hit=1,bogus=2"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["b", "soak"]).is_err(),
            "--endpoint is required"
        );
    }

    #[test]
    fn hold_flags_become_a_load_run_and_held_connections() {
        let cli = Cli::try_parse_from([
            "b",
            "hold",
            "--endpoint",
            "http://127.0.0.1:8080",
            "--slow",
            "10",
            "--idle",
            "20",
            "--held-api-key",
            "other",
            "--api-key",
            "mine",
            "--requests",
            "50",
        ])
        .unwrap();
        let Command::Hold(a) = cli.command else {
            panic!("hold expected")
        };
        let o = hold_options(a.measure(), &a);
        assert_eq!((o.slow, o.idle), (10, 20));
        assert_eq!(o.byte_every, Duration::from_secs(1));
        assert_eq!(o.measure.targets, vec!["http://127.0.0.1:8080".to_owned()]);
        assert_eq!(o.measure.stop, Stop::Requests(50));
        assert_eq!(o.measure.auth.api_key.as_deref(), Some("mine"));
        assert_eq!(o.held_auth.unwrap().api_key.as_deref(), Some("other"));
    }
}
