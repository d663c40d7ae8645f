//! One task per backend: observe, [`lifecycle::step`], execute, wait.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use super::node::{NodeInfo, this_machine};
use super::record::Record;
use super::{Local, timeouts};
use crate::lifecycle::{self, Action, Admission, CreateError, Observed, Phase, Workload};
use crate::plugins::types::{Label, Node, PlacedBackend, Placement, PlacementRequest, Resources};
use crate::process::{self, Identity, ProcessCommand, ProcessState};

/// Output lines looked at for an exited process's last words (empty ones
/// are skipped, so a few more than are kept).
const LAST_LINES: usize = 16;

/// Output lines whose stdout and stderr ones are reordered for those last
/// words (see [`process::logs::stderr_last`]).
const REORDERED_LINES: usize = 1024;

pub(crate) async fn drive(local: Arc<Local>, rec: Arc<Record>) {
    let timeouts = timeouts(&local.config);
    let mut admission: Option<Admission> = None;
    let mut create_error: Option<CreateError> = None;
    let mut state: Option<watch::Receiver<ProcessState>> = None;
    let mut stop_sent = false;
    loop {
        let workload = match &state {
            None => Workload::Absent,
            Some(w) => match *w.borrow() {
                ProcessState::Starting => Workload::Starting,
                ProcessState::Ready => Workload::Ready,
                ProcessState::Exited(code) => Workload::Exited(code),
            },
        };
        // An exit is recorded once the output has been read to the end, so
        // that the status and the logs agree on what it wrote last.
        let last_output = match workload {
            Workload::Exited(_) => {
                let read = rec.process.lock().expect("process lock").as_ref().map(|p| p.output_read());
                if let Some(read) = read {
                    read.await;
                }
                last_output(&rec)
            }
            // For a startup timeout: a server that says where it listens.
            Workload::Starting => last_output(&rec),
            _ => None,
        };
        // Where readiness is checked, for a startup timeout's message.
        let probe =
            match workload {
                Workload::Starting => rec.process.lock().expect("process lock").as_ref().map(|p| {
                    format!("{} (its PORT; a server listening only on ::1, on another port or on a Unix socket is not seen)", p.addr)
                }),
                _ => None,
            };
        let observed = Observed {
            admission: admission.clone(),
            workload,
            termination: rec.termination(),
            create_error: create_error.clone(),
            last_output,
            ended_by: None,
            probe,
            // One machine: nowhere else to go.
            unfit: None,
            now: Timestamp::now(),
        };
        let current = rec.status();
        let (next, action) = lifecycle::step(&current, &observed, &timeouts);
        if next != current {
            local.transition(&rec, &current, next.clone());
        }
        match action {
            Action::Schedule => {
                admission = Some(schedule(&local, &rec).await);
                continue;
            }
            Action::Create { .. } => {
                match start(&local, &rec) {
                    Ok(p) => {
                        state = Some(p.watch());
                        *rec.process.lock().expect("process lock") = Some(p);
                    }
                    Err(e) => create_error = Some(CreateError::Failed(e.to_string())),
                }
                continue;
            }
            Action::Stop => {
                if !stop_sent {
                    if let Some(p) = rec.process.lock().expect("process lock").as_ref() {
                        p.stop(local.config.stop_timeout);
                    }
                    stop_sent = true;
                }
            }
            Action::Reschedule { .. } => unreachable!("local mode observes no unfit workload"),
            Action::Wait => {
                if next.phase.is_terminal() && !matches!(workload, Workload::Starting | Workload::Ready) {
                    return;
                }
            }
        }

        // Sleep until something can have changed.
        let deadline = match (next.phase, next.started_at) {
            (Phase::Starting, Some(started)) => {
                // Zero if the wall clock stepped back since the start
                // (the wait is then as long as it would have been; a
                // negative time's absolute value would make it 1 ms, again
                // and again, until the clock caught up).
                let elapsed = Duration::try_from(Timestamp::now().duration_since(started)).unwrap_or_default();
                timeouts.startup.saturating_sub(elapsed) + Duration::from_millis(1)
            }
            _ => Duration::from_secs(3600),
        };
        let process_changed = async {
            match state.as_mut() {
                Some(w) => {
                    if w.changed().await.is_err() {
                        // The process task ended: its last state stays put.
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = rec.wake.notified() => {}
            _ = process_changed => {}
            _ = tokio::time::sleep(deadline) => {}
        }
    }
}

/// What the backend's process wrote last, for its status message.
fn last_output(rec: &Record) -> Option<String> {
    rec.process.lock().expect("process lock").as_ref().and_then(|p| {
        // Reordered before the last few are taken: a Python program's
        // buffered stdout, flushed at exit after its traceback, can be
        // hundreds of lines.
        let mut lines = process::logs::stderr_last(p.logs.lines(Some(REORDERED_LINES)));
        lines.drain(..lines.len().saturating_sub(LAST_LINES));
        lifecycle::last_output(lines.iter().map(|l| l.text.as_str()))
    })
}

fn start(local: &Local, rec: &Record) -> std::io::Result<process::Process> {
    let mut env = rec.template.env.clone();
    env.extend(rec.spec.env.clone());
    let command =
        ProcessCommand { program: rec.template.command.clone(), args: rec.template.args.clone(), env, cwd: rec.template.cwd.clone() };
    let prefix = if local.config.host_domain.is_some() { "/".to_string() } else { format!("/p/{}/", rec.name) };
    process::start(&command, &Identity { name: rec.name.clone(), key: rec.spec.key.clone(), prefix }, local.reaper.as_ref())
}

/// Asks the scheduler plugin, with this machine as the only node. One
/// decision at a time: what it admitted counts for the next at once, even
/// before its driver records it as scheduled. The decision (the plugin call
/// included) is taken on a blocking thread, and the lock is held only
/// there, so concurrent creates queue for the plugin call alone.
async fn schedule(local: &Arc<Local>, rec: &Arc<Record>) -> Admission {
    let (local, rec) = (local.clone(), rec.clone());
    tokio::task::spawn_blocking(move || {
        let node = this_machine();
        let _deciding = local.deciding.lock().expect("deciding lock");
        let admission = decide(&local, &rec, node);
        if matches!(admission, Admission::Admitted { .. }) {
            rec.admitted.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        admission
    })
    .await
    .unwrap_or_else(|e| Admission::Rejected { message: format!("scheduling failed: {e}") })
}

fn decide(local: &Local, rec: &Record, node: &NodeInfo) -> Admission {
    let placed: Vec<PlacedBackend> = {
        let records = local.records.read().expect("records lock");
        records
            .values()
            .filter(|r| r.name != rec.name)
            .filter(|r| {
                let phase = r.phase();
                !phase.is_terminal() && (phase != Phase::Pending || r.admitted.load(std::sync::atomic::Ordering::SeqCst))
            })
            .map(|r| PlacedBackend {
                name: r.name.clone(),
                owner: r.spec.owner.clone(),
                labels: r.info.labels.clone(),
                node: Some(node.name.clone()),
                requests: Resources { cpu_millis: r.spec.cpu_millis, memory_bytes: r.spec.memory_bytes },
            })
            .collect()
    };
    let owner_backends = match &rec.spec.owner {
        Some(o) => placed.iter().filter(|b| b.owner.as_ref() == Some(o)).cloned().collect(),
        None => Vec::new(),
    };
    let request = PlacementRequest {
        backend: (*rec.info).clone(),
        requests: Resources { cpu_millis: rec.spec.cpu_millis, memory_bytes: rec.spec.memory_bytes },
        node_selector: rec.spec.node_selector.iter().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect(),
        nodes: vec![Node { name: node.name.clone(), labels: node.labels.clone(), capacity: node.capacity, backends: placed }],
        owner_backends,
        now: crate::token::now_unix(),
    };
    match local.plugins.scheduler().place(&request) {
        Placement::Node(n) => Admission::Admitted { node: Some(n) },
        Placement::Anywhere(selector) => {
            // The plugin's labels and the backend's own node selector.
            let fits = selector.iter().chain(&request.node_selector).all(|s| node.labels.contains(s));
            if fits {
                Admission::Admitted { node: Some(node.name.clone()) }
            } else {
                Admission::Rejected { message: "this machine does not carry the requested node labels".into() }
            }
        }
        Placement::Reject(message) => Admission::Rejected { message },
    }
}
