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

/// What a kept line costs beyond its text (its time, stream and `String`),
/// counted against [`LOG_BUFFER_BYTES`] so that a backend printing empty
/// lines in a loop cannot grow the buffer without bound either.
const LINE_OVERHEAD: usize = std::mem::size_of::<LogLine>();

/// Splits a stream of output into lines while holding at most
/// [`MAX_LINE_BYTES`] (plus one, to know it was cut) of a line not yet ended:
/// the rest of an overlong line is dropped as it arrives, not read into
/// memory first.
///
/// A carriage return followed by more text starts the line over: what a
/// terminal shows of a progress bar (`42%\r43%\r…`) is its latest state,
/// which is what is kept, not thousands of lines, nor its first 16 KiB.
/// (A terminal overwrites in place; a bar that shrinks pads or erases
/// the rest, so its text alone is its state.)
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
    /// A carriage return came last: a newline next makes it a CRLF's,
    /// another carriage return changes nothing, anything else starts over.
    cr: bool,
    cut: bool,
    /// The line not yet ended changed since [`LineSplitter::unfinished`]
    /// last said what it is.
    changed: bool,
}

impl LineSplitter {
    /// Takes bytes from the front of `chunk`, up to and including the first
    /// newline. Returns how many it took, and the line they ended, if any.
    pub fn feed(&mut self, chunk: &[u8]) -> (usize, Option<String>) {
        let end = chunk.iter().position(|b| *b == b'\n');
        let part = &chunk[..end.unwrap_or(chunk.len())];
        if !self.cr && !part.contains(&b'\r') {
            // Nearly all output.
            self.append(part);
        } else {
            let mut text = 0;
            for (i, b) in part.iter().enumerate() {
                if *b == b'\r' {
                    self.append(&part[text..i]);
                    self.cr = true;
                    text = i + 1;
                } else if std::mem::take(&mut self.cr) {
                    self.start_over();
                }
            }
            self.append(&part[text..]);
        }
        match end {
            Some(at) => (at + 1, Some(self.take())),
            None => (chunk.len(), None),
        }
    }

    /// Adds `bytes` to the line, up to one past [`MAX_LINE_BYTES`].
    fn append(&mut self, bytes: &[u8]) {
        let room = (MAX_LINE_BYTES + 1).saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.changed |= room > 0 && !bytes.is_empty();
        self.cut |= bytes.len() > room;
    }

    fn start_over(&mut self) {
        self.line.clear();
        self.cut = false;
        self.changed = true;
    }

    /// The line not yet ended, as it would be kept, if it changed since
    /// the last call: `Some(None)` when there is none any more.
    pub fn unfinished(&mut self) -> Option<Option<String>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        Some((!text.is_empty() || self.cut).then_some(text))
    }

    /// The last line, if the output ended without a newline.
    pub fn finish(mut self) -> Option<String> {
        (!self.line.is_empty() || self.cut).then(|| self.take())
    }

    /// Bytes held for the line not yet ended.
    pub fn pending(&self) -> usize {
        self.line.len()
    }

    fn take(&mut self) -> String {
        // A cut line holds MAX_LINE_BYTES + 1 bytes, and lossy decoding
        // never shortens text, so LogBuffer::push cuts it and says so.
        let text = String::from_utf8_lossy(&self.line).into_owned();
        *self = LineSplitter::default();
        text
    }
}

/// The buffer: ended lines, and each stream's line not yet ended (a
/// prompt, `Listening... ` before the port is bound, a progress bar), so
/// that what a running backend wrote last can be read before its newline.
#[derive(Debug, Default)]
pub struct LogBuffer {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// stdout's and stderr's lines not yet ended.
    unfinished: [Option<LogLine>; 2],
}

