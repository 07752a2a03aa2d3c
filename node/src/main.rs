//! `klf`: the KLF mesh node and its command-line client.

mod api;
mod chef;
mod cli;
mod client;
mod demo;
mod functions;
mod ingredients;
mod roi;
mod stats;
mod telemetry;
mod traces;
mod up;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The command runs on a spawned task, not the main thread: replies then avoid a cross-thread
    // wake-up on every hop (measured in BENCHMARKS.md).
    let result = runtime.block_on(async { tokio::spawn(cli::run(cli)).await });
    let code = match result {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: the command panicked: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry::shutdown();
    code
}
