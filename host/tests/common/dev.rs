//! Runs the real `spawner dev` binary for end-to-end tests, with a config
//! file in a temporary directory and a free port, and talks to it over
//! real HTTP and WebSocket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `spawner dev`.
pub struct Dev {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    /// Temporary directory holding the config (and any plugin files).
    pub dir: tempfile::TempDir,
    /// Everything it wrote to stderr so far (read it with `log_text`).
    log: Arc<Mutex<String>>,
    /// HTTP client (no cookies).
    pub http: reqwest::Client,
    /// The API token it was started with ([`Dev::start_with_api_token`]),
    /// which the API helpers below present.
    api_token: Option<String>,
}

/// The API token of [`Dev::start_with_api_token`].
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef";

/// Test defaults: sweep often, short timeouts. The default grace period is
/// long: it runs from ready, and on a busy machine the steps between ready
/// and a test's first request can take a second, so only tests about
/// idleness set a short one (in their create), at a point where that cannot
/// race. (Plugin deadlines are long in every test config: see
/// [`PATIENT_PLUGINS`].)
pub const FAST: &str = r#"
[sweeper]
interval-ms = 100
[backends]
grace-period-seconds = 30
stop-timeout-seconds = 2
"#;

/// `SPAWNER_PLUGIN_DEADLINE_MS` for every `spawner` a test starts: plugin
/// deadlines are wall-clock time, and no test that starts one is about them.
/// A call descheduled past the default 20 ms would turn a verdict (or a
/// plugin's load) into the fallback.
pub const PATIENT_PLUGINS: &str = "scheduler=5000,auth=5000,idle=5000";

/// A copy of the captured log. A test that panics while printing it must not
/// poison the lock for the thread still reading stderr.
fn copy(log: &Mutex<String>) -> String {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

impl Dev {
    /// Everything spawner wrote to stderr so far.
    pub fn log_text(&self) -> String {
        copy(&self.log)
    }

    /// Starts `spawner dev` with `config` (TOML) and extra flags.
    pub fn start(config: &str, args: &[&str]) -> Dev {
        Self::start_in(tempfile::tempdir().unwrap(), config, args)
    }

    /// Same, with an API token (required behind a reverse proxy), which
    /// the API helpers present.
    pub fn start_with_api_token(config: &str, args: &[&str]) -> Dev {
        let mut dev = Self::start(config, &[args, &["--api-token", API_TOKEN]].concat());
        dev.api_token = Some(API_TOKEN.into());
        dev
    }

    /// Same, in a prepared directory.
    pub fn start_in(dir: tempfile::TempDir, config: &str, args: &[&str]) -> Dev {
        Self::start_wrapped(&[], dir, config, args)
    }

    /// Same, run through `wrapper` (a command that ends by running the
    /// rest, as `env --default-signal=HUP` does), which keeps its pid.
    pub fn start_wrapped(wrapper: &[&str], dir: tempfile::TempDir, config: &str, args: &[&str]) -> Dev {
        let config_path = dir.path().join("spawner.toml");
        std::fs::write(&config_path, config).unwrap();
        let spawner = env!("CARGO_BIN_EXE_spawner");
        let (program, before) = match wrapper.split_first() {
            Some((program, rest)) => (*program, [rest, &[spawner]].concat()),
            None => (spawner, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(before)
            .args(["dev", "--listen", "127.0.0.1:0", "--config", config_path.to_str().unwrap()])
            .args(args)
            .env("SPAWNER_LOG", "spawner=debug,info")
            .env("SPAWNER_PLUGIN_DEADLINE_MS", PATIENT_PLUGINS)
            .env_remove("SPAWNER_API_TOKEN")
            .env_remove("SPAWNER_TOKEN_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawner binary runs");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("Spawner is listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.to_string());
                }
                let mut s = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("spawner dev did not start:\n{}", copy(&log));
            }
        };
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Dev { child: Some(child), base, dir, log, http, api_token: None }
    }

    /// The process id of `spawner dev`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for exit (up to 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM).0
    }

    /// Sends `signal` and waits for exit (up to 30 s); returns how it
    /// exited and how long that took.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("spawner did not exit after {signal:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// POST /api/v1/backends; returns (status, body).
    pub async fn create(&self, body: Value) -> (u16, Value) {
        self.create_as(body, self.api_token.as_deref()).await
    }

    /// The same, presenting `api_token` (a Spawner started with one).
    pub async fn create_as(&self, body: Value, api_token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.post(format!("{}/api/v1/backends", self.base)).json(&body);
        if let Some(t) = api_token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates and asserts success; returns (name, token).
    pub async fn create_ok(&self, body: Value) -> (String, String) {
        let (status, v) = self.create(body).await;
        assert!(status == 201 || status == 200, "create failed {status}: {v}");
        (v["backend"]["name"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    /// GET /api/v1/backends/{name}.
    pub async fn backend(&self, name: &str) -> Value {
        self.api(self.http.get(format!("{}/api/v1/backends/{name}", self.base))).send().await.unwrap().json().await.unwrap()
    }

    /// Polls until the backend's phase is `phase` (or panics after 30 s).
    pub async fn wait_phase(&self, name: &str, phase: &str) -> Value {
        let started = Instant::now();
        loop {
            let b = self.backend(name).await;
            if b["status"]["phase"] == phase {
                return b;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("{name} never reached {phase}; last: {b}\n--- spawner log ---\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for ready through the long-poll endpoint.
    pub async fn wait_ready(&self, name: &str) -> Value {
        let r = self.api(self.http.get(format!("{}/api/v1/backends/{name}/ready?timeout=30", self.base))).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "not ready: {v}\n{}", self.log_text());
        v
    }

    /// `request` with the API token, if this Spawner has one.
    pub fn api(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Two demo backends with a minute's grace (no test's steps outlast
    /// it), as (name, token) each, the first ready.
    pub async fn two_backends(&self) -> ((String, String), (String, String)) {
        let long = serde_json::json!({"template": "demo", "gracePeriodSeconds": 60});
        let first = self.create_ok(long.clone()).await;
        let second = self.create_ok(long).await;
        self.wait_ready(&first.0).await;
        (first, second)
    }

    /// GET through the proxy with a bearer token.
    pub async fn get(&self, name: &str, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}/p/{name}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// The demo backend's request counters.
    pub async fn stats(&self, name: &str, token: &str) -> Value {
        self.get(name, "/api/stats", Some(token)).await.json().await.unwrap()
    }

    /// A WebSocket to the backend, authenticated with `token`.
    pub async fn websocket(
        &self,
        name: &str,
        token: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/p/{name}/ws", self.base.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket connects");
        assert_eq!(resp.status().as_u16(), 101);
        ws
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pids of live processes whose environment has `SPAWNER_BACKEND_NAME=name`.
pub fn backend_pids(name: &str) -> Vec<i32> {
    processes_with_env(&format!("SPAWNER_BACKEND_NAME={name}"))
}

/// Pids of live (not zombie) processes whose environment contains `entry`.
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        if !zombie && env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}
