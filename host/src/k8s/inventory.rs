//! What the operator's scheduling reads: every Node and every backend (all
//! namespaces, since they share the Nodes), kept current by two watches
//! rather than listed in full for each decision. A cluster with thousands
//! of backends would otherwise send the API server two full lists per
//! backend created.
//!
//! The caches drop what scheduling never reads and what makes objects big
//! (a Node's image list, a backend's template but for its resources,
//! every object's managed fields), so a large cluster costs little memory.
//!
//! A cache lags the operator's own writes: a backend admitted a moment ago
//! still looks pending in it. So decisions are taken one at a time, and
//! each admission is remembered until the cache shows it (or a minute has
//! passed), and counted meanwhile: two backends created together for one
//! owner see each other, as do two placed on one node.
//!
//! It also remembers, per backend, the nodes its Pod could not run on
//! (kube-scheduler could not place it there, most often for want of room:
//! the operator does not see other workloads' Pods), so that placing it
//! again does not offer them; and, for [`LACKING_FOR`], that those nodes
//! lacked room for that much, so that a backend needing as much or more is
//! not sent there first either. Like the admissions, this lasts as long as
//! this replica leads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource};

use super::crd::SessionLivedBackend;
use crate::lifecycle::Phase;
use crate::plugins::types::{PlacedBackend, Resources};
use crate::server::AbortOnDrop;

/// How long an admission is counted while the cache shows its backend
/// still pending.
const REMEMBERED_FOR: Duration = Duration::from_secs(60);

/// How long an admission is counted while the cache does not have its
/// backend at all (not yet; after this, it was deleted).
const ABSENT_FOR: Duration = Duration::from_secs(10);

/// How long a node that could not take a backend's Pod is not offered to
/// backends requesting as much or more: long enough for a burst of creates
/// (each would otherwise be moved off it in turn), short enough that room
/// made there (another workload's Pod gone) is used again soon.
pub const LACKING_FOR: Duration = Duration::from_secs(30);

/// A backend this replica admitted, as scheduling counts it.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Its namespace (owners are counted per namespace).
    pub namespace: String,
    /// Its name, owner, labels, node (if chosen) and requests.
    pub placed: PlacedBackend,
    at: Instant,
}

/// The two caches. They fill in the background: until both have their
/// first listing, [`Inventory::ready`] says no and scheduling waits (the
/// controller retries), while the rest of reconciling goes on.
pub struct Inventory {
    nodes: Store<Node>,
    backends: Store<SessionLivedBackend>,
    deciding: tokio::sync::Mutex<()>,
    /// Admissions by uid, until the cache shows them.
    admitted: Mutex<HashMap<String, Admitted>>,
    /// Nodes each backend's Pod could not run on, by uid, while it starts.
    passed_over: Mutex<HashMap<String, PassedOver>>,
    /// Nodes that lately could not take a backend's Pod, with its requests.
    lacking: Mutex<Vec<Lacking>>,
    _watches: [AbortOnDrop; 2],
}

impl Inventory {
    /// Checks that both may be listed and watched, failing with the API
    /// server's answer when not (see [`is_lasting`] for which answers will
    /// not change by retrying), then starts both watches.
    pub async fn start(client: Client) -> Result<Inventory, kube::Error> {
        let nodes: Api<Node> = Api::all(client.clone());
        let backends: Api<SessionLivedBackend> = Api::all(client);
        allowed(&nodes).await?;
        allowed(&backends).await?;
        let (node_store, node_watch) = cache(nodes, |n: &mut Node| {
            if let Some(status) = n.status.as_mut() {
                status.images = None;
            }
        });
        let (backend_store, backend_watch) = cache(backends, trim_backend);
        Ok(Inventory {
            nodes: node_store,
            backends: backend_store,
            deciding: tokio::sync::Mutex::new(()),
            admitted: Mutex::new(HashMap::new()),
            passed_over: Mutex::new(HashMap::new()),
            lacking: Mutex::new(Vec::new()),
            _watches: [node_watch, backend_watch],
        })
    }

