//! Plugins from a ConfigMap, against a real control plane: `spawner proxy`
//! loads its auth plugin from one and follows its changes (a refused
//! plugin keeps the running one and says why in an Event on the
//! ConfigMap; removing it returns to the default), the operator takes its
//! scheduler's settings from one, and a bad plugin stops start-up with the
//! ConfigMap key in the reason.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::k8s::{WAIT, demo_backend, namespace, proxy_options, report_loopback_pod_ip, spawn_operator, until};
use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, PostParams};
use spawner::k8s::crd::SessionLivedBackend;
use spawner::k8s::plugins::{self as configmap, PluginConfigMap};
use spawner::k8s::serve::{self, ProxyOptions};
use spawner::lifecycle::{Phase, Reason};
use spawner::metrics::Metrics;
use spawner::plugins::{PluginKind, Runtime};
use spawner::token::{TokenKey, now_unix};
use spawner_test_plugins as built;

const HMAC_SECRET: &str = "shared-secret-with-the-web-app";

fn configmap(name: &str, data: &[(&str, &str)], binary: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
    cm.binary_data =
        Some(binary.iter().map(|(k, path)| (k.to_string(), ByteString(std::fs::read(path).unwrap()))).collect::<BTreeMap<_, _>>());
    cm
}

fn slab(name: &str, owner: &str, port: u16) -> SessionLivedBackend {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
        "metadata": {"name": name},
        "spec": {"template": {"containers": [{"name": "app", "image": "example.invalid/notes:1"}]}, "httpPort": port, "owner": owner}
    }))
    .unwrap()
}

fn with_plugins(ns: &str, tokens: Arc<TokenKey>, plugins: PluginConfigMap) -> ProxyOptions {
    ProxyOptions { sweep_interval: Duration::from_secs(5), plugins: Some(plugins), ..proxy_options(ns, tokens) }
}

