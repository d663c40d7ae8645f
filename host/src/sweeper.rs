//! The idle sweeper: every tick, each ready backend's activity goes to the
//! idle plugin, and the backends it condemns are terminated with its reason.
//!
//! The lifetime limit is also enforced here, whatever the plugin says: a
//! failing idle plugin keeps backends (fail safe), and the lifetime limit is
//! what still bounds their cost; so it is when a sweep cannot know all the
//! activity (a proxy replica did not answer) and judges nobody idle. In
//! dry-run mode decisions are logged only.

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
    /// When it became ready: with no activity since, it has been idle
    /// since then.
    pub ready_at: Option<Timestamp>,
    /// Its idle grace period.
    pub grace_period_seconds: u64,
    /// Its lifetime limit.
    pub lifetime_limit_seconds: Option<u64>,
    /// Its activity meter.
    pub activity: Arc<Activity>,
    /// The object judged, where a name can come back as another object (a
    /// key's next backend on Kubernetes): its uid, which the termination
    /// must name.
    pub uid: Option<String>,
}

/// Where the sweeper finds backends and sends terminations.
pub trait SweepSource: Send + Sync + 'static {
    /// Ready backends now.
    fn ready(&self) -> Vec<Candidate>;
    /// Ends `c`.
    fn terminate(&self, c: &Candidate, request: TerminationRequest);
    /// The activity to judge `c` by: its own meter's (the default), or,
    /// with several proxy replicas, the sum of what each one saw.
    fn activity(&self, c: &Candidate) -> Snapshot {
        c.activity.snapshot()
    }
    /// Runs on the async side before each sweep (to gather other replicas'
    /// activity, say): what this sweep knows, or `None` to skip it (another
    /// replica sweeps).
    fn prepare(&self) -> Pin<Box<dyn Future<Output = Option<Knowing>> + Send + '_>> {
        Box::pin(std::future::ready(Some(Knowing::Activity)))
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

/// Failed idle plugin calls in a row after which a sweep stops calling it:
/// a plugin that runs out of time on every call (100 ms each) would make
/// one sweep of 3,000 backends last five minutes, and the lifetime limits
/// it enforces wait as long. The rest of that sweep keeps every backend
/// but those past their lifetime limit (the host's own check); the next
/// sweep tries the plugin again.
pub const FAILURES_BEFORE_SKIPPING: u32 = 3;

/// Lines about sweeps that stopped asking a failing plugin.
static SKIPPING_LOG: crate::log_gate::LogGate = crate::log_gate::LogGate::new();

/// What a sweep knows of the backends' activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowing {
    /// All of it: the idle plugin judges every backend.
    Activity,
    /// Not all of it ([`SweepSource::prepare`] failed: a proxy replica that
    /// carries some connections did not answer), so no backend may be
    /// judged idle; lifetime limits, which do not depend on activity, still
    /// end backends.
    LifetimesOnly,
}

/// Runs one sweep and returns what it condemned (terminated unless
/// `dry_run`).
pub fn sweep(source: &dyn SweepSource, plugins: &Plugins, knowing: Knowing, dry_run: bool) -> Vec<Decision> {
    let now = Timestamp::now();
    let mut condemned = Vec::new();
    let mut failures = 0;
    for c in source.ready() {
        let age = now.duration_since(c.created_at).as_secs().max(0) as u64;
        // The activity is taken only for the plugin, and given back if its
        // call fails: taking it resets the counters since the last
        // evaluation (bytes, messages), which no plugin would then see.
        let verdict = if knowing == Knowing::Activity && failures < FAILURES_BEFORE_SKIPPING {
            let snap = source.activity(&c);
            let (verdict, failed) = plugins.idle().evaluate_reporting(&idle_request(&c, snap, age, now));
            if failed {
                // Nobody judged them: the next call sees them (on
                // Kubernetes, the other replicas' share too, now counted
                // here).
                c.activity.give_back(&snap);
            }
            failures = if failed { failures + 1 } else { 0 };
            // Once per sweep while the plugin stays broken: gated, as the
            // plugin's own failure lines are.
            if failures == FAILURES_BEFORE_SKIPPING
                && let Some(held_back) = SKIPPING_LOG.pass(std::time::Instant::now())
            {
                tracing::warn!(
                    failures,
                    sweeps_not_logged = held_back,
                    "the idle plugin failed on {failures} backends in a row; this sweep keeps the rest without asking it (lifetime limits still apply)"
                );
            }
            verdict
        } else {
            IdleVerdict::Keep
        };
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
                source.terminate(&c, request.clone());
            }
            condemned.push(Decision { name: c.backend.name.clone(), request });
        }
    }
    condemned
}

