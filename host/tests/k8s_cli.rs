//! `spawner operator` and `spawner proxy` as a platform engineer runs them:
//! the real binary, a kubeconfig in `KUBECONFIG`, against a real control
//! plane. The operator runs a backend to ready and reports on `/metrics`;
//! the proxy serves `/healthz`, refuses a request without a token and, with
//! `--api-token`, serves the REST API; both stop on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::k8s::deploy;
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use spawner::k8s::crd::SessionLivedBackend;
use spawner::lifecycle::Phase;
use spawner_testenv::shared;

struct Running(Child);

impl Running {
    /// SIGTERM, then the exit status (killed after 30 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..300 {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawner(kubeconfig: &Path, args: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_spawner"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("SPAWNER_LOG", "spawner=debug,warn")
            .env("SPAWNER_PLUGIN_DEADLINE_MS", common::dev::PATIENT_PLUGINS)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

async fn until_up(url: &str) {
    for _ in 0..300 {
        if get(url).await.is_some_and(|(s, _)| s == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered 200");
}

const API_TOKEN: &str = "an-api-token-for-the-cli-test";

#[test]
fn a_short_api_token_is_refused_before_anything_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["proxy", "--namespace", "x", "--token-secret", "a secret for this test only", "--api-token", "short"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--api-token must be at least 16 bytes"), "{stderr}");
}

/// An operator missing a right stops at start saying which, and where the
/// manifests' RBAC is, instead of passing its health checks as a standby
/// and failing only once it leads.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_without_its_rights_stops_saying_which() {
    let plane = shared().await;
    plane.install_crds(&deploy("crd")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, plane.kubeconfig_for("spawner-test-nobody", &[]).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["operator", "--namespace", "cli-none", "--lease-namespace", "cli-none", "--metrics-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    for says in [
        "spawner operator may not list and watch what it reconciles",
        "Pods in namespace cli-none",
        "forbidden",
        "deploy/operator/01-rbac.yaml",
    ] {
        assert!(stderr.contains(says), "{says:?} not in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_and_proxy_commands_run_against_a_cluster() {
    let plane = shared().await;
    plane.install_crds(&deploy("crd")).await.unwrap();
    let ns = plane.namespace("cli").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, plane.kubeconfig_for("cli-admin", &["system:masters"]).unwrap()).unwrap();

    let metrics_port = free_port().to_string();
    let operator = spawner(
        &kubeconfig,
        &[
            "operator",
            "--namespace",
            &ns,
            "--lease-namespace",
            &ns,
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--public-url",
            "https://spawner.example",
        ],
    );
    let proxy_port = free_port().to_string();
    let proxy_metrics_port = free_port().to_string();
    let proxy = spawner(
        &kubeconfig,
        &[
            "proxy",
            "--namespace",
            &ns,
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--token-secret",
            "a secret for this test only",
            "--api-token",
            API_TOKEN,
            "--public-url",
            "https://spawner.example/",
            "--metrics-listen",
            &format!("127.0.0.1:{proxy_metrics_port}"),
            // Its stop is timed below: no load balancer to wait for.
            "--shutdown-delay-seconds",
            "1",
        ],
    );
    until_up(&format!("http://127.0.0.1:{metrics_port}/healthz")).await;
    until_up(&format!("http://127.0.0.1:{proxy_port}/healthz")).await;

    let client = plane.client().await.unwrap();
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client, &ns);
    let slab = common::k8s::example_backend_in(&ns);
    slabs.create(&PostParams::default(), &slab).await.unwrap();
    let ready = |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Ready));
    let ready = tokio::time::timeout(Duration::from_secs(60), await_condition(slabs.clone(), "notes-doc-42", ready)).await;
    assert!(ready.is_ok(), "spawner operator never made it ready: {:?}", slabs.get("notes-doc-42").await.unwrap().status);
    let status = slabs.get("notes-doc-42").await.unwrap().status.unwrap();
    assert_eq!(status.url.as_deref(), Some("https://spawner.example/p/notes-doc-42/"));

    // Spawn-to-ready is observed once the status write that says Ready has
    // returned, which may be just after a watch shows it.
    let mut metrics = String::new();
    for _ in 0..100 {
        let (code, text) = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap();
        assert_eq!(code, 200);
        metrics = text;
        if metrics.contains("spawn_to_ready_seconds_count 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains("plugin_decisions_total{kind=\"scheduler\""), "the scheduler plugin's decision is counted:\n{metrics}");
    assert!(metrics.contains("spawn_to_ready_seconds_count 1"), "one spawn-to-ready observed:\n{metrics}");
    // Backends by phase, recounted from the operator's cache every 2 s.
    let mut by_phase = String::new();
    for _ in 0..100 {
        by_phase = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().1;
        if by_phase.contains("spawner_backends{phase=\"ready\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(by_phase.contains("spawner_backends{phase=\"ready\"} 1"), "one ready backend:\n{by_phase}");
    assert!(by_phase.contains("spawner_backends{phase=\"pending\"} 0"), "{by_phase}");

    // The proxy knows the backend and asks for a token.
    let mut code = 0;
    for _ in 0..100 {
        code = get(&format!("http://127.0.0.1:{proxy_port}/p/notes-doc-42/")).await.unwrap().0;
        if code != 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(code == 401 || code == 403, "no token: {code}");
    assert_eq!(get(&format!("http://127.0.0.1:{proxy_port}/p/nobody/")).await.unwrap().0, 404);

    // Its metrics are on their own listener, not the public one.
    let (code, proxy_metrics) = get(&format!("http://127.0.0.1:{proxy_metrics_port}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    assert!(proxy_metrics.contains("spawner_proxy_requests"), "{proxy_metrics}");
    assert_eq!(get(&format!("http://127.0.0.1:{proxy_port}/metrics")).await.unwrap().0, 404, "metrics on the public listener");

    // Its REST API, with the API token, sees the object written by kubectl.
    let api = format!("http://127.0.0.1:{proxy_port}/api/v1/backends/notes-doc-42");
    assert_eq!(get(&api).await.unwrap().0, 401, "the API wants its token");
    // (The proxy's cache may hold an earlier version of it for a moment.)
    let mut view = serde_json::Value::Null;
    for _ in 0..100 {
        view = reqwest::Client::new().get(&api).bearer_auth(API_TOKEN).send().await.unwrap().json().await.unwrap();
        if view["status"]["phase"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(view["status"]["phase"], "ready", "{view}");
    assert_eq!(view["url"], "https://spawner.example/p/notes-doc-42/", "{view}");

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(plane.client().await.unwrap(), &ns);
    let held = leases.get("spawner-operator").await.unwrap().spec.unwrap();
    assert!(held.holder_identity.is_some(), "the operator leads: {held:?}");
    assert!(operator.terminate().success(), "the operator exits cleanly on SIGTERM");
    // On its way out it gave the Lease back: a new operator (a rollout)
    // need not wait for it to expire.
    let spec = leases.get("spawner-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None, "released: {spec:?}");
    assert!(proxy.terminate().success(), "the proxy exits cleanly on SIGTERM");
}
