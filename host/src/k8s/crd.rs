//! The `SessionLivedBackend` custom resource (`spawner.dev/v1`, short name
//! `slab`): what a backend is on Kubernetes.
//!
//! The spec keeps the original Spawner's fields and shapes (`template` with
//! `containers`, `imagePullSecrets` and `volumes`; `gracePeriodSeconds`;
//! `httpPort`), so a manifest written for the original applies unchanged,
//! and adds what users asked for since: `key`, `owner`,
//! `lifetimeLimitSeconds`, `service`, and the template's `nodeSelector`
//! and `tolerations`. The object's own labels are the
//! labels plugins see, as they are in local mode.
//!
//! The status carries everything the shared [`lifecycle`](crate::lifecycle)
//! records (so a reconcile can rebuild the lifecycle's view from the object
//! alone, after a crash at any line), plus what Kubernetes users read:
//! `nodeName`, `podIP`, `url` and a `Ready` condition.
//!
//! `deploy/crd/sessionlivedbackend.yaml` is generated from these types by
//! `spawner crd`; a test fails when the two differ.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, LocalObjectReference, PodSpec, Toleration, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt as _, KubeSchema, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backends::MAX_KEY_LEN;
use crate::lifecycle::{Phase, Reason, Status};
use crate::plugins::types::{Backend, Label};

/// The API group.
pub const GROUP: &str = "spawner.dev";
/// The port the application listens on when the spec does not say
/// (the original Spawner's default).
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// The condition type that mirrors the `ready` phase.
pub const READY_CONDITION: &str = "Ready";

/// The `Ready` condition's reason while kube-scheduler finds no node for
/// the backend's Pod.
pub const WAITING_FOR_NODE: &str = "WaitingForNode";

/// The `Ready` condition's reason while the backend's container cannot
/// start (its image cannot be pulled, its configuration is refused).
pub const WAITING_FOR_CONTAINER: &str = "WaitingForContainer";
/// The `Ready` condition's reason while a ready backend's Pod is not ready.
pub const POD_NOT_READY: &str = "PodNotReady";

/// What a session-lived backend runs, and how long it may live.
///
/// What makes the backend what it is cannot change once it exists (CEL
/// transition rules, so `kubectl edit` is refused with the reason): the
/// Pod was made from the template and probed on `httpPort`, the proxy
/// routes by `httpPort`, a key names one backend, and quotas counted the
/// owner. The grace period and lifetime limit may change: they are read
/// afresh at every sweep.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "spawner.dev",
    version = "v1",
    kind = "SessionLivedBackend",
    shortname = "slab",
    namespaced,
    status = "SessionLivedBackendStatus",
    derive = "PartialEq",
    doc = "A session-lived backend: a Pod dedicated to one user or document, reached through Spawner's proxy and terminated when it falls idle.",
    // A Service is named like its backend, and Service names are DNS-1035
    // labels: refused at `kubectl apply`, with the reason, rather than a
    // backend that fails when its Service is refused.
    validation = Rule::new("!has(self.spec.service) || !self.spec.service || (size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))")
        .message("a backend with service: true needs a name that is also a Service name: at most 63 characters, lower-case letters, digits and '-', starting with a letter (no dots)"),
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Where the backend is in its life"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Whether it answers now (its Pod is ready)"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.reason", "description": "Why it ended or is ending"}"#,
    printcolumn = r#"{"name": "Waiting", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason", "description": "Why it is not ready (WaitingForNode, WaitingForContainer, PodNotReady, ...)", "priority": 1}"#,
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".status.nodeName", "description": "The node it runs on"}"#,
    printcolumn = r#"{"name": "Owner", "type": "string", "jsonPath": ".spec.owner", "description": "The user it is for"}"#,
    printcolumn = r#"{"name": "Key", "type": "string", "jsonPath": ".spec.key", "description": "Its get-or-create key", "priority": 1}"#,
    printcolumn = r#"{"name": "URL", "type": "string", "jsonPath": ".status.url", "description": "What the browser opens", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.template == oldSelf.template").message("template cannot change: the backend's Pod runs what it was created with; create a new backend instead"))]
