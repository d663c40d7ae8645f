//! # spawner-plugin-sdk
//!
//! Write Spawner plugins in Rust (Spawner's README has the plugin author's
//! path: build, `spawner plugin check`, load). A plugin makes one of
//! three decisions — scheduling, auth or idle — and runs sandboxed in
//! Spawner's WebAssembly host (no filesystem, no network, a memory limit and
//! a deadline per call, in wall-clock time).
//!
//! A complete idle plugin that terminates backends nobody used for ten
//! minutes:
//!
//! ```
//! use spawner_plugin_sdk::idle::*;
//!
//! pub struct TenMinutes;
//!
//! impl Idle for TenMinutes {
//!     fn evaluate(req: IdleRequest) -> Result<IdleVerdict, PluginError> {
//!         let a = &req.activity;
//!         let quiet = a.open_connections == 0 && a.in_flight_requests == 0 && a.seconds_since_last_activity >= 600;
//!         Ok(if quiet { IdleVerdict::terminate_idle("unused for 10 minutes") } else { IdleVerdict::Keep })
//!     }
//! }
//!
//! spawner_plugin_sdk::export!(idle: TenMinutes);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`, check it with
//! `spawner plugin check target/wasm32-wasip2/release/my_idle.wasm` (for a
//! crate named `my-idle`) and try it with `spawner plugin run FILE --input
//! sample` (or `--input @request.json`; `spawner plugin sample --kind idle`
//! writes one to edit).
//!
//! Modules:
//! - [`scheduler`], [`auth`], [`idle`]: the trait and types for each kind
//!   (import one with `use spawner_plugin_sdk::auth::*`);
//! - [`host`]: safe wrappers over what the host offers (log, settings, token
//!   verification);
//! - `testing` (native builds only): a native harness, so the plugin's logic runs under plain
//!   `cargo test` with chosen settings, a token verifier and captured logs.
//!
//! Errors come in three tiers: the domain answer (deny, reject, terminate),
//! [`PluginError`] when the plugin cannot decide, and traps (panics, the
//! deadline, the memory limit) caught by the host. For the last two the host
//! applies a safe fallback: auth denies, idle keeps, scheduling uses the
//! default scheduler.

#![no_std]

extern crate alloc;
// The native test harness (and only it) uses std.
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

extern crate self as spawner_plugin_sdk;

mod bindings;
pub mod helpers;
pub mod host;
pub mod lean;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use bindings::auth::spawner::plugin::types::{Backend, Label, LogLevel, PluginError};

/// Scheduling plugins: admit a backend and choose its node.
pub mod scheduler {
    pub use crate::bindings::scheduler::exports::spawner::plugin::scheduling::{
        Node, PlacedBackend, Placement, PlacementRequest, Resources,
    };
    pub use crate::{Backend, Label, PluginError};

    /// A scheduling plugin. Implement it on a unit struct and export it with
    /// `spawner_plugin_sdk::export!(scheduler: MyScheduler)`.
    pub trait Scheduler {
        /// Decides whether and where `request.backend` runs.
        fn place(request: PlacementRequest) -> Result<Placement, PluginError>;

        /// Checks the plugin's settings when it is loaded; an error refuses
        /// the load. Accepts everything by default.
        fn validate_settings(settings: &str) -> Result<(), PluginError> {
            let _ = settings;
            Ok(())
        }
    }
}

/// Auth plugins: decide whether a request or WebSocket reaches a backend.
pub mod auth {
    pub use crate::bindings::auth::exports::spawner::plugin::authorization::{
        Allow, AuthRequest, Credential, CredentialSource, Deny, Header, HttpRequest, Verdict,
    };
    pub use crate::host::{Capability, TokenError};
    pub use crate::{Backend, Label, PluginError};

    /// An auth plugin. Implement it on a unit struct and export it with
    /// `spawner_plugin_sdk::export!(auth: MyAuth)`.
    ///
    /// `request.credentials` holds the capability tokens Spawner found in
    /// its own places (bearer header, token query parameter, token cookie),
    /// already verified by the host: a policy over Spawner's tokens needs
    /// no host function (see `plugins/default-auth`). The raw request is
    /// there too, for anything else, credentials included: keep them out
    /// of `host::log`, deny reasons and panic messages, which Spawner logs
    /// or sends as they are.
    pub trait Auth {
        /// Decides one HTTP request or WebSocket upgrade.
        fn check(request: AuthRequest) -> Result<Verdict, PluginError>;

        /// Checks the plugin's settings when it is loaded; an error refuses
        /// the load. Accepts everything by default.
        fn validate_settings(settings: &str) -> Result<(), PluginError> {
            let _ = settings;
            Ok(())
        }
    }
}

