//! At most one log line per [`EVERY`] for one kind of repeated failure.
//!
//! Some failures come once per request or per backend per sweep: an auth
//! plugin that traps, a backend that crashed while browsers keep asking it.
//! One line per occurrence would drown the log in one cause; the metrics
//! count every occurrence, and the line that passes says how many were
//! left out since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a gate lets a line through, at most.
pub const EVERY: Duration = Duration::from_secs(10);

/// When a line last passed, and how many were held back since.
#[derive(Debug, Default)]
pub struct LogGate(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// A gate no line has passed yet (for a `static`).
    pub const fn new() -> Self {
        LogGate(Mutex::new(State { last: None, suppressed: 0 }))
    }

    /// Whether to log now (`Some`, with how many lines were held back
    /// before this one), or not (`None`, counted as held back).
    pub fn pass(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().expect("log gate lock");
        if s.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            s.suppressed += 1;
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.suppressed))
    }

    /// Counts a line as held back without letting it take the next place:
    /// one that is no longer news (a failure of a plugin already replaced).
    pub fn hold(&self) {
        self.0.lock().expect("log gate lock").suppressed += 1;
    }

    /// Lets the next line through at once, whenever the last one passed: the
    /// cause changed (a plugin was replaced, and its first failure is news).
    /// That line still says how many were held back before it.
    pub fn reopen(&self) {
        self.0.lock().expect("log gate lock").last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_says_how_many_were_held_back() {
        let gate = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.pass(t0), Some(0), "the first is logged");
        for i in 1..=5 {
            assert_eq!(gate.pass(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(gate.pass(t0 + EVERY), Some(5), "then one line says how many were not");
        assert_eq!(gate.pass(t0 + EVERY), None);
    }

    #[test]
    fn a_reopened_gate_passes_the_next_line_with_the_count_held_back() {
        let gate = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.pass(t0), Some(0));
        assert_eq!(gate.pass(t0), None);
        gate.reopen();
        gate.hold();
        assert_eq!(gate.pass(t0 + Duration::from_secs(1)), Some(2), "held lines do not take the reopened place");
        assert_eq!(gate.pass(t0 + Duration::from_secs(2)), None, "then one line per period again");
    }
}
