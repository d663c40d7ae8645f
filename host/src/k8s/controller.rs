//! The controller: reconciles each `SessionLivedBackend` into a Pod with
//! the same [`lifecycle::step`] local mode uses.
//!
//! A reconcile reads the object's recorded status (the lifecycle's view is
//! rebuilt from it alone, so a crash at any line is repaired by the next
//! reconcile), observes the Pod, steps the lifecycle until it waits, executes
//! each action (ask the scheduler plugin, create the Pod, delete the Pod),
//! and writes the status once, only when it changed. Pod events wake the
//! owning object's reconcile; a starting backend is also requeued for its
//! startup deadline.
//!
//! Deleting the object is the `requested` termination: a finalizer keeps it
//! until its Pod is gone, with the status saying `terminating` meanwhile.
//! The sweeper's verdicts arrive as an annotation
//! ([`TERMINATE_ANNOTATION`](super::cluster::TERMINATE_ANNOTATION)); the
//! object then stays, `terminated` with the sweeper's reason.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};

use super::cluster::termination_requested;
use super::crd::{SessionLivedBackend, SessionLivedBackendStatus};
use super::inventory::{self, Inventory};
use super::pod::{
    self, BACKEND_LABEL, Fit, capacity, carries, container_waiting, credential_problem, fit, pinned_to, pod_for, requests, service_for,
    toleration_problem, unschedulable, workload,
};
use crate::lifecycle::{self, Action, Admission, CreateError, Observed, Phase, Reason, Status, TerminationRequest, Timeouts};
use crate::metrics::{Metrics, PhaseLabels};
use crate::plugins::Plugins;
use crate::plugins::types::{Label, Node as CandidateNode, PlacedBackend, Placement, PlacementRequest};

/// The finalizer that holds a deleted object until its Pod is gone.
pub const FINALIZER: &str = "spawner.dev/stop-backend";

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Base of the URLs written to `status.url` (`{base}/p/{name}/`).
    pub public_url: Option<String>,
    /// Host routing: `status.url` is `{scheme}://{name}.{domain}/`, as
    /// `spawner proxy --host-domain` serves it.
    pub host_domain: Option<String>,
    /// How long a Pod may take to become Ready.
    pub startup_timeout: Duration,
    /// The Pod's termination grace period when Spawner stops it.
    pub stop_timeout: Duration,
    /// How long an ended backend's object is kept (with its status) before
    /// the operator deletes it.
    pub retention: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            namespace: None,
            public_url: None,
            host_domain: None,
            startup_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
        }
    }
}

/// What a reconcile can fail with; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// A deleted backend's Pod is still stopping (not a failure: retried).
    #[error("waiting for Pod {0} to stop")]
    Stopping(String),
    /// The object changed since this reconcile read it (not a failure:
    /// retried on the newer version).
    #[error("{0} changed while being reconciled; retrying")]
    Stale(String),
    /// A Pod with the backend's name exists and belongs to something else.
    #[error("a Pod named {0} exists and is not this backend's; retrying")]
    PodNameTaken(String),
    /// The scheduler plugin's task panicked (the plugin host itself never does).
    #[error("scheduler task: {0}")]
    Scheduler(String),
    /// Scheduling's caches have not had their first listing yet (not a
    /// failure: retried shortly).
    #[error("the scheduling caches are not filled yet; retrying")]
    CachesFilling,
}

impl Error {
    /// The API server said this identity may not do it (403).
    fn forbidden(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(e)) if e.code == 403)
    }

    /// The API server said something is not there (404), here or inside
    /// the finalizer's wrapping.
    fn not_found(&self) -> bool {
        let api_404 = |e: &kube::Error| matches!(e, kube::Error::Api(e) if e.code == 404);
        match self {
            Error::Kube(e) => api_404(e),
            Error::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.not_found(),
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => api_404(e),
                _ => false,
            },
            _ => false,
        }
    }

    /// What kind of failure it is: the `error` label of
    /// `spawner_reconcile_errors_total` (`api`, `pod-name-taken`,
    /// `scheduler`, `finalizer`; `run` counts `watch`), or `stale`, `caches` and `stopping` for
    /// the retries that are expected.
    fn class(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api",
            Error::PodNameTaken(_) => "pod-name-taken",
            Error::Scheduler(_) => "scheduler",
            Error::Stale(_) => "stale",
            Error::CachesFilling => "caches",
            Error::Stopping(_) => "stopping",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    config: OperatorConfig,
    events: Recorder,
    /// Nodes and backends for scheduling, while [`run`] runs (it starts
    /// the watches when this replica starts leading, and stops them when
    /// it stops).
    inventory: std::sync::Mutex<Option<Arc<Inventory>>>,
    /// Failed reconciles in a row, per backend (`namespace/name`), for
    /// [`retry_delay`] and [`retried_too_long`]; a reconcile that succeeds
    /// clears its entry.
    failures: std::sync::Mutex<std::collections::HashMap<String, Failing>>,
}

/// A backend whose reconciles have been failing.
#[derive(Clone, Debug)]
struct Failing {
    /// The object's uid: a later object of the name (a key's next
    /// backend) starts afresh.
    uid: Option<String>,
    /// What is failing (`error_policy`'s class): another error starts the
    /// clock again (a wait for the caches at the start of a term does not
    /// eat into a Pod create's retries).
    class: &'static str,
    /// Failed reconciles in a row (waits that are retried at once, without
    /// backoff, are not counted: the caches filling, a stale read).
    count: u32,
    /// When the first of them failed, on this replica, in this term.
    since: Timestamp,
}

impl Context {
    /// Records a failed reconcile of `slab` (counted toward backoff when
    /// `counted`); the failures in a row so far.
    fn failed(&self, slab: &SessionLivedBackend, class: &'static str, counted: bool) -> u32 {
        let mut all = self.failures.lock().expect("failures lock");
        let uid = slab.uid();
        let fresh = || Failing { uid: uid.clone(), class, count: 0, since: Timestamp::now() };
        let failing = all.entry(failure_key(slab)).or_insert_with(fresh);
        if failing.uid != uid {
            *failing = fresh();
        } else if failing.class != class {
            (failing.class, failing.since) = (class, Timestamp::now());
        }
        if counted {
            failing.count = failing.count.saturating_add(1);
        }
        failing.count
    }

