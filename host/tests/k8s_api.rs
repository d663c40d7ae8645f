//! The REST API on Kubernetes, against a real control plane: a web app's
//! server creates a backend through `spawner proxy`'s `/api/` exactly as it
//! does with `spawner dev`, hands the browser URL to a browser that reaches
//! the backend, watches its status, terminates it, and reuses its key; the
//! original `POST /api/spawn` flow works too. Concurrent creates with one
//! key make one object: the API server's name uniqueness is the lock.
//!
//! kwok's Pods run nothing, so the test runs the demo backend on loopback
//! and reports that address as the Pod's IP, as a kubelet would.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::k8s::{WAIT, demo_backend, namespace, plugins, proxy_options, report_loopback_pod_ip, spawn_operator};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spawner::k8s::control::{CreateLimits, key_name};
use spawner::k8s::crd::SessionLivedBackend;
use spawner::k8s::serve::{self, ApiOptions, ProxyOptions, RunningProxy};
use spawner::token::TokenKey;

const API_TOKEN: &str = "an-api-token-for-the-test";

/// The operator and an API-serving proxy for a fresh namespace, with host
/// routing under `host_domain` if given, allowing `max_backends` live ones.
async fn system(prefix: &str, host_domain: Option<&str>, max_backends: usize) -> (kube::Client, String, RunningProxy) {
    let (client, ns) = namespace(prefix).await;
    spawn_operator(&client, &ns, plugins(""));
    let proxy = api_proxy(&client, &ns, host_domain, max_backends).await;
    (client, ns, proxy)
}

/// An API-serving proxy for `ns`.
async fn api_proxy(client: &kube::Client, ns: &str, host_domain: Option<&str>, max_backends: usize) -> RunningProxy {
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let api = ApiOptions {
        api_token: API_TOKEN.into(),
        public_url: format!("http://{listen}"),
        token_ttl_seconds: 600,
        limits: CreateLimits { max_backends, image_prefixes: vec!["example.invalid/".into()] },
    };
    let options = ProxyOptions { listen, host_domain: host_domain.map(String::from), api: Some(api), ..proxy_options(ns, tokens) };
    serve::start(client.clone(), options).await.unwrap()
}

/// The ids of the server-sent events in `text`.
fn ids(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.strip_prefix("id: ")).filter_map(|id| id.trim().parse().ok()).collect()
}

/// The web app's server: every call carries the API token.
struct WebApp {
    http: reqwest::Client,
    base: String,
}

