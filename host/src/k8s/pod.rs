//! A backend's Pod: built from its `SessionLivedBackend`, and read back as
//! the lifecycle's [`Workload`]. Pure functions, unit tested below; the
//! controller does the I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ContainerState, ContainerStateTerminated, ContainerStateWaiting, EnvVar, Node, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Probe, Service, ServicePort, ServiceSpec, TCPSocketAction, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use kube::api::ObjectMeta;

use super::crd::SessionLivedBackend;
use crate::lifecycle::{Phase, Status, Workload};
use crate::plugins::types::{Label, Resources};

/// The label every backend Pod (and Service) carries: the backend object's
/// uid (a name may be longer than a label value may be). The controller
/// watches Pods with this label only; a Service selects its Pod by it.
pub const BACKEND_LABEL: &str = "spawner.dev/backend-uid";

/// The Pod for `slab`: named after it, owned by it (so Kubernetes deletes it
/// with the object), required on `node` when the scheduler plugin chose one
/// (a node affinity, so kube-scheduler still checks resources and taints),
/// else wherever kube-scheduler finds a node carrying `selector`. It
/// carries only Spawner's label, never the object's: a user's label must
/// not make a backend an endpoint of some other Service.
///
/// The application (first) container gets `PORT`, `SPAWNER_BACKEND_NAME`
/// and `SPAWNER_BACKEND_KEY` as in local mode, and a TCP readiness probe on
/// the port when it brings none, so the Pod's Ready condition means what
/// local mode's "accepts connections" means; unless the template says
/// otherwise, a failed exit's termination message falls back to the end of
/// its log (`FallbackToLogsOnError`), so the backend's status can say what
/// it wrote last, as local mode's does. The Pod gets no
/// service-account token, no service links, and is never restarted: a
/// backend that exits has ended (reason `exited`, with its code).
pub fn pod_for(slab: &SessionLivedBackend, node: Option<&str>, selector: &[Label], host_domain: Option<&str>) -> Pod {
    let name = slab.metadata.name.clone().unwrap_or_default();
    let port = slab.spec.http_port();
    let labels = backend_labels(slab);
    let mut spec = slab.spec.template.pod_spec();
    spec.restart_policy = Some("Never".into());
    spec.enable_service_links = Some(false);
    if let Some(node) = node {
        let on_node = NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            ..NodeSelectorTerm::default()
        };
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: vec![on_node] }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
    }
    if !selector.is_empty() {
        // The plugin may add labels, never change the template's (the
        // host refuses such an answer; this holds regardless).
        let merged = spec.node_selector.get_or_insert_with(BTreeMap::new);
        for l in selector {
            merged.entry(l.key.clone()).or_insert_with(|| l.value.clone());
        }
    }
    if let Some(app) = spec.containers.first_mut() {
        let env = app.env.get_or_insert_with(Vec::new);
        env.retain(|e| !matches!(e.name.as_str(), "PORT" | "SPAWNER_BACKEND_NAME" | "SPAWNER_BACKEND_KEY" | "SPAWNER_URL_PREFIX"));
        env.push(EnvVar { name: "PORT".into(), value: Some(port.to_string()), ..EnvVar::default() });
        env.push(EnvVar { name: "SPAWNER_BACKEND_NAME".into(), value: Some(name.clone()), ..EnvVar::default() });
        // Where the proxy serves it, as in local mode: its own host's root
        // under host routing, else its path.
        let prefix = if host_domain.is_some() { "/".to_string() } else { format!("/p/{name}/") };
        env.push(EnvVar { name: "SPAWNER_URL_PREFIX".into(), value: Some(prefix), ..EnvVar::default() });
        if let Some(key) = &slab.spec.key {
            env.push(EnvVar { name: "SPAWNER_BACKEND_KEY".into(), value: Some(key.clone()), ..EnvVar::default() });
        }
        app.termination_message_policy.get_or_insert_with(|| "FallbackToLogsOnError".into());
        app.readiness_probe.get_or_insert_with(|| Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port.into()), host: None }),
            period_seconds: Some(1),
            ..Probe::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: slab.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: slab.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn backend_labels(slab: &SessionLivedBackend) -> BTreeMap<String, String> {
    BTreeMap::from([(BACKEND_LABEL.to_string(), slab.metadata.uid.clone().unwrap_or_default())])
}