    /// A context for [`run`]. `metrics` records spawn-to-ready times (and
    /// should be the registry `plugins` report to).
    pub fn new(client: Client, plugins: Arc<Plugins>, metrics: Arc<Metrics>, config: OperatorConfig) -> Arc<Self> {
        let reporter = Reporter { controller: "spawner-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let events = Recorder::new(client.clone(), reporter);
        let (inventory, failures) = (std::sync::Mutex::new(None), std::sync::Mutex::new(Default::default()));
        Arc::new(Context { client, plugins, metrics, config, events, inventory, failures })
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts { startup: self.config.startup_timeout }
    }
}

/// Runs the controller until the stream ends (the process is stopped).
/// Fails at the start, with the API server's reason, if scheduling's
/// watches (every Node, every backend) are not allowed; passing errors
/// (the API server busy or restarting) are retried.
pub async fn run(ctx: Arc<Context>) -> Result<(), kube::Error> {
    let inventory = loop {
        match Inventory::start(ctx.client.clone()).await {
            Ok(inventory) => break Arc::new(inventory),
            Err(e) if inventory::is_lasting(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "starting the scheduling caches; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let _counting = PhaseCounter::start(inventory.clone(), ctx.config.namespace.clone(), ctx.metrics.clone());
    let _inventory = InventoryInUse::set(ctx.clone(), inventory);
    let (slabs, pods) = match &ctx.config.namespace {
        Some(ns) => (Api::<SessionLivedBackend>::namespaced(ctx.client.clone(), ns), Api::<Pod>::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // Reconciles at once are bounded: a new leader with thousands of
    // backends (ended ones are kept for the retention) would otherwise
    // send the API server thousands of reads and status writes together.
    let limits = kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE);
    let controller = Controller::new(slabs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(BACKEND_LABEL))
        .with_config(limits)
        .trigger_backoff(super::watch_backoff());
    let metrics = ctx.metrics.clone();
    let failures = super::WatchFailures::new("watching backends or their Pods failed");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                // A watch that fails (RBAC revoked, an object that cannot
                // be read, a relist refused) stops backends from being
                // reconciled: on-call must see it, and alert on the count.
                // It is retried with backoff by the watcher.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    metrics.operator.reconcile_errors.get_or_create(&crate::metrics::ReconcileErrorLabels { error: "watch" }).inc();
                    failures.log(&e)
                }
                // Reconcile failures are logged by `error_policy`.
                Err(e) => tracing::debug!(error = %e, "reconcile"),
                Ok(_) => {}
            }
            std::future::ready(())
        })
        .await;
    Ok(())
}

/// Whether this identity may list and watch what reconciling needs: every
/// Node and backend (for scheduling), and the backends and their Pods it
/// reconciles (in `namespace`, or every namespace). Checked at start, so
/// that a replica missing a right stops saying which, instead of passing
/// its health checks as a standby and failing only once it leads (or
/// leading and retrying a refused watch for ever).
pub async fn check_rights(client: &Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    inventory::allowed(&Api::<Node>::all(client.clone())).await?;
    inventory::allowed(&Api::<SessionLivedBackend>::all(client.clone())).await?;
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    inventory::allowed(&pods).await
}

/// Reconciles that run at once (each a Pod read and at most a few writes).
const RECONCILES_AT_ONCE: u16 = 16;

/// Puts the inventory in the context for one [`run`], and takes it out
/// (stopping its watches) when that run ends.
struct InventoryInUse(Arc<Context>);

impl InventoryInUse {
    fn set(ctx: Arc<Context>, inventory: Arc<Inventory>) -> Self {
        *ctx.inventory.lock().expect("inventory lock") = Some(inventory);
        ctx.failures.lock().expect("failures lock").clear();
        InventoryInUse(ctx)
    }
}

/// Also forgets the failures of the term that ends: a backend that fails
/// again in a later one (this replica leading again) gets its full time.
impl Drop for InventoryInUse {
    fn drop(&mut self) {
        self.0.inventory.lock().expect("inventory lock").take();
        self.0.failures.lock().expect("failures lock").clear();
    }
}

/// How often `spawner_backends{phase}` is recounted from the cache.
const PHASE_COUNT_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps `spawner_backends{phase}` equal to the backends in the scheduling
/// cache by phase (an object without a status yet counts as pending; with
/// `--namespace`, that namespace's only), while this replica reconciles;
/// zeroes it when it stops (a standby reports nothing, so summing replicas
/// stays true). The zeroing lives in the task, so it happens after the
/// task's last update, never before. Nothing is reported until the cache
/// has listed every backend, so a fresh leader never reports a false 0.
struct PhaseCounter;

impl PhaseCounter {
    fn start(inventory: Arc<Inventory>, namespace: Option<String>, metrics: Arc<Metrics>) -> crate::server::AbortOnDrop {
        crate::server::AbortOnDrop(tokio::spawn(async move {
            let _zero = ZeroPhases(metrics.clone());
            let mut tick = tokio::time::interval(PHASE_COUNT_INTERVAL);
            loop {
                tick.tick().await;
                if !inventory.ready() {
                    continue;
                }
                let mut counts = [0i64; Phase::ALL.len()];
                let ours = |s: &&Arc<SessionLivedBackend>| namespace.is_none() || s.metadata.namespace == namespace;
                for slab in inventory.backends().iter().filter(ours) {
                    if let Some(i) = Phase::ALL.iter().position(|p| *p == slab.phase()) {
                        counts[i] += 1;
                    }
                }
                for (phase, n) in Phase::ALL.iter().zip(counts) {
                    metrics.backends.phase.get_or_create(&PhaseLabels { phase: phase.as_str() }).set(n);
                }
            }
        }))
    }
}

/// Zeroes `spawner_backends{phase}` when dropped.
struct ZeroPhases(Arc<Metrics>);

impl Drop for ZeroPhases {
    fn drop(&mut self) {
        for phase in Phase::ALL {
            self.0.backends.phase.get_or_create(&PhaseLabels { phase: phase.as_str() }).set(0);
        }
    }
}

fn error_policy(slab: Arc<SessionLivedBackend>, error: &Error, ctx: Arc<Context>) -> Requeue {
    // The finalizer wraps what the reconcile itself returned.
    let inner = match error {
        Error::Finalizer(e) => match &**e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            _ => error,
        },
        _ => error,
    };
    match inner {
        Error::Stopping(_) => Requeue::requeue(Duration::from_secs(1)),
        Error::Stale(_) | Error::CachesFilling => {
            // Not failures, but bounded as ones: caches that never fill (the
            // operator may not list nodes) or an earlier backend's Service
            // that never goes would keep a backend pending.
            ctx.failed(&slab, inner.class(), false);
            Requeue::requeue(Duration::from_millis(200))
        }
        _ => {
            let class = inner.class();
            ctx.metrics.operator.reconcile_errors.get_or_create(&crate::metrics::ReconcileErrorLabels { error: class }).inc();
            let failures = ctx.failed(&slab, class, true);
            // A Pod of the name still stopping (a key's previous backend,
            // its user back already) is usually gone in seconds: no backoff.
            let delay = match inner {
                Error::PodNameTaken(_) => RETRY_FIRST,
                _ => retry_delay(failures, rand::random::<f64>()),
            };
            tracing::warn!(
                backend = %slab.name_any(),
                namespace = %slab.namespace().unwrap_or_default(),
                error = %error,
                retry_in_s = delay.as_secs(),
                "reconcile failed; retrying"
            );
            Requeue::requeue(delay)
        }
    }
}

/// The first retry of a failed reconcile, and the most any waits.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MOST: Duration = Duration::from_secs(300);

/// How long to wait after `failures` failed reconciles in a row: 5 s,
/// doubling to 5 min, less up to a fifth at random (`jitter` in [0, 1)).
/// During an API-server outage every backend fails together; without the
/// doubling and the spread they would all retry together every 5 s, with
/// thousands of requests at once when it comes back.
fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_MOST).mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 5.0)
}

