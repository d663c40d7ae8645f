//! The `spawner` command line.
//!
//! - `spawner plugin check|run|sample|defaults`: for plugin authors, no
//!   cluster needed
//!   (`cli/plugin.rs`);
//! - `spawner token mint`: mint a capability token, e.g. to try an auth
//!   plugin (`cli/token.rs`);
//! - `spawner operator`: the Kubernetes controller (`cli/operator.rs`);
//! - `spawner proxy`: the proxy and sweeper on Kubernetes (`cli/proxy.rs`);
//! - `spawner crd`: the `SessionLivedBackend` CustomResourceDefinition.

mod operator;
mod plugin;
mod proxy;
mod token;

use crate::plugins::{PluginKind, RuntimeConfig};

/// Where `spawner operator` and `spawner proxy` read their plugins.
#[derive(Debug, Clone, clap::Args)]
pub struct PluginMapArgs {
    /// Load plugins from this ConfigMap (`KIND.wasm` in binaryData,
    /// `KIND.json` settings in data) and reload them when it changes.
    /// Default: the embedded plugins.
    #[arg(long, env = "SPAWNER_PLUGINS_CONFIGMAP")]
    pub plugins_configmap: Option<String>,
    /// The ConfigMap's namespace (Spawner's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "spawner")]
    pub plugins_namespace: String,
}

impl PluginMapArgs {
    /// The ConfigMap, if one is configured.
    pub fn configmap(&self) -> Option<crate::k8s::plugins::PluginConfigMap> {
        self.plugins_configmap.clone().map(|name| crate::k8s::plugins::PluginConfigMap { namespace: self.plugins_namespace.clone(), name })
    }
}

/// Per-kind limits of plugin calls, as `[plugins.KIND]` sets them in
/// `spawner dev`'s config file: the modes without one need them too (a
/// heavier policy on a busy node may need a longer deadline).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PluginLimitArgs {
    /// Deadline of one plugin call, `KIND=MS` (default: auth 20, scheduler
    /// and idle 100; at most 60000), in wall-clock time: a call past it
    /// fails closed (auth denies) or safe (idle keeps, scheduling falls back
    /// to the default). Repeat, or comma-separate in the environment.
    #[arg(long = "plugin-deadline-ms", value_name = "KIND=MS", env = "SPAWNER_PLUGIN_DEADLINE_MS", value_delimiter = ',', value_parser = deadline_arg)]
    pub deadline_ms: Vec<KindNumber>,
    /// Memory of one plugin call, `KIND=MIB` (default 64, at most 4096).
    /// Repeat, or comma-separate in the environment.
    #[arg(long = "plugin-memory-mib", value_name = "KIND=MIB", env = "SPAWNER_PLUGIN_MEMORY_MIB", value_delimiter = ',', value_parser = memory_arg)]
    pub memory_mib: Vec<KindNumber>,
}

/// One `KIND=N` item of a per-kind flag; `None` for an empty one (a
/// variable a manifest sets to "", a trailing comma), which sets nothing.
pub type KindNumber = Option<(PluginKind, u64)>;

/// The value `items` give `kind`: the last one, if repeated.
fn last_for(items: &[KindNumber], kind: PluginKind) -> Option<u64> {
    items.iter().flatten().rev().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

impl PluginLimitArgs {
    /// The runtime's limits: the defaults, with these flags' values.
    pub fn runtime(&self) -> RuntimeConfig {
        let mut rc = RuntimeConfig::default();
        for kind in PluginKind::ALL {
            let mut l = rc.limits(kind);
            l.deadline_ms = self.deadline_ms(kind).unwrap_or(l.deadline_ms);
            l.memory_mib = self.memory_mib(kind).unwrap_or(l.memory_mib);
            rc.set_limits(kind, l);
        }
        rc
    }

    /// The deadline these flags give `kind` (the last, if repeated).
    pub fn deadline_ms(&self, kind: PluginKind) -> Option<u64> {
        last_for(&self.deadline_ms, kind)
    }

    /// The memory these flags give `kind` (the last, if repeated).
    pub fn memory_mib(&self, kind: PluginKind) -> Option<u64> {
        last_for(&self.memory_mib, kind)
    }
}

/// `KIND=VALUE`: the plugin kind and the rest, for flags set per kind.
pub(crate) fn kind_value(arg: &str) -> Result<(PluginKind, &str), String> {
    let (k, v) = arg.split_once('=').ok_or_else(|| format!("expected KIND=VALUE, got {arg:?}"))?;
    let kind = PluginKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == k)
        .ok_or_else(|| format!("unknown plugin kind {k:?} (expected scheduler, auth or idle)"))?;
    Ok((kind, v))
}

/// `KIND=N` with N from 1 to `max`, or nothing (see [`KindNumber`]).
fn kind_number(arg: &str, max: u64) -> Result<KindNumber, String> {
    if arg.trim().is_empty() {
        return Ok(None);
    }
    let (kind, v) = kind_value(arg)?;
    match v.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some((kind, n))),
        _ => Err(crate::backends::out_of_range(&format!("the value for {kind}"), Some(max), format!("{v:?}"))),
    }
}

fn deadline_arg(arg: &str) -> Result<KindNumber, String> {
    kind_number(arg, crate::plugins::runtime::MAX_DEADLINE_MS)
}

fn memory_arg(arg: &str) -> Result<KindNumber, String> {
    kind_number(arg, crate::plugins::runtime::MAX_MEMORY_MIB)
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Session-lived backends, customised by WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "spawner", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: API, proxy, sweeper, plugins, and
    /// backends as local processes.
    Dev(crate::dev::DevArgs),
    /// The demo backend (a shared notepad); what the `demo` template runs.
    #[command(hide = true)]
    DemoBackend,
    /// Check and try plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Capability tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run the Kubernetes controller: reconcile SessionLivedBackend objects
    /// into Pods.
    Operator(operator::OperatorArgs),
    /// Run the proxy and sweeper on Kubernetes: route browsers to backend
    /// Pods and terminate idle backends.
    Proxy(Box<proxy::ProxyArgs>),
    /// Print the SessionLivedBackend CustomResourceDefinition (YAML), e.g.
    /// `spawner crd | kubectl apply -f -`.
    Crd,
}

/// Writes `text` and a newline to stderr, for a person at a terminal; if
/// stderr cannot take it (a full disk, a closed pipe), it is dropped:
/// `eprintln!` would panic, and a running Spawner must not stop for that.
pub fn say(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Whether logs are JSON lines (`SPAWNER_LOG_FORMAT=json`, for log
/// shippers): then everything on stderr is one, the reason Spawner
/// stopped included, and nothing is written for a person at a terminal.
pub fn json_logs() -> bool {
    std::env::var("SPAWNER_LOG_FORMAT").is_ok_and(|f| f == "json")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dev(args) => crate::dev::run(args).map(|()| ExitCode::SUCCESS),
        Command::DemoBackend => {
            demo_backend::main_from_env()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Operator(args) => operator::run(args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Crd => {
            let yaml = crate::k8s::crd::crd_yaml()?;
            // `spawner crd | head` closes the pipe early: not an error.
            match std::io::Write::write_all(&mut std::io::stdout().lock(), yaml.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Reads an argument that is either literal text, `@path` (a file) or `-`
/// (standard input).
pub(crate) fn read_arg(value: &str, what: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if value == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).with_context(|| format!("reading {what} from stdin"))?;
        Ok(s)
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))
    } else {
        Ok(value.to_string())
    }
}
