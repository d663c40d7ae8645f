//! Per-backend activity meters, written by the proxy on every request,
//! connection and WebSocket frame, read by the sweeper.
//!
//! The proxy's hot path pays a few relaxed atomic increments (no lock;
//! only a backend's end, told to its WebSocket relays, goes through a
//! watch channel). Counters since the last evaluation are swapped to zero when
//! the sweeper takes a [`Snapshot`]; gauges (open connections, in-flight
//! requests) are read as they are.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the first use of this module (monotonic).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Activity of one backend.
#[derive(Debug)]
pub struct Activity {
    open_connections: AtomicU32,
    in_flight: AtomicU32,
    last_activity_ms: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    websocket_messages: AtomicU64,
    /// Why the backend is ending, once it is: its WebSockets are closed
    /// with it, so a page can tell "swept" from a network failure.
    ending: tokio::sync::watch::Sender<Option<Arc<str>>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open_connections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            websocket_messages: AtomicU64::new(0),
            ending: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// What the sweeper sees. On the wire between proxy replicas (JSON,
/// camelCase, `idleFor` in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// WebSockets open now (HTTP requests, streaming ones included, count
    /// in `in_flight_requests`).
    pub open_connections: u32,
    /// Requests in flight now.
    pub in_flight_requests: u32,
    /// Time since the last request, frame, connect or disconnect.
    #[serde(rename = "idleForMs", with = "millis")]
    pub idle_for: Duration,
    /// Bytes from clients since the previous snapshot.
    pub bytes_in: u64,
    /// Bytes to clients since the previous snapshot.
    pub bytes_out: u64,
    /// WebSocket messages (both ways) since the previous snapshot.
    pub websocket_messages: u64,
}

impl Snapshot {
    /// One backend's activity seen by two proxy replicas as one: gauges and
    /// counters add up, and it was last active when either saw it last.
    pub fn merge(self, other: Snapshot) -> Snapshot {
        Snapshot {
            open_connections: self.open_connections.saturating_add(other.open_connections),
            in_flight_requests: self.in_flight_requests.saturating_add(other.in_flight_requests),
            idle_for: self.idle_for.min(other.idle_for),
            bytes_in: self.bytes_in.saturating_add(other.bytes_in),
            bytes_out: self.bytes_out.saturating_add(other.bytes_out),
            websocket_messages: self.websocket_messages.saturating_add(other.websocket_messages),
        }
    }
}

/// `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Activity {
    /// A new meter, "last active" now (a fresh backend gets its full grace
    /// period before it can be idle).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks activity now.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Counts a connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ConnectionGuard(self.clone())
    }

    /// Counts an in-flight request until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
    }

    /// Adds bytes received from a client.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Adds bytes sent to a client.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Adds complete WebSocket messages.
    pub fn add_messages(&self, n: u64) {
        if n > 0 {
            self.websocket_messages.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Reads the gauges and takes (resets) the counters.
    pub fn snapshot(&self) -> Snapshot {
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        Snapshot {
            open_connections: self.open_connections.load(Ordering::Relaxed),
            in_flight_requests: self.in_flight.load(Ordering::Relaxed),
            idle_for: Duration::from_millis(now_ms().saturating_sub(last)),
            bytes_in: self.bytes_in.swap(0, Ordering::Relaxed),
            bytes_out: self.bytes_out.swap(0, Ordering::Relaxed),
            websocket_messages: self.websocket_messages.swap(0, Ordering::Relaxed),
        }
    }

    /// Puts back the counters of `taken` (a snapshot no plugin got to
    /// judge: its call failed), for the next snapshot. The idle clock is
    /// left as it is.
    pub fn give_back(&self, taken: &Snapshot) {
        self.bytes_in.fetch_add(taken.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(taken.bytes_out, Ordering::Relaxed);
        self.websocket_messages.fetch_add(taken.websocket_messages, Ordering::Relaxed);
    }

    /// The backend is ending, for `why` (the first reason given stays).
    pub fn end(&self, why: &str) {
        self.ending.send_if_modified(|ending| ending.is_none() && ending.replace(why.into()).is_none());
    }

    /// Why the backend is ending, once it is (for its WebSocket relays).
    pub fn ending(&self) -> tokio::sync::watch::Receiver<Option<Arc<str>>> {
        self.ending.subscribe()
    }

    /// Open connections now (for status views).
    pub fn open_connections(&self) -> u32 {
        self.open_connections.load(Ordering::Relaxed)
    }
}

/// Decrements the open-connection gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Activity>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_snapshots_reset_counters_not_gauges() {
        let a = Activity::new();
        let conn = a.connection();
        let req = a.request();
        a.add_in(10);
        a.add_out(20);
        a.add_messages(3);
        let s = a.snapshot();
        assert_eq!((s.open_connections, s.in_flight_requests, s.bytes_in, s.bytes_out, s.websocket_messages), (1, 1, 10, 20, 3));
        drop(req);
        let s = a.snapshot();
        assert_eq!((s.open_connections, s.in_flight_requests, s.bytes_in, s.websocket_messages), (1, 0, 0, 0));
        drop(conn);
        assert_eq!(a.snapshot().open_connections, 0);
    }

    #[test]
    fn replicas_snapshots_merge_and_travel_as_json() {
        let a =
            Snapshot { open_connections: 1, in_flight_requests: 0, idle_for: Duration::from_secs(9), bytes_in: 5, ..Default::default() };
        let b =
            Snapshot { open_connections: 0, in_flight_requests: 2, idle_for: Duration::from_secs(3), bytes_in: 7, ..Default::default() };
        let m = a.merge(b);
        assert_eq!((m.open_connections, m.in_flight_requests, m.idle_for, m.bytes_in), (1, 2, Duration::from_secs(3), 12));
        let json = serde_json::to_value(m).unwrap();
        assert_eq!(json["idleForMs"], 3000);
        assert_eq!(serde_json::from_value::<Snapshot>(json).unwrap(), m);
    }

    #[test]
    fn idle_time_grows_without_activity_and_resets_on_touch() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(a.snapshot().idle_for >= Duration::from_millis(1400));
        a.touch();
        // Far below what it was, with room for a busy machine's pauses.
        assert!(a.snapshot().idle_for < Duration::from_millis(1000));
    }
}
