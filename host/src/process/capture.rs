//! Reading a backend's stdout and stderr into its [`LogBuffer`].
//!
//! The two are separate pipes, so which of two writes came first is not
//! knowable once both are waiting to be read. What was waiting on both at
//! once is taken stdout first: a program that logs to stdout and then
//! writes its error to stderr (and exits) is read in the order it wrote.
//! Each turn takes at most one buffer (8 KiB) from each pipe, so a backend
//! flooding one stream never holds up the other (which would block the
//! backend on a full pipe).

use futures_util::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::logs::{LineSplitter, LogBuffer, Stream};

/// Reads both streams to their end.
pub async fn capture(stdout: Option<impl AsyncRead + Unpin>, stderr: Option<impl AsyncRead + Unpin>, logs: &LogBuffer) {
    let mut out = stdout.map(|r| Pipe::new(r, Stream::Stdout));
    let mut err = stderr.map(|r| Pipe::new(r, Stream::Stderr));
    loop {
        tokio::select! {
            biased;
            () = Pipe::fill(&mut out), if out.is_some() => {}
            () = Pipe::fill(&mut err), if err.is_some() => {}
            else => break,
        }
        // Whichever woke us, the other may have output waiting too.
        if out.is_some() {
            let _ = Pipe::fill(&mut out).now_or_never();
        }
        if err.is_some() {
            let _ = Pipe::fill(&mut err).now_or_never();
        }
        Pipe::take(&mut out, logs);
        Pipe::take(&mut err, logs);
    }
}

struct Pipe<R> {
    reader: BufReader<R>,
    lines: LineSplitter,
    stream: Stream,
    ended: bool,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: R, stream: Stream) -> Self {
        Pipe { reader: BufReader::new(reader), lines: LineSplitter::default(), stream, ended: false }
    }

    /// Waits for output (or the end) in the pipe's buffer. A `None` pipe
    /// never fills (the `select!` above never polls it).
    async fn fill(pipe: &mut Option<Self>) {
        let Some(p) = pipe else { return std::future::pending().await };
        if !p.ended {
            // A read error ends the stream as its end does.
            p.ended = p.reader.fill_buf().await.map_or(true, |chunk| chunk.is_empty());
        }
    }

    /// Moves what the buffer holds into `logs`: the lines it ends, and the
    /// line not yet ended as it stands (or, at the end, as the last line);
    /// an ended pipe is gone after.
    fn take(pipe: &mut Option<Self>, logs: &LogBuffer) {
        let Some(p) = pipe else { return };
        p.drain(logs);
        if p.ended {
            let stream = p.stream;
            if let Some(last) = pipe.take().and_then(|p| p.lines.finish()) {
                logs.push(stream, last);
            }
        }
    }

    fn drain(&mut self, logs: &LogBuffer) {
        loop {
            let chunk = self.reader.buffer();
            if chunk.is_empty() {
                break;
            }
            let (used, line) = self.lines.feed(chunk);
            self.reader.consume(used);
            if let Some(line) = line {
                logs.push(self.stream, line);
            }
        }
        if let Some(unfinished) = self.lines.unfinished() {
            logs.unfinished(self.stream, unfinished);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use tokio::net::unix::pipe::Receiver;

    use super::*;

    /// Two pipes standing for a process's stdout and stderr, [`capture`]d
    /// into a buffer by a task: their write ends, the buffer, the task.
    fn captured_pipes() -> (std::io::PipeWriter, std::io::PipeWriter, Arc<LogBuffer>, tokio::task::JoinHandle<()>) {
        let (out_r, out_w) = std::io::pipe().unwrap();
        let (err_r, err_w) = std::io::pipe().unwrap();
        let out = Receiver::from_owned_fd(out_r.into()).unwrap();
        let err = Receiver::from_owned_fd(err_r.into()).unwrap();
        let logs = Arc::new(LogBuffer::default());
        let reading = tokio::spawn({
            let logs = logs.clone();
            async move { capture(Some(out), Some(err), &logs).await }
        });
        (out_w, err_w, logs, reading)
    }

    /// Writes `first` to one pipe and then `second` to the other, each
    /// once, while [`capture`] waits on both.
    async fn written_in_turn(first: Stream) -> Vec<(Stream, String)> {
        let (mut out_w, mut err_w, logs, reading) = captured_pipes();
        tokio::task::yield_now().await;
        std::thread::spawn(move || {
            let (a, b) = if first == Stream::Stdout { (&mut out_w, &mut err_w) } else { (&mut err_w, &mut out_w) };
            a.write_all(b"first\n").unwrap();
            b.write_all(b"second\n").unwrap();
        })
        .join()
        .unwrap();
        reading.await.unwrap();
        logs.lines(None).into_iter().map(|l| (l.stream, l.text)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_program_wrote_to_stdout_and_then_to_stderr_is_read_in_that_order() {
        // Each round is a race between the writer and the reader; a reader
        // of each pipe on its own (`join!` of two, as before 2026-12-01)
        // loses it within a few rounds.
        for round in 0..300 {
            let lines = written_in_turn(Stream::Stdout).await;
            assert_eq!(lines, [(Stream::Stdout, "first".to_string()), (Stream::Stderr, "second".to_string())], "round {round}");
        }
        // The other way round, the order is right when the reader saw the
        // first write before the second, and a guess (stdout first) when
        // both were waiting: either way, nothing is lost.
        for _ in 0..20 {
            let mut lines = written_in_turn(Stream::Stderr).await;
            lines.sort_by(|a, b| a.1.cmp(&b.1));
            assert_eq!(lines, [(Stream::Stderr, "first".to_string()), (Stream::Stdout, "second".to_string())]);
        }
    }

    #[tokio::test]
    async fn a_flood_on_one_stream_does_not_hold_up_the_other() {
        let (mut out_w, mut err_w, logs, reading) = captured_pipes();
        // 256 MiB on stdout, written without a pause, while one stderr line
        // waits: the stderr line is read while the flood goes on. (One
        // endless line, whose rest is dropped as it arrives, so that the
        // stderr line stays in the buffer to be seen.)
        let flood = std::thread::spawn(move || {
            let chunk = [b'x'; 64 * 1024];
            for _ in 0..4 * 1024 {
                if out_w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        err_w.write_all(b"stderr line\n").unwrap();
        drop(err_w);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !logs.lines(None).iter().any(|l| l.stream == Stream::Stderr) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await;
        let flooding = !flood.is_finished();
        tokio::task::spawn_blocking(move || flood.join().unwrap()).await.unwrap();
        reading.await.unwrap();
        assert!(seen.is_ok(), "the stderr line was never read");
        assert!(flooding, "the stderr line was read only after the flood ended");
    }
}
