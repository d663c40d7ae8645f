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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{Runtime, RuntimeConfig};

    /// Auth runs on every request; an imported function that passes a
    /// string would add two core modules to every call (see
    /// `credentials`). Type-only imports (the `types` interface) cost
    /// nothing at run time.
    #[test]
    fn the_default_auth_plugin_imports_no_function() {
        use wasmtime::component::types::ComponentItem;
        let rt = Runtime::new(RuntimeConfig::default(), None).unwrap();
        let (component, _) = rt.compile("default_auth.wasm", DEFAULT_AUTH).unwrap();
        let engine = component.engine();
        let mut functions = Vec::new();
        for (name, item) in component.component_type().imports(engine) {
            match item.ty {
                ComponentItem::ComponentInstance(i) => functions
                    .extend(i.exports(engine).filter(|(_, e)| !matches!(e.ty, ComponentItem::Type(_))).map(|(f, _)| format!("{name}#{f}"))),
                ComponentItem::Type(_) => {}
                _ => functions.push(name.to_string()),
            }
        }
        assert!(functions.is_empty(), "default auth imports {functions:?}");
        let (scheduler, _) = rt.compile("default_scheduler.wasm", DEFAULT_SCHEDULER).unwrap();
        assert!(
            scheduler.component_type().imports(scheduler.engine()).any(|(n, _)| n.starts_with("spawner:plugin/host")),
            "the check can see imports"
        );
    }
}
