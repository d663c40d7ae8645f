//! The demo in a real browser (headless Chromium, driven through
//! chromedriver): `spawner dev` as the README's first command runs it, a
//! web app's server creates a backend, and the browser opens the URL it
//! was handed. The token in that URL becomes a cookie and leaves the
//! address bar; the page's WebSocket, authenticated by that cookie alone,
//! goes live through the proxy; what another client wrote shows in the
//! page, and what the browser types reaches the other client.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them; elsewhere `apt-get install chromium chromium-driver`, or set
//! `SPAWNER_CHROMIUM` and `SPAWNER_CHROMEDRIVER`). Without them the test
//! says so and passes, unless `SPAWNER_REQUIRE_BROWSER` is set, as CI sets
//! it, so that it cannot be skipped there unnoticed.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::dev::{Dev, FAST};
use fantoccini::{ClientBuilder, Locator};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// How long the browser may take to show something.
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver in its own process group, killed with the browsers it
/// started (even when the test fails half-way).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Chromium and chromedriver, if installed.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, default: &str| {
        let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
        path.exists().then_some(path)
    };
    match (find("SPAWNER_CHROMIUM", "/usr/bin/chromium"), find("SPAWNER_CHROMEDRIVER", "/usr/bin/chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var_os("SPAWNER_REQUIRE_BROWSER").is_some() => {
            panic!("SPAWNER_REQUIRE_BROWSER is set but Chromium is missing: apt-get install chromium chromium-driver")
        }
        _ => None,
    }
}

/// Starts chromedriver on a free port; returns it and its URL.
async fn chromedriver(path: &PathBuf) -> (Driver, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child =
        Command::new(path).arg(format!("--port={port}")).process_group(0).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("{url}/status")).await.is_ok_and(|r| r.status() == 200) {
            return (driver, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver never answered on {url}");
}

/// Polls `f` until it returns `Some`, or fails saying `what`.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the browser never {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_works_in_a_real_browser() {
    let Some((chromium, chromedriver_path)) = browser() else {
        eprintln!("SKIPPED: no Chromium (apt-get install chromium chromium-driver, or set SPAWNER_CHROMIUM and SPAWNER_CHROMEDRIVER)");
        return;
    };
    let dev = Dev::start(FAST, &[]);
    let created = dev.create(json!({"template": "demo", "owner": "alice", "gracePeriodSeconds": 60})).await.1;
    let name = created["backend"]["name"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap();
    let browser_url = created["browserUrl"].as_str().unwrap().to_string();
    dev.wait_ready(&name).await;

    // Another user of the note, through the proxy with a token.
    let mut other = dev.websocket(&name, token).await;
    assert_eq!(other.next().await.unwrap().unwrap(), Message::Text("".into()), "an empty note to start with");
    other.send(Message::Text("written by another client".into())).await.unwrap();

    let (_driver, driver_url) = chromedriver(&chromedriver_path).await;
    let profile = tempfile::tempdir().unwrap();
    let options = json!({
        "binary": chromium,
        // As root on a machine without a display or outside network.
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 format!("--user-data-dir={}", profile.path().display())],
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .expect("chromedriver starts Chromium");

    browser.goto(&browser_url).await.unwrap();
    // The proxy moved the token into a cookie and redirected to the clean URL.
    let at = browser.current_url().await.unwrap();
    assert_eq!(at.as_str(), format!("{}/p/{name}/", dev.base), "the token left the address bar");
    let title = browser.title().await.unwrap();
    assert!(title.contains(&name), "the demo page: {title}");

    // The page's own WebSocket goes live with the cookie alone, and shows
    // what the other client wrote.
    let state = browser.find(Locator::Id("state")).await.unwrap();
    until("went live", async || (state.text().await.ok()? == "live").then_some(())).await;
    let note = browser.find(Locator::Id("note")).await.unwrap();
    let shown = until("showed the note", async || {
        let value = note.prop("value").await.ok()??;
        (value == "written by another client").then_some(value)
    })
    .await;
    assert_eq!(shown, "written by another client");

    // What the browser types reaches the other client.
    note.send_keys(", and by the browser").await.unwrap();
    let received = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = other.next().await {
            if let Message::Text(t) = msg
                && t.as_str() == "written by another client, and by the browser"
            {
                return t.to_string();
            }
        }
        String::new()
    })
    .await
    .expect("the browser's typing never reached the other client");
    assert_eq!(received, "written by another client, and by the browser");
    let stats = dev.stats(&name, token).await;
    assert_eq!(stats["openWebsockets"], 2, "the browser's and the other client's: {stats}");
    browser.close().await.unwrap();
}
