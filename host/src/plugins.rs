//! The plugin host: loads sandboxed WebAssembly components for the three
//! decisions (scheduling, auth, idle) and calls them with fallbacks.
//!
//! - [`runtime`]: the two wasmtime `Engine`s (one per way of resetting a
//!   memory), their linkers, the epoch ticker and the compiled-component
//!   cache;
//! - [`loaded`]: load-time checks and the typed call into one plugin;
//! - `host_state`: per-call store data and the `host` imports;
//! - `stderr`: a `std` plugin's stderr, kept for the failure report;
//! - [`types`]: the request and decision types (generated from `wit/`);
//! - [`credentials`]: the capability tokens a request carries, verified
//!   before the auth plugin runs;
//! - [`embedded`]: the default bundle compiled into this binary;
//! - [`sample`]: representative inputs, for `spawner plugin check`.
//!
//! [`Plugins`] is what the rest of Spawner uses: one slot per kind, swapped
//! atomically on reload, and `plugins.auth().check(&request)` style calls
//! that never fail: a failed call is logged, counted, and replaced by the
//! kind's safe answer (auth denies, idle keeps, scheduling falls back to
//! the default scheduler).

mod bindings;
pub mod credentials;
pub mod embedded;
mod error;
mod host_state;
pub mod loaded;
pub mod runtime;
pub mod sample;
mod stderr;
pub mod types;
mod waits;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use error::{CallError, LoadError, LoadResult};
pub use loaded::{LoadedPlugin, PluginInfo};
pub use runtime::{Limits, Reset, Runtime, RuntimeConfig};

use crate::log_gate::LogGate;
use crate::metrics::{DecisionLabels, FailureLabels, KindLabels, LoadLabels, Metrics};
use types::*;

/// The version of the `spawner:plugin` WIT package this host implements.
pub const PACKAGE_VERSION: &str = "0.2.0";

/// Headers an auth plugin may inject; client-sent ones are always stripped.
pub const IDENTITY_HEADER_PREFIX: &str = "x-spawner-";

/// The three decisions plugins make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Admit and place a backend.
    Scheduler,
    /// Allow or deny a request or WebSocket.
    Auth,
    /// Keep or terminate a ready backend.
    Idle,
}

impl PluginKind {
    /// Every kind.
    pub const ALL: [PluginKind; 3] = [PluginKind::Scheduler, PluginKind::Auth, PluginKind::Idle];

    /// `scheduler`, `auth` or `idle` (also the WIT world name).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Scheduler => "scheduler",
            PluginKind::Auth => "auth",
            PluginKind::Idle => "idle",
        }
    }

    /// The interface a plugin of this kind exports.
    fn interface(self) -> &'static str {
        match self {
            PluginKind::Scheduler => "scheduling",
            PluginKind::Auth => "authorization",
            PluginKind::Idle => "idleness",
        }
    }

    /// Full name of the exported interface, e.g.
    /// `spawner:plugin/authorization@0.2.0`.
    pub fn export_name(self) -> String {
        format!("spawner:plugin/{}@{PACKAGE_VERSION}", self.interface())
    }

    /// The kind whose interface `name` is (any version).
    pub fn from_export_name(name: &str) -> Option<PluginKind> {
        let rest = name.strip_prefix("spawner:plugin/")?;
        let iface = rest.split('@').next()?;
        PluginKind::ALL.into_iter().find(|k| k.interface() == iface)
    }

    /// "a scheduler", "an auth", "an idle" (for messages).
    pub fn with_article(self) -> &'static str {
        match self {
            PluginKind::Scheduler => "a scheduler",
            PluginKind::Auth => "an auth",
            PluginKind::Idle => "an idle",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin to load: its bytes, a name for messages, and its settings.
#[derive(Clone)]
pub struct PluginSource {
    /// Name used in logs, metrics and errors.
    pub name: String,
    /// The component.
    pub bytes: Arc<[u8]>,
    /// Settings, passed verbatim (by convention JSON).
    pub settings: String,
}

impl std::fmt::Debug for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSource").field("name", &self.name).field("size", &self.bytes.len()).finish()
    }
}

