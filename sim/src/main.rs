//! `bedrock-sim`: runs the simulator until Ctrl-C or SIGTERM.

use anyhow::Context;
use bedrock_sim::{SimConfig, Simulator};
use bedrock_wire::serve::shutdown_signal;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A Bedrock Runtime simulator that the AWS SDKs cannot tell from Bedrock.
#[derive(Parser, Debug)]
#[command(name = "bedrock-sim", version)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Multiplies every simulated delay; 0 answers as fast as possible.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Makes answers deterministic at any temperature.
    #[arg(long)]
    seed: Option<u64>,
    /// The simulated region [default: us-east-2].
    #[arg(long)]
    region: Option<String>,
    /// Latency-optimized requests per minute per model before serving standard.
    #[arg(long)]
    optimized_rpm: Option<u32>,
    /// Flex service-tier requests per minute per model before throttling.
    #[arg(long)]
    flex_rpm: Option<u32>,
    /// A TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            SimConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => SimConfig::default(),
    };
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = cli.time_scale {
        config.time_scale = v;
    }
    if cli.seed.is_some() {
        config.seed = cli.seed;
    }
    if let Some(v) = cli.region {
        config.region = v;
    }
    if cli.optimized_rpm.is_some() {
        config.optimized_rpm = cli.optimized_rpm;
    }
    if cli.flex_rpm.is_some() {
        config.flex_rpm = cli.flex_rpm;
    }
    let listen = config.listen;
    let region = config.region.clone();
    let sim = Simulator::new(config).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, %region, "bedrock-sim listening");
    // The one line on stdout: scripts and tests read the address from it.
    println!("bedrock-sim listening on http://{addr}");
    sim.serve(listener, shutdown_signal()).await;
    tracing::info!("bedrock-sim stopped");
    Ok(())
}