    /// Held while one scheduling decision is taken.
    pub async fn deciding(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.deciding.lock().await
    }

    /// Remembers an admission until the cache shows it.
    pub fn admitted(&self, uid: String, namespace: String, placed: PlacedBackend) {
        self.admitted.lock().expect("admitted lock").insert(uid, Admitted { namespace, placed, at: Instant::now() });
    }

    /// Forgets an admission (the backend was rejected after all).
    pub fn forget(&self, uid: &str) {
        self.admitted.lock().expect("admitted lock").remove(uid);
    }

    /// The admissions `cached` (one read of [`Inventory::backends`], the
    /// one scheduling counts from) does not show, but for `except`'s;
    /// forgets the others.
    pub fn unseen_admissions(&self, cached: &[Arc<SessionLivedBackend>], except: Option<&str>) -> Vec<Admitted> {
        let by_uid = by_uid(cached);
        let mut admitted = self.admitted.lock().expect("admitted lock");
        admitted.retain(|uid, a| still_unseen(by_uid.get(uid.as_str()).copied(), a.at.elapsed()));
        admitted.iter().filter(|(uid, _)| Some(uid.as_str()) != except).map(|(_, a)| a.clone()).collect()
    }

    /// Remembers that backend `uid`'s Pod could not run on `node`, and,
    /// when that was for want of room, what it requested (`lacked`).
    pub fn pass_over(&self, uid: String, node: String, lacked: Option<Resources>) {
        if let Some(requests) = lacked {
            self.lacking.lock().expect("lacking lock").push(Lacking { node: node.clone(), requests, at: Instant::now() });
        }
        let mut all = self.passed_over.lock().expect("passed-over lock");
        let entry = all.entry(uid).or_insert_with(|| PassedOver { nodes: Vec::new(), at: Instant::now() });
        if !entry.nodes.contains(&node) {
            entry.nodes.push(node);
        }
        entry.at = Instant::now();
    }

    /// The nodes backend `uid`'s Pod could not run on; forgets those of
    /// backends `cached` shows running or ended, or no longer has.
    pub fn passed_over(&self, cached: &[Arc<SessionLivedBackend>], uid: &str) -> Vec<String> {
        let by_uid = by_uid(cached);
        let mut all = self.passed_over.lock().expect("passed-over lock");
        all.retain(|uid, p| still_placing(by_uid.get(uid.as_str()).copied(), p.at.elapsed()));
        all.get(uid).map(|p| p.nodes.clone()).unwrap_or_default()
    }

