//! A plugin's stderr: kept in memory for the failure report, never full.
//!
//! A `std` plugin's panic message goes to stderr, and the host reads it back
//! to say why a call trapped. wasmtime-wasi's `MemoryOutputPipe` refuses
//! writes once its capacity is reached, and Rust's `eprintln!` panics on a
//! write error, so a plugin that merely logged a lot would trap. This
//! stream takes every write and keeps the last bytes: the end, where a
//! panic message is.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What one write may be (the guest asks before each write): as much as a
/// WASI stream usually offers.
const WRITE_BUDGET: usize = 64 * 1024;

/// Keeps the last `capacity` bytes written.
#[derive(Debug, Clone)]
pub(crate) struct TailCapture {
    capacity: usize,
    kept: Arc<Mutex<BytesMut>>,
}

impl TailCapture {
    /// A capture that keeps `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        TailCapture { capacity, kept: Arc::new(Mutex::new(BytesMut::new())) }
    }

    /// What is kept.
    pub fn contents(&self) -> Bytes {
        self.kept.lock().expect("capture lock").clone().freeze()
    }

    fn keep(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().expect("capture lock");
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        kept.extend_from_slice(bytes);
        let over = kept.len().saturating_sub(self.capacity);
        kept.advance(over);
    }
}

impl OutputStream for TailCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailCapture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailCapture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_taken_and_the_last_bytes_are_kept() {
        let mut capture = TailCapture::new(8);
        for chunk in ["abc", "defgh", "ijklmnopqrstuvwxyz"] {
            assert_eq!(capture.check_write().unwrap(), WRITE_BUDGET);
            capture.write(Bytes::from(chunk)).unwrap();
        }
        assert_eq!(&capture.contents()[..], b"stuvwxyz");
        capture.write(Bytes::from("12")).unwrap();
        assert_eq!(&capture.contents()[..], b"uvwxyz12");
    }
}
