//! # Spawner
//!
//! Session-lived backends: a web app asks for a server process dedicated to
//! one user or one document, Spawner starts it, proxies the browser to it,
//! checks who may connect, and terminates it when it falls idle. Three
//! decisions are made by sandboxed WebAssembly plugins.
//!
//! Modules:
//! - [`lifecycle`]: the pure state machine every runtime follows;
//! - [`backends`]: what a backend is, and the [`backends::Control`]
//!   interface the API drives a runtime through;
//! - [`local`]: the local runtime (backends as processes, via [`process`]);
//! - [`api`]: the REST API (axum) the web app's server calls;
//! - [`proxy`]: `/p/{name}/…` to backends, HTTP and WebSocket, auth on
//!   every request, metering into [`activity`];
//! - [`sweeper`]: feeds activity to the idle plugin, terminates the idle;
//! - [`plugins`]: the wasmtime host for the scheduler, auth and idle
//!   plugins, with fallbacks when a plugin fails; [`watch`] hot-reloads them;
//! - [`token`]: capability tokens (mint and verify);
//! - [`k8s`]: Kubernetes mode: the `SessionLivedBackend` resource;
//! - [`config`], [`server`], [`dev`]: configuration, the listener, and the
//!   `spawner dev` composition; [`metrics`]: Prometheus; [`cli`]: commands.
//!
//! Data flow: a create (API) asks the scheduler plugin and starts a
//! process; the API returns a URL and a token; the browser's requests reach
//! the proxy, which asks the auth plugin, forwards, and meters activity; the
//! sweeper turns activity into idle-plugin decisions and terminations; every
//! status change follows [`lifecycle::step`].

#![forbid(unsafe_code)]

pub mod activity;
pub mod api;
pub mod backends;
pub mod cli;
pub mod config;
pub mod dev;
pub mod k8s;
pub mod lifecycle;
pub mod local;
pub mod log_gate;
pub mod metrics;
pub mod plugins;
pub mod process;
pub mod proxy;
pub mod reaper;
pub mod secret;
pub mod server;
pub mod sweeper;
pub mod text;
pub mod token;
pub mod watch;
