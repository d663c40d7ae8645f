//! Compiles plugin crates of this workspace into WebAssembly components, for
//! use from build scripts (the host embeds the default bundle; the test
//! artifacts crate hands examples and fixtures to tests).
//!
//! The nested `cargo` runs with its own target directory (next to the
//! workspace's, so it survives `OUT_DIR` changes and is shared by every
//! caller): reusing the outer one would wait forever on the lock the outer
//! build holds. If the `wasm32-wasip2` target is missing from the toolchain
//! (rustup does not add targets listed in rust-toolchain.toml to a toolchain
//! that is already installed), it is added here, so a fresh clone builds
//! with plain `cargo build`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds `packages` (workspace package names) in release mode and returns
/// `(package, path to its .wasm)` pairs. Panics with an actionable message on
/// failure, which is how build scripts report errors.
pub fn build(packages: &[&str]) -> Vec<(String, PathBuf)> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = workspace_root(&manifest_dir);
    let target_dir = plugin_target_dir();
    ensure_target();

    for dir in ["wit", "plugin-sdk/src", "plugins"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // Plugins carry no debug info: smaller files and faster loading.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Smaller, simpler components instantiate faster: one codegen unit,
        // whole-program LTO, and abort on panic (the host still reads the
        // panic message from stderr; unwinding cannot cross into it anyway).
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        // A 32 KiB stack instead of 1 MiB: decisions are shallow, and the
        // host resets a plugin's memory after every call, copying it whole
        // when it starts at 128 KiB or less, which is cheaper than asking
        // the kernel which pages changed (host/src/plugins/runtime.rs,
        // `Reset`). With it, the stack, data and the lean runtime's arena
        // fit one 64 KiB page. (Applies to the wasm target only.)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=-zstack-size=32768")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("could not run cargo to build plugins: {e}"));
    if !status.success() {
        panic!("building plugins {packages:?} for {TARGET} failed ({status}); see the cargo output above");
    }

    packages
        .iter()
        .map(|p| {
            let file = target_dir.join(TARGET).join("release").join(format!("{}.wasm", p.replace('-', "_")));
            assert!(file.exists(), "plugin {p} built, but {} is missing (is it a cdylib?)", file.display());
            (p.to_string(), file)
        })
        .collect()
}

/// Copies each built plugin into `OUT_DIR` as `{package}.wasm` (with `_`) and
/// returns the copies' paths, so `include_bytes!(concat!(env!("OUT_DIR"), ...))`
/// works and the embedded bytes do not change under a running binary.
pub fn build_into_out_dir(packages: &[&str]) -> Vec<(String, PathBuf)> {
    let out = PathBuf::from(env("OUT_DIR"));
    build(packages)
        .into_iter()
        .map(|(p, file)| {
            let dest = out.join(file.file_name().expect("wasm file name"));
            std::fs::copy(&file, &dest).unwrap_or_else(|e| panic!("copy {} to {}: {e}", file.display(), dest.display()));
            (p, dest)
        })
        .collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: call this from a build script"))
}

fn workspace_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join("wit").is_dir() && d.join("Cargo.toml").is_file() && d.join("plugin-sdk").is_dir())
        .unwrap_or_else(|| panic!("no Spawner workspace above {}", start.display()))
        .to_path_buf()
}

/// `<target>/spawner-plugins`, derived from `OUT_DIR`
/// (`<target>[/<triple>]/<profile>/build/<pkg>/out`; cargo marks `<target>`
/// with a `CACHEDIR.TAG`).
fn plugin_target_dir() -> PathBuf {
    let out = PathBuf::from(env("OUT_DIR"));
    let guess = out.ancestors().nth(4).expect("OUT_DIR has the usual layout");
    let target = guess.ancestors().take(2).find(|d| d.join("CACHEDIR.TAG").exists()).unwrap_or(guess);
    target.join("spawner-plugins")
}

/// Adds the wasm32-wasip2 target through rustup when the toolchain lacks it.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_deref().is_some_and(Path::is_dir) {
        return;
    }
    println!("cargo:warning=adding the {TARGET} target to the toolchain (rustup target add {TARGET})");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`rustup target add {TARGET}` failed ({s}); install the target and build again"),
        Err(e) => {
            panic!("the {TARGET} target is missing and rustup could not be run ({e}); install the target with your toolchain manager")
        }
    }
}
