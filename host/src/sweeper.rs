//! The idle sweeper: every tick, each ready backend's activity goes to the
//! idle plugin, and the backends it condemns are terminated with its reason.
//!
//! The lifetime limit is also enforced here, whatever the plugin says: a
//! failing idle plugin keeps backends (fail safe), and the lifetime limit is
//! what still bounds their cost. In dry-run mode decisions are logged only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::activity::{Activity, Snapshot};
use crate::lifecycle::{Reason, TerminationRequest};
use crate::plugins::Plugins;
use crate::plugins::types::{Activity as PluginActivity, Backend, IdleRequest, IdleVerdict, TerminationKind};

/// A ready backend, as the sweeper needs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The backend as plugins see it.
    pub backend: Backend,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its idle grace period.
    pub grace_period_seconds: u64,
    /// Its lifetime limit.
    pub lifetime_limit_seconds: Option<u64>,
    /// Its activity meter.
    pub activity: Arc<Activity>,
}

/// Where the sweeper finds backends and sends terminations.
pub trait SweepSource: Send + Sync + 'static {
    /// Ready backends now.
    fn ready(&self) -> Vec<Candidate>;
    /// Ends one.
    fn terminate(&self, name: &str, request: TerminationRequest);
    /// The activity to judge `c` by: its own meter's (the default), or,
    /// with several proxy replicas, the sum of what each one saw.
    fn activity(&self, c: &Candidate) -> Snapshot {
        c.activity.snapshot()
    }
    /// Runs on the async side before each sweep (to gather other replicas'
    /// activity, say); `false` skips this sweep.
    fn prepare(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
}

/// One decision of a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Backend name.
    pub name: String,
    /// Why it goes.
    pub request: TerminationRequest,
}

/// Runs one sweep and returns what it condemned (terminated unless
/// `dry_run`).
pub fn sweep(source: &dyn SweepSource, plugins: &Plugins, dry_run: bool) -> Vec<Decision> {
    let now = Timestamp::now();
    let mut condemned = Vec::new();
    for c in source.ready() {
        let snap = source.activity(&c);
        let age = now.duration_since(c.created_at).as_secs().max(0) as u64;
        let request = IdleRequest {
            backend: c.backend.clone(),
            age_seconds: age,
            grace_period_seconds: c.grace_period_seconds,
            lifetime_limit_seconds: c.lifetime_limit_seconds,
            activity: PluginActivity {
                open_connections: snap.open_connections,
                in_flight_requests: snap.in_flight_requests,
                seconds_since_last_activity: snap.idle_for.as_secs(),
                bytes_in: snap.bytes_in,
                bytes_out: snap.bytes_out,
                websocket_messages: snap.websocket_messages,
            },
            now: now.as_second().max(0) as u64,
        };
        let verdict = plugins.idle().evaluate(&request);
        let request = match verdict {
            IdleVerdict::Terminate(t) => Some(TerminationRequest {
                reason: match t.kind {
                    TerminationKind::Idle => Reason::Idle,
                    TerminationKind::Lifetime => Reason::Lifetime,
                },
                message: t.detail,
            }),
            IdleVerdict::Keep => c.lifetime_limit_seconds.filter(|l| age >= *l).map(|l| TerminationRequest {
                reason: Reason::Lifetime,
                message: format!("lifetime limit of {l} s reached (enforced by the host)"),
            }),
        };
        if let Some(request) = request {
            // In dry-run mode `spawn` logs the decision, once per backend.
            if !dry_run {
                tracing::info!(backend = %c.backend.name, reason = request.reason.as_str(), detail = %request.message, "terminating");
                source.terminate(&c.backend.name, request.clone());
            }
            condemned.push(Decision { name: c.backend.name.clone(), request });
        }
    }
    condemned
}

/// Sweeps every `interval` until the task is dropped. Plugin calls run on a
/// blocking thread so a slow plugin (up to its deadline per backend) never
/// stalls the proxy's workers.
pub fn spawn(source: Arc<dyn SweepSource>, plugins: Arc<Plugins>, interval: Duration, dry_run: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if dry_run {
            tracing::warn!("sweeper in dry-run mode: idle and expired backends are logged, not terminated");
        }
        // Dry run: what was already reported, so each backend's verdict is
        // logged once, not on every tick.
        let mut reported: std::collections::HashMap<String, Reason> = std::collections::HashMap::new();
        loop {
            ticker.tick().await;
            if !source.prepare().await {
                continue;
            }
            let (s, p) = (source.clone(), plugins.clone());
            match tokio::task::spawn_blocking(move || sweep(&*s, &p, dry_run)).await {
                Ok(decisions) if dry_run => {
                    reported.retain(|name, _| decisions.iter().any(|d| &d.name == name));
                    for d in decisions {
                        if reported.insert(d.name.clone(), d.request.reason) != Some(d.request.reason) {
                            tracing::info!(backend = %d.name, reason = d.request.reason.as_str(), detail = %d.request.message, "dry run: would terminate");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "sweep failed"),
            }
        }
    })
}