#[x_kube(validation = Rule::new("has(self.httpPort) == has(oldSelf.httpPort) && (!has(self.httpPort) || self.httpPort == oldSelf.httpPort)").message("httpPort cannot change: the Pod was probed on the port it was created with, and the proxy would route elsewhere"))]
#[x_kube(validation = Rule::new("has(self.key) == has(oldSelf.key) && (!has(self.key) || self.key == oldSelf.key)").message("key cannot change: a key names one backend, and another backend may already have the new one"))]
#[x_kube(validation = Rule::new("has(self.owner) == has(oldSelf.owner) && (!has(self.owner) || self.owner == oldSelf.owner)").message("owner cannot change: quotas counted the backend for the owner it was created for"))]
#[x_kube(validation = Rule::new("has(self.service) == has(oldSelf.service) && (!has(self.service) || self.service == oldSelf.service)").message("service cannot change: the Service is made (or not) when the Pod is"))]
#[serde(rename_all = "camelCase")]
pub struct SessionLivedBackendSpec {
    /// What the backend's Pod runs. The first container is the application.
    pub template: BackendPodTemplate,

    /// Seconds the backend may stay without connections before it is
    /// terminated (the idle plugin decides; the default plugin uses this).
    /// Default: `spawner proxy --default-grace-seconds` (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub grace_period_seconds: Option<u32>,

    /// The application container's HTTP port. Default: 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub http_port: Option<u16>,

    /// Get-or-create key (a document id, a room), passed to the backend and
    /// to plugins. For at most one backend per key, name the object after
    /// the key: the API server refuses a second object of the same name.
    /// No spaces or control characters, as the REST API requires.
    // The pattern is RE2's, which the API server checks: `\p{Z}` and
    // `\p{Cc}` cover Rust's `char::is_whitespace` and `is_control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_KEY_LEN), regex(pattern = r"^[^\p{Z}\p{Cc}]+$"))]
    pub key: Option<String>,

    /// The user the backend is for (plugins see it, e.g. for quotas). No
    /// control characters, as the REST API requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[^\p{Cc}]+$"))]
    pub owner: Option<String>,

    /// Seconds after which the backend is terminated however busy it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lifetime_limit_seconds: Option<u64>,

    /// Also create a Service for the Pod (the proxy itself routes to the Pod
    /// IP and needs none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
}

/// The part of a Pod spec a backend sets: the original Spawner's template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendPodTemplate {
    /// Containers to run; the first is the application.
    #[schemars(length(min = 1))]
    pub containers: Vec<Container>,

    /// Secrets for pulling the images from private registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// Volumes the containers mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// Labels a node must carry to run the backend (the Pod's
    /// `nodeSelector`). The scheduler plugin sees them too, and the default
    /// one only considers nodes that carry them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the backend tolerates (the Pod's `tolerations`). A node with
    /// a `NoSchedule` or `NoExecute` taint not tolerated here is not offered
    /// to the scheduler plugin, as kube-scheduler would not run the Pod there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

impl BackendPodTemplate {
    /// The Pod spec these fields describe, and nothing else; no
    /// service-account token is mounted. What else a template may ask for
    /// (volumes, privileges) is for the namespace's Pod Security level to
    /// decide: deploy/ puts backends in a `restricted` namespace.
    pub fn pod_spec(&self) -> PodSpec {
        PodSpec {
            containers: self.containers.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
            volumes: self.volumes.clone(),
            node_selector: self.node_selector.clone().filter(|s| !s.is_empty()),
            tolerations: self.tolerations.clone(),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }
    }

    /// The node selector as the scheduler plugin's labels.
    pub fn node_selector_labels(&self) -> Vec<Label> {
        self.node_selector.iter().flatten().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect()
    }
}

impl SessionLivedBackendSpec {
    /// The application's port (`httpPort`, default 8080).
    pub fn http_port(&self) -> u16 {
        self.http_port.unwrap_or(DEFAULT_HTTP_PORT)
    }
}

