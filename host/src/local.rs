//! The local runtime (`spawner dev`): backends as child processes, state in
//! memory.
//!
//! - [`Local`] keeps the records and implements [`Control`] (for the API),
//!   [`Resolve`](crate::proxy::Resolve) (for the proxy) and
//!   [`SweepSource`](crate::sweeper::SweepSource) (for the sweeper);
//! - `record`: one backend's state: spec, status history, activity, process;
//! - `driver`: one task per backend that runs [`lifecycle::step`] and
//!   executes its actions with [`crate::process`];
//! - `node`: this machine as the scheduler's one node.

mod driver;
mod node;
mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use jiff::Timestamp;

use crate::activity::Activity;
use crate::backends::{
    BackendSpec, BackendView, Control, ControlError, Created, Filter, StatusFeed, TERMINATE_ANSWER_WAIT, backend_url, new_name,
    validate_spec,
};
use crate::config::{Config, Template};
use crate::lifecycle::{self, Phase, Reason, Status, TerminationRequest};
use crate::metrics::{Metrics, PhaseLabels};
use crate::plugins::Plugins;
use crate::plugins::credentials::Reached;
use crate::process::LogLine;
use crate::proxy::{Resolve, Target};
use crate::reaper::Reaper;
use crate::sweeper::{Candidate, SweepSource};
use record::Record;

/// Why every backend ends when Spawner stops.
const SHUTTING_DOWN: &str = "spawner is shutting down";

/// How often the reaper's process is checked (see [`Reaper::check`]).
const REAPER_CHECK: Duration = Duration::from_secs(2);

/// Settings of the local runtime, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Templates by name.
    pub templates: HashMap<String, Template>,
    /// Base URL for backend URLs.
    pub public_url: String,
    /// Host routing domain, if enabled.
    pub host_domain: Option<String>,
    /// Default idle grace period, seconds.
    pub default_grace_seconds: u64,
    /// Startup timeout.
    pub startup_timeout: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_timeout: Duration,
    /// How long ended backends stay listed.
    pub retention: Duration,
    /// How many ended backends stay listed at most.
    pub max_ended: usize,
    /// Live backends at most.
    pub max_backends: usize,
    /// The config file the templates come from, if any.
    pub config_file: Option<std::path::PathBuf>,
}

impl LocalConfig {
    /// From the configuration file and flags.
    pub fn from_config(c: &Config) -> Self {
        LocalConfig {
            templates: c.templates.clone().into_iter().collect(),
            public_url: c.public_url(),
            host_domain: c.host_domain.clone(),
            default_grace_seconds: c.backends.grace_period_seconds,
            startup_timeout: Duration::from_secs(c.backends.startup_timeout_seconds),
            stop_timeout: Duration::from_secs(c.backends.stop_timeout_seconds),
            retention: Duration::from_secs(c.backends.retention_seconds),
            max_ended: c.backends.max_ended,
            max_backends: c.backends.max_backends,
            config_file: c.file.clone(),
        }
    }

    /// How to add template `name`, for the unknown-template error: to the
    /// file in use, then restart (templates are read at start), or, with
    /// no file, start with one.
    fn how_to_add(&self, name: &str) -> String {
        match &self.config_file {
            Some(file) => format!(
                "add [templates.{name:?}] with the command that runs it to {}, then restart spawner: templates are read at start",
                file.display()
            ),
            None => format!(
                "no config file was given: write [templates.{name:?}] with the command that runs it to a file and start spawner dev --config FILE"
            ),
        }
    }
}

/// The local runtime.
pub struct Local {
    config: LocalConfig,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    records: RwLock<HashMap<String, Arc<Record>>>,
    /// Key → name of the live backend holding it. Its mutex is also the
    /// lock that makes get-or-create by key atomic.
    keys: Mutex<HashMap<String, String>>,
    /// Held while one scheduling decision is taken, so that creates at the
    /// same moment each see the others the scheduler admitted (a quota per
    /// owner, the machine's capacity).
    deciding: Mutex<()>,
    shutting_down: AtomicBool,
    /// Stops the backends if this process dies without doing it (see
    /// [`crate::reaper`]); `None` if `sh` could not be started.
    reaper: Option<Reaper>,
    /// Drivers need an owning handle; `Local` only exists inside an Arc.
    me: Weak<Local>,
}

