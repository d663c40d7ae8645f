//! The `spawner` binary: see `spawner --help` and the crate docs.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the proxy, hyper and wasmtime allocate
/// and free small objects on every request, and under load glibc's malloc
/// and free showed up as 18% of Spawner's CPU (bench/README.md). Built with
/// `no_thp`: on kernels with transparent huge pages set to `always`,
/// mimalloc's arenas otherwise fill 2 MiB pages and an idle Spawner held
/// 94 MiB of anonymous memory instead of 22 MiB. Backends are not affected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A directive that does not parse is said, not silently replaced by
    // the default (which would hide that the setting did nothing).
    // RUST_LOG when SPAWNER_LOG is not set: what Rust programs are
    // usually told with.
    let setting = ["SPAWNER_LOG", "RUST_LOG"].into_iter().find_map(|var| std::env::var(var).ok().map(|d| (var, d)));
    // kube-runtime warns of each retry of a watch refused with 403 (with
    // the whole error's debug form); Spawner's own line says the same at
    // most once per 10 s (`k8s::WatchFailures`).
    const DEFAULT: &str = "spawner=info,kube_runtime::watcher=error,warn";
    let (filter, bad_filter) = match setting {
        Some((var, directives)) => match tracing_subscriber::EnvFilter::try_new(&directives) {
            Ok(f) => (f, None),
            Err(e) => (DEFAULT.into(), Some(format!("{var}={directives:?} is not a log filter ({e}); using {DEFAULT}"))),
        },
        // `spawner plugin …` reports each call's time itself: the server's
        // warning about a slow call holding an async worker is noise there.
        None if std::env::args().nth(1).as_deref() == Some("plugin") => ("spawner=info,spawner::plugins::loaded=error,warn".into(), None),
        None => (DEFAULT.into(), None),
    };
    // Colours only for a person at a terminal: not in files, pipes or
    // journald, and never with NO_COLOR set.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A log line that cannot be written (a full disk, a log shipper that
    // went away, stderr closed) is dropped: by default the subscriber
    // reports it with `eprintln!`, which panics on the same stderr, and the
    // panic hook's own log line then aborts the process, every backend
    // with it.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).log_internal_errors(false);
    // SPAWNER_LOG_FORMAT=json: one JSON object per line, for log shippers.
    if spawner::cli::json_logs() {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Some(why) = bad_filter {
        tracing::warn!("{why}");
    }
    // A panic is a bug; the threads it can happen on (a request, a plugin
    // call, which turns it into the kind's fallback) carry on. Reported
    // through the log, so JSON logs stay JSON lines.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => tracing::error!(thread, %backtrace, "panic: {info}"),
            _ => tracing::error!(thread, "panic: {info} (RUST_BACKTRACE=1 for a backtrace)"),
        }
    }));
    let cli = match spawner::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // A mistake in the flags or their variables is a JSON line too
        // (help and version go to stdout as text, as asked).
        Err(e) if spawner::cli::json_logs() && e.use_stderr() => {
            tracing::error!(error = %e.to_string().trim_end(), "spawner stopped");
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => e.exit(),
    };
    match spawner::cli::run(cli) {
        Ok(code) => code,
        Err(e) if spawner::cli::json_logs() => {
            tracing::error!(error = %describe(&e), "spawner stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            spawner::cli::say(&format!("error: {}", describe(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: our error types
/// already quote their cause at the end of their message ("cannot read
/// plugin x.wasm: No such file or directory"), so a cause the text so far
/// ends with is skipped.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
