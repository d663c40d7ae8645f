//! The backend lifecycle: one pure state machine shared by every runtime.
//!
//! Given a backend's recorded [`Status`] and what is [`Observed`] now (the
//! scheduler's answer, the workload's state as the runtime sees it, any
//! termination request, the time), [`step`] returns the next status and
//! the one [`Action`] the runtime must execute. It does no I/O; runtimes
//! (local processes, Kubernetes Pods) only observe and execute, so the same
//! rules hold everywhere and every transition is unit tested below.
//!
//! Phases, in order: `pending → scheduled → starting → ready → terminating
//! → terminated`, plus `failed`. `terminated` and `failed` are terminal and
//! record a [`Reason`]. One step goes back: a workload that cannot run on
//! the node the scheduler chose (on Kubernetes, kube-scheduler cannot
//! place its Pod there: other workloads filled it, most often) is removed
//! and its backend is `pending` again, to be placed elsewhere, within the
//! startup timeout counted from its first workload.
//! The function is level-triggered: calling it again
//! with the same inputs gives the same answer, which is what a Kubernetes
//! reconcile loop needs after a crash at any line.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a backend is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Accepted; waiting for the scheduler.
    Pending,
    /// Admitted and placed; the workload is being created.
    Scheduled,
    /// The workload exists; waiting for it to accept connections.
    Starting,
    /// Accepting connections through the proxy.
    Ready,
    /// Being stopped (grace period running).
    Terminating,
    /// Stopped (see the reason).
    Terminated,
    /// Never became usable, or died (see the reason).
    Failed,
}

impl Phase {
    /// `terminated` or `failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Terminated | Phase::Failed)
    }

    /// The lower-case name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Scheduled => "scheduled",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Terminating => "terminating",
            Phase::Terminated => "terminated",
            Phase::Failed => "failed",
        }
    }

    /// Every phase, in order.
    pub const ALL: [Phase; 7] =
        [Phase::Pending, Phase::Scheduled, Phase::Starting, Phase::Ready, Phase::Terminating, Phase::Terminated, Phase::Failed];
}

/// Why a backend is terminating, terminated or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The idle plugin condemned it.
    Idle,
    /// It reached its lifetime limit.
    Lifetime,
    /// Someone asked (API call, deletion, Spawner shutting down).
    Requested,
    /// The scheduler refused it, or the platform would not create it.
    Rejected,
    /// It was not created, or did not accept connections, within the
    /// startup timeout.
    StartupTimeout,
    /// Its process or container exited on its own (see the exit code).
    Exited,
    /// The runtime lost it (process or Pod vanished unexpectedly).
    Lost,
}

impl Reason {
    /// The kebab-case name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::Lifetime => "lifetime",
            Reason::Requested => "requested",
            Reason::Rejected => "rejected",
            Reason::StartupTimeout => "startup-timeout",
            Reason::Exited => "exited",
            Reason::Lost => "lost",
        }
    }
}

/// The recorded state of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Current phase.
    pub phase: Phase,
    /// Why it is terminating or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Human-readable detail for the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the process or container, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Node the scheduler chose (none: "anywhere", or not yet scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was accepted.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When the scheduler admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub scheduled_at: Option<Timestamp>,
    /// When its first workload was created: the startup timeout counts
    /// from here, also for a backend placed again on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<Timestamp>,
    /// When it became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ready_at: Option<Timestamp>,
    /// When it began stopping (entered `terminating`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub terminating_at: Option<Timestamp>,
    /// When it reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
}

impl Status {
    /// A new backend, pending, created at `now`.
    pub fn new(now: Timestamp) -> Self {
        Status {
            phase: Phase::Pending,
            reason: None,
            message: None,
            exit_code: None,
            node: None,
            created_at: now,
            scheduled_at: None,
            started_at: None,
            ready_at: None,
            terminating_at: None,
            finished_at: None,
        }
    }
}

/// The scheduler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it (on this node, or anywhere when `None`).
    Admitted {
        /// The chosen node.
        node: Option<String>,
    },
    /// Do not run it.
    Rejected {
        /// Why, shown to the caller.
        message: String,
    },
}

