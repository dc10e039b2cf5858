//! bedrock-bench's entry point: parse the flags, run one subcommand, and exit
//! non-zero with the error when it cannot run. Everything else is in the library.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = bedrock_bench::cli::Cli::parse();
    match bedrock_bench::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, without a backtrace: these
            // are input and setup errors, not bugs.
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