    /// The nodes that, in the last [`LACKING_FOR`], could not take a
    /// backend's Pod requesting no more than `requests` (so none as big).
    pub fn lacking_room_for(&self, requests: &Resources) -> Vec<String> {
        let mut lacking = self.lacking.lock().expect("lacking lock");
        lacking.retain(|l| l.at.elapsed() < LACKING_FOR);
        let mut nodes: Vec<String> = lacking.iter().filter(|l| at_least(requests, &l.requests)).map(|l| l.node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Whether both caches hold their first full listing (asked without
    /// waiting; an error means a watch task is gone: never ready).
    pub fn ready(&self) -> bool {
        let filled = |ready: Option<Result<(), _>>| ready.is_some_and(|r| r.is_ok());
        filled(self.nodes.wait_until_ready().now_or_never()) && filled(self.backends.wait_until_ready().now_or_never())
    }

    /// Every Node, as last seen.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.state()
    }

    /// Every backend in every namespace, as last seen.
    pub fn backends(&self) -> Vec<Arc<SessionLivedBackend>> {
        self.backends.state()
    }
}

/// The backends `cached` holds, by uid, for the memories kept per backend
/// to be pruned by.
fn by_uid(cached: &[Arc<SessionLivedBackend>]) -> HashMap<&str, &SessionLivedBackend> {
    cached.iter().filter_map(|s| Some((s.metadata.uid.as_deref()?, &**s))).collect()
}

/// Whether an admission still needs counting, given its backend as the
/// cache shows it: still pending there (the status write not back yet) and
/// not being deleted; or not there at all, for a few seconds (not listed
/// yet; after that, deleted before it was).
fn still_unseen(cached: Option<&SessionLivedBackend>, age: Duration) -> bool {
    match cached {
        Some(s) => s.phase() == Phase::Pending && s.metadata.deletion_timestamp.is_none() && age < REMEMBERED_FOR,
        None => age < ABSENT_FOR,
    }
}

/// A node that could not take a backend's Pod, requesting `requests`.
#[derive(Debug)]
struct Lacking {
    node: String,
    requests: Resources,
    at: Instant,
}

/// Whether `a` requests at least as much as `b` of every resource.
fn at_least(a: &Resources, b: &Resources) -> bool {
    a.cpu_millis >= b.cpu_millis && a.memory_bytes >= b.memory_bytes
}

/// Nodes a backend's Pod could not run on.
#[derive(Debug)]
struct PassedOver {
    nodes: Vec<String>,
    /// When the last was added.
    at: Instant,
}

/// Whether the nodes a backend was passed over by still matter, given the
/// backend as the cache shows it: while it is being placed or started (or,
/// for a few seconds, not listed yet).
fn still_placing(cached: Option<&SessionLivedBackend>, age: Duration) -> bool {
    match cached {
        Some(s) => matches!(s.phase(), Phase::Pending | Phase::Scheduled | Phase::Starting) && s.metadata.deletion_timestamp.is_none(),
        None => age < ABSENT_FOR,
    }
}

/// Keeps of a backend what scheduling reads (name, uid, labels, owner,
/// key, phase, node, the application container's resources) and drops the
/// rest of its template, which can be large (env, volumes, probes, a
/// `kubectl apply` copy of the whole object).
fn trim_backend(s: &mut SessionLivedBackend) {
    if let Some(a) = s.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    let template = &mut s.spec.template;
    template.volumes = None;
    template.tolerations = None;
    template.containers.truncate(1);
    for c in &mut template.containers {
        *c = k8s_openapi::api::core::v1::Container {
            name: std::mem::take(&mut c.name),
            resources: c.resources.take(),
            ..Default::default()
        };
    }
}

/// Whether an error from [`Inventory::start`] will be the same on the next
/// try (no permission, no such resource), rather than a passing one (the
/// API server busy, restarting or unreachable).
pub fn is_lasting(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404))
}

/// Lists one object and opens a one-second watch from there: either is
/// refused with the API server's reason when the role lacks the verb.
pub(crate) async fn allowed<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list(&ListParams::default().limit(1)).await?;
    let from = listed.metadata.resource_version.unwrap_or_else(|| "0".into());
    api.watch(&WatchParams::default().timeout(1), &from).await.map(drop)
}