/// The workload as the runtime sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Not created (or not yet visible).
    Absent,
    /// Created, not accepting connections yet.
    Starting,
    /// Accepting connections.
    Ready,
    /// Exited (code if known).
    Exited(Option<i32>),
    /// Was created, and is now gone without an exit record.
    Vanished,
}

impl Workload {
    fn exists(self) -> bool {
        matches!(self, Workload::Starting | Workload::Ready)
    }
}

/// A request to end a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminationRequest {
    /// Recorded reason.
    pub reason: Reason,
    /// Recorded detail.
    pub message: String,
}

/// Why a workload could not be created; each is `failed` with its own
/// reason, so that what the platform refused is not counted as programs
/// that exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// The program could not be started (it does not exist, or may not be
    /// run): `exited`, with no exit code.
    Failed(String),
    /// The platform refused it for good (on Kubernetes, admission: Pod
    /// Security, a quota, a spec the API server finds invalid; a Service
    /// name something else holds): `rejected`.
    Refused(String),
    /// It could not be created within the startup timeout (an admission
    /// webhook down, a Pod name still held): `startup-timeout`.
    TimedOut(String),
}

/// Everything [`step`] looks at besides the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The scheduler's answer, once given.
    pub admission: Option<Admission>,
    /// The workload's state.
    pub workload: Workload,
    /// A termination request, if any.
    pub termination: Option<TerminationRequest>,
    /// Why creating the workload failed, if it did: recorded as `failed`,
    /// with no exit code, the reason [`CreateError`]'s.
    pub create_error: Option<CreateError>,
    /// What an exited workload wrote last (see [`crate::text::last_words`];
    /// on Kubernetes, its termination message), if known: an exit of its own
    /// says it, since it usually says why.
    pub last_output: Option<String>,
    /// What the platform says ended the workload, when something other
    /// than the workload did (Kubernetes: `OOMKilled`, an eviction and its
    /// message): an exit is then not "on its own", and a workload that
    /// disappeared says why.
    pub ended_by: Option<String>,
    /// Where readiness is checked, if the runtime says (local mode: the
    /// backend's `127.0.0.1:PORT`): a backend that listens elsewhere is
    /// told so when it times out.
    pub probe: Option<String>,
    /// Why the workload cannot run on the node the scheduler chose, when
    /// the runtime says it cannot (Kubernetes: kube-scheduler cannot place
    /// its Pod, pinned there): the backend is placed again.
    pub unfit: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// The signal an exit code of 128 + N reports, for the common ones, and
/// what usually sends it.
fn signal_name(code: i32) -> Option<(&'static str, &'static str)> {
    Some(match code - 128 {
        1 => ("SIGHUP", ""),
        2 => ("SIGINT", ""),
        6 => ("SIGABRT", " (an abort, e.g. a failed assertion)"),
        9 => ("SIGKILL", " (the out-of-memory killer sends it)"),
        11 => ("SIGSEGV", " (a crash)"),
        15 => ("SIGTERM", ""),
        _ => return None,
    })
}

/// Where an exit's message goes on to the backend's last output. Spawner's
/// own log line for the change stops there: what a backend prints (perhaps
/// a secret, on its way down) belongs to whoever may read its status and
/// logs, not to wherever Spawner's log is shipped.
pub const LAST_OUTPUT: &str = "; its last output: ";

/// What a backend's WebSockets are told when it ends (their Close frame's
/// reason): the reason and the message, without the workload's last
/// output (whoever holds the page may not be who may read its logs).
pub fn ending_note(reason: Option<Reason>, message: Option<&str>) -> String {
    let reason = reason.map_or("ended", Reason::as_str);
    match message.and_then(|m| m.split(LAST_OUTPUT).next()).filter(|m| !m.is_empty()) {
        Some(m) => format!("backend ending ({reason}): {m}"),
        None => format!("backend ending ({reason})"),
    }
}

/// `message`, then what the workload wrote last, if known.
fn with_last_output(message: String, observed: &Observed) -> String {
    match &observed.last_output {
        Some(words) => format!("{message}{LAST_OUTPUT}{words}"),
        None => message,
    }
}

