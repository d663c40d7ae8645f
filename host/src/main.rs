//! The `spawner` binary: see `spawner --help` and the crate docs.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPAWNER_LOG").unwrap_or_else(|_| "spawner=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match spawner::cli::run(spawner::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
