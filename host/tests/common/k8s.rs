//! Shared setup for the Kubernetes-mode tests (against deploy/testenv's
//! real control plane).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::wait::await_condition;
use spawner::k8s::crd::{SessionLivedBackend, SessionLivedBackendStatus};
use spawner::metrics::Metrics;
use spawner::plugins::{PluginKind, PluginSource, Plugins, Runtime};

/// How long a test waits for the control plane to get somewhere.
pub const WAIT: Duration = Duration::from_secs(60);

/// A path under deploy/.
pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// deploy/examples/notes.yaml, moved from the namespace it names (deploy/'s
/// `spawner-backends`) to `ns`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn example_backend_in(ns: &str) -> SessionLivedBackend {
    let text = std::fs::read_to_string(deploy("examples/notes.yaml")).unwrap();
    let mut slab: SessionLivedBackend = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(slab.metadata.namespace.as_deref(), Some("spawner-backends"), "the example names deploy/'s backends' namespace");
    slab.metadata.namespace = Some(ns.into());
    slab
}

/// The default plugins, the scheduler with `scheduler_settings`.
pub fn plugins(scheduler_settings: &str) -> Arc<Plugins> {
    let runtime = Arc::new(Runtime::new(super::patient(), None).unwrap());
    let sources = vec![(PluginKind::Scheduler, PluginSource::embedded(PluginKind::Scheduler, scheduler_settings))];
    Arc::new(Plugins::new(runtime, Arc::new(Metrics::new()), sources).unwrap())
}

/// Waits until the object's status satisfies `f` (saying `what` it waited
/// for when it never does), and returns the object.
pub async fn until(
    api: &Api<SessionLivedBackend>,
    name: &str,
    what: &str,
    f: impl Fn(&SessionLivedBackendStatus) -> bool,
) -> SessionLivedBackend {
    let cond = move |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(&f);
    match tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(o))) => o,
        other => {
            let now = api.get_opt(name).await.unwrap().map(|o| (o.metadata.annotations, o.status));
            panic!("{name} never {what}: {other:?}; now: {now:?}\n{}", spawner_testenv::logs_of_running("kwok", 30))
        }
    }
}

/// Sends `request` until it answers `want`, within [`WAIT`], and returns
/// that answer. A proxy's cache follows the API server by moments, so what
/// it answers right after a change there may still reflect the old state:
/// only the `meanwhile` statuses are accepted on the way, any other fails.
pub async fn until_status(what: &str, want: u16, meanwhile: &[u16], request: impl AsyncFn() -> reqwest::Response) -> reqwest::Response {
    until_status_within(WAIT, what, want, meanwhile, request).await
}

/// [`until_status`] within `patience`: for a state that must not last (a
/// cache moments behind, not a process that takes its time).
pub async fn until_status_within(
    patience: Duration,
    what: &str,
    want: u16,
    meanwhile: &[u16],
    request: impl AsyncFn() -> reqwest::Response,
) -> reqwest::Response {
    let started = tokio::time::Instant::now();
    loop {
        let r = request().await;
        let status = r.status().as_u16();
        if status == want {
            return r;
        }
        let body = r.text().await.unwrap_or_default();
        assert!(meanwhile.contains(&status), "{what}: {status} {body}");
        assert!(started.elapsed() < patience, "{what}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running demo backend, killed when dropped.
pub struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo backend on a free loopback port.
pub async fn demo_backend() -> (Demo, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Owned by the guard at once, so a failure below still kills it.
    let demo = Demo(Command::new(env!("CARGO_BIN_EXE_spawner-demo-backend")).env("PORT", port.to_string()).spawn().unwrap());
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (demo, port);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the demo backend never listened");
}

/// What a kubelet reports for a Pod whose application listens on this
/// machine's loopback (kwok's Pods run nothing; the tests run the demo
/// backend themselves), once kwok has started the Pod: kwok only moves
/// Pods that have no IP yet, so an earlier patch would stop it.
pub async fn report_loopback_pod_ip(client: &kube::Client, namespace: &str, name: &str) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let running = |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.phase.as_deref() == Some("Running"));
    let started = tokio::time::timeout(WAIT, await_condition(pods.clone(), name, running)).await;
    assert!(started.is_ok(), "Pod {name} never ran\n{}", spawner_testenv::logs_of_running("kwok", 30));
    let ip = serde_json::json!({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&ip)).await.unwrap();
}

/// A fresh namespace on the shared control plane (CRD installed), and an
/// admin client.
pub async fn namespace(prefix: &str) -> (kube::Client, String) {
    namespace_on(spawner_testenv::shared().await, prefix).await
}

/// [`namespace`] on `plane`.
pub async fn namespace_on(plane: &spawner_testenv::ControlPlane, prefix: &str) -> (kube::Client, String) {
    plane.install_crds(&deploy("crd")).await.unwrap();
    let ns = plane.namespace(prefix).await.unwrap();
    (plane.client().await.unwrap(), ns)
}

/// Runs the operator for `ns` in the background, with `plugins`, stopping
/// Pods at once.
pub fn spawn_operator(client: &kube::Client, ns: &str, plugins: Arc<Plugins>) {
    use spawner::k8s::controller::{self, Context, OperatorConfig};
    let config = OperatorConfig { namespace: Some(ns.into()), stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
    tokio::spawn(controller::run(Context::new(client.clone(), plugins, Arc::new(Metrics::new()), config)));
}

/// `spawner proxy` options for `ns` on a free loopback port: the embedded
/// plugins, no API, one replica, sweeping every 200 ms.
pub fn proxy_options(ns: &str, tokens: Arc<spawner::token::TokenKey>) -> spawner::k8s::serve::ProxyOptions {
    spawner::k8s::serve::ProxyOptions {
        namespace: ns.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        default_grace_seconds: 300,
        sweep_interval: Duration::from_millis(200),
        dry_run: false,
        proxy: spawner::config::ProxyConfig::default(),
        host_domain: None,
        api: None,
        plugins: None,
        replicas: None,
        metrics_listen: None,
        stopping: spawner::server::Stopping::default(),
        plugin_limits: super::patient(),
    }
}
