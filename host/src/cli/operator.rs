//! `spawner operator`: the Kubernetes controller for `SessionLivedBackend`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::k8s::controller::{Context, OperatorConfig};
use crate::k8s::leader::{self, LEASE_GRACE_SECONDS, LeaseSettings};
use crate::metrics::Metrics;
use crate::plugins::{PluginKind, Plugins, Runtime};

/// Reconcile SessionLivedBackend objects into Pods.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Watch one namespace (default: all).
    #[arg(long, env = "SPAWNER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Public base URL of Spawner's proxy, for `status.url`.
    #[arg(long, env = "SPAWNER_PUBLIC_URL", value_parser = crate::config::public_url_arg)]
    pub public_url: Option<String>,
    /// Host routing, as `spawner proxy --host-domain`: `status.url` is
    /// `{scheme}://{name}.{domain}/`.
    #[arg(long, env = "SPAWNER_HOST_DOMAIN", value_parser = crate::config::host_domain_arg)]
    pub host_domain: Option<String>,
    /// Seconds a Pod may take to become Ready before the backend fails.
    #[arg(long, env = "SPAWNER_STARTUP_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_TIMEOUT_SECONDS))]
    pub startup_timeout_seconds: u64,
    /// Termination grace period, in seconds, given to a Pod Spawner stops.
    #[arg(long, env = "SPAWNER_STOP_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=crate::config::MAX_TIMEOUT_SECONDS))]
    pub stop_timeout_seconds: u64,
    /// Seconds an ended backend's object is kept, with its status, before
    /// the operator deletes it.
    #[arg(long, env = "SPAWNER_RETENTION_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=crate::config::MAX_RETENTION_SECONDS))]
    pub retention_seconds: u64,
    /// Namespace of the Lease replicas compete for (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "spawner")]
    pub lease_namespace: String,
    /// Name of that Lease.
    #[arg(long, env = "SPAWNER_LEASE_NAME", default_value = "spawner-operator")]
    pub lease_name: String,
    /// Where to serve `/metrics` and `/healthz`.
    #[arg(long, env = "SPAWNER_METRICS_LISTEN", default_value = "0.0.0.0:9090", value_parser = crate::config::listen_arg)]
    pub metrics_listen: std::net::SocketAddr,
    /// This replica's identity in the election (default: the Pod name, or
    /// host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The scheduler plugin.
    #[command(flatten)]
    pub plugins: super::PluginMapArgs,
    /// Limits of plugin calls (the scheduler runs here).
    #[command(flatten)]
    pub plugin_limits: super::PluginLimitArgs,
}

/// Connects with the kubeconfig (or the in-cluster service account) and,
/// while this replica holds the Lease, runs the controller with the
/// embedded default plugins (or the ConfigMap's), until SIGINT or SIGTERM.
pub fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let config = OperatorConfig {
        namespace: args.namespace,
        public_url: args.public_url,
        host_domain: args.host_domain,
        startup_timeout: Duration::from_secs(args.startup_timeout_seconds),
        stop_timeout: Duration::from_secs(args.stop_timeout_seconds),
        retention: Duration::from_secs(args.retention_seconds),
    };
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = LeaseSettings {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity,
        duration_seconds: 15,
        grace_seconds: LEASE_GRACE_SECONDS,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = kube::Client::try_default().await.context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
        let runtime = Arc::new(Runtime::new(args.plugin_limits.runtime(), None)?);
        let metrics = Arc::new(Metrics::new());
        let plugins = match args.plugins.configmap() {
            Some(at) => {
                let kinds = &[PluginKind::Scheduler];
                // The watch runs for the life of the process.
                crate::k8s::plugins::load(client.clone(), &at, runtime, metrics.clone(), kinds, "spawner-operator").await?.0
            }
            None => Arc::new(Plugins::new(runtime, metrics.clone(), Vec::new()).context("loading plugins")?),
        };
        match crate::k8s::controller::check_rights(&client, config.namespace.as_deref()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                anyhow::bail!("the API server does not know SessionLivedBackends ({}): install the CRD first (kubectl apply --server-side -f deploy/crd/)", e.message);
            }
            Err(e) if crate::k8s::inventory::is_lasting(&e) => {
                let scope = config.namespace.as_deref().map_or("every namespace (no --namespace)".to_string(), |ns| format!("namespace {ns}"));
                anyhow::bail!(
                    "spawner operator may not list and watch what it reconciles (Nodes, SessionLivedBackends, and Pods in {scope}): {e}; see deploy/operator/01-rbac.yaml"
                );
            }
            // The API server busy or away: reconciling retries once leading.
            Err(e) => tracing::warn!(error = %e, "could not check the operator's rights at start; going on"),
            Ok(()) => {}
        }
        // Serves for the life of the process.
        let limits = crate::server::Limits::side(&crate::config::ProxyConfig::default());
        let (_, _metrics_server) = crate::server::serve_side(
            args.metrics_listen,
            crate::api::ops_router(metrics.clone()),
            "--metrics-listen",
            limits,
            metrics.clone(),
        )
        .await?;
        tracing::info!(namespace = config.namespace.as_deref().unwrap_or("(all)"), "spawner operator is running");
        // Until SIGINT, SIGTERM or SIGHUP, then the Lease is given back.
        let (signal_tx, mut signalled) = tokio::sync::oneshot::channel();
        let stop = async move {
            let _ = signal_tx.send(crate::server::stop_signal().await);
        };
        leader::run_elected(Context::new(client, plugins, metrics, config), lease, stop).await.context("leader election")?;
        if let Ok(failed) = signalled.try_recv() {
            failed?;
        }
        tracing::info!("spawner operator stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[test]
    fn timeouts_are_bounded_like_spawner_devs() {
        let parse = |flag: &str, value: &str| crate::cli::Cli::try_parse_from(["spawner", "operator", flag, value]).map(|_| ());
        parse("--stop-timeout-seconds", "0").unwrap();
        parse("--retention-seconds", "31622400").unwrap();
        for (flag, bad) in
            [("--startup-timeout-seconds", "0"), ("--stop-timeout-seconds", "86401"), ("--retention-seconds", "18446744073709551615")]
        {
            let e = parse(flag, bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad} is not in")), "{flag} {bad}: {e}");
        }
    }
}
