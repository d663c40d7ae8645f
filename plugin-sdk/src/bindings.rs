//! All `wit_bindgen::generate!` invocations, one module per world.
//!
//! The `auth` world is generated first and owns the shared `types` and `host`
//! interfaces; the other worlds reuse them through `with`, so a `Backend` or
//! a `PluginError` is one Rust type whatever the plugin kind.
//!
//! `pub_export_macro` makes wit-bindgen split each world's type information in
//! two: the imports live here, the exports are emitted by the export macro in
//! the plugin crate. That is what lets one library crate carry three worlds
//! while a plugin built from it exports exactly one.

#![allow(missing_docs, clippy::all)]

pub mod auth {
    wit_bindgen::generate!({
        path: "wit",
        world: "spawner:plugin/auth@0.2.0",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::spawner_plugin_sdk::__private::auth",
        runtime_path: "::spawner_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Clone],
    });
}

pub mod scheduler {
    wit_bindgen::generate!({
        path: "wit",
        world: "spawner:plugin/scheduler@0.2.0",
        with: {
            "spawner:plugin/types@0.2.0": crate::bindings::auth::spawner::plugin::types,
            "spawner:plugin/host@0.2.0": crate::bindings::auth::spawner::plugin::host,
            "spawner:plugin/scheduling@0.2.0": generate,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::spawner_plugin_sdk::__private::scheduler",
        runtime_path: "::spawner_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Clone],
    });
}

pub mod idle {
    wit_bindgen::generate!({
        path: "wit",
        world: "spawner:plugin/idle@0.2.0",
        with: {
            "spawner:plugin/types@0.2.0": crate::bindings::auth::spawner::plugin::types,
            "spawner:plugin/host@0.2.0": crate::bindings::auth::spawner::plugin::host,
            "spawner:plugin/idleness@0.2.0": generate,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::spawner_plugin_sdk::__private::idle",
        runtime_path: "::spawner_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Clone],
    });
}