/// The Service for `slab` when its spec asks for one (`service: true`):
/// same name, owned by the object, selecting its Pod, on its HTTP port.
/// Spawner's proxy does not need it; other in-cluster clients may.
pub fn service_for(slab: &SessionLivedBackend) -> Option<Service> {
    if slab.spec.service != Some(true) {
        return None;
    }
    let name = slab.metadata.name.clone().unwrap_or_default();
    let port = i32::from(slab.spec.http_port());
    Some(Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: slab.metadata.namespace.clone(),
            labels: Some(backend_labels(slab)),
            owner_references: slab.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(backend_labels(slab)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// What the lifecycle sees of a backend's Pod. `None`: there is no Pod,
/// which means "not created yet" until one was started, and "lost" after.
pub fn workload(pod: Option<&Pod>, status: &Status) -> Workload {
    let Some(pod) = pod else {
        return if status.started_at.is_some() && status.phase >= Phase::Starting { Workload::Vanished } else { Workload::Absent };
    };
    let Some(pod_status) = &pod.status else { return Workload::Starting };
    // Ended by someone else, whatever the container's exit code then says
    // (137, or 0 for an application that exits cleanly on SIGTERM): evicted
    // by its kubelet (node pressure), or deleted (`kubectl delete pod`, a
    // drain) while ready, when Spawner stops a ready backend only on a
    // termination request (which the lifecycle then reports instead).
    let evicted = pod_status.reason.as_deref() == Some("Evicted") && status.phase >= Phase::Starting;
    if evicted || (pod.metadata.deletion_timestamp.is_some() && status.phase == Phase::Ready) {
        return Workload::Vanished;
    }
    // The application's exit ends the backend, even while a sidecar keeps
    // the Pod running.
    if let Some(code) = app_exit_code(pod) {
        return Workload::Exited(Some(code));
    }
    match pod_status.phase.as_deref() {
        // Failed with no exit of the application: evicted, or refused by
        // the kubelet (OutOfcpu, ...). Not an exit of its own.
        Some("Failed") if status.phase >= Phase::Starting => Workload::Vanished,
        Some("Succeeded") | Some("Failed") => Workload::Exited(None),
        Some("Running") if is_ready(pod) => Workload::Ready,
        _ => Workload::Starting,
    }
}

/// Whether kube-scheduler's `why` (see [`unschedulable`]) says a node
/// lacked room of the kinds scheduling counts: CPU, memory, or Pods.
/// Another reason (an extended resource such as a GPU, a host port, a
/// volume's zone, a taint) says nothing about other backends' room.
pub fn lacks_room(why: &str) -> bool {
    ["Insufficient cpu", "Insufficient memory", "Too many pods"].iter().any(|r| why.contains(r))
}

/// The node `pod` is required on, when [`pod_for`] pinned it to the
/// scheduler plugin's choice (not yet bound there, or bound).
pub fn pinned_to(pod: &Pod) -> Option<&str> {
    let required = pod.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()?;
    let terms = &required.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    let field = terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|f| f.key == "metadata.name" && f.operator == "In")?;
    match field.values.as_deref()? {
        [node] => Some(node),
        _ => None,
    }
}

/// kube-scheduler's message when it has found no node for `pod` (its
/// `PodScheduled` condition is false with reason `Unschedulable`): it
/// names what kept the Pod off each node. `None` once placed, or before
/// kube-scheduler has looked.
pub fn unschedulable(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))?;
    Some(c.message.clone().filter(|m| !m.trim().is_empty()).unwrap_or_else(|| "no reason given".into()))
}

/// Why the application container has not started, as its kubelet says
/// (`ErrImagePull: …`, `ImagePullBackOff: …`, `CreateContainerConfigError:
/// …`), while that is something other than starting normally. `None`
/// otherwise.
pub fn container_waiting(pod: &Pod) -> Option<String> {
    let waiting = app_waiting(pod)?;
    let reason = waiting.reason.as_deref().filter(|r| !matches!(*r, "" | "ContainerCreating" | "PodInitializing"))?;
    Some(match waiting.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_string(),
    })
}

/// The application container's waiting reason while the kubelet is still
/// setting it up (`ContainerCreating`: pulling its image, mounting its
/// volumes; `PodInitializing`: init containers running), which
/// [`container_waiting`] leaves out because every start passes through it.
pub fn container_creating(pod: &Pod) -> Option<String> {
    app_waiting(pod)?.reason.clone().filter(|r| matches!(r.as_str(), "ContainerCreating" | "PodInitializing"))
}

/// What Kubernetes says ended the backend's Pod or its application, when
/// it was not the application's own doing: the kernel's OOM killer (the
/// container's `OOMKilled`), or the Pod's eviction or preemption (its
/// status reason and message, or its `DisruptionTarget` condition's). An
/// exit code of 137 alone reads as a crash, and an evicted Pod as vanished.
pub fn ended_by(pod: Option<&Pod>) -> Option<String> {
    let pod = pod?;
    if let Some(t) = app_terminated(pod)
        && t.reason.as_deref() == Some("OOMKilled")
    {
        return Some("OOMKilled: it used more memory than its limit allows".into());
    }
    let status = pod.status.as_ref()?;
    let said = |reason: &str, message: Option<&str>| match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_string(),
    };
    if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        return Some(said(reason, status.message.as_deref()));
    }
    let disruption = status.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?;
    Some(said(disruption.reason.as_deref().unwrap_or("DisruptionTarget"), disruption.message.as_deref()))
}

