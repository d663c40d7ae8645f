//! The proxy's and the sweeper's view of backends on Kubernetes: a watched
//! cache of one namespace's `SessionLivedBackend` objects, answering the
//! same [`Resolve`] and [`SweepSource`] questions local mode answers.
//!
//! The proxy routes `/p/{name}/` to the Pod IP and `httpPort` the operator
//! recorded, once the status says `ready`, and only while the backend's
//! own Pod (by its uid label), watched here too, has that IP and is Ready:
//! a status is only as fresh as the operator's last write, and while the
//! operator is down a deleted Pod's IP may go to another namespace's Pod,
//! which must not get this backend's users (and their identity headers);
//! a backend whose Pod stopped being Ready (its own readiness probe, a
//! hung application) gets a 503 that says so, not a timeout. Activity is
//! metered here, in the
//! proxy process, never reported by the backend Pods, so a backend cannot
//! keep itself alive by writing to the API server.
//!
//! The sweeper's verdicts travel to the operator as an annotation on the
//! object ([`TERMINATE_ANNOTATION`]); the operator feeds it to the
//! lifecycle as a termination request, so the object keeps its record:
//! `terminated`, reason `idle` or `lifetime`, and the plugin's message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde::{Deserialize, Serialize};

use k8s_openapi::api::core::v1::Pod;

use super::crd::SessionLivedBackend;
use super::peers::{BackendActivity, Gathered, Peers};
use super::pod::BACKEND_LABEL;
use crate::activity::{Activity, Snapshot};
use crate::lifecycle::{Phase, Reason, TerminationRequest};
use crate::plugins::credentials::Reached;
use crate::plugins::types::Backend;
use crate::proxy::{Resolve, Target};
use crate::server::AbortOnDrop;
use crate::sweeper::{Candidate, Knowing, SweepSource};

/// The annotation a termination request travels in, from the sweeper (or
/// anyone allowed to patch the object) to the operator. Its value is JSON:
/// `{"reason": "idle", "message": "..."}`.
pub const TERMINATE_ANNOTATION: &str = "spawner.dev/terminate";

#[derive(Serialize, Deserialize)]
struct TerminateNote {
    reason: Reason,
    message: String,
}

/// The termination asked for through [`TERMINATE_ANNOTATION`], if any. An
/// unreadable value still ends the backend (reason `requested`), and the
/// message says what was wrong with it.
pub fn termination_requested(slab: &SessionLivedBackend) -> Option<TerminationRequest> {
    let value = slab.annotations().get(TERMINATE_ANNOTATION)?;
    Some(match serde_json::from_str::<TerminateNote>(value) {
        Ok(n) => TerminationRequest { reason: n.reason, message: n.message },
        Err(e) => TerminationRequest {
            reason: Reason::Requested,
            message: format!("{TERMINATE_ANNOTATION} is not {{\"reason\": ..., \"message\": ...}} ({e}); terminating anyway"),
        },
    })
}

/// What `slab`'s WebSockets are told if it is ending: asked to
/// (the termination annotation), stopping, ended, or deleted.
fn ending(slab: &SessionLivedBackend) -> Option<String> {
    let status = slab.status.as_ref();
    let (reason, message) = match termination_requested(slab) {
        _ if slab.phase() == Phase::Terminating || slab.phase().is_terminal() => {
            (status.and_then(|s| s.reason), status.and_then(|s| s.message.clone()))
        }
        Some(asked) => (Some(asked.reason), Some(asked.message)),
        None if slab.metadata.deletion_timestamp.is_some() => (Some(Reason::Requested), Some("its object was deleted".into())),
        None => return None,
    };
    Some(crate::lifecycle::ending_note(reason, message.as_deref()))
}

/// The merge patch that asks the operator to end a backend.
pub fn termination_patch(request: &TerminationRequest) -> serde_json::Value {
    let note = TerminateNote { reason: request.reason, message: request.message.clone() };
    let value = serde_json::to_string(&note).expect("a note serializes");
    serde_json::json!({ "metadata": { "annotations": { TERMINATE_ANNOTATION: value } } })
}

