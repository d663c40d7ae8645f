//! # Spawner
//!
//! Session-lived backends: a web app asks for a server process dedicated to
//! one user or one document, Spawner starts it, proxies the browser to it,
//! checks who may connect, and terminates it when it falls idle. Three
//! decisions are made by sandboxed WebAssembly plugins.
//!
//! Modules:
//! - [`plugins`]: the wasmtime host that loads, checks and calls plugins
//!   (scheduler, auth, idle), with fallbacks when a plugin fails;
//! - [`token`]: capability tokens (mint and verify), the secret the default
//!   auth plugin relies on without ever seeing;
//! - [`metrics`]: the Prometheus registry every subsystem reports into;
//! - [`cli`]: the `spawner` command line.
//!
//! Data flow: the API mints a token per backend (`token`); the proxy asks
//! `plugins.auth()` on each request; the sweeper asks `plugins.idle()` on
//! each tick; a create asks `plugins.scheduler()`; every call is counted in
//! `metrics`.

#![forbid(unsafe_code)]

pub mod cli;
pub mod metrics;
pub mod plugins;
pub mod token;