/// A watch feeding a cache, each object trimmed by `trim` (and of its
/// managed fields) before it is kept.
fn cache<K>(api: Api<K>, trim: impl Fn(&mut K) + Send + 'static) -> (Store<K>, AbortOnDrop)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let failures = super::WatchFailures::new(format!("watching {}s for scheduling", K::kind(&K::DynamicType::default())));
    let stream = watcher(api, watcher::Config::default())
        .backoff(super::watch_backoff())
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer)
        .for_each(move |event| {
            if let Err(e) = event {
                failures.log(&e);
            }
            std::future::ready(())
        });
    (store, AbortOnDrop(tokio::spawn(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_counts_until_the_cache_shows_it_or_it_is_gone() {
        let backend = |phase: Option<&str>, deleting: bool| -> SessionLivedBackend {
            let mut s: SessionLivedBackend = serde_json::from_value(serde_json::json!({
                "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
                "metadata": {"name": "b", "uid": "u"},
                "spec": {"template": {"containers": [{"name": "app", "image": "x"}]}}
            }))
            .unwrap();
            if let Some(p) = phase {
                s.status = Some(serde_json::from_value(serde_json::json!({"phase": p})).unwrap());
            }
            if deleting {
                s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
            }
            s
        };
        let second = Duration::from_secs(1);
        assert!(still_unseen(Some(&backend(None, false)), second), "no status yet: still pending");
        assert!(still_unseen(Some(&backend(Some("pending"), false)), second));
        assert!(!still_unseen(Some(&backend(Some("scheduled"), false)), second), "shown: counted from the cache");
        assert!(!still_unseen(Some(&backend(Some("failed"), false)), second));
        assert!(!still_unseen(Some(&backend(None, true)), second), "being deleted");
        assert!(!still_unseen(Some(&backend(None, false)), REMEMBERED_FOR), "not for ever");
        assert!(still_unseen(None, second), "not listed yet");
        assert!(!still_unseen(None, ABSENT_FOR), "deleted before it was listed");
    }

    #[test]
    fn nodes_passed_over_are_kept_while_the_backend_starts() {
        let backend = |phase: &str| -> SessionLivedBackend {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
                "metadata": {"name": "b", "uid": "u"},
                "spec": {"template": {"containers": [{"name": "app", "image": "x"}]}},
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        let second = Duration::from_secs(1);
        for phase in ["pending", "scheduled", "starting"] {
            assert!(still_placing(Some(&backend(phase)), second), "{phase}");
        }
        for phase in ["ready", "terminating", "failed", "terminated"] {
            assert!(!still_placing(Some(&backend(phase)), second), "{phase}");
        }
        assert!(still_placing(None, second), "not listed yet");
        assert!(!still_placing(None, ABSENT_FOR), "deleted");
    }

    #[test]
    fn a_node_lacking_room_for_a_backend_lacks_it_for_any_as_big() {
        let r = |cpu_millis: u64, memory_bytes: u64| Resources { cpu_millis, memory_bytes };
        assert!(at_least(&r(500, 1 << 20), &r(500, 1 << 20)));
        assert!(at_least(&r(900, 2 << 20), &r(500, 1 << 20)));
        assert!(!at_least(&r(400, 2 << 20), &r(500, 1 << 20)), "less CPU: it may fit");
        assert!(!at_least(&r(900, 0), &r(500, 1 << 20)), "less memory: it may fit");
        assert!(at_least(&r(0, 0), &r(0, 0)), "a node that took no Pod at all takes none");
    }

    #[test]
    fn a_cached_backend_keeps_what_scheduling_reads() {
        let mut s: SessionLivedBackend = serde_json::from_value(serde_json::json!({
            "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
            "metadata": {"name": "b", "uid": "u", "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}},
            "spec": {"owner": "alice", "key": "k", "template": {
                "containers": [
                    {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}], "resources": {"requests": {"cpu": "250m"}}},
                    {"name": "sidecar", "image": "y"}
                ],
                "volumes": [{"name": "v", "emptyDir": {}}]}},
            "status": {"phase": "ready", "nodeName": "n1"}
        }))
        .unwrap();
        let before = (s.plugin_backend(), super::super::pod::requests(&s), s.phase(), s.status.clone());
        trim_backend(&mut s);
        assert_eq!((s.plugin_backend(), super::super::pod::requests(&s), s.phase(), s.status.clone()), before);
        assert_eq!(super::super::pod::requests(&s).cpu_millis, 250);
        let c = &s.spec.template.containers;
        assert!(c.len() == 1 && c[0].env.is_none() && c[0].image.is_none() && s.spec.template.volumes.is_none());
        let annotations = s.metadata.annotations.unwrap();
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration") && annotations.contains_key("keep"));
    }
}
