//! The HTTP server: the main listener for the proxy (`/p/…`, or host
//! routing) and the API (everything else), HTTP/1.1 with upgrades; and
//! side listeners ([`serve_side`]: the API's own, metrics, peers) that
//! serve a router alone.
//!
//! Hygiene from the start, on every listener: a cap on open connections
//! (further ones wait in the backlog), a header-read timeout (slowloris)
//! and a bound on the request head size; on the main one, a listen backlog
//! sized for bursts. And a graceful stop ([`Stopping`]), so that a rolling
//! update of `spawner proxy` cuts no request short.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a request head.
    pub header_read_timeout: Duration,
    /// Largest request head, bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
}

impl Limits {
    /// For a side listener ([`serve_side`]: metrics, peers), whose few
    /// clients (Prometheus, the kubelet's probes, the other replicas) send
    /// a request head at once: fewer places, and at most
    /// [`SIDE_HEADER_READ_TIMEOUT`] to send the head, so that holding
    /// every place (and the health probes out) takes a client opening
    /// hundreds of connections a second.
    pub fn side(main: &crate::config::ProxyConfig) -> Self {
        let main = Limits::from(main);
        Limits {
            max_connections: SIDE_MAX_CONNECTIONS,
            header_read_timeout: main.header_read_timeout.min(SIDE_HEADER_READ_TIMEOUT),
            ..main
        }
    }
}

/// Open connections at most on a side listener for a few clients.
pub const SIDE_MAX_CONNECTIONS: usize = 1024;

/// Longest wait for a request head on a side listener for a few clients
/// (also how long an idle keep-alive connection stays open there).
pub const SIDE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

impl From<&crate::config::ProxyConfig> for Limits {
    fn from(c: &crate::config::ProxyConfig) -> Self {
        Limits {
            max_connections: c.max_connections,
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP: how `spawner dev`, `operator`
/// and `proxy` are told to stop. SIGHUP is what closing the terminal (or
/// the SSH session) Spawner runs in sends; its default action ended
/// Spawner at once, with no graceful stop. Under `nohup` (SIGHUP ignored
/// when Spawner starts) it stays ignored.
pub async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = if hangup_ignored() { None } else { Some(signal(SignalKind::hangup())?) };
    let hung_up = async {
        match &mut hangup {
            Some(h) => h.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hung_up => {}
    }
    Ok(())
}

/// Whether this process started with SIGHUP ignored (`nohup`), from the
/// kernel's `SigIgn` mask; a handler would undo that.
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (nix::sys::signal::Signal::SIGHUP as u64 - 1)) != 0)
}

/// TCP keepalive for the connections the proxy holds: a peer that vanished
/// without a word (a laptop put to sleep, a NAT entry expired, a node cut
/// off) is found within two minutes, instead of holding its connection, and
/// so its backend, open for ever: an open WebSocket counts as activity.
pub const KEEPALIVE: KeepaliveTimes = KeepaliveTimes { idle: Duration::from_secs(60), interval: Duration::from_secs(15), probes: 4 };

/// When keepalive probes go out, and how many go unanswered before the
/// connection is dropped.
#[derive(Debug, Clone, Copy)]
pub struct KeepaliveTimes {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Probes unanswered before the kernel gives up on the connection.
    pub probes: u32,
}

impl KeepaliveTimes {
    /// How long sent data may go unacknowledged before the connection is
    /// dropped (`TCP_USER_TIMEOUT`): as long as the probes take. Keepalive
    /// probes go out only on a quiet connection; a backend that keeps
    /// sending to a vanished browser would otherwise hold it for the
    /// kernel's retransmission limit (about 15 minutes).
    pub fn unacknowledged(&self) -> Duration {
        self.idle + self.interval * self.probes
    }
}

/// Turns [`KEEPALIVE`] on for `stream` (best effort: a socket that refuses
/// it works as before).
pub fn keep_alive(stream: &tokio::net::TcpStream) {
    let times = socket2::TcpKeepalive::new().with_time(KEEPALIVE.idle).with_interval(KEEPALIVE.interval).with_retries(KEEPALIVE.probes);
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_tcp_keepalive(&times);
    let _ = socket.set_tcp_user_timeout(Some(KEEPALIVE.unacknowledged()));
}

