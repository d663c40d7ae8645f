//! The HTTP server: one listener for the proxy (`/p/…`, or host routing)
//! and the API (everything else), HTTP/1.1 with upgrades.
//!
//! Hygiene from the start: a listen backlog sized for bursts, a cap on open
//! connections (further ones wait in the backlog), a header-read timeout
//! (slowloris) and a bound on the request head size.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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

impl From<&crate::config::ProxyConfig> for Limits {
    fn from(c: &crate::config::ProxyConfig) -> Self {
        Limits {
            max_connections: c.max_connections,
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// Resolves on SIGINT or SIGTERM: how `spawner dev`, `operator` and
/// `proxy` are told to stop.
pub async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
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
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// The API router.
    pub api: Router,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl App {
    async fn dispatch(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if self.proxy.claims(&req) {
            return self.proxy.handle(req, peer).await;
        }
        match self.api.clone().oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Arc<App>, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let (app, builder) = (app.clone(), builder.clone());
        app.metrics.proxy.connections.inc();
        app.metrics.proxy.open_connections.inc();
        tokio::spawn(async move {
            let svc_app = app.clone();
            let service = service_fn(move |req| {
                let app = svc_app.clone();
                async move { Ok::<_, Infallible>(app.dispatch(req, peer).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            app.metrics.proxy.open_connections.dec();
            drop(permit);
        });
    }
}

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
/// names in the error): the side listeners (metrics, peers) beside the
/// main one. Returns the bound address and the task, stopped when dropped.
pub async fn serve_side(addr: SocketAddr, router: axum::Router, flag: &str) -> anyhow::Result<(SocketAddr, AbortOnDrop)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} ({flag})"))?;
    let bound = listener.local_addr()?;
    let what = flag.to_string();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, listener = %what, "listener stopped");
        }
    });
    Ok((bound, AbortOnDrop(task)))
}
