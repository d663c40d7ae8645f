//! One active operator (and one sweeping proxy) at a time: replicas compete
//! for a Lease (coordination.k8s.io), and only its holder reconciles (or
//! sweeps). When the holder dies or loses the API server, the Lease
//! expires and another replica takes over within the lease duration.
//! Elections are `kube-lease-manager`'s (server-side apply on the Lease,
//! clock-skew tolerant).

use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

use super::controller::{self, Context};

/// The Lease the operator replicas compete for.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica (its Pod name; unique among replicas).
    pub identity: String,
    /// Seconds a holder stays leader without renewing.
    pub duration_seconds: u64,
    /// Seconds before expiry the holder renews.
    pub grace_seconds: u64,
}

/// How long a stopping replica waits for its Lease to be given back.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Competes for the Lease in the background; the receiver says whether this
/// replica holds it now. The election stops when every receiver is gone,
/// giving the Lease back if held (the task returned ends then): a standby
/// takes over at its next look at the Lease instead of when it expires.
pub async fn leadership(
    client: kube::Client,
    lease: &LeaseSettings,
) -> Result<(tokio::sync::watch::Receiver<bool>, tokio::task::JoinHandle<()>), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (leading, election) = manager.watch().await;
    let name = lease.name.clone();
    let ended = tokio::spawn(async move {
        match election.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(lease = %name, error = %e, "leader election failed"),
            Err(e) => tracing::error!(lease = %name, error = %e, "leader election task failed"),
        }
    });
    Ok((leading, ended))
}

/// Waits for the Lease, reconciles while holding it, stops reconciling the
/// moment it is lost, and competes again, until `stop` resolves: then it
/// stops reconciling and gives the Lease back (waiting up to 5 s for that),
/// so that a rollout does not leave backends unreconciled for a lease
/// duration. Returns early only if the election itself fails (no
/// permission on Leases, for example), or reconciling cannot start (no
/// permission to watch Nodes, for example).
pub async fn run_elected(ctx: Arc<Context>, lease: LeaseSettings, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (mut leading, election) = leadership(ctx.client().clone(), &lease).await?;
    tokio::select! {
        r = elected(ctx, &lease, &mut leading) => return r,
        () = stop => {}
    }
    drop(leading);
    if tokio::time::timeout(RELEASE_TIMEOUT, election).await.is_err() {
        tracing::warn!(lease = %lease.name, "the Lease was not given back in time; a standby takes over when it expires");
    }
    Ok(())
}

async fn elected(ctx: Arc<Context>, lease: &LeaseSettings, leading: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                anyhow::bail!("the election for Lease {} stopped (see the log)", lease.name);
            }
        }
        tracing::info!(lease = %lease.name, identity = %lease.identity, "holding the lease: reconciling");
        let lost = async {
            while *leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            result = controller::run(ctx.clone()) => return result.map_err(|e| anyhow::anyhow!("reconciling could not start: {e}")),
            () = lost => tracing::warn!(lease = %lease.name, identity = %lease.identity, "lost the lease: stopped reconciling"),
        }
    }
}
