//! One backend's state in the local runtime.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::activity::Activity;
use crate::backends::{BackendSpec, StatusEvent, StatusFeed};
use crate::config::Template;
use crate::lifecycle::{Phase, Status, TerminationRequest};
use crate::plugins::types::{Backend, Label};
use crate::process::Process;

/// Status changes kept per backend for SSE replay. A backend changes
/// status about six times in its life; the cap only guards against bugs.
const MAX_HISTORY: usize = 64;

pub(crate) struct Record {
    pub name: String,
    pub spec: BackendSpec,
    pub template: Template,
    /// The backend as plugins see it, built once.
    pub info: Arc<Backend>,
    pub activity: Arc<Activity>,
    /// When it was created, Unix seconds (the proxy refuses tokens issued
    /// before).
    pub created_at: u64,
    status: watch::Sender<StatusEvent>,
    history: Mutex<Vec<StatusEvent>>,
    termination: Mutex<Option<TerminationRequest>>,
    /// Wakes the driver (termination requested).
    pub wake: Notify,
    pub process: Mutex<Option<Process>>,
    /// The scheduler admitted it; set before the decision's lock is let
    /// go, so that a create scheduled next counts it while it is still
    /// `pending` (see `driver::schedule`).
    pub admitted: std::sync::atomic::AtomicBool,
}

impl Record {
    pub fn new(name: String, spec: BackendSpec, template: Template, activity: Arc<Activity>) -> Self {
        let info = Arc::new(Backend {
            name: name.clone(),
            key: spec.key.clone(),
            owner: spec.owner.clone(),
            labels: spec.labels.iter().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect(),
        });
        let now = Timestamp::now();
        let first = StatusEvent { seq: 1, status: Status::new(now) };
        Record {
            name,
            spec,
            template,
            info,
            activity,
            created_at: now.as_second().max(0) as u64,
            status: watch::Sender::new(first.clone()),
            history: Mutex::new(vec![first]),
            termination: Mutex::new(None),
            wake: Notify::new(),
            process: Mutex::new(None),
            admitted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> Status {
        self.status.borrow().status.clone()
    }

    /// The current phase, without copying the status: the proxy asks on
    /// every request, and each create scans every record.
    pub fn phase(&self) -> Phase {
        self.status.borrow().status.phase
    }

    pub fn set_status(&self, status: Status) {
        let mut history = self.history.lock().expect("history lock");
        // After the end (the exit code of a stop that followed a failure):
        // the ended event is amended, not followed by another, since a
        // status stream ends at the first ended event and a client resuming
        // after it is told there is nothing more.
        if let Some(last) = history.last_mut()
            && last.status.phase.is_terminal()
            && status.phase.is_terminal()
        {
            last.status = status;
            let event = last.clone();
            self.status.send_replace(event);
            return;
        }
        let seq = history.last().map_or(1, |e| e.seq + 1);
        let event = StatusEvent { seq, status };
        history.push(event.clone());
        if history.len() > MAX_HISTORY {
            history.remove(1); // keep the first (creation) event
        }
        self.status.send_replace(event);
    }

    /// Status changes from now on (no history).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<StatusEvent> {
        self.status.subscribe()
    }

    pub fn feed(&self) -> StatusFeed {
        // Subscribe under the history lock so no event falls between them.
        let history = self.history.lock().expect("history lock");
        StatusFeed { history: history.clone(), live: self.status.subscribe(), complete: true }
    }

    pub fn termination(&self) -> Option<TerminationRequest> {
        self.termination.lock().expect("termination lock").clone()
    }

    /// Records a termination request (the first one wins) and wakes the
    /// driver.
    pub fn request_termination(&self, request: TerminationRequest) {
        {
            let mut t = self.termination.lock().expect("termination lock");
            if t.is_none() {
                *t = Some(request);
            }
        }
        self.wake.notify_one();
    }

    /// Resolves once the backend is terminal and its process has exited.
    pub async fn wait_finished(&self) {
        let mut rx = self.status.subscribe();
        let _ = rx.wait_for(|e| e.status.phase.is_terminal()).await;
        let process = self.process.lock().expect("process lock").clone();
        if let Some(p) = process {
            let mut w = p.watch();
            let _ = w.wait_for(|s| matches!(s, crate::process::ProcessState::Exited(_))).await;
        }
    }
}
