//! WebSocket proxying: the handshake goes to the backend over a fresh
//! connection; after both sides switch protocols, bytes are relayed as they
//! arrive in both directions, metered by [`FrameMeter`].
//!
//! When the server stops, every relay is asked to close: at the next frame
//! boundary in both directions it sends each side a Close frame with code
//! 1001 ("going away"), so browsers see a clean close they can reconnect
//! after (through another replica), and backends an orderly end of the
//! session, instead of both finding the connection cut at exit. (Where the
//! backends stop with the server, as in `spawner dev`, they are ending
//! first, and their relays close with 1000 and the backend's reason.) A
//! backend that ends, or whose connection ends without a Close frame (it
//! died), has the browser's side closed the same way, saying why when
//! that is known. Once asked,
//! a direction reads only to the end of its frame in progress and then no
//! more, so a busy stream reaches its boundary too. A relay that reaches
//! none within `BOUNDARY_WAIT` (a stalled sender, a peer not reading, bytes
//! that are not frames) sends its Close to each side that is between
//! frames and cuts the other.
//!
//! An idle WebSocket holds no buffer: the relay waits for readiness on both
//! sockets and reads into a per-thread scratch buffer, so 10,000 idle
//! sessions cost only their sockets and a small task each.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::frames::FrameMeter;
use crate::activity::Activity;
use crate::metrics::Metrics;

/// Scratch space for one read; shared by every relay on the thread.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// The Close frames' status when the proxy stops: 1001, going away (the
/// client reconnects, through another replica).
const GOING_AWAY: u16 = 1001;

/// The Close frames' status when the backend ends: 1000, a normal closure
/// (the session is over: a client that reconnects on 1001 must not loop on
/// a backend that is gone).
const SESSION_OVER: u16 = 1000;

/// The Close frames' reason when the proxy stops (a browser shows it in
/// `CloseEvent.reason`).
const GOING_AWAY_REASON: &str = "proxy stopping; reconnect";

/// The most a Close frame's reason may hold: a control frame's payload is
/// at most 125 bytes, two of them the status.
const MAX_REASON_BYTES: usize = 123;

/// How long, after sending Close frames, the relay waits for each side's
/// answering Close (or end of stream) before it drops the connections.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// How long, once asked to close, the relay waits for a moment when no
/// frame is half-relayed; after that it cuts the connection, as before
/// WebSockets were closed (and so a stop is never held up by one).
const BOUNDARY_WAIT: Duration = Duration::from_secs(2);

/// The Close frame's status when the backend ends its connection without
/// one and no reason is known: 1011, the server met an unexpected
/// condition (accepted by every client; 1014, "bad gateway", is not by
/// all of them).
const BACKEND_CUT: u16 = 1011;

/// Its reason.
const BACKEND_CUT_REASON: &str = "the backend closed the connection without a WebSocket Close";

/// How long, when a backend's connection ends without a Close frame, the
/// relay waits to learn why before it closes the browser's side: a backend
/// that crashed is seen exiting within milliseconds locally, and its page
/// is then told how it ended ("backend ending (exited): …") rather than
/// only that it went.
const ENDING_WAIT: Duration = Duration::from_millis(500);

/// How long, once one side has ended its stream, the relay waits for the
/// other to end too. A WebSocket's closing handshake takes a round trip; a
/// backend that never ends its side (it neither reads nor writes) would
/// otherwise keep the relay, and its open-connection count, for ever, and
/// the idle plugin would never see its backend idle.
const HALF_CLOSED_WAIT: Duration = Duration::from_secs(10);