fn failure_key(slab: &SessionLivedBackend) -> String {
    format!("{}/{}", slab.namespace().unwrap_or_default(), slab.name_any())
}

async fn reconcile(slab: Arc<SessionLivedBackend>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let key = failure_key(&slab);
    let result = match reconcile_once(slab.clone(), ctx.clone()).await {
        // A reconcile of an object the watch's cache still held, moments
        // after its deletion went through (a change of its Pod queued it):
        // removing its finalizer, or writing its status, finds it gone.
        // Nothing failed, and on-call must not be paged for it.
        Err(e) if e.not_found() && gone(&slab, &ctx).await => {
            tracing::debug!(backend = %slab.name_any(), error = %e, "the backend is gone");
            Ok(Requeue::await_change())
        }
        result => result,
    };
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key);
    }
    result
}

/// Whether `slab` no longer exists (or its name is another object's now).
/// A failure to tell counts as no. A list by name, not a get: the
/// operator's roles grant `list` on backends, not `get`.
async fn gone(slab: &SessionLivedBackend, ctx: &Context) -> bool {
    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), &slab.namespace().unwrap_or_default());
    let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={}", slab.name_any()));
    match api.list(&by_name).await {
        Ok(list) => !list.items.iter().any(|now| now.metadata.uid == slab.metadata.uid),
        Err(_) => false,
    }
}

