//! Processes a backend started outside its process group.
//!
//! Stopping a backend signals its process group, which reaches every
//! process it started, except one that made itself a group or session of
//! its own (`setsid`, a daemon's double fork): that one would outlive its
//! backend, and Spawner. Each backend's processes inherit its
//! `SPAWNER_BACKEND_NAME` (names are never reused), so once the group has
//! been killed, what still carries the name outside the group is a stray,
//! and is killed as the group was. Finding them reads every process's
//! environment in `/proc`; backends that end together (Spawner stopping
//! with hundreds) share one such scan.
//!
//! Not found: a process that replaced its environment (some servers write
//! their title over it, as nginx and PostgreSQL do), or that made itself
//! unreadable to Spawner's user.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How long the strays are given to be gone after SIGKILL (the kernel
/// takes them down asynchronously).
const GONE_WITHIN: Duration = Duration::from_millis(500);

/// One ended backend's question: its marker (a `NAME=value` environment
/// entry), its process group (killed already: its members, still going,
/// are not strays), and who waits for the count.
struct Ask {
    marker: Vec<u8>,
    group: i32,
    answer: oneshot::Sender<usize>,
}

/// Questions not yet taken by a scan, and whether a scan is running.
static PENDING: Mutex<(Vec<Ask>, bool)> = Mutex::new((Vec::new(), false));

/// Kills every live process outside process `group` whose environment
/// holds `marker`, Spawner's own excepted, and waits briefly for them to
/// go. Returns how many there were.
pub(super) async fn kill_marked(marker: String, group: i32) -> usize {
    let (answer, answered) = oneshot::channel();
    let start = {
        let mut pending = PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.0.push(Ask { marker: marker.into_bytes(), group, answer });
        !std::mem::replace(&mut pending.1, true)
    };
    if start {
        // Blocking: it reads /proc and sleeps while the strays go.
        tokio::task::spawn_blocking(scan_while_asked);
    }
    answered.await.unwrap_or(0)
}

/// Answers what is pending, one `/proc` scan for all of it, until nothing
/// is.
fn scan_while_asked() {
    loop {
        let asks = {
            let mut pending = PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if pending.0.is_empty() {
                pending.1 = false;
                return;
            }
            std::mem::take(&mut pending.0)
        };
        let found = marked(&asks);
        for pid in found.iter().flatten() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let until = Instant::now() + GONE_WITHIN;
        while Instant::now() < until && found.iter().flatten().any(|p| stat(*p).is_some()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (ask, strays) in asks.into_iter().zip(found) {
            let _ = ask.answer.send(strays.len());
        }
    }
}

/// For each ask, the live (not zombie) processes outside its group whose
/// environment holds its marker.
fn marked(asks: &[Ask]) -> Vec<Vec<i32>> {
    let mut found = vec![Vec::new(); asks.len()];
    let by_marker: HashMap<&[u8], usize> = asks.iter().enumerate().map(|(i, a)| (&a.marker[..], i)).collect();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for pid in entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
        if pid == me {
            continue;
        }
        // Unreadable (another user's, or gone): not one of ours.
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let Some(i) = env.split(|b| *b == 0).find_map(|entry| by_marker.get(entry).copied()) else { continue };
        if stat(pid).is_some_and(|group| group != asks[i].group) {
            found[i].push(pid);
        }
    }
    found
}

/// The process group of `pid`, if it exists and is not a zombie.
fn stat(pid: i32) -> Option<i32> {
    super::group::running_group(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_that_left_its_group_is_found_by_its_marker_and_killed() {
        use std::os::unix::process::CommandExt;
        let marker = format!("SPAWNER_BACKEND_NAME=strays-test-{}", std::process::id());
        let (name, value) = marker.split_once('=').unwrap();
        // The backend's group, killed by then but for a member still going.
        let mut member = std::process::Command::new("sleep").arg("30").env(name, value).process_group(0).spawn().unwrap();
        let group = member.id() as i32;
        // A group of its own, as `setsid` gives.
        let mut stray = std::process::Command::new("sleep").arg("30").env(name, value).process_group(0).spawn().unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").env(name, "another-backend").spawn().unwrap();
        // Scanned once their environments are there (as a backend's are
        // long before it stops).
        for pid in [member.id(), stray.id(), other.id()] {
            crate::process::environment_of(pid);
        }
        // Reaped here as a test's child; in Spawner, by whoever adopted it.
        let reaper = std::thread::spawn(move || stray.wait());
        // Asked twice at once: one scan may answer both.
        let (first, second) = tokio::join!(kill_marked(marker.clone(), group), kill_marked("SPAWNER_BACKEND_NAME=none".into(), 0));
        assert_eq!((first, second), (1, 0));
        assert!(reaper.join().unwrap().is_ok(), "the stray was killed");
        assert!(member.try_wait().unwrap().is_none(), "the group's member is the group kill's, not counted");
        assert!(other.try_wait().unwrap().is_none(), "another backend's process is left alone");
        for mut p in [member, other] {
            p.kill().unwrap();
            p.wait().unwrap();
        }
    }
}