impl SessionLivedBackend {
    /// The labels plugins see: the object's own labels.
    pub fn plugin_labels(&self) -> BTreeMap<String, String> {
        self.metadata.labels.clone().unwrap_or_default()
    }

    /// The lifecycle status the object records, or `pending` since its
    /// creation before the operator has written one.
    pub fn lifecycle_status(&self) -> Status {
        self.status
            .as_ref()
            .and_then(SessionLivedBackendStatus::lifecycle)
            .unwrap_or_else(|| Status::new(self.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0)))
    }

    /// The status as the REST API shows it: the lifecycle's, and while the
    /// Pod waits for a node or a container, or a ready backend's Pod is not
    /// ready, the `Ready` condition's note on why (see
    /// [`SessionLivedBackendStatus::waiting_for_node`]) as its message, so
    /// a web developer watching a backend is told what holds it.
    ///
    /// A live backend asked to end is shown `terminating` (see
    /// [`Self::shown_phase`]), with the request's reason and message.
    pub fn shown_status(&self) -> Status {
        let mut status = self.lifecycle_status();
        if self.shown_phase() != status.phase {
            let asked = crate::k8s::cluster::termination_requested(self);
            status.phase = Phase::Terminating;
            status.reason = Some(asked.as_ref().map_or(Reason::Requested, |a| a.reason));
            status.message = Some(asked.map_or_else(|| "its object was deleted".into(), |a| a.message));
            return status;
        }
        let waiting = self
            .status
            .as_ref()
            .and_then(|s| s.ready_condition())
            .filter(|c| [WAITING_FOR_NODE, WAITING_FOR_CONTAINER, POD_NOT_READY].contains(&c.reason.as_str()));
        if let Some(c) = waiting
            && matches!(status.phase, Phase::Starting | Phase::Ready)
            && status.message.is_none()
        {
            status.message = Some(c.message.clone());
        }
        status
    }

    /// The phase the REST API and the proxy go by: the recorded one, but
    /// `terminating` for a live backend asked to end (the termination
    /// annotation, or its object deleted) from that moment, as in local
    /// mode, not from when the operator next acts: while it is down, a
    /// backend terminated through the API was otherwise still handed out
    /// as ready, given new tokens, and served.
    pub fn shown_phase(&self) -> Phase {
        let phase = self.phase();
        let asked = self.metadata.deletion_timestamp.is_some() || crate::k8s::cluster::termination_requested(self).is_some();
        match asked && phase != Phase::Terminating && !phase.is_terminal() {
            true => Phase::Terminating,
            false => phase,
        }
    }

    /// The recorded phase (`pending` before the operator has written one),
    /// without building the whole status.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending)
    }

    /// When the API server created the object, Unix seconds (0 if unset).
    pub fn created_unix(&self) -> u64 {
        self.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second().max(0) as u64)
    }

    /// The backend as plugins see it (scheduler, auth, idle).
    pub fn plugin_backend(&self) -> Backend {
        Backend {
            name: self.name_any(),
            key: self.spec.key.clone(),
            owner: self.spec.owner.clone(),
            labels: self.plugin_labels().into_iter().map(|(key, value)| Label { key, value }).collect(),
        }
    }
}