/// One namespace's backends, watched.
pub struct Cluster {
    namespace: String,
    store: Store<SessionLivedBackend>,
    api: Api<SessionLivedBackend>,
    /// Per backend name: its activity meter and its plugin view (shared
    /// with the watch, which tells a meter when its backend ends).
    meters: Arc<Mutex<HashMap<String, Meter>>>,
    /// Bumped after every change the watch delivers (the cache is already
    /// updated): what status streams wait on.
    changes: tokio::sync::watch::Sender<u64>,
    default_grace_seconds: u64,
    runtime: tokio::runtime::Handle,
    /// Set when several replicas share the sweeping (see [`super::peers`]).
    fleet: std::sync::OnceLock<Fleet>,
    /// The backends' Pods (those with the backend label), to route only
    /// to a Pod that is still the backend's and Ready.
    pods: Store<Pod>,
    /// The watches feeding the caches, stopped with them.
    _watching: [AbortOnDrop; 2],
}

/// What the proxy keeps per backend object.
struct Meter {
    /// The object's uid: a new object with an old name starts from zero.
    uid: String,
    activity: Arc<Activity>,
    /// The backend as plugins see it, built once per object version (the
    /// proxy asks on every request), with that `resourceVersion`.
    backend: Option<(String, Arc<Backend>)>,
}

/// What a replica needs to sweep for all replicas.
struct Fleet {
    /// Whether this replica holds the sweeper Lease; dropping it ends the
    /// election (and releases the Lease).
    leading: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    peers: Peers,
    /// The other replicas' activity, gathered before this sweep.
    gathered: Mutex<Gathered>,
    /// Counts sweeps skipped for want of a replica's answer.
    skipped: prometheus_client::metrics::counter::Counter,
}

impl Cluster {
    /// Starts watching `namespace` (on the current tokio runtime) and waits
    /// until the cache holds the first full listing.
    pub async fn start(client: Client, namespace: &str, default_grace_seconds: u64) -> Result<Arc<Self>, kube::Error> {
        let api: Api<SessionLivedBackend> = Api::namespaced(client, namespace);
        // Fail here, with the API server's reason, rather than retrying
        // silently in the background (no CRD, no permission).
        api.list(&kube::api::ListParams::default().limit(1)).await?;
        let (store, writer) = reflector::store();
        let (changes, _) = tokio::sync::watch::channel(0u64);
        let notify = changes.clone();
        let meters: Arc<Mutex<HashMap<String, Meter>>> = Arc::default();
        let ended = meters.clone();
        // Touched, not applied: a deletion is a change too.
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .backoff(super::watch_backoff())
            .touched_objects();
        let failures = super::WatchFailures::new("watching SessionLivedBackends");
        let watching = tokio::spawn(stream.for_each(move |event| {
            match event {
                Ok(slab) => {
                    notify.send_modify(|n| *n += 1);
                    if let Some(why) = ending(&slab)
                        && let Some(meter) = ended.lock().expect("meters lock").get(slab.metadata.name.as_deref().unwrap_or_default())
                        && slab.metadata.uid.as_ref() == Some(&meter.uid)
                    {
                        // Its WebSockets close saying why.
                        meter.activity.end(&why);
                    }
                }
                Err(e) => failures.log(&e),
            }
            std::future::ready(())
        }));
        let pods_api: Api<Pod> = Api::namespaced(api.clone().into_client(), namespace);
        pods_api.list(&kube::api::ListParams::default().labels(BACKEND_LABEL).limit(1)).await?;
        let (pods, pods_writer) = reflector::store();
        // What routing needs of a Pod: its labels, IP and conditions.
        let slim = |p: &mut Pod| {
            p.managed_fields_mut().clear();
            p.spec = None;
        };
        let pod_stream =
            reflector::reflector(pods_writer, watcher(pods_api, watcher::Config::default().labels(BACKEND_LABEL)).modify(slim))
                .backoff(super::watch_backoff())
                .touched_objects();
        let pod_failures = super::WatchFailures::new("watching the backends' Pods");
        let watching_pods = tokio::spawn(pod_stream.for_each(move |event| {
            if let Err(e) = event {
                pod_failures.log(&e);
            }
            std::future::ready(())
        }));
        let _ = store.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        Ok(Arc::new(Cluster {
            namespace: namespace.to_string(),
            store,
            api,
            meters,
            changes,
            default_grace_seconds,
            runtime: tokio::runtime::Handle::current(),
            fleet: std::sync::OnceLock::new(),
            pods,
            _watching: [AbortOnDrop(watching), AbortOnDrop(watching_pods)],
        }))
    }

