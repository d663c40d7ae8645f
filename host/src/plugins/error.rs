//! Errors of the plugin host: refusing a plugin at load time, and a call
//! that did not produce a decision.

use super::PluginKind;

/// Result alias for loading.
pub type LoadResult<T> = std::result::Result<T, LoadError>;

/// Why a plugin was refused. Each message says what was found and what is
/// required, so the operator can fix the file or the configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {error}{hint}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error (in the message, not as a source: the hint
        /// follows it).
        error: std::io::Error,
        /// What to check, when there is a likely cause.
        hint: &'static str,
    },
    /// The settings file could not be read.
    #[error("cannot read plugin settings file {path}: {source}")]
    ReadSettings {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A core module, not a component.
    #[error(
        "{name} is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target (cargo build --target wasm32-wasip2) with spawner-plugin-sdk"
    )]
    CoreModule {
        /// Plugin name.
        name: String,
    },
    /// Not WebAssembly at all.
    #[error(
        "{name} is not a WebAssembly component ({what}; build a plugin with `cargo build --release --target wasm32-wasip2`, which writes it under target/wasm32-wasip2/release/)"
    )]
    NotWasm {
        /// Plugin name.
        name: String,
        /// What it is instead: empty, or not starting with the magic bytes.
        what: &'static str,
    },
    /// It cannot run under this runtime's limits at all (e.g. its memory's
    /// initial size is over the memory limit).
    #[error("{name} cannot run: it {source}")]
    Start {
        /// Plugin name.
        name: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// It loaded, but trapped, ran out of memory or missed its deadline on
    /// its kind's sample request (a reload: the current plugin stays).
    #[error("{name} failed a trial decision on a sample {kind} request: the plugin {source} (`spawner plugin check` makes the same call)")]
    Trial {
        /// Plugin name.
        name: String,
        /// Its kind.
        kind: PluginKind,
        /// Why the call produced no decision.
        #[source]
        source: CallError,
    },
    /// wasmtime could not compile it.
    #[error("{name} could not be compiled: {reason}")]
    Compile {
        /// Plugin name.
        name: String,
        /// wasmtime's explanation.
        reason: String,
    },
    /// It targets another world (another kind, or no Spawner world at all).
    #[error("{name} does not target the {kind} world: it exports {found}, but {article} plugin must export {required} (world spawner:plugin/{kind}@{version})", version = super::PACKAGE_VERSION, article = kind.with_article())]
    WrongWorld {
        /// Plugin name.
        name: String,
        /// Kind of the slot it was loaded into.
        kind: PluginKind,
        /// What it exports.
        found: String,
        /// The interface required.
        required: String,
    },
    /// No (or more than one) Spawner plugin interface is exported, so the
    /// kind cannot be told.
    #[error("{name} is not a Spawner plugin: it exports {found}, but a plugin exports one of spawner:plugin/scheduling, spawner:plugin/authorization or spawner:plugin/idleness (@{version}); build it with spawner-plugin-sdk, whose export! line makes the export (e.g. `spawner_plugin_sdk::export!(idle: MyIdle);` at the top level of lib.rs)", version = super::PACKAGE_VERSION)]
    UnknownKind {
        /// Plugin name.
        name: String,
        /// What it exports.
        found: String,
    },
    /// It targets another version of the package.
    #[error(
        "{name} targets {found}, but this Spawner supports spawner:plugin@{supported}: rebuild it against a spawner-plugin-sdk for {supported}"
    )]
    WrongVersion {
        /// Plugin name.
        name: String,
        /// What it references, e.g. `spawner:plugin/authorization@0.3.0`.
        found: String,
        /// The version this host implements.
        supported: &'static str,
    },
    /// It needs imports the host does not provide.
    #[error("{name} imports {import}, which Spawner does not provide (plugins may import spawner:plugin/host@{version} and WASI 0.2 interfaces; filesystem and network are present but empty)", version = super::PACKAGE_VERSION)]
    UnknownImport {
        /// Plugin name.
        name: String,
        /// The import.
        import: String,
    },
    /// It exports the interface, but its functions do not match.
    #[error("{name} exports {interface} but not as Spawner defines it: {reason}")]
    BadExport {
        /// Plugin name.
        name: String,
        /// The interface.
        interface: String,
        /// wasmtime's type-check message.
        reason: String,
    },
    /// `validate-settings` refused the settings.
    #[error("{name} refused its settings: {reason}")]
    Settings {
        /// Plugin name.
        name: String,
        /// The plugin's explanation.
        reason: String,
    },
    /// Calling `validate-settings` failed (trap, deadline, memory).
    #[error("{name} failed while validating its settings: {source}")]
    SettingsCall {
        /// Plugin name.
        name: String,
        /// What went wrong.
        #[source]
        source: CallError,
    },
    /// Setting up the host failed (bad limits, pool exhaustion at start).
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

