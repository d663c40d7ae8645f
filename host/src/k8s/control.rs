//! The REST API's runtime on Kubernetes: [`Control`] over
//! `SessionLivedBackend` objects, so `spawner proxy` serves the same
//! `/api/` as `spawner dev` (create or get by key, status, status stream,
//! wait-for-ready, terminate, list, logs, tokens) and a web app's server
//! does not change when it moves to a cluster.
//!
//! - **Create** writes an object; the operator does the rest. On
//!   Kubernetes a template is a container image (as in the original
//!   Spawner's `POST /spawn`): the Pod runs it as a non-root container
//!   that meets the `restricted` Pod Security level, listening on `port`
//!   (default 8080, also passed as `PORT`).
//! - **Keys**: the object's name is derived from the key, so the API
//!   server's name uniqueness is the lock: of concurrent creates with one
//!   key exactly one succeeds, and the others read what it made. A live
//!   object written with another name (by kubectl) but the same key is
//!   found too. A key whose backend has ended is reused: the ended object
//!   is deleted (with a uid precondition, so only that one) and a new one
//!   created; tokens minted for the ended one do not open the new one (the
//!   proxy refuses tokens issued before a backend was created).
//! - **Limits**: at most `max_backends` live backends, and, if image
//!   prefixes are configured, only images under them: whoever holds the API
//!   token chooses what the cluster runs.
//! - **Terminate** asks the operator through the same annotation the
//!   sweeper uses, so the object records `terminated`, reason `requested`;
//!   the patch carries the `resourceVersion` read, so it lands on the object
//!   the caller was answered about, not on a key's replacement.
//! - **Status streams** start at the object's current status; an event id
//!   is the object's creation time (Unix seconds) × 10 plus the phase's rank
//!   in the lifecycle (pending 1 … ended 6): the same on every proxy
//!   replica and after restarts, and growing across the backends a key
//!   names in turn (unless two are created within one second: creation
//!   times have one-second precision), so `Last-Event-ID` resumes anywhere.
//!   A backend moved to another node goes back to `pending` for a moment:
//!   that step back is not sent (its id would be smaller), and its next
//!   `starting`, with the id of the first, is sent to a stream that is
//!   following (it differs) but not to one resuming from that id.
//! - **Reads** prefer the watched cache, but an object the cache does not
//!   have, or has as ended or deleted, is read from the API server: just
//!   after a key's backend is replaced, the cache may still hold the old.
//! - **Logs** are the application container's, read through the API
//!   server (Kubernetes merges stdout and stderr; lines are marked stdout):
//!   the last `tail` lines (default 10,000), of which the newest 256 KiB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, Pod, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt as _};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::cluster::{Cluster, termination_patch, termination_requested};
use super::crd::{BackendPodTemplate, DEFAULT_HTTP_PORT, SessionLivedBackend, SessionLivedBackendSpec};
use super::pod::to_k8s;
use crate::backends::TERMINATE_ANSWER_WAIT;
use crate::backends::{
    BackendSpec, BackendView, Control, ControlError, Created, Filter, StatusEvent, StatusFeed, backend_url, is_object_name, new_name,
    validate_spec,
};
use crate::lifecycle::{Phase, Reason, TerminationRequest};
use crate::process::{LogLine, Stream};
use crate::token::TokenKey;

/// Creates tried before giving up when names keep colliding (a key whose
/// ended object is being replaced by another caller at the same moment).
const CREATE_ATTEMPTS: usize = 5;

/// How long a create waits for an ended object with its key to be gone.
const REPLACE_WAIT: Duration = Duration::from_secs(10);

/// The name of the application container in Pods made through the API.
const APP_CONTAINER: &str = "app";

/// Log bytes an answer keeps at most, the newest (as local mode keeps).
const MAX_LOG_BYTES: usize = 256 * 1024;

/// Log bytes read from the API server at most.
const MAX_LOG_READ_BYTES: i64 = 4 * 1024 * 1024;

/// Log lines asked for when the caller gives no `tail`, and at most.
const DEFAULT_LOG_LINES: usize = 10_000;
const MAX_LOG_LINES: usize = 100_000;

