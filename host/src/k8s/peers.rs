//! Several `spawner proxy` replicas, one sweeper: each replica meters only
//! the connections it carries, so the replica that holds the sweeper Lease
//! asks every other replica for its activity before each sweep and judges
//! each backend by the sum (the design's "bulk snapshot": activity comes
//! from the proxies, never from backend Pods).
//!
//! - Replicas find each other as the Pods matching a label selector in
//!   their own namespace, at the container port named `peer` (else
//!   [`DEFAULT_PEER_PORT`]).
//! - Each serves `GET /activity` on its peer listener (not the public one),
//!   to callers presenting the shared peer token. Answering takes (resets)
//!   the counters since the last answer, as a local sweep does.
//! - Fail safe: if any running replica cannot be asked, the sweep is
//!   skipped (its connections are unknown, and a backend busy there must
//!   not be condemned); the next tick tries again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt as _};
use serde::{Deserialize, Serialize};

use super::cluster::Cluster;
use crate::activity::Snapshot;
use crate::secret::Secret;

/// The peer listener's port when a replica's Pod names none.
pub const DEFAULT_PEER_PORT: u16 = 9091;

/// How long one replica may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// One backend's activity as one replica saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendActivity {
    /// The backend.
    pub name: String,
    /// Its object's uid (a new object with an old name starts from zero).
    pub uid: String,
    /// What the replica saw.
    #[serde(flatten)]
    pub activity: Snapshot,
}

/// A replica's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Every backend it meters.
    pub backends: Vec<BackendActivity>,
}

/// Activity gathered from the other replicas, by backend name and object
/// uid (replicas may briefly disagree on which object a name is).
pub type Gathered = HashMap<(String, String), Snapshot>;

/// How this replica finds and asks the others.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The replicas' namespace (Spawner's own).
    pub namespace: String,
    /// Label selector of the replicas' Pods, e.g.
    /// `app.kubernetes.io/name=spawner-proxy`.
    pub selector: String,
    /// This replica's Pod name (it does not ask itself).
    pub identity: String,
    /// The token replicas present to each other.
    pub token: Secret,
    /// Where this replica answers.
    pub listen: SocketAddr,
}

/// The other replicas.
pub struct Peers {
    pods: Api<Pod>,
    options: PeerOptions,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

/// Why the others' activity could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Listing the replicas failed.
    #[error("listing proxy replicas ({0}): {1}")]
    List(String, #[source] kube::Error),
    /// One replica did not answer well.
    #[error("asking replica {pod} at {addr}: {why}")]
    Ask {
        /// Its Pod.
        pod: String,
        /// Where it was asked.
        addr: String,
        /// What went wrong.
        why: String,
    },
}

impl Peers {
    /// The replicas `options` describes.
    pub fn new(client: Client, options: PeerOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(ASK_TIMEOUT));
        Peers {
            pods: Api::namespaced(client, &options.namespace),
            // A connection per ask (one per peer per sweep): a peer's
            // listener closes connections idle past its header-read
            // timeout, and an ask sent on a pooled one just as it closed
            // would fail.
            http: HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector),
            options,
        }
    }

    /// Every other running replica's activity, summed per backend (by
    /// name, for the uid the replicas agree on). When one fails, the error
    /// comes with what the replicas asked before it answered: asking takes
    /// their counters (bytes, messages since the last time), which must
    /// reach a later sweep rather than be lost.
    pub async fn gather(&self) -> Result<Gathered, (Gathered, PeerError)> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&self.options.selector))
            .await
            .map_err(|e| (Gathered::new(), PeerError::List(self.options.selector.clone(), e)))?;
        let mut reports = Vec::new();
        for pod in list.items.iter().filter(|p| p.name_any() != self.options.identity) {
            let Some(addr) = peer_address(pod) else { continue };
            match self.ask(&pod.name_any(), &addr).await {
                Ok(report) => reports.push(report),
                Err(e) => return Err((sum(reports), e)),
            }
        }
        Ok(sum(reports))
    }

    async fn ask(&self, pod: &str, addr: &str) -> Result<ActivityReport, PeerError> {
        let fail = |why: String| PeerError::Ask { pod: pod.into(), addr: addr.into(), why };
        let request = http::Request::get(format!("http://{addr}/activity"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.options.token.expose()))
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let answer = async {
            let response = self.http.request(request).await.map_err(|e| fail(e.to_string()))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
            if !status.is_success() {
                return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&body))));
            }
            serde_json::from_slice(&body).map_err(|e| fail(format!("unreadable answer: {e}")))
        };
        tokio::time::timeout(ASK_TIMEOUT, answer).await.map_err(|_| fail(format!("no answer within {ASK_TIMEOUT:?}")))?
    }
}

