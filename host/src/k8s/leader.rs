//! One active operator (and one sweeping proxy) at a time: replicas compete
//! for a Lease (coordination.k8s.io), and only its holder reconciles (or
//! sweeps). When the holder dies or loses the API server, the Lease
//! expires and another replica takes over within the lease duration.
//! Elections are `kube-lease-manager`'s (server-side apply on the Lease).
//! A standby judges expiry from the holder's `renewTime` by its own clock,
//! so the step-down margin (a fifth of the lease) holds only while the
//! nodes' clocks agree within it: the README asks for NTP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

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

/// Seconds before its Lease expires a leader renews it: 7 of deploy/'s 15,
/// so a renewal may take 4 s (a slow API server, a retried conflict)
/// before the leader steps down (see [`STEP_DOWN_EARLY`]) and restarts
/// its work when it is renewed after all.
pub const LEASE_GRACE_SECONDS: u64 = 7;

/// How often a leader reads its Lease back to see that it is still
/// renewed.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// How long before its Lease expires a leader that could not renew it
/// stops leading, as a part of the lease duration (3 s of the 15 s
/// deploy/ sets): a standby may take the Lease from that moment on, and
/// the two must not act at once.
const STEP_DOWN_EARLY: i32 = 5;

/// Competes for the Lease in the background; the receiver says whether this
/// replica holds it now. The election stops when every receiver is gone,
/// giving the Lease back if held (the task returned ends then): a standby
/// takes over at its next look at the Lease instead of when it expires.
pub async fn leadership(
    client: kube::Client,
    lease: &LeaseSettings,
) -> Result<(tokio::sync::watch::Receiver<bool>, tokio::task::JoinHandle<()>), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (elect, elected) = watch::channel(false);
    let name = lease.name.clone();
    let ended = tokio::spawn(async move {
        if let Err(e) = compete(manager, elect, &name).await {
            tracing::error!(lease = %name, error = %e, "leader election failed");
        }
    });
    let (leading, guarded) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client, &lease.namespace);
    let (name, identity) = (lease.name.clone(), lease.identity.clone());
    let read = move || -> LeaseRead {
        let (leases, name) = (leases.clone(), name.clone());
        Box::pin(async move { leases.get_opt(&name).await })
    };
    tokio::spawn(guard(elected, read, identity, leading));
    Ok((guarded, ended))
}