/// What the API may create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateLimits {
    /// Live backends at most (counted in this proxy's namespace).
    pub max_backends: usize,
    /// Images must start with one of these (none: any image).
    pub image_prefixes: Vec<String>,
}

impl Default for CreateLimits {
    fn default() -> Self {
        CreateLimits { max_backends: 1000, image_prefixes: Vec::new() }
    }
}

/// The annotation the API seals the objects it creates with (see
/// [`KubeBackends::vouch`]).
pub const CREATED_ANNOTATION: &str = "spawner.dev/created-by-api";

/// The API's runtime on Kubernetes (see the module docs).
pub struct KubeBackends {
    cluster: Arc<Cluster>,
    pods: Api<Pod>,
    public_url: String,
    host_domain: Option<String>,
    limits: CreateLimits,
    /// The token secret: it also seals the objects the API creates.
    tokens: Arc<TokenKey>,
}

impl KubeBackends {
    /// Backends in `cluster`'s namespace; `public_url` is the proxy's
    /// address as browsers reach it, `host_domain` its host routing domain.
    /// `tokens` is the token secret, which also seals what it creates.
    pub fn new(
        cluster: Arc<Cluster>,
        client: Client,
        public_url: &str,
        host_domain: Option<String>,
        limits: CreateLimits,
        tokens: Arc<TokenKey>,
    ) -> Arc<Self> {
        let pods = Api::namespaced(client, cluster.namespace());
        Arc::new(KubeBackends { cluster, pods, public_url: public_url.to_string(), host_domain, limits, tokens })
    }

    /// Default idle grace period for creates that do not give one.
    pub fn default_grace_seconds(&self) -> u64 {
        self.cluster.default_grace_seconds()
    }

    /// The object, from the cache, else from the API server: an object
    /// created a moment ago may not be cached yet, and one the cache holds
    /// as ended or deleted may have been replaced already (a reused key).
    async fn find(&self, name: &str) -> Result<Option<Arc<SessionLivedBackend>>, ControlError> {
        if let Some(slab) = self.cluster.slab(name)
            && is_live(&slab)
        {
            return Ok(Some(slab));
        }
        if !is_object_name(name) {
            return Ok(None);
        }
        self.cluster.api().get_opt(name).await.map(|s| s.map(Arc::new)).map_err(|e| unavailable("reading", name, e))
    }

    /// A create-or-get's answer for the live backend that holds its key.
    /// Someone is about to use it: a fresh grace period to reach it (a
    /// backend quiet for nearly its grace period was otherwise swept as
    /// the user it was just handed to arrived), as in local mode.
    fn reached_again(&self, slab: &SessionLivedBackend, spec: &BackendSpec) -> Result<Created, ControlError> {
        self.vouch(slab, spec)?;
        self.cluster.touch(slab);
        let backend = self.view(slab);
        let warnings = crate::backends::returned_as_it_is(spec, &backend);
        Ok(Created { backend, created: false, warnings })
    }

    /// Whether a live object holding the create's key may be handed back
    /// (with a token for the caller's user, and the browser sent there).
    /// Only if this API created it (its seal, over its name and spec,
    /// holds), or it is exactly what this request would create: whoever may
    /// write backend objects could otherwise take a key first, with an
    /// image from anywhere, another command or a second container, and be
    /// sent the session of every user the web app asks for by that key
    /// (found in a security review).
    fn vouch(&self, slab: &SessionLivedBackend, spec: &BackendSpec) -> Result<(), ControlError> {
        let name = slab.name_any();
        let data = seal_data(&name, &slab.spec);
        let sealed = slab.annotations().get(CREATED_ANNOTATION).is_some_and(|seal| self.tokens.sealed(&data, seal));
        if sealed || slab_for(spec, &name).is_ok_and(|made| seal_data(&name, &made.spec) == data) {
            return Ok(());
        }
        let key = spec.key.as_deref().unwrap_or_default();
        tracing::warn!(backend = %name, "a create's key is held by a backend object the API did not create (or that was re-created by hand): refused");
        Err(ControlError::Conflict(format!(
            "key {key:?} is held by backend {name}, which this API did not create (written directly, or not sealed with this token secret), so it is not handed out: end it (kubectl delete slab {name}) or use another key"
        )))
    }