impl Local {
    /// A runtime; call [`Local::start_gc`] to have ended backends forgotten.
    pub fn new(config: LocalConfig, plugins: Arc<Plugins>, metrics: Arc<Metrics>) -> Arc<Self> {
        let reaper = Reaper::start(config.stop_timeout)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot start the backend reaper (sh); backends may outlive a crash of Spawner"))
            .ok();
        Arc::new_cyclic(|me| Local {
            reaper,
            config,
            plugins,
            metrics,
            records: RwLock::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            deciding: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// Default idle grace period for create requests that do not give one.
    pub fn default_grace_seconds(&self) -> u64 {
        self.config.default_grace_seconds
    }

    /// Forgets ended backends older than the retention, periodically, and
    /// replaces the reaper if someone killed it.
    pub fn start_gc(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = (self.config.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut collected = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(REAPER_CHECK.min(every)).await;
                let Some(local) = weak.upgrade() else { return };
                // A reaper someone killed is replaced within this time.
                if let Some(reaper) = &local.reaper {
                    reaper.check();
                }
                if collected.elapsed() >= every {
                    collected = tokio::time::Instant::now();
                    local.collect_garbage();
                }
            }
        })
    }

    /// Forgets ended backends past the retention, and the oldest beyond
    /// `max-ended`.
    fn collect_garbage(&self) {
        let cutoff = Timestamp::now() - self.config.retention;
        // Found under the read lock, so that the proxy's lookups (which
        // take it too) wait only when something is to be removed.
        let forget = {
            let records = self.records.read().expect("records lock");
            // Only ended backends whose process is gone: one failed (a
            // startup timeout) may still be stopping, and must stay where a
            // shutdown finds it.
            let gone = |r: &Record| {
                r.process
                    .lock()
                    .expect("process lock")
                    .as_ref()
                    .is_none_or(|p| matches!(p.state(), crate::process::ProcessState::Exited(_)))
            };
            let mut ended: Vec<(Timestamp, String)> = records
                .values()
                .filter(|r| r.phase().is_terminal() && gone(r))
                .map(|r| {
                    let s = r.status();
                    (s.finished_at.unwrap_or(s.created_at), r.name.clone())
                })
                .collect();
            let beyond = ended.len().saturating_sub(self.config.max_ended);
            if beyond > 0 {
                ended.sort();
            }
            ended
                .into_iter()
                .enumerate()
                .filter(|(i, (finished, _))| *i < beyond || *finished < cutoff)
                .map(|(_, (_, name))| name)
                .collect::<Vec<_>>()
        };
        if forget.is_empty() {
            return;
        }
        let mut records = self.records.write().expect("records lock");
        for name in forget {
            // Ended backends stay ended: still one to forget.
            if let Some(r) = records.remove(&name) {
                self.metrics.backends.phase.get_or_create(&PhaseLabels { phase: r.status().phase.as_str() }).dec();
            }
        }
    }

    fn record(&self, name: &str) -> Option<Arc<Record>> {
        self.records.read().expect("records lock").get(name).cloned()
    }

    /// The URL a browser opens for backend `name` (`browserUrl` without
    /// its token).
    pub(crate) fn url(&self, name: &str) -> String {
        backend_url(&self.config.public_url, self.config.host_domain.as_deref(), name)
    }

    fn view(&self, r: &Record) -> BackendView {
        let process = r.process.lock().expect("process lock");
        let status = r.status();
        // An ended backend's port may soon be another's (as on
        // Kubernetes, where its Pod's IP may be).
        let address = process.as_ref().filter(|_| !status.phase.is_terminal()).map(|p| p.addr.to_string());
        BackendView {
            name: r.name.clone(),
            template: r.spec.template.clone(),
            key: r.spec.key.clone(),
            owner: r.spec.owner.clone(),
            labels: r.spec.labels.clone(),
            grace_period_seconds: r.spec.grace_period_seconds,
            lifetime_limit_seconds: r.spec.lifetime_limit_seconds,
            url: self.url(&r.name),
            status,
            address,
            open_connections: r.activity.open_connections(),
            // Names are never reused here.
            uid: None,
        }
    }

    /// Called by the driver for every status change.
    fn transition(&self, r: &Record, from: &Status, to: Status) {
        if to.phase == Phase::Terminating || to.phase.is_terminal() {
            // Its WebSockets close saying why (the first reason stays).
            r.activity.end(&crate::lifecycle::ending_note(to.reason, to.message.as_deref()));
        }
        let gauge = &self.metrics.backends.phase;
        if from.phase != to.phase {
            gauge.get_or_create(&PhaseLabels { phase: from.phase.as_str() }).dec();
            gauge.get_or_create(&PhaseLabels { phase: to.phase.as_str() }).inc();
        }
        if to.phase == Phase::Ready
            && from.phase != Phase::Ready
            && let Some(ready) = to.ready_at
        {
            let secs = ready.duration_since(to.created_at).as_secs_f64();
            self.metrics.backends.spawn_to_ready_seconds.observe(secs.max(0.0));
        }
        let ended = to.phase.is_terminal() && !from.phase.is_terminal();
        if ended {
            self.metrics.backends.count_end(&to);
        }
        if to.phase.is_terminal()
            && let Some(key) = &r.spec.key
        {
            let mut keys = self.keys.lock().expect("keys lock");
            if keys.get(key) == Some(&r.name) {
                keys.remove(key);
            }
        }
        // (`None` fields are left out of the line.)
        let reason = to.reason.map(Reason::as_str);
        let detail = to.message.as_deref().and_then(|m| m.split(crate::lifecycle::LAST_OUTPUT).next());
        let exit_code = to.exit_code;
        if from.phase == to.phase {
            // Within a phase: the exit of a process stopped after it ended
            // (a startup timeout), or nothing an operator acts on.
            if from.exit_code != to.exit_code {
                tracing::info!(backend = %r.name, phase = to.phase.as_str(), exit_code, "backend process exited");
            } else {
                tracing::debug!(backend = %r.name, phase = to.phase.as_str(), reason, detail, "backend status updated");
            }
        } else if to.phase == Phase::Failed {
            // A failure is worth a warning: alerts on warnings catch
            // crashing templates. Its output is not logged (it may hold
            // secrets); the API serves it.
            // Rejected before it started: it wrote nothing.
            let started = to.reason != Some(Reason::Rejected);
            let logs = started.then(|| format!("GET /api/v1/backends/{}/logs", r.name));
            tracing::warn!(backend = %r.name, from = from.phase.as_str(), to = to.phase.as_str(), reason, detail, exit_code, output = logs, "backend status");
        } else {
            tracing::info!(backend = %r.name, from = from.phase.as_str(), to = to.phase.as_str(), reason, detail, exit_code, "backend status");
        }
        r.set_status(to);
        // At once, not at the next periodic run: `max-ended` bounds what
        // creates and ends in a loop keep.
        if ended {
            self.collect_garbage();
        }
    }

    /// Refuses creates from now on ([`ControlError::ShuttingDown`]): the
    /// first step of a shutdown. Every backend's WebSockets are told their
    /// session is over (the proxy closes them with 1000 and
    /// `backend ending (requested): spawner is shutting down`): here the
    /// backends stop with Spawner, so nothing would answer the reconnect
    /// that the proxy's own 1001 ("proxy stopping; reconnect") invites.
    pub fn refuse_creates(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let note = lifecycle::ending_note(Some(Reason::Requested), Some(SHUTTING_DOWN));
        for r in self.records.read().expect("records lock").values() {
            r.activity.end(&note);
        }
    }

    /// Terminates every backend (reason `requested`) and waits for them to
    /// exit, up to the stop timeout plus a margin; then kills what is left.
    pub async fn shutdown(&self) {
        self.refuse_creates();
        let records: Vec<Arc<Record>> = self.records.read().expect("records lock").values().cloned().collect();
        for r in &records {
            r.request_termination(TerminationRequest { reason: Reason::Requested, message: SHUTTING_DOWN.into() });
        }
        let all_done = async {
            for r in &records {
                r.wait_finished().await;
            }
        };
        if tokio::time::timeout(self.config.stop_timeout + Duration::from_secs(2), all_done).await.is_err() {
            tracing::warn!("backends still running after the stop timeout; killing them");
        }
        kill(&records);
    }

    /// SIGKILL to every backend's process group, at once (a second Ctrl-C
    /// that will not wait for a shutdown).
    pub fn kill_all(&self) {
        kill(&self.records.read().expect("records lock").values().cloned().collect::<Vec<_>>());
    }
}

/// SIGKILL to the process groups of `records`' backends.
fn kill(records: &[Arc<Record>]) {
    for r in records {
        if let Some(p) = r.process.lock().expect("process lock").as_ref() {
            p.kill();
        }
    }
}

impl Control for Local {
    async fn create(&self, spec: BackendSpec) -> Result<Created, ControlError> {
        self.create_now(spec)
    }

