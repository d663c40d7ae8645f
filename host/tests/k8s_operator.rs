//! The operator against a real kube-apiserver, kube-scheduler and kwok
//! (deploy/testenv): a SessionLivedBackend becomes an owned Pod placed by
//! the scheduler plugin, its status follows the Pod to ready, a crash is
//! recorded with its exit code, the scheduler plugin's rejection fails it
//! (over quota, or no node matching its node selector), and deleting it
//! stops the Pod before the object goes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::k8s::{WAIT, deploy, namespace, namespace_on, plugins, until};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use spawner::k8s::controller::{self, Context, FINALIZER, OperatorConfig};
use spawner::k8s::crd::{SessionLivedBackend, SessionLivedBackendStatus};
use spawner::k8s::leader::{self, LeaseSettings};
use spawner::lifecycle::{Phase, Reason};
use spawner::metrics::Metrics;
use spawner_testenv::{ControlPlane, FakeNode, shared};

const HOUR: Duration = Duration::from_secs(3600);

/// A namespace with the CRD installed and an operator watching it, using
/// the default plugins (the scheduler with `scheduler_settings`), keeping
/// ended backends for `retention`.
async fn operator(prefix: &str, scheduler_settings: &str, retention: Duration) -> (kube::Client, String) {
    operator_on(shared().await, prefix, scheduler_settings, retention).await
}

/// [`operator`] on `plane`.
async fn operator_on(plane: &ControlPlane, prefix: &str, scheduler_settings: &str, retention: Duration) -> (kube::Client, String) {
    // No grace to stop a Pod: these tests are not about the stop.
    let config = OperatorConfig { retention, stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
    operator_with(plane, prefix, scheduler_settings, config).await
}

/// [`operator`] on `plane` with `config` (its namespace and public URL set
/// here).
async fn operator_with(plane: &ControlPlane, prefix: &str, scheduler_settings: &str, config: OperatorConfig) -> (kube::Client, String) {
    let (client, ns, _) = operator_with_metrics(plane, prefix, scheduler_settings, config).await;
    (client, ns)
}

/// `operator_with`, also returning the operator's metrics.
async fn operator_with_metrics(
    plane: &ControlPlane,
    prefix: &str,
    scheduler_settings: &str,
    config: OperatorConfig,
) -> (kube::Client, String, Arc<Metrics>) {
    let (client, ns) = namespace_on(plane, prefix).await;
    let metrics = start_operator(&client, &ns, scheduler_settings, config);
    (client, ns, metrics)
}

/// Starts an operator for namespace `ns`; its metrics.
fn start_operator(client: &kube::Client, ns: &str, scheduler_settings: &str, config: OperatorConfig) -> Arc<Metrics> {
    let plugins = plugins(scheduler_settings);
    let config = OperatorConfig { namespace: Some(ns.into()), public_url: Some("https://spawner.example".into()), ..config };
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(controller::run(Context::new(client.clone(), plugins, metrics.clone(), config)));
    metrics
}

fn slab(name: &str, owner: &str) -> SessionLivedBackend {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
        "metadata": {"name": name, "labels": {"team": "docs"}},
        "spec": {
            "template": {"containers": [{"name": "app", "image": "example.invalid/notes:1"}]},
            "httpPort": 3000, "owner": owner, "key": format!("doc-{name}"), "service": name == "notes"
        }
    }))
    .unwrap()
}