    fn view(&self, slab: &SessionLivedBackend) -> BackendView {
        let name = slab.name_any();
        let status = slab.shown_status();
        let address = slab.status.as_ref().and_then(|s| s.pod_ip.as_deref()).map(|ip| match ip.contains(':') {
            true => format!("[{ip}]:{}", slab.spec.http_port()),
            false => format!("{ip}:{}", slab.spec.http_port()),
        });
        BackendView {
            template: slab.spec.template.containers.first().and_then(|c| c.image.clone()).unwrap_or_default(),
            key: slab.spec.key.clone(),
            owner: slab.spec.owner.clone(),
            labels: slab.plugin_labels(),
            grace_period_seconds: slab.spec.grace_period_seconds.map_or(self.cluster.default_grace_seconds(), u64::from),
            lifetime_limit_seconds: slab.spec.lifetime_limit_seconds,
            url: backend_url(&self.public_url, self.host_domain.as_deref(), &name),
            open_connections: if status.phase.is_terminal() { 0 } else { self.cluster.open_connections(slab) },
            status,
            address,
            name,
            uid: slab.uid(),
        }
    }

    /// Deletes the ended object `slab` (only that one: uid precondition)
    /// and waits until its name is free.
    async fn replace_ended(&self, slab: &SessionLivedBackend) -> Result<(), ControlError> {
        let name = slab.name_any();
        let params = DeleteParams { preconditions: Some(Preconditions { uid: slab.uid(), resource_version: None }), ..Default::default() };
        match self.cluster.api().delete(&name, &params).await {
            Ok(_) => {}
            // Gone already, or already replaced by a concurrent create.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
            Err(e) => return Err(unavailable("deleting the ended", &name, e)),
        }
        let deadline = tokio::time::Instant::now() + REPLACE_WAIT;
        while tokio::time::Instant::now() < deadline {
            match self.cluster.api().get_opt(&name).await {
                Ok(Some(s)) if s.uid() == slab.uid() => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => return Ok(()),
                Err(e) => return Err(unavailable("reading", &name, e)),
            }
        }
        Err(ControlError::Unavailable(format!(
            "the backend {name} that held this key is still ending (its Pod stopping; or is `spawner operator` not running? it \
             removes the object's finalizer); retry in a moment"
        )))
    }
}

impl KubeBackends {
    /// The object's status now, and its changes as the cache sees them.
    fn feed(&self, slab: Arc<SessionLivedBackend>) -> StatusFeed {
        let first = event_of(&slab);
        let (tx, live) = watch::channel(first.clone());
        if !first.status.phase.is_terminal() {
            tokio::spawn(follow(self.cluster.clone(), slab.name_any(), slab.uid(), tx));
        }
        StatusFeed { history: vec![first], live, complete: false }
    }
}

impl Control for KubeBackends {
    async fn create(&self, spec: BackendSpec) -> Result<Created, ControlError> {
        validate_spec(&spec)?;
        check_image(&spec.template, &self.limits.image_prefixes)?;
        let slabs = self.cluster.slabs();
        let live: Vec<&Arc<SessionLivedBackend>> = slabs.iter().filter(|s| is_live(s)).collect();
        if let Some(key) = &spec.key
            && let Some(cached) = live.iter().find(|s| s.spec.key.as_ref() == Some(key) && holds_key(s))
        {
            // Written with another name (kubectl: handed back only if it is
            // what this request would create, see `vouch`), or ours, already
            // cached; confirmed live on the API server (the cache may lag an
            // end).
            let name = cached.name_any();
            match self.cluster.api().get_opt(&name).await.map_err(|e| unavailable("reading", &name, e))? {
                Some(s) if holds_key(&s) => return self.reached_again(&s, &spec),
                _ => {}
            }
        }
        if live.len() >= self.limits.max_backends {
            return Err(ControlError::Capacity(format!(
                "{} live backends, the most this Spawner allows (spawner proxy --max-backends); terminate some, or raise it",
                live.len()
            )));
        }
        let mut name = match &spec.key {
            Some(key) => key_name(key),
            None => new_name(&spec.template),
        };
        for _ in 0..CREATE_ATTEMPTS {
            let mut slab = slab_for(&spec, &name)?;
            let seal = self.tokens.seal(&seal_data(&name, &slab.spec));
            slab.annotations_mut().insert(CREATED_ANNOTATION.into(), seal);
            let err = match self.cluster.api().create(&PostParams::default(), &slab).await {
                Ok(made) => return Ok(Created { backend: self.view(&made), created: true, warnings: Vec::new() }),
                Err(kube::Error::Api(e)) if e.code == 409 => e,
                Err(e) => return Err(refused(&name, e)),
            };
            if spec.key.is_none() {
                // A random name taken: pick another.
                tracing::debug!(backend = %name, reason = %err.message, "name taken; trying another");
                name = new_name(&spec.template);
                continue;
            }
            match self.cluster.api().get_opt(&name).await.map_err(|e| unavailable("reading", &name, e))? {
                // Deleted in between: create again.
                None => {}
                Some(existing) if holds_key(&existing) => return self.reached_again(&existing, &spec),
                // Ended, or stopping: it makes way (see `holds_key`).
                Some(ended) => self.replace_ended(&ended).await?,
            }
        }
        Err(ControlError::Unavailable(format!("could not create backend {name}: its name stayed taken; retry")))
    }