/// Idle plugins: decide whether a ready backend should be terminated.
pub mod idle {
    pub use crate::bindings::idle::exports::spawner::plugin::idleness::{Activity, IdleRequest, IdleVerdict, Termination, TerminationKind};
    pub use crate::{Backend, Label, PluginError};

    /// An idle plugin. Implement it on a unit struct and export it with
    /// `spawner_plugin_sdk::export!(idle: MyIdle)`.
    pub trait Idle {
        /// Decides about one backend.
        fn evaluate(request: IdleRequest) -> Result<IdleVerdict, PluginError>;

        /// Checks the plugin's settings when it is loaded; an error refuses
        /// the load. Accepts everything by default.
        fn validate_settings(settings: &str) -> Result<(), PluginError> {
            let _ = settings;
            Ok(())
        }
    }
}

/// Exports a type as the plugin of one kind:
/// `export!(scheduler: T)`, `export!(auth: T)` or `export!(idle: T)`.
///
/// Use it once per crate, at the top level of `lib.rs`. On native targets it
/// exports nothing, so the same crate runs its tests with `cargo test`; it
/// still checks that the type implements the kind's trait, so a wrong kind
/// fails `cargo test` too, not only the wasm build:
///
/// ```compile_fail
/// use spawner_plugin_sdk::auth::*;
/// pub struct Open;
/// impl Auth for Open {
///     fn check(_: AuthRequest) -> Result<Verdict, PluginError> {
///         Ok(Verdict::Allow(Allow { subject: None, headers: Vec::new() }))
///     }
/// }
/// spawner_plugin_sdk::export!(idle: Open); // an auth plugin, exported as idle
/// ```
///
/// ```
/// # use spawner_plugin_sdk::auth::*;
/// # pub struct Open;
/// # impl Auth for Open {
/// #     fn check(_: AuthRequest) -> Result<Verdict, PluginError> {
/// #         Ok(Verdict::Allow(Allow { subject: None, headers: Vec::new() }))
/// #     }
/// # }
/// spawner_plugin_sdk::export!(auth: Open);
/// ```
#[macro_export]
macro_rules! export {
    (scheduler: $ty:ty) => {
        const _: fn() = || {
            fn implements<T: $crate::scheduler::Scheduler>() {}
            implements::<$ty>();
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::scheduler as __w;
            struct __SpawnerPlugin;
            impl __w::exports::spawner::plugin::scheduling::Guest for __SpawnerPlugin {
                fn place(
                    request: $crate::scheduler::PlacementRequest,
                ) -> ::core::result::Result<$crate::scheduler::Placement, $crate::PluginError> {
                    <$ty as $crate::scheduler::Scheduler>::place(request)
                }
                fn validate_settings(settings: $crate::__private::String) -> ::core::result::Result<(), $crate::PluginError> {
                    <$ty as $crate::scheduler::Scheduler>::validate_settings(&settings)
                }
            }
    __w::export!(__SpawnerPlugin with_types_in $crate::__private::scheduler);
        };
    };
    (auth: $ty:ty) => {
        const _: fn() = || {
            fn implements<T: $crate::auth::Auth>() {}
            implements::<$ty>();
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::auth as __w;
            struct __SpawnerPlugin;
            impl __w::exports::spawner::plugin::authorization::Guest for __SpawnerPlugin {
                fn check(request: $crate::auth::AuthRequest) -> ::core::result::Result<$crate::auth::Verdict, $crate::PluginError> {
                    <$ty as $crate::auth::Auth>::check(request)
                }
                fn validate_settings(settings: $crate::__private::String) -> ::core::result::Result<(), $crate::PluginError> {
                    <$ty as $crate::auth::Auth>::validate_settings(&settings)
                }
            }
    __w::export!(__SpawnerPlugin with_types_in $crate::__private::auth);
        };
    };
    (idle: $ty:ty) => {
        const _: fn() = || {
            fn implements<T: $crate::idle::Idle>() {}
            implements::<$ty>();
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::idle as __w;
            struct __SpawnerPlugin;
            impl __w::exports::spawner::plugin::idleness::Guest for __SpawnerPlugin {
                fn evaluate(request: $crate::idle::IdleRequest) -> ::core::result::Result<$crate::idle::IdleVerdict, $crate::PluginError> {
                    <$ty as $crate::idle::Idle>::evaluate(request)
                }
                fn validate_settings(settings: $crate::__private::String) -> ::core::result::Result<(), $crate::PluginError> {
                    <$ty as $crate::idle::Idle>::validate_settings(&settings)
                }
            }
    __w::export!(__SpawnerPlugin with_types_in $crate::__private::idle);
        };
    };
}

/// Implementation details used by [`export!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::{auth, idle, scheduler};
    pub use alloc::string::String;
    pub use wit_bindgen;
}