    async fn get(&self, name: &str) -> Result<Option<BackendView>, ControlError> {
        Ok(self.record(name).map(|r| self.view(&r)))
    }

    async fn list(&self, filter: &Filter) -> Vec<BackendView> {
        let records: Vec<Arc<Record>> = self.records.read().expect("records lock").values().cloned().collect();
        let mut views: Vec<BackendView> = records.iter().map(|r| self.view(r)).filter(|v| filter.matches(v)).collect();
        views.sort_by(|a, b| b.status.created_at.cmp(&a.status.created_at).then(a.name.cmp(&b.name)));
        views
    }

    async fn terminate(&self, name: &str) -> Result<BackendView, ControlError> {
        let r = self.record(name).ok_or_else(|| ControlError::NotFound(name.into()))?;
        let mut live = r.changes();
        let before = live.borrow().status.phase;
        r.request_termination(TerminationRequest { reason: Reason::Requested, message: "terminated through the API".into() });
        // Answer with the status the request caused (terminating, or
        // terminated for a backend that had not started), not the one
        // before; a backend already on its way out answers at once.
        if before != Phase::Terminating && !before.is_terminal() {
            let stopping = |e: &crate::backends::StatusEvent| e.status.phase == Phase::Terminating || e.status.phase.is_terminal();
            let _ = tokio::time::timeout(TERMINATE_ANSWER_WAIT, live.wait_for(stopping)).await;
        }
        Ok(self.view(&r))
    }