/// Whether the Pod's `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a Pod is not ready, from its `Ready` condition (the kubelet's
/// "containers with unready status: [app]", the node controller's
/// "NodeNotReady"), for a ready backend's status.
pub fn not_ready_why(pod: &Pod) -> String {
    let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let Some(c) = ready else { return "it has no Ready condition".into() };
    match (c.reason.as_deref().filter(|r| !r.is_empty()), c.message.as_deref().filter(|m| !m.trim().is_empty())) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.into(),
        (None, Some(m)) => m.into(),
        (None, None) => format!("Ready is {}", c.status),
    }
}

/// Whether the application container has exited but the Pod runs on
/// (another container keeps it running) and is not being deleted.
pub fn runs_on_after_the_app(pod: &Pod) -> bool {
    let running = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running" | "Pending"));
    running && pod.metadata.deletion_timestamp.is_none() && app_terminated(pod).is_some()
}

/// The exit code of the application (first) container, once it ended.
fn app_exit_code(pod: &Pod) -> Option<i32> {
    app_terminated(pod).map(|t| t.exit_code)
}

/// The application container's termination, once it has exited.
fn app_terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    app_state(pod)?.terminated.as_ref()
}

/// The application container's waiting state, while it has not started.
fn app_waiting(pod: &Pod) -> Option<&ContainerStateWaiting> {
    app_state(pod)?.waiting.as_ref()
}

/// The application (first) container's state, as the kubelet reports it.
fn app_state(pod: &Pod) -> Option<&ContainerState> {
    let app = &pod.spec.as_ref()?.containers.first()?.name;
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find(|s| &s.name == app)?.state.as_ref()
}

/// What the application wrote last, from its termination message (its
/// log's end after a failure; see [`pod_for`]).
pub fn last_output(pod: Option<&Pod>) -> Option<String> {
    let message = app_terminated(pod?)?.message.as_deref()?;
    crate::lifecycle::last_output(message.lines())
}

/// The CPU and memory the application asks for (requests, else limits),
/// as the scheduler plugin sees them; zero where unset or unreadable.
pub fn requests(slab: &SessionLivedBackend) -> Resources {
    let Some(res) = slab.spec.template.containers.first().and_then(|c| c.resources.as_ref()) else {
        return Resources { cpu_millis: 0, memory_bytes: 0 };
    };
    let pick = |key: &str| res.requests.as_ref().and_then(|r| r.get(key)).or_else(|| res.limits.as_ref().and_then(|l| l.get(key)));
    Resources { cpu_millis: pick("cpu").and_then(cpu_millis).unwrap_or(0), memory_bytes: pick("memory").and_then(bytes).unwrap_or(0) }
}

/// A Node's allocatable capacity.
pub fn capacity(allocatable: Option<&BTreeMap<String, Quantity>>) -> Resources {
    Resources {
        cpu_millis: allocatable.and_then(|a| a.get("cpu")).and_then(cpu_millis).unwrap_or(0),
        memory_bytes: allocatable.and_then(|a| a.get("memory")).and_then(bytes).unwrap_or(0),
    }
}

/// `500m` → 500, `2` → 2000, `1.5` → 1500.
fn cpu_millis(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    match s.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => s.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * 1000.0).round() as u64),
    }
}

/// Kubernetes memory quantities: plain bytes, decimal (`k`, `M`, `G`, `T`)
/// and binary (`Ki`, `Mi`, `Gi`, `Ti`) suffixes.
fn bytes(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * factor as f64).round() as u64);
        }
    }
    s.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v.round() as u64)
}

/// The taint kube-scheduler treats a cordoned node as carrying.
const CORDONED: &str = "node.kubernetes.io/unschedulable";

/// Taints Kubernetes puts on a node and takes off by itself: the node's
/// conditions (not ready, unreachable, under pressure, its network not set
/// up), a cloud node not yet initialised, and the cluster autoscaler's mark
/// on a node it is about to remove (it adds another). Like a cordon, they
/// pass (or the node is replaced): a backend waits for them, bounded by the
/// startup timeout, as kube-scheduler would, rather than being rejected.
const PASSING_TAINTS: [&str; 9] = [
    CORDONED,
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "ToBeDeletedByClusterAutoscaler",
];

