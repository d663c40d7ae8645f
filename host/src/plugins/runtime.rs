//! The process's two wasmtime `Engine`s (see [`Reset`]) and their
//! `Linker`s, the epoch ticker and the compiled-component cache.
//!
//! Engine settings and why:
//! - pooling allocator: instantiation takes microseconds instead of
//!   mmap/munmap per call, which is what makes a fresh instance per auth
//!   decision affordable;
//! - two engines, alike but for how a memory is reset after a call (see
//!   [`Reset`]): a plugin whose memories start small (the default ones)
//!   is reset by copying, any other by scanning for the pages it dirtied;
//! - epoch interruption: a CPU deadline per call that costs a load and a
//!   compare at loop headers, not fuel counting on every instruction;
//! - one ticker thread owns the epoch, and is joined when the runtime drops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use super::PluginKind;
use super::error::{CallError, LoadError, LoadResult};
use super::host_state::{HostState, PluginContext};
use crate::backends::out_of_range;
use crate::token::TokenKey;

/// One epoch tick. Deadlines are whole ticks, so this is their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Compiled components kept for reuse (keyed by content digest). Reloading
/// an unchanged file costs a hash; the cap bounds memory when many
/// different plugins are tried in one process.
const COMPONENT_CACHE_ENTRIES: usize = 32;

/// Bytes of each memory slot kept resident and reset in place between
/// calls, when the reset scans for dirtied pages. A Rust plugin's call
/// touches a few hundred KiB (stack top, data, heap); 4 MiB covers that
/// with room, and is only resident once touched.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// A component whose every memory starts at this size or less is reset by
/// copying (see [`Reset`]).
pub const COPY_RESET_BYTES: u64 = 128 << 10;

/// Bytes of each memory slot rewritten after a call, when the reset
/// copies: a memory is rewritten as far as the call left it accessible, up
/// to this, and the rest is given back to the kernel (and faulted in again
/// by the next call that needs it). A memory that was not grown costs
/// only its own size, whatever this is; four times the start size keeps a
/// `std` plugin's heap, which grows memory on its first allocation of a
/// call, and a lean plugin's arena grown for a large request, rewritten
/// rather than faulted in again on every call.
const COPY_KEEP_RESIDENT_BYTES: usize = 4 * COPY_RESET_BYTES as usize;

/// Same for tables (function tables of a few thousand entries).
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// Limits applied to every call of one plugin kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Linear memory a call may use, in MiB.
    pub memory_mib: u64,
    /// CPU deadline of a call, in milliseconds.
    pub deadline_ms: u64,
}

impl Limits {
    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * 1024 * 1024
    }
}

/// Most plugin instances at once: each slot reserves about 8 GiB of
/// address space for its memory (reservation and guard), in each of the
/// two engines (see [`Reset`]), and 5,000 is what x86-64's 128 TiB hold
/// with room to spare (12,000 in one engine failed to start).
pub const MAX_INSTANCES: u32 = 5_000;

/// Configuration of the plugin runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuntimeConfig {
    /// Limits for scheduler calls.
    pub scheduler: Limits,
    /// Limits for auth calls.
    pub auth: Limits,
    /// Limits for idle calls.
    pub idle: Limits,
    /// Plugin instances that may exist at once (each call holds one while it
    /// runs). Calls run on Spawner's worker threads, and those of plugins
    /// that import WASI one per CPU at most (see [`Runtime::wasi_turn`]), so
    /// this only needs to exceed the thread count; extra slots cost address
    /// space, not memory. Auth calls get all but [`kept_from_auth`] of them.
    /// Each of the two engines (see [`Reset`]) has this many slots, so
    /// whichever engine a call's plugin was compiled for, it finds one.
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            // Scheduling runs once per create: 100 ms is invisible next to
            // starting a process or a Pod.
            scheduler: Limits { memory_mib: 64, deadline_ms: 100 },
            // Auth runs on every request and WebSocket upgrade: a tight
            // deadline bounds the latency a bad plugin can add.
            auth: Limits { memory_mib: 64, deadline_ms: 20 },
            // Idle runs per backend per sweep, off the request path.
            idle: Limits { memory_mib: 64, deadline_ms: 100 },
            max_instances: 256,
        }
    }
}

/// The most memory a call may be given, MiB: enough for any plugin, and
/// well under the pool's address-space reservation.
pub const MAX_MEMORY_MIB: u64 = 4096;

/// The longest deadline (wall-clock time) a call may be given, ms: a
/// minute bounds what a hung plugin can hold up.
pub const MAX_DEADLINE_MS: u64 = 60_000;

