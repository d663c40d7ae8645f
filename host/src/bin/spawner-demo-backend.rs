//! The demo backend as its own small executable.
//!
//! `spawner dev`'s built-in `demo` template runs this when it sits next to
//! the `spawner` executable (`cargo build -p spawner` builds both), and
//! `spawner demo-backend` otherwise. Same code; the difference is start-up:
//! `spawner` is a large binary (wasmtime, cranelift, kube) whose loader
//! work and page faults cost about a millisecond per start, which is most
//! of a demo backend's spawn-to-ready time (bench/README.md).

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match demo_backend::main_from_env() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo backend: {e}");
            ExitCode::FAILURE
        }
    }
}
