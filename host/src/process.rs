//! The local runtime: backends as child processes.
//!
//! A backend's process gets a free loopback port in `PORT` (and its name,
//! key and URL prefix in `SPAWNER_BACKEND_NAME`, `SPAWNER_BACKEND_KEY`,
//! `SPAWNER_URL_PREFIX`), a cleared environment (only a few harmless
//! variables such as `PATH` and `HOME` are kept, so Spawner's own secrets
//! are not handed to it; it runs as Spawner's user, which is why Spawner
//! makes itself non-dumpable), and its own process group so that stopping it
//! reaches every process it started.
//!
//! It is *ready* when its port accepts a TCP connection, checked every
//! 250 µs at first (`FINE_PHASE`, while a fine-probe slot is free) and less
//! often as time passes (see `READY_POLL_FRACTION`), so a quick backend is
//! seen ready well within a millisecond after `listen()`. Stopping sends
//! SIGTERM to the group, then SIGKILL after the stop timeout. When the main
//! process exits, the rest of its group is killed too, so nothing is left
//! behind: at once when it exited on its own, and after the rest of the
//! stop timeout when it exited while being stopped (a wrapper script dies
//! on SIGTERM at once; the server it started may need that time to save
//! its state). A process it started that left the group (`setsid`, a
//! daemon) is killed then too ([`strays`]). If Spawner itself dies without
//! stopping its backends, the [`Reaper`] stops their groups.

mod capture;
mod group;
pub mod logs;
mod strays;

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

pub use logs::{LogBuffer, LogLine, Stream};

use crate::reaper::Reaper;

/// Environment variables a backend inherits from Spawner; everything else
/// is cleared.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Readiness poll interval: an eighth of the time since the process
/// started, between 1 ms and 25 ms. A backend that listens quickly is seen
/// within a millisecond; one that takes longer (or fifty starting at once on
/// a busy machine) is probed less often, so the probes do not steal the CPU
/// the backends need, and readiness is seen at most 12.5% late.
const READY_POLL_MIN: Duration = Duration::from_millis(1);
const READY_POLL_MAX: Duration = Duration::from_millis(25);
const READY_POLL_FRACTION: u32 = 8;

/// The first milliseconds of a start are probed from a blocking thread,
/// every `FINE_POLL` or an eighth of the elapsed time, whichever is longer
/// (250 µs until 2 ms, about 600 µs by 5 ms): tokio's timer has millisecond
/// resolution (a 1 ms sleep lasts 1–2 ms), which alone kept a backend that
/// listens within a millisecond or two waiting another millisecond to be
/// seen. Only while no more backends are starting than there are cores:
/// beyond that the CPU is the bottleneck, and probes would take it from
/// the backends.
const FINE_PHASE: Duration = Duration::from_millis(5);
const FINE_POLL: Duration = Duration::from_micros(250);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCommand {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (template, then request; later wins).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

/// Identity passed to the process.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Backend name.
    pub name: String,
    /// Backend key, if any.
    pub key: Option<String>,
    /// URL prefix the proxy serves it under (`/p/{name}/`).
    pub prefix: String,
}

/// The state of a started process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Running, not yet accepting connections.
    Starting,
    /// Accepting connections on its port.
    Ready,
    /// Exited; the code, or 128 + signal when killed by a signal.
    Exited(Option<i32>),
}

/// A started backend process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its process id (also its process group id).
    pub pid: i32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its captured output.
    pub logs: Arc<LogBuffer>,
    state: watch::Receiver<ProcessState>,
    /// True once its stdout and stderr have been read to the end.
    output_read: watch::Receiver<bool>,
    /// When a stop that was asked for ends in SIGKILL (set before SIGTERM
    /// goes out, so the exit watcher knows the group's time is not up).
    stop_by: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// The reaper watching its group, if any.
    reaper: Option<Reaper>,
}

impl Process {
    /// The current state.
    pub fn state(&self) -> ProcessState {
        *self.state.borrow()
    }

    /// A receiver that changes with the state.
    pub fn watch(&self) -> watch::Receiver<ProcessState> {
        self.state.clone()
    }