/// Whether kube-scheduler would run a backend's Pod on a node, as far as
/// the node's own say goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It would.
    Runs,
    /// Only something passing keeps the Pod off: the node's cordon (after
    /// maintenance, an upgrade, it is uncordoned) or a taint of
    /// [`PASSING_TAINTS`] (the node not ready yet, under pressure). It is
    /// worth waiting for.
    Later,
    /// A taint the template does not tolerate, and that Kubernetes will not
    /// lift by itself, keeps the Pod off: the template must change, so
    /// waiting would not help.
    Tainted,
}

/// How `slab`'s Pod fits `node`: the template must tolerate every taint
/// that keeps Pods off (`NoSchedule`, `NoExecute`; `PreferNoSchedule` is
/// only a preference), a cordon counting as the
/// `node.kubernetes.io/unschedulable` taint. Nodes that do not fit are not
/// offered to the scheduler plugin: a Pod placed there would stay pending.
/// (Tolerations a namespace adds by default, through the
/// PodTolerationRestriction admission plugin, are not known here: a backend
/// relying on them needs them in its template.)
pub fn fit(slab: &SessionLivedBackend, node: &Node) -> Fit {
    let Some(spec) = &node.spec else { return Fit::Runs };
    let tolerations = slab.spec.template.tolerations.as_deref().unwrap_or_default();
    let tolerated =
        |taint: &Taint| !(taint.effect == "NoSchedule" || taint.effect == "NoExecute") || tolerations.iter().any(|t| tolerates(t, taint));
    let mut blocking = spec.taints.iter().flatten().filter(|t| !tolerated(t)).peekable();
    let tainted = blocking.peek().is_some();
    if blocking.any(|t| !PASSING_TAINTS.contains(&t.key.as_str())) {
        return Fit::Tainted;
    }
    let cordon = Taint { key: CORDONED.into(), effect: "NoSchedule".into(), ..Taint::default() };
    if tainted || (spec.unschedulable == Some(true) && !tolerated(&cordon)) {
        return Fit::Later;
    }
    Fit::Runs
}

/// Kubernetes' rule (`Toleration.ToleratesTaint`): the effect matches (or
/// the toleration names none), the key matches (or it names none, which
/// only `Exists` may: every taint), and the value is equal (`Equal`, also
/// when the operator is empty) or anything (`Exists`). Checked valid
/// first by [`toleration_problem`], as the API server checks a Pod's.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    let key = toleration.key.as_deref().unwrap_or_default();
    if (!effect.is_empty() && effect != taint.effect) || (!key.is_empty() && key != taint.key) {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "Exists" => true,
        "" | "Equal" => toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}

/// What is wrong with the template's tolerations, by the rules the API
/// server applies to a Pod's (which it would only apply when the Pod is
/// created, after scheduling), naming the entry: so a typo is reported as
/// such, not as "no node tolerated".
pub fn toleration_problem(slab: &SessionLivedBackend) -> Option<String> {
    slab.spec.template.tolerations.iter().flatten().enumerate().find_map(|(i, t)| {
        let problem = from_k8s(t).problem()?;
        Some(format!("template.tolerations[{i}]: {problem}"))
    })
}

/// A volume of the template that would give the backend cluster
/// credentials: a projected service-account token (the token Spawner keeps
/// out of backend Pods with `automountServiceAccountToken: false`, asked
/// for by hand). Such a backend is rejected, naming the volume.
pub fn credential_problem(slab: &SessionLivedBackend) -> Option<String> {
    slab.spec.template.volumes.iter().flatten().enumerate().find_map(|(i, v)| {
        let sources = v.projected.as_ref()?.sources.as_ref()?;
        sources.iter().any(|s| s.service_account_token.is_some()).then(|| {
            format!(
                "template.volumes[{i}] ({}): a serviceAccountToken projection would give the backend Kubernetes credentials, which backend Pods never get",
                v.name
            )
        })
    })
}

/// The API's toleration as the Pod's (the same fields).
pub fn to_k8s(t: &crate::backends::Toleration) -> Toleration {
    let text = |s: &String| (!s.is_empty()).then(|| s.clone());
    Toleration {
        key: text(&t.key),
        operator: text(&t.operator),
        value: text(&t.value),
        effect: text(&t.effect),
        toleration_seconds: t.toleration_seconds,
    }
}

/// The Pod's toleration as the API's, to check it by the same rules.
fn from_k8s(t: &Toleration) -> crate::backends::Toleration {
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    crate::backends::Toleration {
        key: text(&t.key),
        operator: text(&t.operator),
        value: text(&t.value),
        effect: text(&t.effect),
        toleration_seconds: t.toleration_seconds,
    }
}

