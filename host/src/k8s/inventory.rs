//! What the operator's scheduling reads: every Node and every backend (all
//! namespaces, since they share the Nodes), kept current by two watches
//! rather than listed in full for each decision. A cluster with thousands
//! of backends would otherwise send the API server two full lists per
//! backend created.
//!
//! The caches drop what scheduling never reads and what makes objects big
//! (a Node's image list, every object's managed fields), so a large
//! cluster's Nodes cost little memory.

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource};

use super::crd::SessionLivedBackend;
use crate::server::AbortOnDrop;

/// The two caches, filled before [`Inventory::start`] returns.
pub struct Inventory {
    nodes: Store<Node>,
    backends: Store<SessionLivedBackend>,
    _watches: [AbortOnDrop; 2],
}

impl Inventory {
    /// Starts both watches and waits for their first listings. Fails at
    /// once, with the API server's reason, when a list or a watch is not
    /// allowed (rather than retrying in the background for ever).
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
        let (backend_store, backend_watch) = cache(backends, |_: &mut SessionLivedBackend| {});
        node_store.wait_until_ready().await.ok();
        backend_store.wait_until_ready().await.ok();
        Ok(Inventory { nodes: node_store, backends: backend_store, _watches: [node_watch, backend_watch] })
    }

    /// Every Node, as last seen.
    pub fn nodes(&self) -> Vec<std::sync::Arc<Node>> {
        self.nodes.state()
    }

    /// Every backend in every namespace, as last seen.
    pub fn backends(&self) -> Vec<std::sync::Arc<SessionLivedBackend>> {
        self.backends.state()
    }
}

/// Lists one object and opens a one-second watch: either is refused with
/// the API server's reason when the role lacks the verb.
async fn allowed<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().limit(1)).await?;
    api.watch(&WatchParams::default().timeout(1), "0").await.map(drop)
}

/// A watch feeding a cache, each object trimmed by `trim` (and of its
/// managed fields) before it is kept.
fn cache<K>(api: Api<K>, trim: impl Fn(&mut K) + Send + 'static) -> (Store<K>, AbortOnDrop)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer)
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching for scheduling; retrying");
            }
            std::future::ready(())
        });
    (store, AbortOnDrop(tokio::spawn(stream)))
}