/// The Events recorded on backend `name`, as (type, reason, note), once
/// one with `reason` is there.
async fn events_until(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    for _ in 0..(WAIT.as_millis() / 100) {
        let events: Vec<(String, String, String)> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        if events.iter().any(|e| e.1 == reason) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {reason} Event for {name}");
}

fn phase(p: Phase) -> impl Fn(&SessionLivedBackendStatus) -> bool {
    move |s| s.phase == Some(p)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_becomes_a_ready_pod_and_deleting_it_stops_the_pod_first() {
    let config = OperatorConfig { retention: HOUR, ..OperatorConfig::default() };
    let (client, ns, metrics) = operator_with_metrics(shared().await, "op-ready", "", config).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    slabs.create(&PostParams::default(), &slab("notes", "alice")).await.unwrap();

    let ready = until(&slabs, "notes", "ready", phase(Phase::Ready)).await;
    let status = ready.status.as_ref().unwrap();
    assert!(ready.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER));
    let pod = pods.get("notes").await.unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let node = spec.node_name.clone().unwrap();
    assert!(node == "node-a" || node == "node-b", "placed by the scheduler plugin on a candidate: {node}");
    assert_eq!(status.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(status.pod_ip, pod.status.as_ref().unwrap().pod_ip, "the proxy's address for it");
    assert!(status.pod_ip.is_some());
    assert_eq!(status.url.as_deref(), Some("https://spawner.example/p/notes/"));
    assert!(status.created_at.is_some() && status.scheduled_at.is_some() && status.started_at.is_some() && status.ready_at.is_some());
    let ready_condition = status.ready_condition().unwrap();
    assert_eq!((ready_condition.status.as_str(), ready_condition.reason.as_str()), ("True", "Ready"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let env: Vec<(String, Option<String>)> = spec.containers[0].env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
    assert!(env.contains(&("PORT".into(), Some("3000".into()))) && env.contains(&("SPAWNER_BACKEND_KEY".into(), Some("doc-notes".into()))));
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(Some(&owner.uid), ready.metadata.uid.as_ref());
    let services: Api<Service> = Api::namespaced(pods.clone().into_client(), &ns);
    let service = services.get("notes").await.expect("the spec asked for a Service");
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 3000);
    assert_eq!(service.metadata.owner_references.unwrap()[0].uid, owner.uid);

    let events = events_until(&services.clone().into_client(), &ns, "notes", "Ready").await;
    let ready_event = events.iter().find(|e| e.1 == "Ready").unwrap();
    assert_eq!((ready_event.0.as_str(), ready_event.2.as_str()), ("Normal", format!("ready on {node}").as_str()));

    // Delete: the finalizer holds the object until its Pod is gone.
    slabs.delete("notes", &DeleteParams::default()).await.unwrap();
    let gone = tokio::time::timeout(
        WAIT,
        await_condition(slabs.clone(), "notes", kube::runtime::conditions::is_deleted(&ready.metadata.uid.clone().unwrap())),
    )
    .await;
    assert!(
        gone.is_ok(),
        "the object was never released: {:?}",
        slabs.get_opt("notes").await.unwrap().map(|o| (o.metadata.finalizers, o.status))
    );
    assert!(pods.get_opt("notes").await.unwrap().is_none(), "no Pod outlives its backend");
    // A deletion is no failure: reconciles still on their way when the
    // object went (from the watch's cache, moments behind) find it gone,
    // and nothing is counted for on-call to be paged about.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors: Vec<String> =
        metrics.encode().lines().filter(|l| l.starts_with("spawner_reconcile_errors_total{")).map(String::from).collect();
    assert!(errors.is_empty(), "{errors:?}");
    // How it ended is told before the object goes: counted, and an Event
    // (neither was, for a deleted object, when its Pod went between two
    // looks; found in a failure-injection trial).
    let ended = r#"spawner_backends_ended_total{phase="terminated",reason="requested"} 1"#;
    assert!(metrics.encode().lines().any(|l| l == ended), "{}", metrics.encode());
    let events = events_until(&services.into_client(), &ns, "notes", "Terminated").await;
    assert!(events.iter().any(|e| e.1 == "Terminated" && e.2.contains("the SessionLivedBackend was deleted")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_pod_fails_the_backend_with_its_exit_code() {
    let (client, ns) = operator("op-crash", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    slabs.create(&PostParams::default(), &slab("crashy", "bob")).await.unwrap();
    until(&slabs, "crashy", "ready", phase(Phase::Ready)).await;

    // What a kubelet reports when the application exits with code 3 (the
    // Pod asks for its log's end as the termination message).
    let app = pods.get("crashy").await.unwrap().spec.unwrap().containers.remove(0);
    assert_eq!(app.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
    let crashed = serde_json::json!({"status": {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "app", "image": "example.invalid/notes:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "listening on 3000\nError: ENOSPC: no space left on device\n"}}}]
    }});
    pods.patch_status("crashy", &PatchParams::default(), &Patch::Merge(&crashed)).await.unwrap();

    let failed = until(&slabs, "crashy", "failed", phase(Phase::Failed)).await;
    let status = failed.status.unwrap();
    assert_eq!((status.reason, status.exit_code), (Some(Reason::Exited), Some(3)));
    assert!(status.finished_at.is_some());
    let c = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Exited"));
    let events = events_until(&slabs.clone().into_client(), &ns, "crashy", "Failed").await;
    let failed_event = events.iter().find(|e| e.1 == "Failed").unwrap();
    assert_eq!(failed_event.0, "Warning");
    assert!(failed_event.2.contains("(exited): exited on its own with code 3"), "{}", failed_event.2);
    assert_eq!(
        status.message.as_deref(),
        Some("exited on its own with code 3; its last output: listening on 3000 | Error: ENOSPC: no space left on device")
    );

    // Killed by the kernel for its memory: said, not "on its own".
    slabs.create(&PostParams::default(), &slab("greedy", "bob")).await.unwrap();
    until(&slabs, "greedy", "ready", phase(Phase::Ready)).await;
    let killed = serde_json::json!({"status": {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "app", "image": "example.invalid/notes:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
    }});
    pods.patch_status("greedy", &PatchParams::default(), &Patch::Merge(&killed)).await.unwrap();
    let status = until(&slabs, "greedy", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(status.exit_code, Some(137));
    assert_eq!(status.message.as_deref(), Some("exited with code 137 (OOMKilled: it used more memory than its limit allows)"));

    // The exited Pod stays (for `kubectl logs`) until the backend is deleted;
    // then it goes, and so does the object.
    assert!(pods.get_opt("crashy").await.unwrap().is_some());
    slabs.delete("crashy", &DeleteParams::default()).await.unwrap();
    let uid = failed.metadata.uid.clone().unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "crashy", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(
        gone.is_ok(),
        "deleting a crashed backend never finished: {:?}",
        slabs.get_opt("crashy").await.unwrap().map(|o| o.metadata.finalizers)
    );
    assert!(pods.get_opt("crashy").await.unwrap().is_none());
}

/// The application exits while a sidecar keeps its Pod running: the
/// backend fails with the exit code, and its Pod is stopped rather than
/// holding its node's resources until the retention ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_app_exited_beside_a_sidecar_is_stopped() {
    let (client, ns) = operator("op-sidecar", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut with_sidecar = slab("sidecar", "bob");
    with_sidecar
        .spec
        .template
        .containers
        .push(serde_json::from_value(serde_json::json!({"name": "proxy", "image": "example.invalid/envoy:1"})).unwrap());
    slabs.create(&PostParams::default(), &with_sidecar).await.unwrap();
    until(&slabs, "sidecar", "ready", phase(Phase::Ready)).await;
    let uid = pods.get("sidecar").await.unwrap().metadata.uid;

    let exited = serde_json::json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {"name": "app", "image": "example.invalid/notes:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}}},
            {"name": "proxy", "image": "example.invalid/envoy:1", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {}}}]
    }});
    pods.patch_status("sidecar", &PatchParams::default(), &Patch::Merge(&exited)).await.unwrap();
    let failed = until(&slabs, "sidecar", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!((failed.reason, failed.exit_code), (Some(Reason::Exited), Some(1)));
    let stopped = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), "sidecar", |p: Option<&Pod>| {
            p.is_none_or(|p| p.metadata.uid != uid || p.metadata.deletion_timestamp.is_some())
        }),
    )
    .await;
    assert!(stopped.is_ok(), "the Pod runs on: {:?}", pods.get_opt("sidecar").await.unwrap().map(|p| p.status));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_plugin_rejects_over_quota_backends() {
    let (client, ns) = operator("op-quota", r#"{"max-per-owner": 1}"#, Duration::from_secs(3)).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    slabs.create(&PostParams::default(), &slab("first", "carol")).await.unwrap();
    until(&slabs, "first", "ready", phase(Phase::Ready)).await;
    slabs.create(&PostParams::default(), &slab("second", "carol")).await.unwrap();

    let rejected = until(&slabs, "second", "failed", phase(Phase::Failed)).await;
    let status = rejected.status.unwrap();
    assert_eq!(status.reason, Some(Reason::Rejected));
    assert!(status.message.as_deref().unwrap_or_default().contains("max-per-owner"), "{:?}", status.message);
    assert!(pods.get_opt("second").await.unwrap().is_none(), "a rejected backend never gets a Pod");

    // Kept for the retention (3 s here), with its record; then deleted.
    let uid = rejected.metadata.uid.clone().unwrap();
    let deleted = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "second", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(deleted.is_ok(), "an ended backend outlived its retention");
    assert!(slabs.get_opt("first").await.unwrap().is_some(), "a live one stays");
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_created_together_count_against_one_quota() {
    let (client, ns) = operator("op-together", r#"{"max-per-owner": 1}"#, HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    // Created at once: the second is decided before the first's admission
    // has come back through the watch.
    let names = ["together-1", "together-2", "together-3"];
    futures_util::future::join_all(names.iter().map(|n| {
        let (slabs, slab) = (slabs.clone(), slab(n, "frank"));
        async move { slabs.create(&PostParams::default(), &slab).await.unwrap() }
    }))
    .await;
    let mut ended = Vec::new();
    for n in names {
        let s = until(&slabs, n, "decided", |s| matches!(s.phase, Some(Phase::Ready | Phase::Failed))).await;
        ended.push(s.status.unwrap());
    }
    let admitted = ended.iter().filter(|s| s.phase == Some(Phase::Ready)).count();
    assert_eq!(admitted, 1, "max-per-owner 1 admits exactly one: {ended:?}");
    assert!(ended.iter().filter(|s| s.phase == Some(Phase::Failed)).all(|s| s.reason == Some(Reason::Rejected)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_selector_places_the_backend_on_a_matching_node_or_rejects_it() {
    let (client, ns) = operator("op-zone", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let zoned = |name: &str, zone: &str| {
        let mut s = slab(name, "dave");
        s.spec.template.node_selector = Some([("zone".to_string(), zone.to_string())].into());
        s
    };
    // The test control plane's fake nodes: node-a in zone a, node-b in zone b.
    for (name, zone) in [("in-b", "b"), ("in-a", "a"), ("also-b", "b")] {
        slabs.create(&PostParams::default(), &zoned(name, zone)).await.unwrap();
        let ready = until(&slabs, name, "ready", phase(Phase::Ready)).await;
        let node = format!("node-{zone}");
        assert_eq!(ready.status.unwrap().node_name.as_deref(), Some(node.as_str()), "{name}");
        let spec = pods.get(name).await.unwrap().spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["zone"], zone, "kube-scheduler is held to it too");
    }

    slabs.create(&PostParams::default(), &zoned("nowhere", "c")).await.unwrap();
    let rejected = until(&slabs, "nowhere", "failed", phase(Phase::Failed)).await;
    let status = rejected.status.unwrap();
    assert_eq!(status.reason, Some(Reason::Rejected));
    assert!(status.message.as_deref().unwrap_or_default().contains("zone=c"), "{:?}", status.message);
    assert!(pods.get_opt("nowhere").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tainted_node_runs_only_backends_that_tolerate_it() {
    let (client, ns) = operator("op-taint", "", HOUR).await;
    // A third node for this test, in its own zone, tainted (from its
    // creation, so other tests never see it untainted) as GPU nodes are.
    let plane = shared().await;
    plane.add_node(&FakeNode::new("node-gpu").label("zone", "gpu").taint("gpu", "true", "NoSchedule")).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());

    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let on_gpu = |name: &str, tolerate: bool| {
        let mut s = slab(name, "erin");
        s.spec.template.node_selector = Some([("zone".to_string(), "gpu".to_string())].into());
        if tolerate {
            s.spec.template.tolerations =
                Some(vec![serde_json::from_value(serde_json::json!({"key": "gpu", "operator": "Exists"})).unwrap()]);
        }
        s
    };

    // The tolerant one first: placed on node-gpu, it also proves that the
    // operator's cache has the node, which the refusal below names.
    slabs.create(&PostParams::default(), &on_gpu("tolerant", true)).await.unwrap();
    let ready = until(&slabs, "tolerant", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.unwrap().node_name.as_deref(), Some("node-gpu"));
    let spec = pods.get("tolerant").await.unwrap().spec.unwrap();
    assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("gpu"), "the Pod tolerates it too");

    slabs.create(&PostParams::default(), &on_gpu("intolerant", false)).await.unwrap();
    let rejected = until(&slabs, "intolerant", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(rejected.reason, Some(Reason::Rejected));
    let message = rejected.message.unwrap_or_default();
    assert!(message.starts_with("no node that can run it carries its node selector"), "{message}");
    assert!(message.contains("not offered: node-gpu") && message.contains("taint"), "says what to change: {message}");

    // Untainted nodes stay the only choice for everyone else.
    slabs.create(&PostParams::default(), &slab("elsewhere", "erin")).await.unwrap();
    let placed = until(&slabs, "elsewhere", "ready", phase(Phase::Ready)).await;
    assert_ne!(placed.status.unwrap().node_name.as_deref(), Some("node-gpu"));
    nodes.delete("node-gpu", &DeleteParams::default()).await.unwrap();
}

/// A Node no kubelet (not even kwok) serves, for a test that moves its
/// Pods itself: tainted from its creation so that only backends placed by
/// [`on_unserved`] go there. Create it before the operator starts, so that
/// the operator's first look sees it. Delete it at the end of the test.
async fn unserved_node(plane: &ControlPlane, name: &str) -> Api<Node> {
    let nodes: Api<Node> = Api::all(plane.client().await.unwrap());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"zone": name}},
        "spec": {"taints": [{"key": "spawner.test/unserved", "value": name, "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    nodes
}

/// Creates backend `name` on the [`unserved_node`] `node`, reports its Pod
/// running and ready as a kubelet would, and waits for the backend to be
/// ready.
async fn ready_on_unserved(slabs: &Api<SessionLivedBackend>, pods: &Api<Pod>, name: &str, node: &str) -> SessionLivedBackend {
    slabs.create(&PostParams::default(), &on_unserved(slab(name, "erin"), node)).await.unwrap();
    // Bound by kube-scheduler, to the node the operator's affinity names.
    let bound = |p: Option<&Pod>| p.and_then(|p| p.spec.as_ref()).is_some_and(|s| s.node_name.is_some());
    let placed = tokio::time::timeout(WAIT, await_condition(pods.clone(), name, bound)).await;
    assert!(placed.is_ok(), "never placed: {:?}", slabs.get(name).await.unwrap().status);
    assert_eq!(pods.get(name).await.unwrap().spec.unwrap().node_name.as_deref(), Some(node));
    let running =
        serde_json::json!({"status": {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();
    until(slabs, name, "ready", phase(Phase::Ready)).await
}

/// A ready backend whose Pod stops being ready (its readiness probe fails,
/// its node stops answering) stays `ready` in phase, but its `Ready`
/// condition says the Pod is not, with the Pod's reason, and an Event says
/// so; once the Pod is ready again, so is the condition.
#[tokio::test(flavor = "multi_thread")]
async fn the_ready_condition_follows_a_ready_backends_pod() {
    let plane = shared().await;
    let _nodes = unserved_node(plane, "node-flaky").await;
    let (client, ns) = operator_on(plane, "op-flaky", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = ready_on_unserved(&slabs, &pods, "flaky", "node-flaky").await;
    // Condition times are whole seconds.
    let second_now = || jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let since = ready.status.as_ref().unwrap().ready_condition().unwrap().last_transition_time.clone();
    // A second later, so that a time left as it was cannot pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unready_at = second_now();
    let unready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
        "message": "containers with unready status: [app]"}]}});
    pods.patch_status("flaky", &PatchParams::default(), &Patch::Merge(&unready)).await.unwrap();
    let is_not_ready = |s: &SessionLivedBackendStatus| s.ready_condition().is_some_and(|c| c.status == "False");
    let not_ready = until(&slabs, "flaky", "its condition not ready", is_not_ready).await;
    let status = not_ready.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Ready));
    let c = status.ready_condition().unwrap();
    assert_eq!(c.reason, "PodNotReady");
    assert_eq!(c.message, "its Pod is not ready: ContainersNotReady: containers with unready status: [app]");
    assert!(c.last_transition_time.0 >= unready_at && c.last_transition_time.0 >= since.0, "changed when the Pod did: {c:?}");
    let events = events_until(&client, &ns, "flaky", "PodNotReady").await;
    let event = events.iter().find(|e| e.1 == "PodNotReady").unwrap();
    assert_eq!(event.0, "Warning");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready_again_at = second_now();
    let ready_again = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("flaky", &PatchParams::default(), &Patch::Merge(&ready_again)).await.unwrap();
    let is_ready = |s: &SessionLivedBackendStatus| s.ready_condition().is_some_and(|c| c.status == "True");
    let again = until(&slabs, "flaky", "its condition ready again", is_ready).await;
    let c = again.status.unwrap().ready_condition().unwrap().clone();
    assert_eq!(c.reason, "Ready");
    assert!(c.last_transition_time.0 >= ready_again_at, "changed when the Pod did: {c:?}");
    events_until(&client, &ns, "flaky", "PodReady").await;
}

/// `backend`, placed on the [`unserved_node`] `node`.
fn on_unserved(mut backend: SessionLivedBackend, node: &str) -> SessionLivedBackend {
    backend.spec.template.node_selector = Some([("zone".to_string(), node.to_string())].into());
    let toleration = serde_json::json!({"key": "spawner.test/unserved", "value": node, "operator": "Equal"});
    backend.spec.template.tolerations = Some(vec![serde_json::from_value(toleration).unwrap()]);
    backend
}

/// A container that cannot start (its image cannot be pulled) says why in
/// the Ready condition and the REST view's message while it waits, and in
/// the failure once the startup timeout is over: not "did not listen".
#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_cannot_start_says_why() {
    let plane = shared().await;
    let nodes = unserved_node(plane, "node-nopull").await;
    let config = OperatorConfig { startup_timeout: Duration::from_secs(6), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns) = operator_with(plane, "op-nopull", "", config).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    slabs.create(&PostParams::default(), &on_unserved(slab("typo", "erin"), "node-nopull")).await.unwrap();
    slabs.create(&PostParams::default(), &on_unserved(slab("huge-image", "erin"), "node-nopull")).await.unwrap();
    for name in ["typo", "huge-image"] {
        let placed = tokio::time::timeout(WAIT, await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_some())).await;
        assert!(placed.is_ok(), "never placed: {:?}", slabs.get(name).await.unwrap().status);
    }
    // What a kubelet reports while it is still pulling an image.
    let creating = serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app", "image": "example.invalid/notes:1",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
    pods.patch_status("huge-image", &PatchParams::default(), &Patch::Merge(&creating)).await.unwrap();

    // What a kubelet reports for an image it cannot pull.
    let pulling = serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app", "image": "example.invalid/notes:1",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"example.invalid/notes:1\""}}}]}});
    pods.patch_status("typo", &PatchParams::default(), &Patch::Merge(&pulling)).await.unwrap();
    let noted =
        until(&slabs, "typo", "noted why it waits", |s| s.ready_condition().is_some_and(|c| c.reason == "WaitingForContainer")).await;
    let note = noted.status.as_ref().and_then(|s| s.ready_condition()).unwrap().message.clone();
    assert_eq!(note, "its container has not started: ImagePullBackOff: Back-off pulling image \"example.invalid/notes:1\"");
    assert_eq!(noted.shown_status().message.as_deref(), Some(note.as_str()), "what the REST API shows");

    let failed = until(&slabs, "typo", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout));
    assert_eq!(
        failed.message.as_deref(),
        Some("its container did not start within 6 s: ImagePullBackOff: Back-off pulling image \"example.invalid/notes:1\"")
    );
    // Still being set up: not "did not accept connections", and where the
    // time limit is.
    let failed = until(&slabs, "huge-image", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout));
    let message = failed.message.unwrap_or_default();
    assert!(message.starts_with("its container did not start within 6 s (still ContainerCreating"), "{message}");
    assert!(message.contains("--startup-timeout-seconds"), "{message}");
    nodes.delete("node-nopull", &DeleteParams::default()).await.unwrap();
}