impl PluginSource {
    /// The embedded default plugin of `kind`, with `settings`.
    pub fn embedded(kind: PluginKind, settings: impl Into<String>) -> Self {
        PluginSource { name: format!("default-{kind}"), bytes: embedded::bytes(kind).into(), settings: settings.into() }
    }

    /// Whether this is [`PluginSource::embedded`]'s plugin of `kind`.
    pub fn is_embedded(&self, kind: PluginKind) -> bool {
        self.name == format!("default-{kind}") && *self.bytes == *embedded::bytes(kind)
    }

    /// A plugin read from `path`.
    pub fn file(path: &Path, settings: impl Into<String>) -> LoadResult<Self> {
        let bytes = std::fs::read(path).map_err(|error| {
            // A crate without `crate-type = ["cdylib"]` builds, but writes
            // no .wasm: the file a plugin author looks for is not there.
            let in_target = path.to_string_lossy().contains("wasm32-wasip");
            let hint = match error.kind() == std::io::ErrorKind::NotFound && in_target {
                true => " (`cargo build --target wasm32-wasip2 --release` writes target/wasm32-wasip2/release/<crate name with - as _>.wasm, and only when the crate's Cargo.toml has crate-type = [\"cdylib\"] under [lib])",
                false => "",
            };
            LoadError::Read { path: path.display().to_string(), error, hint }
        })?;
        Ok(PluginSource {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string()),
            bytes: bytes.into(),
            settings: settings.into(),
        })
    }
}

/// The loaded plugins of a running Spawner, one slot per kind.
pub struct Plugins {
    runtime: Arc<Runtime>,
    slots: [ArcSwap<LoadedPlugin>; 3],
    /// The embedded default scheduler with default settings: where a failed
    /// scheduler call falls back to.
    default_scheduler: Arc<LoadedPlugin>,
    metrics: Arc<Metrics>,
    /// Per kind: at most one line per period for failed calls (an auth
    /// plugin that traps fails on every request; the metrics count them
    /// all).
    failure_logs: [LogGate; 3],
}

/// A short digest of a plugin's settings, for logs: a reload that changed
/// only the settings is told apart from one that changed nothing. Keyed
/// with a key of this process: settings may hold a secret (an HMAC key,
/// say), and a plain hash in a log would let whoever reads it test guesses
/// offline. Comparable within one process's log, not across restarts.
fn settings_digest(settings: &str) -> String {
    use hmac::{Hmac, Mac};
    static KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(rand::random);
    if settings.trim().is_empty() {
        return "none".into();
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&*KEY).expect("HMAC takes keys of any length");
    mac.update(settings.as_bytes());
    mac.finalize().into_bytes()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why `plugin` would fail every call, if its trial on the sample request
/// says so: it traps, runs out of memory or misses its deadline (each
/// try). One that only cannot decide the sample (its error) passes: a real
/// request may be another matter.
fn failed_trial(runtime: &Runtime, kind: PluginKind, plugin: &LoadedPlugin) -> Option<LoadError> {
    match plugin.trial(runtime, kind).0 {
        Err(source @ (CallError::Trap(_) | CallError::MemoryLimit(_) | CallError::StartMemory { .. } | CallError::Deadline(_))) => {
            Some(LoadError::Trial { name: plugin.info().name.clone(), kind, source })
        }
        _ => None,
    }
}

/// At start, a plugin that fails the trial a reload would refuse it for
/// (see [`Plugins::replace`]) is still loaded: there is no working plugin
/// to keep, and refusing to start would take the system down (an operator
/// in a crash loop over a ConfigMap) where the kind's fallback keeps it up.
/// But its author is told now, not by the first request's failure.
fn warn_if_failing(runtime: &Runtime, kind: PluginKind, plugin: &LoadedPlugin) {
    let Some(failed) = failed_trial(runtime, kind, plugin) else { return };
    let error = crate::text::one_line(&failed);
    tracing::warn!(kind = kind.as_str(), plugin = %plugin.info().name, %error,
        "plugin loaded, but it may fail every call: each failed call takes its kind's fallback");
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(PluginKind::ALL.iter().map(|k| self.info(*k))).finish()
    }
}