/// Binds `addr` with `backlog` pending connections.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What the server dispatches to.
pub struct App {
    /// The proxy; none on a side listener ([`serve_side`]), which serves
    /// `api` alone.
    proxy: Option<Arc<Proxy>>,
    /// The API router.
    api: Router,
    /// Where the main listener counts its connections, and every listener
    /// the times its connection slots were all taken.
    metrics: Arc<Metrics>,
    /// What the logs call this listener.
    name: &'static str,
    /// Set when the server has been asked to stop (see [`Stopping`]):
    /// `/healthz` then answers 503, for load balancers that probe the Pod.
    stopping: AtomicBool,
}

impl App {
    /// The main listener's parts, not stopping.
    pub fn new(proxy: Arc<Proxy>, api: Router, metrics: Arc<Metrics>) -> Self {
        App { proxy: Some(proxy), api, metrics, name: "listen", stopping: AtomicBool::new(false) }
    }

    /// A side listener's: `api` alone, under the flag `name`.
    fn side(api: Router, metrics: Arc<Metrics>, name: &'static str) -> Self {
        App { proxy: None, api, metrics, name, stopping: AtomicBool::new(false) }
    }

    fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_deref()
    }

    /// Where this listener's connections are counted: the main one's only
    /// (`spawner_proxy_connections` is the public's).
    fn counted(&self) -> Option<&Metrics> {
        self.proxy.is_some().then_some(&*self.metrics)
    }

    /// The proxy's, if it has one and it claims `req`.
    fn proxy_for(&self, req: &Request<Incoming>) -> Option<&Proxy> {
        self.proxy().filter(|p| p.claims(req))
    }

    async fn dispatch(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if !self.stopping.load(Ordering::Relaxed) {
            return self.route(req, peer).await;
        }
        // Stopping: fail the health check; refuse new WebSockets, which
        // would be cut at exit, so their clients go to another replica at
        // once; and close each connection after its response, so clients
        // reconnect elsewhere before the listener goes.
        let unavailable = |text: &'static str| {
            Response::builder()
                .status(http::StatusCode::SERVICE_UNAVAILABLE)
                .header(http::header::RETRY_AFTER, "1")
                .body(Body::from(text))
                .expect("static response")
        };
        let mut response = if crate::proxy::is_websocket(&req) {
            unavailable("this replica is stopping; connect again\n")
        } else if req.uri().path() == "/healthz" && self.proxy_for(&req).is_none() {
            unavailable("stopping\n")
        } else {
            self.route(req, peer).await
        };
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        response
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Some(proxy) = self.proxy_for(&req) {
            return proxy.handle(req, peer).await;
        }
        match self.api.clone().oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }
}

/// How a server stops once asked to. First it goes on accepting for
/// `delay`: Kubernetes takes moments to stop sending new connections to a
/// terminating Pod (the endpoint update travels to every node and load
/// balancer), and those would otherwise be refused. Meanwhile `/healthz`
/// answers 503 (for load balancers that probe the Pod themselves), each
/// response closes its connection, and new WebSockets are refused (503)
/// so they reconnect elsewhere. Then it stops accepting, asks every
/// connection to finish the request in flight and close (idle keep-alive
/// connections close at once), closes every WebSocket with status 1001
/// ("going away", so clients reconnect, through another replica), waits
/// up to `drain` for the WebSockets and the requests being forwarded to
/// backends, then runs the server's `then`, if any (where `spawner dev`
/// stops its backends, so that a status stream still open carries the
/// backend's `terminating`, and its end if it stops in time; a stream on
/// the API's own listener, which serves on until `then` is done, carries
/// both) while waiting
/// for what is still open up to the end of `drain` (or a second after
/// `then` started, if later); and returns once `then` is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopping {
    /// Accepting on, health check failing.
    pub delay: Duration,
    /// Waiting for requests in flight.
    pub drain: Duration,
}

