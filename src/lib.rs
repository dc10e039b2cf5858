//! bedrock-proxy: a caching, latency-optimizing reverse proxy for Amazon Bedrock.
//! Applications point their SDK's endpoint at it and change nothing else.
//!
//! # Layout
//! One module per pipeline stage, in the order a request meets them:
//! - [`ingress`]: the APIs the proxy speaks (Bedrock Runtime paths), request
//!   limits, and rendering answers and errors back in each API's shape.
//! - [`auth`]: API keys and proxy-issued SigV4 keys to tenants and allowed routes.
//! - [`route`]: model ids and aliases to routes and upstream model ids.
//! - [`cache`]: the response cache (keys, L1 and Redis tiers, single-flight).
//! - [`prompt_cache`]: Bedrock prompt caching for unmarked prompts (registry, planner).
//! - [`latency`]: which latency tier each attempt asks for.
//! - [`pipeline`]: the stages after routing, in order, for one call.
//! - [`upstream`]: signed, pooled, deadline-bound calls to Bedrock; fallback
//!   chains, retries, circuit breakers and hedging.
//! - [`stream`]: event streams relayed frame by frame, read as they pass.
//! - [`error`]: the one error type and its Bedrock rendering.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//!
//! Around the pipeline:
//! - [`config`]: the TOML file, validated into typed config.
//! - [`catalog`]: what each model supports and costs.
//! - [`app`]: shared state (the swappable runtime) and the API router.
//! - [`admin`]: the admin listener (metrics, health, admin API).
//! - [`server`]: listeners, background tasks, graceful shutdown.
//! - [`reload`]: live config reload (file watch, SIGHUP, admin API).
//! - [`demo`]: demo mode on the embedded simulator.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub use bedrock_wire::catalog;
pub mod config;
pub mod demo;
pub mod error;
pub mod ingress;
pub mod latency;
pub mod metrics;
pub mod pipeline;
pub mod prompt_cache;
pub mod reload;
pub mod route;
pub mod server;
pub mod stream;
pub mod upstream;

pub use app::{app, AppState};
pub use config::Config;
