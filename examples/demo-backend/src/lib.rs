//! Spawner's demo backend: a shared notepad.
//!
//! One process per backend keeps one note in memory; every browser tab on
//! the same backend edits it live over a WebSocket. It reads `PORT` (as
//! every Spawner backend does) and serves, relative to its prefix:
//!
//! - `GET /`: the notepad page;
//! - `GET /ws`: WebSocket; each text message replaces the note and is sent
//!   to every connected client, the sender included (so it doubles as echo);
//! - `GET /api/stats`: requests and WebSocket messages received (JSON), so a
//!   test can prove what reached it;
//! - `GET`, `POST` or `OPTIONS /headers`: the request line and headers it
//!   received (JSON);
//! - `GET /events`: a server-sent event stream of five ticks (or
//!   `?ticks=N`, up to 600), 100 ms apart (to check that streaming
//!   responses are not buffered, and that stopping waits for them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, broadcast};

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    websocket_messages: AtomicU64,
    open_websockets: AtomicU64,
}

struct Demo {
    name: String,
    note: Mutex<String>,
    updates: broadcast::Sender<String>,
    counters: Counters,
}

/// The demo's router (exposed for tests that embed it).
pub fn router(name: String) -> Router {
    let (updates, _) = broadcast::channel(64);
    let state = Arc::new(Demo { name, note: Mutex::new(String::new()), updates, counters: Counters::default() });
    Router::new()
        .route("/", get(page))
        .route("/ws", get(ws))
        .route("/api/stats", get(stats))
        .route("/headers", get(headers).post(headers).options(headers))
        .route("/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Pending connections the listener queues. `tokio::net::TcpListener::bind`
/// listens with a backlog of 128 (mio follows std), which a thousand
/// browsers connecting at once (or Spawner's proxy opening a connection for
/// each of a thousand WebSockets) overruns: the kernel drops the overflow
/// and those clients wait a second for a retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the demo on `addr` until SIGTERM/SIGINT.
pub async fn serve(addr: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = listen(addr)?;
    // Two lines on stdout, so a backend's log (the API's /logs) shows what a
    // backend's output looks like; nothing per request, to keep it cheap.
    println!("demo backend {name} serving a shared notepad on http://{addr}/");
    axum::serve(listener, router(name))
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
            println!("{signal}: closing connections and exiting");
        })
        .await
}

/// Entry point for `spawner demo-backend`: reads `PORT` (default 8080),
/// `HOST` (default 127.0.0.1: locally only Spawner's proxy reaches it; the
/// container image sets 0.0.0.0, since on Kubernetes the proxy connects to
/// the Pod's IP) and `SPAWNER_BACKEND_NAME`. Spawner's local mode never
/// sets `HOST`; a create that passes it in `env` chooses what the demo
/// listens on (0.0.0.0 would let others on the network reach the notepad
/// without the proxy's auth, and ::1 is not where local readiness probes).
pub fn main_from_env() -> std::io::Result<()> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let addr = listen_address(var("HOST").as_deref(), var("PORT").as_deref())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let name = var("SPAWNER_BACKEND_NAME").unwrap_or_else(|| "demo".into());
    // One thread: it starts in about a millisecond, and one note per
    // process needs no more.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve(addr, name))
}

