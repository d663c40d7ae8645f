//! A plugin that passed the load-time checks, and the typed calls into it.
//!
//! Loading: digest → compile (cached) → world and version checks on the
//! component's type → link (`InstancePre`) → per-world export type check →
//! `validate-settings`. Any step refuses the plugin with a [`LoadError`].
//!
//! Calling: a fresh `Store` per call (limits armed), instantiate from the
//! `InstancePre` (pooled), call, classify failures into [`CallError`].

use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store, Trap};

use super::bindings::{auth::AuthPre, idle::IdlePre, scheduler::SchedulerPre};
use super::error::{CallError, LoadError, LoadResult};
use super::host_state::{HostState, PluginContext};
use super::runtime::Runtime;
use super::types::*;
use super::{PACKAGE_VERSION, PluginKind, PluginSource};

/// What is known about a loaded plugin.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginInfo {
    /// Kind of decision it makes.
    pub kind: PluginKind,
    /// Name (file name, ConfigMap key or `default-*`).
    pub name: String,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: usize,
}

enum KindPre {
    Scheduler(SchedulerPre<HostState>),
    Auth(AuthPre<HostState>),
    Idle(IdlePre<HostState>),
}

impl KindPre {
    /// The engine the plugin was compiled with, which its stores must use.
    fn engine(&self) -> &Engine {
        match self {
            KindPre::Scheduler(p) => p.engine(),
            KindPre::Auth(p) => p.engine(),
            KindPre::Idle(p) => p.engine(),
        }
    }
}

/// Tries a deadline miss gets before it counts, where one call decides
/// whether a plugin is accepted (`validate-settings` at load, the trial
/// decision of `spawner plugin check`).
pub const DEADLINE_TRIES: usize = 3;

/// A plugin's answer to its kind's sample request (see [`super::sample`]).
#[derive(Debug)]
pub enum TrialDecision {
    /// An auth plugin's verdict.
    Auth(Verdict),
    /// An idle plugin's verdict.
    Idle(IdleVerdict),
    /// A scheduler plugin's placement.
    Scheduler(Placement),
}

/// A checked, linked plugin, ready to be called any number of times.
pub struct LoadedPlugin {
    info: PluginInfo,
    ctx: Arc<PluginContext>,
    pre: KindPre,
    /// It imports WASI (a `std` plugin: its `println!`, `eprintln!` and
    /// panic messages write to WASI streams), so a call may block: see
    /// [`where_blocking_is_allowed`].
    imports_wasi: bool,
    /// It imports `spawner:plugin/host`, whose `verify-capability-token`
    /// needs the auth call's backend (the default plugins do not).
    imports_host: bool,
    /// When it was loaded: [`Self::slow_until_ms`] counts from here.
    loaded_at: std::time::Instant,
    /// Until when (ms after `loaded_at`) its calls run where blocking is
    /// allowed although it imports no WASI: a call of it took
    /// [`SLOW_CALL`] or more, which on an async worker thread (where the
    /// proxy calls the auth plugin) would stall every other task there: a
    /// plugin that loops to its deadline, or one that is slow by design.
    slow_until_ms: std::sync::atomic::AtomicU64,
}

/// Whether a call is timed for [`SLOW_CALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// A decision, where the proxy, the sweeper or a create waits.
    Decision,
    /// `validate-settings` at load, where the loader runs (not an async
    /// worker), and whose first call pays one-time costs: not timed.
    Load,
}

