//! What each call's `Store` holds, and the `spawner:plugin/host` imports.
//!
//! A fresh `HostState` is built for every call, so nothing a plugin does in
//! one call (globals, heap, resources) is visible in the next.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginKind;
use super::bindings::auth::spawner::plugin::{host, types};
use super::stderr::TailCapture;
use crate::token::TokenKey;

/// A plugin's log line is cut at this length: plugins are untrusted and
/// the log is shared.
const MAX_LOG_LINE: usize = 2048;

/// Log lines one call may write; the rest are dropped (with one notice) so a
/// plugin cannot flood the log on every request.
const MAX_LOG_LINES_PER_CALL: u32 = 20;

/// Bytes of stderr kept per call (the last ones): enough for a panic
/// message.
const STDERR_CAPTURE: usize = 4096;

/// Table elements a plugin may grow to (Rust plugins use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Per-plugin facts every call of it shares.
#[derive(Debug)]
pub(crate) struct PluginContext {
    pub name: Arc<str>,
    pub kind: PluginKind,
    pub settings: Arc<str>,
    pub tokens: Option<Arc<TokenKey>>,
}

/// Memory limiter that remembers that the limit was hit, so the host can
/// report "memory limit" rather than a generic trap. The limit is the
/// call's, over all its memories: a component may hold several core
/// modules, each with its own memory, and a limit per memory would let it
/// take a multiple.
pub(crate) struct Limiter {
    memory_bytes: usize,
    /// What the call's memories hold together.
    total: usize,
    pub hit: bool,
    /// What a memory asked for when it was created over the limit (it
    /// could not even start): its initial size, stack and data included.
    pub start_need: Option<usize>,
    /// Set once the instance exists: growth after that is the plugin's.
    pub started: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.memory_bytes {
            self.hit = true;
            if current == 0 && !self.started {
                self.start_need = Some(total);
            }
            // Trap rather than return -1: a Rust guest would abort with a
            // less clear message, and a C guest might carry on half-failed.
            wasmtime::bail!("memory limit of {} bytes reached (asked for {total} in all)", self.memory_bytes);
        }
        let grows = maximum.is_none_or(|m| desired <= m);
        if grows {
            self.total = total;
        }
        Ok(grows)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|m| desired <= m))
    }
}

/// The data of one call's `Store`.
pub(crate) struct HostState {
    pub limiter: Limiter,
    /// Built on first use: plugins without WASI imports (the `no_std`
    /// default bundle) never pay for it.
    wasi: Option<(WasiCtx, TailCapture)>,
    table: ResourceTable,
    ctx: Arc<PluginContext>,
    logs_left: u32,
    /// The last error-level line the plugin logged (a `no_std` plugin's
    /// panic message), for the trap report.
    pub last_error: Option<String>,
    /// The backend an auth call is about, and which object of that name:
    /// `verify-capability-token` refuses tokens for an earlier one, as the
    /// proxy does for the credentials it finds.
    pub backend: (String, super::credentials::Reached),
    /// When a wait in a host call gives up: the call's deadline (set for
    /// plugins that import WASI, the only ones that can wait).
    pub wait_until: Option<tokio::time::Instant>,
}

impl HostState {
    /// The call's resources (WASI's pollables and streams among them).
    pub fn table(&mut self) -> &mut wasmtime::component::ResourceTable {
        &mut self.table
    }

    pub fn new(ctx: Arc<PluginContext>, memory_bytes: usize) -> Self {
        HostState {
            limiter: Limiter { memory_bytes, total: 0, hit: false, start_need: None, started: false },
            wasi: None,
            table: ResourceTable::new(),
            ctx,
            logs_left: MAX_LOG_LINES_PER_CALL,
            last_error: None,
            backend: (String::new(), super::credentials::Reached::default()),
            wait_until: None,
        }
    }