/// An [`unserved_node`] `node` and an operator (namespace named after
/// `prefix`) with a 1 s stop timeout: a node that is lost, as far as the
/// operator can tell.
async fn on_a_lost_node(node: &str, prefix: &str) -> (kube::Client, String, Api<Node>) {
    let plane = shared().await;
    let nodes = unserved_node(plane, node).await;
    let config = OperatorConfig { stop_timeout: Duration::from_secs(1), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns) = operator_with(plane, prefix, "", config).await;
    (client, ns, nodes)
}

/// A backend whose node is lost (nothing there confirms its Pod's stop)
/// still ends: once the stop is overdue, its Pod is deleted without
/// waiting, and the object is released (its key free again).
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_on_a_lost_node_still_ends() {
    let (client, ns, nodes) = on_a_lost_node("node-lost", "op-lost").await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Its kubelet reported it running, then the node was cut off.
    let ready = ready_on_unserved(&slabs, &pods, "stranded", "node-lost").await;

    slabs.delete("stranded", &DeleteParams::default()).await.unwrap();
    let stopping = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), "stranded", |p: Option<&Pod>| p.is_some_and(|p| p.metadata.deletion_timestamp.is_some())),
    )
    .await;
    assert!(stopping.is_ok(), "the Pod was never asked to stop");
    let uid = ready.metadata.uid.clone().unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "stranded", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(
        gone.is_ok(),
        "stuck: {:?}, its Pod {:?}",
        slabs.get_opt("stranded").await.unwrap().map(|s| s.status),
        pods.get_opt("stranded").await.unwrap().map(|p| p.metadata.deletion_timestamp)
    );
    assert!(pods.get_opt("stranded").await.unwrap().is_none());
    let events = events_until(&client, &ns, "stranded", "ForceDeleted").await;
    assert!(events.iter().any(|e| e.0 == "Warning" && e.2.contains("did not confirm its stop")), "{events:?}");
    nodes.delete("node-lost", &DeleteParams::default()).await.unwrap();
}