    async fn get(&self, name: &str) -> Result<Option<BackendView>, ControlError> {
        Ok(self.find(name).await?.map(|s| self.view(&s)))
    }

    async fn list(&self, filter: &Filter) -> Vec<BackendView> {
        let mut views: Vec<BackendView> = self.cluster.slabs().iter().map(|s| self.view(s)).filter(|v| filter.matches(v)).collect();
        views.sort_by(|a, b| b.status.created_at.cmp(&a.status.created_at).then_with(|| a.name.cmp(&b.name)));
        views
    }

    async fn terminate(&self, name: &str) -> Result<BackendView, ControlError> {
        let mut slab = self.find(name).await?.ok_or_else(|| ControlError::NotFound(name.into()))?;
        let uid = slab.uid();
        let request = TerminationRequest { reason: Reason::Requested, message: "terminated through the API".into() };
        let mut attempts = 0;
        loop {
            if slab.phase().is_terminal() || termination_requested(&slab).is_some() {
                return Ok(self.view(&slab));
            }
            // Onto the version read: if the object changed meanwhile (409),
            // read it again; if it is another object by now (a reused key),
            // the one asked about is gone.
            let mut patch = termination_patch(&request);
            patch["metadata"]["resourceVersion"] = serde_json::json!(slab.metadata.resource_version);
            match self.cluster.api().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 => return Err(ControlError::NotFound(name.into())),
                Err(kube::Error::Api(e)) if e.code == 409 && attempts < CREATE_ATTEMPTS => attempts += 1,
                Err(e) => return Err(unavailable("terminating", name, e)),
            }
            let fresh = self.cluster.api().get_opt(name).await.map_err(|e| unavailable("reading", name, e))?;
            slab = match fresh {
                Some(s) if s.uid() == uid => Arc::new(s),
                _ => return Err(ControlError::NotFound(name.into())),
            };
        }
        // Answer with the status the request caused (terminating, or ended
        // if it had not started), as local mode does: the operator acts
        // within a round trip or two. Waited for on the recorded phase,
        // not the shown one (which is `terminating` as
        // soon as the request is written): one that had not started goes
        // straight to `terminated`. Without an operator, the answer comes
        // after the wait, `terminating`.
        let mut changes = self.cluster.changes();
        let acted = |cluster: &Cluster| match cluster.slab(name) {
            Some(s) if s.uid() == uid => s.phase() == Phase::Terminating || s.phase().is_terminal(),
            _ => true,
        };
        let _ =
            tokio::time::timeout(TERMINATE_ANSWER_WAIT, async { while !acted(&self.cluster) && changes.changed().await.is_ok() {} }).await;
        let after = self.find(name).await?.ok_or_else(|| ControlError::NotFound(name.into()))?;
        Ok(self.view(&after))
    }

    async fn subscribe(&self, name: &str) -> Result<Option<StatusFeed>, ControlError> {
        Ok(self.find(name).await?.map(|slab| self.feed(slab)))
    }

    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<LogLine>, ControlError> {
        let slab = self.find(name).await?.ok_or_else(|| ControlError::NotFound(name.into()))?;
        let container = slab.spec.template.containers.first().map(|c| c.name.clone());
        // The API server reads forward from the tail point, so ask for the
        // last lines (bounded in bytes too), then keep the newest 256 KiB.
        let params = LogParams {
            container,
            tail_lines: Some(tail.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES) as i64),
            limit_bytes: Some(MAX_LOG_READ_BYTES),
            timestamps: true,
            ..LogParams::default()
        };
        let text = match self.pods.logs(name, &params).await {
            Ok(text) => text,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(ControlError::Gone(format!(
                    "backend {name} has no Pod (any more), so no logs: its Pod is deleted when it ends"
                )));
            }
            Err(e) => return Err(unavailable("reading the logs of the Pod of", name, e)),
        };
        Ok(newest(&text, MAX_LOG_BYTES).lines().map(log_line).collect())
    }

    fn templates(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Feeds `tx` the status of object `name` (uid `uid`) as the cache changes,
/// until it ends, is deleted, or nobody listens.
async fn follow(cluster: Arc<Cluster>, name: String, uid: Option<String>, tx: watch::Sender<StatusEvent>) {
    let mut changes = cluster.changes();
    // The object may be newer than the cache (found on the API server):
    // until the cache has it, its absence means nothing.
    let mut seen = false;
    loop {
        match cluster.slab(&name) {
            Some(slab) if slab.uid() == uid => {
                seen = true;
                let event = event_of(&slab);
                let ended = event.status.phase.is_terminal();
                tx.send_if_modified(|current| {
                    // Also within a phase: kube-scheduler's note on why a
                    // Pod waits for a node comes after the phase's event.
                    let changed = event.seq > current.seq || (event.seq == current.seq && event.status != current.status);
                    if changed {
                        *current = event;
                    }
                    changed
                });
                if ended {
                    return;
                }
            }
            // Deleted, or replaced by another object of the same name.
            Some(_) | None if seen => return,
            // The cache has not caught up (still the old object, or none).
            Some(_) | None => {}
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// The object name for a key: a digest, so any key (up to 253 characters
/// of anything printable) gives a valid, fixed-length DNS label.
pub fn key_name(key: &str) -> String {
    format!("k-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..20])
}

/// The least memory a create may ask for (when it asks): the limit it also
/// sets must leave a process room to start.
const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// The object a create request asks for.
fn slab_for(spec: &BackendSpec, name: &str) -> Result<SessionLivedBackend, ControlError> {
    let bad = |m: String| Err(ControlError::Invalid(m));
    let image = spec.template.as_str();
    if image.is_empty() || image.len() > 1024 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(format!(
            "template {image:?} is not a container image reference: on Kubernetes a template is an image, e.g. ghcr.io/acme/editor:1"
        ));
    }
    let Ok(grace) = u32::try_from(spec.grace_period_seconds) else {
        return bad(format!("gracePeriodSeconds must be at most {} on Kubernetes", u32::MAX));
    };
    let port = spec.port.unwrap_or(DEFAULT_HTTP_PORT);
    if port == 0 {
        return bad("port must be between 1 and 65535".into());
    }
    if (1..MIN_MEMORY_BYTES).contains(&spec.memory_bytes) {
        return bad(format!(
            "resources.memoryBytes must be 0 (none asked for) or at least {MIN_MEMORY_BYTES} (16 MiB) on Kubernetes, got {}: it is also the container's memory limit, and a container held below that fails to start or is killed at once",
            spec.memory_bytes
        ));
    }
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if spec.cpu_millis > 0 {
        requests.insert("cpu".to_string(), Quantity(format!("{}m", spec.cpu_millis)));
    }
    if spec.memory_bytes > 0 {
        requests.insert("memory".to_string(), Quantity(spec.memory_bytes.to_string()));
        // Memory asked for is memory kept to: one backend that leaks would
        // otherwise press its node until the kubelet evicts its neighbours
        // (each then ends `lost`); with the limit it alone ends, `exited
        // with code 137 (OOMKilled)`. CPU gets no limit: throttling slows
        // a backend, its request already shares the node fairly.
        limits.insert("memory".to_string(), Quantity(spec.memory_bytes.to_string()));
    }
    let container = Container {
        name: APP_CONTAINER.into(),
        image: Some(image.into()),
        env: Some(spec.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), value_from: None }).collect()),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: port.into(), ..Default::default() }]),
        resources: (!requests.is_empty()).then(|| ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        // What the `restricted` Pod Security level requires (deploy/ puts
        // backends in such a namespace): the image must run as a non-root
        // user.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut slab = SessionLivedBackend::new(
        name,
        SessionLivedBackendSpec {
            template: BackendPodTemplate {
                containers: vec![container],
                node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
                tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.iter().map(to_k8s).collect()),
                ..Default::default()
            },
            grace_period_seconds: Some(grace),
            http_port: Some(port),
            key: spec.key.clone(),
            owner: spec.owner.clone(),
            lifetime_limit_seconds: spec.lifetime_limit_seconds,
            service: None,
        },
    );
    if !spec.labels.is_empty() {
        slab.metadata.labels = Some(spec.labels.clone());
    }
    Ok(slab)
}