impl Plugins {
    /// Loads one plugin per kind from `sources` (missing kinds use the
    /// embedded defaults). Any refusal fails start-up: a misconfigured
    /// Spawner should not start half-working.
    pub fn new(runtime: Arc<Runtime>, metrics: Arc<Metrics>, mut sources: Vec<(PluginKind, PluginSource)>) -> LoadResult<Self> {
        let mut load = |kind: PluginKind| -> LoadResult<Arc<LoadedPlugin>> {
            let source = match sources.iter().position(|(k, _)| *k == kind) {
                Some(i) => sources.remove(i).1,
                None => PluginSource::embedded(kind, ""),
            };
            let result = LoadedPlugin::load(&runtime, kind, &source);
            count_load(&metrics, kind, result.is_ok());
            let plugin = Arc::new(result?);
            tracing::info!(kind = kind.as_str(), plugin = %plugin.info().name, digest = %&plugin.info().digest[..12],
                settings = %settings_digest(&source.settings), "plugin loaded");
            if !source.is_embedded(kind) {
                warn_if_failing(&runtime, kind, &plugin);
            }
            Ok(plugin)
        };
        let slots = [load(PluginKind::Scheduler)?, load(PluginKind::Auth)?, load(PluginKind::Idle)?];
        let default_scheduler =
            Arc::new(LoadedPlugin::load(&runtime, PluginKind::Scheduler, &PluginSource::embedded(PluginKind::Scheduler, ""))?);
        Ok(Plugins { runtime, slots: slots.map(ArcSwap::new), default_scheduler, metrics, failure_logs: Default::default() })
    }

    /// The embedded default bundle with default settings.
    pub fn defaults(runtime: Arc<Runtime>, metrics: Arc<Metrics>) -> LoadResult<Self> {
        Self::new(runtime, metrics, Vec::new())
    }

    /// The runtime plugins run in.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Hot swap: loads and validates `source`, then atomically replaces the
    /// plugin of `kind`. Calls already running finish on the old plugin. On
    /// any error the old plugin stays and the error says why.
    pub fn replace(&self, kind: PluginKind, source: &PluginSource) -> LoadResult<PluginInfo> {
        // One that fails every call (see `failed_trial`) would replace a
        // working one, and for auth deny every request.
        let result = LoadedPlugin::load(&self.runtime, kind, source).and_then(|plugin| match failed_trial(&self.runtime, kind, &plugin) {
            Some(failed) => Err(failed),
            None => Ok(plugin),
        });
        match result {
            Ok(plugin) => {
                let info = plugin.info().clone();
                self.slots[kind.index()].store(Arc::new(plugin));
                // Its first failure is logged, however recently the old
                // plugin's was: an author swapping in a fix that still
                // fails must see so.
                self.failure_logs[kind.index()].reopen();
                // Counted once in place: whoever sees the count sees the
                // new plugin decide.
                count_load(&self.metrics, kind, true);
                tracing::info!(kind = kind.as_str(), plugin = %info.name, digest = %&info.digest[..12],
                    settings = %settings_digest(&source.settings), "plugin replaced");
                Ok(info)
            }
            Err(e) => {
                self.refuse(kind, &source.name, &e);
                Err(e)
            }
        }
    }

    /// Counts and logs a refused reload of `kind` (of `refused`, a file or
    /// ConfigMap key), the current plugin staying: one that failed to load,
    /// or whose source could not even be read (a deleted file).
    pub fn refuse(&self, kind: PluginKind, refused: &str, error: &dyn std::fmt::Display) {
        count_load(&self.metrics, kind, false);
        let current = self.info(kind);
        let error = crate::text::one_line(error);
        tracing::error!(kind = kind.as_str(), refused = %refused, keeping = %current.name,
            keeping_digest = %&current.digest[..12], %error, "plugin reload refused; keeping the current plugin");
    }