impl RuntimeConfig {
    /// The limits of `kind`.
    pub fn limits(&self, kind: PluginKind) -> Limits {
        match kind {
            PluginKind::Scheduler => self.scheduler,
            PluginKind::Auth => self.auth,
            PluginKind::Idle => self.idle,
        }
    }

    /// The largest memory limit of any kind: the size of the pool's memory
    /// slots.
    pub fn max_memory_bytes(&self) -> u64 {
        PluginKind::ALL.iter().map(|k| self.limits(*k).memory_bytes()).max().unwrap_or(0)
    }

    /// Sets the limits of `kind`.
    pub fn set_limits(&mut self, kind: PluginKind, limits: Limits) {
        match kind {
            PluginKind::Scheduler => self.scheduler = limits,
            PluginKind::Auth => self.auth = limits,
            PluginKind::Idle => self.idle = limits,
        }
    }

    /// Checks the numbers make sense, with a message that names the field.
    pub fn validate(&self) -> Result<(), String> {
        for kind in PluginKind::ALL {
            let l = self.limits(kind);
            if !(1..=MAX_MEMORY_MIB).contains(&l.memory_mib) {
                return Err(out_of_range(&format!("plugins.{kind}.memory-mib"), Some(MAX_MEMORY_MIB), l.memory_mib));
            }
            if !(1..=MAX_DEADLINE_MS).contains(&l.deadline_ms) {
                return Err(out_of_range(&format!("plugins.{kind}.deadline-ms"), Some(MAX_DEADLINE_MS), l.deadline_ms));
            }
        }
        if !(4..=MAX_INSTANCES).contains(&self.max_instances) {
            return Err(format!("plugins.max-instances must be between 4 and {MAX_INSTANCES} (got {})", self.max_instances));
        }
        Ok(())
    }
}

