//! bedrock-proxy: a caching, latency-optimizing reverse proxy for Amazon Bedrock.
//! Applications point their SDK's endpoint at it and change nothing else.
//!
//! # Layout
//! One module per pipeline stage, in the order a request meets them:
//! - [`ingress`]: the APIs the proxy speaks (the router, load shedding, body
//!   limits), each request turned into a pipeline call and its answer and
//!   errors rendered back in that API's shape; the per-request books.
//! - [`auth`]: API keys and proxy-issued SigV4 keys to tenants and allowed routes.
//! - [`limits`]: rate limits and dollar budgets of keys, tenants and routes,
//!   shared across replicas through Redis: admission from the headers and an
//!   estimate, settlement with what the answer used.
//! - [`route`]: model ids and aliases to routes and upstream model ids.
//! - [`pipeline`]: the stages after routing, in order, for one call: cache
//!   lookup, single-flight, per-attempt planning, the upstream chain, storing.
//! - [`cache`]: the response cache's storage (keys, entries, L1 and L2 tiers).
//! - [`prompt_cache`]: Bedrock prompt caching for unmarked prompts (registry, planner).
//! - [`latency`]: which latency tier each attempt asks for.
//! - [`service_tier`]: which service tier each attempt asks for (its sibling).
//! - [`upstream`]: signed, pooled, deadline-bound calls to Bedrock, to
//!   OpenAI-compatible servers and to SageMaker endpoints; the chain of targets
//!   with retries, circuit breakers and hedging.
//! - [`stream`]: event streams relayed frame by frame, read as they pass.
//!
//! Shared by the stages, below them all:
//! - [`answer`]: the answer and the one record of what happened to a call.
//! - [`chat`]: OpenAI Chat Completions, shared by the OpenAI ingress and the
//!   `openai` / `sagemaker` upstreams (Converse to chat and back).
//! - [`error`]: the one error type and its Bedrock rendering.
//! - [`metrics`]: Prometheus metrics with bounded labels, from plain values
//!   (and CloudWatch EMF lines, `metrics::emf`).
//! - [`access_log`]: the log writer thread: access lines formatted off the
//!   request path, every log line written to stderr from one bounded buffer.
//! - [`telemetry`]: OpenTelemetry traces: the OTLP exporter, request and
//!   attempt spans, `traceparent` in and out.
//! - [`config`]: the TOML file, validated into typed config.
//! - [`catalog`]: what each model supports and costs.
//! - [`shared`]: the Redis connection state shared across replicas lives on.
//! - [`budget`]: the request-body bytes all requests may hold in memory.
//! - [`json_body`]: JSON request bodies, parsed only as far as a stage reads them.
//! - [`support`]: wall-clock milliseconds and poison-proof locks.
//!
//! Composing them:
//! - [`runtime`]: everything built from one config (swapped on reload).
//! - [`state`]: the current runtime, the pipeline's long-lived parts, readiness.
//! - [`admin`]: the admin listener (metrics, health, admin API).
//! - [`reload`]: live config reload (file watch, SIGHUP, admin API).
//! - [`server`]: listeners, background tasks, graceful shutdown.
//! - [`demo`]: demo mode on the embedded simulator.
//!
//! The module graph runs one way: each module imports only modules listed
//! after it in the request's path or below it (`docs/ARCHITECTURE.md`).

pub mod access_log;
pub mod admin;
pub(crate) mod answer;
pub mod auth;
pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod chat;
pub(crate) mod json_body;
pub(crate) use bedrock_wire::catalog;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub(crate) mod ingress;
pub(crate) mod latency;
pub(crate) mod limits;
pub(crate) mod log_tag;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub(crate) mod prompt_cache;
pub(crate) mod reload;
pub(crate) mod responses_store;
pub(crate) mod route;
pub(crate) mod runtime;
pub mod server;
pub(crate) mod service_tier;
pub(crate) mod shared;
pub mod state;
pub(crate) mod stream;
pub(crate) mod support;
pub mod telemetry;
pub(crate) mod upstream;

pub use config::Config;
pub use ingress::app;
pub use state::AppState;