    /// What is loaded for `kind`.
    pub fn info(&self, kind: PluginKind) -> PluginInfo {
        self.slots[kind.index()].load().info().clone()
    }

    /// The auth decision.
    pub fn auth(&self) -> AuthPlugin<'_> {
        AuthPlugin(self)
    }

    /// The idle decision.
    pub fn idle(&self) -> IdlePlugin<'_> {
        IdlePlugin(self)
    }

    /// The scheduling decision.
    pub fn scheduler(&self) -> SchedulerPlugin<'_> {
        SchedulerPlugin(self)
    }

    fn current(&self, kind: PluginKind) -> Arc<LoadedPlugin> {
        self.slots[kind.index()].load_full()
    }

    fn record<R>(&self, kind: PluginKind, plugin: &LoadedPlugin, started: Instant, result: &Result<R, CallError>) {
        self.metrics.plugins.call_seconds.get_or_create(&KindLabels { kind: kind.as_str() }).observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.metrics
                .plugins
                .failures
                .get_or_create(&FailureLabels { kind: kind.as_str(), plugin: plugin.info().name.clone(), error: e.label() })
                .inc();
            // A call that began before a replacement and failed after it
            // must not take the line the new plugin's first failure gets.
            let gate = &self.failure_logs[kind.index()];
            let replaced = !std::ptr::eq(plugin, &**self.slots[kind.index()].load());
            let passed = if replaced {
                gate.hold();
                None
            } else {
                gate.pass(Instant::now())
            };
            if let Some(suppressed) = passed {
                // On one line: some errors quote the plugin's own words (a
                // node or header name it answered, its functions' names).
                let error = crate::text::one_line(e);
                tracing::warn!(kind = kind.as_str(), plugin = %plugin.info().name, %error, suppressed,
                    "plugin call failed; applying the safe fallback (`suppressed`: failures of this kind not logged since the last line; at most one line per {} s)",
                    crate::log_gate::EVERY.as_secs());
            }
        }
    }

    fn decided(&self, kind: PluginKind, decision: &'static str) {
        self.metrics.plugins.decisions.get_or_create(&DecisionLabels { kind: kind.as_str(), decision }).inc();
    }
}

fn count_load(metrics: &Metrics, kind: PluginKind, ok: bool) {
    metrics.plugins.loads.get_or_create(&LoadLabels { kind: kind.as_str(), result: if ok { "loaded" } else { "refused" } }).inc();
}

/// The auth decision; fails closed.
pub struct AuthPlugin<'a>(&'a Plugins);

impl AuthPlugin<'_> {
    /// Decides one request. When the plugin fails the request is denied
    /// ([`auth_fallback`]: 403, or 503 for a failure that may pass) without
    /// details; the details go to the log and metrics.
    pub fn check(&self, request: &AuthRequest) -> Verdict {
        self.check_reaching(request, &credentials::Reached::default())
    }

    /// The same, for the backend object `reached`: tokens the plugin
    /// verifies through the host that were minted for another object of
    /// its name, or issued before it, were for an earlier backend.
    pub fn check_reaching(&self, request: &AuthRequest, reached: &credentials::Reached) -> Verdict {
        let plugin = self.0.current(PluginKind::Auth);
        let started = Instant::now();
        let result = plugin.check_reaching(&self.0.runtime, request, reached);
        self.0.record(PluginKind::Auth, &plugin, started, &result);
        let verdict = result.unwrap_or_else(|e| auth_fallback(&e));
        self.0.decided(PluginKind::Auth, if verdict.is_allow() { "allow" } else { "deny" });
        verdict
    }
}

