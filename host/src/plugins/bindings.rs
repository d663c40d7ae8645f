//! All `wasmtime::component::bindgen!` invocations, one module per world.
//!
//! The `auth` world owns the shared `types` and `host` interfaces; the other
//! worlds reuse them with `with`, so `Backend` and `PluginError` are one Rust
//! type for every kind and the `host` interface is implemented once.
//! Types derive serde so `spawner plugin run --input JSON` can read requests
//! and print decisions.

#![allow(missing_docs, clippy::all)]

pub mod auth {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "spawner:plugin/auth@0.2.0",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod scheduler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "spawner:plugin/scheduler@0.2.0",
        with: {
            "spawner:plugin/types@0.2.0": crate::plugins::bindings::auth::spawner::plugin::types,
            "spawner:plugin/host@0.2.0": crate::plugins::bindings::auth::spawner::plugin::host,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod idle {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "spawner:plugin/idle@0.2.0",
        with: {
            "spawner:plugin/types@0.2.0": crate::plugins::bindings::auth::spawner::plugin::types,
            "spawner:plugin/host@0.2.0": crate::plugins::bindings::auth::spawner::plugin::host,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}
