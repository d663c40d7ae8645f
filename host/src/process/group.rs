//! Whether a process group still has running members.
//!
//! After a backend's main process exits while being stopped, the rest of
//! its group (a wrapper script's server, a worker saving its state on
//! SIGTERM) gets what is left of the stop timeout before SIGKILL. Members
//! whose parent is gone are reparented to init, which does not always reap
//! them (a container's or a sandbox's first process may not), so a zombie
//! must not count: `kill(-group, 0)` alone would see one as alive until the
//! stop timeout, so `/proc` is read for each member's state.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;

/// How often a stopping group is looked at: every 20 ms at first, then
/// less often (each look reads every process's `/proc/PID/stat`, and many
/// backends may be stopping at once), up to every half second.
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(500);

/// Waits until no process of `group` is running, or until `deadline`.
pub(super) async fn wait_empty(group: i32, deadline: tokio::time::Instant) {
    let mut poll = FIRST_POLL;
    loop {
        let running = tokio::task::spawn_blocking(move || has_running_members(group)).await.unwrap_or(false);
        if !running || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + poll)).await;
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// True when a process of `group` exists and is not a zombie.
pub(super) fn has_running_members(group: i32) -> bool {
    if killpg(Pid::from_raw(group), None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // No /proc to tell zombies apart: the signal said someone is there.
        return true;
    };
    entries.filter_map(Result::ok).any(|e| {
        e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| running_in(&stat, group))
    })
}

/// Whether a `/proc/{pid}/stat` line is of a running member of `group`.
fn running_in(stat: &str, group: i32) -> bool {
    running_group(stat) == Some(group)
}

/// The process group of a `/proc/{pid}/stat` line's process, if it is
/// running (not a zombie). State and group come after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
pub(super) fn running_group(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let (state, _ppid, group) = (fields.next()?, fields.next()?, fields.next()?);
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    group.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        assert!(running_in("4242 (python3) S 1 4240 4240 0 -1 4194560", 4240));
        assert!(!running_in("4242 (python3) Z 1 4240 4240 0 -1 4194560", 4240), "a zombie is not running");
        assert!(!running_in("4242 (python3) S 1 4241 4241 0 -1 4194560", 4240), "another group");
        assert!(running_in("4242 (a) b (c) R 1 4240 4240 0", 4240), "a name with spaces and parentheses");
        assert!(!running_in("garbage", 4240));
    }

    #[tokio::test]
    async fn a_group_is_empty_once_its_members_exited_even_as_zombies() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let group = child.id() as i32;
        assert!(has_running_members(group));
        child.kill().unwrap();
        // Not reaped yet: a zombie, which kill(-group, 0) still finds.
        let zombie = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        for _ in 0..500 {
            if zombie(group) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie(group), "killed, not reaped");
        assert_eq!(killpg(Pid::from_raw(group), None), Ok(()), "the zombie is still there");
        assert!(!has_running_members(group), "but it does not run");
        let started = tokio::time::Instant::now();
        wait_empty(group, started + Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(10), "returned at once, not at the deadline");
        child.wait().unwrap();
        assert!(!has_running_members(group));
    }
}
