//! `spawner proxy`: Spawner's proxy and sweeper on Kubernetes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::ProxyConfig;
use crate::k8s::serve::{self, ProxyOptions};
use crate::token::TokenKey;

/// Route browsers to SessionLivedBackend Pods, with the auth plugin on every
/// request, and terminate idle backends.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The namespace whose backends to serve.
    #[arg(long, env = "SPAWNER_NAMESPACE")]
    pub namespace: String,
    /// Address to listen on.
    #[arg(long, env = "SPAWNER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Capability-token secret (the one tokens are minted with, e.g. by
    /// `spawner token mint`).
    #[arg(long, env = "SPAWNER_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: String,
    /// Idle grace period, in seconds, for backends whose spec gives none.
    #[arg(long, env = "SPAWNER_DEFAULT_GRACE_SECONDS", default_value_t = 300)]
    pub default_grace_seconds: u64,
    /// Milliseconds between sweeps.
    #[arg(long, env = "SPAWNER_SWEEP_INTERVAL_MS", default_value_t = 5000)]
    pub sweep_interval_ms: u64,
    /// Log idle verdicts instead of terminating.
    #[arg(long, env = "SPAWNER_DRY_RUN")]
    pub dry_run: bool,
    /// `X-Forwarded-Proto` to send (`https` behind a TLS terminator).
    #[arg(long, env = "SPAWNER_FORWARDED_PROTO", default_value = "http")]
    pub forwarded_proto: String,
}

/// Serves until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let tokens = Arc::new(TokenKey::new(args.token_secret.as_bytes()).context("--token-secret")?);
    let options = ProxyOptions {
        namespace: args.namespace,
        listen: args.listen,
        tokens,
        default_grace_seconds: args.default_grace_seconds,
        sweep_interval: Duration::from_millis(args.sweep_interval_ms.max(100)),
        dry_run: args.dry_run,
        proxy: ProxyConfig { forwarded_proto: args.forwarded_proto, ..ProxyConfig::default() },
    };
    crate::dev::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = kube::Client::try_default().await.context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
        let running = serve::start(client, options).await?;
        tracing::info!(listen = %running.addr, "spawner proxy is ready");
        crate::server::stop_signal().await?;
        running.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