/// A call this long marks its plugin slow for [`SLOW_FOR`]: far beyond a
/// healthy decision (microseconds), and long enough that a descheduled
/// thread on a busy machine rarely reaches it (a false alarm costs a few
/// microseconds per call for a minute, see [`where_blocking_is_allowed`]).
const SLOW_CALL: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a slow call keeps its plugin's calls off the async workers.
const SLOW_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("info", &self.info).finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Loads `source` as a plugin of `kind`, running every load-time check
    /// and its `validate-settings`.
    pub fn load(rt: &Runtime, kind: PluginKind, source: &PluginSource) -> LoadResult<Self> {
        let name = source.name.as_str();
        let (component, digest) = rt.compile(name, &source.bytes)?;
        let engine = component.engine();
        check_world(engine, &component, kind, name)?;
        let pre: InstancePre<HostState> =
            rt.linker(engine).instantiate_pre(&component).map_err(|e| link_error(engine, &component, name, e))?;
        let bad_export =
            |e: wasmtime::Error| LoadError::BadExport { name: name.into(), interface: kind.export_name(), reason: format!("{e:#}") };
        let pre = match kind {
            PluginKind::Scheduler => KindPre::Scheduler(SchedulerPre::new(pre).map_err(bad_export)?),
            PluginKind::Auth => KindPre::Auth(AuthPre::new(pre).map_err(bad_export)?),
            PluginKind::Idle => KindPre::Idle(IdlePre::new(pre).map_err(bad_export)?),
        };
        let ctx = Arc::new(PluginContext { name: name.into(), kind, settings: source.settings.as_str().into(), tokens: rt.tokens() });
        let info = PluginInfo { kind, name: name.into(), digest: hex::encode(digest), size: source.bytes.len() };
        let imports = |prefix: &str| component.component_type().imports(engine).any(|(n, _)| n.starts_with(prefix));
        let (imports_wasi, imports_host) = (imports("wasi:"), imports("spawner:plugin/host"));
        let plugin = LoadedPlugin {
            info,
            ctx,
            pre,
            imports_wasi,
            imports_host,
            loaded_at: std::time::Instant::now(),
            slow_until_ms: std::sync::atomic::AtomicU64::new(0),
        };
        // The deadline is wall-clock time, and a process's first calls also
        // pay one-time costs (the first page faults of a fresh slot) while
        // the machine may be busy: a plugin is refused for the deadline only
        // when it misses it on every try. Loading is off the request path;
        // an endless loop costs DEADLINE_TRIES deadlines.
        let mut validated = plugin.validate_settings(rt, &source.settings);
        for _ in 1..DEADLINE_TRIES {
            if !matches!(validated, Err(CallError::Deadline(_))) {
                break;
            }
            validated = plugin.validate_settings(rt, &source.settings);
        }
        match validated {
            Ok(()) => Ok(plugin),
            Err(CallError::Plugin(mut reason)) => {
                // Settings meant for one's own plugin, given without it.
                if source.is_embedded(kind) {
                    reason.push_str(&format!(
                        " (these settings went to the embedded default {kind} plugin, as no plugin file was given for {kind}: give \
                         yours with --plugin {kind}=FILE, file under [plugins.{kind}] in the config, or {kind}.wasm in the plugins ConfigMap)"
                    ));
                }
                Err(LoadError::Settings { name: name.into(), reason })
            }
            Err(source @ CallError::StartMemory { .. }) => Err(LoadError::Start { name: name.into(), source }),
            Err(source) => Err(LoadError::SettingsCall { name: name.into(), source }),
        }
    }

    /// What this plugin is.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Calls `validate-settings`.
    pub fn validate_settings(&self, rt: &Runtime, settings: &str) -> Result<(), CallError> {
        self.call(rt, Timing::Load, |store, pre| match pre {
            KindPre::Scheduler(p) => {
                instantiated(store, |s| p.instantiate(s))?.spawner_plugin_scheduling().call_validate_settings(store, settings)
            }
            KindPre::Auth(p) => {
                instantiated(store, |s| p.instantiate(s))?.spawner_plugin_authorization().call_validate_settings(store, settings)
            }
            KindPre::Idle(p) => {
                instantiated(store, |s| p.instantiate(s))?.spawner_plugin_idleness().call_validate_settings(store, settings)
            }
        })
    }

    /// One decision on `kind`'s sample request, as `spawner plugin check`
    /// and a reload make before taking a plugin: the answer, how long the
    /// last try took, and how many earlier tries missed the deadline. The
    /// deadline is wall-clock time, and a first call also pays one-time
    /// costs while the machine may be busy, so only a plugin that misses it
    /// [`DEADLINE_TRIES`] times in a row has a deadline problem (an endless
    /// loop costs that many deadlines).
    pub fn trial(&self, rt: &Runtime, kind: PluginKind) -> (Result<TrialDecision, CallError>, std::time::Duration, usize) {
        let decide = || {
            let started = std::time::Instant::now();
            let now = crate::token::now_unix();
            let answer = match kind {
                PluginKind::Auth => self.check(rt, &super::sample::auth_request_with_token(now), 0).map(TrialDecision::Auth),
                PluginKind::Idle => self.evaluate(rt, &super::sample::idle_request(now)).map(TrialDecision::Idle),
                PluginKind::Scheduler => self.place(rt, &super::sample::placement_request(now)).map(TrialDecision::Scheduler),
            };
            (answer, started.elapsed())
        };
        let (mut answer, mut took) = decide();
        let mut missed = 0;
        while matches!(answer, Err(CallError::Deadline(_))) && missed + 1 < DEADLINE_TRIES {
            missed += 1;
            (answer, took) = decide();
        }
        (answer, took, missed)
    }

    /// Asks an auth plugin about one request, and checks the answer.
    /// `backend_created_at` (Unix seconds, 0 for unknown) is when the target
    /// backend was created: tokens the plugin verifies through the host must
    /// be younger.
    pub fn check(&self, rt: &Runtime, request: &AuthRequest, backend_created_at: u64) -> Result<Verdict, CallError> {
        self.check_reaching(rt, request, &super::credentials::Reached { created_at: backend_created_at, uid: None })
    }

    /// The same, for the backend object `reached` (see
    /// [`super::credentials::verify_for`]).
    pub fn check_reaching(&self, rt: &Runtime, request: &AuthRequest, reached: &super::credentials::Reached) -> Result<Verdict, CallError> {
        let verdict = self.call(rt, Timing::Decision, |store, pre| match pre {
            KindPre::Auth(p) => {
                if self.imports_host {
                    store.data_mut().backend = (request.backend.name.clone(), reached.clone());
                }
                instantiated(store, |s| p.instantiate(s))?.spawner_plugin_authorization().call_check(store, request)
            }
            _ => unreachable!("kind checked by the caller"),
        })?;
        validate_verdict(&verdict)?;
        Ok(match verdict {
            Verdict::Deny(mut d) => {
                answer_text(&mut d.reason);
                Verdict::Deny(d)
            }
            allow => allow,
        })
    }

    /// Asks an idle plugin about one backend.
    pub fn evaluate(&self, rt: &Runtime, request: &IdleRequest) -> Result<IdleVerdict, CallError> {
        let mut verdict = self.call(rt, Timing::Decision, |store, pre| match pre {
            KindPre::Idle(p) => instantiated(store, |s| p.instantiate(s))?.spawner_plugin_idleness().call_evaluate(store, request),
            _ => unreachable!("kind checked by the caller"),
        })?;
        if let IdleVerdict::Terminate(t) = &mut verdict {
            answer_text(&mut t.detail);
            given_a_reason(&mut t.detail, "the idle plugin");
        }
        Ok(verdict)
    }

    /// Asks a scheduler plugin where to place a backend, and checks the
    /// answer names a candidate node.
    pub fn place(&self, rt: &Runtime, request: &PlacementRequest) -> Result<Placement, CallError> {
        let mut placement = self.call(rt, Timing::Decision, |store, pre| match pre {
            KindPre::Scheduler(p) => instantiated(store, |s| p.instantiate(s))?.spawner_plugin_scheduling().call_place(store, request),
            _ => unreachable!("kind checked by the caller"),
        })?;
        if let Placement::Reject(reason) = &mut placement {
            answer_text(reason);
            given_a_reason(reason, "the scheduler plugin");
        }
        // They become a Pod's node selector, which the API server would
        // refuse, failing the backend instead of falling back.
        if let Placement::Anywhere(labels) = &placement
            && let Some(l) = labels.iter().find(|l| !crate::backends::is_label(&l.key, &l.value))
        {
            return Err(CallError::InvalidAnswer(format!(
                "anywhere with {:?}={:?}, which is not a Kubernetes label (key: [prefix/]name, name and value up to 63 letters, digits, '-', '_', '.')",
                l.key, l.value
            )));
        }
        if let Placement::Anywhere(labels) = &placement
            && let Some((l, s)) =
                labels.iter().find_map(|l| request.node_selector.iter().find(|s| s.key == l.key && s.value != l.value).map(|s| (l, s)))
        {
            return Err(CallError::InvalidAnswer(format!(
                "anywhere with {}={} contradicts the node selector's {}={}",
                l.key, l.value, s.key, s.value
            )));
        }
        if let Placement::Node(n) = &placement {
            let Some(node) = request.nodes.iter().find(|c| &c.name == n) else {
                return Err(CallError::InvalidAnswer(match request.nodes.is_empty() {
                    // None can run it right now: `anywhere` waits for one.
                    true => format!("node {n}, but no node was offered (with no candidates, answer anywhere or reject)"),
                    false => format!("node {n} is not one of the candidates"),
                }));
            };
            // The platform would never run the backend there: the Pod
            // would wait for ever, and a process would ignore the selector.
            if let Some(missing) = request.node_selector.iter().find(|s| !node.labels.contains(s)) {
                return Err(CallError::InvalidAnswer(format!(
                    "node {n} does not carry the node selector's label {}={}",
                    missing.key, missing.value
                )));
            }
        }
        Ok(placement)
    }

    /// Runs `f` in a fresh store and turns every failure into a `CallError`,
    /// a panic in the host included: whoever called (a request, the sweeper,
    /// a create) gets the kind's fallback, never an unwinding task.
    fn call<R: Send>(
        &self,
        rt: &Runtime,
        timing: Timing,
        f: impl FnOnce(&mut Store<HostState>, &KindPre) -> wasmtime::Result<Result<R, PluginError>> + Send,
    ) -> Result<R, CallError> {
        let _slot = match (self.ctx.kind, timing) {
            (PluginKind::Auth, Timing::Decision) => Some(rt.auth_slot().map_err(CallError::Instantiate)?),
            _ => None,
        };
        let run = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut store = rt.store(self.pre.engine(), self.ctx.clone(), self.imports_wasi);
                match f(&mut store, &self.pre) {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => {
                        let mut message = e.describe();
                        answer_text(&mut message);
                        Err(CallError::Plugin(message))
                    }
                    Err(e) => Err(classify(e, &store, rt)),
                }
            }))
            .unwrap_or_else(|panic| Err(CallError::HostPanic(panic_message(&*panic))))
        };
        if self.imports_wasi {
            return where_blocking_is_allowed(|| {
                let _turn = rt.wasi_turn();
                run()
            });
        }
        if timing == Timing::Load {
            return run();
        }
        let started = std::time::Instant::now();
        let since_load = |t: std::time::Instant| t.duration_since(self.loaded_at).as_millis() as u64;
        let slow = since_load(started) < self.slow_until_ms.load(std::sync::atomic::Ordering::Relaxed);
        let result = if slow { where_blocking_is_allowed(run) } else { run() };
        let took = started.elapsed();
        // Timed off the workers too: a plugin that stays slow stays off.
        if took >= SLOW_CALL {
            let until = since_load(started + took + SLOW_FOR);
            if self.slow_until_ms.swap(until, std::sync::atomic::Ordering::Relaxed) == 0 {
                tracing::warn!(
                    plugin = %self.ctx.name,
                    took_ms = took.as_millis() as u64,
                    "a plugin call took {} ms, holding an async worker thread; its calls run where blocking is allowed until a minute passes without a slow one",
                    took.as_millis()
                );
            }
        }
        result
    }

    /// Whether its calls run where blocking is allowed now, as a slow
    /// plugin's do (see [`SLOW_CALL`]).
    pub fn runs_off_async_workers(&self) -> bool {
        self.imports_wasi || (self.loaded_at.elapsed().as_millis() as u64) < self.slow_until_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `f` where a blocking call may be made. wasmtime-wasi's synchronous
/// WASI functions (writing to stdout or stderr, so every `println!`,
/// `eprintln!` and panic message of a `std` plugin) run their async
/// implementation with tokio's `Handle::block_on`, which panics on a
/// runtime's worker thread; the proxy calls the auth plugin on one. There,
/// `f` runs in `block_in_place` (the worker's other tasks move to another
/// thread meanwhile, a few microseconds: the SDK's lean runtime, which
/// imports no WASI, avoids it). Outside a runtime, or on a blocking-pool
/// thread (where the sweeper and the scheduler call), `f` runs as it is;
/// on a current-thread runtime, which cannot give its thread away, on a
/// scoped thread.
fn where_blocking_is_allowed<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
            std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        }
        Ok(_) => tokio::task::block_in_place(f),
    }
}