/// What [`CREATED_ANNOTATION`] seals: the object's name and the fields of
/// its spec that decide what runs and whose it is, which the CRD's rules
/// make immutable (`template`, `httpPort`, `key`, `owner`, `service`), as
/// JSON (which the API server keeps as written: the CRD has no defaults).
/// Not the grace period or lifetime limit, which may be changed by hand
/// and must not make a key's backend unrecognisable.
fn seal_data(name: &str, spec: &SessionLivedBackendSpec) -> Vec<u8> {
    let sealed = serde_json::json!({
        "template": spec.template,
        "httpPort": spec.http_port,
        "key": spec.key,
        "owner": spec.owner,
        "service": spec.service,
    });
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    data.extend(serde_json::to_vec(&sealed).expect("a spec serializes"));
    data
}

/// Neither being deleted nor ended.
fn is_live(slab: &SessionLivedBackend) -> bool {
    slab.metadata.deletion_timestamp.is_none() && !slab.phase().is_terminal()
}

/// Live and not stopping: what a key may keep returning. A create with the
/// key of a backend that is stopping (swept as its user came back, or
/// terminated a moment ago) replaces it, as it does an ended one, rather
/// than hand back a session that is about to end.
fn holds_key(slab: &SessionLivedBackend) -> bool {
    is_live(slab) && slab.phase() != Phase::Terminating && crate::k8s::cluster::termination_requested(slab).is_none()
}