/// The address to listen on, from `HOST` and `PORT` (either unset: its
/// default), or what is wrong with them.
pub fn listen_address(host: Option<&str>, port: Option<&str>) -> Result<SocketAddr, String> {
    let ip: std::net::IpAddr = match host {
        None => [127, 0, 0, 1].into(),
        Some(h) => h.parse().map_err(|_| format!("HOST={h:?} is not an IP address (e.g. 127.0.0.1, 0.0.0.0 or ::)"))?,
    };
    let port: u16 = match port {
        None => 8080,
        Some(p) => p.parse().map_err(|_| format!("PORT={p:?} is not a port number (0-65535)"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

async fn count(State(d): State<Arc<Demo>>, req: Request, next: Next) -> Response {
    d.counters.requests.fetch_add(1, Ordering::Relaxed);
    next.run(req).await
}

async fn page(State(d): State<Arc<Demo>>) -> Html<String> {
    Html(PAGE.replace("{{name}}", &d.name))
}

async fn stats(State(d): State<Arc<Demo>>) -> Json<serde_json::Value> {
    let c = &d.counters;
    Json(serde_json::json!({
        "name": d.name,
        "requests": c.requests.load(Ordering::Relaxed),
        "websocketMessages": c.websocket_messages.load(Ordering::Relaxed),
        "openWebsockets": c.open_websockets.load(Ordering::Relaxed),
        "note": *d.note.lock().await,
    }))
}

async fn headers(req: Request) -> Json<serde_json::Value> {
    let mut map = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in req.headers() {
        map.entry(k.to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    Json(serde_json::json!({ "method": req.method().as_str(), "uri": req.uri().to_string(), "headers": map }))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    ticks: Option<u32>,
}

async fn events(Query(q): Query<EventsQuery>) -> impl IntoResponse {
    let count = q.ticks.unwrap_or(5).min(600);
    let ticks = futures_util::stream::unfold(0u32, move |n| async move {
        if n >= count {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(Event::default().data(format!("tick {n}"))), n + 1))
    });
    Sse::new(ticks)
}

async fn ws(State(d): State<Arc<Demo>>, _headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| session(d, socket))
}

async fn session(d: Arc<Demo>, socket: WebSocket) {
    d.counters.open_websockets.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = socket.split();
    let mut updates = d.updates.subscribe();
    let current = d.note.lock().await.clone();
    if tx.send(Message::Text(current.into())).await.is_ok() {
        loop {
            tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        d.counters.websocket_messages.fetch_add(1, Ordering::Relaxed);
                        *d.note.lock().await = text.to_string();
                        let _ = d.updates.send(text.to_string());
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Answer the close handshake (the reply is queued
                        // until the sink is flushed), so the client sees a
                        // clean close rather than 1006.
                        let _ = tx.close().await;
                        break;
                    }
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                update = updates.recv() => match update {
                    Ok(text) => if tx.send(Message::Text(text.into())).await.is_err() { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
    }
    d.counters.open_websockets.fetch_sub(1, Ordering::Relaxed);
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Spawner demo: {{name}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}
textarea{width:100%;height:60vh;font:1rem/1.4 ui-monospace,monospace}#state{color:#666}</style></head>
<body><h1>Shared notepad <small id="state">connecting…</small></h1>
<p>Backend <code>{{name}}</code>: one process, one note in memory. Open this URL in another tab and type.</p>
<textarea id="note" placeholder="Type here…" disabled></textarea>
<script>
const note = document.getElementById('note'), state = document.getElementById('state');
const url = new URL('ws', location.href.split('?')[0].replace(/\/?$/, '/'));
url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
const ws = new WebSocket(url);
ws.onopen = () => { state.textContent = 'live'; note.disabled = false; };
ws.onclose = () => { state.textContent = 'disconnected'; note.disabled = true; };
// Every update comes back to everyone, its writer included, in order. Our
// own come back late when typing outpaces the round trip: applying one would
// roll the note back under the cursor, so each is only checked off.
const sent = [];
ws.onmessage = (e) => {
  const own = sent.indexOf(e.data);
  if (own >= 0) { sent.splice(0, own + 1); return; }
  if (e.data !== note.value) note.value = e.data;
};
note.oninput = () => { sent.push(note.value); if (sent.length > 256) sent.shift(); ws.send(note.value); };
</script></body></html>"#;

#[cfg(test)]
mod tests {
    use super::listen_address;

    #[test]
    fn listens_on_loopback_unless_host_says_otherwise() {
        assert_eq!(listen_address(None, None).unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(listen_address(Some("0.0.0.0"), Some("3000")).unwrap().to_string(), "0.0.0.0:3000");
        assert_eq!(listen_address(Some("::"), Some("3000")).unwrap().to_string(), "[::]:3000");
        assert!(listen_address(Some("example.com"), None).unwrap_err().contains("HOST"));
        assert!(listen_address(None, Some("70000")).unwrap_err().contains("PORT=\"70000\""));
    }
}
