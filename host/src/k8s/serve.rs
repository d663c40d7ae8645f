//! `spawner proxy` on Kubernetes: the same proxy and sweeper as local mode,
//! over the watched [`Cluster`], with the auth and idle plugins, `/metrics`
//! and `/healthz`; and, when given an API token, the same REST API under
//! `/api/` ([`KubeBackends`]). The operator runs the backends; this process
//! routes to them, meters them, condemns the idle, and writes the objects
//! the API is asked for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::cluster::Cluster;
use super::control::{CreateLimits, KubeBackends};
use super::leader::{self, LeaseSettings};
use super::peers::{self, PeerOptions, Peers};
use super::plugins::{self as configmap, PluginConfigMap};
use crate::api::ApiState;
use crate::backends::Backends;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::plugins::{PluginKind, Plugins, Runtime, RuntimeConfig};
use crate::proxy::{Proxy, ProxySettings};
use crate::secret::Secret;
use crate::server::{self, AbortOnDrop, App, Limits};
use crate::token::TokenKey;

/// How `spawner proxy` runs.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The namespace whose backends it serves (names are unique within it).
    pub namespace: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The capability-token key (shared with whatever mints the tokens).
    pub tokens: Arc<TokenKey>,
    /// Grace period for backends whose spec gives none.
    pub default_grace_seconds: u64,
    /// How often the sweeper asks the idle plugin.
    pub sweep_interval: Duration,
    /// Log the sweeper's verdicts without acting.
    pub dry_run: bool,
    /// Limits and token names, as in local mode's `[proxy]`.
    pub proxy: ProxyConfig,
    /// Host routing: `{name}.{domain}` reaches backend `name` (as well as
    /// `/p/{name}/`); the API's URLs use it.
    pub host_domain: Option<String>,
    /// Serve the REST API under `/api/` (none: only the proxy).
    pub api: Option<ApiOptions>,
    /// Load the auth and idle plugins from this ConfigMap, and follow it
    /// (none: the embedded defaults).
    pub plugins: Option<PluginConfigMap>,
    /// Several replicas: sweep only while holding `lease`, judging by
    /// every replica's activity (none: this replica is the only one).
    pub replicas: Option<Replicas>,
    /// Serve `/metrics` (and `/healthz`) here instead of on the public
    /// listener, where anyone who reaches the proxy could read them.
    pub metrics_listen: Option<SocketAddr>,
    /// How [`RunningProxy::stop`] lets requests in flight finish.
    pub stopping: server::Stopping,
    /// The plugins' memory limits and deadlines (tests lengthen the
    /// deadlines, which are wall-clock time, for busy machines).
    pub plugin_limits: RuntimeConfig,
}

/// How replicas share the sweeping (see [`super::peers`]).
#[derive(Debug, Clone)]
pub struct Replicas {
    /// Finding and asking the other replicas, and answering them.
    pub peers: PeerOptions,
    /// The sweeper Lease.
    pub lease: LeaseSettings,
}

/// The REST API of `spawner proxy`.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// The bearer token the web app's server presents.
    pub api_token: Secret,
    /// This proxy's address as browsers reach it (URLs the API returns).
    pub public_url: String,
    /// Default lifetime of the capability tokens it mints, seconds.
    pub token_ttl_seconds: u64,
    /// What creates may ask for.
    pub limits: CreateLimits,
}

/// A started proxy; dropping it does not stop it, [`RunningProxy::stop`] does.
pub struct RunningProxy {
    /// The bound address.
    pub addr: SocketAddr,
    /// The plugins (embedded defaults, or from the ConfigMap).
    pub plugins: Arc<Plugins>,
    /// Where other replicas ask for this one's activity, if shared.
    pub peer_addr: Option<SocketAddr>,
    cluster: Arc<Cluster>,
    /// The plugin ConfigMap watch and the peer listener.
    tasks: Vec<AbortOnDrop>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// Stops sweeping at once, then serving as [`ProxyOptions::stopping`]
    /// says (the health check failing first, requests in flight finished).
    pub async fn stop(self) {
        self.sweeper.abort();
        self.cluster.stop_sweeping();
        let _ = self.shutdown.send(());
        let _ = self.server.await;
        // Only now: while draining, the sweeping replica still asks this
        // one for its activity (the peer listener), so a stream in flight
        // here keeps its backend alive.
        drop(self.tasks);
    }
}