async fn reconcile_once(slab: Arc<SessionLivedBackend>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = slab.namespace().unwrap_or_default();
    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, slab, |event| async {
        match event {
            Event::Apply(slab) => apply(&slab, &ctx, None).await.map(|(requeue, _)| requeue),
            Event::Cleanup(slab) => match cleanup(&slab, &ctx, &ns).await {
                Err(e) if e.forbidden() && namespace_deleting(&ctx.client, &ns).await => {
                    // Deleting a namespace deletes its RoleBindings at once,
                    // the operator's with them, while this finalizer holds
                    // the object: without letting it go here, the namespace
                    // would stay `Terminating` for ever. Its Pod is being
                    // deleted with the namespace.
                    tracing::warn!(
                        backend = %slab.name_any(), namespace = %ns,
                        "the backend's namespace is being deleted and the operator may no longer act in it: letting the object go, its Pod goes with the namespace"
                    );
                    Ok(Requeue::await_change())
                }
                done => done,
            },
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Whether namespace `ns` is being deleted. Any failure to tell counts as
/// no: the caller then keeps retrying, as it would have.
async fn namespace_deleting(client: &Client, ns: &str) -> bool {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    matches!(namespaces.get_opt(ns).await, Ok(Some(n)) if n.metadata.deletion_timestamp.is_some())
}

/// A deleted backend: stop its Pod, record how it ended, and delete its
/// Service; `Ok` once the object may go.
async fn cleanup(slab: &SessionLivedBackend, ctx: &Context, ns: &str) -> Result<Requeue, Error> {
    let request = || TerminationRequest { reason: Reason::Requested, message: "the SessionLivedBackend was deleted".into() };
    let (requeue, recorded) = apply(slab, ctx, Some(request())).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pod = pods.get_opt(&slab.name_any()).await?.filter(|p| owned_by(p, slab));
    // Gone since `apply` looked (it saw it stopping, and recorded a phase
    // that is not an end): the end is recorded (counted, with its Event)
    // before the object may go, which it would otherwise do without
    // either. If `apply` wrote, this reconcile's object is stale: that
    // write is refused and the reconcile retried, on the status written.
    if pod.is_none() && !recorded.is_terminal() {
        apply(slab, ctx, Some(request())).await?;
    }
    match pod {
        Some(pod) => {
            // A Pod whose application exited is no workload to the
            // lifecycle, but it is still an object the garbage collector
            // keeps while this finalizer holds its owner: delete it here.
            if pod.metadata.deletion_timestamp.is_none() {
                delete_pod(&pods, &pod, Duration::ZERO).await?;
            }
            Err(Error::Stopping(slab.name_any()))
        }
        _ => {
            // Its Service goes with it, here rather than by the garbage
            // collector, which would not take it after `--cascade=orphan`
            // (see `owned_meta`): its owner reference may still be there
            // now, and gone the moment this finalizer lets the object go.
            if slab.spec.service == Some(true) {
                let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
                if let Some(s) = services.get_opt(&slab.name_any()).await?
                    && s.metadata.deletion_timestamp.is_none()
                    && owned_meta(&s.metadata, slab)
                {
                    delete_if_there(&services, &slab.name_any(), &DeleteParams::default()).await?;
                }
            }
            Ok(requeue)
        }
    }
}

/// Steps the lifecycle for `slab` until it waits, executing each action,
/// then records the status; returns when to look again, and the phase
/// recorded.
async fn apply(slab: &SessionLivedBackend, ctx: &Context, termination: Option<TerminationRequest>) -> Result<(Requeue, Phase), Error> {
    let name = slab.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &slab.namespace().unwrap_or_default());
    // Deletion first; else what the sweeper (or anyone) asked for.
    let termination = termination.or_else(|| termination_requested(slab));
    let now = Timestamp::now();
    let mut status = slab.lifecycle_status();
    let mut pod = pods.get_opt(&name).await?.filter(|p| owned_by(p, slab));
    let mut admission = None;
    let mut selector = Vec::new();
    let mut create_error = None;
    let mut rescheduled = None;
    // Each action moves the lifecycle forward; four steps cover the
    // longest path (schedule, create, observe) with room to spare.
    for _ in 0..4 {
        let observed = Observed {
            admission: admission.clone(),
            workload: workload(pod.as_ref(), &status),
            termination: termination.clone(),
            create_error: create_error.clone(),
            last_output: pod::last_output(pod.as_ref()),
            ended_by: pod::ended_by(pod.as_ref()),
            // The Pod's Ready condition: its own probe, or the port's.
            probe: None,
            // Pinned to the plugin's node, and kube-scheduler cannot place
            // it there.
            unfit: pod.as_ref().filter(|p| pinned_to(p).is_some()).and_then(unschedulable),
            now,
        };
        let (next, action) = lifecycle::step(&status, &observed, &ctx.timeouts());
        status = next;
        match action {
            Action::Schedule => match schedule(ctx, slab).await {
                Ok((a, s)) => {
                    admission = Some(a);
                    selector = s;
                }
                Err(e) => {
                    let why = unscheduled_why(&e);
                    admission =
                        Some(Admission::Rejected { message: retried_too_long(ctx, slab, now, e, "it could not be scheduled", &why)? });
                }
            },
            Action::Create { node } => match create_pod(ctx, slab, &pods, node.as_deref(), &selector).await {
                // Its Service could not be created: a webhook that is down,
                // or an earlier backend's Service of the name, deleted and
                // not gone yet (a finalizer of someone else's may hold it).
                Err(e) => {
                    let why = match &e {
                        Error::Stale(_) => format!("a previous backend's Service named {name} is still being deleted"),
                        e => e.to_string(),
                    };
                    create_error =
                        Some(CreateError::TimedOut(retried_too_long(ctx, slab, now, e, "its Service could not be created", &why)?));
                }
                Ok(Err(Created::Refused(why))) => create_error = Some(CreateError::Refused(why)),
                Ok(Ok(p)) => pod = Some(p),
                Ok(Err(Created::Pod(kube::Error::Api(e)))) if e.code == 409 => match pods.get_opt(&name).await? {
                    Some(p) if owned_by(&p, slab) => pod = Some(p),
                    _ => {
                        // Often the previous object's Pod, still stopping;
                        // retried, and said where `kubectl describe` shows it.
                        let note = format!("a Pod named {name} exists and is not this backend's; retrying until it is gone");
                        match retried_too_long(ctx, slab, now, Error::PodNameTaken(name.clone()), POD_NOT_CREATED, &note) {
                            Ok(why) => create_error = Some(CreateError::TimedOut(why)),
                            Err(taken) => {
                                publish(ctx, slab, EventType::Warning, "PodNameTaken".into(), note, "CreatePod", None).await;
                                return Err(taken);
                            }
                        }
                    }
                },
                // The API server refused the Pod itself (an invalid container,
                // a quota, Pod Security): the backend fails with the server's
                // reason. Anything else (throttling, timeouts, an admission
                // webhook that is down) is retried, for the startup timeout.
                Ok(Err(Created::Pod(kube::Error::Api(e)))) if matches!(e.code, 400 | 403 | 422) => {
                    create_error = Some(CreateError::Refused(e.message))
                }
                Ok(Err(Created::Pod(e))) => {
                    let why = e.to_string();
                    create_error = Some(CreateError::TimedOut(retried_too_long(ctx, slab, now, e.into(), POD_NOT_CREATED, &why)?));
                }
            },
            Action::Stop => {
                // Deleted with no grace left (its node confirmed the stop,
                // or it was deleted without waiting): another delete can do
                // no more, and what still keeps the Pod is its finalizers,
                // another controller's. It is waited for; deleting it again
                // (and warning) on every reconcile helped nobody.
                if let Some(p) = &pod
                    && p.metadata.deletion_grace_period_seconds == Some(0)
                {
                    tracing::debug!(backend = %name, finalizers = ?p.finalizers(), "its Pod is deleted and waits for its finalizers");
                    break;
                }
                let grace = match overdue_since(pod.as_ref(), ctx.config.stop_timeout) {
                    Some(deadline) if deadline <= now => {
                        // Its node never confirmed the stop: lost, or cut off
                        // from the API server. Without this the backend would
                        // stay terminating (and its key taken) until the node
                        // returned; what still runs there is the node's to end.
                        let held = match pod.as_ref().map(|p| p.finalizers()).filter(|f| !f.is_empty()) {
                            Some(f) => format!(" (its finalizers {} keep it until whoever put them there removes them)", f.join(", ")),
                            None => String::new(),
                        };
                        let note = format!(
                            "the Pod's node did not confirm its stop {} s after the grace period; deleting it without waiting{held}",
                            ctx.config.stop_timeout.max(MIN_STOP_OVERDUE).as_secs()
                        );
                        tracing::warn!(backend = %name, "{note}");
                        publish(ctx, slab, EventType::Warning, "ForceDeleted".into(), note, "DeletePod", None).await;
                        Duration::ZERO
                    }
                    _ => ctx.config.stop_timeout,
                };
                if let Some(p) = &pod {
                    delete_pod(&pods, p, grace).await?;
                }
                break;
            }
            // Recorded `pending` first, then its Pod goes (below): a
            // reconcile that saw the Pod gone before the record would count
            // the backend lost. The node moved off is the one the Pod is
            // pinned to: the recorded one, except after a crash between
            // recording `pending` and deleting the Pod.
            Action::Reschedule { node } => {
                rescheduled = Some(pod.as_ref().and_then(pinned_to).map_or(node, str::to_string));
                break;
            }
            Action::Wait => break,
        }
    }
    // Ended by its application's exit while another container (a sidecar)
    // keeps the Pod running: the lifecycle has no workload left to stop,
    // but the Pod would hold its node's resources until the retention ends.
    // Only once the end is recorded (the object read says so): a Pod being
    // deleted next to a status still `ready` reads as lost.
    if slab.phase().is_terminal()
        && let Some(p) = &pod
        && pod::runs_on_after_the_app(p)
    {
        delete_pod(&pods, p, ctx.config.stop_timeout).await?;
    }
    // A Pod kube-scheduler could place nowhere never started: say so, with
    // its reasons, rather than that the application did not listen.
    let waiting = pod.as_ref().and_then(|p| match unschedulable(p) {
        Some(why) => Some(Waiting::ForNode(why)),
        None => container_waiting(p).map(Waiting::ForContainer),
    });
    if status.reason == Some(Reason::StartupTimeout) && slab.phase() == Phase::Starting {
        let secs = ctx.config.startup_timeout.as_secs();
        match (&waiting, pod.as_ref().and_then(pod::container_creating)) {
            (Some(Waiting::ForNode(why)), _) => status.message = Some(format!("no node could run its Pod within {secs} s: {why}")),
            (Some(Waiting::ForContainer(why)), _) => {
                status.message = Some(format!("its container did not start within {secs} s: {why}"));
            }
            // Still being set up (its image pulled, its volumes mounted):
            // not an application that did not listen.
            (None, Some(stage)) => {
                status.message = Some(format!(
                    "its container did not start within {secs} s (still {stage}: its image being pulled, or its volumes \
                     mounted); for large images or a cluster that adds nodes on demand, raise the operator's \
                     --startup-timeout-seconds"
                ));
            }
            (None, None) => {}
        }
    }
    // Before a move, written even when the object already says so: the
    // write's version check is what tells a stale read (an earlier move's
    // `pending`, with the Pod since placed again) from the real state.
    record(slab, ctx, &status, pod.as_ref(), waiting.as_ref(), now, rescheduled.is_some()).await?;
    if let Some(node) = rescheduled {
        reschedule(ctx, slab, &pods, pod.as_ref(), node).await?;
        return Ok((Requeue::await_change(), status.phase));
    }
    let requeue = match (status.phase, status.started_at, status.finished_at) {
        (Phase::Starting, Some(started), _) => {
            let waited = now.duration_since(started).unsigned_abs();
            Requeue::requeue(ctx.config.startup_timeout.saturating_sub(waited) + Duration::from_secs(1))
        }
        // Ended, and no longer running anything: keep the record for the
        // retention period (kubectl shows why it ended), then delete it.
        (phase, _, Some(finished)) if phase.is_terminal() && slab.metadata.deletion_timestamp.is_none() => {
            let kept = now.duration_since(finished).unsigned_abs();
            match ctx.config.retention.checked_sub(kept).filter(|left| !left.is_zero()) {
                Some(left) => Requeue::requeue(left + Duration::from_millis(100)),
                None => {
                    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), &slab.namespace().unwrap_or_default());
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => tracing::info!(backend = %name, "ended backend past its retention: deleted"),
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                    Requeue::await_change()
                }
            }
        }
        // A Pod being deleted whose node may never confirm it: looked at
        // again when it is overdue (see `Action::Stop`).
        _ => match overdue_since(pod.as_ref(), ctx.config.stop_timeout) {
            Some(deadline) => {
                let left = if deadline > now { deadline.duration_since(now).unsigned_abs() } else { Duration::ZERO };
                Requeue::requeue(left + Duration::from_secs(1))
            }
            None => Requeue::await_change(),
        },
    };
    Ok((requeue, status.phase))
}