/// What Spawner observed and decided; written by the operator only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionLivedBackendStatus {
    /// Where the backend is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why it is terminating, terminated or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Detail for the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The application container's exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The node the Pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The Pod's IP; the proxy connects to it.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// The URL the browser opens (through Spawner's proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When Spawner accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When the scheduler plugin admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<Timestamp>,
    /// When its Pod was created (the startup timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    /// When it began stopping (entered `terminating`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating_at: Option<Timestamp>,
    /// When it reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Standard conditions; `Ready` mirrors the `ready` phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl SessionLivedBackendStatus {
    /// The lifecycle's view of this status; `None` before the operator has
    /// written one (a new object: the lifecycle starts it as pending).
    pub fn lifecycle(&self) -> Option<Status> {
        Some(Status {
            phase: self.phase?,
            reason: self.reason,
            message: self.message.clone(),
            exit_code: self.exit_code,
            node: self.node_name.clone(),
            created_at: self.created_at?,
            scheduled_at: self.scheduled_at,
            started_at: self.started_at,
            ready_at: self.ready_at,
            terminating_at: self.terminating_at,
            finished_at: self.finished_at,
        })
    }

    /// Records the lifecycle's status, keeping what Kubernetes adds (Pod IP,
    /// URL), and updates the `Ready` condition; its transition time moves
    /// only when readiness changes, as Kubernetes conditions require.
    pub fn record(&mut self, status: &Status, generation: Option<i64>, now: Timestamp) {
        self.phase = Some(status.phase);
        self.reason = status.reason;
        self.message = status.message.clone();
        self.exit_code = status.exit_code;
        self.node_name = status.node.clone();
        self.created_at = Some(status.created_at);
        self.scheduled_at = status.scheduled_at;
        self.started_at = status.started_at;
        self.ready_at = status.ready_at;
        self.terminating_at = status.terminating_at;
        self.finished_at = status.finished_at;

        let ready = status.phase == Phase::Ready;
        let condition = Condition {
            type_: READY_CONDITION.into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: condition_reason(status),
            message: status.message.clone().unwrap_or_default(),
            observed_generation: generation,
            last_transition_time: Time(now),
        };
        match self.conditions.iter_mut().find(|c| c.type_ == READY_CONDITION) {
            Some(c) => {
                let transition = if c.status == condition.status { c.last_transition_time.clone() } else { Time(now) };
                *c = Condition { last_transition_time: transition, ..condition };
            }
            None => self.conditions.push(condition),
        }
    }

    /// The `Ready` condition, once [`record`] has written it.
    ///
    /// [`record`]: SessionLivedBackendStatus::record
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == READY_CONDITION)
    }

    /// Says, in the `Ready` condition, why a starting backend's Pod is not
    /// running yet: kube-scheduler found no node for it (`why` is its
    /// message, e.g. "0/3 nodes are available: 3 node(s) were
    /// unschedulable"). The condition is rebuilt on every [`record`], so
    /// the note goes once the Pod is placed.
    ///
    /// [`record`]: SessionLivedBackendStatus::record
    pub fn waiting_for_node(&mut self, why: &str) {
        self.waiting(WAITING_FOR_NODE, format!("no node can run its Pod yet: {why}"));
    }

    /// Says, in the `Ready` condition, why a starting backend's container
    /// has not started: `why` is its kubelet's reason and message
    /// ("ErrImagePull: …"). Goes on the next [`record`], as the node's
    /// note does.
    ///
    /// [`record`]: SessionLivedBackendStatus::record
    pub fn waiting_for_container(&mut self, why: &str) {
        self.waiting(WAITING_FOR_CONTAINER, format!("its container has not started: {why}"));
    }

    /// Says, in the `Ready` condition, that a ready backend's Pod has
    /// stopped being ready (its readiness probe fails, its node stopped
    /// answering): `why` is the Pod's own reason. The phase stays `ready`
    /// (the lifecycle has no way back, and the Pod may recover), but the
    /// condition and `kubectl get slab`'s `Ready` column say what the proxy
    /// does (503, "its Pod is not ready"). Like the waiting notes, it goes
    /// on the next [`record`]; `before` is the status as it was, whose
    /// transition time stays if it already said so.
    ///
    /// [`record`]: SessionLivedBackendStatus::record
    pub fn pod_not_ready(&mut self, why: &str, before: Option<&Self>, now: Timestamp) {
        let since =
            before.and_then(Self::ready_condition).filter(|c| c.status == "False").map_or(Time(now), |c| c.last_transition_time.clone());
        if let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == READY_CONDITION) {
            c.status = "False".into();
            c.reason = POD_NOT_READY.into();
            c.message = format!("its Pod is not ready: {why}");
            c.last_transition_time = since;
        }
    }

    fn waiting(&mut self, reason: &str, message: String) {
        if let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == READY_CONDITION) {
            c.reason = reason.into();
            c.message = message;
        }
    }
}

