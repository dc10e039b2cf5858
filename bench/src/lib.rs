//! bedrock-bench: the project's latency and load benchmark tool, as a library
//! so tests drive every subcommand without a process.
//!
//! # Layout
//! - [`cli`]: flags of each subcommand and what gets printed or written.
//! - [`latency`]: AWS's latency benchmark (JSONL prompts, per-call TTFT and OTPS).
//! - [`load`]: closed- and open-loop load, one target or two compared.
//! - [`workload`]: synthetic multi-turn traffic for the prompt-cache benchmark.
//! - [`baseline`]: a static axum server and a bare forwarder, the report's yardsticks.
//! - [`client`]: the one HTTP client (pool, SigV4 or bearer, timing).
//! - [`response`]: event streams, SSE and JSON bodies read into outcomes.
//! - [`stats`]: percentiles, distributions and HDR histograms.
//! - [`report`]: the latency benchmark's HTML page.
//! - [`table`]: terminal tables.
//! - [`error`]: what stops a run.

pub mod baseline;
pub mod cli;
pub mod client;
pub mod error;
pub mod latency;
pub mod load;
pub mod report;
pub mod response;
pub mod stats;
pub mod table;
pub mod workload;

pub use error::BenchError;