    /// What the plugin wrote to stderr (a `std` plugin's panic message).
    pub fn stderr_text(&self) -> String {
        self.wasi.as_ref().map(|(_, err)| String::from_utf8_lossy(&err.contents()).trim().to_string()).unwrap_or_default()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (wasi, _) = self.wasi.get_or_insert_with(|| {
            let stderr = TailCapture::new(STDERR_CAPTURE);
            // No preopened directories, no environment, no arguments, no
            // stdin, and no socket may connect or bind: a plugin can
            // compute and call the host, nothing else.
            let ctx = WasiCtx::builder().stderr(stderr.clone()).allow_tcp(false).allow_udp(false).build();
            (ctx, stderr)
        });
        WasiCtxView { ctx: wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        let mut message = message;
        // On one line: Spawner's log prints the message as it is.
        crate::text::cut_to(&mut message, MAX_LOG_LINE, "…");
        crate::text::escape_controls(&mut message);
        crate::text::cut_to(&mut message, MAX_LOG_LINE, "…");
        if self.logs_left == 0 {
            message.push_str(" (log limit for this call reached; further lines dropped)");
        }
        if matches!(level, types::LogLevel::Error) {
            // The SDK's lean runtime says its panic this way, then traps:
            // the failed call's line says it (one per kind per 10 s), so it
            // is not logged once per call too, which let any client that
            // could make the plugin panic write a line per request.
            if message.starts_with("panicked at ") || message.starts_with("panicked: ") {
                self.last_error = Some(message);
                return;
            }
            self.last_error = Some(message.clone());
        }
        let (kind, plugin) = (self.ctx.kind.as_str(), &*self.ctx.name);
        match level {
            types::LogLevel::Trace => tracing::trace!(target: "spawner::plugin", kind, plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(target: "spawner::plugin", kind, plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(target: "spawner::plugin", kind, plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(target: "spawner::plugin", kind, plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(target: "spawner::plugin", kind, plugin, "{message}"),
        }
    }

    fn settings(&mut self) -> String {
        self.ctx.settings.to_string()
    }

    fn verify_capability_token(&mut self, token: String) -> Result<types::Capability, types::TokenError> {
        let (name, reached) = &self.backend;
        super::credentials::verify_for(self.ctx.tokens.as_deref(), &token, name, Some(reached))
    }
}

impl HostState {
    /// The kind of plugin this store serves (to look up its limits).
    pub fn limits_kind(&self) -> PluginKind {
        self.ctx.kind
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lean_plugins_panic_message_is_kept_for_its_call_not_logged_each_time() {
        use super::host::Host as _;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let written = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || written.clone()).with_ansi(false).finish();
        let ctx = super::PluginContext { name: "p.wasm".into(), kind: super::PluginKind::Idle, settings: "".into(), tokens: None };
        let mut state = super::HostState::new(Arc::new(ctx), 1 << 20);
        tracing::subscriber::with_default(subscriber, || {
            state.log(super::types::LogLevel::Error, "something is off".into());
            state.log(super::types::LogLevel::Error, "panicked at src/lib.rs:4:9: boom".into());
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("something is off") && !text.contains("boom"), "{text}");
        assert_eq!(state.last_error.as_deref(), Some("panicked at src/lib.rs:4:9: boom"), "the failed call's line says it");
    }

    #[test]
    fn the_memory_limit_is_the_calls_over_all_its_memories() {
        use wasmtime::ResourceLimiter;
        const MIB: usize = 1 << 20;
        let mut limiter = super::Limiter { memory_bytes: 64 * MIB, total: 0, hit: false, start_need: None, started: false };
        assert!(limiter.memory_growing(0, 40 * MIB, None).unwrap(), "a first memory of 40 MiB");
        assert!(limiter.memory_growing(0, 20 * MIB, None).unwrap(), "a second of 20: 60 in all");
        assert!(limiter.memory_growing(20 * MIB, 24 * MIB, None).unwrap(), "the second grows to 24: 64 in all");
        assert!(!limiter.hit);
        let err = limiter.memory_growing(0, 10 * MIB, None).unwrap_err().to_string();
        assert!(err.contains(&format!("asked for {} in all", 74 * MIB)), "{err}");
        assert!(limiter.hit);
        assert_eq!(limiter.start_need, Some(74 * MIB), "a memory that could not even be created");
        // Growth past a memory's own maximum is refused without counting.
        let mut limiter = super::Limiter { memory_bytes: 64 * MIB, total: 0, hit: false, start_need: None, started: true };
        assert!(!limiter.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert!(limiter.memory_growing(0, 64 * MIB, None).unwrap(), "nothing was counted for the refused growth");
    }

    use super::*;
    use crate::plugins::types::TokenError;

    #[test]
    fn the_host_import_refuses_tokens_older_than_the_backend() {
        let key = Arc::new(TokenKey::new(b"0123456789abcdef-host-import").unwrap());
        let ctx = Arc::new(PluginContext { name: "p".into(), kind: PluginKind::Auth, settings: "".into(), tokens: Some(key.clone()) });
        let mut state = HostState::new(ctx, 1 << 20);
        let created = 1_800_000_000;
        let old = key.mint("k-1", None, created - 600, created + 600);
        let fresh = key.mint("k-1", None, created, created + 600);
        use host::Host as _;
        assert!(state.verify_capability_token(old.clone()).is_ok(), "no creation time known: only the signature counts");
        state.backend = ("k-1".into(), super::super::credentials::Reached { created_at: created, uid: Some("uid-2".into()) });
        assert!(matches!(state.verify_capability_token(old), Err(TokenError::Malformed(why)) if why.contains("earlier backend")));
        assert!(state.verify_capability_token(fresh).is_ok());
        // Minted for another object of the name: refused, whenever issued.
        let earlier = key.mint_for("k-1", Some("uid-1"), None, created + 10, created + 600);
        assert!(matches!(state.verify_capability_token(earlier), Err(TokenError::Malformed(why)) if why.contains("earlier backend")));
        assert!(state.verify_capability_token(key.mint_for("k-1", Some("uid-2"), None, created, created + 600)).is_ok());
        let other = key.mint("k-0", None, created - 600, created + 600);
        assert_eq!(state.verify_capability_token(other).map(|c| c.backend), Ok("k-0".into()), "another backend's: the plugin's to refuse");
    }
}
