//! Builds every example and fixture plugin and writes their paths as
//! constants (`QUOTA_BY_LABEL`, `FIXTURE_LOOP`, ...) into OUT_DIR/paths.rs.

use std::fmt::Write as _;

const PACKAGES: &[&str] = &[
    "quota-by-label",
    "hmac-header-auth",
    "business-hours-idle",
    "fixture-loop",
    "fixture-alloc",
    "fixture-fail-auth",
    "fixture-fail-idle",
    "fixture-fail-scheduler",
    "fixture-counter",
    "fixture-counter-large",
    "fixture-allow",
    "fixture-wrong-world",
    "fixture-wrong-version",
    "fixture-bad-export",
];

fn main() {
    let built = spawner_plugin_build::build_into_out_dir(PACKAGES);
    let mut src = String::new();
    for (package, path) in built {
        let name = package.replace('-', "_").to_uppercase();
        writeln!(src, "/// `{package}`, built as a component.\npub const {name}: &str = {:?};", path.display().to_string()).unwrap();
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("paths.rs");
    std::fs::write(out, src).unwrap();
}