/// The object's status as a stream event; its id is the creation time × 10
/// plus the phase's rank (see the module docs), so ids only grow, also
/// across the objects a reused key names in turn.
fn event_of(slab: &SessionLivedBackend) -> StatusEvent {
    let status = slab.shown_status();
    let created = slab.created_unix();
    let rank = match status.phase {
        Phase::Pending => 1,
        Phase::Scheduled => 2,
        Phase::Starting => 3,
        Phase::Ready => 4,
        Phase::Terminating => 5,
        Phase::Terminated | Phase::Failed => 6,
    };
    StatusEvent { seq: created * 10 + rank, status }
}

/// Refuses an image outside the configured prefixes, saying which are
/// allowed. A prefix ends at a boundary (`/`, `:` or `@`): `ghcr.io/acme`
/// allows `ghcr.io/acme/editor`, not `ghcr.io/acme-evil/editor`.
fn check_image(image: &str, prefixes: &[String]) -> Result<(), ControlError> {
    let boundary = ['/', ':', '@'];
    let under = |p: &str| image.strip_prefix(p).is_some_and(|rest| p.ends_with(boundary) || rest.is_empty() || rest.starts_with(boundary));
    if prefixes.is_empty() || prefixes.iter().any(|p| under(p)) {
        return Ok(());
    }
    Err(ControlError::Invalid(format!("image {image:?} is not allowed here; allowed: images under {}", prefixes.join(", "))))
}