/// Completes both upgrades and relays until either side closes, or until
/// `going_away` turns true (the server is stopping) or the backend ends
/// (`activity`'s [`Activity::ending`]), when it closes both sides with
/// status 1001 or 1000 and a reason that says which.
pub async fn relay(
    client: OnUpgrade,
    backend: OnUpgrade,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    going_away: watch::Receiver<bool>,
) {
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
    let _counted = crate::metrics::Counted::new(&metrics.proxy.open_websockets);
    let result = pump(client, client_pre, backend, backend_pre, &activity, going_away, activity.ending()).await;
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

async fn pump(
    client: TcpStream,
    client_pre: Bytes,
    backend: TcpStream,
    backend_pre: Bytes,
    activity: &Activity,
    mut going_away: watch::Receiver<bool>,
    mut ending: watch::Receiver<Option<Arc<str>>>,
) -> std::io::Result<()> {
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
    // False once the signal has come (perhaps before this relay began), or
    // can no longer come.
    let mut listening = !*going_away.borrow_and_update();
    // Why it closes, once asked.
    let mut reason = close_for(ending.borrow_and_update().clone(), !listening);
    let mut watching_backend = reason.is_none();
    // Once asked to close: when to give up waiting for a frame boundary
    // (a stalled sender, a peer not reading, bytes that are not WebSocket
    // frames) and cut the connection instead. Boxed, so an open relay
    // does not carry a timer until then.
    let mut give_up = reason.is_some().then(|| Box::pin(tokio::time::sleep(BOUNDARY_WAIT)));
    // Once one side has ended: when to stop waiting for the other.
    let mut half_closed = None;
    let mut gave_up = false;
    loop {
        if c.eof && b.eof && c.pending.is_empty() && b.pending.is_empty() {
            return Ok(());
        }
        if (c.eof || b.eof) && half_closed.is_none() {
            half_closed = Some(Box::pin(tokio::time::sleep(HALF_CLOSED_WAIT)));
        }
        // Closing waits until no frame is half-relayed either way (a Close
        // frame in the middle of another would corrupt the stream) and no
        // side has ended (it is closing already).
        let quiet = c.meter.at_boundary() && b.meter.at_boundary() && c.pending.is_empty() && b.pending.is_empty();
        if give_up.is_some() && quiet && !c.eof && !b.eof {
            // A side that was already sent a Close (the other side's,
            // relayed) gets none of ours: an endpoint sends one Close.
            // Boxed: its state (timers, once two read buffers) would
            // otherwise enlarge every relay's, idle ones included, for the
            // whole session (measured 3.5 -> 5.6 KiB per idle WebSocket).
            let (code, why) = reason.as_ref().map_or((GOING_AWAY, GOING_AWAY_REASON), |(code, why)| (*code, &**why));
            return Box::pin(say_going_away(c.stream, !b.meter.closing(), b.stream, !c.meter.closing(), code, why)).await;
        }
        tokio::select! {
            // An error: the server is gone without asking (the value stays
            // false), so there is nothing more to listen for either way.
            r = going_away.changed(), if listening => {
                listening = false;
                if r.is_ok() && *going_away.borrow() && give_up.is_none() {
                    reason = close_for(ending.borrow().clone(), true);
                    give_up = Some(Box::pin(tokio::time::sleep(BOUNDARY_WAIT)));
                }
            }
            r = ending.changed(), if watching_backend => {
                watching_backend = false;
                let close = close_for(ending.borrow().clone(), false);
                if r.is_ok() && give_up.is_none() && close.is_some() {
                    reason = close;
                    give_up = Some(Box::pin(tokio::time::sleep(BOUNDARY_WAIT)));
                }
            }
            () = async { give_up.as_mut().expect("checked").await }, if give_up.is_some() => gave_up = true,
            () = async { half_closed.as_mut().expect("checked").await }, if half_closed.is_some() => return Ok(()),
            r = c.stream.readable(), if !c.eof && b.pending.is_empty() && readable_now(&c, give_up.is_some()) => {
                r?;
                match transfer(&mut c, &mut b, activity, true, give_up.is_some())? {
                    Read::More => {}
                    Read::Ended => {
                        c.eof = true;
                        b.stream.shutdown().await.ok();
                    }
                    Read::Reset(e) => return Err(e),
                }
            }
            r = b.stream.readable(), if !b.eof && c.pending.is_empty() && readable_now(&b, give_up.is_some()) => {
                r?;
                let end = match transfer(&mut b, &mut c, activity, false, give_up.is_some())? {
                    Read::More => continue,
                    end => end,
                };
                // The backend went without a Close frame (it crashed, or
                // drops its sockets): between frames, the browser still
                // gets one, saying why if that is known, instead of
                // finding its connection cut (1006).
                if !b.meter.closing() && b.meter.at_boundary() {
                    if let Read::Reset(e) = &end {
                        tracing::debug!(error = %e, "the backend reset a websocket");
                    }
                    let known = reason.clone().or_else(|| close_for(ending.borrow().clone(), false));
                    return Box::pin(close_after_backend_went(c, known, ending)).await;
                }
                match end {
                    Read::Reset(e) => return Err(e),
                    _ => {
                        b.eof = true;
                        c.stream.shutdown().await.ok();
                    }
                }
            }
            r = b.stream.writable(), if !b.pending.is_empty() => { r?; flush(&mut b)?; }
            r = c.stream.writable(), if !c.pending.is_empty() => { r?; flush(&mut c)?; }
            else => return Ok(()),
        }
        if gave_up {
            // No moment came when both directions were between frames (a
            // backend not reading what the browser floods it with): each
            // side that is between frames still gets its Close, the other
            // is cut. A browser in front of a stalled backend sees 1001 or
            // 1000 with the reason, not a reset.
            let (code, why) = reason.as_ref().map_or((GOING_AWAY, GOING_AWAY_REASON), |(code, why)| (*code, &**why));
            let to_client = !c.eof && b.meter.at_boundary() && c.pending.is_empty() && !b.meter.closing();
            let to_backend = !b.eof && c.meter.at_boundary() && b.pending.is_empty() && !c.meter.closing();
            return Box::pin(say_going_away(c.stream, to_client, b.stream, to_backend, code, why)).await;
        }
    }
}

/// The status and reason a relay closes with, if it must: its backend's
/// `ending` note (1000, the session is over: when the proxy stops as well,
/// as `spawner dev` stops its backends with it, that says more than
/// "reconnect"), else 1001 if the proxy is `stopping`.
fn close_for(ending: Option<Arc<str>>, stopping: bool) -> Option<(u16, Arc<str>)> {
    match ending {
        Some(why) => Some((SESSION_OVER, why)),
        None => stopping.then(|| (GOING_AWAY, GOING_AWAY_REASON.into())),
    }
}

/// Closes the browser's side of a relay whose backend connection ended
/// without a Close frame: after what is still to be written to it, a Close
/// with `known` (the relay was closing already), or with the backend's
/// ending note if one comes within [`ENDING_WAIT`] (1000: the session is
/// over), or else [`BACKEND_CUT`]. A browser that had sent its own Close
/// gets the answer it waits for (1000).
async fn close_after_backend_went(
    mut client: Side,
    known: Option<(u16, Arc<str>)>,
    mut ending: watch::Receiver<Option<Arc<str>>>,
) -> std::io::Result<()> {
    let (code, why) = match known {
        _ if client.meter.closing() => (SESSION_OVER, Arc::from("")),
        Some(known) => known,
        None => {
            let _ = tokio::time::timeout(ENDING_WAIT, ending.wait_for(Option::is_some)).await;
            let note = ending.borrow().clone();
            close_for(note, false).unwrap_or((BACKEND_CUT, BACKEND_CUT_REASON.into()))
        }
    };
    let mut last = std::mem::take(&mut client.pending);
    last.extend(close_frame(None, code, &why));
    close_side(client.stream, Some(last)).await;
    Ok(())
}

/// Sends the client an unmasked and the backend a masked Close frame (status
/// `code`; each only if asked: `to_client`, `to_backend`), ends both streams,
/// and gives each side [`CLOSE_HANDSHAKE`] to answer, discarding what it
/// sends meanwhile (its own Close frame). The sides are closed
/// independently: one that does not read, or fails, does not keep the
/// other from its Close.
async fn say_going_away(
    client: TcpStream,
    to_client: bool,
    backend: TcpStream,
    to_backend: bool,
    code: u16,
    why: &str,
) -> std::io::Result<()> {
    let mask: [u8; 4] = rand::random();
    tokio::join!(
        close_side(client, to_client.then(|| close_frame(None, code, why))),
        close_side(backend, to_backend.then(|| close_frame(Some(mask), code, why)))
    );
    Ok(())
}

/// Writes `frame` (if any) and ends the stream, then reads (and drops)
/// until the peer ends it too, each step within [`CLOSE_HANDSHAKE`];
/// errors end it early.
async fn close_side(mut stream: TcpStream, frame: Option<Vec<u8>>) {
    let sent = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        if let Some(frame) = frame {
            stream.write_all(&frame).await?;
        }
        stream.shutdown().await
    })
    .await;
    if let Ok(Ok(())) = sent {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, tokio::io::copy(&mut stream, &mut tokio::io::sink())).await;
    }
}

