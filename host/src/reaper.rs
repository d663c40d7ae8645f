//! The last line of defence against orphaned backends.
//!
//! Spawner stops its backends itself when it shuts down (SIGINT, SIGTERM,
//! or the API). It cannot when it is killed with SIGKILL, crashes, or is
//! OOM-killed: the backends, each in its own process group, would run on
//! with nobody to stop them. Linux's `PR_SET_PDEATHSIG` would need `unsafe`
//! code between fork and exec, which the host crate forbids.
//!
//! Instead, a small `sh` process (the reaper), in its own process group so
//! that a terminal's Ctrl-C does not reach it, reads the process groups of
//! live backends from a pipe: `+PGID` when one starts, `-PGID` when it
//! exits. Only Spawner holds the pipe's write end, so when Spawner's process
//! ends for any reason the kernel closes it, the reaper reads end-of-file,
//! sends SIGTERM to every group still listed, waits the grace period and
//! sends SIGKILL. After a clean shutdown the list is empty and the reaper
//! simply exits.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The reaper's program: a list of groups kept as " a b c ", updated per
/// line, acted on at end of input. POSIX sh (dash) compatible.
const SCRIPT: &str = r#"grace="$1"; g=" "
while read -r line; do
  pid="${line#?}"
  case "$line" in
    +*) g="$g$pid " ;;
    -*) case "$g" in *" $pid "*) g="${g%% $pid *} ${g#* $pid }" ;; esac ;;
  esac
done
set -- $g
[ $# -gt 0 ] || exit 0
for p in "$@"; do kill -TERM "-$p" 2>/dev/null; done
sleep "$grace"
for p in "$@"; do kill -KILL "-$p" 2>/dev/null; done"#;

/// A handle on the reaper process; clones share it.
#[derive(Clone, Debug)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once the reaper died and none could be started again.
    pipe: Option<ChildStdin>,
    child: Child,
    grace: Duration,
    /// The groups it was told of and not told to forget: what a new reaper
    /// is told, should this one die.
    groups: BTreeSet<i32>,
}