/// The newest whole lines of `text` within `max` bytes.
fn newest(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &text[cut..];
    // The cut fell inside a line: start at the next whole one.
    if text.as_bytes()[cut - 1] == b'\n' { tail } else { tail.find('\n').map_or("", |i| &tail[i + 1..]) }
}

/// One line of `kubectl logs --timestamps`: `<RFC 3339 time> <text>`.
fn log_line(line: &str) -> LogLine {
    let (time, text) = match line.split_once(' ').map(|(t, rest)| (t.parse::<Timestamp>(), rest)) {
        Some((Ok(t), rest)) => (t, rest),
        _ => (Timestamp::now(), line),
    };
    LogLine { time, stream: Stream::Stdout, text: text.to_string() }
}

/// A create the API server refused: its reason is the caller's to fix
/// (invalid label, quota) or Spawner's (permissions, outage).
fn refused(name: &str, e: kube::Error) -> ControlError {
    match e {
        kube::Error::Api(e) if matches!(e.code, 400 | 422) => {
            ControlError::Invalid(format!("Kubernetes refused backend {name}: {}", e.message))
        }
        kube::Error::Api(e) if e.code == 403 && e.reason == "Forbidden" && e.message.contains("quota") => {
            ControlError::Capacity(format!("Kubernetes refused backend {name}: {}", e.message))
        }
        e => unavailable("creating", name, e),
    }
}

