//! The default plugin bundle, compiled from `plugins/default-*` by the
//! build script and embedded so that Spawner works with no configuration.

use super::PluginKind;

/// `plugins/default-scheduler`, as a component.
pub const DEFAULT_SCHEDULER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_scheduler.wasm"));
/// `plugins/default-auth`, as a component.
pub const DEFAULT_AUTH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_auth.wasm"));
/// `plugins/default-idle`, as a component.
pub const DEFAULT_IDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_idle.wasm"));

/// The embedded default plugin of `kind`.
pub fn bytes(kind: PluginKind) -> &'static [u8] {
    match kind {
        PluginKind::Scheduler => DEFAULT_SCHEDULER,
        PluginKind::Auth => DEFAULT_AUTH,
        PluginKind::Idle => DEFAULT_IDLE,
    }
}