/// Starts a reaper process.
fn spawn(grace: Duration) -> std::io::Result<(Child, ChildStdin)> {
    // Its environment is readable by every process of this user (the
    // backends too): only PATH, none of Spawner's secrets.
    let mut child = Command::new("sh")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .arg("-c")
        .arg(SCRIPT)
        .arg("spawner-reaper")
        .arg(grace.as_secs().max(1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("the reaper's stdin was not piped"))?;
    Ok((child, pipe))
}

impl Reaper {
    /// Starts the reaper. `grace` is how long backends get between SIGTERM
    /// and SIGKILL once Spawner is gone.
    pub fn start(grace: Duration) -> std::io::Result<Reaper> {
        let (child, pipe) = spawn(grace)?;
        Ok(Reaper { inner: Arc::new(Mutex::new(Inner { pipe: Some(pipe), child, grace, groups: BTreeSet::new() })) })
    }

    /// The reaper's process id (tests watch it).
    pub fn pid(&self) -> u32 {
        self.inner.lock().expect("reaper lock").child.id()
    }

    /// A backend's process group started.
    pub fn watch(&self, group: i32) {
        let mut inner = self.inner.lock().expect("reaper lock");
        inner.groups.insert(group);
        inner.tell('+', group);
    }

    /// A backend's process group is gone: forget it, so that its id, once
    /// reused by an unrelated process, is never signalled.
    pub fn forget(&self, group: i32) {
        let mut inner = self.inner.lock().expect("reaper lock");
        inner.groups.remove(&group);
        inner.tell('-', group);
    }

    /// Starts a new reaper if this one is gone (killed by someone, the
    /// OOM killer): until then, a crash of Spawner would leave every
    /// backend running. Called periodically; cheap (one `waitpid`).
    pub fn check(&self) {
        let mut inner = self.inner.lock().expect("reaper lock");
        // No pipe: a start failed before (out of processes?); try again.
        if inner.pipe.is_none() || matches!(inner.child.try_wait(), Ok(Some(_))) {
            inner.revive();
        }
    }
}

impl Inner {
    fn tell(&mut self, op: char, group: i32) {
        let Some(pipe) = self.pipe.as_mut() else { return };
        // One short line to a pipe the reaper drains: does not block in
        // practice (the pipe holds 64 KiB).
        if writeln!(pipe, "{op}{group}").is_err() {
            self.revive();
        }
    }

    /// Replaces a reaper that is gone with a new one, told every group.
    fn revive(&mut self) {
        let old = self.child.id();
        // Gone, or unable to read: either way it is of no more use.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = spawn(self.grace).and_then(|(child, mut pipe)| {
            let mut lines = String::new();
            for group in &self.groups {
                lines.push_str(&format!("+{group}\n"));
            }
            pipe.write_all(lines.as_bytes())?;
            Ok((child, pipe))
        });
        match started {
            Ok((child, pipe)) => {
                tracing::warn!(
                    old,
                    new = child.id(),
                    backends = self.groups.len(),
                    "the backend reaper was gone; a new one watches the backends"
                );
                (self.child, self.pipe) = (child, Some(pipe));
            }
            // Said once; [`Reaper::check`] goes on trying.
            Err(e) if self.pipe.take().is_some() => {
                tracing::warn!(error = %e, "the backend reaper is gone and cannot be started again for now; backends may outlive a crash of Spawner");
            }
            Err(e) => tracing::debug!(error = %e, "the backend reaper still cannot be started"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the pipe lets the reaper finish; reap it so no zombie stays.
        self.pipe = None;
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn alive(pid: u32) -> bool {
        // A zombie still has /proc/PID; count it as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
    }

    fn sleeper() -> Child {
        Command::new("sleep").arg("60").process_group(0).spawn().unwrap()
    }

    fn wait_gone(child: &mut Child) -> bool {
        for _ in 0..500 {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_reaper_gets_none_of_spawners_environment() {
        let reaper = Reaper::start(Duration::from_secs(1)).unwrap();
        let environ = crate::process::environment_of(reaper.pid());
        let names: Vec<String> = environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).split('=').next().unwrap().to_string())
            .collect();
        assert_eq!(names, ["PATH"]);
    }

    #[test]
    fn kills_listed_groups_when_the_pipe_closes_and_spares_forgotten_ones() {
        let (mut listed, mut forgotten) = (sleeper(), sleeper());
        let reaper = Reaper::start(Duration::from_secs(1)).unwrap();
        reaper.watch(listed.id() as i32);
        reaper.watch(forgotten.id() as i32);
        reaper.forget(forgotten.id() as i32);
        drop(reaper);
        assert!(wait_gone(&mut listed), "a listed group is terminated");
        assert!(forgotten.try_wait().unwrap().is_none() && alive(forgotten.id()), "a forgotten group is left alone");
        forgotten.kill().unwrap();
        forgotten.wait().unwrap();
    }

    #[test]
    fn a_reaper_that_dies_is_replaced_and_told_every_group() {
        let (mut first, mut second) = (sleeper(), sleeper());
        let reaper = Reaper::start(Duration::from_secs(1)).unwrap();
        reaper.watch(first.id() as i32);
        let killed = reaper.pid();
        Command::new("kill").args(["-KILL", &killed.to_string()]).status().unwrap();
        for _ in 0..500 {
            if !alive(killed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reaper.check();
        assert_ne!(reaper.pid(), killed, "a new reaper");
        assert!(alive(reaper.pid()));
        // Killed again, it is found at the next change too.
        let killed = reaper.pid();
        Command::new("kill").args(["-KILL", &killed.to_string()]).status().unwrap();
        while alive(killed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        reaper.watch(second.id() as i32);
        assert_ne!(reaper.pid(), killed);
        // Spawner's end: the new reaper stops both groups.
        drop(reaper);
        assert!(wait_gone(&mut first), "the group watched before the reaper died is terminated");
        assert!(wait_gone(&mut second), "and the one watched since");
    }
}