    /// The namespace it watches.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The object `name` as the cache holds it (the cache follows the API
    /// server within moments; an object just created may not be in it yet).
    pub fn slab(&self, name: &str) -> Option<Arc<SessionLivedBackend>> {
        self.store.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Whether `slab`'s own Pod (named like it, carrying its uid) is at
    /// `ip`, Ready, and not being deleted.
    fn serving(&self, slab: &SessionLivedBackend, ip: &str) -> bool {
        let Some(pod) = self.pods.get(&ObjectRef::new(&slab.name_any()).within(&self.namespace)) else { return false };
        pod.labels().get(BACKEND_LABEL) == slab.uid().as_ref()
            && pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip)
            && super::pod::is_ready(&pod)
    }

    /// Every object in the cache.
    pub fn slabs(&self) -> Vec<Arc<SessionLivedBackend>> {
        self.store.state()
    }

    /// The API for this namespace's objects.
    pub fn api(&self) -> &Api<SessionLivedBackend> {
        &self.api
    }

    /// Grace period for objects whose spec gives none.
    pub fn default_grace_seconds(&self) -> u64 {
        self.default_grace_seconds
    }

    /// A receiver that sees a change after every update of the cache.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Sweeps only while `leading`, judging each backend by the activity
    /// every replica in `peers` saw (see [`super::peers`]). Set once, at
    /// start.
    pub fn share_sweeping(&self, leading: tokio::sync::watch::Receiver<bool>, peers: Peers, metrics: &crate::metrics::Metrics) {
        let skipped = metrics.proxy.sweeps_skipped.clone();
        let fleet = Fleet { leading: Mutex::new(Some(leading)), peers, gathered: Mutex::new(Gathered::new()), skipped };
        if self.fleet.set(fleet).is_err() {
            tracing::warn!("share_sweeping called twice; keeping the first");
        }
    }

    /// Every meter's activity (taking the counters since the last call), for
    /// the replica that sweeps; meters of objects that are gone are dropped
    /// first (a replica that does not sweep forgets them here).
    pub fn take_activity(&self) -> Vec<BackendActivity> {
        self.forget_gone_meters();
        let meters = self.meters.lock().expect("meters lock");
        meters.iter().map(|(name, m)| BackendActivity { name: name.clone(), uid: m.uid.clone(), activity: m.activity.snapshot() }).collect()
    }

    /// Connections open to `slab` through this replica, without starting a
    /// meter for it (reading must not reset anyone's idle clock).
    pub fn open_connections(&self, slab: &SessionLivedBackend) -> u32 {
        let meters = self.meters.lock().expect("meters lock");
        match meters.get(slab.metadata.name.as_deref().unwrap_or_default()) {
            Some(m) if slab.metadata.uid.as_ref() == Some(&m.uid) => m.activity.open_connections(),
            _ => 0,
        }
    }

    /// Stops competing for the sweeper Lease (releasing it if held).
    pub fn stop_sweeping(&self) {
        if let Some(fleet) = self.fleet.get() {
            fleet.leading.lock().expect("leading lock").take();
        }
    }