/// A condition reason: CamelCase, as the API requires
/// (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`).
fn condition_reason(status: &Status) -> String {
    camel_case(status.reason.map_or(status.phase.as_str(), Reason::as_str))
}

/// `startup-timeout` → `StartupTimeout`: Kubernetes' spelling of reasons.
pub fn camel_case(kebab: &str) -> String {
    kebab.split('-').filter(|w| !w.is_empty()).map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

/// The CustomResourceDefinition: the derived one, with every integer field
/// bounded by the range of its type.
///
/// The API server does not enforce an integer's `format`, so without bounds
/// it would store `gracePeriodSeconds: 5000000000` or a `containerPort`
/// beyond `i32`. Such an object cannot be read as the typed resource, and a
/// typed list fails whole: one object would stop every watch of backends
/// (the operator's scheduling cache for every namespace, the proxy's
/// routes). With bounds, the API server refuses it at the door, naming
/// the field.
pub fn definition() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = SessionLivedBackend::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            let mut value = serde_json::to_value(&*schema).expect("a schema serializes");
            bound_integers(&mut value);
            *schema = serde_json::from_value(value).expect("bounds keep a schema a schema");
        }
    }
    crd
}

/// The largest `f64` below 2^63. A bound is a float, and the API server
/// turns it into an `i64` to compare: `i64::MAX as f64` rounds up to 2^63,
/// which overflows there to `i64::MIN` (every value was then refused).
const I64_MAX_F64: f64 = 9_223_372_036_854_774_784.0;

