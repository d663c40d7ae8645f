//! Processes a backend started outside its process group.
//!
//! Stopping a backend signals its process group, which reaches every
//! process it started, except one that made itself a group or session of
//! its own (`setsid`, a daemon's double fork): that one would outlive its
//! backend, and Spawner. Each backend's processes inherit its
//! `SPAWNER_BACKEND_NAME` (names are never reused), so once the group is
//! gone, what still carries the name is a stray, and is killed as the group
//! was. `/proc` is read for it: each process's environment, so the cost
//! grows with the machine's process count, once per backend that ends.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the strays are given to be gone after SIGKILL (the kernel
/// takes them down asynchronously).
const GONE_WITHIN: Duration = Duration::from_millis(500);

/// Kills every live process whose environment holds `marker` (a
/// `NAME=value` entry), Spawner's own excepted, and waits briefly for them
/// to go. Returns how many there were.
pub(super) fn kill_marked(marker: &str) -> usize {
    let strays = marked(marker);
    for pid in &strays {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let until = Instant::now() + GONE_WITHIN;
    while Instant::now() < until && strays.iter().any(|p| running(*p)) {
        std::thread::sleep(Duration::from_millis(5));
    }
    strays.len()
}

/// Live (not zombie) processes whose environment holds `marker`.
fn marked(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            // Unreadable (another user's, or gone): not one of ours.
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == marker.as_bytes()))
        })
        .filter(|pid| running(*pid))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_ascii_whitespace().next()).is_some_and(|s| !matches!(s, "Z" | "X" | "x"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_left_its_group_is_found_by_its_marker_and_killed() {
        use std::os::unix::process::CommandExt;
        let marker = format!("SPAWNER_BACKEND_NAME=strays-test-{}", std::process::id());
        let (name, value) = marker.split_once('=').unwrap();
        // A session of its own, as `setsid` gives.
        let mut child = std::process::Command::new("sleep").arg("30").env(name, value).process_group(0).spawn().unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").env(name, "another-backend").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(marked(&marker), [pid]);
        // Reaped here as a test's child; in Spawner, by whoever adopted it.
        let reaper = std::thread::spawn(move || child.wait());
        assert_eq!(kill_marked(&marker), 1);
        assert!(reaper.join().unwrap().is_ok());
        assert!(marked(&marker).is_empty(), "gone");
        assert!(other.try_wait().unwrap().is_none(), "another backend's process is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
