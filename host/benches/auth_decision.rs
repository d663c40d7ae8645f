//! One auth decision with the default auth plugin, instantiation included,
//! next to the same policy compiled natively. Reports p50/p99 per call.
//!
//! `cargo bench -p spawner --bench auth_decision`
//! (goal on the 2-core reference machine: wasm p50 < 5 µs, p99 < 20 µs).

use std::sync::Arc;
use std::time::Instant;

use spawner::metrics::Metrics;
use spawner::plugins::credentials::{self, TokenNames};
use spawner::plugins::types::{AuthRequest, Backend, Credential, CredentialSource, Header, HttpRequest, TokenError};
use spawner::plugins::{PluginKind, PluginSource, Plugins, Runtime, RuntimeConfig};
use spawner::token::TokenKey;

/// The allocator the `spawner` binary ships with (see main.rs), so the
/// host side of a call allocates as it does in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 2_000;
const SAMPLES: usize = 50_000;

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99), at(0.999))
}

fn measure(mut f: impl FnMut() -> bool) -> (f64, f64, f64) {
    for _ in 0..WARMUP {
        assert!(f());
    }
    let mut ns = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let ok = f();
        ns.push(t.elapsed().as_nanos() as u64);
        assert!(ok);
    }
    percentiles(ns)
}

fn main() {
    let key = Arc::new(TokenKey::new(b"bench-secret-0123456789abcdef").unwrap());
    let now = spawner::token::now_unix();
    let token = key.mint("doc-42", Some("alice"), now, now + 3600);
    let headers = [
        ("host", "localhost:8080".to_string()),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".to_string()),
        ("accept", "text/html,application/xhtml+xml".to_string()),
        ("cookie", format!("theme=dark; spawner-token={token}")),
    ];

    // Host side: the real plugin through the real runtime.
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), Some(key.clone())).unwrap());
    let plugins = Plugins::defaults(runtime, Arc::new(Metrics::new())).unwrap();
    // As the proxy does per request: find the tokens in Spawner's places
    // and verify their signatures (host), then ask the plugin (wasm).
    let names = TokenNames::default();
    let mut request = AuthRequest {
        request: HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.clone() }).collect(),
            peer: "127.0.0.1:50000".into(),
            websocket: false,
        },
        backend: Backend { name: "doc-42".into(), key: None, owner: Some("alice".into()), labels: vec![] },
        now,
        credentials: vec![],
    };
    let wasm = measure(|| {
        request.credentials = credentials::find(&request.request, &names, Some(&key), "doc-42");
        plugins.auth().check(&request).is_allow()
    });
    // The floor: a plugin built the same way whose policy is "allow", given
    // the same request (credentials included) but no host-side search. What
    // it takes is what any plugin pays per call in this runtime: a pooled
    // instance, lowering the request, the call, resetting the memory.
    let allow_all = PluginSource::file(std::path::Path::new(spawner_test_plugins::FIXTURE_ALLOW), "").unwrap();
    let floor_plugins = Plugins::new(plugins.runtime().clone(), Arc::new(Metrics::new()), vec![(PluginKind::Auth, allow_all)]).unwrap();
    let floor = measure(|| floor_plugins.auth().check(&request).is_allow());
    // A plugin on ordinary `std` Rust, as plugin authors write them by
    // default: the HMAC example, which imports WASI and `host` (three core
    // modules per call, its settings read through the host), on a request
    // signed as its web app would sign it.
    let secret = "bench-hmac-secret-0123456789";
    let expires = now + 3600;
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("alice:{expires}:doc-42").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let hmac_settings = format!(r#"{{"secret":"{secret}"}}"#);
    let hmac_plugin = PluginSource::file(std::path::Path::new(spawner_test_plugins::HMAC_HEADER_AUTH), &hmac_settings).unwrap();
    let std_plugins = Plugins::new(plugins.runtime().clone(), Arc::new(Metrics::new()), vec![(PluginKind::Auth, hmac_plugin)]).unwrap();
    let mut signed = request.clone();
    signed.credentials = vec![];
    for (name, value) in [("x-auth-user", "alice".to_string()), ("x-auth-expires", expires.to_string()), ("x-auth-signature", signature)] {
        signed.request.headers.push(Header { name: name.into(), value });
    }
    let std_plugin = measure(|| std_plugins.auth().check(&signed).is_allow());
    // Native: the same host-side token search and verification, then the
    // same policy crate compiled for the host.
    use spawner_plugin_sdk::auth as sdk;
    let mut native_request = sdk::AuthRequest {
        request: sdk::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| sdk::Header { name: n.to_string(), value: v.clone() }).collect(),
            peer: "127.0.0.1:50000".into(),
            websocket: false,
        },
        backend: sdk::Backend { name: "doc-42".into(), key: None, owner: Some("alice".into()), labels: vec![] },
        now,
        credentials: vec![],
    };
    let native = measure(|| {
        native_request.credentials = credentials::find(&request.request, &names, Some(&key), "doc-42").into_iter().map(to_sdk).collect();
        default_auth::decide(&native_request).is_allow()
    });

    println!("auth decision, default auth plugin, {SAMPLES} samples after {WARMUP} warm-up calls");
    println!("{:<42} {:>9} {:>9} {:>9}", "", "p50 µs", "p99 µs", "p99.9 µs");
    println!("{:<42} {:>9.2} {:>9.2} {:>9.2}", "wasm (fresh instance per call)", wasm.0, wasm.1, wasm.2);
    println!("{:<42} {:>9.2} {:>9.2} {:>9.2}", "native (same token search, verify, policy)", native.0, native.1, native.2);
    println!("{:<42} {:>9.2} {:>9.2} {:>9.2}", "wasm floor (allow-all plugin, no search)", floor.0, floor.1, floor.2);
    println!("{:<42} {:>9.2} {:>9.2} {:>9.2}", "wasm, a std plugin (hmac-header-auth)", std_plugin.0, std_plugin.1, std_plugin.2);
    println!("goal: wasm p50 < 5 µs, p99 < 20 µs -> {}", if wasm.0 < 5.0 && wasm.1 < 20.0 { "met" } else { "NOT met" });
}

/// The host's generated type as the SDK's (the same WIT record, two crates).
fn to_sdk(c: Credential) -> spawner_plugin_sdk::auth::Credential {
    use spawner_plugin_sdk::auth as sdk;
    sdk::Credential {
        source: match c.source {
            CredentialSource::Bearer => sdk::CredentialSource::Bearer,
            CredentialSource::Query => sdk::CredentialSource::Query,
            CredentialSource::Cookie => sdk::CredentialSource::Cookie,
        },
        verified: c
            .verified
            .map(|c| sdk::Capability { backend: c.backend, subject: c.subject, issued_at: c.issued_at, expires_at: c.expires_at })
            .map_err(|e| match e {
                TokenError::BadSignature => sdk::TokenError::BadSignature,
                TokenError::Malformed(why) => sdk::TokenError::Malformed(why),
            }),
    }
}