impl LoadError {
    /// The file it could not read, if that is what went wrong.
    pub fn path(&self) -> Option<String> {
        match self {
            LoadError::Read { path, .. } | LoadError::ReadSettings { path, .. } => Some(path.clone()),
            _ => None,
        }
    }

    /// Whether the same plugin and settings may load on another try: its
    /// `validate-settings` ran out of time (a busy machine), no instance
    /// was free, or the host failed. Not whether they are bad: a reload
    /// refused for these is retried, one refused for the rest is not.
    pub fn is_transient(&self) -> bool {
        match self {
            LoadError::SettingsCall { source, .. } | LoadError::Start { source, .. } | LoadError::Trial { source, .. } => {
                matches!(source, CallError::Deadline(_) | CallError::Instantiate(_) | CallError::HostPanic(_))
            }
            LoadError::Runtime(_) => true,
            _ => false,
        }
    }
}

/// Why a call produced no decision. The kind's fallback applies.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError {
    /// The CPU deadline (epoch interruption) stopped it.
    #[error("did not finish within its {0} ms deadline")]
    Deadline(u64),
    /// It tried to grow memory beyond its limit.
    #[error("exceeded its memory limit of {} MiB", .0 / (1024 * 1024))]
    MemoryLimit(u64),
    /// Its memory's initial size (stack and static data) is already over
    /// the limit (its kind's, or at compile time the largest of any kind,
    /// which sizes the pool's memory slots): no call can ever start.
    #[error(
        "needs {} KiB of memory to start (its stack and data), over its memory limit of {} MiB: raise the limit, or build it with a smaller stack (the README's 64 KiB: -C link-arg=-zstack-size=65536)",
        .needs / 1024,
        .limit / (1024 * 1024)
    )]
    StartMemory {
        /// Bytes it asked for.
        needs: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// It trapped (a panic, `unreachable`, a bad memory access).
    #[error("trapped: {0}")]
    Trap(String),
    /// It returned `plugin-error` (the second tier: could not decide).
    #[error("could not decide: {0}")]
    Plugin(String),
    /// It answered something the host cannot use (e.g. status 200 in a
    /// deny, a header outside `x-spawner-`, an unknown node).
    #[error("returned an invalid answer: {0}")]
    InvalidAnswer(String),
    /// It could not be instantiated (e.g. the instance pool is exhausted).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    /// The host panicked during the call (a host function, or wasmtime):
    /// a bug on Spawner's side, contained so that the request or sweep that
    /// made the call still gets the kind's fallback.
    #[error("failed in the host: {0}")]
    HostPanic(String),
}

impl CallError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Deadline(_) => "deadline",
            CallError::MemoryLimit(_) | CallError::StartMemory { .. } => "memory",
            CallError::Trap(_) => "trap",
            CallError::Plugin(_) => "plugin-error",
            CallError::InvalidAnswer(_) => "invalid-answer",
            CallError::Instantiate(_) => "instantiate",
            CallError::HostPanic(_) => "host-panic",
        }
    }
}