impl WebApp {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(API_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates, again while the answer is 503: replacing an ended or
    /// stopping object waits up to 10 s for it to go, and a busy operator
    /// can take longer.
    async fn create(&self, body: &Value) -> (u16, Value) {
        let started = tokio::time::Instant::now();
        loop {
            let (status, view) = self.call(reqwest::Method::POST, "/api/v1/backends", Some(body.clone())).await;
            if status != 503 || started.elapsed() > WAIT {
                return (status, view);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `GET /api/v1/backends/{name}` until `f` holds.
    async fn until(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..(WAIT.as_millis() / 50) {
            let (status, view) = self.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}"), None).await;
            if status == 200 && f(&view) {
                return view;
            }
            last = view;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("backend {name} never {what}; last: {last}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_app_creates_reaches_watches_and_terminates_a_backend_through_the_api() {
    let (client, ns, proxy) = system("api", None, 1000).await;
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    let (_demo, port) = demo_backend().await;
    let create = json!({"template": "example.invalid/notes:1", "key": "doc-42", "owner": "alice", "port": port, "labels": {"team": "data"},
            "nodeSelector": {"zone": "b"}, "tolerations": [{"key": "dedicated", "value": "sessions", "effect": "NoSchedule"}]});

    // The API wants its token, and says what to fix in bad input.
    let anonymous = reqwest::Client::new().post(format!("{}/api/v1/backends", app.base)).json(&create).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, err) = app.call(reqwest::Method::POST, "/api/v1/backends", Some(json!({"template": "not an image"}))).await;
    assert_eq!(status, 422, "{err}");
    assert!(err.to_string().contains("image"), "{err}");
    let (status, err) = app.call(reqwest::Method::POST, "/api/v1/backends", Some(json!({"template": "docker.io/anything:1"}))).await;
    assert_eq!(status, 422, "only images under the allowed prefixes: {err}");
    assert!(err.to_string().contains("example.invalid/"), "{err}");
    let (status, err) = app
        .call(reqwest::Method::POST, "/api/v1/backends", Some(json!({"template": "example.invalid/x:1", "labels": {"bad/key/twice": "v"}})))
        .await;
    assert_eq!(status, 422, "Kubernetes' label rules, checked before the API server is asked: {err}");
    assert!(err.to_string().contains("not a valid Kubernetes label"), "{err}");
    let bad_toleration = json!({"template": "example.invalid/x:1", "tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]});
    let (status, err) = app.call(reqwest::Method::POST, "/api/v1/backends", Some(bad_toleration)).await;
    assert_eq!(status, 422, "the API server's toleration rules, checked before anything is created: {err}");
    assert!(err.to_string().contains("tolerations[0]: value must be empty when operator is Exists"), "{err}");

    // Concurrent creates with one key: one object, and everyone gets it.
    let calls = (0..8).map(|_| app.call(reqwest::Method::POST, "/api/v1/backends", Some(create.clone())));
    let answers = futures_util::future::join_all(calls).await;
    let name = key_name("doc-42");
    for (status, body) in &answers {
        assert!(*status == 201 || *status == 200, "{status} {body}");
        assert_eq!(body["backend"]["name"], name.as_str(), "{body}");
    }
    assert_eq!(answers.iter().filter(|(s, b)| *s == 201 && b["created"] == true).count(), 1, "exactly one created: {answers:?}");
    let created = &answers.iter().find(|(s, _)| *s == 201).unwrap().1;
    assert_eq!(created["backend"]["url"], format!("{}/p/{name}/", app.base));
    assert_eq!(created["backend"]["owner"], "alice");
    let browser_url = created["browserUrl"].as_str().unwrap().to_string();
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let first_uid = slabs.get(&name).await.unwrap().metadata.uid;
    assert_eq!(slabs.get(&name).await.unwrap().spec.key.as_deref(), Some("doc-42"));
    let tolerations = slabs.get(&name).await.unwrap().spec.template.tolerations.unwrap_or_default();
    let t = tolerations.first().expect("the API's tolerations reach the object");
    assert_eq!((t.key.as_deref(), t.value.as_deref(), t.effect.as_deref()), (Some("dedicated"), Some("sessions"), Some("NoSchedule")));

    // Ready: the long poll answers once the operator says so.
    report_loopback_pod_ip(&client, &ns, &name).await;
    let (status, view) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}/ready?timeout=60"), None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"]["phase"], "ready");
    app.until(&name, "recorded its address", |v| v["address"] == format!("127.0.0.1:{port}")).await;
    let placed = slabs.get(&name).await.unwrap();
    assert_eq!(placed.status.unwrap().node_name.as_deref(), Some("node-b"), "the only node in zone b");

    // The browser opens the URL it was handed: the token moves into a
    // cookie, and the backend answers.
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let page = browser.get(&browser_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "{:?}", page.text().await);
    let stats: Value = browser.get(format!("{}/p/{name}/api/stats", app.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["requests"], 2, "the page and this request: {stats}");

    // Listing, filtered.
    let (_, mine) = app.call(reqwest::Method::GET, "/api/v1/backends?owner=alice&labels=team=data", None).await;
    assert_eq!(mine.as_array().map(|a| a.len()), Some(1), "{mine}");
    let (_, theirs) = app.call(reqwest::Method::GET, "/api/v1/backends?owner=bob", None).await;
    assert_eq!(theirs, json!([]));

    // The status stream starts at the current status; its id is the phase's rank.
    let events = app.http.get(format!("{}/api/v1/backends/{name}/events", app.base)).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let mut body = events.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.expect("no status event").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first_ids = ids(&text);
    assert!(first_ids.len() == 1 && first_ids[0] % 10 == 4 && text.contains("\"phase\":\"ready\""), "{text}");

    // Logs come from the API server (kwok has no kubelet to serve them, so
    // the answer says it could not read them), never a permission error.
    let (status, logs) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}/logs"), None).await;
    let logs = logs.to_string();
    assert!(status == 200 || status == 503, "{status} {logs}");
    assert!(!logs.contains("forbidden") && !logs.contains("Role"), "{logs}");

    // Terminate: the stream sees the end; the object records why.
    let (status, _) = app.call(reqwest::Method::DELETE, &format!("/api/v1/backends/{name}"), None).await;
    assert_eq!(status, 202);
    let mut rest = String::new();
    while !ids(&rest).iter().any(|id| id % 10 == 6) {
        let next = tokio::time::timeout(WAIT, body.next()).await.expect("the stream never showed the end");
        let Some(chunk) = next else { break };
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(ids(&rest).iter().all(|id| *id > first_ids[0]) && rest.contains("\"reason\":\"requested\""), "{rest}");
    let ended = app.until(&name, "was terminated", |v| v["status"]["phase"] == "terminated").await;
    assert_eq!(ended["status"]["reason"], "requested");
    assert!(ended["address"].is_null(), "an ended backend has no address: {ended}");
    assert!(slabs.get(&name).await.unwrap().status.unwrap().pod_ip.is_none(), "nor has its object");
    let after = browser.get(format!("{}/p/{name}/api/stats", app.base)).send().await.unwrap();
    assert_eq!(after.status(), 410, "an ended backend is gone");

    // The key is free again: a create replaces the ended object. The
    // first token names the ended object, which refuses it below however
    // soon after its minting the new one comes (before 2026-12-01 only the
    // time did, and not within the clock tolerance).
    let payload = browser_url.rsplit("token=st1.").next().and_then(|t| t.split('.').next()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap()).unwrap();
    assert_eq!(claims["o"].as_str(), first_uid.as_deref(), "the API's token names its object: {claims}");
    let (status, again) = app.create(&create).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["backend"]["name"], name.as_str());
    assert_ne!(slabs.get(&name).await.unwrap().metadata.uid, first_uid, "a new object");
    assert_ne!(again["backend"]["status"]["phase"], "terminated");
    // Read at once, the cache may still hold the ended object: answers
    // must be about the new one.
    let (status, view) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}"), None).await;
    assert_eq!(status, 200);
    assert_ne!(view["status"]["phase"], "terminated", "{view}");
    report_loopback_pod_ip(&client, &ns, &name).await;
    let (status, view) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}/ready?timeout=60"), None).await;
    assert_eq!(status, 200, "the new backend's readiness: {view}");
    app.until(&name, "recorded the new Pod's address", |v| v["address"] == format!("127.0.0.1:{port}")).await;
    // The first browser's token was for the ended backend: refused. The
    // new one's token works.
    let (mut old, mut why) = (0, String::new());
    for _ in 0..100 {
        let r = browser.get(format!("{}/p/{name}/api/stats", app.base)).send().await.unwrap();
        (old, why) = (r.status().as_u16(), r.text().await.unwrap());
        if old != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(old, 401, "a token minted for the ended backend of this key: {why}");
    assert!(why.contains(&format!("minted for an earlier backend named {name}")), "{why}");
    let fresh = reqwest::Client::new()
        .get(format!("{}/p/{name}/api/stats", app.base))
        .bearer_auth(again["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);

    // A key whose backend is stopping (a user coming back as it is swept)
    // starts a new one, rather than handing back the one that is ending.
    let stopping_uid = slabs.get(&name).await.unwrap().metadata.uid;
    let (status, _) = app.call(reqwest::Method::DELETE, &format!("/api/v1/backends/{name}"), None).await;
    assert_eq!(status, 202);
    let (status, replaced) = app.create(&create).await;
    assert_eq!((status, &replaced["created"]), (201, &json!(true)), "{replaced}");
    assert_ne!(slabs.get(&name).await.unwrap().metadata.uid, stopping_uid, "a new object");

    // A live object written with kubectl, keyed, is not handed out by its
    // key: the API did not create it (whoever may write objects could take
    // a user's key first, with any image, command or second container,
    // and be sent that user). It says so; its name still gets tokens.
    let mut by_kubectl: SessionLivedBackend = serde_json::from_value(json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "metadata": {"name": "written-by-kubectl"},
        "spec": {"template": {"containers": [{"name": "app", "image": "example.invalid/notes:1"}]}, "key": "doc-7"}
    }))
    .unwrap();
    by_kubectl = slabs.create(&Default::default(), &by_kubectl).await.unwrap();
    app.until(by_kubectl.metadata.name.as_deref().unwrap(), "was seen by the API", |v| v["status"]["phase"] == "ready").await;
    let (status, found) =
        app.call(reqwest::Method::POST, "/api/v1/backends", Some(json!({"template": "example.invalid/notes:1", "key": "doc-7"}))).await;
    assert_eq!(status, 409, "{found}");
    assert!(found["error"].as_str().is_some_and(|e| e.contains("written-by-kubectl") && e.contains("did not create")), "{found}");
    let (status, minted) = app.call(reqwest::Method::POST, "/api/v1/backends/written-by-kubectl/tokens", Some(json!({}))).await;
    assert_eq!(status, 201, "{minted}");

    let (status, err) = app.call(reqwest::Method::GET, "/api/v1/backends/no-such-backend", None).await;
    assert_eq!(status, 404, "{err}");
    proxy.stop().await;
}

/// With `spawner operator` down, a backend terminated through the API is
/// stopping from that moment, as in local mode: the answer says so, no
/// new token is minted for it, a wait for ready ends at once, and the
/// proxy serves it no more (it was handed out as live, given tokens and
/// served while the operator had not acted; found in a failure-injection
/// trial).
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_terminated_while_the_operator_is_down_is_stopping_at_once() {
    let (client, ns) = namespace("api-nooperator").await;
    let proxy = api_proxy(&client, &ns, None, 10).await;
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    let (status, created) = app.create(&json!({"template": "example.invalid/notes:1", "key": "doc-9"})).await;
    assert_eq!(status, 201, "{created}");
    let name = created["backend"]["name"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["backend"]["status"]["phase"], "pending", "{created}");

    let (status, view) = app.call(reqwest::Method::DELETE, &format!("/api/v1/backends/{name}"), None).await;
    assert_eq!(status, 202, "{view}");
    assert_eq!((&view["status"]["phase"], &view["status"]["reason"]), (&json!("terminating"), &json!("requested")), "{view}");
    let (status, listed) = app.call(reqwest::Method::GET, "/api/v1/backends", None).await;
    assert_eq!((status, &listed[0]["status"]["phase"]), (200, &json!("terminating")), "{listed}");
    let (status, minted) = app.call(reqwest::Method::POST, &format!("/api/v1/backends/{name}/tokens"), Some(json!({}))).await;
    assert_eq!(status, 409, "{minted}");
    let (status, waited) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}/ready?timeout=30"), None).await;
    assert_eq!(status, 409, "{waited}");
    let page = reqwest::Client::new().get(format!("{}/p/{name}/", app.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(page.status(), 503);
    assert!(page.text().await.unwrap().contains("is stopping"));
}

/// A create-or-get that returns a live backend gives it a fresh grace
/// period, as in local mode: its new user is on the way, and a backend
/// quiet for nearly its grace period would otherwise be swept as they
/// arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_or_get_of_a_live_backend_restarts_its_grace_period() {
    let (client, ns, proxy) = system("regrace", None, 10).await;
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    let (_demo, port) = demo_backend().await;
    let create = json!({"template": "example.invalid/notes:1", "key": "doc-7", "port": port, "gracePeriodSeconds": 4});
    let (status, created) = app.create(&create).await;
    assert_eq!(status, 201, "{created}");
    let name = created["backend"]["name"].as_str().unwrap().to_string();
    report_loopback_pod_ip(&client, &ns, &name).await;
    let (status, view) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}/ready?timeout=60"), None).await;
    assert_eq!(status, 200, "{view}");
    let ready = std::time::Instant::now();
    // Its lifetime changed by hand (which may be done), and asked for by
    // another owner: still the API's own (its seal holds), so handed back.
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let lifetime = json!({"spec": {"lifetimeLimitSeconds": 3600}});
    slabs.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&lifetime)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut joining = create.clone();
    joining["owner"] = json!("bob");
    let (status, again) = app.create(&joining).await;
    assert_eq!((status, again["backend"]["name"].as_str()), (200, Some(name.as_str())), "{again}");
    // Past the grace period counted from ready, within it counted from
    // the second call.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(ready.elapsed())).await;
    let (_, view) = app.call(reqwest::Method::GET, &format!("/api/v1/backends/{name}"), None).await;
    assert_eq!(view["status"]["phase"], "ready", "{view}");
    let ended = app.until(&name, "was swept", |v| v["status"]["phase"] == "terminated").await;
    assert_eq!(ended["status"]["reason"], "idle", "{ended}");
}

/// Also with host routing: the URL the browser is sent to is
/// `{name}.{domain}`. And with a limit of one live backend.
#[tokio::test(flavor = "multi_thread")]
async fn the_original_spawn_flow_works_on_kubernetes_with_host_routing() {
    let (client, ns, proxy) = system("api-original", Some("apps.test"), 1).await;
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    let (_demo, port) = demo_backend().await;

    let (status, spawned) =
        app.call(reqwest::Method::POST, "/api/spawn", Some(json!({"image": "example.invalid/notes:1", "port": port}))).await;
    assert_eq!(status, 200, "{spawned}");
    let name = spawned["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("notes-"), "{name}");
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    assert_eq!(slabs.get(&name).await.unwrap().spec.http_port(), port, "port reaches the object");
    report_loopback_pod_ip(&client, &ns, &name).await;

    // As the original client did: poll readyUrl until it redirects.
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let ready_url = spawned["readyUrl"].as_str().unwrap();
    let mut location = None;
    for _ in 0..(WAIT.as_millis() / 50) {
        let r = no_follow.get(ready_url).bearer_auth(API_TOKEN).send().await.unwrap();
        match r.status().as_u16() {
            302 => {
                location = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
                break;
            }
            409 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("readyUrl answered {other}"),
        }
    }
    let location = location.expect("never ready");
    let host = format!("{name}.apps.test");
    assert!(location.starts_with(&format!("http://{host}:{}/?token=", proxy.addr.port())), "{location}");
    app.until(&name, "recorded its address", |v| v["address"] == format!("127.0.0.1:{port}")).await;
    // A browser whose DNS points the wildcard domain at the proxy.
    let browser = reqwest::Client::builder().cookie_store(true).resolve(&host, proxy.addr).build().unwrap();
    assert_eq!(browser.get(&location).send().await.unwrap().status(), 200);
    let stats: Value = browser.get(format!("http://{host}:{}/api/stats", proxy.addr.port())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["requests"], 2, "the page and this request reached the backend by host: {stats}");
    let anonymous = reqwest::Client::builder().resolve(&host, proxy.addr).build().unwrap();
    let refused = anonymous.get(format!("http://{host}:{}/api/stats", proxy.addr.port())).send().await.unwrap();
    assert_eq!(refused.status(), 401, "no token, by host too");
    let (_, status) = app.call(reqwest::Method::GET, &format!("/api/backend/{name}/status"), None).await;
    assert_eq!(status["state"], "Ready", "{status}");

    // One live backend is this proxy's limit: the next create is refused.
    let (status, refused) =
        app.call(reqwest::Method::POST, "/api/spawn", Some(json!({"image": "example.invalid/notes:1", "port": port}))).await;
    assert_eq!(status, 429, "{refused}");
    assert!(refused.to_string().contains("--max-backends"), "{refused}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_servers_own_refusal_is_passed_on_with_its_reason() {
    let (client, ns, proxy) = system("api-quota", None, 1000).await;
    // A ResourceQuota that allows no backends in this namespace: the API
    // server's admission refuses the object, not Spawner.
    let quota: ResourceQuota = serde_json::from_value(
        json!({"metadata": {"name": "no-backends"}, "spec": {"hard": {"count/sessionlivedbackends.spawner.dev": "0"}}}),
    )
    .unwrap();
    Api::<ResourceQuota>::namespaced(client, &ns).create(&PostParams::default(), &quota).await.unwrap();
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    // The API server's admission sees a new quota through its own cache,
    // moments later: until then a create still succeeds.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, err) = loop {
        let (status, body) = app.call(reqwest::Method::POST, "/api/v1/backends", Some(json!({"template": "example.invalid/x:1"}))).await;
        if status != 201 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 429, "a quota is a capacity limit: {err}");
    let err = err.to_string();
    assert!(err.contains("Kubernetes refused") && err.contains("quota"), "the API server's reason, passed on: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_waiting_for_a_node_says_why_in_its_status_and_its_stream() {
    // The only node its selector names is cordoned (from its creation, so
    // no other test sees it open): it waits, and says why.
    let plane = spawner_testenv::shared().await;
    plane.add_node(&spawner_testenv::FakeNode::new("node-api-maint").label("zone", "api-maint").cordoned()).await.unwrap();
    let (client, _ns, proxy) = system("api-wait", None, 10).await;
    let app = WebApp { http: reqwest::Client::new(), base: format!("http://{}", proxy.addr) };
    let create = json!({"template": "example.invalid/notes:1", "nodeSelector": {"zone": "api-maint"}});
    let (status, created) = app.call(reqwest::Method::POST, "/api/v1/backends", Some(create)).await;
    assert_eq!(status, 201, "{created}");
    let name = created["backend"]["name"].as_str().unwrap().to_string();

    // The stream opens in the starting phase, before kube-scheduler has
    // looked, and carries the note once it has: the same id, a new status.
    app.until(&name, "started", |v| v["status"]["phase"] == "starting").await;
    let events = app.http.get(format!("{}/api/v1/backends/{name}/events", app.base)).bearer_auth(API_TOKEN).send().await.unwrap();
    let mut body = events.bytes_stream();
    let mut text = String::new();
    while !text.contains("no node can run its Pod yet") {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.unwrap_or_else(|_| panic!("no note in the stream: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert!(text.contains("unschedulable"), "kube-scheduler's words: {text}");
    let waiting = app.until(&name, "said why it waits", |v| v["status"]["message"].as_str().is_some()).await;
    let message = waiting["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("no node can run its Pod yet: ") && waiting["status"]["phase"] == "starting", "{waiting}");
    drop(body);
    Api::<k8s_openapi::api::core::v1::Node>::all(client).delete("node-api-maint", &Default::default()).await.unwrap();
}