    /// Waits until its output has been read to the end, for at most
    /// [`OUTPUT_DRAIN`]: what an exited process wrote last is what its user
    /// reads next, and the pipes close only when every holder is gone (a
    /// descendant that left the group may keep them open).
    pub fn output_read(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut read = self.output_read.clone();
        async move {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, read.wait_for(|done| *done)).await;
        }
    }

    /// SIGTERM to the process group now; SIGKILL after `timeout` if the
    /// group has not ended by then (the process is `Exited` only once its
    /// group is gone).
    pub fn stop(&self, timeout: Duration) {
        if matches!(self.state(), ProcessState::Exited(_)) {
            return;
        }
        self.stop_by.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(tokio::time::Instant::now() + timeout);
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGTERM);
        let mut state = self.state.clone();
        tokio::spawn(async move {
            let exited = tokio::time::timeout(timeout, state.wait_for(|s| matches!(s, ProcessState::Exited(_)))).await;
            if exited.is_err() {
                tracing::warn!(pid = group.as_raw(), stop_timeout = ?timeout, "backend did not exit within the stop timeout after SIGTERM; sending SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
            }
        });
    }

    /// Kills the whole group at once (Spawner shutting down hard). Not once
    /// the process has exited: its group was killed then, and its id may
    /// since name another program's group.
    pub fn kill(&self) {
        if !matches!(self.state(), ProcessState::Exited(_)) {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            // Nothing of it can survive SIGKILL: the reaper need not wait
            // a stop timeout for it when Spawner exits next (as it does
            // after a second Ctrl-C, before the exit watcher runs).
            if let Some(r) = &self.reaper {
                r.forget(self.pid);
            }
        }
    }
}

/// Picks a free loopback port. Another program could take it before the
/// backend binds (backends of this Spawner cannot: see [`LEASED_PORTS`]);
/// the readiness probe would then connect to that program and mark the
/// backend ready, until its own bind fails and it exits with the error.
/// Another program would have to bind that very port within the
/// backend's start-up: rare, and not detected.
pub fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Ports given to backends whose process has not exited yet. A port is
/// free for the kernel from the moment [`free_port`] closes its probe
/// socket until the backend binds it, and the kernel may hand it out again
/// in between: to the next backend started at the same moment. Both would
/// then be told the same `PORT`; one binds it, and the other's readiness
/// probe would connect to the first one's listener, marking it ready and
/// routing its user to another user's backend until its own bind fails.
/// No two running backends of this Spawner share a port.
static LEASED_PORTS: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Default::default);

/// How many ports [`lease_port`] tries before giving up.
const LEASE_ATTEMPTS: usize = 16;

/// A port in [`LEASED_PORTS`], given back when dropped.
#[derive(Debug)]
struct PortLease(u16);

impl Drop for PortLease {
    fn drop(&mut self) {
        LEASED_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.0);
    }
}

/// A port from `pick` that no running backend has been given.
fn lease_port(mut pick: impl FnMut() -> std::io::Result<u16>) -> std::io::Result<PortLease> {
    for _ in 0..LEASE_ATTEMPTS {
        let port = pick()?;
        if LEASED_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(port) {
            return Ok(PortLease(port));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port that no running backend holds, after {LEASE_ATTEMPTS} tries"),
    ))
}

/// Starts `command` for a backend. Returns once the process exists;
/// readiness and exit arrive through [`Process::watch`]. The `reaper`, if
/// any, is told about the process group for as long as it lives.
pub fn start(command: &ProcessCommand, id: &Identity, reaper: Option<&Reaper>) -> std::io::Result<Process> {
    let lease = lease_port(free_port)?;
    let port = lease.0;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .env_clear()
        .envs(INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
        .envs(&command.env)
        .env("PORT", port.to_string())
        .env("SPAWNER_BACKEND_NAME", &id.name)
        .env("SPAWNER_BACKEND_KEY", id.key.as_deref().unwrap_or(""))
        .env("SPAWNER_URL_PREFIX", &id.prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Spawner's own exit path stops backends; this is the last resort
        // when the Child handle is dropped without that.
        .kill_on_drop(true);
    if let Some(dir) = &command.cwd {
        cmd.current_dir(dir);
    }
    // Name the file: "No such file or directory" alone does not say which
    // (the program, or the working directory).
    let mut child = cmd.spawn().map_err(|e| {
        let what = match &command.cwd {
            Some(dir) if !dir.is_dir() => format!("working directory {}", dir.display()),
            _ => command.program.clone(),
        };
        std::io::Error::new(e.kind(), format!("{what}: {e}"))
    })?;
    // A child not yet waited for always has an id; 0 would make the
    // signals below Spawner's own process group's.
    let pid = child.id().map(|p| p as i32).ok_or_else(|| std::io::Error::other("the started process has no id"))?;
    let reaper = reaper.cloned();
    if let Some(r) = &reaper {
        r.watch(pid);
    }
    let watching = reaper.clone();
    let logs = Arc::new(LogBuffer::default());
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let (read_tx, output_read) = watch::channel(false);
    let captured = logs.clone();
    tokio::spawn(async move {
        capture::capture(out, err, &captured).await;
        read_tx.send_replace(true);
    });
    let (tx, rx) = watch::channel(ProcessState::Starting);
    let tx = Arc::new(tx);

    // Exit watcher: records the code, then clears out the rest of the group:
    // at once, unless a stop is under way, whose SIGTERM the rest of the
    // group may still be acting on.
    let exit_tx = tx.clone();
    let stop_by = Arc::new(Mutex::new(None));
    let stopping = stop_by.clone();
    let name = id.name.clone();
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status.code().or_else(|| status.signal().map(|s| 128 + s))
            }
            Err(_) => None,
        };
        let deadline = *stopping.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(deadline) = deadline {
            group::wait_empty(pid, deadline).await;
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let strays = strays::kill_marked(format!("SPAWNER_BACKEND_NAME={name}"), pid).await;
        if strays > 0 {
            tracing::warn!(
                backend = %name, processes = strays,
                "the backend had started processes outside its process group (setsid, a daemon); they were killed with it"
            );
        }
        if let Some(r) = reaper {
            r.forget(pid);
        }
        // The group is gone (or going): its port may serve the next backend.
        drop(lease);
        exit_tx.send_replace(ProcessState::Exited(code));
    });

    tokio::spawn(probe_until_ready(addr, tx));

    Ok(Process { pid, addr, logs, state: rx, output_read, stop_by, reaper: watching })
}