/// An API server error that is not the caller's doing, with the server's
/// own message (its `Status` is noise to an API caller).
fn unavailable(doing: &str, name: &str, e: kube::Error) -> ControlError {
    let why = match &e {
        kube::Error::Api(a) if a.code == 403 => format!("{} (check spawner proxy's Role: deploy/proxy/01-rbac.yaml)", a.message),
        kube::Error::Api(a) => format!("{} ({})", a.message, a.code),
        e => e.to_string(),
    };
    ControlError::Unavailable(format!("Kubernetes API error {doing} backend {name}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Status;

    fn spec() -> BackendSpec {
        BackendSpec {
            template: "ghcr.io/acme/editor:1".into(),
            key: Some("doc 1/α".into()),
            owner: Some("alice".into()),
            labels: BTreeMap::from([("team".into(), "data".into())]),
            env: BTreeMap::from([("MODE".into(), "x".into())]),
            grace_period_seconds: 60,
            lifetime_limit_seconds: Some(3600),
            cpu_millis: 250,
            memory_bytes: 64 << 20,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            port: Some(3000),
        }
    }

    #[test]
    fn key_names_are_fixed_length_dns_labels_and_differ_by_key() {
        let a = key_name("doc 1/α");
        assert_eq!(a.len(), 22);
        assert!(is_object_name(&a), "{a}");
        assert_eq!(a, key_name("doc 1/α"), "the same key, the same name: the API server's lock");
        assert_ne!(a, key_name("doc 2/α"));
    }

    #[test]
    fn a_create_request_becomes_a_restricted_pod_template() {
        let slab = slab_for(&spec(), "k-1").unwrap();
        assert_eq!(slab.spec.http_port(), 3000);
        assert_eq!(slab.spec.grace_period_seconds, Some(60));
        assert_eq!(slab.spec.key.as_deref(), Some("doc 1/α"));
        assert_eq!(slab.plugin_labels(), BTreeMap::from([("team".to_string(), "data".to_string())]));
        let c = &slab.spec.template.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/editor:1"));
        assert_eq!(c.env.as_ref().unwrap()[0].name, "MODE");
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("250m", "67108864"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits.keys().collect::<Vec<_>>(), ["memory"], "memory is limited to the request, CPU is not");
        assert_eq!(limits["memory"].0, "67108864");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.allow_privilege_escalation), (Some(true), Some(false)));
        assert_eq!(slab.spec.template.pod_spec().automount_service_account_token, Some(false));
        assert_eq!(slab.spec.template.node_selector, None, "none asked for");
        assert_eq!(slab.spec.template.tolerations, None, "none asked for");

        let mut zoned = spec();
        zoned.node_selector.insert("zone".into(), "b".into());
        let slab = slab_for(&zoned, "k-1").unwrap();
        let selector = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        assert_eq!(slab.spec.template.node_selector.as_ref(), Some(&selector));
        assert_eq!(slab.spec.template.pod_spec().node_selector, Some(selector), "the Pod asks kube-scheduler for it too");

        let mut tolerant = spec();
        tolerant.tolerations = vec![crate::backends::Toleration {
            key: "gpu".into(),
            operator: "Exists".into(),
            effect: "NoExecute".into(),
            toleration_seconds: Some(30),
            ..Default::default()
        }];
        let slab = slab_for(&tolerant, "k-1").unwrap();
        let t = &slab.spec.template.pod_spec().tolerations.unwrap()[0];
        assert_eq!((t.key.as_deref(), t.operator.as_deref(), t.value.as_deref()), (Some("gpu"), Some("Exists"), None), "empty is unset");
        assert_eq!((t.effect.as_deref(), t.toleration_seconds), (Some("NoExecute"), Some(30)));
        assert_eq!(super::super::pod::toleration_problem(&slab), None, "valid in both spellings");
    }

    #[test]
    fn what_kubernetes_cannot_run_is_refused_with_the_field() {
        let with = |f: fn(&mut BackendSpec)| {
            let mut s = spec();
            f(&mut s);
            slab_for(&s, "k-1").unwrap_err().to_string()
        };
        assert!(with(|s| s.template = "two words".into()).contains("image"));
        assert!(with(|s| s.grace_period_seconds = u64::MAX).contains("gracePeriodSeconds"));
        assert!(with(|s| s.port = Some(0)).contains("port"));
        assert!(with(|s| s.memory_bytes = 1 << 20).contains("resources.memoryBytes must be 0 (none asked for) or at least 16777216"));
        let mut none = spec();
        none.memory_bytes = 0;
        assert!(slab_for(&none, "k-1").is_ok(), "no memory asked for");
    }

    #[test]
    fn event_ids_follow_the_lifecycle_and_grow_across_a_keys_objects() {
        let at = |second: i64, phase: Phase| {
            let mut slab = slab_for(&spec(), "k-1").unwrap();
            slab.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::from_second(second).unwrap()));
            let mut status = Status::new(Timestamp::from_second(second).unwrap());
            status.phase = phase;
            let mut object = super::super::crd::SessionLivedBackendStatus::default();
            object.record(&status, None, Timestamp::from_second(second).unwrap());
            slab.status = Some(object);
            event_of(&slab).seq
        };
        let ids: Vec<u64> = Phase::ALL.iter().map(|p| at(1_800_000_000, *p)).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 6].map(|r| 18_000_000_000 + r));
        assert!(at(1_800_000_001, Phase::Pending) > at(1_800_000_000, Phase::Failed), "a key's next object continues the ids");
    }

    #[test]
    fn images_outside_the_allowed_prefixes_are_refused() {
        assert!(check_image("anything:1", &[]).is_ok());
        let allowed = ["ghcr.io/acme/".to_string()];
        assert!(check_image("ghcr.io/acme/editor:1", &allowed).is_ok());
        let e = check_image("docker.io/evil:1", &allowed).unwrap_err().to_string();
        assert!(e.contains("ghcr.io/acme/"), "{e}");
        let unslashed = ["ghcr.io/acme".to_string()];
        assert!(check_image("ghcr.io/acme/editor:1", &unslashed).is_ok());
        assert!(check_image("ghcr.io/acme-evil/editor:1", &unslashed).is_err(), "a prefix ends at a boundary");
        assert!(check_image("docker.io.evil.com/x:1", &["docker.io".to_string()]).is_err());
    }

    #[test]
    fn logs_keep_the_newest_whole_lines() {
        assert_eq!(newest("a\nbb\nccc\n", 100), "a\nbb\nccc\n");
        assert_eq!(newest("a\nbb\nccc\n", 5), "ccc\n");
        assert_eq!(newest("é\nx\n", 3), "x\n");
    }

    #[test]
    fn log_lines_keep_their_timestamps() {
        let l = log_line("2026-11-29T10:00:00.123456789Z listening on 8080");
        assert_eq!(l.text, "listening on 8080");
        assert_eq!(l.time.to_string(), "2026-11-29T10:00:00.123456789Z");
        assert_eq!(log_line("no time here").text, "no time here");
    }
}