/// Whether `node` carries every label of `selector`.
pub fn carries(node: &Node, selector: &[Label]) -> bool {
    let labels = node.metadata.labels.as_ref();
    selector.iter().all(|s| labels.and_then(|l| l.get(&s.key)) == Some(&s.value))
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus};

    use super::*;

    fn slab() -> SessionLivedBackend {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
            "metadata": {"name": "notes-1", "namespace": "ns", "uid": "u-1", "labels": {"team": "docs"}},
            "spec": {
                "template": {"containers": [
                    {"name": "app", "image": "example/app:1", "env": [{"name": "PORT", "value": "1"}, {"name": "MODE", "value": "x"}],
                     "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
                    {"name": "sidecar", "image": "example/side:1"}
                ]},
                "httpPort": 3000, "key": "doc-1"
            }
        }))
        .unwrap()
    }

    fn env(pod: &Pod) -> Vec<(String, String)> {
        let app = &pod.spec.as_ref().unwrap().containers[0];
        app.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
    }

    #[test]
    fn the_pod_is_owned_labelled_placed_and_told_its_port() {
        let pod = pod_for(&slab(), Some("node-a"), &[], None);
        assert_eq!(pod.metadata.name.as_deref(), Some("notes-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels, &BTreeMap::from([(BACKEND_LABEL.to_string(), "u-1".to_string())]), "only Spawner's label");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("SessionLivedBackend", "u-1", Some(true)));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name, None, "kube-scheduler binds it, within the affinity");
        let required = spec.affinity.as_ref().unwrap().node_affinity.as_ref().unwrap();
        let term = &required.required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms[0];
        let field = &term.match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (field.key.as_str(), field.operator.as_str(), field.values.as_deref()),
            ("metadata.name", "In", Some(&["node-a".to_string()][..]))
        );
        assert_eq!(pinned_to(&pod), Some("node-a"));
        assert_eq!(pinned_to(&pod_for(&slab(), None, &[], None)), None, "placed anywhere");
        assert_eq!(spec.automount_service_account_token, Some(false), "backend pods get no cluster credentials");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            env(&pod),
            [
                ("MODE", "x"),
                ("PORT", "3000"),
                ("SPAWNER_BACKEND_NAME", "notes-1"),
                ("SPAWNER_URL_PREFIX", "/p/notes-1/"),
                ("SPAWNER_BACKEND_KEY", "doc-1")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // Under host routing a backend is served at its host's root, as in
        // local mode; a value in the template is Spawner's to set.
        let mut s = slab();
        let app_env = s.spec.template.containers[0].env.get_or_insert_with(Vec::new);
        app_env.push(EnvVar { name: "SPAWNER_URL_PREFIX".into(), value: Some("/mine/".into()), ..EnvVar::default() });
        let hosted = env(&pod_for(&s, None, &[], Some("apps.example.com")));
        assert_eq!(
            hosted.iter().filter(|(k, _)| k == "SPAWNER_URL_PREFIX").collect::<Vec<_>>(),
            [&("SPAWNER_URL_PREFIX".to_string(), "/".to_string())]
        );
        let probe = spec.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(probe.tcp_socket.as_ref().unwrap().port, IntOrString::Int(3000));
        assert_eq!(spec.containers[0].termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        assert!(spec.containers[1].readiness_probe.is_none() && spec.containers[1].env.is_none(), "only the application is changed");
        assert!(spec.containers[1].termination_message_policy.is_none());
    }

    #[test]
    fn a_service_only_when_asked_for_selecting_the_pod() {
        let mut s = slab();
        assert!(service_for(&s).is_none());
        s.spec.service = Some(true);
        let svc = service_for(&s).unwrap();
        let pod = pod_for(&s, None, &[], None);
        let selector = svc.spec.as_ref().unwrap().selector.as_ref().unwrap();
        let pod_labels = pod.metadata.labels.as_ref().unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the Pod");
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.target_port.clone()), (3000, Some(IntOrString::Int(3000))));
        assert_eq!(svc.metadata.owner_references.unwrap()[0].uid, "u-1");
    }

    #[test]
    fn anywhere_leaves_the_node_to_kube_scheduler_with_the_selector() {
        let pod = pod_for(&slab(), None, &[Label { key: "zone".into(), value: "b".into() }], None);
        let spec = pod.spec.unwrap();
        assert!(spec.affinity.is_none());
        assert_eq!(spec.node_selector.unwrap()["zone"], "b");

        // The template's own selector stays, with the plugin's added.
        let mut s = slab();
        s.spec.template.node_selector = Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        let pod =
            pod_for(&s, None, &[Label { key: "zone".into(), value: "b".into() }, Label { key: "disk".into(), value: "hdd".into() }], None);
        let selector = pod.spec.unwrap().node_selector.unwrap();
        assert_eq!(
            selector,
            BTreeMap::from([("disk".to_string(), "ssd".to_string()), ("zone".to_string(), "b".to_string())]),
            "added to, never changed"
        );
    }

    #[test]
    fn kube_schedulers_reason_for_finding_no_node_is_read_from_the_pod() {
        let with = |reason: &str, status: &str, message: Option<&str>| Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: message.map(Into::into),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let why = "0/2 nodes are available: 2 node(s) were unschedulable.";
        assert_eq!(unschedulable(&with("Unschedulable", "False", Some(why))).as_deref(), Some(why));
        assert_eq!(unschedulable(&with("Unschedulable", "False", None)).as_deref(), Some("no reason given"));
        assert_eq!(unschedulable(&with("SchedulingGated", "False", Some("gated"))), None, "another reason");
        assert_eq!(unschedulable(&with("", "True", None)), None, "placed");
        assert_eq!(unschedulable(&Pod::default()), None, "not looked at yet");
        assert!(lacks_room("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't satisfy plugin(s) [NodeAffinity]."));
        assert!(lacks_room("0/1 nodes are available: 1 Insufficient memory."));
        assert!(lacks_room("0/1 nodes are available: 1 Too many pods."));
        assert!(!lacks_room("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."), "not what scheduling counts");
        assert!(!lacks_room("0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: x}."));
    }

    #[test]
    fn only_nodes_whose_taints_are_tolerated_can_run_the_backend() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Taint::default()
        };
        let node = |taints: Vec<Taint>, cordoned: bool| Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec { taints: Some(taints), unschedulable: Some(cordoned), ..Default::default() }),
            ..Node::default()
        };
        let toleration = |key: Option<&str>, operator: Option<&str>, value: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: operator.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Toleration::default()
        };
        let with = |tolerations: Vec<Toleration>| {
            let mut s = slab();
            s.spec.template.tolerations = Some(tolerations);
            s
        };
        let gpu = node(vec![taint("gpu", Some("true"), "NoSchedule")], false);
        let control_plane = node(vec![taint("node-role.kubernetes.io/control-plane", None, "NoSchedule")], false);

        let runs = |s: &SessionLivedBackend, n: &Node| fit(s, n) == Fit::Runs;
        assert!(runs(&slab(), &Node::default()) && runs(&slab(), &node(vec![], false)));
        assert_eq!(fit(&slab(), &node(vec![], true)), Fit::Later, "worth waiting for");
        assert_eq!(fit(&slab(), &gpu), Fit::Tainted, "the template must change");
        assert!(!runs(&slab(), &gpu) && !runs(&slab(), &control_plane));
        assert!(runs(&slab(), &node(vec![taint("spot", None, "PreferNoSchedule")], false)), "a preference only");

        assert!(runs(&with(vec![toleration(Some("gpu"), None, Some("true"), None)]), &gpu), "Equal by default, any effect");
        assert!(runs(&with(vec![toleration(Some("gpu"), Some("Exists"), None, Some("NoSchedule"))]), &gpu));
        assert!(!runs(&with(vec![toleration(Some("gpu"), Some("Equal"), Some("false"), None)]), &gpu), "other value");
        assert!(!runs(&with(vec![toleration(Some("gpu"), Some("Exists"), None, Some("NoExecute"))]), &gpu), "other effect");
        assert!(!runs(&with(vec![toleration(Some("gpu"), None, Some("true"), None)]), &control_plane), "other key");
        assert!(runs(&with(vec![toleration(None, Some("Exists"), None, None)]), &control_plane), "tolerates everything");
        assert!(runs(&with(vec![toleration(Some("gpu"), Some(""), Some("true"), None)]), &gpu), "an empty operator is Equal");
        assert!(runs(&with(vec![toleration(Some(CORDONED), Some("Exists"), None, None)]), &node(vec![], true)), "cordon tolerated");
        let both = node(vec![taint("gpu", Some("true"), "NoSchedule"), taint("zone-down", None, "NoExecute")], false);
        assert!(!runs(&with(vec![toleration(Some("gpu"), Some("Exists"), None, None)]), &both), "every taint must be tolerated");
        let cordoned_gpu = node(vec![taint("gpu", Some("true"), "NoSchedule")], true);
        assert_eq!(fit(&slab(), &cordoned_gpu), Fit::Tainted, "a taint outranks a cordon: uncordoning would not help");
        // Taints Kubernetes lifts by itself are waited for, like a cordon;
        // one tolerated is no obstacle, and another beside it still is.
        let not_ready = taint("node.kubernetes.io/not-ready", None, "NoExecute");
        let starting =
            node(vec![not_ready.clone(), taint("node.cloudprovider.kubernetes.io/uninitialized", Some("true"), "NoSchedule")], false);
        assert_eq!(fit(&slab(), &starting), Fit::Later, "a node that joins or reboots");
        assert_eq!(fit(&slab(), &node(vec![taint("node.kubernetes.io/disk-pressure", None, "NoSchedule")], false)), Fit::Later);
        assert!(runs(
            &with(vec![toleration(Some("node.kubernetes.io/not-ready"), Some("Exists"), None, None)]),
            &node(vec![not_ready.clone()], false)
        ));
        assert_eq!(fit(&slab(), &node(vec![not_ready, taint("gpu", Some("true"), "NoSchedule")], false)), Fit::Tainted);

        let pod = pod_for(&with(vec![toleration(Some("gpu"), Some("Exists"), None, None)]), None, &[], None);
        assert_eq!(pod.spec.unwrap().tolerations.unwrap()[0].key.as_deref(), Some("gpu"), "and the Pod carries them");

        // Typos are reported as such, naming the entry.
        let problem = |t: Toleration| toleration_problem(&with(vec![toleration(Some("gpu"), Some("Exists"), None, None), t]));
        assert_eq!(problem(toleration(Some("gpu"), None, Some("true"), Some("NoSchedule"))), None);
        assert_eq!(problem(toleration(None, Some("Exists"), None, None)), None);
        let p = problem(toleration(Some("gpu"), Some("exists"), None, None)).unwrap();
        assert!(p.starts_with("template.tolerations[1]: operator must be Equal or Exists"), "{p}");
        assert!(problem(toleration(Some("gpu"), Some("Exists"), None, Some("NoSchedul"))).unwrap().contains("effect must be"));
        assert!(problem(toleration(None, Some("Equal"), None, None)).unwrap().contains("empty key requires operator Exists"));
        assert!(problem(toleration(Some("gpu"), Some("Exists"), Some("true"), None)).unwrap().contains("value must be empty"));
    }

    fn pod_in(phase: &str, ready: bool, exit: Option<i32>) -> Pod {
        let mut pod = pod_for(&slab(), None, &[], None);
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            container_statuses: exit.map(|code| {
                vec![ContainerStatus {
                    name: "app".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated { exit_code: code, ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn a_container_that_cannot_start_says_why_and_one_starting_normally_does_not() {
        let waiting = |reason: &str, message: Option<&str>| {
            let mut pod = pod_in("Pending", false, None);
            pod.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
                name: "app".into(),
                state: Some(ContainerState {
                    waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: message.map(Into::into),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            container_waiting(&pod)
        };
        assert_eq!(waiting("ErrImagePull", Some("not found")), Some("ErrImagePull: not found".into()));
        assert_eq!(waiting("CreateContainerConfigError", None), Some("CreateContainerConfigError".into()));
        assert_eq!(waiting("ContainerCreating", None), None);
        assert_eq!(container_waiting(&pod_in("Running", true, None)), None);
    }

    #[test]
    fn what_ended_a_pod_is_read_from_kubernetes() {
        assert_eq!(ended_by(Some(&pod_in("Failed", false, Some(1)))), None, "a crash of its own");
        let mut oom = pod_in("Failed", false, Some(137));
        let statuses = oom.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
        statuses[0].state.as_mut().unwrap().terminated.as_mut().unwrap().reason = Some("OOMKilled".into());
        assert_eq!(ended_by(Some(&oom)).as_deref(), Some("OOMKilled: it used more memory than its limit allows"));
        let mut evicted = pod_in("Failed", false, None);
        let status = evicted.status.as_mut().unwrap();
        status.reason = Some("Evicted".into());
        status.message = Some("The node was low on resource: memory. ".into());
        assert_eq!(ended_by(Some(&evicted)).as_deref(), Some("Evicted: The node was low on resource: memory."));
        let mut preempted = pod_in("Running", true, None);
        preempted.status.as_mut().unwrap().conditions.as_mut().unwrap().push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("PreemptionByScheduler".into()),
            message: Some("Preempted in order to admit critical pod".into()),
            ..Default::default()
        });
        assert_eq!(ended_by(Some(&preempted)).as_deref(), Some("PreemptionByScheduler: Preempted in order to admit critical pod"));
    }

    #[test]
    fn a_projected_service_account_token_is_refused() {
        let mut s = slab();
        assert_eq!(credential_problem(&s), None);
        s.spec.template.volumes = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "config", "configMap": {"name": "editor"}})).unwrap(),
            serde_json::from_value(serde_json::json!({"name": "kube", "projected": {"sources": [
                {"configMap": {"name": "ca"}}, {"serviceAccountToken": {"path": "token"}}
            ]}}))
            .unwrap(),
        ]);
        let problem = credential_problem(&s).unwrap();
        assert!(problem.starts_with("template.volumes[1] (kube): a serviceAccountToken projection"), "{problem}");
    }

    #[test]
    fn pods_read_as_workloads() {
        let mut status = Status::new(Timestamp::UNIX_EPOCH);
        status.phase = Phase::Scheduled;
        assert_eq!(workload(None, &status), Workload::Absent, "not created yet");
        assert_eq!(workload(Some(&pod_for(&slab(), None, &[], None)), &status), Workload::Starting, "no status yet");
        assert_eq!(workload(Some(&pod_in("Pending", false, None)), &status), Workload::Starting);
        assert_eq!(workload(Some(&pod_in("Running", false, None)), &status), Workload::Starting, "running, not ready");
        assert_eq!(workload(Some(&pod_in("Running", true, None)), &status), Workload::Ready);
        assert_eq!(workload(Some(&pod_in("Failed", false, Some(3))), &status), Workload::Exited(Some(3)));
        assert_eq!(workload(Some(&pod_in("Succeeded", false, Some(0))), &status), Workload::Exited(Some(0)));
        assert_eq!(workload(Some(&pod_in("Running", true, Some(2))), &status), Workload::Exited(Some(2)), "app exited, sidecar runs on");
        assert!(runs_on_after_the_app(&pod_in("Running", true, Some(2))), "to be stopped once the backend has ended");
        assert!(!runs_on_after_the_app(&pod_in("Failed", false, Some(3))), "over: kept for its logs");
        assert!(!runs_on_after_the_app(&pod_in("Running", true, None)), "the app runs: the lifecycle's to stop");
        assert_eq!(workload(Some(&pod_in("Failed", false, None)), &status), Workload::Exited(None), "refused before it started");
        status.phase = Phase::Ready;
        status.started_at = Some(Timestamp::UNIX_EPOCH);
        assert_eq!(workload(None, &status), Workload::Vanished, "was started, now gone");
        assert_eq!(workload(Some(&pod_in("Failed", false, None)), &status), Workload::Vanished, "evicted: lost, not exited");
        // Evicted or deleted by someone else: lost, though the kubelet
        // recorded the container's exit on the way.
        let mut evicted = pod_in("Failed", false, Some(137));
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        assert_eq!(workload(Some(&evicted), &status), Workload::Vanished);
        let mut deleted = pod_in("Running", true, Some(0));
        deleted.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
        assert_eq!(workload(Some(&deleted), &status), Workload::Vanished);
        // Stopped by Spawner: its exit is the stop's.
        status.phase = Phase::Terminating;
        assert_eq!(workload(Some(&deleted), &status), Workload::Exited(Some(0)));
    }

    #[test]
    fn the_last_output_comes_from_the_apps_termination_message() {
        let mut pod = pod_in("Failed", false, Some(1));
        assert_eq!(last_output(Some(&pod)), None, "no message");
        let statuses = pod.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
        let terminated = statuses[0].state.as_mut().unwrap().terminated.as_mut().unwrap();
        terminated.message = Some("Traceback (most recent call last):\n  File \"app.py\", line 1\nKeyError: 'PORT'\n".into());
        assert_eq!(
            last_output(Some(&pod)).as_deref(),
            Some("Traceback (most recent call last): | File \"app.py\", line 1 | KeyError: 'PORT'")
        );
        assert_eq!(last_output(None), None);
    }

    #[test]
    fn quantities_read_as_the_scheduler_sees_them() {
        assert_eq!(requests(&slab()), Resources { cpu_millis: 250, memory_bytes: 128 << 20 });
        let q = |s: &str| Quantity(s.into());
        assert_eq!(
            [cpu_millis(&q("2")), cpu_millis(&q("1.5")), cpu_millis(&q("100m")), cpu_millis(&q("x"))],
            [Some(2000), Some(1500), Some(100), None]
        );
        assert_eq!(
            [bytes(&q("1Gi")), bytes(&q("2G")), bytes(&q("512")), bytes(&q("1.5Ki")), bytes(&q("-1"))],
            [Some(1 << 30), Some(2_000_000_000), Some(512), Some(1536), None]
        );
        let allocatable = BTreeMap::from([("cpu".to_string(), q("4")), ("memory".to_string(), q("16Gi"))]);
        assert_eq!(capacity(Some(&allocatable)), Resources { cpu_millis: 4000, memory_bytes: 16 << 30 });
    }
}