/// The initial memory size wasmtime names when a component's memory cannot
/// fit the pool's slots ("memory has a minimum byte size of N which exceeds
/// the limit of M"), so the refusal can say what to change; `None` for any
/// other compile error, which is then passed on as wasmtime words it.
fn start_memory(compile_error: &str) -> Option<u64> {
    let rest = compile_error.split("minimum byte size of ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// How a plugin's memory is put back as it was after a call; each way has
/// an engine of its own, and a plugin is compiled for one of them by the
/// sizes its memories start at ([`Reset::for_component`]).
///
/// Scanning asks the kernel which pages the call dirtied (`PAGEMAP_SCAN`,
/// Linux 6.7+) and restores only those: one system call whatever the
/// memory's size, which suits a plugin with a 1 MiB stack and a heap.
/// Copying rewrites the memory as far as the call left it (up to
/// `COPY_KEEP_RESIDENT_BYTES`; beyond, pages go back to the kernel)
/// without asking: for the 64 KiB of the default auth plugin that is about
/// 1.4 µs less per call than the system call (bench/README.md), a quarter
/// of its decision. On kernels before 6.7 there is no scan, and both
/// engines rewrite what they keep resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Restore the pages the call dirtied, found by a scan.
    Scan,
    /// Rewrite the memory, as far as the call left it.
    Copy,
}

impl Reset {
    /// Copy when every memory the component defines starts at
    /// [`COPY_RESET_BYTES`] or less; scan otherwise, and for bytes that do
    /// not parse (compiling them says why).
    pub fn for_component(bytes: &[u8]) -> Reset {
        Reset::for_start(largest_start(bytes))
    }

    /// The same from [`largest_start`]'s answer, for a caller that has it.
    pub fn for_start(largest_start: Option<u64>) -> Reset {
        match largest_start {
            Some(start) if start <= COPY_RESET_BYTES => Reset::Copy,
            _ => Reset::Scan,
        }
    }
}

/// The stack size of a component built from Rust, in bytes: the start
/// value of the first mutable `i32` global of a module that defines a
/// memory (the stack pointer, which rustc's `--stack-first` layout starts
/// at the stack's top, its size). `None` if there is no such global.
pub fn stack_size(bytes: &[u8]) -> Option<u64> {
    use wasmtime::wasmparser::{Encoding, Operator, Parser, Payload, ValType};
    let mut has_memory = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { encoding: Encoding::Module, .. } => has_memory = false,
            Payload::MemorySection(m) => has_memory = m.count() > 0,
            Payload::GlobalSection(globals) if has_memory => {
                for global in globals {
                    let global = global.ok()?;
                    if global.ty.mutable && global.ty.content_type == ValType::I32 {
                        let Operator::I32Const { value } = global.init_expr.get_operators_reader().read().ok()? else { return None };
                        return u64::try_from(value).ok();
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// The initial size of the largest memory a component defines, in bytes
/// (its stack, data and static arrays, for one built from Rust); `None` if
/// it does not parse.
pub fn largest_start(bytes: &[u8]) -> Option<u64> {
    use wasmtime::wasmparser::{Parser, Payload};
    let mut largest = 0;
    // Nested modules' sections come in order with the component's.
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::MemorySection(memories) = payload.ok()? else { continue };
        for memory in memories {
            let memory = memory.ok()?;
            let page = 1u64 << memory.page_size_log2.unwrap_or(16);
            largest = largest.max(memory.initial.saturating_mul(page));
        }
    }
    Some(largest)
}

/// One engine and its linker (see [`Reset`]).
struct Pool {
    engine: Engine,
    linker: Linker<HostState>,
}

impl Pool {
    fn new(config: &RuntimeConfig, reset: Reset) -> LoadResult<Self> {
        let n = config.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            // A Rust component holds its module plus a few adapter shims.
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            // Per component: a Rust plugin has one memory, two tables and
            // three core instances (its module and wit-component's shims); one
            // built with a WASI adapter a memory more. A component holding
            // more is refused at load, so no plugin can take many of the
            // pool's slots at once (the call's memory limit counts all its
            // memories together: see `host_state::Limiter`).
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(16)
            .max_memory_size(config.max_memory_bytes() as usize)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
        match reset {
            // Reset memory by scanning for the pages a call dirtied and
            // restoring only those, keeping them resident: no madvise, no
            // page faults, no TLB shootdowns on the next call. Measured
            // 39 µs -> 16-24 µs per auth call (bench/README.md). Falls back
            // to madvise on older kernels.
            Reset::Scan => pool.pagemap_scan(wasmtime::Enabled::Auto).linear_memory_keep_resident(KEEP_RESIDENT_BYTES),
            Reset::Copy => pool.pagemap_scan(wasmtime::Enabled::No).linear_memory_keep_resident(COPY_KEEP_RESIDENT_BYTES),
        };

        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg).map_err(|e| {
            let why = format!("{e:#}");
            // Each instance slot reserves address space for its memory.
            let hint = match why.contains("failed to reserve") {
                true => format!(
                    " (plugins.max-instances = {}, reserved twice, once per engine, is more address space than this process may have: lower it, or raise its virtual memory limit)",
                    config.max_instances
                ),
                false => String::new(),
            };
            LoadError::Runtime(format!("wasmtime engine: {why}{hint}"))
        })?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| LoadError::Runtime(format!("WASI linker: {e:#}")))?;
        super::waits::bound_by_deadline(&mut linker).map_err(|e| LoadError::Runtime(format!("WASI linker (waits): {e:#}")))?;
        super::bindings::auth::spawner::plugin::types::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Runtime(format!("host linker: {e:#}")))?;
        super::bindings::auth::spawner::plugin::host::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Runtime(format!("host linker: {e:#}")))?;
        Ok(Pool { engine, linker })
    }
}

/// Owns the thread that advances the engines' epoch; stops and joins it on
/// drop.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engines: [Engine; 2]) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("spawner-epoch".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                engines.iter().for_each(Engine::increment_epoch);
            }
        })?;
        Ok(EpochTicker { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Turns to call a plugin that imports WASI, one per CPU.
///
/// Such calls leave the async workers (`block_in_place`, see
/// `LoadedPlugin::call`), and the blocking pool would otherwise run
/// hundreds at once in a burst: each would then take longer in wall time
/// than its CPU time, past its deadline (counted in wall time), and a
/// burst of requests would be denied. Waiting for a turn comes before the
/// store, so it does not count against the deadline.
struct Turns {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One turn, given back when dropped.
pub(crate) struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("turns lock") += 1;
        self.0.freed.notify_one();
    }
}

/// Auth calls in flight, capped below `max-instances`.
///
/// Every kind's calls share the pool's instances, and auth calls are the
/// ones anyone can cause: a burst of requests to a slow auth plugin (one
/// that runs to its deadline, off the async workers) would otherwise hold
/// every instance, and the scheduler and its fallback, unable to
/// instantiate, would admit creates that the configured policy rejects.
/// Scheduling and idle decisions each run one at a time (plus the default
/// scheduler after a failed one), so a few instances kept back for them
/// are enough.
struct AuthSlots {
    in_flight: AtomicUsize,
    cap: usize,
}

/// An auth call's slot, given back when dropped.
pub(crate) struct AuthSlot<'a>(&'a AuthSlots);