/// Removes `pod`, pinned to `node` (the scheduler plugin's choice) where
/// kube-scheduler could not place it, once its backend has been recorded
/// `pending` again; scheduling will not offer it `node` again (in this
/// leadership term: the memory is the leader's). The operator counts only
/// backends against a node's capacity (it does not read other workloads'
/// Pods), so a node other Pods filled can be chosen: without this, the Pod
/// would wait there until the startup timeout failed the backend, however
/// empty the other nodes. Any other reason kube-scheduler gives (a taint
/// or cordon since the choice, the node gone, its Pod limit) moves it too.
async fn reschedule(ctx: &Context, slab: &SessionLivedBackend, pods: &Api<Pod>, pod: Option<&Pod>, node: String) -> Result<(), Error> {
    let why = pod.and_then(unschedulable).unwrap_or_default();
    let inventory = ctx.inventory.lock().expect("inventory lock").clone();
    if let (Some(inventory), Some(uid)) = (inventory, slab.uid()) {
        // Other backends as big are kept off it for a while only when what
        // it lacked is what the plugin counts (not a GPU, a port, a zone).
        let lacked = pod::lacks_room(&why).then(|| requests(slab));
        inventory.pass_over(uid, node.clone(), lacked);
    }
    if let Some(p) = pod {
        // Deleted at once, whatever the grace, as it was read: never bound
        // to a node. One that changed since (kube-scheduler bound it after
        // all) is read again (409: retried), not removed under its kubelet.
        let preconditions = kube::api::Preconditions { uid: p.metadata.uid.clone(), resource_version: p.metadata.resource_version.clone() };
        let params = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(preconditions), ..DeleteParams::default() };
        match delete_if_there(pods, &p.name_any(), &params).await {
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::Stale(slab.name_any())),
            done => done?,
        }
    }
    ctx.metrics.operator.rescheduled.inc();
    let note = format!("its Pod could not run on {node}, the node the scheduler plugin chose ({why}); placing it again without {node}");
    tracing::info!(backend = %slab.name_any(), namespace = %slab.namespace().unwrap_or_default(), "{note}");
    publish(ctx, slab, EventType::Normal, "Rescheduled".into(), note, "Reschedule", Some(&node)).await;
    Ok(())
}

/// How long past its grace period a Pod being deleted is waited for, at
/// least (its kubelet reports the stop within seconds when it can).
const MIN_STOP_OVERDUE: Duration = Duration::from_secs(5);

/// When a Pod being deleted counts as overdue: its deletion deadline (the
/// request's time plus its grace period) plus the stop timeout (at least
/// [`MIN_STOP_OVERDUE`]). `None` for a Pod not being deleted.
fn overdue_since(pod: Option<&Pod>, stop_timeout: Duration) -> Option<Timestamp> {
    let deadline = pod?.metadata.deletion_timestamp.as_ref()?.0;
    let margin = jiff::SignedDuration::try_from(stop_timeout.max(MIN_STOP_OVERDUE)).ok()?;
    deadline.checked_add(margin).ok()
}

/// Deletes a backend's Pod with `grace` to stop (gone already: fine).
async fn delete_pod(pods: &Api<Pod>, pod: &Pod, grace: Duration) -> Result<(), kube::Error> {
    let grace = grace.as_secs().min(u32::MAX.into()) as u32;
    // This Pod only: one of the same name made since it was read (another
    // backend's, or a stranger's) stays (409, retried on the next read).
    let preconditions = kube::api::Preconditions { uid: pod.metadata.uid.clone(), resource_version: None };
    let params = DeleteParams { grace_period_seconds: Some(grace), preconditions: Some(preconditions), ..DeleteParams::default() };
    delete_if_there(pods, &pod.name_any(), &params).await
}

/// Deletes `name`; one already gone is no error.
async fn delete_if_there<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why [`create_pod`] created no Pod, when the backend is not simply to be
/// retried.
enum Created {
    /// The Pod's create failed (the API server's answer).
    Pod(kube::Error),
    /// The backend cannot have its Service: the name is something else's.
    Refused(String),
}

/// Creates the backend's Service (when asked for) and then its Pod. A
/// Service of that name that is this backend's is kept; one that a
/// previous backend of the name owns (a key's, not yet garbage-collected)
/// is deleted now and the create retried shortly: kept, the backend would
/// lose its Service when the collector came. One that is nobody's backend's
/// refuses the backend, naming it: it would route the backend's traffic
/// elsewhere.
async fn create_pod(
    ctx: &Context,
    slab: &SessionLivedBackend,
    pods: &Api<Pod>,
    node: Option<&str>,
    selector: &[Label],
) -> Result<Result<Pod, Created>, Error> {
    if let Some(service) = service_for(slab) {
        let name = slab.name_any();
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &slab.namespace().unwrap_or_default());
        match services.create(&PostParams::default(), &service).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => match services.get_opt(&name).await? {
                Some(s) if s.metadata.deletion_timestamp.is_none() && owned_meta(&s.metadata, slab) => {}
                Some(s) if s.metadata.deletion_timestamp.is_some() || controlled_by_a_backend(&s.metadata) => {
                    if s.metadata.deletion_timestamp.is_none() {
                        let only_that = DeleteParams {
                            preconditions: Some(kube::api::Preconditions { uid: s.metadata.uid.clone(), resource_version: None }),
                            ..DeleteParams::default()
                        };
                        match services.delete(&name, &only_that).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    return Err(Error::Stale(name));
                }
                Some(_) => {
                    let why = format!(
                        "a Service named {name} exists and is not this backend's (delete it, or create the backend without a Service)"
                    );
                    return Ok(Err(Created::Refused(why)));
                }
                None => return Err(Error::Stale(name)),
            },
            // Refused for good, as a Pod can be (see `apply`): most often a
            // backend name that is a valid object name but not a Service's
            // (a DNS-1035 label: no dots, a letter first, 63 characters at
            // most). Retrying would leave the backend pending for ever,
            // with no status to say why.
            Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => {
                return Ok(Err(Created::Refused(format!("its Service was refused: {}", e.message))));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pods.create(&PostParams::default(), &pod_for(slab, node, selector, ctx.config.host_domain.as_deref())).await.map_err(Created::Pod))
}

/// Whether `meta`'s controller is a SessionLivedBackend (a previous one of
/// the name, when it is not the one at hand).
fn controlled_by_a_backend(meta: &kube::api::ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "SessionLivedBackend" && r.api_version.starts_with("spawner.dev/"))
}

/// Why scheduling failed, for a backend's status: a cache that never
/// filled says where to look, not "retrying".
fn unscheduled_why(error: &Error) -> String {
    match error {
        Error::CachesFilling => {
            "the operator's caches of Nodes and backends never filled (can it list and watch Nodes? see its log)".into()
        }
        e => e.to_string(),
    }
}

