//! bedrock-bench: the project's latency and load benchmark tool, as a library
//! so tests drive every subcommand without a process.
//!
//! # Layout
//! - [`cli`]: flags of each subcommand and what gets printed or written.
//! - [`latency`]: AWS's latency benchmark (JSONL prompts, per-call TTFT and OTPS).
//! - [`load`]: closed- and open-loop load, one target or two compared.
//! - [`workload`]: synthetic multi-turn traffic for the prompt-cache benchmark.
//! - [`baseline`]: a static axum server and a bare forwarder, the report's yardsticks.
//! - [`soak`]: mixed traffic for a while, the proxy's RSS and descriptors sampled.
//! - [`hold`]: slow-body and idle connections held while other traffic is measured.
//! - [`hostile`]: those misbehaving connections, written by hand over TCP.
//! - [`process`]: RSS, descriptors and CPU time of a process, from /proc.
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
pub mod hold;
pub mod hostile;
pub mod latency;
pub mod load;
pub mod process;
pub mod report;
pub mod response;
pub mod soak;
pub mod stats;
pub mod table;
pub mod workload;

pub use error::BenchError;

/// Writes `value` as pretty-printed JSON to `dir/name`, creating `dir`.
pub fn write_json<T: serde::Serialize>(
    value: &T,
    dir: &std::path::Path,
    name: &str,
) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::Options(format!("{name}: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| BenchError::io(path, e))
}