/// Adds `minimum` and `maximum` from each integer's `format` where the
/// schema sets none (64-bit ones to about `i64`'s range: the API server's).
fn bound_integers(node: &mut serde_json::Value) {
    use serde_json::Value;
    match node {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("integer") {
                let (min, max) = match map.get("format").and_then(Value::as_str) {
                    Some("int8") => (f64::from(i8::MIN), f64::from(i8::MAX)),
                    Some("int16") => (f64::from(i16::MIN), f64::from(i16::MAX)),
                    Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
                    Some("uint32") => (0.0, f64::from(u32::MAX)),
                    Some("uint16") => (0.0, f64::from(u16::MAX)),
                    Some("uint8") => (0.0, f64::from(u8::MAX)),
                    Some("uint64") => (0.0, I64_MAX_F64),
                    _ => (i64::MIN as f64, I64_MAX_F64),
                };
                map.entry("minimum").or_insert(min.into());
                map.entry("maximum").or_insert(max.into());
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// The CustomResourceDefinition, as YAML, with a header saying where it
/// comes from: what `spawner crd` prints and deploy/crd/ holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(&definition())?;
    Ok(format!(
        "# Generated from host/src/k8s/crd.rs by `spawner crd`; do not edit.\n\
         # Regenerate: cargo run -p spawner -- crd > deploy/crd/sessionlivedbackend.yaml\n\
         {body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Phase;

    /// The original Spawner's manifest shape (only its three fields).
    const ORIGINAL: &str = r#"{
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": "notes"},
        "spec": {
            "template": {"containers": [{"name": "app", "image": "ghcr.io/example/notes:1"}],
                         "imagePullSecrets": [{"name": "registry"}]},
            "gracePeriodSeconds": 300,
            "httpPort": 3000
        }
    }"#;

    #[test]
    fn an_original_manifest_reads_and_writes_back_unchanged() {
        let slab: SessionLivedBackend = serde_json::from_str(ORIGINAL).unwrap();
        assert_eq!(slab.spec.http_port(), 3000);
        assert_eq!(slab.spec.grace_period_seconds, Some(300));
        assert_eq!(slab.spec.template.containers[0].image.as_deref(), Some("ghcr.io/example/notes:1"));
        let back = serde_json::to_value(&slab).unwrap();
        let mut original: serde_json::Value = serde_json::from_str(ORIGINAL).unwrap();
        original["metadata"] = back["metadata"].clone();
        assert_eq!(back, original, "no field added, renamed or lost");
    }

    #[test]
    fn http_port_defaults_to_8080_and_pods_get_no_credentials() {
        let spec = SessionLivedBackendSpec::default();
        assert_eq!(spec.http_port(), DEFAULT_HTTP_PORT);
        assert_eq!(spec.template.pod_spec().automount_service_account_token, Some(false));
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s as i64).unwrap()
    }

    #[test]
    fn lifecycle_status_round_trips_through_the_object_status() {
        let mut status = Status::new(at(0));
        status.phase = Phase::Terminated;
        status.reason = Some(Reason::Exited);
        status.exit_code = Some(3);
        status.message = Some("exited with code 3".into());
        status.node = Some("node-a".into());
        status.scheduled_at = Some(at(1));
        status.started_at = Some(at(2));
        status.ready_at = Some(at(3));
        status.finished_at = Some(at(9));
        let mut object = SessionLivedBackendStatus { pod_ip: Some("10.0.0.7".into()), ..Default::default() };
        object.record(&status, Some(1), at(9));
        assert_eq!(object.lifecycle(), Some(status));
        assert_eq!(object.pod_ip.as_deref(), Some("10.0.0.7"), "Kubernetes-only fields are kept");
        let json = serde_json::to_value(&object).unwrap();
        assert_eq!(json["phase"], "terminated");
        assert_eq!(json["reason"], "exited");
        assert_eq!(json["nodeName"], "node-a");
        assert_eq!(json["podIP"], "10.0.0.7");
        assert_eq!(SessionLivedBackendStatus::default().lifecycle(), None, "no status yet: the lifecycle starts it");
    }

    #[test]
    fn a_pod_waiting_for_a_node_says_why_in_the_condition_and_the_shown_status() {
        let why = "0/2 nodes are available: 2 node(s) were unschedulable.";
        let mut status = Status::new(at(0));
        status.phase = Phase::Starting;
        status.started_at = Some(at(1));
        let mut object = SessionLivedBackendStatus::default();
        object.record(&status, Some(1), at(1));
        object.waiting_for_node(why);
        let ready = &object.conditions[0];
        assert_eq!((ready.reason.as_str(), ready.status.as_str()), (WAITING_FOR_NODE, "False"));
        assert_eq!(ready.message, format!("no node can run its Pod yet: {why}"));
        let mut slab: SessionLivedBackend = serde_json::from_str(ORIGINAL).unwrap();
        slab.status = Some(object.clone());
        assert_eq!(slab.shown_status().message, Some(ready.message.clone()), "what the REST API shows");
        assert_eq!(slab.lifecycle_status().message, None, "not part of the lifecycle: it goes with the wait");

        // Placed: the next record rebuilds the condition without the note.
        object.record(&status, Some(1), at(2));
        slab.status = Some(object);
        assert_eq!(slab.status.as_ref().unwrap().conditions[0].reason, "Starting");
        assert_eq!(slab.shown_status().message, None);
    }

    /// Asked to end, a live backend is shown stopping at once, whether or
    /// not the operator has acted yet; what has ended stays as it ended.
    #[test]
    fn a_backend_asked_to_end_is_shown_terminating_before_the_operator_acts() {
        let mut slab: SessionLivedBackend = serde_json::from_str(ORIGINAL).unwrap();
        let mut status = Status::new(at(0));
        status.phase = Phase::Ready;
        let mut object = SessionLivedBackendStatus::default();
        object.record(&status, Some(1), at(1));
        slab.status = Some(object.clone());
        assert_eq!((slab.shown_phase(), slab.shown_status().phase), (Phase::Ready, Phase::Ready));

        let request = crate::lifecycle::TerminationRequest { reason: Reason::Requested, message: "terminated through the API".into() };
        let patch = crate::k8s::cluster::termination_patch(&request);
        let note = patch["metadata"]["annotations"][crate::k8s::cluster::TERMINATE_ANNOTATION].as_str().unwrap();
        slab.annotations_mut().insert(crate::k8s::cluster::TERMINATE_ANNOTATION.into(), note.into());
        let shown = slab.shown_status();
        assert_eq!((slab.shown_phase(), shown.phase, shown.reason), (Phase::Terminating, Phase::Terminating, Some(Reason::Requested)));
        assert_eq!(shown.message.as_deref(), Some("terminated through the API"));
        assert_eq!(slab.phase(), Phase::Ready, "the recorded phase is the operator's");

        slab.annotations_mut().clear();
        slab.metadata.deletion_timestamp = Some(Time(at(2)));
        assert_eq!(slab.shown_status().message.as_deref(), Some("its object was deleted"));
        assert_eq!(slab.shown_phase(), Phase::Terminating);

        status.phase = Phase::Terminated;
        status.reason = Some(Reason::Idle);
        object.record(&status, Some(1), at(3));
        slab.status = Some(object);
        let shown = slab.shown_status();
        assert_eq!((shown.phase, shown.reason), (Phase::Terminated, Some(Reason::Idle)), "how it ended, not the request");
    }

    #[test]
    fn the_ready_condition_moves_its_transition_time_only_when_readiness_changes() {
        let mut status = Status::new(at(0));
        let mut object = SessionLivedBackendStatus::default();
        object.record(&status, None, at(0));
        assert_eq!(object.conditions.len(), 1);
        assert_eq!((object.conditions[0].status.as_str(), object.conditions[0].reason.as_str()), ("False", "Pending"));

        status.phase = Phase::Starting;
        object.record(&status, None, at(5));
        assert_eq!(object.conditions[0].last_transition_time, Time(at(0)), "still not ready: same transition");
        assert_eq!(object.conditions[0].reason, "Starting");

        status.phase = Phase::Ready;
        object.record(&status, Some(2), at(7));
        let c = &object.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str(), c.observed_generation), ("True", "Ready", Some(2)));
        assert_eq!(c.last_transition_time, Time(at(7)));

        status.phase = Phase::Failed;
        status.reason = Some(Reason::StartupTimeout);
        object.record(&status, Some(2), at(8));
        assert_eq!((object.conditions[0].status.as_str(), object.conditions[0].reason.as_str()), ("False", "StartupTimeout"));
        assert_eq!(object.conditions.len(), 1);
    }

    #[test]
    fn the_crd_in_deploy_is_generated_from_these_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd/sessionlivedbackend.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml().unwrap(),
            "deploy/crd/sessionlivedbackend.yaml differs from the Rust types; regenerate it:\n  \
             cargo run -p spawner -- crd > deploy/crd/sessionlivedbackend.yaml"
        );
    }

    #[test]
    fn the_crd_names_printer_columns_and_validation() {
        let crd = definition();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["slab".to_string()][..]));
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Phase", "Ready", "Reason", "Waiting", "Node", "Owner", "Key", "URL", "Age"]);
        assert!(version.subresources.as_ref().unwrap().status.is_some(), "status is a subresource");
        let schema = serde_json::to_value(&version.schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["template"]));
        assert_eq!(spec["properties"]["httpPort"]["minimum"].as_f64(), Some(1.0));
        // Every integer is bounded (the API server ignores `format`); a
        // bound the type sets is kept.
        let grace = &spec["properties"]["gracePeriodSeconds"];
        assert_eq!((grace["minimum"].as_f64(), grace["maximum"].as_f64()), (Some(1.0), Some(f64::from(u32::MAX))));
        let text = schema.to_string();
        assert_eq!(text.matches(r#""type":"integer""#).count(), text.matches(r#""maximum":"#).count(), "{text}");
        // Each format has its own range above; one without would get i64's.
        let known = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"];
        let formats: std::collections::BTreeSet<&str> =
            text.match_indices(r#""format":""#).map(|(i, m)| &text[i + m.len()..]).map(|t| &t[..t.find('"').unwrap()]).collect();
        let integer_formats: Vec<&&str> = formats.iter().filter(|f| f.starts_with("int") || f.starts_with("uint")).collect();
        assert!(integer_formats.iter().all(|f| known.contains(f)), "an integer format without its range: {integer_formats:?}");
        assert_eq!(spec["properties"]["template"]["properties"]["containers"]["minItems"].as_u64(), Some(1));
        let phases = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["enum"];
        assert_eq!(phases.as_array().unwrap().len(), Phase::ALL.len());
    }
}