/// [`Observed::last_output`] from an exited workload's output lines: the
/// last three non-empty ones, within 300 bytes (a status message is read
/// in a terminal and stored in an object).
pub fn last_output<'a>(lines: impl DoubleEndedIterator<Item = &'a str>) -> Option<String> {
    crate::text::last_words(lines, 3, 300)
}

/// Timing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a created workload may take to accept connections.
    pub startup: Duration,
}

/// What the runtime must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes (or a deadline passes).
    Wait,
    /// Ask the scheduler plugin.
    Schedule,
    /// Create the workload (on `node` when given). Must be idempotent.
    Create {
        /// The scheduler's node.
        node: Option<String>,
    },
    /// Stop the workload (SIGTERM / Pod deletion, then escalation after the
    /// grace period). Must be idempotent.
    Stop,
    /// Remove the workload, which never started (it cannot run on `node`),
    /// and remember not to offer `node` to this backend again; the next
    /// step asks the scheduler. Must be idempotent.
    Reschedule {
        /// The node it could not run on.
        node: String,
    },
}

/// The next status and action for a backend.
pub fn step(status: &Status, observed: &Observed, timeouts: &Timeouts) -> (Status, Action) {
    let mut next = status.clone();
    let now = observed.now;

    if status.phase.is_terminal() {
        // Ended: make sure nothing keeps running (e.g. after a startup
        // timeout, or a crash of Spawner between recording and stopping),
        // and record how the stop ended it, as for any other reason.
        if let Workload::Exited(code) = observed.workload
            && next.exit_code.is_none()
        {
            next.exit_code = code;
        }
        let action = if observed.workload.exists() { Action::Stop } else { Action::Wait };
        return (next, action);
    }

    // Exits are facts: record them before anything else.
    match observed.workload {
        Workload::Exited(code) if status.phase >= Phase::Scheduled => {
            next.exit_code = code;
            if status.phase == Phase::Terminating {
                next.phase = Phase::Terminated;
                // 137 = 128 + SIGKILL: it ignored SIGTERM for the whole stop
                // timeout; say so next to why it was stopped.
                if code == Some(137) {
                    let why = status.message.clone().unwrap_or_default();
                    next.message =
                        Some(format!("{why} (it did not exit within the stop timeout after SIGTERM and was killed)").trim_start().into());
                }
            } else {
                next.phase = if code == Some(0) { Phase::Terminated } else { Phase::Failed };
                next.reason = Some(Reason::Exited);
                let message = match (code, &observed.ended_by) {
                    (Some(c), Some(by)) => format!("exited with code {c} ({by})"),
                    (None, Some(by)) => format!("exited ({by})"),
                    (Some(c), None) => match signal_name(c) {
                        // 128 + N is how a shell (and Spawner) reports death by
                        // signal N: nobody asked it to stop, so something else
                        // killed it (the OOM killer sends SIGKILL).
                        Some((signal, hint)) => {
                            format!(
                                "exited with code {c}, which means killed by {signal} unless it chose that code; Spawner did not stop it{hint}"
                            )
                        }
                        None => format!("exited on its own with code {c}"),
                    },
                    (None, None) => "exited on its own (killed by a signal)".into(),
                };
                next.message = Some(with_last_output(message, observed));
            }
            next.finished_at = Some(now);
            return (next, Action::Wait);
        }
        Workload::Vanished if status.phase >= Phase::Starting => {
            if status.phase == Phase::Terminating {
                next.phase = Phase::Terminated;
            } else if let Some(req) = &observed.termination {
                // Asked to end, and gone: the stop already happened (on
                // Kubernetes, a reconcile may read the object from a cache
                // that does not yet show its own `terminating` write).
                next.phase = Phase::Terminated;
                next.reason = Some(req.reason);
                next.message = Some(req.message.clone());
            } else {
                next.phase = Phase::Failed;
                next.reason = Some(Reason::Lost);
                next.message = Some(match &observed.ended_by {
                    Some(by) => format!("the workload disappeared ({by})"),
                    None => "the workload disappeared".into(),
                });
            }
            next.finished_at = Some(now);
            return (next, Action::Wait);
        }
        _ => {}
    }

    if let Some(req) = &observed.termination
        && status.phase != Phase::Terminating
    {
        next.reason = Some(req.reason);
        next.message = Some(req.message.clone());
        // Once scheduled, a create may be in flight: stop (a no-op when
        // nothing exists) and let the next step see the workload gone.
        if status.phase >= Phase::Scheduled || observed.workload.exists() {
            next.phase = Phase::Terminating;
            next.terminating_at = Some(now);
            return (next, Action::Stop);
        }
        // Nothing is running: end right away.
        next.phase = Phase::Terminated;
        next.finished_at = Some(now);
        return (next, Action::Wait);
    }

    if let (Phase::Scheduled, Some(err), Workload::Absent) = (status.phase, &observed.create_error, observed.workload) {
        let (reason, err) = match err {
            CreateError::Failed(e) => (Reason::Exited, e),
            CreateError::Refused(e) => (Reason::Rejected, e),
            CreateError::TimedOut(e) => (Reason::StartupTimeout, e),
        };
        next.phase = Phase::Failed;
        next.reason = Some(reason);
        next.message = Some(format!("could not start: {err}"));
        next.finished_at = Some(now);
        return (next, Action::Wait);
    }

    // Pinned to a node that cannot run it: placed again. The startup
    // timeout still counts from the first workload, so however many nodes
    // it is moved across, it ends within it.
    if let (Phase::Scheduled | Phase::Starting, Some(_), Workload::Starting, Some(node)) =
        (status.phase, &observed.unfit, observed.workload, &status.node)
    {
        let node = node.clone();
        next.phase = Phase::Pending;
        next.node = None;
        next.scheduled_at = None;
        return (next, Action::Reschedule { node });
    }

    match status.phase {
        Phase::Pending => match &observed.admission {
            None => (next, Action::Schedule),
            Some(Admission::Rejected { message }) => {
                next.phase = Phase::Failed;
                next.reason = Some(Reason::Rejected);
                next.message = Some(message.clone());
                next.finished_at = Some(now);
                (next, Action::Wait)
            }
            Some(Admission::Admitted { node }) => {
                next.phase = Phase::Scheduled;
                next.node = node.clone();
                next.scheduled_at = Some(now);
                (next, Action::Create { node: node.clone() })
            }
        },
        Phase::Scheduled => match observed.workload {
            Workload::Absent | Workload::Vanished => {
                let node = next.node.clone();
                (next, Action::Create { node })
            }
            Workload::Starting => {
                next.phase = Phase::Starting;
                // Kept when placed again (see `Action::Reschedule`).
                next.started_at.get_or_insert(now);
                (next, Action::Wait)
            }
            Workload::Ready => {
                next.phase = Phase::Ready;
                next.started_at.get_or_insert(now);
                next.ready_at = Some(now);
                (next, Action::Wait)
            }
            Workload::Exited(_) => unreachable!("handled above"),
        },
        Phase::Starting => match observed.workload {
            Workload::Ready => {
                next.phase = Phase::Ready;
                next.ready_at = Some(now);
                (next, Action::Wait)
            }
            _ => {
                let started = status.started_at.unwrap_or(status.created_at);
                let waited = now.duration_since(started);
                if waited.is_positive() && waited.unsigned_abs() >= timeouts.startup {
                    next.phase = Phase::Failed;
                    next.reason = Some(Reason::StartupTimeout);
                    let at = observed.probe.as_deref().map(|p| format!(" on {p}")).unwrap_or_default();
                    let message = format!("did not accept connections{at} within {} s", timeouts.startup.as_secs_f64());
                    next.message = Some(with_last_output(message, observed));
                    next.finished_at = Some(now);
                    (next, Action::Stop)
                } else {
                    (next, Action::Wait)
                }
            }
        },
        Phase::Ready => (next, Action::Wait),
        Phase::Terminating => {
            if observed.workload.exists() {
                (next, Action::Stop)
            } else {
                next.phase = Phase::Terminated;
                next.finished_at = Some(now);
                (next, Action::Wait)
            }
        }
        Phase::Terminated | Phase::Failed => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTUP: Timeouts = Timeouts { startup: Duration::from_secs(60) };

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn observed(workload: Workload, secs: i64) -> Observed {
        Observed {
            admission: Some(Admission::Admitted { node: Some("n1".into()) }),
            workload,
            termination: None,
            create_error: None,
            last_output: None,
            ended_by: None,
            probe: None,
            unfit: None,
            now: t(secs),
        }
    }

    fn in_phase(phase: Phase) -> Status {
        let mut s = Status::new(t(0));
        s.phase = phase;
        if phase >= Phase::Scheduled {
            s.scheduled_at = Some(t(0));
            s.node = Some("n1".into());
        }
        if phase >= Phase::Starting {
            s.started_at = Some(t(1));
        }
        s
    }

    fn terminate(reason: Reason) -> Option<TerminationRequest> {
        Some(TerminationRequest { reason, message: format!("{} test", reason.as_str()) })
    }

    #[test]
    fn pending_asks_the_scheduler_then_follows_its_answer() {
        let s = Status::new(t(0));
        let mut o = observed(Workload::Absent, 1);
        o.admission = None;
        assert_eq!(step(&s, &o, &STARTUP), (s.clone(), Action::Schedule));

        let (next, action) = step(&s, &observed(Workload::Absent, 1), &STARTUP);
        assert_eq!((next.phase, next.node.as_deref(), next.scheduled_at), (Phase::Scheduled, Some("n1"), Some(t(1))));
        assert_eq!(action, Action::Create { node: Some("n1".into()) });

        o.admission = Some(Admission::Rejected { message: "quota".into() });
        let (next, action) = step(&s, &o, &STARTUP);
        assert_eq!((next.phase, next.reason, next.message.as_deref()), (Phase::Failed, Some(Reason::Rejected), Some("quota")));
        assert_eq!((action, next.finished_at), (Action::Wait, Some(t(1))));
    }

    #[test]
    fn scheduled_creates_until_the_workload_shows_up() {
        let s = in_phase(Phase::Scheduled);
        assert_eq!(step(&s, &observed(Workload::Absent, 2), &STARTUP).1, Action::Create { node: Some("n1".into()) });
        let (next, action) = step(&s, &observed(Workload::Starting, 2), &STARTUP);
        assert_eq!((next.phase, next.started_at, action), (Phase::Starting, Some(t(2)), Action::Wait));
        let (next, _) = step(&s, &observed(Workload::Ready, 2), &STARTUP);
        assert_eq!((next.phase, next.ready_at), (Phase::Ready, Some(t(2))));
    }

    #[test]
    fn a_workload_its_node_cannot_run_is_removed_and_placed_again() {
        let unfit = |workload: Workload, secs: i64| Observed { unfit: Some("1 Insufficient cpu".into()), ..observed(workload, secs) };
        let s = in_phase(Phase::Starting);
        let (next, action) = step(&s, &unfit(Workload::Starting, 5), &STARTUP);
        assert_eq!(action, Action::Reschedule { node: "n1".into() });
        assert_eq!(next, Status { phase: Phase::Pending, node: None, scheduled_at: None, ..s.clone() });
        // Seen before its `starting` was recorded: the same.
        assert_eq!(step(&in_phase(Phase::Scheduled), &unfit(Workload::Starting, 5), &STARTUP).1, action);
        // Then scheduled afresh; its startup timeout still counts from
        // the first workload.
        let elsewhere = Observed { admission: Some(Admission::Admitted { node: Some("n2".into()) }), ..observed(Workload::Absent, 6) };
        let (placed, action) = step(&next, &Observed { admission: None, ..elsewhere.clone() }, &STARTUP);
        assert_eq!((placed.phase, action), (Phase::Pending, Action::Schedule));
        let (placed, action) = step(&next, &elsewhere, &STARTUP);
        assert_eq!(
            (placed.phase, placed.node.as_deref(), action),
            (Phase::Scheduled, Some("n2"), Action::Create { node: Some("n2".into()) })
        );
        let (started, _) = step(&placed, &observed(Workload::Starting, 7), &STARTUP);
        assert_eq!((started.phase, started.started_at, started.created_at), (Phase::Starting, Some(t(1)), t(0)));
        let (late, _) = step(&started, &observed(Workload::Starting, 61), &STARTUP);
        assert_eq!(late.reason, Some(Reason::StartupTimeout), "60 s after the first workload");

        // Placed "anywhere": kube-scheduler's to place, so it waits (and
        // the startup timeout ends the wait).
        let anywhere = Status { node: None, ..s.clone() };
        assert_eq!(step(&anywhere, &unfit(Workload::Starting, 5), &STARTUP), (anywhere.clone(), Action::Wait));
        assert_eq!(step(&anywhere, &unfit(Workload::Starting, 61), &STARTUP).0.reason, Some(Reason::StartupTimeout));
        // Asked to end: it ends, wherever it waits.
        let ending = Observed { termination: terminate(Reason::Requested), ..unfit(Workload::Starting, 5) };
        assert_eq!(step(&s, &ending, &STARTUP).1, Action::Stop);
        // Running, or gone: nothing to move.
        assert_eq!(step(&s, &unfit(Workload::Ready, 5), &STARTUP).0.phase, Phase::Ready);
        assert_eq!(step(&s, &unfit(Workload::Vanished, 5), &STARTUP).0.reason, Some(Reason::Lost));
    }

    #[test]
    fn starting_becomes_ready_or_times_out() {
        let s = in_phase(Phase::Starting);
        let (next, action) = step(&s, &observed(Workload::Ready, 3), &STARTUP);
        assert_eq!((next.phase, next.ready_at, action), (Phase::Ready, Some(t(3)), Action::Wait));

        let (next, action) = step(&s, &observed(Workload::Starting, 60), &STARTUP);
        assert_eq!((next.phase, action), (Phase::Starting, Action::Wait), "59 s after start: still waiting");
        let (next, action) = step(&s, &observed(Workload::Starting, 61), &STARTUP);
        assert_eq!((next.phase, next.reason, action), (Phase::Failed, Some(Reason::StartupTimeout), Action::Stop));
        assert_eq!(next.message.unwrap(), "did not accept connections within 60 s");
        let told = Observed {
            probe: Some("127.0.0.1:4000 (its PORT)".into()),
            last_output: Some("listening on [::1]:3000".into()),
            ..observed(Workload::Starting, 61)
        };
        let (next, _) = step(&s, &told, &STARTUP);
        assert_eq!(
            next.message.unwrap(),
            "did not accept connections on 127.0.0.1:4000 (its PORT) within 60 s; its last output: listening on [::1]:3000"
        );
        // Failed first, stopped after: the stop's exit code is recorded
        // then, once, and nothing else changes.
        let failed = step(&s, &observed(Workload::Starting, 61), &STARTUP).0;
        let (stopped, action) = step(&failed, &observed(Workload::Exited(Some(143)), 62), &STARTUP);
        assert_eq!(action, Action::Wait);
        assert_eq!(stopped, Status { exit_code: Some(143), ..failed.clone() });
        let (again, _) = step(&stopped, &observed(Workload::Exited(Some(137)), 63), &STARTUP);
        assert_eq!(again, stopped, "the first exit code stays");
    }

    #[test]
    fn an_exit_on_its_own_is_recorded_with_its_code() {
        for phase in [Phase::Scheduled, Phase::Starting, Phase::Ready] {
            let (next, action) = step(&in_phase(phase), &observed(Workload::Exited(Some(3)), 5), &STARTUP);
            assert_eq!(
                (next.phase, next.reason, next.exit_code, action),
                (Phase::Failed, Some(Reason::Exited), Some(3), Action::Wait),
                "{phase:?}"
            );
            assert_eq!(next.finished_at, Some(t(5)));
        }
        let (next, _) = step(&in_phase(Phase::Ready), &observed(Workload::Exited(Some(137)), 5), &STARTUP);
        assert_eq!(
            next.message.as_deref(),
            Some(
                "exited with code 137, which means killed by SIGKILL unless it chose that code; Spawner did not stop it (the out-of-memory killer sends it)"
            )
        );
        let (next, _) = step(&in_phase(Phase::Ready), &observed(Workload::Exited(Some(0)), 5), &STARTUP);
        assert_eq!((next.phase, next.reason, next.exit_code), (Phase::Terminated, Some(Reason::Exited), Some(0)));
        let mut stopping = in_phase(Phase::Terminating);
        stopping.message = Some("terminated through the API".into());
        let (next, _) = step(&stopping, &observed(Workload::Exited(Some(137)), 5), &STARTUP);
        assert_eq!(next.phase, Phase::Terminated);
        assert_eq!(
            next.message.as_deref(),
            Some("terminated through the API (it did not exit within the stop timeout after SIGTERM and was killed)")
        );
        let (next, _) = step(&in_phase(Phase::Ready), &observed(Workload::Exited(None), 5), &STARTUP);
        assert_eq!((next.phase, next.exit_code), (Phase::Failed, None));
        // What it wrote last is part of the message, as it usually says why.
        let said =
            Observed { last_output: Some("ModuleNotFoundError: No module named 'flask'".into()), ..observed(Workload::Exited(Some(1)), 5) };
        let (next, _) = step(&in_phase(Phase::Starting), &said, &STARTUP);
        assert_eq!(
            next.message.as_deref(),
            Some("exited on its own with code 1; its last output: ModuleNotFoundError: No module named 'flask'")
        );
        // Not when it was stopped: the reason it was stopped is the message.
        let (next, _) = step(&stopping, &Observed { last_output: Some("bye".into()), ..observed(Workload::Exited(Some(0)), 5) }, &STARTUP);
        assert_eq!(next.message.as_deref(), Some("terminated through the API"));
    }

    #[test]
    fn a_workload_that_cannot_be_created_fails_with_the_reason() {
        for (error, reason) in [
            (CreateError::Failed("No such file or directory".into()), Reason::Exited),
            (CreateError::Refused("No such file or directory".into()), Reason::Rejected),
            (CreateError::TimedOut("No such file or directory".into()), Reason::StartupTimeout),
        ] {
            let mut o = observed(Workload::Absent, 2);
            o.create_error = Some(error);
            let (next, action) = step(&in_phase(Phase::Scheduled), &o, &STARTUP);
            assert_eq!((next.phase, next.reason, next.exit_code, action), (Phase::Failed, Some(reason), None, Action::Wait));
            assert!(next.message.unwrap().contains("could not start: No such file"));
        }
    }

    #[test]
    fn an_end_the_platform_caused_says_so() {
        let by = |workload: Workload| Observed { ended_by: Some("OOMKilled: over its memory limit".into()), ..observed(workload, 5) };
        let (next, _) = step(&in_phase(Phase::Ready), &by(Workload::Exited(Some(137))), &STARTUP);
        assert_eq!((next.phase, next.reason, next.exit_code), (Phase::Failed, Some(Reason::Exited), Some(137)));
        assert_eq!(next.message.as_deref(), Some("exited with code 137 (OOMKilled: over its memory limit)"), "not 'on its own'");
        let (next, _) = step(&in_phase(Phase::Ready), &by(Workload::Vanished), &STARTUP);
        assert_eq!((next.phase, next.reason), (Phase::Failed, Some(Reason::Lost)));
        assert_eq!(next.message.as_deref(), Some("the workload disappeared (OOMKilled: over its memory limit)"));
    }

    #[test]
    fn a_vanished_workload_is_lost() {
        let (next, _) = step(&in_phase(Phase::Ready), &observed(Workload::Vanished, 5), &STARTUP);
        assert_eq!((next.phase, next.reason), (Phase::Failed, Some(Reason::Lost)));
        // Before it was ever seen, "vanished" just means "create it".
        assert_eq!(
            step(&in_phase(Phase::Scheduled), &observed(Workload::Vanished, 5), &STARTUP).1,
            Action::Create { node: Some("n1".into()) }
        );
    }

    #[test]
    fn a_vanished_workload_that_was_asked_to_end_is_terminated_not_lost() {
        // A reconcile reading its object from a cache that does not yet show
        // its own `terminating` write sees `ready`, the request, and no Pod.
        let mut o = observed(Workload::Vanished, 5);
        o.termination = terminate(Reason::Idle);
        let (next, action) = step(&in_phase(Phase::Ready), &o, &STARTUP);
        assert_eq!((next.phase, next.reason, action), (Phase::Terminated, Some(Reason::Idle), Action::Wait));
        assert_eq!(next.message.as_deref(), Some("idle test"));
        assert_eq!(next.finished_at, Some(t(5)));
    }

    #[test]
    fn termination_stops_the_workload_and_keeps_the_reason_through_the_exit() {
        for reason in [Reason::Idle, Reason::Lifetime, Reason::Requested] {
            let mut o = observed(Workload::Ready, 10);
            o.termination = terminate(reason);
            let (terminating, action) = step(&in_phase(Phase::Ready), &o, &STARTUP);
            assert_eq!((terminating.phase, terminating.reason, action), (Phase::Terminating, Some(reason), Action::Stop));
            assert_eq!(terminating.terminating_at, Some(t(10)));

            // Still running: stop again (idempotent), status unchanged.
            assert_eq!(step(&terminating, &o, &STARTUP), (terminating.clone(), Action::Stop));

            // SIGTERM'd process exits 143: terminated, reason kept.
            o.workload = Workload::Exited(Some(143));
            let (ended, action) = step(&terminating, &o, &STARTUP);
            assert_eq!((ended.phase, ended.reason, ended.exit_code, action), (Phase::Terminated, Some(reason), Some(143), Action::Wait));

            o.workload = Workload::Absent;
            assert_eq!(step(&terminating, &o, &STARTUP).0.phase, Phase::Terminated);
            o.workload = Workload::Vanished;
            assert_eq!(step(&terminating, &o, &STARTUP).0.phase, Phase::Terminated);
        }
    }

    #[test]
    fn termination_before_anything_runs_ends_at_once() {
        let mut o = observed(Workload::Absent, 1);
        o.admission = None;
        o.termination = terminate(Reason::Requested);
        let (next, action) = step(&Status::new(t(0)), &o, &STARTUP);
        assert_eq!((next.phase, next.reason, action), (Phase::Terminated, Some(Reason::Requested), Action::Wait));

        // Scheduled with a create possibly in flight: stop to be sure.
        let (next, action) = step(&in_phase(Phase::Scheduled), &o, &STARTUP);
        assert_eq!((next.phase, action), (Phase::Terminating, Action::Stop));
        let (next, action) = step(&next, &o, &STARTUP);
        assert_eq!((next.phase, action), (Phase::Terminated, Action::Wait));
    }

    #[test]
    fn terminal_states_are_final_but_leave_nothing_running() {
        for phase in [Phase::Terminated, Phase::Failed] {
            let s = in_phase(phase);
            let mut o = observed(Workload::Ready, 9);
            o.termination = terminate(Reason::Idle);
            assert_eq!(step(&s, &o, &STARTUP), (s.clone(), Action::Stop));
            o.workload = Workload::Absent;
            assert_eq!(step(&s, &o, &STARTUP), (s.clone(), Action::Wait));
        }
    }

    #[test]
    fn every_state_reaches_a_fixpoint_under_unchanged_inputs() {
        // Level-triggered: re-running with the same observation converges.
        let workloads = [Workload::Absent, Workload::Starting, Workload::Ready, Workload::Exited(Some(1)), Workload::Vanished];
        for phase in Phase::ALL {
            for w in workloads {
                for term in [None, terminate(Reason::Idle)] {
                    let mut o = observed(w, 1000);
                    o.termination = term.clone();
                    let mut s = in_phase(phase);
                    let mut steps = 0;
                    loop {
                        let (next, _) = step(&s, &o, &STARTUP);
                        if next == s {
                            break;
                        }
                        assert!(next.phase >= s.phase || next.phase.is_terminal(), "{phase:?} went back to {:?}", next.phase);
                        s = next;
                        steps += 1;
                        assert!(steps < 5, "no fixpoint from {phase:?} with {w:?}, {term:?}");
                    }
                }
            }
        }
    }
}