/// What [`retried_too_long`] says when a backend's Pod could not be
/// created.
const POD_NOT_CREATED: &str = "its Pod could not be created";

/// The failure to record (`{what} within N s: {why}`) when scheduling a
/// backend or creating its Pod has failed with `error`'s kind for the
/// startup timeout, counted from its first such failure on this replica in
/// this term (the status is not written while it is retried). Without it,
/// an error that does not go away (an admission webhook that is down, a Pod
/// name something else holds, scheduling caches the operator may not fill)
/// kept the backend `pending`, and everyone waiting for it, for ever. Not
/// from the backend's creation: one created while no replica led would fail
/// at its first error. `Err(error)`, to return and be retried, until then
/// (and always at the first failure).
fn retried_too_long(
    ctx: &Context,
    slab: &SessionLivedBackend,
    now: Timestamp,
    error: Error,
    what: &str,
    why: &str,
) -> Result<String, Error> {
    let failures = ctx.failures.lock().expect("failures lock");
    let since = failures.get(&failure_key(slab)).filter(|f| f.uid == slab.uid() && f.class == error.class()).map(|f| f.since);
    let waited = since.map(|since| now.duration_since(since));
    let timeout = ctx.config.startup_timeout;
    match waited {
        Some(w) if w.is_positive() && w.unsigned_abs() >= timeout => {
            Ok(format!("{what} within {} s (--startup-timeout-seconds): {why}", timeout.as_secs()))
        }
        _ => Err(error),
    }
}

/// Writes the status when it differs from what the object says;
/// `waiting` is why its Pod is not running yet, when it says.
async fn record(
    slab: &SessionLivedBackend,
    ctx: &Context,
    status: &Status,
    pod: Option<&Pod>,
    waiting: Option<&Waiting>,
    now: Timestamp,
    always: bool,
) -> Result<(), Error> {
    let mut next = slab.status.clone().unwrap_or_default();
    next.record(status, slab.metadata.generation, now);
    match waiting {
        Some(Waiting::ForNode(why)) if status.phase == Phase::Starting => next.waiting_for_node(why),
        Some(Waiting::ForContainer(why)) if status.phase == Phase::Starting => next.waiting_for_container(why),
        _ => {}
    }
    let pod_not_ready = pod.filter(|p| status.phase == Phase::Ready && !super::pod::is_ready(p)).map(super::pod::not_ready_why);
    if let Some(why) = &pod_not_ready {
        next.pod_not_ready(why, slab.status.as_ref(), now);
    }
    // An ended backend has no address: its Pod's IP may soon be another
    // Pod's (the node it ran on is kept, as where it ran).
    if status.phase.is_terminal() {
        next.pod_ip = None;
    } else if let Some(pod) = pod
        && let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone())
    {
        next.pod_ip = Some(ip);
    }
    if let Some(pod) = pod {
        // Where it really runs (kube-scheduler binds the Pod), once known.
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            next.node_name = Some(node);
        }
    }
    if let Some(base) = &ctx.config.public_url {
        next.url = Some(crate::backends::backend_url(base, ctx.config.host_domain.as_deref(), &slab.name_any()));
    }
    if slab.status.as_ref() == Some(&next) && !always {
        return Ok(());
    }
    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), &slab.namespace().unwrap_or_default());
    // Only onto the version this reconcile read: a reconcile that ran on a
    // cached object older than our last write must not undo it (409, retried
    // once the cache has caught up).
    let written = cleared(slab.status.as_ref(), &next);
    let patch = serde_json::json!({ "metadata": { "resourceVersion": slab.metadata.resource_version }, "status": written });
    match api.patch_status(&slab.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::Stale(slab.name_any())),
        Err(e) => return Err(e.into()),
    }
    let was_not_ready = slab.status.as_ref().and_then(|s| s.ready_condition()).is_some_and(|c| c.reason == super::crd::POD_NOT_READY);
    let same_phase = slab.status.as_ref().and_then(|s| s.phase) == Some(status.phase);
    if same_phase && status.phase == Phase::Ready && was_not_ready != pod_not_ready.is_some() {
        let backend = slab.name_any();
        let (kind, reason, note) = match &pod_not_ready {
            Some(why) => {
                tracing::warn!(%backend, why = %why, "a ready backend's Pod is not ready: the proxy answers 503 until it is again");
                (EventType::Warning, super::crd::POD_NOT_READY, format!("its Pod is not ready: {why}"))
            }
            None => {
                tracing::info!(%backend, "a ready backend's Pod is ready again");
                (EventType::Normal, "PodReady", "its Pod is ready again".to_string())
            }
        };
        publish(ctx, slab, kind, reason.into(), note, "Reconcile", None).await;
    }
    if !same_phase {
        let (backend, namespace) = (slab.name_any(), slab.namespace().unwrap_or_default());
        let reason = status.reason.map(Reason::as_str).unwrap_or("");
        // A failure is worth a warning: alerts on warnings catch crashing
        // templates and lost Pods.
        if status.phase == Phase::Failed {
            tracing::warn!(%backend, %namespace, phase = status.phase.as_str(), reason, "backend changed phase");
        } else {
            tracing::info!(%backend, %namespace, phase = status.phase.as_str(), reason, "backend changed phase");
        }
        if let (Phase::Ready, Some(ready)) = (status.phase, status.ready_at) {
            let secs = ready.duration_since(status.created_at).as_secs_f64();
            ctx.metrics.backends.spawn_to_ready_seconds.observe(secs.max(0.0));
        }
        if status.phase.is_terminal() {
            ctx.metrics.backends.count_end(status);
        }
        // `kubectl describe slab` shows these; a failed one is a warning.
        // Only a backend placed again goes back to `pending`: its
        // `Rescheduled` Event says why.
        if status.phase == Phase::Pending {
            return Ok(());
        }
        let kind = if status.phase == Phase::Failed { EventType::Warning } else { EventType::Normal };
        let (reason, note) = (super::crd::camel_case(status.phase.as_str()), phase_note(status));
        publish(ctx, slab, kind, reason, note, "Reconcile", status.node.as_deref()).await;
    }
    Ok(())
}

