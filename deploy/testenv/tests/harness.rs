//! Proves the test control plane is a real one: scheduling onto fake nodes,
//! kwok moving Pods to Running, garbage collection of owned objects, CRD
//! schema validation, RBAC, and cleanup even when a test fails.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use spawner_testenv::shared;

fn pod(name: &str, node_selector: Option<(&str, &str)>) -> Pod {
    let selector = node_selector.map(|(k, v)| serde_json::json!({ k: v })).unwrap_or(serde_json::json!({}));
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": selector,
            "containers": [{"name": "app", "image": "example.invalid/app:1", "ports": [{"containerPort": 8080}]}],
            "automountServiceAccountToken": false,
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_scheduled_onto_fake_nodes_and_run() {
    let plane = shared().await;
    println!("control plane started in {:?}", plane.started_in);
    let started = Instant::now();
    let ns = plane.namespace("sched").await.unwrap();
    println!("namespace created in {:?}", started.elapsed());
    let client = plane.client().await.unwrap();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "settings"}, "data": {"k": "v"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(cms.get("settings").await.unwrap().data.unwrap()["k"], "v");

    let pods: Api<Pod> = Api::namespaced(client, &ns);
    pods.create(&PostParams::default(), &pod("web", Some(("zone", "b")))).await.unwrap();
    let running =
        match tokio::time::timeout(Duration::from_secs(60), await_condition(pods.clone(), "web", conditions::is_pod_running())).await {
            Ok(p) => p.unwrap().unwrap(),
            Err(_) => {
                let p = pods.get("web").await.unwrap();
                panic!("pod never ran: {:?}\nscheduler log:\n{}", p.status, plane.log("kube-scheduler"))
            }
        };
    let spec = running.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-b"), "bound by kube-scheduler to the node matching the selector");
    let status = running.status.unwrap();
    assert!(status.pod_ip.is_some(), "kwok assigns a Pod IP");
    // What tests' failure messages show: the running planes' kwok logs.
    let logs = spawner_testenv::logs_of_running("kwok", 5);
    assert!(logs.contains(&format!("--- kwok log of {} (last 5 lines):\n", plane.dir().display())), "{logs}");
    assert!(logs.lines().count() > 1, "kwok logged nothing: {logs}");

    // A selector no node matches stays Pending.
    pods.create(&PostParams::default(), &pod("nowhere", Some(("zone", "z")))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = pods.get("nowhere").await.unwrap();
    assert!(p.spec.unwrap().node_name.is_none());
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_owner_garbage_collects_what_it_owns() {
    let plane = shared().await;
    let ns = plane.namespace("gc").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &ns);
    let owner = cms
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}})).unwrap())
        .await
        .unwrap();
    let uid = owner.metadata.uid.unwrap();
    let owned: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &owned).await.unwrap();
    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cms.get_opt("owned").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "owned object survived its owner; controller-manager log:\n{}",
            plane.log("kube-controller-manager")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_schema_refuses_invalid_objects() {
    let plane = shared().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let names = plane.install_crds(&dir).await.unwrap();
    assert_eq!(names, vec!["widgets.testenv.spawner.dev".to_string()]);
    let ns = plane.namespace("crd").await.unwrap();
    let gvk = kube::api::GroupVersionKind::gvk("testenv.spawner.dev", "v1", "Widget");
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(plane.client().await.unwrap(), &ns, &resource);
    let widget = |spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(
            serde_json::json!({"apiVersion": "testenv.spawner.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}),
        )
        .unwrap()
    };
    for (bad, why) in [
        (serde_json::json!({"colour": "red"}), "spec.size: Required value"),
        (serde_json::json!({"size": 0}), "spec.size: Invalid value"),
        (serde_json::json!({"size": 1, "colour": "purple"}), "spec.colour: Unsupported value"),
    ] {
        let err = api.create(&PostParams::default(), &widget(bad)).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    api.create(&PostParams::default(), &widget(serde_json::json!({"size": 2, "colour": "blue"}))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_limits_a_restricted_identity() {
    let plane = shared().await;
    let ns = plane.namespace("rbac").await.unwrap();
    let admin = plane.client().await.unwrap();
    let alice = plane.client_as("alice", &["developers"]).await.unwrap();
    let alice_cms: Api<ConfigMap> = Api::namespaced(alice, &ns);
    let err = alice_cms.list(&Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");

    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "developers-read"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "developers"}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin, &ns).create(&PostParams::default(), &binding).await.unwrap();
    // The API server's authorizer sees new bindings through its own cache,
    // moments later.
    let mut allowed = alice_cms.list(&Default::default()).await;
    for _ in 0..100 {
        if allowed.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        allowed = alice_cms.list(&Default::default()).await;
    }
    allowed.expect("the binding never took effect");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
    let err = alice_cms.create(&PostParams::default(), &cm).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "read-only role must not create: {err}");
}

/// A client made for a user in several groups is that user in every one
/// of them (a service account has three), as the API server sees it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_is_its_user_in_all_its_groups() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let plane = shared().await;
    for groups in [vec![], vec!["developers"], vec!["system:serviceaccounts", "system:serviceaccounts:spawner", "team-a"]] {
        let client = plane.client_as("system:serviceaccount:spawner:bob", &groups).await.unwrap();
        let review: SelfSubjectReview = Api::all(client).create(&PostParams::default(), &SelfSubjectReview::default()).await.unwrap();
        let user = review.status.unwrap().user_info.unwrap();
        assert_eq!(user.username.as_deref(), Some("system:serviceaccount:spawner:bob"));
        let seen = user.groups.unwrap_or_default();
        for g in &groups {
            assert!(seen.iter().any(|s| s == g), "{g} missing from {seen:?}");
        }
    }
}

/// What a control-plane upgrade does to clients: the API server goes away
/// (killed here) and comes back on the same address, with every object
/// still there, and clients made before it went reach it again.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_stops_and_starts_again_with_its_objects() {
    let plane = spawner_testenv::ControlPlane::start(&[]).await.unwrap();
    let ns = plane.namespace("restart").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "kept"}, "data": {"k": "v"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    plane.stop_api_server().unwrap();
    let down = tokio::time::timeout(Duration::from_secs(10), cms.get("kept")).await.expect("no answer in 10 s");
    assert!(down.is_err(), "answered while stopped: {down:?}");
    assert!(plane.stop_api_server().is_err(), "stopped twice");

    plane.start_api_server().await.unwrap();
    assert_eq!(cms.get("kept").await.unwrap().data.unwrap()["k"], "v", "the same etcd");
    assert!(plane.start_api_server().await.is_err(), "started twice");
    let log = plane.log("kube-apiserver");
    assert!(log.matches("Serving securely on").count() >= 2, "both runs' logs are kept:\n{log}");
}

/// Run by `a_failing_test_leaves_nothing_behind` in its own process.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by a_failing_test_leaves_nothing_behind"]
async fn failing_child() {
    let plane = spawner_testenv::ControlPlane::start(&[]).await.unwrap();
    println!("DIR={} PIDS={:?}", plane.dir().display(), plane.pids());
    // Leak it on purpose, as a crashing test would, then fail.
    #[allow(clippy::disallowed_methods, reason = "simulates a test that crashes without dropping its plane")]
    std::mem::forget(plane);
    panic!("this test fails on purpose");
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "failing_child", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the child was supposed to fail");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("DIR=").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no DIR line:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let dir = line.split_whitespace().next().unwrap().to_string();
    let pids: Vec<u32> = line.split("PIDS=[").nth(1).unwrap().trim_end_matches(']').split(", ").map(|p| p.parse().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive: Vec<&u32> = pids.iter().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && !is_zombie(**p)).collect();
        if alive.is_empty() && !std::path::Path::new(&dir).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: processes {alive:?}, dir exists: {}", std::path::Path::new(&dir).exists());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}