/// A Pod that another controller's finalizer keeps is deleted without
/// waiting once, saying so, and then waited for: it was deleted again,
/// with a Warning, every second for as long as it was held (found in a
/// failure-injection trial). The backend ends when the finalizer goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_a_foreign_finalizer_holds_is_deleted_once_and_waited_for() {
    let (client, ns, nodes) = on_a_lost_node("node-held", "op-held").await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = ready_on_unserved(&slabs, &pods, "held", "node-held").await;
    let hold = |finalizers: serde_json::Value| serde_json::json!({"metadata": {"finalizers": finalizers}});
    pods.patch("held", &PatchParams::default(), &Patch::Merge(&hold(serde_json::json!(["example.com/hold"])))).await.unwrap();

    slabs.delete("held", &DeleteParams::default()).await.unwrap();
    let events = events_until(&client, &ns, "held", "ForceDeleted").await;
    assert!(events.iter().any(|e| e.2.contains("its finalizers example.com/hold keep it")), "{events:?}");
    // Well past the next overdue point (the stop timeout, 5 s at least,
    // after the forced delete): one forced delete, one Event.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let forced: i32 = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ForceDeleted") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("held"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum();
    assert_eq!(forced, 1);
    let held = pods.get("held").await.unwrap();
    assert_eq!(held.metadata.deletion_grace_period_seconds, Some(0));
    assert_eq!(slabs.get("held").await.unwrap().status.and_then(|s| s.phase), Some(Phase::Terminating));

    pods.patch("held", &PatchParams::default(), &Patch::Merge(&hold(serde_json::Value::Null))).await.unwrap();
    let uid = ready.metadata.uid.clone().unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "held", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(gone.is_ok(), "still there: {:?}", slabs.get_opt("held").await.unwrap().map(|s| s.status));
    nodes.delete("node-held", &DeleteParams::default()).await.unwrap();
}