/// One client connection's place under `max-connections`, and (on the main
/// listener) its count in `spawner_proxy_open_connections`; both are given
/// back when the last
/// holder drops it. The connection's task holds it, and so does each of
/// its requests (as an extension): a WebSocket relay takes its request's
/// and keeps it, so an upgraded connection, which outlives hyper's
/// connection future, still counts until the WebSocket closes.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<SlotInner>);

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlot").finish_non_exhaustive()
    }
}

struct SlotInner {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: Option<crate::metrics::Counted>,
}

impl ConnectionSlot {
    /// Takes `permit` for a connection just accepted, counting it open in
    /// `metrics`, if given.
    fn new(permit: tokio::sync::OwnedSemaphorePermit, metrics: Option<&Metrics>) -> Self {
        let open = metrics.map(|m| crate::metrics::Counted::new(&m.proxy.open_connections));
        ConnectionSlot(Arc::new(SlotInner { _permit: permit, _open: open }))
    }
}

/// [`serve`] in a task, until the returned sender is used (or dropped);
/// `then` runs once the WebSockets and forwarded requests are done (see
/// [`Stopping`]).
pub fn spawn(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    stopping: Stopping,
    then: Option<Then>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    (shutdown, tokio::spawn(serve(listener, app, limits, stop, stopping, then)))
}

/// Once `then` starts (backends stopping), how long the status streams
/// and requests still open get to end with them, past the drain.
const AFTER_THEN: Duration = Duration::from_secs(1);