/// Watches the namespace, binds, and serves.
pub async fn start(client: kube::Client, options: ProxyOptions) -> anyhow::Result<RunningProxy> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Arc::new(Runtime::new(options.plugin_limits.clone(), Some(options.tokens.clone()))?);
    let (plugins, plugin_watch) = match &options.plugins {
        Some(at) => {
            let (plugins, watch) =
                configmap::load(client.clone(), at, runtime, metrics.clone(), &[PluginKind::Auth, PluginKind::Idle], "spawner-proxy")
                    .await?;
            (plugins, Some(AbortOnDrop(watch)))
        }
        None => (Arc::new(Plugins::new(runtime, metrics.clone(), Vec::new()).context("loading plugins")?), None),
    };
    let cluster = Cluster::start(client.clone(), &options.namespace, options.default_grace_seconds).await.map_err(|e| {
        let hint = match &e {
            kube::Error::Api(a) if a.code == 403 => {
                " (is the namespace right, and does spawner proxy's Role grant it there? deploy/proxy/01-rbac.yaml)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("listing SessionLivedBackends and their Pods in namespace {}{hint}", options.namespace))
    })?;
    let (peer_addr, peer_server) = match &options.replicas {
        Some(r) => {
            // Owned at once: a failure below must not leave it listening.
            let router = peers::router(cluster.clone(), r.peers.token.clone());
            let limits = Limits::side(&options.proxy);
            let (addr, server) = server::serve_side(r.peers.listen, router, "--peer-listen", limits, metrics.clone()).await?;
            // The election task ends when `leading` is dropped (stop).
            let (leading, _election) = leader::leadership(client.clone(), &r.lease)
                .await
                .with_context(|| format!("competing for Lease {}/{}", r.lease.namespace, r.lease.name))?;
            cluster.share_sweeping(leading, Peers::new(client.clone(), r.peers.clone()), &metrics);
            (Some(addr), Some(server))
        }
        None => (None, None),
    };
    let settings = ProxySettings::new(options.host_domain.clone(), options.proxy.forwarded_proto, options.proxy.token_names())
        .with_response_timeout(options.proxy.response_timeout())
        .with_api_token(options.api.as_ref().map(|a| a.api_token.clone()))
        .with_trusted_proxies(options.proxy.trusted_proxies.clone());
    let proxy = Arc::new(Proxy::new(cluster.clone(), plugins.clone(), metrics.clone(), settings));
    let public_metrics = options.metrics_listen.is_none();
    let metrics_server = match options.metrics_listen {
        Some(at) => {
            let limits = Limits::side(&options.proxy);
            Some(server::serve_side(at, crate::api::ops_router(metrics.clone()), "--metrics-listen", limits, metrics.clone()).await?.1)
        }
        None => None,
    };
    let api = match options.api {
        Some(api) => crate::api::router_with(
            ApiState {
                backends: Backends::Kubernetes(KubeBackends::new(
                    cluster.clone(),
                    client,
                    &api.public_url,
                    options.host_domain.clone(),
                    api.limits,
                    options.tokens.clone(),
                )),
                tokens: options.tokens.clone(),
                token_ttl_seconds: api.token_ttl_seconds,
                token_query_param: options.proxy.token_query_param.clone(),
                public_url: api.public_url.trim_end_matches('/').to_string(),
                api_url: None,
                api_token: Some(api.api_token),
                metrics: metrics.clone(),
                body_timeout: std::time::Duration::from_millis(options.proxy.header_read_timeout_ms),
            },
            public_metrics,
        ),
        None if public_metrics => crate::api::ops_router(metrics.clone()),
        None => crate::api::healthz_router(),
    };
    let app = Arc::new(App::new(proxy, api, metrics));
    let listener =
        server::bind(options.listen, options.proxy.listen_backlog).with_context(|| format!("listening on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let limits = Limits::from(&options.proxy);
    let (shutdown, server) = server::spawn(listener, app, limits, options.stopping, None);
    let sweeper = crate::sweeper::spawn(cluster.clone(), plugins.clone(), options.sweep_interval, options.dry_run);
    let tasks = plugin_watch.into_iter().chain(peer_server).chain(metrics_server).collect();
    Ok(RunningProxy { addr, plugins, peer_addr, cluster, tasks, shutdown, server, sweeper })
}