    async fn subscribe(&self, name: &str) -> Result<Option<StatusFeed>, ControlError> {
        Ok(self.record(name).map(|r| r.feed()))
    }

    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<LogLine>, ControlError> {
        let r = self.record(name).ok_or_else(|| ControlError::NotFound(name.into()))?;
        let process = r.process.lock().expect("process lock");
        Ok(process.as_ref().map(|p| p.logs.lines(tail)).unwrap_or_default())
    }

    fn templates(&self) -> Vec<String> {
        let mut t: Vec<String> = self.config.templates.keys().cloned().collect();
        t.sort();
        t
    }
}

impl Local {
    fn create_now(&self, spec: BackendSpec) -> Result<Created, ControlError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControlError::ShuttingDown);
        }
        validate_spec(&spec)?;
        let Some(template) = self.config.templates.get(&spec.template).cloned() else {
            let how = self.config.how_to_add(&spec.template);
            return Err(ControlError::UnknownTemplate(spec.template.clone(), self.templates().join(", "), how));
        };
        let mut keys = self.keys.lock().expect("keys lock");
        // A backend that is stopping no longer holds its key: the caller
        // wants a session, and that one is ending (say, swept as the user
        // came back); a new one starts beside it.
        if let Some(key) = &spec.key
            && let Some(existing) = keys.get(key).and_then(|n| self.record(n))
            && !existing.phase().is_terminal()
            && existing.phase() != Phase::Terminating
        {
            // Someone is about to use it: a fresh grace period to reach it.
            // (A backend quiet for nearly its grace period was otherwise
            // swept as the user it was just handed to arrived.)
            existing.activity.touch();
            let backend = self.view(&existing);
            let warnings = crate::backends::returned_as_it_is(&spec, &backend);
            return Ok(Created { backend, created: false, warnings });
        }
        let live = self.records.read().expect("records lock").values().filter(|r| !r.phase().is_terminal()).count();
        if live >= self.config.max_backends {
            return Err(ControlError::Capacity(format!(
                "{live} backend{} running, the configured maximum (backends.max-backends); terminate some or raise it",
                if live == 1 { " is" } else { "s are" }
            )));
        }
        let name = new_name(&spec.template);
        let record = Arc::new(Record::new(name.clone(), spec, template, Activity::new()));
        self.metrics.backends.phase.get_or_create(&PhaseLabels { phase: Phase::Pending.as_str() }).inc();
        self.records.write().expect("records lock").insert(name.clone(), record.clone());
        if let Some(key) = &record.spec.key {
            keys.insert(key.clone(), name);
        }
        drop(keys);
        let view = self.view(&record);
        // Ties the name to whom and what it is for, where on-call looks.
        tracing::info!(
            backend = %view.name, template = %record.spec.template, owner = record.spec.owner.as_deref(), key = record.spec.key.as_deref(),
            "backend created"
        );
        let mut warnings = Vec::new();
        if let Some(port) = record.spec.port {
            // Kept for a spec that runs on Kubernetes too; said (for a
            // backend started, not one found by its key or refused), since
            // an app written to listen on it would time out here.
            const PORT_WARNING: &str = "port is for Kubernetes; locally the backend must listen on the port in its PORT variable";
            tracing::warn!(backend = %view.name, port, "{PORT_WARNING}");
            warnings.push(format!("{PORT_WARNING} (port {port} is not used)"));
        }
        tokio::spawn(driver::drive(self.self_arc(), record));
        Ok(Created { backend: view, created: true, warnings })
    }

    fn self_arc(&self) -> Arc<Local> {
        self.me.upgrade().expect("Local is alive while its methods run")
    }
}