impl LogBuffer {
    /// Appends a line, dropping the oldest lines beyond the byte budget;
    /// it ends `stream`'s unfinished line.
    pub fn push(&self, stream: Stream, mut text: String) {
        crate::text::cut_to(&mut text, MAX_LINE_BYTES, " [line truncated]");
        let mut kept = self.inner.lock().expect("log lock");
        kept.unfinished[stream as usize] = None;
        kept.bytes += text.len() + LINE_OVERHEAD;
        kept.lines.push_back(LogLine { time: Timestamp::now(), stream, text });
        while kept.bytes > LOG_BUFFER_BYTES {
            match kept.lines.pop_front() {
                Some(old) => kept.bytes -= old.text.len() + LINE_OVERHEAD,
                None => break,
            }
        }
    }

    /// Sets what `stream` wrote since its last newline (`None`: nothing).
    pub fn unfinished(&self, stream: Stream, text: Option<String>) {
        let line = text.map(|mut text| {
            crate::text::cut_to(&mut text, MAX_LINE_BYTES, " [line truncated]");
            LogLine { time: Timestamp::now(), stream, text }
        });
        self.inner.lock().expect("log lock").unfinished[stream as usize] = line;
    }

    /// The last `tail` lines (all when `None`), unfinished ones last.
    pub fn lines(&self, tail: Option<usize>) -> Vec<LogLine> {
        let kept = self.inner.lock().expect("log lock");
        let mut unfinished: Vec<&LogLine> = kept.unfinished.iter().flatten().collect();
        unfinished.sort_by_key(|l| l.time);
        let all = kept.lines.iter().chain(unfinished);
        let count = kept.lines.len() + kept.unfinished.iter().flatten().count();
        all.skip(tail.map_or(0, |t| count.saturating_sub(t))).cloned().collect()
    }
}

