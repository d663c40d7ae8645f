//! Local-mode benchmarks against a release `spawner dev` process:
//!
//! - spawn-to-ready of the demo backend, 200 sequential and 50 concurrent
//!   creates (server-side timestamps: `readyAt - createdAt`);
//! - memory per idle WebSocket: Spawner's RSS before and after opening
//!   10,000 WebSockets through the proxy;
//! - 1,000 simultaneous WebSocket connects: failures and connect latency.
//!
//! `cargo build --release -p spawner && cargo bench -p spawner --bench local`
//! (`-- spawn`, `-- websockets` or `-- burst` runs one part). Results and
//! goals are in bench/README.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// Anonymous resident memory (heap, stacks): what connections cost.
/// VmRSS would also count the binary's file-backed pages, which the kernel
/// pages in and out under the load of the benchmark itself.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("RssAnon:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Spawner {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn start_spawner() -> Spawner {
    let exe = std::env::current_exe().unwrap();
    let bin = std::env::var("SPAWNER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| exe.parent().unwrap().parent().unwrap().join("spawner"));
    assert!(bin.exists(), "{} missing: run `cargo build --release -p spawner` first", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    // The built-in `demo` template, as a newcomer gets it: the small
    // `spawner-demo-backend` beside `spawner` when it was built.
    std::fs::write(
        &config,
        "[backends]\nmax-backends = 2000\ngrace-period-seconds = 3600\nretention-seconds = 3600\n[sweeper]\ninterval-ms = 60000\n",
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .args(["dev", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .env("SPAWNER_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log_to = std::env::var("SPAWNER_BENCH_LOG").ok();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut log = log_to.and_then(|p| std::fs::File::create(p).ok());
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                use std::io::Write as _;
                let _ = writeln!(f, "{line}");
            }
            if let Some(url) = line.trim().strip_prefix("Spawner is listening on ")
                && let Some(tx) = tx.take()
            {
                tx.send(url.to_string()).unwrap();
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("spawner starts");
    Spawner { child, base, _dir: dir }
}

async fn create(http: &reqwest::Client, base: &str) -> Value {
    let r = http.post(format!("{base}/api/v1/backends")).json(&json!({"template": "demo"})).send().await.unwrap();
    assert!(r.status().is_success());
    r.json().await.unwrap()
}

async fn ready_ms(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let v: Value = http.get(format!("{base}/api/v1/backends/{name}/ready?timeout=60")).send().await.unwrap().json().await.unwrap();
    let created: jiff::Timestamp = v["status"]["createdAt"].as_str().unwrap().parse().unwrap();
    let ready: jiff::Timestamp = v["status"]["readyAt"].as_str().expect("ready").parse().unwrap();
    ready.duration_since(created).as_secs_f64() * 1000.0
}

async fn spawn_to_ready(s: &Spawner) {
    let http = reqwest::Client::new();
    let mut sequential = Vec::new();
    for _ in 0..200 {
        let v = create(&http, &s.base).await;
        let name = v["backend"]["name"].as_str().unwrap().to_string();
        sequential.push(ready_ms(&http, &s.base, &name).await);
        http.delete(format!("{}/api/v1/backends/{name}", s.base)).send().await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, base) = (http.clone(), s.base.clone());
        tasks.push(tokio::spawn(async move {
            let v = create(&http, &base).await;
            let name = v["backend"]["name"].as_str().unwrap().to_string();
            (ready_ms(&http, &base, &name).await, name)
        }));
    }
    let mut concurrent = Vec::new();
    for t in tasks {
        let (ms, name) = t.await.unwrap();
        concurrent.push(ms);
        http.delete(format!("{}/api/v1/backends/{name}", s.base)).send().await.unwrap();
    }
    println!("spawn-to-ready, demo backend (server-side createdAt -> readyAt)");
    println!("  200 sequential: p50 {:.2} ms  p99 {:.2} ms", percentile(&mut sequential, 0.5), percentile(&mut sequential, 0.99));
    println!("  50 concurrent:  p50 {:.2} ms  p99 {:.2} ms", percentile(&mut concurrent, 0.5), percentile(&mut concurrent, 0.99));
    println!("  goal: p50 < 5 ms, p99 < 15 ms");
}

async fn connect(
    url: &str,
    token: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}

async fn demo(s: &Spawner) -> (String, String) {
    let (url, token, _) = demo_with_address(s).await;
    (url, token)
}

/// A ready demo backend: its WebSocket URL through the proxy, a token, and
/// its own address (for the direct baseline).
async fn demo_with_address(s: &Spawner) -> (String, String, String) {
    let http = reqwest::Client::new();
    let v = create(&http, &s.base).await;
    let name = v["backend"]["name"].as_str().unwrap().to_string();
    ready_ms(&http, &s.base, &name).await;
    let b: Value = http.get(format!("{}/api/v1/backends/{name}", s.base)).send().await.unwrap().json().await.unwrap();
    let direct = format!("ws://{}/ws", b["address"].as_str().unwrap());
    (format!("{}/p/{name}/ws", s.base.replace("http://", "ws://")), v["token"].as_str().unwrap().to_string(), direct)
}

async fn websockets(s: &Spawner) {
    // Each proxied WebSocket takes two descriptors in Spawner; stay under
    // the hard limit (some sandboxes cap it at 20,000 and forbid raising it).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let n = 10_000usize.min((hard as usize).saturating_sub(1_000) / 2) / 200 * 200;
    if n < 10_000 {
        println!("note: the open-file hard limit is {hard}; measuring {n} WebSockets instead of 10,000");
    }
    let (url, token) = demo(s).await;
    // Warm up allocator arenas and the runtime with a few connections.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(connect(&url, &token).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(s.child.id());
    let mut open = Vec::with_capacity(n);
    let mut failures = 0;
    for batch in 0..n / 200 {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (u, t) = (url.clone(), token.clone());
            tasks.push(tokio::spawn(async move { connect(&u, &t).await }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(mut ws) => {
                    let _ = ws.next().await; // the initial note
                    open.push(ws);
                }
                Err(e) => {
                    failures += 1;
                    if failures < 5 {
                        eprintln!("batch {batch}: {e}");
                    }
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(s.child.id());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / open.len() as f64;
    println!("{} idle WebSockets through the proxy ({failures} failed to open)", open.len());
    println!("  spawner anonymous RSS {before} KiB -> {after} KiB: {:.0} bytes ({:.2} KiB) per connection", per, per / 1024.0);
    println!("  goal: under 10 KiB per connection (nginx: about 20 KB)");
    drop(open);
    drop(warm);
}

/// Opens `n` WebSockets at once; returns (connect times in ms, failures)
/// and keeps them open until all have connected.
async fn connect_all(n: usize, url: &str, token: &str) -> (Vec<f64>, usize) {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (u, t, b) = (url.to_string(), token.to_string(), start.clone());
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            let t0 = Instant::now();
            let r = connect(&u, &t).await;
            (t0.elapsed().as_secs_f64() * 1000.0, r)
        }));
    }
    let mut ms = Vec::new();
    let mut failures = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (took, r) = t.await.unwrap();
        match r {
            Ok(ws) => {
                ms.push(took);
                keep.push(ws);
            }
            Err(_) => failures += 1,
        }
    }
    (ms, failures)
}

async fn burst(s: &Spawner) {
    const N: usize = 1000;
    println!("{N} simultaneous WebSocket connects (client, proxy and backend share the machine)");
    for (label, through_proxy) in [("direct to the backend", false), ("through Spawner", true)] {
        // A fresh backend for each run, so neither sees the other's sessions.
        let (proxy_url, token, direct_url) = demo_with_address(s).await;
        let url = if through_proxy { proxy_url } else { direct_url };
        let (mut ms, failures) = connect_all(N, &url, &token).await;
        println!(
            "  {label:<24} failures {failures}; connect p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 0.99),
            percentile(&mut ms, 1.0)
        );
    }
    println!("  goal: 0 failures, p99 under 100 ms through Spawner");
}

fn main() {
    // 10,000 WebSockets need ~20,000 descriptors in the proxy and as many
    // here; children inherit the limit.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if which == "all" || which == "spawn" {
            let s = start_spawner();
            spawn_to_ready(&s).await;
        }
        if which == "all" || which == "burst" {
            let s = start_spawner();
            burst(&s).await;
        }
        if which == "all" || which == "websockets" {
            let s = start_spawner();
            websockets(&s).await;
        }
    });
}
