//! The command line: flags of each subcommand (clap), turned into the options
//! the subcommand modules take, and what is printed or written afterwards.
//!
//! Nothing is measured here; tests call the subcommand modules directly.

use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use crate::baseline::{self, Baseline, CONVERSE_ANSWER};
use crate::client::AuthOptions;
use crate::error::BenchError;
use crate::load::{self, Arrival, Format, LoadOptions, Stop};
use crate::{latency, workload};
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
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["static_body", "forward"])))]
pub struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18090")]
    pub listen: std::net::SocketAddr,
    /// Answer every request with this JSON file (`-` for a built-in Converse answer).
    #[arg(long = "static", value_name = "FILE")]
    pub static_body: Option<String>,
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
    /// Two base URLs; requests alternate between them.
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"])]
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
            let baseline = match (a.forward, a.static_body.as_deref()) {
                (Some(url), _) => Baseline::Forward(url),
                (None, None | Some("-")) => {
                    Baseline::Static(bytes::Bytes::from_static(CONVERSE_ANSWER.as_bytes()))
                }
                (None, Some(path)) => Baseline::Static(
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
    }
    Ok(())
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
    }
}