/// `next` as a merge patch's status over `before`. A merge patch keeps a
/// field it leaves out, so each that `before` has and `next` no longer has
/// is written as null, which removes it: an ended backend's Pod IP, and
/// the node and start times of one placed again.
fn cleared(before: Option<&SessionLivedBackendStatus>, next: &SessionLivedBackendStatus) -> serde_json::Value {
    let mut written = serde_json::to_value(next).expect("a status serialises");
    let before = before.map(|b| serde_json::to_value(b).expect("a status serialises"));
    if let (Some(serde_json::Value::Object(before)), serde_json::Value::Object(after)) = (before, &mut written) {
        for key in before.into_iter().map(|(k, _)| k) {
            after.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    written
}

/// Why a starting backend's Pod is not running yet.
enum Waiting {
    /// kube-scheduler found no node for it (its message).
    ForNode(String),
    /// Its kubelet cannot start the application container (its reason and
    /// message: a pull error, a refused configuration).
    ForContainer(String),
}

/// Records a Kubernetes Event on `slab`, about `node` too when given (its
/// `related` object); failing to is logged, not fatal. kube-runtime's
/// recorder counts an Event of the same reason and objects as the first
/// one again, whatever its note, so the node is what keeps "starting on
/// a" and, once placed again, "starting on b" apart.
async fn publish(
    ctx: &Context,
    slab: &SessionLivedBackend,
    type_: EventType,
    reason: String,
    mut note: String,
    action: &str,
    node: Option<&str>,
) {
    crate::text::cut_to(&mut note, super::MAX_EVENT_NOTE, "…");
    let secondary = node.map(|n| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(n.into()),
        ..Default::default()
    });
    let event = KubeEvent { type_, reason, note: Some(note), action: action.into(), secondary };
    if let Err(e) = ctx.events.publish(&event, &slab.object_ref(&())).await {
        tracing::warn!(backend = %slab.name_any(), error = %e, "could not record a Kubernetes Event");
    }
}

/// An Event's note: the phase, where, and why.
fn phase_note(status: &Status) -> String {
    let mut note = status.phase.as_str().to_string();
    if let Some(node) = &status.node {
        note.push_str(&format!(" on {node}"));
    }
    match (status.reason, &status.message) {
        (Some(r), Some(m)) => note.push_str(&format!(" ({}): {m}", r.as_str())),
        (Some(r), None) => note.push_str(&format!(" ({})", r.as_str())),
        (None, Some(m)) => note.push_str(&format!(": {m}")),
        (None, None) => {}
    }
    note
}

/// Asks the scheduler plugin, with the Nodes that could run the backend's
/// Pod (not cordoned, taints tolerated; none while a cordon is all that
/// keeps it off the nodes its selector names) as candidates and every live backend as what is already placed (all
/// namespaces: they share the Nodes). The owner's backends are those in the
/// backend's own namespace: namespaces are tenancy boundaries, and an owner
/// name in one says nothing about the same name in another. Returns the
/// admission and, for "anywhere", the node selector to give the Pod.
async fn schedule(ctx: &Context, slab: &SessionLivedBackend) -> Result<(Admission, Vec<Label>), Error> {
    if let Some(problem) = toleration_problem(slab).or_else(|| credential_problem(slab)) {
        return Ok((Admission::Rejected { message: problem }, Vec::new()));
    }
    let inventory = ctx.inventory.lock().expect("inventory lock").clone();
    let inventory = inventory.filter(|i| i.ready()).ok_or(Error::CachesFilling)?;
    let _deciding = inventory.deciding().await;
    let nodes = inventory.nodes();
    let slabs = inventory.backends();
    let live: Vec<&SessionLivedBackend> = slabs
        .iter()
        .map(|s| &**s)
        .filter(|s| s.uid() != slab.uid())
        .filter(|s| !s.phase().is_terminal() && s.phase() != Phase::Pending)
        .collect();
    let placed_backend = |s: &SessionLivedBackend| PlacedBackend {
        name: s.name_any(),
        owner: s.spec.owner.clone(),
        labels: s.plugin_backend().labels,
        node: s.status.as_ref().and_then(|st| st.node_name.clone()),
        requests: requests(s),
    };
    let unseen = inventory.unseen_admissions(&slabs, slab.uid().as_deref());
    let placed: Vec<PlacedBackend> = live.iter().map(|s| placed_backend(s)).chain(unseen.iter().map(|a| a.placed.clone())).collect();
    // Nodes the Pod could not run on are not offered: it would stay pending
    // there. When no node that could run it carries its node selector but a
    // cordoned one does (every node cordoned for an upgrade, a GPU pool
    // drained for maintenance), or one kept off only by a passing taint
    // (not ready, under pressure: see `Fit::Later`), none is offered, which
    // asks the plugin for "anywhere": the Pod then waits for kube-scheduler
    // to place it once that passes, and the startup timeout bounds the
    // wait. Another taint the template does not tolerate is not waited for:
    // when only such nodes carry the selector, the backend is rejected,
    // naming them.
    let selector = slab.spec.template.node_selector_labels();
    let fits: Vec<(&Node, Fit)> = nodes.iter().map(|n| (&**n, fit(slab, n))).collect();
    let fitting = |f: Fit| fits.iter().filter(move |(_, x)| *x == f).map(|(n, _)| *n);
    let runnable: Vec<&Node> = fitting(Fit::Runs).collect();
    let later: Vec<&Node> = fitting(Fit::Later).filter(|n| carries(n, &selector)).collect();
    let waits = |runnable: &[&Node]| !later.is_empty() && !runnable.iter().any(|n| carries(n, &selector));
    // Nor those its Pod could not run on (see `reschedule`); once it has
    // been moved off `MAX_MOVES` of them, none. Nor, for a while, nodes
    // that lacked room for a backend needing no more than this one (each
    // create in a burst would be moved off them in turn).
    let passed_over = slab.uid().map(|uid| inventory.passed_over(&slabs, &uid)).unwrap_or_default();
    let lacking = inventory.lacking_room_for(&requests(slab));
    let left_out = |n: &&Node| passed_over.contains(&n.name_any()) || lacking.contains(&n.name_any());
    let fresh: Vec<&Node> = runnable.iter().copied().filter(|n| !left_out(n)).collect();
    // Those of the nodes that could run it: what a rejection names, and
    // whether a refusal is asked again with them.
    let skipped: Vec<String> = runnable.iter().copied().filter(left_out).map(|n| n.name_any()).collect();
    let offered: &[&Node] = if passed_over.len() >= MAX_MOVES || waits(&fresh) { &[] } else { &fresh };
    let tainted_only = tainted_only(&selector, &[&runnable[..], &later[..]].concat(), &fitting(Fit::Tainted).collect::<Vec<_>>());
    let candidates = |offered: &[&Node]| -> Vec<CandidateNode> {
        offered
            .iter()
            .map(|n| {
                let name = n.name_any();
                CandidateNode {
                    labels: n.labels().iter().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect(),
                    capacity: capacity(n.status.as_ref().and_then(|s| s.allocatable.as_ref())),
                    backends: placed.iter().filter(|b| b.node.as_ref() == Some(&name)).cloned().collect(),
                    name,
                }
            })
            .collect()
    };
    let namespace = slab.namespace().unwrap_or_default();
    let owner_backends = match &slab.spec.owner {
        Some(o) => live
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()) && s.spec.owner.as_ref() == Some(o))
            .map(|s| placed_backend(s))
            .chain(unseen.iter().filter(|a| a.namespace == namespace && a.placed.owner.as_ref() == Some(o)).map(|a| a.placed.clone()))
            .collect(),
        None => Vec::new(),
    };
    let request = PlacementRequest {
        backend: slab.plugin_backend(),
        requests: requests(slab),
        node_selector: selector.clone(),
        nodes: candidates(offered),
        owner_backends,
        now: crate::token::now_unix(),
    };
    // Only tainted nodes carry what it needs: rejected here, whatever the
    // plugin would say (with no candidates, "anywhere"), since no wait
    // helps until the template tolerates the taint.
    let placement = if tainted_only.is_some() {
        let what =
            if request.node_selector.is_empty() { "no node can run it" } else { "no node that can run it carries its node selector" };
        Placement::Reject(what.into())
    } else {
        match place(ctx, request.clone()).await? {
            // Refused without the nodes it was moved off: asked again with
            // them. Would it take one, the Pod goes "anywhere", and waits
            // for kube-scheduler to find it room within the startup
            // timeout, as it would have waited on that node; a refusal
            // that stands with them (a quota) stands.
            Placement::Reject(_) if !skipped.is_empty() => {
                let all = if waits(&runnable) { Vec::new() } else { candidates(&runnable) };
                match place(ctx, PlacementRequest { nodes: all, ..request }).await? {
                    Placement::Node(_) => Placement::Anywhere(Vec::new()),
                    other => other,
                }
            }
            placement => placement,
        }
    };
    let admission = match placement {
        Placement::Node(n) => (Admission::Admitted { node: Some(n) }, Vec::new()),
        Placement::Anywhere(selector) => (Admission::Admitted { node: None }, selector),
        Placement::Reject(mut message) => {
            message.push_str(tainted_only.as_deref().unwrap_or_default());
            if !skipped.is_empty() {
                let names = skipped.join(", ");
                message.push_str(&format!(
                    "; passed over: {names} (kube-scheduler could not place its Pod there, or, within the last 30 s, a backend's as big)"
                ));
            }
            (Admission::Rejected { message }, Vec::new())
        }
    };
    match (&admission.0, slab.uid()) {
        (Admission::Admitted { node }, Some(uid)) => {
            inventory.admitted(uid, namespace, PlacedBackend { node: node.clone(), ..placed_backend(slab) })
        }
        (Admission::Rejected { .. }, Some(uid)) => inventory.forget(&uid),
        _ => {}
    }
    Ok(admission)
}