impl Resolve for Local {
    fn resolve(&self, name: &str) -> Option<Target> {
        let r = self.record(name)?;
        let phase = r.phase();
        let addr = if phase == Phase::Ready { r.process.lock().expect("process lock").as_ref().map(|p| p.addr) } else { None };
        // Names are never reused here (a key's next backend gets a new one).
        Some(Target {
            backend: r.info.clone(),
            phase,
            addr,
            activity: r.activity.clone(),
            reached: Reached { created_at: r.created_at, uid: None },
        })
    }
}

impl SweepSource for Local {
    fn ready(&self) -> Vec<Candidate> {
        let records: Vec<Arc<Record>> = self.records.read().expect("records lock").values().cloned().collect();
        records
            .into_iter()
            .filter(|r| r.phase() == Phase::Ready)
            .map(|r| (r.status(), r))
            .map(|(status, r)| Candidate {
                backend: (*r.info).clone(),
                created_at: status.created_at,
                ready_at: status.ready_at,
                grace_period_seconds: r.spec.grace_period_seconds,
                lifetime_limit_seconds: r.spec.lifetime_limit_seconds,
                activity: r.activity.clone(),
                // Local names are never reused.
                uid: None,
            })
            .collect()
    }

    fn terminate(&self, c: &Candidate, request: TerminationRequest) {
        if let Some(r) = self.record(&c.backend.name) {
            r.request_termination(request);
        }
    }
}

/// Lifecycle timing for the driver.
fn timeouts(c: &LocalConfig) -> lifecycle::Timeouts {
    lifecycle::Timeouts { startup: c.startup_timeout }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_template_says_where_to_add_it() {
        let mut config = LocalConfig::from_config(&Config::default());
        let none = config.how_to_add("py");
        assert!(none.starts_with("no config file was given: ") && none.ends_with("start spawner dev --config FILE"), "{none}");
        config.config_file = Some("/srv/app/spawner.toml".into());
        let file = config.how_to_add("py");
        assert!(file.contains(r#"[templates."py"]"#) && file.contains("to /srv/app/spawner.toml, then restart spawner"), "{file}");
    }
}