/// Serves connections from `listener` until `shutdown` is sent (or its
/// sender dropped), then stops as `stopping` says.
async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    stopping: Stopping,
    then: Option<Then>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    // Sent once the drain is over: connections still open (a response
    // still streaming) are cut then, not left running until the process
    // exits, after the backends have been stopped under them.
    let (cut, cut_seen) = tokio::sync::watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let builder = Arc::new(builder);
    let stop_accepting = {
        let app = app.clone();
        async move {
            let _ = shutdown.await;
            app.stopping.store(true, Ordering::Relaxed);
            tokio::time::sleep(stopping.delay).await;
        }
    };
    tokio::pin!(stop_accepting);
    let accept_failures = crate::log_gate::LogGate::default();
    let limit_reached = crate::log_gate::LogGate::default();
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Every slot taken: new connections wait in the listen
                // backlog, the API's and health checks' too. Say so: until
                // 2026-12-01 they just hung, with nothing logged.
                app.metrics.proxy.connection_limit_reached.inc();
                if let Some(suppressed) = limit_reached.pass(std::time::Instant::now()) {
                    let also = if app.proxy.is_some() { " (the API's too, unless it has its own: api-listen)" } else { "" };
                    tracing::warn!(
                        listener = app.name,
                        max_connections = limits.max_connections,
                        suppressed,
                        "every connection slot is taken (`max-connections`); new connections to this listener{also} wait until one closes (`suppressed`: times not logged since the last line)"
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                    _ = &mut stop_accepting => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning,
                    // and say so once per period, not 20 times a second.
                    if let Some(suppressed) = accept_failures.pass(std::time::Instant::now()) {
                        tracing::warn!(listener = app.name, error = %e, suppressed, "accept failed (`suppressed`: failures not logged since the last line); retrying every 50 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop_accepting => break,
        };
        let _ = stream.set_nodelay(true);
        keep_alive(&stream);
        let (app, builder, mut closing, mut cut) = (app.clone(), builder.clone(), closing_seen.clone(), cut_seen.clone());
        if let Some(metrics) = app.counted() {
            metrics.proxy.connections.inc();
        }
        let slot = ConnectionSlot::new(permit, app.counted());
        tokio::spawn(async move {
            let svc_app = app.clone();
            let svc_slot = slot.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                let app = svc_app.clone();
                req.extensions_mut().insert(svc_slot.clone());
                async move { Ok::<_, Infallible>(app.dispatch(req, peer).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(connection);
            let asked_to_close = async move {
                // Err: the server is gone, which asks the same.
                let _ = closing.wait_for(|c| *c).await;
            };
            let ended = tokio::select! {
                r = connection.as_mut() => r,
                // Finish the request in flight, then close; unless the
                // drain ends first.
                () = asked_to_close => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = connection => r,
                        _ = cut.wait_for(|c| *c) => Ok(()),
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let proxy = app.proxy();
    if let Some(p) = proxy {
        p.close_websockets();
    }
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drain_ends = tokio::time::Instant::now() + stopping.drain;
    // WebSockets and forwarded requests first: browsers get 1001 from
    // here, and their answers, not a cut from a backend stopping under them.
    if let Some(p) = proxy {
        let _ = tokio::time::timeout_at(drain_ends, async { tokio::join!(p.websockets_closed(), p.forwarded_all()) }).await;
    }
    // Then `then` (the backends stopping), while what is still open drains
    // beside it: a status stream gets its backend's `terminating`, and its
    // end if the backend stops in time; a response a backend goes on
    // streaming while it takes its stop timeout is cut then.
    let window_ends = match &then {
        Some(_) => drain_ends.max(tokio::time::Instant::now() + AFTER_THEN),
        None => drain_ends,
    };
    let drain = async {
        let drained = tokio::time::timeout_at(window_ends, async {
            let _ = permits.acquire_many(all).await;
            if let Some(p) = proxy {
                p.websockets_closed().await;
            }
        })
        .await;
        // A WebSocket keeps its connection's permit, so `open` counts it too.
        let (open, websockets) = (limits.max_connections - permits.available_permits(), proxy.map_or(0, Proxy::open_websockets));
        if drained.is_err() && open > 0 {
            tracing::info!(listener = app.name, open, of_them_websockets = websockets, drain = ?stopping.drain, "drain over: cutting the connections still open");
        }
        let _ = cut.send(true);
    };
    tokio::join!(drain, async {
        if let Some(then) = then {
            then.await;
        }
    });
}

/// What a stopping server runs once its WebSockets and forwarded requests
/// are done (see [`Stopping`]).
pub type Then = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A background task that is aborted when this handle drops: for tasks that
/// must not outlive what started them (a start-up that fails half-way, a
/// stopped proxy).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` and serves `router` there in the background (what `flag`
/// names in the error and the logs): the side listeners (the API's own,
/// metrics, peers) beside the main one, with the main one's hygiene (a
/// cap on connections, a header-read timeout, a bound on the request
/// head): until 2026-12-02 they had none of it, and connections that never
/// finished their request head could take every file descriptor Spawner
/// has, the proxy's and backends' too. `metrics` counts the times every
/// place was taken. Returns the bound address and the task; dropping it
/// stops the listener and cuts its connections at once (no drain: the
/// process is exiting).
pub async fn serve_side(
    addr: SocketAddr,
    router: axum::Router,
    flag: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(SocketAddr, AbortOnDrop)> {
    let listener = bind_side(addr, flag).await?;
    serve_bound_side(listener, router, flag, limits, metrics)
}

/// The listener [`serve_side`] serves, bound, for a router that needs to
/// know its address first.
pub async fn bind_side(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} ({flag})"))
}

/// [`serve_side`] on a listener already bound.
pub fn serve_bound_side(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    flag: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(SocketAddr, AbortOnDrop)> {
    let bound = listener.local_addr()?;
    let app = Arc::new(App::side(router, metrics, flag));
    // Never sent: the listener stops when its task is aborted, and
    // `serve`'s channels, dropped with it, cut its connections.
    let (running, stop) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _running = running;
        serve(listener, app, limits, stop, Stopping::default(), None).await;
    });
    Ok((bound, AbortOnDrop(task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_kept_alive_with_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        keep_alive(&accepted);
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE.idle);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE.interval);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE.probes);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(120)), "also while data goes unanswered");
        assert!(!socket2::SockRef::from(&client).keepalive().unwrap(), "off unless asked for");
    }
}