/// A Pod evicted from a node that is gone (Kubernetes evicts Pods from an
/// unreachable node after five minutes; nothing there confirms it): its
/// backend ends as lost at once, and deleting the backend later does not
/// wait for ever on the Pod.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_evicted_from_a_lost_node_ends_its_backend_and_goes() {
    let (client, ns, nodes) = on_a_lost_node("node-gone", "op-evicted").await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = ready_on_unserved(&slabs, &pods, "evicted", "node-gone").await;

    // The node lifecycle controller's eviction: a graceful delete.
    pods.delete("evicted", &DeleteParams { grace_period_seconds: Some(2), ..DeleteParams::default() }).await.unwrap();
    let lost = until(&slabs, "evicted", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(lost.reason, Some(Reason::Lost), "{lost:?}");

    slabs.delete("evicted", &DeleteParams::default()).await.unwrap();
    let uid = ready.metadata.uid.clone().unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "evicted", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(gone.is_ok(), "stuck: its Pod {:?}", pods.get_opt("evicted").await.unwrap().map(|p| p.metadata.deletion_timestamp));
    assert!(pods.get_opt("evicted").await.unwrap().is_none());
    nodes.delete("node-gone", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_whose_nodes_are_all_cordoned_waits_for_one_instead_of_failing() {
    // A control plane of its own: cordoning every node of the shared one
    // would hold up the other tests.
    let plane = ControlPlane::start(&[FakeNode::new("lone").label("zone", "a"), FakeNode::new("pool").label("zone", "b")]).await.unwrap();
    let client = plane.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let cordon = |name: &'static str, on: bool| {
        let nodes = nodes.clone();
        async move {
            let patch = Patch::Merge(serde_json::json!({"spec": {"unschedulable": on}}));
            nodes.patch(name, &PatchParams::default(), &patch).await.unwrap();
        }
    };
    // The pool a backend's node selector names is drained for maintenance
    // (before the operator starts, so its first look sees the cordon).
    cordon("pool", true).await;
    let (client, ns) = operator_on(&plane, "op-cordon", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Admitted "anywhere": its Pod exists, bound to no node (kube-scheduler
    // decides), and the backend waits instead of failing.
    let waits = |name: &'static str| {
        let (slabs, pods) = (slabs.clone(), pods.clone());
        async move {
            let admitted = tokio::time::timeout(WAIT, await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_some())).await;
            if admitted.is_err() {
                panic!("{name} was never admitted: {:?}", slabs.get(name).await.ok().and_then(|s| s.status));
            }
            let pod = pods.get(name).await.unwrap();
            assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.clone()), None, "{name}: bound to no node");
            let waiting = slabs.get(name).await.unwrap();
            assert!(!waiting.phase().is_terminal(), "{name}: waiting, not failed: {:?}", waiting.status);
            // kube-scheduler's reason shows in the Ready condition (what
            // `kubectl describe slab` and `kubectl wait` show).
            let noted =
                until(&slabs, name, "noted why it waits", |s| s.ready_condition().is_some_and(|c| c.reason == "WaitingForNode")).await;
            let note = noted.status.as_ref().and_then(|s| s.ready_condition()).unwrap().message.clone();
            assert!(note.starts_with("no node can run its Pod yet: ") && note.contains("unschedulable"), "{name}: {note}");
        }
    };

    // The other node could run Pods, but not this one: it waits, as it
    // would for any cordon, rather than being rejected for want of a node.
    let mut drained = slab("drained", "erin");
    drained.spec.template.node_selector = Some([("zone".to_string(), "b".to_string())].into());
    slabs.create(&PostParams::default(), &drained).await.unwrap();
    waits("drained").await;
    // A backend that may run anywhere is placed on the node still open.
    slabs.create(&PostParams::default(), &slab("elsewhere", "erin")).await.unwrap();
    let placed = until(&slabs, "elsewhere", "ready", phase(Phase::Ready)).await;
    assert_eq!(placed.status.unwrap().node_name.as_deref(), Some("lone"));

    // No node can run anything right now (an upgrade drains them one by
    // one, or all at once).
    cordon("lone", true).await;
    slabs.create(&PostParams::default(), &slab("patient", "erin")).await.unwrap();
    waits("patient").await;

    // The nodes come back: each Pod is placed and each backend runs.
    cordon("lone", false).await;
    cordon("pool", false).await;
    let ready = until(&slabs, "drained", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.unwrap().node_name.as_deref(), Some("pool"));
    let ready = until(&slabs, "patient", "ready", phase(Phase::Ready)).await;
    assert!(ready.status.unwrap().node_name.is_some());
}

