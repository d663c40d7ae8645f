//! Paths of the example and fixture plugins, compiled to components by this
//! crate's build script (the wasmtime `test-programs-artifacts` pattern), so
//! the host's tests and benchmarks run with plain `cargo test`.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));