    /// Drops the meters of objects no longer in the cache.
    fn forget_gone_meters(&self) {
        let present: std::collections::HashSet<(String, String)> =
            self.store.state().iter().map(|s| (s.name_any(), s.uid().unwrap_or_default())).collect();
        self.meters.lock().expect("meters lock").retain(|name, m| present.contains(&(name.clone(), m.uid.clone())));
    }

    /// The activity meter of `slab` (what the proxy counted).
    pub fn activity(&self, slab: &SessionLivedBackend) -> Arc<Activity> {
        self.with_meter(slab, |m| m.activity.clone())
    }

    /// Marks activity on `slab` now, in this replica's meter (which the
    /// sweep counts wherever it runs).
    pub fn touch(&self, slab: &SessionLivedBackend) {
        self.with_meter(slab, |m| m.activity.touch());
    }

    /// `f` on the meter of `slab`, started (or restarted, for a new object
    /// of the same name) if need be.
    fn with_meter<R>(&self, slab: &SessionLivedBackend, f: impl FnOnce(&mut Meter) -> R) -> R {
        let name = slab.metadata.name.as_deref().unwrap_or_default();
        let uid = slab.metadata.uid.as_deref().unwrap_or_default();
        let mut meters = self.meters.lock().expect("meters lock");
        let meter = match meters.get_mut(name) {
            Some(m) if m.uid == uid => m,
            _ => {
                let fresh = Meter { uid: uid.to_string(), activity: Activity::new(), backend: None };
                // Already ending when this replica first meets it (it
                // started since, or never served it): the watch's news came
                // before the meter, so tell it now.
                if let Some(why) = ending(slab) {
                    fresh.activity.end(&why);
                }
                meters.insert(name.to_string(), fresh);
                meters.get_mut(name).expect("just inserted")
            }
        };
        f(meter)
    }
}

impl Resolve for Cluster {
    fn resolve(&self, name: &str) -> Option<Target> {
        let slab = self.slab(name)?;
        let phase = slab.shown_phase();
        let addr = match (phase, slab.status.as_ref().and_then(|s| s.pod_ip.as_deref())) {
            (Phase::Ready, Some(ip)) if self.serving(&slab, ip) => {
                ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, slab.spec.http_port()))
            }
            _ => None,
        };
        // The plugin view is built once per object version, not per request.
        let version = slab.metadata.resource_version.as_deref().unwrap_or_default();
        let (backend, activity) = self.with_meter(&slab, |m| {
            let backend = match &m.backend {
                Some((v, b)) if v == version => b.clone(),
                _ => {
                    let b = Arc::new(slab.plugin_backend());
                    m.backend = Some((version.to_string(), b.clone()));
                    b
                }
            };
            (backend, m.activity.clone())
        });
        Some(Target { backend, phase, addr, activity, reached: Reached { created_at: slab.created_unix(), uid: slab.uid() } })
    }
}