/// The operator counts only backends against a node's capacity (it does
/// not read other workloads' Pods), so the scheduler plugin may choose a
/// node they filled. kube-scheduler then finds no room there for the Pod,
/// pinned to it: the backend is placed again without that node, each node
/// once, then "anywhere" (kube-scheduler's to place), rather than waiting
/// for the startup timeout beside an empty node.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_whose_node_others_filled_is_placed_again_elsewhere() {
    // A control plane of its own: its nodes' room is this test's.
    let small = FakeNode { cpu: "1".into(), ..FakeNode::new("a-full").label("zone", "a") };
    let plane = ControlPlane::start(&[small, FakeNode::new("b-roomy").label("zone", "b")]).await.unwrap();
    let config = OperatorConfig { retention: HOUR, stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
    let (client, ns, metrics) = operator_with_metrics(&plane, "op-full", "", config).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Another workload's Pod takes most of a-full (bound there directly,
    // as a DaemonSet's are).
    let other = |name: &str, node: &str, cpu: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "x", "image": "example.invalid/x:1", "resources": {"requests": {"cpu": cpu}}}]}
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &other("daemon", "a-full", "800m")).await.unwrap();
    let wants = |name: &str, cpu: &str| {
        let mut backend = slab(name, "erin");
        let requests = serde_json::json!({"requests": {"cpu": cpu}});
        backend.spec.template.containers[0].resources = Some(serde_json::from_value(requests).unwrap());
        backend
    };

    // Both nodes have room as the plugin sees them, and neither has a
    // backend: spreading picks a-full (by name), where there is none.
    let squeezed_at = std::time::Instant::now();
    slabs.create(&PostParams::default(), &wants("squeezed", "500m")).await.unwrap();
    let ready = until(&slabs, "squeezed", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.as_ref().unwrap().node_name.as_deref(), Some("b-roomy"));
    let events = events_until(&client, &ns, "squeezed", "Ready").await;
    let moved: Vec<&(String, String, String)> = events.iter().filter(|e| e.1 == "Rescheduled").collect();
    assert_eq!(moved.len(), 1, "{events:?}");
    assert_eq!(moved[0].0, "Normal");
    let note = &moved[0].2;
    assert!(note.starts_with("its Pod could not run on a-full, the node the scheduler plugin chose (0/2 nodes are available: "), "{note}");
    assert!(note.contains("Insufficient cpu") && note.ends_with("); placing it again without a-full"), "{note}");
    assert!(!events.iter().any(|e| e.1 == "Pending"), "going back is said once, by Rescheduled: {events:?}");
    assert!(pods.get_opt("daemon").await.unwrap().is_some(), "the other workload is left alone");
    // The next as big is not sent to a-full first (it lacked room for
    // this much a moment ago): no move, unless this machine took longer
    // than that memory lasts to get here.
    slabs.create(&PostParams::default(), &wants("next", "500m")).await.unwrap();
    let ready = until(&slabs, "next", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.as_ref().unwrap().node_name.as_deref(), Some("b-roomy"));
    let events = events_until(&client, &ns, "next", "Ready").await;
    let moved = events.iter().filter(|e| e.1 == "Rescheduled").count();
    assert!(moved == 0 || squeezed_at.elapsed() >= spawner::k8s::inventory::LACKING_FOR, "{events:?}");

    // b-roomy fills too (3 of its 4 CPUs), behind the plugin's back: a
    // backend the plugin places on either is moved off both, and then
    // waits for kube-scheduler to find it room (placed "anywhere").
    pods.create(&PostParams::default(), &other("batch", "b-roomy", "3")).await.unwrap();
    slabs.create(&PostParams::default(), &wants("patient", "900m")).await.unwrap();
    let unpinned = |p: Option<&Pod>| p.is_some_and(|p| p.spec.as_ref().is_some_and(|s| s.affinity.is_none()));
    let waited = tokio::time::timeout(WAIT, await_condition(pods.clone(), "patient", unpinned)).await;
    assert!(waited.is_ok(), "never placed anywhere: {:?}", slabs.get("patient").await.unwrap().status);
    let waiting = until(&slabs, "patient", "noted why it waits", |s| {
        s.ready_condition().is_some_and(|c| c.reason == "WaitingForNode") && s.phase == Some(Phase::Starting)
    })
    .await;
    let status = waiting.status.unwrap();
    assert_eq!((status.node_name, status.started_at.is_some()), (None, true), "placed anywhere, its new Pod started");
    let events = events_until(&client, &ns, "patient", "Starting").await;
    let moved: Vec<&str> = events.iter().filter(|e| e.1 == "Rescheduled").map(|e| e.2.as_str()).collect();
    // Off b-roomy; a-full was passed over already if it lacked room for
    // as much within the last 30 s (as it did, unless this machine is very
    // slow), else it is moved off that too: each node once either way.
    assert!(moved.iter().any(|n| n.starts_with("its Pod could not run on b-roomy,")), "{moved:?}");
    assert!(moved.len() == 1 || moved.iter().any(|n| n.starts_with("its Pod could not run on a-full,")), "{moved:?}");
    assert!(moved.len() <= 2, "each node once: {moved:?}");
    // Room made: kube-scheduler places it, and it runs.
    pods.delete("batch", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    let ready = until(&slabs, "patient", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.unwrap().node_name.as_deref(), Some("b-roomy"));

    // A backend only a-full's labels suit: a-full is left out (it lacks
    // room for as much, as seen a moment ago, or it is moved off it), and
    // no other node will do (the plugin refuses b-roomy for the selector),
    // so it is not rejected but waits, "anywhere" within its selector, for
    // room there.
    let mut selective = wants("selective", "500m");
    selective.spec.template.node_selector = Some([("zone".to_string(), "a".to_string())].into());
    slabs.create(&PostParams::default(), &selective).await.unwrap();
    let waited = tokio::time::timeout(WAIT, await_condition(pods.clone(), "selective", unpinned)).await;
    assert!(waited.is_ok(), "never placed anywhere: {:?}", slabs.get("selective").await.unwrap().status);
    let waiting =
        until(&slabs, "selective", "noted why it waits", |s| s.ready_condition().is_some_and(|c| c.reason == "WaitingForNode")).await;
    assert_eq!(waiting.status.unwrap().phase, Some(Phase::Starting));
    pods.delete("daemon", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    let ready = until(&slabs, "selective", "ready", phase(Phase::Ready)).await;
    assert_eq!(ready.status.unwrap().node_name.as_deref(), Some("a-full"));
    // Every move counted (its Event, one per node, is how many there were).
    let mut events = 0;
    for name in ["squeezed", "next", "patient", "selective"] {
        events += events_until(&client, &ns, name, "Ready").await.iter().filter(|e| e.1 == "Rescheduled").count();
    }
    let moves = metrics.encode().lines().find(|l| l.starts_with("spawner_backends_rescheduled_total ")).map(String::from);
    assert_eq!(moves, Some(format!("spawner_backends_rescheduled_total {events}")));

    // Moving a backend is no failure: nothing for on-call.
    let errors: Vec<String> =
        metrics.encode().lines().filter(|l| l.starts_with("spawner_reconcile_errors_total{")).map(String::from).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_no_node_takes_in_time_fails_saying_why() {
    // Its only node stays cordoned (from its creation, so other tests
    // never see it open) past the startup timeout.
    let plane = shared().await;
    plane.add_node(&FakeNode::new("node-maint").label("zone", "maint").cordoned()).await.unwrap();
    // Long enough for kube-scheduler to have said why on a busy machine.
    let config = OperatorConfig { startup_timeout: Duration::from_secs(8), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns, metrics) = operator_with_metrics(plane, "op-unplaced", "", config).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let mut stuck = slab("stuck", "erin");
    stuck.spec.template.node_selector = Some([("zone".to_string(), "maint".to_string())].into());
    slabs.create(&PostParams::default(), &stuck).await.unwrap();

    let failed = until(&slabs, "stuck", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout));
    let message = failed.message.unwrap_or_default();
    assert!(message.starts_with("no node could run its Pod within 8 s: ") && message.contains("unschedulable"), "{message}");
    // Counted once the operator's status write has returned (the watch may
    // show it a moment before).
    let counted = r#"spawner_backends_ended_total{phase="failed",reason="startup-timeout"} 1"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !metrics.encode().lines().any(|l| l == counted) {
        assert!(std::time::Instant::now() < deadline, "{counted} missing:\n{}", metrics.encode());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Api::<Node>::all(client).delete("node-maint", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_elect_one_leader_and_a_standby_takes_over() {
    let plane = shared().await;
    plane.install_crds(&deploy("crd")).await.unwrap();
    let ns = plane.namespace("op-lease").await.unwrap();
    let client = plane.client().await.unwrap();
    let mut replicas = std::collections::HashMap::new();
    let mut stops = std::collections::HashMap::new();
    let mut metrics = std::collections::HashMap::new();
    for identity in ["replica-a", "replica-b"] {
        let plugins = plugins("");
        let config = OperatorConfig { namespace: Some(ns.clone()), stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
        let lease = LeaseSettings {
            namespace: ns.clone(),
            name: "spawner-operator".into(),
            identity: identity.into(),
            duration_seconds: 2,
            grace_seconds: 1,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        stops.insert(identity, stop);
        let m = Arc::new(Metrics::new());
        metrics.insert(identity, m.clone());
        replicas.insert(identity, tokio::spawn(leader::run_elected(Context::new(client.clone(), plugins, m, config), lease, stopped)));
    }
    let leads = |identity: &str| metrics[identity].encode().contains("spawner_leader{lease=\"spawner-operator\"} 1");
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    slabs.create(&PostParams::default(), &slab("one", "dana")).await.unwrap();
    until(&slabs, "one", "ready", phase(Phase::Ready)).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = leases.get("spawner-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert!(replicas.contains_key(holder.as_str()), "held by one of the replicas: {holder}");
    let standby = if holder == "replica-a" { "replica-b" } else { "replica-a" };
    assert!(leads(&holder) && !leads(standby), "the leader's metrics say so, the standby's do not");

    // The leader dies without releasing the Lease; the standby takes over
    // once it expires and serves new backends.
    replicas[holder.as_str()].abort();
    slabs.create(&PostParams::default(), &slab("two", "dana")).await.unwrap();
    until(&slabs, "two", "ready", phase(Phase::Ready)).await;
    let new_holder = leases.get("spawner-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_ne!(new_holder, holder, "the standby holds the Lease now");

    // Stopped (SIGTERM, a rollout), a leader gives the Lease back on its
    // way out, so that the next one need not wait for it to expire.
    let leader = replicas.remove(new_holder.as_str()).unwrap();
    assert!(leads(&new_holder));
    stops.remove(new_holder.as_str()).unwrap().send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), leader).await.expect("stopping took over 10 s").unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(!leads(&new_holder), "stopped, it leads no more");
    let spec = leases.get("spawner-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None, "released: {spec:?}");
}

/// `kubectl delete slab --cascade=orphan`: the garbage collector removes
/// the owner references of the backend's Pod and Service before the
/// operator's finalizer runs (done by hand here: the test control plane
/// runs no garbage collector). They are still the backend's, by its uid
/// label, and go with it instead of running on with no route or sweeper.
#[tokio::test(flavor = "multi_thread")]
async fn an_orphaned_pod_and_service_still_go_with_their_backend() {
    let (client, ns) = operator("op-orphan", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut backend = slab("left", "erin");
    backend.spec.service = Some(true);
    slabs.create(&PostParams::default(), &backend).await.unwrap();
    let ready = until(&slabs, "left", "ready", phase(Phase::Ready)).await;
    let orphan = Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}}));
    pods.patch("left", &PatchParams::default(), &orphan).await.unwrap();
    services.patch("left", &PatchParams::default(), &orphan).await.unwrap();
    slabs.delete("left", &DeleteParams::default()).await.unwrap();
    let uid = ready.metadata.uid.clone().unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "left", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(gone.is_ok(), "the backend was never let go");
    assert!(pods.get_opt("left").await.unwrap().is_none(), "its orphaned Pod runs on");
    assert!(services.get_opt("left").await.unwrap().is_none(), "its orphaned Service stays");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_name_taken_by_something_else_is_reported_and_waited_out() {
    let (client, ns) = operator("op-taken", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create_stranger_pod(&pods, "taken").await;
    slabs.create(&PostParams::default(), &slab("taken", "erin")).await.unwrap();

    let events = events_until(&client, &ns, "taken", "PodNameTaken").await;
    let warning = events.iter().find(|e| e.1 == "PodNameTaken").unwrap();
    assert_eq!(warning.0, "Warning");
    let status = slabs.get("taken").await.unwrap().status;
    assert_ne!(status.and_then(|s| s.phase), Some(Phase::Ready), "never takes over a stranger's Pod");

    // Once the stranger is gone, the backend gets its own Pod.
    pods.delete("taken", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    until(&slabs, "taken", "became ready", phase(Phase::Ready)).await;
    let pod = pods.get("taken").await.unwrap();
    assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "SessionLivedBackend");
}

/// A Pod named `name` that is no backend's.
async fn create_stranger_pod(pods: &Api<Pod>, name: &str) {
    let stranger: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "x", "image": "example.invalid/x:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &stranger).await.unwrap();
}

/// An error that does not go away (here a Pod name something else holds;
/// an admission webhook that is down is another) is retried for the startup
/// timeout, counted from its first failure, and then fails the backend
/// saying why: it no longer stays `pending`, with nobody told, for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_cannot_be_created_for_the_startup_timeout_fails_its_backend() {
    let config = OperatorConfig { startup_timeout: Duration::from_secs(2), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns) = operator_with(shared().await, "op-held", "", config).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create_stranger_pod(&pods, "held").await;
    slabs.create(&PostParams::default(), &slab("held", "erin")).await.unwrap();
    let failed = until(&slabs, "held", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout), "not an exit: no Pod ever ran");
    let message = failed.message.unwrap();
    assert!(
        message.contains(
            "its Pod could not be created within 2 s (--startup-timeout-seconds): a Pod named held exists and is not this backend's"
        ),
        "{message}"
    );
    assert!(pods.get("held").await.unwrap().metadata.owner_references.is_none(), "the stranger's Pod is left alone");
}

/// Its Service, too: here every Service create in the namespace fails with
/// a 500, as when an admission webhook is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_cannot_be_created_for_the_startup_timeout_fails_its_backend() {
    let config = OperatorConfig { startup_timeout: Duration::from_secs(2), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns) = operator_with(shared().await, "op-webhook", "", config).await;
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let down: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ns},
        "webhooks": [{
            "name": "down.spawner.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 1,
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["services"]}]
        }]
    }))
    .unwrap();
    webhooks.create(&PostParams::default(), &down).await.unwrap();
    // The API server picks webhooks up from its own watch, moments later.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let probe: Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "probe"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let mut refused = false;
    for _ in 0..100 {
        if services.create(&dry_run, &probe).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the webhook never took effect");
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let mut with_service = slab("hooked", "erin");
    with_service.spec.service = Some(true);
    slabs.create(&PostParams::default(), &with_service).await.unwrap();
    let failed = until(&slabs, "hooked", "failed", phase(Phase::Failed)).await.status.unwrap();
    webhooks.delete(&ns, &DeleteParams::default()).await.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout));
    let message = failed.message.unwrap();
    assert!(message.contains("its Service could not be created within 2 s (--startup-timeout-seconds): "), "{message}");
    assert!(message.contains("down.spawner.test"), "names the webhook: {message}");
}