/// `fresh` plus the counters of `left`, what earlier gatherings took from
/// the replicas and no plugin has seen yet (its backend was not judged:
/// the sweep knew not all the activity, or its plugin failed). Only the
/// counters carry over: open connections and idle time are as of then,
/// and `fresh` says what they are now.
pub fn carry_over(left: Gathered, mut fresh: Gathered) -> Gathered {
    for (object, then) in left {
        let counters = Snapshot {
            idle_for: Duration::MAX,
            bytes_in: then.bytes_in,
            bytes_out: then.bytes_out,
            websocket_messages: then.websocket_messages,
            ..Snapshot::default()
        };
        let entry = fresh.entry(object).or_insert(Snapshot { idle_for: Duration::MAX, ..Snapshot::default() });
        *entry = entry.merge(counters);
    }
    fresh
}

/// The replicas' reports summed per backend object.
fn sum(reports: Vec<ActivityReport>) -> Gathered {
    let mut gathered = Gathered::new();
    for b in reports.into_iter().flat_map(|r| r.backends) {
        let entry = gathered.entry((b.name, b.uid)).or_insert(Snapshot { idle_for: Duration::MAX, ..Snapshot::default() });
        *entry = entry.merge(b.activity);
    }
    gathered
}

/// Where a replica's Pod answers: its IP and the container port named
/// `peer`. Only a running proxy container (the one declaring that port, or
/// the first) can carry connections: a Pod not started, or whose proxy
/// waits to restart after a crash (phase `Running` all the same), carries
/// none and is not asked; a sidecar's state does not matter. A Pod being
/// deleted is asked while its proxy runs: it goes on serving through its
/// shutdown delay and drain, and its streams count. Not past its deletion
/// deadline, though (the deletion time plus its grace period, plus a
/// little): a Pod on a lost node stays "terminating" with its proxy shown
/// running, and would otherwise stop every sweep until the node returns.
fn peer_address(pod: &Pod) -> Option<String> {
    if let Some(deadline) = &pod.metadata.deletion_timestamp
        && jiff::Timestamp::now() > deadline.0 + jiff::SignedDuration::from_secs(5)
    {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let peer_port = |c: &k8s_openapi::api::core::v1::Container| {
        c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("peer")).and_then(|p| u16::try_from(p.container_port).ok())
    };
    let proxy = containers.iter().find(|c| peer_port(c).is_some()).or(containers.first())?;
    let running =
        status.container_statuses.iter().flatten().any(|c| c.name == proxy.name && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if !running {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let port = peer_port(proxy).unwrap_or(DEFAULT_PEER_PORT);
    Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") })
}

#[derive(Clone)]
struct PeerState {
    cluster: Arc<Cluster>,
    token: Secret,
}

/// The peer listener's routes: `GET /activity`.
pub fn router(cluster: Arc<Cluster>, token: Secret) -> Router {
    Router::new().route("/activity", get(activity)).with_state(PeerState { cluster, token })
}

async fn activity(State(s): State<PeerState>, headers: axum::http::HeaderMap) -> Response {
    if !s.token.presented_in(&headers) {
        return (StatusCode::UNAUTHORIZED, "a proxy replica's peer token is required\n").into_response();
    }
    axum::Json(ActivityReport { backends: s.cluster.take_activity() }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>, port: Option<i32>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "proxy", "ports": port.map(|p| vec![serde_json::json!({"name": "peer", "containerPort": p})])}]},
            "status": {"phase": phase, "podIP": ip,
                       "containerStatuses": [{"name": "proxy", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                                              "state": {"running": {}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn running_replicas_are_asked_at_their_peer_port() {
        assert_eq!(peer_address(&pod("Running", Some("10.0.0.5"), Some(7000))).as_deref(), Some("10.0.0.5:7000"));
        assert_eq!(peer_address(&pod("Running", Some("fd00::5"), None)).as_deref(), Some("[fd00::5]:9091"));
        assert_eq!(peer_address(&pod("Pending", Some("10.0.0.5"), None)), None);
        assert_eq!(peer_address(&pod("Running", None, None)), None);
        let mut crashing = pod("Running", Some("10.0.0.6"), None);
        crashing.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].state =
            Some(serde_json::from_value(serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}})).unwrap());
        assert_eq!(peer_address(&crashing), None, "a replica waiting to restart holds no connections");
        let mut with_sidecar = pod("Running", Some("10.0.0.7"), Some(7000));
        with_sidecar.spec.as_mut().unwrap().containers.push(serde_json::from_value(serde_json::json!({"name": "sidecar"})).unwrap());
        with_sidecar.status.as_mut().unwrap().container_statuses.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({"name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                                                      "state": {"waiting": {"reason": "CrashLoopBackOff"}}}))
            .unwrap(),
        );
        assert_eq!(peer_address(&with_sidecar).as_deref(), Some("10.0.0.7:7000"), "a failing sidecar does not hide the proxy");

        let deleting = |deadline_in: i64| {
            let mut p = pod("Running", Some("10.0.0.8"), None);
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(deadline_in);
            p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
            p
        };
        assert_eq!(peer_address(&deleting(20)).as_deref(), Some("10.0.0.8:9091"), "draining: its streams count");
        assert_eq!(peer_address(&deleting(-60)), None, "long past its deadline: its node is lost");
    }

    fn report(entries: &[(&str, &str, u32, u64)]) -> ActivityReport {
        ActivityReport {
            backends: entries
                .iter()
                .map(|(name, uid, open, idle_s)| BackendActivity {
                    name: name.to_string(),
                    uid: uid.to_string(),
                    activity: Snapshot { open_connections: *open, idle_for: Duration::from_secs(*idle_s), ..Snapshot::default() },
                })
                .collect(),
        }
    }

    #[test]
    fn reports_add_up_per_object_and_a_stale_uid_hides_nothing() {
        // Three replicas; one still meters the name's previous object.
        let gathered = sum(vec![report(&[("b", "new", 1, 50)]), report(&[("b", "old", 0, 900)]), report(&[("b", "new", 2, 5)])]);
        let new = gathered[&("b".to_string(), "new".to_string())];
        assert_eq!((new.open_connections, new.idle_for), (3, Duration::from_secs(5)));
        assert_eq!(gathered[&("b".to_string(), "old".to_string())].open_connections, 0);
    }

    #[test]
    fn counters_no_plugin_saw_carry_over_and_the_rest_is_fresh() {
        let object = |name: &str| (name.to_string(), "u".to_string());
        let seen = |open, idle_s, bytes_in| Snapshot {
            open_connections: open,
            idle_for: Duration::from_secs(idle_s),
            bytes_in,
            bytes_out: 2 * bytes_in,
            websocket_messages: 3,
            ..Snapshot::default()
        };
        let left = Gathered::from([(object("a"), seen(1, 5, 100)), (object("b"), seen(2, 1, 10))]);
        let fresh = Gathered::from([(object("a"), seen(0, 60, 7))]);
        let now = carry_over(left, fresh);
        let a = now[&object("a")];
        assert_eq!((a.open_connections, a.idle_for), (0, Duration::from_secs(60)), "gauges and idle time as of now");
        assert_eq!((a.bytes_in, a.bytes_out, a.websocket_messages), (107, 214, 6), "counters of both");
        let b = now[&object("b")];
        assert_eq!((b.open_connections, b.idle_for), (0, Duration::MAX), "not in the fresh answers: nothing seen now");
        assert_eq!((b.bytes_in, b.websocket_messages), (10, 3));
    }
}