impl Drop for AuthSlot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Instances kept back from auth calls for the other kinds: four, or half
/// the pool when it is smaller than eight.
pub fn kept_from_auth(max_instances: u32) -> u32 {
    (max_instances / 2).min(4)
}

/// The process-wide plugin runtime.
pub struct Runtime {
    scanned: Pool,
    copied: Pool,
    cache: Mutex<HashMap<[u8; 32], Component>>,
    config: RuntimeConfig,
    tokens: Option<Arc<TokenKey>>,
    wasi_turns: Turns,
    auth_slots: AuthSlots,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engines and linkers. `tokens` is the key
    /// `verify-capability-token` checks against (none: every token fails).
    pub fn new(config: RuntimeConfig, tokens: Option<Arc<TokenKey>>) -> LoadResult<Self> {
        config.validate().map_err(LoadError::Runtime)?;
        let (scanned, copied) = (Pool::new(&config, Reset::Scan)?, Pool::new(&config, Reset::Copy)?);
        let ticker = EpochTicker::start([scanned.engine.clone(), copied.engine.clone()])
            .map_err(|e| LoadError::Runtime(format!("epoch thread: {e}")))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wasi_turns = Turns { free: Mutex::new(cpus), freed: Condvar::new() };
        let auth_slots =
            AuthSlots { in_flight: AtomicUsize::new(0), cap: (config.max_instances - kept_from_auth(config.max_instances)) as usize };
        Ok(Runtime { scanned, copied, cache: Mutex::new(HashMap::new()), config, tokens, wasi_turns, auth_slots, _ticker: ticker })
    }