impl SweepSource for Cluster {
    fn prepare(&self) -> std::pin::Pin<Box<dyn Future<Output = Option<Knowing>> + Send + '_>> {
        Box::pin(async move {
            let Some(fleet) = self.fleet.get() else { return Some(Knowing::Activity) };
            let leading = fleet.leading.lock().expect("leading lock").as_ref().is_some_and(|l| *l.borrow());
            if !leading {
                return None;
            }
            // What the last sweep took from the replicas and did not show
            // a plugin, for backends that are still here.
            let left: Gathered = std::mem::take(&mut *fleet.gathered.lock().expect("gathered lock"))
                .into_iter()
                .filter(|((name, uid), _)| self.slab(name).and_then(|s| s.uid()).as_ref() == Some(uid))
                .collect();
            let (gathered, failed) = match fleet.peers.gather().await {
                Ok(gathered) => (gathered, None),
                Err((partial, e)) => (partial, Some(e)),
            };
            *fleet.gathered.lock().expect("gathered lock") = super::peers::carry_over(left, gathered);
            match failed {
                None => Some(Knowing::Activity),
                Some(e) => {
                    fleet.skipped.inc();
                    tracing::warn!(
                        error = %e,
                        "cannot see every proxy replica's activity; this sweep judges no backend idle (fail safe), only lifetime limits"
                    );
                    Some(Knowing::LifetimesOnly)
                }
            }
        })
    }

    fn activity(&self, c: &Candidate) -> Snapshot {
        let own = c.activity.snapshot();
        let Some(fleet) = self.fleet.get() else { return own };
        let Some(uid) = self.slab(&c.backend.name).and_then(|s| s.uid()) else { return own };
        // Taken: what the plugin sees once is not shown again.
        match fleet.gathered.lock().expect("gathered lock").remove(&(c.backend.name.clone(), uid)) {
            Some(theirs) => own.merge(theirs),
            None => own,
        }
    }

    fn ready(&self) -> Vec<Candidate> {
        self.forget_gone_meters();
        let slabs = self.store.state();
        slabs
            .iter()
            .filter(|s| s.phase() == Phase::Ready)
            // Already condemned: the operator is on it.
            .filter(|s| !s.annotations().contains_key(TERMINATE_ANNOTATION))
            .map(|s| Candidate {
                backend: s.plugin_backend(),
                created_at: s.status.as_ref().and_then(|st| st.created_at).unwrap_or_else(Timestamp::now),
                ready_at: s.status.as_ref().and_then(|st| st.ready_at),
                grace_period_seconds: s.spec.grace_period_seconds.map_or(self.default_grace_seconds, u64::from),
                lifetime_limit_seconds: s.spec.lifetime_limit_seconds,
                activity: self.activity(s),
                uid: s.uid(),
            })
            .collect()
    }

    fn terminate(&self, c: &Candidate, request: TerminationRequest) {
        // The object judged, by uid: if the name belongs to a key's next
        // backend by now (the cache was behind, or changed during the
        // sweep), the API server refuses the patch (422, "metadata.uid:
        // field is immutable") instead of ending that one.
        let Some(uid) = c.uid.clone() else { return };
        let (api, name) = (self.api.clone(), c.backend.name.clone());
        self.runtime.spawn(async move {
            let mut patch = termination_patch(&request);
            patch["metadata"]["uid"] = serde_json::json!(uid);
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => tracing::info!(backend = %name, reason = request.reason.as_str(), detail = %request.message, "asked the operator to terminate"),
                Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("metadata.uid") => {
                    tracing::info!(backend = %name, "not terminated: the name now belongs to another backend (the one judged is gone)")
                }
                Err(e) => tracing::warn!(backend = %name, error = %e, "could not ask the operator to terminate; the next sweep retries"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_annotation(value: &str) -> SessionLivedBackend {
        let mut slab = SessionLivedBackend::new("b", Default::default());
        slab.metadata.annotations = Some([(TERMINATE_ANNOTATION.to_string(), value.to_string())].into());
        slab
    }

    #[test]
    fn a_termination_request_round_trips_through_the_annotation() {
        let request = TerminationRequest { reason: Reason::Idle, message: "no connections for 300 s".into() };
        let patch = termination_patch(&request);
        let value = patch["metadata"]["annotations"][TERMINATE_ANNOTATION].as_str().unwrap();
        assert_eq!(termination_requested(&with_annotation(value)), Some(request));
        assert_eq!(termination_requested(&SessionLivedBackend::new("b", Default::default())), None);
    }

    #[test]
    fn an_unreadable_annotation_still_terminates_and_says_why() {
        let r = termination_requested(&with_annotation("please stop")).unwrap();
        assert_eq!(r.reason, Reason::Requested);
        assert!(r.message.contains(TERMINATE_ANNOTATION), "{}", r.message);
    }
}
