//! WebSocket proxying: the handshake goes to the backend over a fresh
//! connection; after both sides switch protocols, bytes are relayed as they
//! arrive in both directions, metered by [`FrameMeter`].
//!
//! An idle WebSocket holds no buffer: the relay waits for readiness on both
//! sockets and reads into a per-thread scratch buffer, so 10,000 idle
//! sessions cost only their sockets and a small task each.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::frames::FrameMeter;
use crate::activity::Activity;
use crate::metrics::Metrics;

/// Scratch space for one read; shared by every relay on the thread.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Completes both upgrades and relays until either side closes.
pub async fn relay(client: OnUpgrade, backend: OnUpgrade, activity: Arc<Activity>, metrics: Arc<Metrics>) {
    let (client, backend) = match tokio::join!(client, backend) {
        (Ok(c), Ok(b)) => (c, b),
        (c, b) => {
            tracing::debug!(client_ok = c.is_ok(), backend_ok = b.is_ok(), "websocket upgrade did not complete");
            return;
        }
    };
    let (Some((client, client_pre)), Some((backend, backend_pre))) = (unwrap(client), unwrap(backend)) else {
        tracing::warn!("websocket upgrade over an unexpected transport");
        return;
    };
    let _open = activity.connection();
    metrics.proxy.open_websockets.inc();
    let result = pump(client, client_pre, backend, backend_pre, &activity).await;
    metrics.proxy.open_websockets.dec();
    if let Err(e) = result {
        tracing::debug!(error = %e, "websocket relay ended with an error");
    }
}

fn unwrap(u: Upgraded) -> Option<(TcpStream, Bytes)> {
    let parts = u.downcast::<TokioIo<TcpStream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

struct Side {
    stream: TcpStream,
    /// Bytes read from the *other* side not yet written to this one.
    pending: Vec<u8>,
    eof: bool,
    meter: FrameMeter,
}

async fn pump(client: TcpStream, client_pre: Bytes, backend: TcpStream, backend_pre: Bytes, activity: &Activity) -> std::io::Result<()> {
    let mut c = Side { stream: client, pending: Vec::new(), eof: false, meter: FrameMeter::default() };
    let mut b = Side { stream: backend, pending: Vec::new(), eof: false, meter: FrameMeter::default() };
    // Bytes hyper read past the handshake belong to the relay.
    if !client_pre.is_empty() {
        activity.add_in(client_pre.len() as u64);
        activity.add_messages(c.meter.feed(&client_pre));
        b.pending.extend_from_slice(&client_pre);
    }
    if !backend_pre.is_empty() {
        activity.add_out(backend_pre.len() as u64);
        activity.add_messages(b.meter.feed(&backend_pre));
        c.pending.extend_from_slice(&backend_pre);
    }
    // These may share hyper's whole read buffer (8 KiB or more); holding
    // them for the life of an idle WebSocket would multiply memory per
    // connection.
    drop(client_pre);
    drop(backend_pre);
    loop {
        if c.eof && b.eof && c.pending.is_empty() && b.pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            r = c.stream.readable(), if !c.eof && b.pending.is_empty() => {
                r?;
                if transfer(&mut c, &mut b, activity, true)? {
                    c.eof = true;
                    b.stream.shutdown().await.ok();
                }
            }
            r = b.stream.readable(), if !b.eof && c.pending.is_empty() => {
                r?;
                if transfer(&mut b, &mut c, activity, false)? {
                    b.eof = true;
                    c.stream.shutdown().await.ok();
                }
            }
            r = b.stream.writable(), if !b.pending.is_empty() => { r?; flush(&mut b)?; }
            r = c.stream.writable(), if !c.pending.is_empty() => { r?; flush(&mut c)?; }
            else => return Ok(()),
        }
    }
}

/// Reads what `from` has and writes as much as possible to `to`; keeps the
/// rest in `to.pending`. Returns true at end of stream.
fn transfer(from: &mut Side, to: &mut Side, activity: &Activity, inbound: bool) -> std::io::Result<bool> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        match from.stream.try_read(&mut buf) {
            Ok(0) => Ok(true),
            Ok(n) => {
                let data = &buf[..n];
                if inbound {
                    activity.add_in(n as u64);
                } else {
                    activity.add_out(n as u64);
                }
                activity.add_messages(from.meter.feed(data));
                match to.stream.try_write(data) {
                    Ok(w) if w == n => {}
                    Ok(w) => to.pending.extend_from_slice(&data[w..]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => to.pending.extend_from_slice(data),
                    Err(e) => return Err(e),
                }
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(true),
            Err(e) => Err(e),
        }
    })
}

fn flush(side: &mut Side) -> std::io::Result<()> {
    match side.stream.try_write(&side.pending) {
        Ok(w) => {
            side.pending.drain(..w);
            if side.pending.is_empty() {
                side.pending = Vec::new(); // give the memory back
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}