/// An earlier backend's Service of the name that is deleted but never goes
/// (a finalizer of someone else's holds it) fails the backend after the
/// startup timeout, saying so, rather than keeping it pending.
#[tokio::test(flavor = "multi_thread")]
async fn a_previous_service_that_never_goes_fails_its_backend() {
    let config = OperatorConfig { startup_timeout: Duration::from_secs(2), retention: HOUR, ..OperatorConfig::default() };
    let (client, ns) = operator_with(shared().await, "op-svc-held", "", config).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let held: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stuck", "finalizers": ["spawner.test/hold"], "ownerReferences": [{
            "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "name": "stuck",
            "uid": "00000000-0000-0000-0000-0000000000bb", "controller": true}]},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "elsewhere"}}
    }))
    .unwrap();
    services.create(&PostParams::default(), &held).await.unwrap();
    services.delete("stuck", &DeleteParams::default()).await.unwrap();
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let mut with_service = slab("stuck", "erin");
    with_service.spec.service = Some(true);
    slabs.create(&PostParams::default(), &with_service).await.unwrap();
    let failed = until(&slabs, "stuck", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::StartupTimeout));
    let release = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    services.patch("stuck", &PatchParams::default(), &release).await.unwrap();
    let message = failed.message.unwrap();
    assert!(
        message.contains(
            "its Service could not be created within 2 s (--startup-timeout-seconds): a previous backend's Service named stuck is still being deleted"
        ),
        "{message}"
    );
}

