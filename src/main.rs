//! `bedrock-proxy`: run the proxy (demo mode without `--config`), check a config
//! file, or make an API key.

use anyhow::Context;
use bedrock_proxy::server::{init_logging, init_telemetry, start, StartOptions};
use bedrock_proxy::{auth, demo, Config};
use bedrock_wire::serve::shutdown_signal;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

// jemalloc: measured against glibc malloc on this workload, about 10% less CPU
// per request (pass-through and cache hits) at a few MB more RSS when the
// cache is full (docs/PERFORMANCE.md). mimalloc cost ~20 MB more RSS.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A caching, latency-optimizing reverse proxy for Amazon Bedrock.
#[derive(Parser)]
#[command(name = "bedrock-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The config file; without it the proxy runs in demo mode on an embedded simulator.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Overrides `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `admin.listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a config file and explains every problem with its key.
    CheckConfig { file: PathBuf },
    /// Prints a new API key and the SHA-256 to put in `[[keys]] key_sha256`.
    HashKey {
        /// Hash this existing key instead of making a new one.
        #[arg(long)]
        key: Option<String>,
        /// Make a SigV4 access key pair instead.
        #[arg(long)]
        access_key: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(config) => {
                println!("{}: OK: {}", file.display(), config.summary());
                for advice in config.advice() {
                    println!("{}: note: {advice}", file.display());
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                std::process::exit(1);
            }
        },
        Some(Command::HashKey { key, access_key }) => {
            if access_key {
                let (id, secret) = auth::new_access_key();
                println!("access_key_id     = \"{id}\"\nsecret_access_key = \"{secret}\"");
            } else if let Some(key) = key {
                println!("key_sha256 = \"{}\"", auth::hash_key(&key));
            } else {
                let (key, hash) = auth::new_api_key();
                println!("api key (give to the client): {key}\nkey_sha256 = \"{hash}\"");
            }
            Ok(())
        }
        None => run(cli.config, cli.listen, cli.admin_listen).await,
    }
}

async fn run(
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let config = match &path {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::parse(demo::DEMO_CONFIG).context("the built-in demo config")?,
    };
    let _log_guard = init_logging(&config.logging);
    let telemetry = init_telemetry(&config)?;
    let simulator = match config.needs_embedded_simulator() {
        true => Some(
            demo::start_simulator()
                .await
                .context("starting the embedded simulator")?,
        ),
        false => None,
    };
    let demo_mode = simulator.is_some();
    let options = StartOptions {
        listen,
        admin_listen,
        config_path: path,
    };
    let proxy = start(config, simulator, options).await?;
    println!("bedrock-proxy listening on {}", proxy.url());
    println!("admin listening on {}", proxy.admin_url());
    if demo_mode {
        println!("{}", demo::banner(proxy.api_addr, proxy.admin_addr));
    }
    println!("ready");
    let stop = proxy.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        stop.cancel();
    });
    proxy.wait().await;
    telemetry.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
