//! Compiles the default plugin bundle (plugins/default-*) to components and
//! places them in OUT_DIR, where `plugins::embedded` includes them.

fn main() {
    spawner_plugin_build::build_into_out_dir(&["default-scheduler", "default-auth", "default-idle"]);
}