/// A watch the operator may not make (RBAC revoked; here Pods were never
/// granted) is counted, for alerts, as well as logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_that_fails_is_counted() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let plane = shared().await;
    let (admin, ns) = namespace_on(plane, "op-nopods").await;
    let user = format!("spawner-test-{ns}");
    let role: ClusterRole = serde_json::from_value(serde_json::json!({"metadata": {"name": user}, "rules": [
        {"apiGroups": ["spawner.dev"], "resources": ["sessionlivedbackends", "sessionlivedbackends/status"],
            "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({"metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))
    .unwrap();
    let (roles, bindings) = (Api::<ClusterRole>::all(admin.clone()), Api::<ClusterRoleBinding>::all(admin.clone()));
    roles.create(&PostParams::default(), &role).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let client = plane.client_as(&user, &[]).await.unwrap();
    // The authorizer follows new bindings through its cache.
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..100 {
        if nodes.list(&Default::default()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = start_operator(&client, &ns, "", OperatorConfig::default());
    let counted = async {
        while !metrics.encode().contains("spawner_reconcile_errors_total{error=\"watch\"}") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let seen = tokio::time::timeout(WAIT, counted).await;
    bindings.delete(&user, &DeleteParams::default()).await.unwrap();
    roles.delete(&user, &DeleteParams::default()).await.unwrap();
    assert!(seen.is_ok(), "the failing Pod watch was never counted: {}", metrics.encode());
}

/// A backend created while no operator ran (it was down, or between
/// leaders) is older than the startup timeout when its first reconcile
/// fails: it is retried all the same, not failed for its age.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_created_while_no_operator_ran_is_retried_from_its_first_failure() {
    let (client, ns) = namespace("op-late").await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create_stranger_pod(&pods, "late").await;
    slabs.create(&PostParams::default(), &slab("late", "erin")).await.unwrap();
    // Long enough for kube-scheduler and kwok to start the Pod once it may
    // be created, on a busy machine; the backend is older than it.
    let startup_timeout = Duration::from_secs(8);
    tokio::time::sleep(startup_timeout + Duration::from_secs(1)).await;
    start_operator(&client, &ns, "", OperatorConfig { startup_timeout, retention: HOUR, ..OperatorConfig::default() });

    events_until(&client, &ns, "late", "PodNameTaken").await;
    pods.delete("late", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    let settled = |s: &SessionLivedBackendStatus| s.phase.is_some_and(|p| p.is_terminal() || p == Phase::Ready);
    let ready = until(&slabs, "late", "became ready", settled).await;
    assert_eq!(ready.phase(), Phase::Ready, "{:?}", ready.status);
}

/// Its Service: one of that name that a previous backend of the name owns
/// (a key's, not yet garbage-collected) is replaced, not taken for the
/// backend's own, which it would then lose; one that is nobody's backend's
/// refuses the backend, naming it, rather than routing its traffic
/// elsewhere; a Service the API server refuses fails the backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_of_the_backends_name_is_replaced_or_refused() {
    let (client, ns) = operator("op-svc-taken", "", HOUR).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service = |name: &str, owner: Option<serde_json::Value>| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "elsewhere"}}
        }))
        .unwrap()
    };
    let with_service = |name: &str| {
        let mut s = slab(name, "erin");
        s.spec.service = Some(true);
        s
    };

    let previous = serde_json::json!({"apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "name": "again",
        "uid": "00000000-0000-0000-0000-0000000000aa", "controller": true});
    services.create(&PostParams::default(), &service("again", Some(previous))).await.unwrap();
    slabs.create(&PostParams::default(), &with_service("again")).await.unwrap();
    let ready = until(&slabs, "again", "became ready", phase(Phase::Ready)).await;
    let own = services.get("again").await.unwrap();
    assert_eq!(own.metadata.owner_references.unwrap()[0].uid, ready.metadata.uid.unwrap(), "its own Service");

    services.create(&PostParams::default(), &service("served", None)).await.unwrap();
    slabs.create(&PostParams::default(), &with_service("served")).await.unwrap();
    let failed = until(&slabs, "served", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::Rejected), "refused, not an exit");
    let message = failed.message.unwrap_or_default();
    assert!(message.contains("a Service named served exists and is not this backend's"), "{message}");
    assert!(services.get("served").await.unwrap().metadata.owner_references.unwrap_or_default().is_empty(), "left alone");

    // A Service the API server refuses (here a quota of none; also a name
    // the CRD's rule did not catch, under an older CRD) fails the backend,
    // where it stayed pending with no reason.
    let quota: k8s_openapi::api::core::v1::ResourceQuota =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "no-services"}, "spec": {"hard": {"services": "0"}}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(client.clone(), &ns).create(&PostParams::default(), &quota).await.unwrap();
    // The API server's admission sees a new quota moments later.
    let deadline = tokio::time::Instant::now() + WAIT;
    while services.create(&PostParams::default(), &service("probe", None)).await.is_ok() {
        services.delete("probe", &DeleteParams::default()).await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "the quota never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slabs.create(&PostParams::default(), &with_service("over-quota")).await.unwrap();
    let failed = until(&slabs, "over-quota", "failed", phase(Phase::Failed)).await.status.unwrap();
    assert_eq!(failed.reason, Some(Reason::Rejected), "refused by the API server, not an exit");
    let message = failed.message.unwrap_or_default();
    assert!(message.contains("its Service was refused") && message.contains("quota"), "{message}");
}