/// A Close frame with status `code` and `why` (cut to what a Close frame
/// holds, at a character's end): masked (as a client must send frames)
/// when `mask` is given, unmasked (as a server sends) if not.
fn close_frame(mask: Option<[u8; 4]>, code: u16, why: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let cut = (0..=why.len().min(MAX_REASON_BYTES)).rev().find(|i| why.is_char_boundary(*i)).unwrap_or(0);
    payload.extend_from_slice(&why.as_bytes()[..cut]);
    // FIN, opcode 8 (close); the mask bit and the length; the key, if any.
    let mut frame = vec![0x88, u8::from(mask.is_some()) << 7 | payload.len() as u8];
    frame.extend(mask.iter().flatten());
    // Masking XORs with the key; no key is the same as a key of zeros.
    let key = mask.unwrap_or_default();
    frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    frame
}

/// Whether to read from `side` now: always, unless closing and its
/// stream is at a frame boundary (where it stays until the Close).
fn readable_now(side: &Side, closing: bool) -> bool {
    !closing || side.meter.to_boundary() > 0
}

/// What reading one side found.
enum Read {
    /// Bytes, or none yet: the stream goes on.
    More,
    /// The end of the stream.
    Ended,
    /// A failure (a reset): that side can take nothing more, and waiting
    /// for the other side to finish would be for nobody.
    Reset(std::io::Error),
}