/// What a request gets when the auth plugin fails: denied (fail closed),
/// with 503 when the failure may pass (out of time, which a busy machine
/// causes in a healthy plugin, or no instance free), so that clients retry
/// (the proxy adds `Retry-After`), and 403 otherwise (a trap, an error or an
/// answer the host refuses: the plugin's own fault, which retrying does not
/// cure). Until 2026-12-01 every failure was 403, which reads as a refusal.
pub fn auth_fallback(error: &CallError) -> Verdict {
    match error {
        CallError::Deadline(_) | CallError::Instantiate(_) => {
            Verdict::deny(503, "access check failed: the auth plugin did not decide in time (Spawner may be busy); retry shortly")
        }
        _ => Verdict::deny(403, "access check failed (the auth plugin could not decide)"),
    }
}

/// The idle decision; fails safe (keeps the backend).
pub struct IdlePlugin<'a>(&'a Plugins);

impl IdlePlugin<'_> {
    /// Decides about one backend. When the plugin fails the backend is kept.
    pub fn evaluate(&self, request: &IdleRequest) -> IdleVerdict {
        self.evaluate_reporting(request).0
    }

    /// [`evaluate`](Self::evaluate), also saying whether the plugin failed
    /// (its verdict is then the fallback, keep).
    pub fn evaluate_reporting(&self, request: &IdleRequest) -> (IdleVerdict, bool) {
        let plugin = self.0.current(PluginKind::Idle);
        let started = Instant::now();
        let result = plugin.evaluate(&self.0.runtime, request);
        self.0.record(PluginKind::Idle, &plugin, started, &result);
        let failed = result.is_err();
        let verdict = result.unwrap_or(IdleVerdict::Keep);
        self.0.decided(PluginKind::Idle, if matches!(verdict, IdleVerdict::Keep) { "keep" } else { "terminate" });
        (verdict, failed)
    }
}

/// The scheduling decision; falls back to the default scheduler.
pub struct SchedulerPlugin<'a>(&'a Plugins);

impl SchedulerPlugin<'_> {
    /// Decides placement. When the configured plugin fails, the embedded
    /// default scheduler (default settings) decides; if that fails too, the
    /// least loaded node matching the selector is used.
    pub fn place(&self, request: &PlacementRequest) -> Placement {
        let plugin = self.0.current(PluginKind::Scheduler);
        let started = Instant::now();
        let result = plugin.place(&self.0.runtime, request);
        self.0.record(PluginKind::Scheduler, &plugin, started, &result);
        let placement = match result {
            Ok(p) => p,
            Err(_) => {
                let fallback = &self.0.default_scheduler;
                let started = Instant::now();
                let result = fallback.place(&self.0.runtime, request);
                self.0.record(PluginKind::Scheduler, fallback, started, &result);
                result.unwrap_or_else(|_| native_fallback(request))
            }
        };
        self.0.decided(
            PluginKind::Scheduler,
            match placement {
                Placement::Node(_) => "node",
                Placement::Anywhere(_) => "anywhere",
                Placement::Reject(_) => "reject",
            },
        );
        placement
    }
}

/// Last resort when even the default scheduler fails: the least loaded node
/// that carries the selector's labels, or anywhere when none are listed.
fn native_fallback(request: &PlacementRequest) -> Placement {
    if request.nodes.is_empty() {
        return Placement::Anywhere(request.node_selector.clone());
    }
    request
        .nodes
        .iter()
        .filter(|n| request.node_selector.iter().all(|s| n.labels.iter().any(|l| l.key == s.key && l.value == s.value)))
        .min_by_key(|n| n.backends.len())
        .map(|n| Placement::Node(n.name.clone()))
        .unwrap_or_else(|| Placement::Reject("no node matches the node selector".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_digests_tell_settings_apart() {
        assert_eq!(settings_digest(" \n"), "none");
        assert_eq!(settings_digest("{\"a\":1}").len(), 12);
        assert_ne!(settings_digest("{\"a\":1}"), settings_digest("{\"a\":2}"));
    }
}