/// Waits for a Kubernetes Event with `reason` on ConfigMap `name`.
async fn event(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for _ in 0..(WAIT.as_millis() / 100) {
        let list = events.list(&Default::default()).await.unwrap();
        if let Some(e) =
            list.items.into_iter().find(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(name))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {reason} Event on ConfigMap {name}");
}

/// Polls until `f` holds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..(WAIT.as_millis() / 50) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_loads_auth_from_a_configmap_and_follows_its_changes() {
    let (client, ns) = namespace("plugins").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let settings = format!(r#"{{"secret": "{HMAC_SECRET}"}}"#);
    let hmac_auth = configmap("spawner-plugins", &[("auth.json", &settings)], &[("auth.wasm", built::HMAC_HEADER_AUTH)]);
    maps.create(&PostParams::default(), &hmac_auth).await.unwrap();

    spawn_operator(&client, &ns, common::k8s::plugins(""));
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let at = PluginConfigMap { namespace: ns.clone(), name: "spawner-plugins".into() };
    let proxy = serve::start(client.clone(), with_plugins(&ns, tokens.clone(), at)).await.unwrap();
    assert_eq!(proxy.plugins.info(PluginKind::Auth).name, format!("{ns}/spawner-plugins/auth.wasm"));
    assert_eq!(proxy.plugins.info(PluginKind::Idle).name, "default-idle", "a kind the ConfigMap leaves out runs the default");

    let (_demo, port) = demo_backend().await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    slabs.create(&PostParams::default(), &slab("notes", "alice", port)).await.unwrap();
    report_loopback_pod_ip(&client, &ns, "notes").await;
    until(&slabs, "notes", "became ready at the Pod IP", |s| s.phase == Some(Phase::Ready) && s.pod_ip.as_deref() == Some("127.0.0.1"))
        .await;

    let http = reqwest::Client::new();
    let url = format!("http://{}/p/notes/api/stats", proxy.addr);
    let signed = || {
        let expires = now_unix() + 600;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
        mac.update(format!("alice:{expires}:notes").as_bytes());
        http.get(&url)
            .header("x-auth-user", "alice")
            .header("x-auth-expires", expires.to_string())
            .header("x-auth-signature", hex::encode(mac.finalize().into_bytes()))
    };
    let token = tokens.mint("notes", Some("alice"), now_unix(), now_unix() + 600);
    eventually("let the signed request through", async || signed().send().await.unwrap().status() == 200).await;
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 401, "the ConfigMap's plugin knows no tokens");

    // A plugin for another world: refused, the running one stays, and the
    // ConfigMap's Events say why.
    let wrong = configmap("spawner-plugins", &[("auth.json", &settings)], &[("auth.wasm", built::FIXTURE_WRONG_WORLD)]);
    maps.replace("spawner-plugins", &PostParams::default(), &wrong).await.unwrap();
    let rejected = event(&client, &ns, "spawner-plugins", "PluginRejected").await;
    let note = rejected.message.unwrap_or_default();
    assert!(note.contains("auth.wasm") && note.contains("keeping"), "{note}");
    assert_eq!(rejected.type_.as_deref(), Some("Warning"));
    assert_eq!(signed().send().await.unwrap().status(), 200, "the running plugin stays");
    assert_eq!(proxy.plugins.info(PluginKind::Auth).name, format!("{ns}/spawner-plugins/auth.wasm"));

    // Without an auth entry, the default auth plugin: tokens again.
    maps.replace("spawner-plugins", &PostParams::default(), &configmap("spawner-plugins", &[], &[])).await.unwrap();
    eventually("return to the default auth plugin", async || proxy.plugins.info(PluginKind::Auth).name == "default-auth").await;
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(signed().send().await.unwrap().status(), 401, "signed headers mean nothing to the default");
    event(&client, &ns, "spawner-plugins", "PluginLoaded").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_takes_scheduler_settings_from_a_configmap_and_a_bad_plugin_stops_start() {
    let (client, ns) = namespace("plugins-sched").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &configmap("spawner-plugins", &[("scheduler.json", r#"{"max-per-owner": 1}"#)], &[]))
        .await
        .unwrap();

    let runtime = Arc::new(Runtime::new(common::patient(), None).unwrap());
    let metrics = Arc::new(Metrics::new());
    let at = PluginConfigMap { namespace: ns.clone(), name: "spawner-plugins".into() };
    let (plugins, _watch) =
        configmap::load(client.clone(), &at, runtime, metrics.clone(), &[PluginKind::Scheduler], "spawner-operator").await.unwrap();
    assert_eq!(plugins.info(PluginKind::Scheduler).name, "default-scheduler");
    spawn_operator(&client, &ns, plugins);

    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    slabs.create(&PostParams::default(), &slab("first", "alice", 8080)).await.unwrap();
    until(&slabs, "first", "was admitted", |s| s.phase.is_some_and(|p| p >= Phase::Scheduled && !p.is_terminal())).await;
    slabs.create(&PostParams::default(), &slab("second", "alice", 8080)).await.unwrap();
    let refused = until(&slabs, "second", "was rejected", |s| s.phase == Some(Phase::Failed)).await;
    assert_eq!(refused.status.unwrap().reason, Some(Reason::Rejected), "max-per-owner 1, from the ConfigMap");

    // A ConfigMap whose plugin is refused stops the proxy from starting,
    // naming the key.
    maps.create(&PostParams::default(), &configmap("bad-plugins", &[], &[("auth.wasm", built::FIXTURE_WRONG_WORLD)])).await.unwrap();
    let bad = PluginConfigMap { namespace: ns.clone(), name: "bad-plugins".into() };
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let refused = serve::start(client.clone(), with_plugins(&ns, tokens, bad)).await.err().expect("started with a refused plugin");
    let why = format!("{refused:#}");
    assert!(why.contains("bad-plugins") && why.contains("auth.wasm"), "{why}");
}