/// Reads what `from` has (when `closing`, no further than the end of its
/// frame in progress) and writes as much as possible to `to`; keeps the
/// rest in `to.pending`. An error is writing to `to`'s.
fn transfer(from: &mut Side, to: &mut Side, activity: &Activity, inbound: bool, closing: bool) -> std::io::Result<Read> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let limit = if closing { from.meter.to_boundary().min(buf.len()) } else { buf.len() };
        match from.stream.try_read(&mut buf[..limit]) {
            Ok(0) => Ok(Read::Ended),
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
                Ok(Read::More)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Read::More),
            Err(e) => Ok(Read::Reset(e)),
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets: (the relay's end, the peer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        (ours, peer)
    }

    /// A relay between a browser's socket and an app's, and the signal
    /// that stops it.
    struct Relayed {
        browser: TcpStream,
        app: TcpStream,
        going_away: watch::Sender<bool>,
        activity: Arc<Activity>,
        pump: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    /// Starts a relay (the stop already asked for if `stopped`).
    async fn relayed(stopped: bool) -> Relayed {
        let (relay_client, browser) = pair().await;
        let (relay_backend, app) = pair().await;
        let (going_away, signal) = watch::channel(stopped);
        let activity = Activity::new();
        let meter = activity.clone();
        let ending = activity.ending();
        let pump = tokio::spawn(async move { pump(relay_client, Bytes::new(), relay_backend, Bytes::new(), &meter, signal, ending).await });
        Relayed { browser, app, going_away, activity, pump }
    }

    /// Hangs up both peers and waits for the relay to end.
    async fn hang_up(r: Relayed) {
        drop((r.browser, r.app));
        tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("the relay did not end").unwrap().unwrap();
    }

    /// Reads exactly `n` bytes, or fails the test after a while.
    async fn read_n(s: &mut (impl tokio::io::AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await.expect("bytes never came").unwrap();
        buf
    }

    /// Status code and reason of a Close frame, unmasking if needed.
    fn parse_close(frame: &[u8]) -> (bool, u16, String) {
        assert_eq!(frame[0], 0x88, "FIN + close: {frame:?}");
        let masked = frame[1] & 0x80 != 0;
        let len = (frame[1] & 0x7f) as usize;
        let (key, payload) = if masked { (frame[2..6].to_vec(), &frame[6..6 + len]) } else { (vec![0; 4], &frame[2..2 + len]) };
        let payload: Vec<u8> = payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect();
        (masked, u16::from_be_bytes([payload[0], payload[1]]), String::from_utf8(payload[2..].to_vec()).unwrap())
    }

    #[tokio::test]
    async fn stopping_closes_both_sides_with_going_away_but_never_inside_a_frame() {
        let mut r = relayed(false).await;

        // A masked binary frame of 200 bytes from the browser, sent in two
        // parts with the stop asked for in between.
        let mut frame = vec![0x82, 0x80 | 126, 0, 200, 9, 9, 9, 9];
        frame.extend(std::iter::repeat_n(0x55, 200));
        r.browser.write_all(&frame[..50]).await.unwrap();
        assert_eq!(read_n(&mut r.app, 50).await, frame[..50]);
        r.going_away.send_replace(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.browser.write_all(&frame[50..]).await.unwrap();
        // The frame arrives whole, and only then the Close.
        assert_eq!(read_n(&mut r.app, frame.len() - 50).await, frame[50..]);
        let close_len = 2 + 4 + 2 + GOING_AWAY_REASON.len();
        let (masked, code, reason) = parse_close(&read_n(&mut r.app, close_len).await);
        assert!(masked, "frames to the backend are masked, as a client's must be");
        assert_eq!((code, reason.as_str()), (1001, "proxy stopping; reconnect"));
        let (masked, code, _) = parse_close(&read_n(&mut r.browser, close_len - 4).await);
        assert!(!masked, "frames to the browser are not");
        assert_eq!(code, 1001);

        // Both answer with their own Close and hang up: the relay is done.
        r.browser.write_all(&close_frame(Some([1, 2, 3, 4]), SESSION_OVER, "bye")).await.unwrap();
        r.app.write_all(&close_frame(None, SESSION_OVER, "bye")).await.unwrap();
        let activity = r.activity.clone();
        hang_up(r).await;
        assert_eq!(activity.snapshot().websocket_messages, 1, "the frame counted once, the Close frames not at all");
    }

    /// Frames one after another, read from `s` until a Close frame;
    /// returns how many whole data frames came first and the Close's code
    /// (none if the stream ended without one: cut).
    async fn frames_until_close(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> (usize, Option<u16>) {
        let mut data_frames = 0;
        loop {
            let mut head = [0u8; 2];
            match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await.expect("stalled") {
                Ok(_) => {}
                Err(_) => return (data_frames, None),
            }
            let len = match head[1] & 0x7f {
                126 => u16::from_be_bytes(read_n(s, 2).await.try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(read_n(s, 8).await.try_into().unwrap()) as usize,
                n => n as usize,
            };
            let payload = read_n(s, len).await;
            if head[0] & 0x0f == 8 {
                return (data_frames, Some(u16::from_be_bytes([payload[0], payload[1]])));
            }
            data_frames += 1;
        }
    }

    #[tokio::test]
    async fn a_busy_relay_closes_after_the_frame_in_flight_instead_of_being_cut() {
        let mut r = relayed(false).await;
        // The app streams 1,000-byte frames, each write the end of one frame
        // and the start of the next: whatever has arrived never ends at a
        // frame's end, so only reading to the frame's end finds one.
        let mut frame = vec![0x82, 126, 0x03, 0xE8];
        frame.extend(std::iter::repeat_n(0x42, 1000));
        let (head, tail) = frame.split_at(502);
        let piece = [tail, head].concat();
        let (_, mut app_out) = r.app.into_split();
        app_out.write_all(head).await.unwrap();
        let writer = tokio::spawn(async move {
            while app_out.write_all(&piece).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        // A hundred whole frames through, then the stop.
        read_n(&mut r.browser, frame.len() * 100).await;
        r.going_away.send_replace(true);
        let (frames, code) = frames_until_close(&mut r.browser).await;
        assert_eq!(code, Some(1001), "a Close after {frames} more whole frames, not a cut");
        writer.abort();
    }

    /// The backend ends (swept, terminated, failed): its WebSockets are
    /// closed saying why, so the page can tell it from a network failure.
    #[tokio::test]
    async fn a_backend_that_ends_closes_its_websockets_saying_why() {
        let mut r = relayed(false).await;
        let why = format!("backend ending (idle): no connections for 300 s{}", " and more".repeat(20));
        r.activity.end(&why);
        r.activity.end("a second reason is not taken");
        let (_, code, reason) = parse_close(&read_n(&mut r.browser, 2 + 2 + MAX_REASON_BYTES).await);
        assert_eq!(code, 1000, "the session is over: no reconnecting");
        assert_eq!(reason, why[..MAX_REASON_BYTES], "cut to what a Close frame holds");
        let (masked, code, reason) = parse_close(&read_n(&mut r.app, 2 + 4 + 2 + MAX_REASON_BYTES).await);
        assert!(masked && code == 1000 && reason.starts_with("backend ending (idle)"), "{reason}");
        hang_up(r).await;
        // A relay that starts when its backend is already ending closes at once.
        let activity = Activity::new();
        activity.end("backend ending (requested)");
        let (relay_client, mut browser) = pair().await;
        let (relay_backend, _app) = pair().await;
        let (_going_away, signal) = watch::channel(false);
        let ending = activity.ending();
        tokio::spawn(async move { pump(relay_client, Bytes::new(), relay_backend, Bytes::new(), &activity, signal, ending).await });
        let (_, code, reason) = parse_close(&read_n(&mut browser, 2 + 2 + "backend ending (requested)".len()).await);
        assert_eq!((code, reason.as_str()), (1000, "backend ending (requested)"));
    }

    /// A backend that goes without a Close frame (a crash, a server that
    /// drops its sockets): the browser still gets one between frames,
    /// saying how the backend ended when that is known in time; inside a
    /// frame it is cut, as a Close there would corrupt the stream.
    #[tokio::test]
    async fn a_backend_that_goes_without_a_close_still_closes_the_browsers_side() {
        // It ends its stream after a whole frame; nothing says why.
        let mut r = relayed(false).await;
        r.app.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
        assert_eq!(read_n(&mut r.browser, 4).await, [0x81, 2, b'h', b'i']);
        let started = tokio::time::Instant::now();
        drop(r.app);
        let (masked, code, reason) = parse_close(&read_n(&mut r.browser, 2 + 2 + BACKEND_CUT_REASON.len()).await);
        assert_eq!((masked, code, reason.as_str()), (false, BACKEND_CUT, BACKEND_CUT_REASON));
        assert!(started.elapsed() >= ENDING_WAIT, "it waited for the backend's ending note");
        drop(r.browser);
        tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("the relay did not end").unwrap().unwrap();

        // It resets the connection, and its ending (a crash seen by the
        // runtime) comes a moment later: the browser is told that.
        let mut r = relayed(false).await;
        r.app.set_zero_linger().unwrap();
        drop(r.app);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let why = "backend ending (exited): exited with code 3";
        r.activity.end(why);
        let (_, code, reason) = parse_close(&read_n(&mut r.browser, 2 + 2 + why.len()).await);
        assert_eq!((code, reason.as_str()), (SESSION_OVER, why), "the session is over, and how");
        drop(r.browser);
        tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("the relay did not end").unwrap().unwrap();

        // The browser had asked to close and the backend hung up instead of
        // answering: the browser gets its answer.
        let mut r = relayed(false).await;
        let browsers_close = close_frame(Some([7, 7, 7, 7]), SESSION_OVER, "leaving");
        r.browser.write_all(&browsers_close).await.unwrap();
        assert_eq!(read_n(&mut r.app, browsers_close.len()).await, browsers_close);
        drop(r.app);
        let (_, code, reason) = parse_close(&read_n(&mut r.browser, 4).await);
        assert_eq!((code, reason.as_str()), (SESSION_OVER, ""));
        drop(r.browser);
        tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("the relay did not end").unwrap().unwrap();

        // It ends inside a frame: the browser gets what came, then the cut.
        let mut r = relayed(false).await;
        r.app.write_all(&[0x81, 10, b'h']).await.unwrap();
        drop(r.app);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.browser.read_to_end(&mut rest)).await.expect("never cut").unwrap();
        assert_eq!(rest, [0x81, 10, b'h'], "no Close inside the frame");
        drop(r.browser);
        tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("the relay did not end").unwrap().unwrap();
    }

    /// The proxy stopping while the backend ends too (`spawner dev` stops
    /// its backends with it): the backend's end is what the page is told,
    /// not to reconnect.
    #[tokio::test]
    async fn a_backend_ending_as_the_proxy_stops_closes_saying_the_session_is_over() {
        let why = "backend ending (requested): spawner is shutting down";
        for already_stopping in [false, true] {
            let (relay_client, mut browser) = pair().await;
            let (relay_backend, _app) = pair().await;
            let (going_away, signal) = watch::channel(already_stopping);
            let activity = Activity::new();
            activity.end(why);
            going_away.send_replace(true);
            let ending = activity.ending();
            tokio::spawn(async move { pump(relay_client, Bytes::new(), relay_backend, Bytes::new(), &activity, signal, ending).await });
            let (_, code, reason) = parse_close(&read_n(&mut browser, 2 + 2 + why.len()).await);
            assert_eq!((code, reason.as_str()), (SESSION_OVER, why));
        }
        // Both signals come to a relay already running, at the same moment
        // (this runtime has one thread: the relay sees both when it next
        // runs, and `select!` takes either first). Twenty times, so that a
        // relay that let the stop's 1001 win would be caught.
        for _ in 0..20 {
            let mut r = relayed(false).await;
            r.app.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
            assert_eq!(read_n(&mut r.browser, 4).await, [0x81, 2, b'h', b'i']);
            r.activity.end(why);
            r.going_away.send_replace(true);
            let (_, code, reason) = parse_close(&read_n(&mut r.browser, 2 + 2 + why.len()).await);
            assert_eq!((code, reason.as_str()), (SESSION_OVER, why));
            r.pump.abort();
        }
    }

    #[tokio::test]
    async fn a_close_reason_is_cut_at_a_characters_end() {
        let frame = close_frame(None, GOING_AWAY, &"é".repeat(100));
        let (_, _, reason) = parse_close(&frame);
        assert_eq!(reason, "é".repeat(61), "122 bytes: the 123rd would split a character");
    }

    #[tokio::test]
    async fn a_relay_that_starts_after_the_stop_closes_at_once() {
        let mut r = relayed(true).await;
        let (_, code, _) = parse_close(&read_n(&mut r.browser, 2 + 2 + GOING_AWAY_REASON.len()).await);
        assert_eq!(code, 1001);
        let (_, code, _) = parse_close(&read_n(&mut r.app, 2 + 4 + 2 + GOING_AWAY_REASON.len()).await);
        assert_eq!(code, 1001);
        hang_up(r).await;
    }

    #[tokio::test]
    async fn a_side_already_closing_gets_no_second_close() {
        let mut r = relayed(false).await;
        // The browser starts the closing handshake; the backend has not answered yet.
        let browsers_close = close_frame(Some([7, 7, 7, 7]), SESSION_OVER, "leaving");
        r.browser.write_all(&browsers_close).await.unwrap();
        assert_eq!(read_n(&mut r.app, browsers_close.len()).await, browsers_close, "relayed as sent");
        r.going_away.send_replace(true);
        let (_, code, _) = parse_close(&read_n(&mut r.browser, 2 + 2 + GOING_AWAY_REASON.len()).await);
        assert_eq!(code, 1001, "the browser still gets the backend side's Close");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.app.read_to_end(&mut rest)).await.expect("never ended").unwrap();
        assert!(rest.is_empty(), "the backend got nothing after the browser's Close: {rest:?}");
        hang_up(r).await;
    }

    /// A browser flooding a backend that reads nothing: the direction to
    /// the backend never reaches a frame's end, the one to the browser is
    /// idle. The browser still gets its Close (it was cut, 1006).
    #[tokio::test]
    async fn a_browser_in_front_of_a_backend_that_stopped_reading_still_gets_its_close() {
        let r = relayed(false).await;
        let (mut browser_in, mut browser_out) = r.browser.into_split();
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend(65_536u64.to_be_bytes());
        frame.extend([9, 9, 9, 9]);
        frame.extend(std::iter::repeat_n(0x55, 65_536));
        let flood = tokio::spawn(async move { while browser_out.write_all(&frame).await.is_ok() {} });
        // Until the flood stalls: the app's socket buffers are full, and
        // the relay holds bytes it cannot write.
        let mut relayed = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let more = r.activity.snapshot().bytes_in;
            relayed += more;
            if more == 0 && relayed > 0 {
                break;
            }
        }
        r.going_away.send_replace(true);
        let (frames, code) = frames_until_close(&mut browser_in).await;
        assert_eq!((frames, code), (0, Some(1001)), "a Close, not a cut");
        flood.abort();
        drop(r.app);
        tokio::time::timeout(Duration::from_secs(10), r.pump).await.expect("the relay did not end").unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_frame_that_never_ends_is_cut_after_a_while_instead_of_holding_the_stop() {
        let mut r = relayed(false).await;
        let frame_start = [0x82, 0x80 | 126, 0, 200, 9, 9, 9, 9, 0x55];
        r.browser.write_all(&frame_start).await.unwrap();
        assert_eq!(read_n(&mut r.app, frame_start.len()).await, frame_start);
        r.going_away.send_replace(true);
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.app.read_to_end(&mut rest)).await.expect("never cut").unwrap();
        assert!(rest.is_empty(), "no Close inside the frame: {rest:?}");
        assert!(started.elapsed() >= BOUNDARY_WAIT, "cut only after waiting for the frame's end");
        hang_up(r).await;
    }

    /// A browser that resets its connection, or ends its side, in front of
    /// a backend that neither reads nor writes (a push-only server with
    /// nothing to push): the relay ends, so its backend can be idle.
    #[tokio::test]
    async fn a_relay_ends_when_the_browser_resets_or_half_closes_before_a_silent_backend() {
        let r = relayed(false).await;
        r.browser.set_zero_linger().unwrap();
        drop(r.browser); // RST
        let ended = tokio::time::timeout(Duration::from_secs(5), r.pump).await.expect("a reset did not end the relay").unwrap();
        assert!(ended.is_err(), "ended by the reset");
        drop(r.app);

        let r = relayed(false).await;
        let mut browser = r.browser;
        browser.shutdown().await.unwrap(); // FIN; the app never answers
        let started = tokio::time::Instant::now();
        tokio::time::timeout(HALF_CLOSED_WAIT * 2, r.pump).await.expect("a half-closed relay waited for ever").unwrap().unwrap();
        assert!(started.elapsed() >= HALF_CLOSED_WAIT, "the backend was given its time to end its side");
        let mut rest = Vec::new();
        let mut app = r.app;
        app.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the backend saw the end of the stream");
    }

    #[tokio::test]
    async fn an_idle_relay_stays_small() {
        // Every open WebSocket holds one of these for its whole life (the
        // memory benchmark counts about 3.5 KiB per connection in all); a
        // buffer in any of its await points, even the closing one, would
        // be paid by every connection.
        let (relay_client, _browser) = pair().await;
        let (relay_backend, _app) = pair().await;
        let (_going_away, signal) = watch::channel(false);
        let activity = Activity::new();
        let relay = pump(relay_client, Bytes::new(), relay_backend, Bytes::new(), &activity, signal, activity.ending());
        // 1,264 bytes in the test profile on 2026-11-29; 3,248 with the
        // closing future not boxed.
        let size = std::mem::size_of_val(&relay);
        assert!(size < 2048, "the relay's state is {size} bytes");
    }
}
