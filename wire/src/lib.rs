//! Wire formats shared by the proxy, the simulator and the benchmark tool.
//!
//! # Layout
//! - [`eventstream`]: AWS event-stream frames: build them, cut a byte stream into
//!   whole frames, read their headers.
//! - [`converse`]: ConverseStream events as one normalized list, rendered as a
//!   Converse JSON body or as frames, and built back from either.
//! - [`canonical`]: canonical JSON (sorted keys, no whitespace, normalized numbers)
//!   for hashing requests; cache markers left out.
//! - [`operation`]: the five model operations and their path segments.
//! - [`tier`]: the latency and service tiers, parsed and named in one place.
//! - [`catalog`]: what each Bedrock model supports and costs (`config/models.toml`).
//! - [`tokens`]: the token estimator the simulator bills with and the proxy plans with.
//! - [`error`]: Bedrock's error types, their statuses and bodies.
//! - [`sagemaker`]: SageMaker Runtime's paths, headers, error types and
//!   `PayloadPart` stream frames.
//! - [`sse`]: server-sent events (OpenAI-compatible streams), read and written.
//! - [`sigv4`]: checking an incoming SigV4 signature.
//! - [`signing`]: SigV4's canonical request, string to sign and signing keys
//!   (derived once per day, cached), shared by [`sigv4`] and [`client`].
//! - [`serve`]: the HTTP accept loop both servers run (timeouts, graceful drain).
//! - [`client`]: outbound HTTPS to Bedrock and SigV4 signing for any AWS service
//!   (proxy and benchmark).
//!
//! Apart from [`serve`], [`client`] and reading a catalog file, nothing here does
//! I/O: these are pure functions over bytes, headers and JSON.

pub mod canonical;
pub mod catalog;
pub mod client;
pub mod converse;
pub mod error;
pub mod eventstream;
pub mod operation;
pub mod sagemaker;
pub mod serve;
pub mod signing;
pub mod sigv4;
pub mod sse;
pub mod tier;
pub mod tokens;

/// A request id in the format Bedrock uses (a random UUID v4). Not secret, so
/// a fast non-cryptographic generator is enough.
pub fn new_request_id() -> String {
    let h = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
