//! Shared setup for the host's integration tests: a runtime with a known
//! token secret, plugin sources for the built examples and fixtures, and
//! request builders.

#![allow(dead_code)]

pub mod dev;
pub mod k8s;

use std::sync::{Arc, OnceLock};

use spawner::metrics::Metrics;
use spawner::plugins::credentials;
use spawner::plugins::types::*;
use spawner::plugins::{PluginKind, PluginSource, Plugins, Runtime, RuntimeConfig};
use spawner::token::TokenKey;

/// The secret every test runtime verifies tokens with.
pub const SECRET: &[u8] = b"test-secret-0123456789abcdef";

/// Current time used in requests.
pub const NOW: u64 = 1_800_000_000;

pub fn key() -> Arc<TokenKey> {
    Arc::new(TokenKey::new(SECRET).unwrap())
}

/// Runtime limits for tests about anything but deadlines: the CPU deadline
/// is wall-clock time, and on a busy shared machine a correct call
/// descheduled for 20 ms would be denied (or a scheduler call fall back to
/// the unconfigured default), failing a test that is not about that.
pub fn patient() -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    for limits in [&mut config.scheduler, &mut config.auth, &mut config.idle] {
        limits.deadline_ms = 30_000;
    }
    config
}

/// One runtime per test binary: compiling a component costs ~0.2 s, and the
/// runtime's cache makes every later load of it free. Its limits are
/// [`patient`]; tests of the deadlines build a default runtime.
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(patient(), Some(key())).unwrap())).clone()
}

/// The default bundle, with a fresh metrics registry.
pub fn defaults() -> (Plugins, Arc<Metrics>) {
    with(vec![])
}

/// Defaults, with some kinds replaced.
pub fn with(sources: Vec<(PluginKind, PluginSource)>) -> (Plugins, Arc<Metrics>) {
    with_in(runtime(), sources)
}

/// Defaults, with some kinds replaced, on the runtime `rt`.
pub fn with_in(rt: Arc<Runtime>, sources: Vec<(PluginKind, PluginSource)>) -> (Plugins, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (Plugins::new(rt, metrics.clone(), sources).unwrap(), metrics)
}

/// A built example or fixture.
pub fn source(path: &str, settings: &str) -> PluginSource {
    PluginSource::file(std::path::Path::new(path), settings).unwrap()
}

pub fn backend(name: &str) -> Backend {
    Backend { name: name.into(), key: None, owner: Some("alice".into()), labels: vec![] }
}

pub fn auth_request(backend_name: &str, headers: &[(&str, &str)], query: Option<&str>) -> AuthRequest {
    let request = HttpRequest {
        method: "GET".into(),
        path: "/index.html".into(),
        query: query.map(Into::into),
        headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
        peer: "127.0.0.1:40000".into(),
        websocket: false,
    };
    // As the proxy does: tokens in Spawner's places arrive verified.
    let credentials = credentials::find(&request, &credentials::TokenNames::default(), Some(&key()), backend_name);
    AuthRequest { request, backend: backend(backend_name), now: NOW, credentials }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn idle_request(open: u32, quiet: u64, age: u64, lifetime: Option<u64>) -> IdleRequest {
    IdleRequest {
        backend: backend("b1"),
        age_seconds: age,
        grace_period_seconds: 300,
        lifetime_limit_seconds: lifetime,
        activity: Activity {
            open_connections: open,
            in_flight_requests: 0,
            seconds_since_last_activity: quiet,
            bytes_in: 0,
            bytes_out: 0,
            websocket_messages: 0,
        },
        now: NOW,
    }
}

pub fn node(name: &str, labels: &[(&str, &str)], backends: usize) -> Node {
    Node {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| Label { key: k.to_string(), value: v.to_string() }).collect(),
        capacity: Resources { cpu_millis: 8000, memory_bytes: 16 << 30 },
        backends: (0..backends)
            .map(|i| PlacedBackend {
                name: format!("{name}-{i}"),
                owner: Some("bob".into()),
                labels: vec![Label { key: "team".into(), value: "data".into() }],
                node: Some(name.into()),
                requests: Resources { cpu_millis: 100, memory_bytes: 1 << 20 },
            })
            .collect(),
    }
}

pub fn placement_request(nodes: Vec<Node>) -> PlacementRequest {
    PlacementRequest {
        backend: backend("new"),
        requests: Resources { cpu_millis: 100, memory_bytes: 1 << 20 },
        node_selector: vec![],
        nodes,
        owner_backends: vec![],
        now: NOW,
    }
}

/// Resident set size of this process, bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
