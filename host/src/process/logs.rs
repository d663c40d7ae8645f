//! A bounded buffer of a backend's stdout and stderr lines.

use std::collections::VecDeque;
use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;

/// Bytes of log text kept per backend; older lines are dropped first.
pub const LOG_BUFFER_BYTES: usize = 256 * 1024;

/// Longest line kept; longer lines are cut (a backend printing a huge blob
/// without newlines must not grow Spawner's memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When Spawner read it.
    pub time: Timestamp,
    /// Its stream.
    pub stream: Stream,
    /// The text, without the newline.
    pub text: String,
}

/// The buffer.
#[derive(Debug, Default)]
pub struct LogBuffer {
    inner: Mutex<(VecDeque<LogLine>, usize)>,
}

impl LogBuffer {
    /// Appends a line, dropping the oldest lines beyond the byte budget.
    pub fn push(&self, stream: Stream, mut text: String) {
        crate::text::cut_to(&mut text, MAX_LINE_BYTES, " [line truncated]");
        let mut guard = self.inner.lock().expect("log lock");
        let (lines, bytes) = &mut *guard;
        *bytes += text.len();
        lines.push_back(LogLine { time: Timestamp::now(), stream, text });
        while *bytes > LOG_BUFFER_BYTES {
            match lines.pop_front() {
                Some(old) => *bytes -= old.text.len(),
                None => break,
            }
        }
    }

    /// The last `tail` lines (all when `None`).
    pub fn lines(&self, tail: Option<usize>) -> Vec<LogLine> {
        let guard = self.inner.lock().expect("log lock");
        let skip = tail.map_or(0, |t| guard.0.len().saturating_sub(t));
        guard.0.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_budget() {
        let b = LogBuffer::default();
        for i in 0..100_000 {
            b.push(Stream::Stdout, format!("line {i}"));
        }
        let lines = b.lines(None);
        assert!(lines.iter().map(|l| l.text.len()).sum::<usize>() <= LOG_BUFFER_BYTES);
        assert_eq!(lines.last().unwrap().text, "line 99999");
        assert_eq!(b.lines(Some(2)).len(), 2);
        b.push(Stream::Stderr, "x".repeat(MAX_LINE_BYTES * 2));
        assert!(b.lines(Some(1))[0].text.ends_with("[line truncated]"));
    }
}