/// Runs `instantiate` on `store`, then marks the instance as started:
/// from then on, memory it asks for beyond its limit is its own doing (an
/// allocation), not the size it needs to start at all.
fn instantiated<T>(
    store: &mut Store<HostState>,
    instantiate: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let instance = instantiate(&mut *store);
    store.data_mut().limiter.started = true;
    instance
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

/// Host-side rules a verdict must follow; breaking one is a failed call
/// (so auth fails closed).
///
/// The bounds keep a plugin's answer within what it is stored in and sent
/// as: a request's headers (the `http` crate panics past 32,768 of them;
/// servers refuse far fewer bytes), a status message, an annotation (the
/// API server refuses an object whose annotations pass 256 KiB, so an
/// unbounded termination detail would never be carried out).
fn validate_verdict(v: &Verdict) -> Result<(), CallError> {
    match v {
        Verdict::Deny(d) if !(400..=599).contains(&d.status) => {
            Err(CallError::InvalidAnswer(format!("deny status {} is not an HTTP error status (400-599)", d.status)))
        }
        Verdict::Deny(_) => Ok(()),
        Verdict::Allow(a) => {
            let bytes: usize = a.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
            if a.headers.len() > MAX_IDENTITY_HEADERS || bytes > MAX_IDENTITY_BYTES {
                return Err(CallError::InvalidAnswer(format!(
                    "{} identity headers of {bytes} bytes: at most {MAX_IDENTITY_HEADERS} headers and {MAX_IDENTITY_BYTES} bytes",
                    a.headers.len()
                )));
            }
            for h in &a.headers {
                // Header names are case-insensitive: `X-Spawner-Role` is one.
                if !h.name.get(..super::IDENTITY_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(super::IDENTITY_HEADER_PREFIX))
                {
                    return Err(CallError::InvalidAnswer(format!(
                        "header {} is outside the identity prefix {}",
                        h.name,
                        super::IDENTITY_HEADER_PREFIX
                    )));
                }
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() || http::HeaderValue::from_str(&h.value).is_err() {
                    return Err(CallError::InvalidAnswer(format!("header {} is not a valid HTTP header", h.name)));
                }
            }
            // The proxy sends it as `x-spawner-user`: one it could not send
            // must not let the request through as nobody's.
            // Length first: the other message quotes the subject.
            if let Some(subject) = &a.subject {
                // A backend that checks whether the header is there would
                // take the request as signed in, as user "".
                if subject.is_empty() {
                    return Err(CallError::InvalidAnswer(
                        "the subject is empty: a request that names no user has none (subject: None)".into(),
                    ));
                }
                if subject.len() > MAX_ANSWER_TEXT {
                    return Err(CallError::InvalidAnswer(format!("subject of {} bytes: at most {MAX_ANSWER_TEXT}", subject.len())));
                }
                if http::HeaderValue::from_bytes(subject.as_bytes()).is_err() {
                    return Err(CallError::InvalidAnswer(format!(
                        "subject {subject:?} has control characters; it cannot be a header value"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// Longest text a plugin's answer carries on (a deny's reason, a
/// termination's detail, a rejection's reason, an error's message, a
/// subject): longer text is cut, a subject refused.
pub const MAX_ANSWER_TEXT: usize = 1024;

/// Marks text cut to [`MAX_ANSWER_TEXT`].
const CUT: &str = " [cut]";

/// Identity headers one allow may inject, and their names' and values'
/// bytes together.
pub const MAX_IDENTITY_HEADERS: usize = 32;
pub const MAX_IDENTITY_BYTES: usize = 8 << 10;

fn classify(e: wasmtime::Error, store: &Store<HostState>, rt: &Runtime) -> CallError {
    let kind = store.data().limits_kind();
    let limits = rt.config().limits(kind);
    if let Some(needs) = store.data().limiter.start_need {
        return CallError::StartMemory { needs: needs as u64, limit: limits.memory_bytes() };
    }
    if store.data().limiter.hit {
        return CallError::MemoryLimit(limits.memory_bytes());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline(limits.deadline_ms),
        Some(trap) => {
            let stderr = store.data().stderr_text();
            // std's panic hook writes "thread '..' panicked at FILE:LINE:COL:\nMESSAGE"
            // to stderr; the SDK's lean runtime logs "panicked at ..." instead.
            let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at"));
            match (lines.next(), lines.next(), &store.data().last_error) {
                (Some(at), Some(message), _) => {
                    let at = at.split("panicked at ").nth(1).unwrap_or(at).trim_end_matches(':');
                    // What the plugin wrote to stderr just before (an
                    // `eprintln!` of its state) is its author's context.
                    let before = stderr.lines().take_while(|l| !l.contains("panicked at")).filter(|l| !l.trim().is_empty()).last();
                    let mut text = match before {
                        Some(before) => {
                            let mut before = before.trim().to_string();
                            crate::text::cut_to(&mut before, 300, "…");
                            format!("panicked at {at}: {message} (its stderr before: {before})")
                        }
                        None => format!("panicked at {at}: {message}"),
                    };
                    answer_text(&mut text);
                    CallError::Trap(text)
                }
                (_, _, Some(logged)) if logged.starts_with("panicked") => CallError::Trap(logged.clone()),
                _ => CallError::Trap(format!("{trap}{}{}", trap_site(&e), trap_hint(*trap))),
            }
        }
        None => {
            let msg = format!("{e:#}");
            // A full pool of instances, memories or tables ("maximum
            // concurrent limit of N for memory stripe 0 reached").
            let pool_full = e.chain().any(|c| c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some());
            if pool_full || (msg.contains("instance") && (msg.contains("limit") || msg.contains("pool"))) {
                CallError::Instantiate(msg)
            } else {
                CallError::Trap(msg)
            }
        }
    }
}

/// A plugin's text as Spawner passes it on: at most [`MAX_ANSWER_TEXT`]
/// bytes, on one line (control characters escaped, so that a reason in
/// Spawner's log cannot start a line of its own).
fn answer_text(text: &mut String) {
    crate::text::cut_to(text, MAX_ANSWER_TEXT, CUT);
    crate::text::escape_controls(text);
    crate::text::cut_to(text, MAX_ANSWER_TEXT, CUT);
}

/// A reason in place of an empty (or blank) one: it ends up in a status,
/// an event stream and a log line, where "" tells nobody what happened.
/// `Deny` has its status code, which always says something.
fn given_a_reason(reason: &mut String, who: &str) {
    if reason.trim().is_empty() {
        *reason = format!("{who} gave no reason");
    }
}

/// Where a trap without a panic message happened (`panic = trap`, an
/// `unreachable`, a bad memory access): the innermost frames of its wasm
/// backtrace, by the names in the plugin's name section, so its author has
/// a function to look at.
fn trap_site(e: &wasmtime::Error) -> String {
    let Some(trace) = e.downcast_ref::<wasmtime::WasmBacktrace>() else { return String::new() };
    // wasmtime writes each frame as `  N: 0xOFFSET - MODULE!NAME`, the name
    // demangled; Rust's names carry hashes (`std[d123…]::…`, `…::h0a1b…`)
    // of no use to a reader.
    let text = trace.to_string();
    let mut frames: Vec<(String, usize)> = Vec::new();
    for name in text.lines().filter_map(|l| l.split_once(" - ").map(|(_, f)| f.trim())) {
        let name = without_hashes(name.rsplit_once('!').map_or(name, |(_, n)| n));
        if let Some((last, n)) = frames.last_mut()
            && *last == name
        {
            // Recursion: one frame, counted.
            *n += 1;
        } else if frames.len() == 6 {
            break;
        } else {
            frames.push((name, 1));
        }
    }
    let shown: Vec<String> = frames.into_iter().map(|(f, n)| if n > 1 { format!("{f} (x{n})") } else { f }).collect();
    if shown.is_empty() { String::new() } else { format!(" in {}", shown.join(" <- ")) }
}

/// `name` without Rust's crate disambiguators (`std[d123b7a1a2ed1472]`,
/// printed without leading zeros) and symbol hash (`::h0123456789abcdef`).
fn without_hashes(name: &str) -> String {
    let is_hex = |h: &str| h.bytes().all(|b| b.is_ascii_hexdigit());
    let name = match name.rsplit_once("::h") {
        Some((n, h)) if h.len() == 16 && is_hex(h) => n,
        _ => name,
    };
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c);
        // After a crate's name, not a type's `[u8; 4]`.
        let after_a_name = rest[..open].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        match close {
            Some(close) if after_a_name && (1..=16).contains(&(close - open - 1)) && is_hex(&rest[open + 1..close]) => {
                out.push_str(&rest[..open]);
                rest = &rest[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a trap most often means in a plugin built from Rust.
fn trap_hint(trap: Trap) -> &'static str {
    match trap {
        // The stack lives at the bottom of linear memory: overflowing it
        // writes below address 0, out of bounds.
        Trap::MemoryOutOfBounds => {
            " (in a plugin built from Rust this is most often its stack overflowing: deep recursion or large local arrays; \
             a plugin built with a small stack (-C link-arg=-zstack-size=… in the rustflags of .cargo/config.toml) needs a larger one, or less on its stack)"
        }
        Trap::StackOverflow => " (deep or endless recursion)",
        _ => "",
    }
}

/// Checks that the component targets `kind`'s world at this package version,
/// and imports nothing the host lacks, naming both sides when it does not.
fn check_world(engine: &Engine, component: &Component, kind: PluginKind, name: &str) -> LoadResult<()> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let required = kind.export_name();
    let ours = |n: &str| n.starts_with("spawner:plugin/");
    let wrong_version = |n: &str| ours(n) && !n.ends_with(&format!("@{PACKAGE_VERSION}"));

    for (import, item) in ty.imports(engine) {
        if wrong_version(import) {
            return Err(LoadError::WrongVersion { name: name.into(), found: import.into(), supported: PACKAGE_VERSION });
        }
        let known = import.starts_with("wasi:")
            || import == format!("spawner:plugin/host@{PACKAGE_VERSION}")
            || import == format!("spawner:plugin/types@{PACKAGE_VERSION}");
        if !known || !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Err(LoadError::UnknownImport { name: name.into(), import: import.into() });
        }
    }
    if exports.iter().any(|e| e == &required) {
        return Ok(());
    }
    if let Some(other) = exports.iter().find(|e| wrong_version(e)) {
        return Err(LoadError::WrongVersion { name: name.into(), found: other.clone(), supported: PACKAGE_VERSION });
    }
    let found = match exports.as_slice() {
        // Most often a crate without its `export!` line: said as without
        // `--kind`, where the kind cannot be told (`UnknownKind`).
        [] => format!(
            "nothing (no export! line? spawner-plugin-sdk's `spawner_plugin_sdk::export!({kind}: MyPlugin);` at the top level of lib.rs makes it)"
        ),
        list => {
            let described: Vec<String> = list
                .iter()
                .map(|e| match PluginKind::from_export_name(e) {
                    Some(k) => format!("{e} ({} plugin)", k.with_article()),
                    None => e.clone(),
                })
                .collect();
            described.join(", ")
        }
    };
    Err(LoadError::WrongWorld { name: name.into(), kind, found, required })
}

/// Explains a failed link: usually an import (or an import's version) the
/// linker does not have.
fn link_error(engine: &Engine, component: &Component, name: &str, e: wasmtime::Error) -> LoadError {
    let msg = format!("{e:#}");
    let import = component
        .component_type()
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .find(|n| msg.contains(n.as_str()))
        .unwrap_or_else(|| msg.clone());
    if import == msg {
        LoadError::Compile { name: name.into(), reason: msg }
    } else {
        LoadError::UnknownImport { name: name.into(), import: format!("{import} ({msg})") }
    }
}

/// The kind a component is built for, read from its exports (any version,
/// so that a version mismatch is then reported by [`LoadedPlugin::load`]).
pub fn detect_kind(rt: &Runtime, source: &PluginSource) -> LoadResult<PluginKind> {
    let (component, _) = rt.compile(&source.name, &source.bytes)?;
    let exports: Vec<String> = component.component_type().exports(component.engine()).map(|(n, _)| n.to_string()).collect();
    let kinds: Vec<PluginKind> = exports.iter().filter_map(|e| PluginKind::from_export_name(e)).collect();
    match kinds.as_slice() {
        [k] => Ok(*k),
        _ => Err(LoadError::UnknownKind {
            name: source.name.clone(),
            found: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::types::{Allow, Deny, Header};

    fn allow(subject: Option<&str>, headers: &[(&str, &str)]) -> Verdict {
        let headers = headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect();
        Verdict::Allow(Allow { subject: subject.map(Into::into), headers })
    }

    #[test]
    fn backtrace_names_lose_their_hashes() {
        assert_eq!(without_hashes("std[d123b7a1a2ed1472]::process::abort"), "std::process::abort");
        assert_eq!(without_hashes("my_auth::check::h0123456789abcdef"), "my_auth::check");
        assert_eq!(without_hashes("<a[0123456789abcdef]::X as b[fedcba9876543210]::T>::f"), "<a::X as b::T>::f");
        assert_eq!(without_hashes("f::<[u8; 4]>"), "f::<[u8; 4]>", "brackets that hold no hash stay");
        assert_eq!(without_hashes("core[7a1f]::panicking::panic"), "core::panicking::panic", "fewer digits: no leading zeros");
        assert_eq!(without_hashes("f::<[ab]>"), "f::<[ab]>", "not after a crate's name");
    }

    #[test]
    fn verdicts_the_proxy_could_not_carry_out_are_failed_calls() {
        assert!(validate_verdict(&allow(Some("José"), &[("x-spawner-role", "editor")])).is_ok(), "any UTF-8 subject");
        assert!(validate_verdict(&allow(None, &[])).is_ok());
        let refused = |v: Verdict| match validate_verdict(&v) {
            Err(CallError::InvalidAnswer(why)) => why,
            other => panic!("accepted: {other:?}"),
        };
        assert!(refused(allow(Some("alice\r\nx-spawner-role: admin"), &[])).contains("control characters"), "no header injection");
        assert!(refused(allow(Some(""), &[])).contains("subject is empty"), "not a user named \"\"");
        assert!(refused(allow(None, &[("x-other", "1")])).contains("outside the identity prefix"));
        assert!(refused(allow(None, &[("x-spawner-role", "a\nb")])).contains("not a valid HTTP header"));
        assert!(refused(Verdict::Deny(Deny { status: 200, reason: "ok?".into() })).contains("400-599"));
        // Header names are case-insensitive.
        assert!(validate_verdict(&allow(None, &[("X-Spawner-Role", "editor")])).is_ok());
        assert!(refused(allow(None, &[("X-Spawne", "1")])).contains("outside the identity prefix"));
        // Bounded: what the proxy can add to a request, and a subject.
        let names: Vec<String> = (0..=MAX_IDENTITY_HEADERS).map(|i| format!("x-spawner-h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        assert!(validate_verdict(&allow(None, &many[..MAX_IDENTITY_HEADERS])).is_ok());
        assert!(refused(allow(None, &many)).contains("at most 32 headers"));
        let big = "v".repeat(MAX_IDENTITY_BYTES);
        assert!(refused(allow(None, &[("x-spawner-big", &big)])).contains("8192 bytes"));
        assert!(validate_verdict(&allow(Some(&"s".repeat(MAX_ANSWER_TEXT)), &[])).is_ok());
        assert!(refused(allow(Some(&"s".repeat(MAX_ANSWER_TEXT + 1)), &[])).contains("at most 1024"));
        let long_and_bad = format!("{}\n", "s".repeat(MAX_ANSWER_TEXT));
        assert!(refused(allow(Some(&long_and_bad), &[])).len() < 100, "a long subject is not quoted whole");
    }

    /// Plugin authors' native tests check verdicts with the SDK's copy of
    /// these rules (`testing::check_verdict`): it must answer as the host
    /// does, message included.
    #[test]
    fn the_sdk_checks_verdicts_as_the_host_does() {
        use spawner_plugin_sdk::auth as sdk;
        use spawner_plugin_sdk::testing::{MAX_IDENTITY_BYTES as SDK_BYTES, MAX_IDENTITY_HEADERS as SDK_HEADERS, MAX_SUBJECT_BYTES};
        assert_eq!((SDK_HEADERS, SDK_BYTES, MAX_SUBJECT_BYTES), (MAX_IDENTITY_HEADERS, MAX_IDENTITY_BYTES, MAX_ANSWER_TEXT));
        let to_sdk = |v: &Verdict| match v {
            Verdict::Allow(a) => sdk::Verdict::Allow(sdk::Allow {
                subject: a.subject.clone(),
                headers: a.headers.iter().map(|h| sdk::Header { name: h.name.clone(), value: h.value.clone() }).collect(),
            }),
            Verdict::Deny(d) => sdk::Verdict::Deny(sdk::Deny { status: d.status, reason: d.reason.clone() }),
        };
        let names: Vec<String> = (0..=MAX_IDENTITY_HEADERS).map(|i| format!("x-spawner-h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let (big, long) = ("v".repeat(MAX_IDENTITY_BYTES), "s".repeat(MAX_ANSWER_TEXT));
        let cases = [
            allow(None, &[]),
            allow(Some("José"), &[("x-spawner-role", "editor")]),
            allow(Some("alice\r\nx-spawner-role: admin"), &[]),
            allow(Some("del\u{7f}"), &[]),
            allow(Some("tab\tok"), &[]),
            allow(Some(""), &[]),
            allow(Some(&long), &[]),
            allow(Some(&format!("{long}s")), &[]),
            allow(None, &[("x-other", "1")]),
            allow(None, &[("X-Spawner-Role", "editor")]),
            allow(None, &[("X-Spawne", "1")]),
            allow(None, &[("x-spawner-", "1")]),
            allow(None, &[("x-spawner-rôle", "1")]),
            allow(None, &[("x-spawner-a b", "1")]),
            allow(None, &[("x-spawner-role", "a\nb")]),
            allow(None, &[("x-spawner-role", "é")]),
            allow(None, &[("x-spawner-role", "del\u{7f}")]),
            allow(None, &[("x-spawner-role", "a\tb c")]),
            allow(None, &many[..MAX_IDENTITY_HEADERS]),
            allow(None, &many),
            allow(None, &[("x-spawner-big", &big)]),
            Verdict::Deny(Deny { status: 200, reason: "ok?".into() }),
            Verdict::Deny(Deny { status: 600, reason: "".into() }),
            Verdict::Deny(Deny { status: 401, reason: "no token".into() }),
        ];
        for v in &cases {
            let host = validate_verdict(v).map_err(|e| match e {
                CallError::InvalidAnswer(why) => why,
                other => panic!("{other:?}"),
            });
            assert_eq!(spawner_plugin_sdk::testing::check_verdict(&to_sdk(v)), host, "{v:?}");
        }
    }
}