/// How close to the newest line a line must have been read to count as
/// part of a program's last words (see [`stderr_last`]).
pub const LAST_WORDS_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// `lines` (oldest first) with those read within [`LAST_WORDS_WINDOW`] of
/// the newest put stdout first, stderr last, for a status message's "last
/// output". Of two pipes read at once the order is a guess, and which guess
/// matters: a program's reason for ending is nearly always on stderr, and
/// a Python program writes its traceback to stderr before its buffered
/// stdout is flushed at exit, so the order read would leave the traceback
/// out of the last few lines.
pub fn stderr_last(mut lines: Vec<LogLine>) -> Vec<LogLine> {
    let Some(newest) = lines.iter().map(|l| l.time).max() else { return lines };
    let since = newest - LAST_WORDS_WINDOW;
    let start = lines.iter().position(|l| l.time >= since).unwrap_or(lines.len());
    lines[start..].sort_by_key(|l| l.stream == Stream::Stderr);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programs_last_words_end_with_what_it_wrote_to_stderr() {
        let at = |secs: i64, stream, text: &str| LogLine {
            time: Timestamp::from_second(1_700_000_000 + secs).unwrap(),
            stream,
            text: text.into(),
        };
        let lines = vec![
            at(0, Stream::Stderr, "warning at start"),
            at(10, Stream::Stdout, "request 1"),
            at(20, Stream::Stderr, "Traceback (most recent call last):"),
            at(20, Stream::Stderr, "RuntimeError: boom"),
            at(20, Stream::Stdout, "request 2"),
            at(21, Stream::Stdout, "request 3"),
        ];
        let texts: Vec<String> = stderr_last(lines).into_iter().map(|l| l.text).collect();
        assert_eq!(
            texts,
            ["warning at start", "request 1", "request 2", "request 3", "Traceback (most recent call last):", "RuntimeError: boom"],
            "the last second's stderr lines go last, in their order; older lines keep theirs"
        );
        assert!(stderr_last(Vec::new()).is_empty());
    }

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

    #[test]
    fn empty_lines_count_against_the_budget() {
        let b = LogBuffer::default();
        for _ in 0..100_000 {
            b.push(Stream::Stdout, String::new());
        }
        assert_eq!(b.lines(None).len(), LOG_BUFFER_BYTES / LINE_OVERHEAD);
    }

    /// Feeds `output` in chunks of `size`, as a pipe would deliver it.
    fn split(output: &[u8], size: usize) -> (Vec<String>, usize) {
        let (mut splitter, mut lines, mut held) = (LineSplitter::default(), Vec::new(), 0);
        for mut chunk in output.chunks(size) {
            while !chunk.is_empty() {
                let (used, line) = splitter.feed(chunk);
                lines.extend(line);
                held = held.max(splitter.pending());
                chunk = &chunk[used..];
            }
        }
        lines.extend(splitter.finish());
        (lines, held)
    }

    #[test]
    fn an_endless_line_is_cut_as_it_arrives() {
        let mut output = vec![b'x'; 8 * 1024 * 1024];
        output.extend_from_slice(b"\nnext\r\nlast");
        let (lines, held) = split(&output, 8192);
        assert!(held <= MAX_LINE_BYTES + 1, "held {held} bytes of one line");
        assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(&lines[1..], ["next", "last"]);
        let b = LogBuffer::default();
        b.push(Stream::Stdout, lines[0].clone());
        let kept = &b.lines(None)[0].text;
        assert!(kept.len() <= MAX_LINE_BYTES && kept.ends_with(" [line truncated]"), "{}", kept.len());
    }

    #[test]
    fn text_after_a_carriage_return_starts_the_line_over() {
        let output = "progress 1%\rprogress 2%\rprogress 49%\ndone\r\nwindows\r\n\rx\ry\nabc\r\r\nhéllo\rab\n█████ 100%\rdone\nlast\r";
        for size in [1, 2, 3, 4096] {
            let (lines, _) = split(output.as_bytes(), size);
            assert_eq!(lines, ["progress 49%", "done", "windows", "y", "abc", "ab", "done", "last"], "chunks of {size}");
        }
        // Past the cap too.
        let mut long = vec![b'x'; MAX_LINE_BYTES + 100];
        long.extend_from_slice(b"\r42%\n");
        assert_eq!(split(&long, 4096).0, ["42%"]);
    }

    #[test]
    fn a_line_not_yet_ended_can_be_read() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.unfinished(), None, "nothing written");
        assert_eq!(splitter.feed(b"Listening soon... "), (18, None));
        assert_eq!(splitter.unfinished(), Some(Some("Listening soon... ".to_string())));
        assert_eq!(splitter.unfinished(), None, "unchanged since");
        assert_eq!(splitter.feed(b"\n").1.as_deref(), Some("Listening soon... "));
        assert_eq!(splitter.unfinished(), None, "ended");
        splitter.feed(b"42%\r");
        assert_eq!(splitter.unfinished(), Some(Some("42%".to_string())), "a CR that may be a CRLF's changes nothing shown");
        splitter.feed(b"43%");
        assert_eq!(splitter.unfinished(), Some(Some("43%".to_string())));

        let b = LogBuffer::default();
        b.push(Stream::Stdout, "one".into());
        b.unfinished(Stream::Stderr, Some("Error: something bad hap".into()));
        b.unfinished(Stream::Stdout, Some("43%".into()));
        let texts = |tail| b.lines(tail).into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(texts(None), ["one", "Error: something bad hap", "43%"], "unfinished lines last, in the order written");
        assert_eq!(texts(Some(2)), ["Error: something bad hap", "43%"]);
        b.push(Stream::Stdout, "43% done".into());
        assert_eq!(texts(None), ["one", "43% done", "Error: something bad hap"], "a line's end replaces its unfinished form");
        b.unfinished(Stream::Stderr, None);
        assert_eq!(texts(None), ["one", "43% done"]);
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let (lines, _) = split(b"one\ntwo\n\nthree", 2);
        assert_eq!(lines, ["one", "two", "", "three"]);
        let exact = "y".repeat(MAX_LINE_BYTES);
        let (lines, _) = split(format!("{exact}\n").as_bytes(), 4096);
        assert_eq!(lines, [exact], "a line of exactly the limit is kept whole");
    }
}