/// How many nodes a backend is moved off (see `reschedule`) before it is
/// offered none, which asks the plugin for "anywhere": a Pod that no node
/// takes for a reason the plugin does not see (an extended resource, a
/// volume bound to one zone) would otherwise be moved across the cluster,
/// each move a Pod created and deleted and an Event.
const MAX_MOVES: usize = 3;

/// The scheduler plugin's answer to `request`, off the async workers.
async fn place(ctx: &Context, request: PlacementRequest) -> Result<Placement, Error> {
    let plugins = ctx.plugins.clone();
    tokio::task::spawn_blocking(move || plugins.scheduler().place(&request)).await.map_err(|e| Error::Scheduler(e.to_string()))
}

/// When only nodes left out for a taint carry the node selector's labels
/// (no node that could run the backend, now or once uncordoned, does):
/// the note naming them, for the rejection, since they are what to change
/// (tolerate the taint). `None` otherwise: the plugin decides, and a
/// rejection of its own (a quota, say) has nothing to do with them.
fn tainted_only(selector: &[Label], offered: &[&Node], left_out: &[&Node]) -> Option<String> {
    const NAMED: usize = 5;
    if offered.iter().any(|n| carries(n, selector)) {
        return None;
    }
    let matching: Vec<&&Node> = left_out.iter().filter(|n| carries(n, selector)).collect();
    if matching.is_empty() {
        return None;
    }
    let mut names: Vec<String> = matching.iter().take(NAMED).map(|n| n.name_any()).collect();
    if matching.len() > NAMED {
        names.push(format!("and {} more", matching.len() - NAMED));
    }
    Some(format!("; not offered: {} (a NoSchedule/NoExecute taint the template does not tolerate)", names.join(", ")))
}

fn owned_by(pod: &Pod, slab: &SessionLivedBackend) -> bool {
    owned_meta(&pod.metadata, slab)
}

/// Whether `meta`'s controller is `slab` (by uid), or, with no controller
/// at all, it carries the backend label with `slab`'s uid: `kubectl delete
/// --cascade=orphan` has the garbage collector remove the owner references
/// of a backend's Pod and Service before the backend's finalizer runs, and
/// they would otherwise be taken for someone else's and left running, with
/// no route and no sweeper.
fn owned_meta(meta: &kube::api::ObjectMeta, slab: &SessionLivedBackend) -> bool {
    let Some(uid) = slab.uid() else { return false };
    match meta.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
        Some(r) => r.uid == uid,
        None => meta.labels.as_ref().and_then(|l| l.get(BACKEND_LABEL)) == Some(&uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_to_five_minutes_spread_by_up_to_a_fifth() {
        let secs = |n, jitter| retry_delay(n, jitter).as_secs_f64();
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(|n| secs(n, 0.0)), [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0]);
        assert_eq!(secs(u32::MAX, 0.0), 300.0, "no overflow");
        assert_eq!(secs(1, 0.999_999).round(), 4.0, "at most a fifth less");
        assert!(secs(7, 0.5) < 300.0 && secs(7, 0.5) > 240.0);
    }

    fn node(name: &str, zone: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("zone".to_string(), zone.to_string())].into());
        n
    }

    #[test]
    fn a_status_patch_removes_what_the_status_no_longer_has() {
        let status = |v: serde_json::Value| -> SessionLivedBackendStatus { serde_json::from_value(v).unwrap() };
        let before = status(serde_json::json!({"phase": "starting", "nodeName": "a", "podIP": "10.0.0.1",
            "startedAt": "2026-12-02T10:00:00Z", "url": "https://s.example/p/b/"}));
        let next = status(serde_json::json!({"phase": "pending", "url": "https://s.example/p/b/", "message": "m"}));
        let written = cleared(Some(&before), &next);
        assert_eq!(written["phase"], "pending");
        assert_eq!(written["message"], "m");
        assert_eq!(written["url"], "https://s.example/p/b/");
        for gone in ["nodeName", "podIP", "startedAt"] {
            assert_eq!(written.get(gone), Some(&serde_json::Value::Null), "{gone}: {written}");
        }
        assert_eq!(written.get("reason"), None, "absent before and after: left out");
        assert_eq!(cleared(None, &next), serde_json::to_value(&next).unwrap());
    }

    #[test]
    fn a_rejection_names_left_out_nodes_only_when_they_are_what_to_change() {
        let (a, gpu1, gpu2) = (node("a", "a"), node("gpu-1", "gpu"), node("gpu-2", "gpu"));
        let zone = |z: &str| vec![Label { key: "zone".into(), value: z.into() }];
        let note = tainted_only(&zone("gpu"), &[&a], &[&gpu1, &gpu2]).unwrap();
        assert!(note.starts_with("; not offered: gpu-1, gpu-2 (a NoSchedule/NoExecute taint"), "{note}");
        assert_eq!(tainted_only(&[], &[&a], &[&gpu1]), None, "an offered node carries the (empty) selector: not about them");
        assert_eq!(tainted_only(&zone("a"), &[&a], &[&gpu1]), None, "nor when one offered carries it");
        assert_eq!(tainted_only(&zone("b"), &[&a], &[&gpu1]), None, "nor when none left out would have matched");
        let many: Vec<Node> = (0..7).map(|i| node(&format!("gpu-{i}"), "gpu")).collect();
        let note = tainted_only(&zone("gpu"), &[], &many.iter().collect::<Vec<_>>()).unwrap();
        assert!(note.contains("gpu-4, and 2 more"), "{note}");
    }
}
