//! bedrock-sim: a Bedrock Runtime simulator that the official SDKs cannot tell
//! from Bedrock. It serves all eleven Bedrock Runtime operations on their real
//! paths with the real JSON, event-stream frames, headers and errors: Converse,
//! ConverseStream, InvokeModel, InvokeModelWithResponseStream and CountTokens;
//! ApplyGuardrail and InvokeGuardrailChecks; StartAsyncInvoke, GetAsyncInvoke
//! and ListAsyncInvokes; and InvokeModelWithBidirectionalStream. It models
//! latency (TTFT, output speed, standard vs optimized, service tiers), Bedrock's
//! prompt cache, the optimized and flex quotas, AWS's default prompt routers,
//! word-policy guardrails, async jobs on a simulated clock and scripted faults;
//! extended thinking, structured output, documents with citations and embedding
//! models; and answers deterministically at temperature 0. Beside Bedrock it
//! serves self-hosted models through an OpenAI-compatible face and a SageMaker
//! Runtime face, under the same control plane.
//!
//! # Layout
//! - [`config`]: settings (TOML and flags).
//! - [`catalog`]: the models, what they support and how fast they are; prompt routers.
//! - [`auth`]: SigV4 and bearer credentials.
//! - [`request`]: Bedrock's validation; any body format read into one `Prompt`.
//!   - [`reasoning`]: extended thinking: its rules, signatures, stripped history.
//!   - [`structured`]: output schemas and values that conform to a schema.
//!   - [`documents`]: document blocks, their checks and citations.
//! - [`embed`]: embedding models (Titan Text Embeddings v2, Cohere Embed v3).
//! - [`router`]: which model a prompt router picks.
//! - [`service_tier`]: service tiers: offered where, the flex quota, their timing.
//! - [`guardrail`]: guardrails (word policy) and ApplyGuardrail.
//! - [`guardrail_checks`]: the InvokeGuardrailChecks operation.
//! - [`faults`]: scripted failures.
//! - [`prompt_cache`]: the prompt-cache model.
//! - [`latency`]: the timing model.
//! - [`generate`]: deterministic answers, tool calls included.
//! - [`render`]: answers written as Converse, Anthropic or Llama, JSON or stream.
//! - [`api`]: the routes; the five model operations, in that order of stages.
//! - [`async_invoke`]: StartAsyncInvoke, GetAsyncInvoke, ListAsyncInvokes.
//! - [`bidi`]: InvokeModelWithBidirectionalStream (a simulated Nova Sonic).
//! - [`chat`]: OpenAI Chat Completions requests and answers (both self-hosted faces).
//! - [`selfhosted`]: the self-hosted models, their prefix cache, and the steps
//!   from a chat request to a timed answer.
//! - [`openai_face`]: `/v1/chat/completions` and `/v1/models`.
//! - [`sagemaker`]: SageMaker Runtime's two invocation operations.
//! - [`control`]: `/_sim/*` endpoints for tests.
//! - [`state`]: clock, request log, counters, quotas.
//! - [`face`]: which API a request came in on.
//! - [`error`]: error responses.
//! - `testing` (feature `testing`): SDK and raw HTTP clients for tests.

pub mod api;
pub mod async_invoke;
pub mod auth;
pub mod bidi;
pub mod catalog;
pub mod chat;
pub mod config;
pub mod control;
pub mod documents;
pub mod embed;
pub mod error;
pub mod face;
pub mod faults;
pub mod generate;
pub mod guardrail;
pub mod guardrail_checks;
pub mod latency;
pub mod openai_face;
pub mod prompt_cache;
pub mod reasoning;
pub mod render;
pub mod request;
pub mod router;
pub mod sagemaker;
pub mod selfhosted;
pub mod service_tier;
pub mod state;
pub mod structured;
#[cfg(feature = "testing")]
pub mod testing;

use axum::Router;
use bedrock_wire::serve::{serve, ServeOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use catalog::Catalog;
pub use config::SimConfig;
pub use face::{Face, FaceMatch};
pub use faults::{FaultKind, FaultRule};

/// Everything the simulator's handlers share.
#[derive(Debug)]
pub struct SimState {
    pub config: SimConfig,
    pub catalog: Catalog,
    pub clock: state::Clock,
    pub log: state::RequestLog,
    pub stats: state::Stats,
    pub faults: faults::Faults,
    pub quota: state::Quota,
    /// Flex requests per model over the last minute (`flex_rpm`).
    pub flex_quota: state::Quota,
    pub prompt_cache: prompt_cache::PromptCache,
    pub jobs: async_invoke::Jobs,
    pub self_hosted: selfhosted::SelfHostedState,
}

impl SimState {
    /// Forgets requests, counters, faults, quota use, cached prefixes and async jobs.
    pub fn reset(&self) {
        self.log.clear();
        self.stats.reset();
        self.faults.clear();
        self.quota.reset();
        self.flex_quota.reset();
        self.prompt_cache.clear();
        self.jobs.clear();
        self.self_hosted.clear();
    }
}

/// A simulated Bedrock Runtime.
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<SimState>,
}

impl Simulator {
    /// Builds a simulator; fails when the config or the catalog file is invalid.
    pub fn new(config: SimConfig) -> Result<Simulator, String> {
        config.validate()?;
        let catalog = match &config.catalog {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading catalog {}: {e}", path.display()))?;
                Catalog::parse(&text).map_err(|e| format!("catalog {}: {e}", path.display()))?
            }
            None => Catalog::parse(catalog::DEFAULT_CATALOG)?,
        };
        let log = state::RequestLog::new(config.request_log, config.request_log_bytes);
        let clock = state::Clock::scaled(config.time_scale);
        Ok(Simulator {
            state: Arc::new(SimState {
                config,
                catalog,
                clock,
                log,
                stats: state::Stats::default(),
                faults: faults::Faults::default(),
                quota: state::Quota::default(),
                flex_quota: state::Quota::default(),
                prompt_cache: prompt_cache::PromptCache::default(),
                jobs: async_invoke::Jobs::default(),
                self_hosted: selfhosted::SelfHostedState::default(),
            }),
        })
    }

    /// The shared state, for embedding and tests.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Bedrock's API, the OpenAI-compatible and SageMaker faces, and the
    /// `/_sim/*` control endpoints.
    pub fn router(&self) -> Router {
        api::router(self.state.clone())
            .merge(openai_face::router(self.state.clone()))
            .merge(sagemaker::router(self.state.clone()))
            .merge(self.control_router())
    }

    /// Only the `/_sim/*` control endpoints (the proxy mounts these on its admin
    /// port in demo mode).
    pub fn control_router(&self) -> Router {
        control::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let options = ServeOptions {
            drain: Duration::from_secs(10),
            ..ServeOptions::default()
        };
        serve(listener, self.router(), options, shutdown).await;
    }

    /// Starts serving on `addr` (port 0 picks a free one) in a background task.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let sim = self.clone();
        let task = tokio::spawn(async move {
            sim.serve(listener, async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(SimHandle {
            addr,
            sim: self,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// A running simulator; dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Simulator,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets open requests finish, and waits for the server.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