/// The first wait before competing again after the API server failed to
/// answer: short, since a restarting API server or a conflict is often
/// over by then; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to reach the API server (before
/// jitter): what client-go's leader election waits (its retry period).
/// Once the API server is back (after a control-plane upgrade, say), this
/// replica renews or takes the Lease within it, and leads again after its
/// next read of the Lease ([`LEASE_CHECK`]). kube-lease-manager's own loop
/// (`LeaseManager::watch`) doubles its wait up to 30 s: after 25 s without
/// the API server (the test `operator_and_proxy_ride_out_an_api_server_restart`
/// made longer), it led again 2, 7 and 16 s after the API server was back,
/// in three runs.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Competes for the Lease, and renews it while held, sending each change
/// of holder (this replica or not) to `elect`, until every receiver is
/// gone: then it gives the Lease back if held. Failures to reach the API
/// server are retried after [`RETRY_MIN`], doubling to [`RETRY_MAX`], each
/// wait up to half as long again at random (so that replicas cut off
/// together do not retry in step), and logged as warnings, at most one per
/// 10 s. (A recovery is not seen here: `changed` returns only when the
/// holder changes.)
async fn compete(manager: LeaseManager, elect: watch::Sender<bool>, lease: &str) -> Result<(), LeaseManagerError> {
    let mut retry = RETRY_MIN;
    let failures = crate::log_gate::LogGate::default();
    loop {
        tokio::select! {
            biased;
            () = elect.closed() => return manager.release().await,
            changed = manager.changed() => match changed {
                Ok(holds) => {
                    retry = RETRY_MIN;
                    elect.send_replace(holds);
                }
                Err(e) => {
                    if let Some(suppressed) = failures.pass(std::time::Instant::now()) {
                        tracing::warn!(lease = %lease, error = %e, suppressed, "cannot compete for or renew the Lease; retrying at most {RETRY_MAX:?} apart (`suppressed`: failures not logged since the last line)");
                    }
                    let wait = retry.mul_f64(1.0 + rand::random::<f64>() / 2.0);
                    tokio::select! {
                        () = elect.closed() => return manager.release().await,
                        () = tokio::time::sleep(wait) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// One read of the Lease.
type LeaseRead = Pin<Box<dyn Future<Output = kube::Result<Option<Lease>>> + Send>>;

/// Until when the Lease, as read, lets `identity` lead: its last renewal
/// plus its duration, less a [`STEP_DOWN_EARLY`]th of it; `None` when
/// another holds it (or it says too little to tell).
fn leads_until(lease: &Lease, identity: &str) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    renewed.checked_add(duration - duration / STEP_DOWN_EARLY).ok()
}

/// Passes the election's verdict on to `leading`, but only while the
/// Lease, read back every [`LEASE_CHECK`], shows a renewal recent enough.
/// The election ([`compete`]) keeps saying "leader" while it cannot
/// reach the API server to renew (it logs the errors and retries), so a
/// leader cut off from it would go on reconciling, or sweeping, after its
/// Lease had expired and a standby had taken over: two schedulers
/// admitting against one quota, two sweepers. Ends when every receiver
/// of `leading` is gone, dropping `elected` (which ends the election and
/// gives the Lease back), or when the election ends: then it says "not
/// leading" first, since nothing renews the Lease any more.
async fn guard(mut elected: watch::Receiver<bool>, read: impl Fn() -> LeaseRead, identity: String, leading: watch::Sender<bool>) {
    let mut until: Option<Timestamp> = None;
    let step_down = || {
        if leading.send_if_modified(|l| std::mem::replace(l, false)) {
            tracing::warn!(identity = %identity, "the Lease was not renewed in time (the API server out of reach, or the Lease deleted or not allowed to this identity): stepping down until it is");
        }
    };
    loop {
        let is_elected = *elected.borrow_and_update();
        if is_elected {
            // Bounded: the client retries 429 and 503 answers with backoff
            // and has no read timeout, so one read could outlast the Lease.
            // Meanwhile the last renewal seen runs out when it runs out,
            // not when the read gives up.
            let answer = tokio::time::timeout(LEASE_CHECK, read());
            tokio::pin!(answer);
            let answer = loop {
                tokio::select! {
                    // A renewal read at the deadline counts.
                    biased;
                    answer = &mut answer => break answer,
                    () = expiry(until), if *leading.borrow() => step_down(),
                }
            };
            match answer {
                Ok(Ok(Some(lease))) => until = leads_until(&lease, &identity),
                Ok(Ok(None)) => until = None,
                // Unknown: the last renewal seen still counts, until it
                // runs out.
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the Lease back"),
                Err(_) => tracing::debug!("no answer reading the Lease back"),
            }
        } else {
            until = None;
        }
        let now_leading = is_elected && until.is_some_and(|u| Timestamp::now() < u);
        if now_leading {
            leading.send_if_modified(|l| !std::mem::replace(l, true));
        } else if is_elected {
            step_down();
        } else {
            leading.send_if_modified(|l| std::mem::replace(l, false));
        }
        tokio::select! {
            changed = elected.changed() => if changed.is_err() {
                leading.send_replace(false);
                return;
            },
            () = tokio::time::sleep(LEASE_CHECK), if is_elected => {}
            // The next read may come later than the renewal runs out.
            () = expiry(until), if *leading.borrow() => step_down(),
            () = leading.closed() => return,
        }
    }
}

/// Resolves when `until` passes (never for `None`).
async fn expiry(until: Option<Timestamp>) {
    match until {
        Some(u) => tokio::time::sleep(Duration::try_from(u.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)).await,
        None => std::future::pending().await,
    }
}

/// Waits for the Lease, reconciles while holding it, stops reconciling the
/// moment it is lost, and competes again, until `stop` resolves: then it
/// stops reconciling and gives the Lease back (waiting up to 5 s for that),
/// so that a rollout does not leave backends unreconciled for a lease
/// duration. Returns early only if the election cannot start (no
/// permission on Leases, for example: kube-lease-manager reads or creates
/// the Lease first), or reconciling cannot (no permission to watch Nodes,
/// for example); later failures to reach the Lease are retried.
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
    let gauge = ctx.metrics().operator.leader.get_or_create(&crate::metrics::LeaseLabels { lease: lease.name.clone() }).clone();
    gauge.set(0);
    // Not leading once this returns (or is dropped with the stop).
    struct NotLeading(prometheus_client::metrics::gauge::Gauge);
    impl Drop for NotLeading {
        fn drop(&mut self) {
            self.0.set(0);
        }
    }
    let _not_leading = NotLeading(gauge.clone());
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                anyhow::bail!("the election for Lease {} stopped (see the log)", lease.name);
            }
        }
        tracing::info!(lease = %lease.name, identity = %lease.identity, "holding the lease: reconciling");
        gauge.set(1);
        // `Err` when the election itself ended: nothing to wait for then.
        let lost = async {
            while *leading.borrow_and_update() {
                leading.changed().await?;
            }
            Ok::<(), watch::error::RecvError>(())
        };
        tokio::select! {
            result = controller::run(ctx.clone()) => return result.map_err(|e| anyhow::anyhow!("reconciling could not start: {e}")),
            ended = lost => {
                gauge.set(0);
                if ended.is_err() {
                    anyhow::bail!("the election for Lease {} stopped while leading (see the log)", lease.name);
                }
                tracing::warn!(lease = %lease.name, identity = %lease.identity, "lost the lease: stopped reconciling")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_lets_its_holder_lead_until_shortly_before_it_expires() {
        let now = Timestamp::now();
        assert_eq!(leads_until(&lease("a", now, 15), "a"), Some(now + SignedDuration::from_secs(12)));
        assert_eq!(leads_until(&lease("b", now, 15), "a"), None, "another's");
        assert_eq!(leads_until(&Lease::default(), "a"), None);
    }

    /// The election still says "leader", but the Lease can no longer be
    /// read (nor, then, renewed): leadership ends as the last renewal runs
    /// out, and comes back once the Lease shows a fresh one; the same when
    /// a read never answers (an overloaded API server, retried requests).
    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
        for hanging in [false, true] {
            cut_off_and_back(hanging).await;
        }
    }

    async fn cut_off_and_back(hanging: bool) {
        // Leading until 4.8 s after each renewal: between two reads (2 s
        // apart while they hang), so the step-down must not wait for one.
        const LEASE_SECONDS: i32 = 6;
        let (_elect, elected) = watch::channel(true);
        let reachable = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let renewed = Arc::new(std::sync::Mutex::new(Timestamp::now()));
        // As the election does: renewed whenever the API server answers.
        let read = {
            let (reachable, renewed) = (reachable.clone(), renewed.clone());
            move || -> LeaseRead {
                if reachable.load(std::sync::atomic::Ordering::SeqCst) {
                    let now = Timestamp::now();
                    *renewed.lock().unwrap() = now;
                    Box::pin(std::future::ready(Ok(Some(lease("me", now, LEASE_SECONDS)))))
                } else if hanging {
                    Box::pin(std::future::pending())
                } else {
                    let unavailable = kube::core::Status::failure("unavailable", "ServiceUnavailable").with_code(503).boxed();
                    Box::pin(std::future::ready(Err(kube::Error::Api(unavailable))))
                }
            }
        };
        let (leading, mut seen) = watch::channel(false);
        tokio::spawn(guard(elected, read, "me".into(), leading));
        let wait_for = |seen: &mut watch::Receiver<bool>, want: bool| {
            let mut seen = seen.clone();
            async move { tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|l| *l == want)).await.is_ok() }
        };
        assert!(wait_for(&mut seen, true).await, "leads with a fresh Lease");
        reachable.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(wait_for(&mut seen, false).await, "still leading without renewals");
        let stepped_down = Timestamp::now();
        let expired = *renewed.lock().unwrap() + SignedDuration::from_secs(LEASE_SECONDS.into());
        assert!(stepped_down < expired, "stepped down at {stepped_down}, after the Lease expired at {expired} (hanging: {hanging})");
        reachable.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(wait_for(&mut seen, true).await, "leads again once renewed");
    }

    /// The election ends (its task failed) while this replica leads:
    /// nothing renews the Lease any more, so it is no longer leading, and
    /// the channel says so before it closes.
    #[tokio::test]
    async fn a_leader_whose_election_ends_stops_leading() {
        let (elect, elected) = watch::channel(true);
        let read = || -> LeaseRead { Box::pin(std::future::ready(Ok(Some(lease("me", Timestamp::now(), 15))))) };
        let (leading, mut seen) = watch::channel(false);
        let guarding = tokio::spawn(guard(elected, read, "me".into(), leading));
        assert!(tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|l| *l)).await.is_ok(), "leads");
        drop(elect);
        tokio::time::timeout(Duration::from_secs(10), guarding).await.expect("the guard ends with the election").unwrap();
        assert!(!*seen.borrow_and_update(), "still says leading");
        assert!(seen.changed().await.is_err(), "closed");
    }
}