/// How long [`Process::output_read`] waits for an exited process's output.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Marks the process ready when its port accepts a connection (see the
/// module docs and `FINE_PHASE`). Stops when the process exits first.
async fn probe_until_ready(addr: SocketAddr, ready_tx: Arc<watch::Sender<ProcessState>>) {
    let started = std::time::Instant::now();
    let mut ready = false;
    if let Some(slot) = FineProber::acquire() {
        let state = ready_tx.subscribe();
        ready = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            while started.elapsed() < FINE_PHASE && !matches!(*state.borrow(), ProcessState::Exited(_)) {
                if std::net::TcpStream::connect_timeout(&addr, READY_POLL_MAX).is_ok() {
                    return true;
                }
                std::thread::sleep((started.elapsed() / READY_POLL_FRACTION).max(FINE_POLL));
            }
            false
        })
        .await
        .unwrap_or(false);
    }
    loop {
        if matches!(*ready_tx.borrow(), ProcessState::Exited(_)) {
            return;
        }
        if ready || tokio::net::TcpStream::connect(addr).await.is_ok() {
            ready_tx.send_if_modified(|s| {
                let starting = *s == ProcessState::Starting;
                if starting {
                    *s = ProcessState::Ready;
                }
                starting
            });
            return;
        }
        tokio::time::sleep((started.elapsed() / READY_POLL_FRACTION).clamp(READY_POLL_MIN, READY_POLL_MAX)).await;
    }
}

/// A slot for fine-grained probing; at most one per core at a time.
struct FineProber;

static FINE_PROBERS: AtomicUsize = AtomicUsize::new(0);

impl FineProber {
    fn acquire() -> Option<FineProber> {
        // Read once: on Linux it consults cgroup files.
        static CORES: LazyLock<usize> = LazyLock::new(|| std::thread::available_parallelism().map_or(1, usize::from));
        let cores = *CORES;
        FINE_PROBERS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cores).then_some(n + 1)).ok().map(|_| FineProber)
    }
}

impl Drop for FineProber {
    fn drop(&mut self) {
        FINE_PROBERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The environment of process `pid`, a child just spawned, once the
/// kernel has written it: `spawn` returns once the child's exec has taken
/// its memory, before the new program's environment is set up, and in
/// that window `/proc/{pid}/environ` reads empty (two reads in three,
/// right after `posix_spawn`, on the reference machine). Tests that read
/// it at once failed on loaded machines (CI, 2026-12-02).
#[cfg(test)]
pub(crate) fn environment_of(pid: u32) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if !environ.is_empty() {
            return environ;
        }
        assert!(std::time::Instant::now() < deadline, "process {pid} never showed an environment");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_a_running_backend_is_not_given_again() {
        // Ports 1 and 2 are never ephemeral, so the backends other tests in
        // this binary start cannot be holding them.
        let mut picks = [1, 1, 1, 2].into_iter();
        let first = lease_port(|| Ok(picks.next().unwrap())).unwrap();
        let second = lease_port(|| Ok(picks.next().unwrap())).unwrap();
        assert_eq!((first.0, second.0), (1, 2), "the kernel's second offer of port 1 was skipped");
        drop(first);
        assert_eq!(lease_port(|| Ok(1)).unwrap().0, 1, "an exited backend's port is free again");
        let err = lease_port(|| Ok(2)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("after 16 tries"), "{err}");
    }

    #[test]
    fn fine_probing_is_limited_to_one_start_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let slots: Vec<FineProber> = (0..cores).map(|_| FineProber::acquire().expect("a slot per core")).collect();
        assert!(FineProber::acquire().is_none(), "more starts than cores probe coarsely");
        drop(slots);
        assert!(FineProber::acquire().is_some(), "slots come back when probing ends");
    }
}