/// What the idle plugin is asked about `c`, `age` seconds old, whose
/// activity is `snap`.
fn idle_request(c: &Candidate, snap: Snapshot, age: u64, now: Timestamp) -> IdleRequest {
    // Idle since it became ready at most, not since it was created (its
    // meter's start): a start slower than the grace period must not leave
    // the browser it was created for no time to connect. A ready time ahead
    // of this clock (another machine's, on Kubernetes) counts as just now.
    let since_ready = c.ready_at.map_or(Duration::MAX, |r| Duration::try_from(now.duration_since(r)).unwrap_or(Duration::ZERO));
    let idle_for = snap.idle_for.min(since_ready);
    IdleRequest {
        backend: c.backend.clone(),
        age_seconds: age,
        grace_period_seconds: c.grace_period_seconds,
        lifetime_limit_seconds: c.lifetime_limit_seconds,
        activity: PluginActivity {
            open_connections: snap.open_connections,
            in_flight_requests: snap.in_flight_requests,
            seconds_since_last_activity: idle_for.as_secs(),
            bytes_in: snap.bytes_in,
            bytes_out: snap.bytes_out,
            websocket_messages: snap.websocket_messages,
        },
        now: now.as_second().max(0) as u64,
    }
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
            let Some(knowing) = source.prepare().await else { continue };
            let (s, p) = (source.clone(), plugins.clone());
            match tokio::task::spawn_blocking(move || sweep(&*s, &p, knowing, dry_run)).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::plugins::{Runtime, RuntimeConfig};

    /// One ready backend, created `created` seconds ago and ready for
    /// `ready` seconds, whose meter saw nothing for `idle` seconds.
    struct OneBackend {
        created: i64,
        ready: i64,
        idle: u64,
    }

    impl SweepSource for OneBackend {
        fn ready(&self) -> Vec<Candidate> {
            let now = Timestamp::now();
            let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
            let backend = Backend { name: "b".into(), key: None, owner: None, labels: Vec::new() };
            vec![Candidate {
                backend,
                created_at: ago(self.created),
                ready_at: Some(ago(self.ready)),
                grace_period_seconds: 30,
                lifetime_limit_seconds: None,
                activity: Activity::new(),
                uid: None,
            }]
        }
        fn terminate(&self, _: &Candidate, _: TerminationRequest) {}
        fn activity(&self, _: &Candidate) -> Snapshot {
            Snapshot { idle_for: Duration::from_secs(self.idle), ..Snapshot::default() }
        }
    }

    /// `n` ready backends, all past their 60 s lifetime limit.
    struct Expired(usize);

    impl SweepSource for Expired {
        fn ready(&self) -> Vec<Candidate> {
            let long_ago = Timestamp::now() - jiff::SignedDuration::from_secs(3600);
            (0..self.0)
                .map(|i| Candidate {
                    backend: Backend { name: format!("b{i}"), key: None, owner: None, labels: Vec::new() },
                    created_at: long_ago,
                    ready_at: Some(long_ago),
                    grace_period_seconds: 30,
                    lifetime_limit_seconds: Some(60),
                    activity: Activity::new(),
                    uid: None,
                })
                .collect()
        }
        fn terminate(&self, _: &Candidate, _: TerminationRequest) {}
        fn activity(&self, _: &Candidate) -> Snapshot {
            Snapshot::default()
        }
    }

    /// Ready backends (kept: young, in use) whose meters are these.
    struct Metered(Vec<Arc<Activity>>);

    impl SweepSource for Metered {
        fn ready(&self) -> Vec<Candidate> {
            let now = Timestamp::now();
            (self.0.iter().enumerate())
                .map(|(i, meter)| Candidate {
                    backend: Backend { name: format!("b{i}"), key: None, owner: None, labels: Vec::new() },
                    created_at: now,
                    ready_at: Some(now),
                    grace_period_seconds: 30,
                    lifetime_limit_seconds: None,
                    activity: meter.clone(),
                    uid: None,
                })
                .collect()
        }
        fn terminate(&self, _: &Candidate, _: TerminationRequest) {}
    }

    #[test]
    fn a_sweep_that_does_not_ask_the_plugin_leaves_the_counters_to_the_next() {
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), None).unwrap());
        let busy = |n: usize| {
            Metered(
                (0..n)
                    .map(|_| {
                        let meter = Activity::new();
                        meter.add_in(100);
                        meter.add_messages(2);
                        meter
                    })
                    .collect(),
            )
        };
        let counted = |meter: &Activity| {
            let s = meter.snapshot();
            (s.bytes_in, s.websocket_messages)
        };
        // A sweep that knows not all the activity asks no one.
        let plugins = Plugins::defaults(runtime.clone(), Arc::new(Metrics::new())).unwrap();
        let source = busy(2);
        assert_eq!(sweep(&source, &plugins, Knowing::LifetimesOnly, true), vec![]);
        assert!(source.0.iter().all(|m| counted(m) == (100, 2)), "the next sweep's plugin call still sees the traffic");
        // A plugin that fails is asked about the first few only, and what
        // its failed calls were given is given back.
        let failing = crate::plugins::PluginSource::file(std::path::Path::new(spawner_test_plugins::FIXTURE_FAIL_IDLE), "").unwrap();
        let plugins = Plugins::new(runtime.clone(), Arc::new(Metrics::new()), vec![(crate::plugins::PluginKind::Idle, failing)]).unwrap();
        let source = busy(5);
        assert_eq!(sweep(&source, &plugins, Knowing::Activity, true), vec![]);
        assert!(source.0.iter().all(|m| counted(m) == (100, 2)), "every count left for the next sweep");
        // One that decides takes them.
        let plugins = Plugins::defaults(runtime, Arc::new(Metrics::new())).unwrap();
        let source = busy(2);
        assert_eq!(sweep(&source, &plugins, Knowing::Activity, true), vec![]);
        assert!(source.0.iter().all(|m| counted(m) == (0, 0)), "seen by the plugin");
    }

    #[test]
    fn a_failing_idle_plugin_is_asked_a_few_times_per_sweep_and_lifetimes_still_end() {
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), None).unwrap());
        let metrics = Arc::new(Metrics::new());
        let failing = crate::plugins::PluginSource::file(std::path::Path::new(spawner_test_plugins::FIXTURE_FAIL_IDLE), "").unwrap();
        let plugins = Plugins::new(runtime, metrics.clone(), vec![(crate::plugins::PluginKind::Idle, failing)]).unwrap();
        let condemned = sweep(&Expired(20), &plugins, Knowing::Activity, true);
        assert_eq!(condemned.len(), 20, "every backend past its lifetime ends, plugin or not");
        assert!(condemned.iter().all(|d| d.request.reason == Reason::Lifetime));
        let text = metrics.encode();
        let calls: u64 = text
            .lines()
            .filter(|l| l.starts_with("spawner_plugin_failures_total{kind=\"idle\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(calls, u64::from(FAILURES_BEFORE_SKIPPING), "{text}");
    }

    #[test]
    fn a_backend_is_idle_since_it_became_ready_at_most() {
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), None).unwrap());
        let plugins = Plugins::defaults(runtime, Arc::new(Metrics::new())).unwrap();
        // Its start took 40 s, longer than its 30 s grace period: ready 5 s ago, it is kept.
        assert_eq!(sweep(&OneBackend { created: 45, ready: 5, idle: 45 }, &plugins, Knowing::Activity, true), vec![]);
        // Ready 35 s ago with no connection since: idle.
        let condemned = sweep(&OneBackend { created: 75, ready: 35, idle: 75 }, &plugins, Knowing::Activity, true);
        assert_eq!(condemned.len(), 1);
        assert_eq!(condemned[0].request.reason, Reason::Idle);
        let message = &condemned[0].request.message;
        assert!(["no connections for 34 s", "no connections for 35 s"].iter().any(|m| message.starts_with(m)), "since ready: {message}");
        // Activity after it became ready counts as it always did.
        assert_eq!(sweep(&OneBackend { created: 75, ready: 35, idle: 3 }, &plugins, Knowing::Activity, true), vec![]);
        // Without all the activity (a replica did not answer), nobody is
        // idle; lifetimes still end.
        assert_eq!(sweep(&OneBackend { created: 75, ready: 35, idle: 75 }, &plugins, Knowing::LifetimesOnly, true), vec![]);
        let condemned = sweep(&Expired(3), &plugins, Knowing::LifetimesOnly, true);
        assert_eq!(condemned.iter().map(|d| d.request.reason).collect::<Vec<_>>(), [Reason::Lifetime; 3]);
        // A ready time ahead of the sweeper's clock is just now, not long ago.
        assert_eq!(sweep(&OneBackend { created: 75, ready: -60, idle: 75 }, &plugins, Knowing::Activity, true), vec![]);
    }
}
