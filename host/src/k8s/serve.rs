//! `spawner proxy` on Kubernetes: the same proxy and sweeper as local mode,
//! over the watched [`Cluster`], with the auth and idle plugins, `/metrics`
//! and `/healthz`. The operator owns the backends; this process only routes
//! to them, meters them and condemns the idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::cluster::Cluster;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::plugins::{Plugins, Runtime, RuntimeConfig};
use crate::proxy::{Proxy, ProxySettings};
use crate::server::{self, App, Limits};
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
}

/// A started proxy; dropping it does not stop it, [`RunningProxy::stop`] does.
pub struct RunningProxy {
    /// The bound address.
    pub addr: SocketAddr,
    /// The plugins (embedded defaults).
    pub plugins: Arc<Plugins>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// Stops accepting and sweeping.
    pub async fn stop(self) {
        self.sweeper.abort();
        let _ = self.shutdown.send(());
        let _ = self.server.await;
    }
}

/// Watches the namespace, binds, and serves.
pub async fn start(client: kube::Client, options: ProxyOptions) -> anyhow::Result<RunningProxy> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), Some(options.tokens.clone()))?);
    let plugins = Arc::new(Plugins::new(runtime, metrics.clone(), Vec::new()).context("loading plugins")?);
    let cluster = Cluster::start(client, &options.namespace, options.default_grace_seconds)
        .await
        .with_context(|| format!("watching SessionLivedBackends in namespace {}", options.namespace))?;
    let settings =
        ProxySettings { host_domain: None, forwarded_proto: options.proxy.forwarded_proto.clone(), tokens: options.proxy.token_names() };
    let proxy = Arc::new(Proxy::new(cluster.clone(), plugins.clone(), metrics.clone(), settings));
    let app = Arc::new(App { proxy, api: crate::api::ops_router(metrics.clone()), metrics });
    let listener =
        server::bind(options.listen, options.proxy.listen_backlog).with_context(|| format!("listening on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let limits = Limits::from(&options.proxy);
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, app, limits, async {
        let _ = stop.await;
    }));
    let sweeper = crate::sweeper::spawn(cluster, plugins.clone(), options.sweep_interval, options.dry_run);
    Ok(RunningProxy { addr, plugins, shutdown, server, sweeper })
}