    /// A slot for one auth call, or why there is none (see [`AuthSlots`]).
    pub(crate) fn auth_slot(&self) -> Result<AuthSlot<'_>, String> {
        let slots = &self.auth_slots;
        match slots.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < slots.cap).then_some(n + 1)) {
            Ok(_) => Ok(AuthSlot(slots)),
            Err(_) => Err(format!(
                "{} auth calls already run at once (plugins.max-instances is {}, less {} kept for scheduling and idle decisions)",
                slots.cap,
                self.config.max_instances,
                kept_from_auth(self.config.max_instances)
            )),
        }
    }

    /// Waits for a turn to call a plugin that imports WASI (see [`Turns`]).
    /// Blocks the thread: call it where blocking is allowed.
    pub(crate) fn wasi_turn(&self) -> Turn<'_> {
        let turns = &self.wasi_turns;
        let free = turns.free.lock().expect("turns lock");
        let mut free = turns.freed.wait_while(free, |n| *n == 0).expect("turns lock");
        *free -= 1;
        Turn(turns)
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The linker for components compiled with `engine`.
    pub(crate) fn linker(&self, engine: &Engine) -> &Linker<HostState> {
        // Each component is compiled for one of the two (see `compile`).
        if Engine::same(engine, &self.copied.engine) {
            return &self.copied.linker;
        }
        debug_assert!(Engine::same(engine, &self.scanned.engine), "a component from another runtime");
        &self.scanned.linker
    }

    pub(crate) fn tokens(&self) -> Option<Arc<TokenKey>> {
        self.tokens.clone()
    }

    /// The key capability tokens are verified with, if any.
    pub fn token_key(&self) -> Option<&TokenKey> {
        self.tokens.as_deref()
    }

    /// Compiles `bytes` (or returns the cached compilation) and its digest.
    pub(crate) fn compile(&self, name: &str, bytes: &[u8]) -> LoadResult<(Component, [u8; 32])> {
        use wasmtime::wasmparser::Parser;
        if !bytes.starts_with(b"\0asm") {
            let what = match bytes.is_empty() {
                // A build or copy under way, or one that failed.
                true => "the file is empty",
                false => "the file does not start with the wasm magic bytes",
            };
            return Err(LoadError::NotWasm { name: name.into(), what });
        }
        if Parser::is_core_wasm(bytes) {
            return Err(LoadError::CoreModule { name: name.into() });
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.cache.lock().expect("cache lock").get(&digest) {
            return Ok((c.clone(), digest));
        }
        let pool = match Reset::for_component(bytes) {
            Reset::Copy => &self.copied,
            Reset::Scan => &self.scanned,
        };
        let component = Component::new(&pool.engine, bytes).map_err(|e| {
            let reason = format!("{e:#}");
            match start_memory(&reason) {
                // The pool's memory slots are as large as the largest limit.
                Some(needs) => {
                    LoadError::Start { name: name.into(), source: CallError::StartMemory { needs, limit: self.config.max_memory_bytes() } }
                }
                None => LoadError::Compile { name: name.into(), reason: with_truncation_hint(reason) },
            }
        })?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= COMPONENT_CACHE_ENTRIES {
            // Any entry will do: plugins in use hold their own handle.
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.insert(digest, component.clone());
        Ok((component, digest))
    }

    /// A fresh store for one call of a plugin compiled with `engine`, with
    /// its limits armed; `wasi`: the plugin imports WASI, where it can wait
    /// (see `waits`).
    pub(crate) fn store(&self, engine: &Engine, ctx: Arc<PluginContext>, wasi: bool) -> Store<HostState> {
        let limits = self.config.limits(ctx.kind);
        let mut store = Store::new(engine, HostState::new(ctx, limits.memory_bytes() as usize));
        store.limiter(|s| &mut s.limiter);
        // +1: the current tick may be nearly over when the call starts.
        let ticks = limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        // Waits in host calls, which the epoch does not interrupt, end then
        // too (see `waits`).
        if wasi {
            store.data_mut().wait_until = Some(tokio::time::Instant::now() + EPOCH_TICK * ticks as u32);
        }
        store
    }
}

/// wasmtime's reason for a file that ends early (a copy caught mid-write,
/// a truncated download), with what that likely is: its own words ("section
/// range … is out of bounds", "unexpected end") say only where parsing
/// stopped.
fn with_truncation_hint(reason: String) -> String {
    if reason.contains("out of bounds (bound = ") || reason.contains("unexpected end") {
        format!("{reason} (the file ends early: truncated, or still being written?)")
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_that_ends_early_is_said_to() {
        let cut = "failed to parse WebAssembly module: wasm component contains an invalid module section: section range 1810..163167 is out of bounds (bound = 30000)";
        assert!(super::with_truncation_hint(cut.into()).ends_with("(the file ends early: truncated, or still being written?)"));
        assert!(super::with_truncation_hint("unexpected end-of-file (at offset 0x10)".into()).contains("truncated"));
        assert_eq!(super::with_truncation_hint("type mismatch".into()), "type mismatch");
    }

    use super::*;

    #[test]
    fn instance_slots_are_bounded_by_the_address_space_they_reserve() {
        let with = |n| RuntimeConfig { max_instances: n, ..RuntimeConfig::default() }.validate();
        assert!(with(MAX_INSTANCES).is_ok());
        assert_eq!(with(MAX_INSTANCES + 1).unwrap_err(), "plugins.max-instances must be between 4 and 5000 (got 5001)");
    }

    #[test]
    fn plugins_whose_memories_start_small_are_reset_by_copying() {
        use crate::plugins::embedded::{DEFAULT_AUTH, DEFAULT_IDLE, DEFAULT_SCHEDULER};
        let rt = Runtime::new(RuntimeConfig::default(), None).unwrap();
        // The default plugins are built to start at one page (a 32 KiB
        // stack, the lean runtime's 16 KiB arena): that keeps them on the
        // cheaper reset.
        for (name, bytes) in [("auth", DEFAULT_AUTH), ("idle", DEFAULT_IDLE), ("scheduler", DEFAULT_SCHEDULER)] {
            assert_eq!(Reset::for_component(bytes), Reset::Copy, "default {name} plugin");
            let (component, _) = rt.compile(name, bytes).unwrap();
            assert!(Engine::same(component.engine(), &rt.copied.engine), "default {name} plugin compiled for the copying engine");
        }
        // 2 MiB of static data.
        let large = std::fs::read(spawner_test_plugins::FIXTURE_ALLOC).unwrap();
        assert_eq!(Reset::for_component(&large), Reset::Scan);
        let (component, _) = rt.compile("alloc", &large).unwrap();
        assert!(Engine::same(component.engine(), &rt.scanned.engine));
        // The stack pointer's start: the stack the plugins were built with.
        assert_eq!(stack_size(DEFAULT_AUTH), Some(32 << 10));
        // Not wasm: refused by the compile, which says why.
        assert_eq!(Reset::for_component(b"\0asm\x0d\0\x01\0garbage"), Reset::Scan);
    }

    #[test]
    fn wasi_calls_take_turns_one_per_cpu() {
        let rt = Runtime::new(RuntimeConfig::default(), None).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let held: Vec<Turn<'_>> = (0..cpus).map(|_| rt.wasi_turn()).collect();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _turn = rt.wasi_turn();
                tx.send(()).unwrap();
            });
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "every turn is taken: the next call waits");
            drop(held);
            rx.recv_timeout(Duration::from_secs(5)).expect("a turn given back is taken");
        });
    }
}
