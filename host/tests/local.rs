//! `spawner dev` end to end: the real binary, real backend processes, real
//! HTTP and WebSocket clients.

mod common;

use std::time::{Duration, Instant};

use common::dev::{Dev, FAST, backend_pids, processes_with_env};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_lives_serves_http_and_websocket_and_is_swept_when_idle() {
    // As behind a TLS terminator (the flag overrides the config's "http").
    let dev = Dev::start_with_api_token(FAST, &["--forwarded-proto", "https"]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "owner": "alice", "gracePeriodSeconds": 5})).await;
    dev.wait_ready(&name).await;

    // HTTP through the proxy, with verified identity and no credentials.
    let r = dev.get(&name, "/headers", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-spawner-user"], serde_json::json!(["alice"]), "the token's user");
    assert_eq!(seen["headers"]["x-spawner-backend"], serde_json::json!([name]), "the backend routed to");
    assert!(seen["headers"].get("authorization").is_none(), "token forwarded: {seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], serde_json::json!(["https"]), "{seen}");

    // WebSocket echo through the proxy; while it is open the backend stays.
    let mut ws = dev.websocket(&name, &token).await;
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("".into()), "initial note");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("hello".into()));

    // Meanwhile: one process, and its stdout is captured (read
    // concurrently, so allow a moment).
    let pids = backend_pids(&name);
    assert_eq!(pids.len(), 1, "one process for {name}");
    let wanted = format!("stdout demo backend {name} serving a shared notepad");
    let mut logs = String::new();
    for _ in 0..100 {
        logs = dev.api(dev.http.get(format!("{}/api/v1/backends/{name}/logs", dev.base))).send().await.unwrap().text().await.unwrap();
        if logs.contains(&wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logs.contains(&wanted), "the backend's stdout is captured: {logs}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(dev.backend(&name).await["status"]["phase"], "ready", "an open WebSocket keeps the backend");
    assert_eq!(dev.backend(&name).await["openConnections"], 1);

    // Disconnect: the close handshake is answered through the proxy (a
    // clean close, not 1006), then swept after the grace period, with
    // reason idle.
    ws.close(None).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no close answer within 10 s");
    assert!(matches!(answer, Some(Ok(Message::Close(_)))), "{answer:?}");
    drop(ws);
    let ended = dev.wait_phase(&name, "terminated").await;
    assert_eq!(ended["status"]["reason"], "idle", "{ended}");
    assert!(ended["address"].is_null(), "its port may be another backend's now: {ended}");
    assert!(backend_pids(&name).is_empty(), "process {pids:?} still running");
    // The proxy says it is gone.
    assert_eq!(dev.get(&name, "/", Some(&token)).await.status(), 410);
    // And the metrics count how it ended.
    let metrics = dev.api(dev.http.get(format!("{}/metrics", dev.base))).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == r#"spawner_backends_ended_total{phase="terminated",reason="idle"} 1"#), "{metrics}");
    // Every phase has its series, before anything reached it too.
    assert!(metrics.lines().any(|l| l == r#"spawner_backends{phase="failed"} 0"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_foreign_and_expired_tokens_never_reach_the_backend() {
    let dev = Dev::start(FAST, &["--token-secret", "e2e-secret-0123456789abcdef"]);
    let ((name, token), (other, other_token)) = dev.two_backends().await;
    dev.wait_ready(&other).await;
    let before = dev.stats(&name, &token).await["requests"].as_u64().unwrap();

    assert_eq!(dev.get(&name, "/api/stats", None).await.status(), 401);
    assert_eq!(dev.get(&name, "/api/stats", Some(&other_token)).await.status(), 403);
    let expired = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["token", "mint", "--secret", "e2e-secret-0123456789abcdef", "--backend", &name, "--ttl", "-10"])
        .output()
        .unwrap();
    let expired = String::from_utf8(expired.stdout).unwrap();
    assert_eq!(dev.get(&name, "/api/stats", Some(expired.trim())).await.status(), 401);
    // Refused where it is, the token still in the URL: the page sends no
    // Referer that carries it.
    let r = dev.http.get(format!("{}/p/{name}/api/stats?token={}", dev.base, expired.trim())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get("referrer-policy").map(|v| v.to_str().unwrap()), Some("no-referrer"));
    let r = dev.http.get(format!("{}/p/no-such-backend/?token={}", dev.base, expired.trim())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers().get("referrer-policy").map(|v| v.to_str().unwrap()), Some("no-referrer"), "any answer at a token URL");
    // A client-sent identity header does not help either.
    let spoof = dev.http.get(format!("{}/p/{name}/api/stats", dev.base)).header("x-spawner-user", "admin").send().await.unwrap();
    assert_eq!(spoof.status(), 401);
    // The denied requests never arrived: only the stats calls themselves did.
    let after = dev.stats(&name, &token).await["requests"].as_u64().unwrap();
    assert_eq!(after, before + 1, "the backend saw a denied request");

    // WebSocket upgrades are checked too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = format!("{}/p/{name}/ws", dev.base.replace("http://", "ws://")).into_client_request().unwrap();
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // A token for a backend created well before this one is another
    // backend's (403, naming both), not "for an earlier backend of that
    // name" (401), which only a token for this name issued before it can be.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (later, _) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&later).await;
    let r = dev.get(&later, "/api/stats", Some(&token)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), format!("token is for backend {name}, not {later}\n"));
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A ready demo backend and a WebSocket to it, past its initial note.
async fn demo_with_websocket(dev: &Dev) -> (String, WebSocket) {
    let (name, token) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    let mut ws = dev.websocket(&name, &token).await;
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("".into()), "initial note");
    (name, ws)
}

/// The Close frame that ends `ws`, within 10 s; fails the test if it ends
/// without one.
async fn close_frame(ws: &mut WebSocket) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("never closed") {
            Some(Ok(Message::Close(frame))) => return frame.expect("a status"),
            Some(Ok(_)) => continue,
            other => panic!("ended without a Close frame: {other:?}"),
        }
    }
}

/// A backend that ends closes its WebSockets saying why (1000, "backend
/// ending (requested): …"), so its page can tell that from a network
/// failure; before, the page saw the connection cut (1006).
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_ends_closes_its_websockets_saying_why() {
    let dev = Dev::start(FAST, &[]);
    let (name, mut ws) = demo_with_websocket(&dev).await;
    let r = dev.http.delete(format!("{}/api/v1/backends/{name}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let close = close_frame(&mut ws).await;
    assert_eq!(u16::from(close.code), 1000, "the session is over, not a reason to reconnect: {close:?}");
    assert!(close.reason.starts_with("backend ending (requested)"), "{close:?}");
}

/// A backend that dies (killed here) cuts its connections itself, before
/// Spawner knows: the page still gets a Close frame saying the backend
/// exited, not the connection cut (1006).
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_dies_still_closes_its_websockets_saying_so() {
    let dev = Dev::start(FAST, &[]);
    let (name, mut ws) = demo_with_websocket(&dev).await;
    for pid in backend_pids(&name) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let close = close_frame(&mut ws).await;
    // 1000 and how it ended, once the exit is seen (within half a second,
    // locally); 1011 if the machine was too slow to see it by then.
    match u16::from(close.code) {
        1000 => assert!(close.reason.starts_with("backend ending (exited)"), "{close:?}"),
        1011 => assert_eq!(close.reason, "the backend closed the connection without a WebSocket Close"),
        _ => panic!("{close:?}"),
    }
    assert_eq!(dev.wait_phase(&name, "failed").await["status"]["reason"], "exited");
}

/// Rotating the token secret: the new one signs, the previous one still
/// opens what it signed, a third does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_still_opens_what_the_previous_one_signed() {
    const OLD: &str = "old-secret-0123456789abcdef";
    let dev = Dev::start(FAST, &["--token-secret", "new-secret-0123456789abcdef", "--previous-token-secret", OLD]);
    let (name, token) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), 200);
    let old = spawner::token::TokenKey::new(OLD.as_bytes()).unwrap();
    assert!(old.verify(&token).is_err(), "the API signs with the new secret");
    let mint = |secret: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
            .args(["token", "mint", "--secret", secret, "--backend", &name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(dev.get(&name, "/api/stats", Some(&mint(OLD))).await.status(), 200, "handed out before the rotation");
    assert_eq!(dev.get(&name, "/api/stats", Some(&mint("other-secret-0123456789abcdef"))).await.status(), 401);
}

/// The token cookie does not vouch for another backend's page: under
/// host routing, a sibling backend (the same site) may not open a
/// WebSocket or post as this backend's user; a token it sends itself
/// still works, and so do the backend's own pages and the deployment's
/// other origins. Client headers the backend could take for the proxy's
/// never arrive, underscore spellings included, and valid cookies for
/// other backends do not crowd this one's out.
#[tokio::test(flavor = "multi_thread")]
async fn cookies_do_not_vouch_for_other_backends_and_spoofed_headers_never_arrive() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dev = Dev::start(FAST, &["--host-domain", "apps.localhost"]);
    let ((name, token), (other, other_token)) = dev.two_backends().await;
    let port = dev.base.rsplit(':').next().unwrap().to_string();
    let host = format!("{name}.apps.localhost:{port}");
    let get = |path: &str| dev.http.get(format!("{}{path}", dev.base)).header("host", &host);
    let stats = async || get("/api/stats").bearer_auth(&token).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
    let before = stats().await["requests"].as_u64().unwrap();
    let cookie = format!("spawner-token={token}");
    let upgrade = |headers: &[(&str, &str)]| {
        let mut req = format!("{}/ws", dev.base.replace("http://", "ws://")).into_client_request().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        for (k, v) in headers {
            req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let sibling = format!("http://{other}.apps.localhost:{port}");
    let err = upgrade(&[("cookie", &cookie), ("origin", &sibling)]).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(denied) = err else { panic!("{err}") };
    assert_eq!(denied.status(), 401);
    let text = String::from_utf8_lossy(denied.body().as_deref().unwrap_or_default()).into_owned();
    assert!(text.contains(&format!("the spawner-token cookie does not count for a WebSocket from {sibling}")), "{text}");
    let post_from = |origin: &str| {
        dev.http.post(format!("{}/headers", dev.base)).header("host", &host).header("cookie", &cookie).header("origin", origin)
    };
    assert_eq!(post_from(&sibling).send().await.unwrap().status(), 401);
    // Origins that could carry a backend's page: the bare domain, any host
    // under it, a sandboxed frame's or a cross-origin redirect's `null`.
    for from in [format!("http://apps.localhost:{port}"), format!("http://x.{other}.apps.localhost:{port}"), "null".into()] {
        let err = upgrade(&[("cookie", &cookie), ("origin", &from)]).await.unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(denied) = err else { panic!("{from}: {err}") };
        assert_eq!(denied.status(), 401, "{from}");
    }
    // `null` from a sandboxed frame or a redirect through another origin
    // stays refused; the backend's own form under `Referrer-Policy:
    // no-referrer` posts with `null` too, and the browser says so.
    let null_post = |site: &str| post_from("null").header("sec-fetch-site", site).send();
    assert_eq!(null_post("cross-site").await.unwrap().status(), 401);
    assert_eq!(null_post("same-origin").await.unwrap().status(), 200, "its own form");
    // Its own pages, the deployment's other origins, and a token the
    // sibling's page sends itself.
    upgrade(&[("cookie", &cookie), ("origin", &format!("http://{host}"))]).await.expect("its own page");
    upgrade(&[("cookie", &cookie), ("origin", "http://app.localhost:3000")]).await.expect("the web app's page");
    upgrade(&[("authorization", &format!("Bearer {token}")), ("origin", &sibling)]).await.expect("a bearer token");
    let after = stats().await["requests"].as_u64().unwrap();
    assert_eq!(after, before + 5, "the same-origin post, the three upgrades let in and this call arrived, no denied request");

    // Valid cookies for another backend sent first (a page may set them on
    // longer paths) neither hide this backend's nor let anyone in.
    let crowd = vec![format!("spawner-token={other_token}"); 6].join("; ");
    assert_eq!(get("/headers").header("cookie", format!("{crowd}; {cookie}")).send().await.unwrap().status(), 200);
    assert_eq!(get("/headers").header("cookie", &crowd).send().await.unwrap().status(), 403);

    // What a backend could take for the proxy's word.
    let spoofing = get("/headers").bearer_auth(&token).header("x_spawner_user", "admin").header("x-forwarded-port", "443");
    let answer = spoofing.header("x_forwarded_for", "6.6.6.6").send().await.unwrap();
    let seen: serde_json::Value = answer.json().await.unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for spoofed in ["x_spawner_user", "x-forwarded-port", "x_forwarded_for"] {
        assert!(!headers.contains_key(spoofed), "{spoofed} arrived: {seen}");
    }
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.1"]));
}

/// The API on a listener of its own (`api-listen`): the web app's server
/// calls it there, with no token on loopback, and the main listener, which
/// browsers reach, serves backends and `/healthz` only: neither the API nor
/// `/metrics` nor the OpenAPI document is reachable there.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_can_have_a_listener_of_its_own() {
    let dev = Dev::start(FAST, &["--api-listen", "127.0.0.1:0"]);
    let api = api_listen_address(&dev).await;
    assert_ne!(api, dev.base);
    let created: serde_json::Value =
        dev.http.post(format!("{api}/api/v1/backends")).json(&json!({"template": "demo"})).send().await.unwrap().json().await.unwrap();
    let (name, token) = (created["backend"]["name"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert!(created["browserUrl"].as_str().unwrap().starts_with(&format!("{}/p/{name}/", dev.base)), "{created}");
    let ready = dev.http.get(format!("{api}/api/v1/backends/{name}/ready?timeout=30")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(dev.get(name, "/api/stats", Some(token)).await.status(), 200, "backends on the main listener");

    for path in ["/api/v1/backends", "/metrics", "/api/openapi.json"] {
        let r = dev.http.get(format!("{}{path}", dev.base)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the main listener");
        let text = r.text().await.unwrap();
        assert!(text.contains("are on another listener (api-listen)") && !text.contains(api.trim_start_matches("http://")), "{text}");
    }
    assert_eq!(dev.http.get(format!("{}/healthz", dev.base)).send().await.unwrap().status(), 200);
    assert_eq!(dev.http.get(format!("{api}/metrics")).send().await.unwrap().status(), 200);
    // The original API's links to itself name where it is served.
    let spawned: serde_json::Value =
        dev.http.post(format!("{api}/api/spawn")).json(&json!({"image": "demo"})).send().await.unwrap().json().await.unwrap();
    let ready_url = spawned["readyUrl"].as_str().unwrap();
    assert!(ready_url.starts_with(&format!("{api}/api/backend/")), "{spawned}");
    assert!(spawned["statusUrl"].as_str().unwrap().starts_with(&format!("{api}/api/backend/")), "{spawned}");
    assert!(spawned["url"].as_str().unwrap().starts_with(&format!("{}/p/", dev.base)), "{spawned}");
    let status = dev.http.get(spawned["statusUrl"].as_str().unwrap()).send().await.unwrap().status();
    assert_eq!(status, 200);
    let elsewhere = dev.http.get(format!("{api}/p/{name}/api/stats")).bearer_auth(token).send().await.unwrap();
    assert_eq!(elsewhere.status(), 404, "no backends there");
    let why = elsewhere.text().await.unwrap();
    assert!(
        why.contains("this is the API's own listener, api-listen: backends are served on the main listener, at their browserUrl"),
        "{why}"
    );
}

/// Where `spawner dev` said its API listens (`api-listen`).
async fn api_listen_address(dev: &Dev) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dev.log_text();
        if let Some(at) = log.lines().find_map(|l| l.trim().strip_prefix("Its API, /metrics and the OpenAPI document are on ")) {
            return at.split(' ').next().unwrap().to_string();
        }
        assert!(Instant::now() < until, "no API address said:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API's own listener has the main one's hygiene: a connection that
/// never finishes its request head is closed after the header-read
/// timeout, and connections past `max-connections` wait. Until 2026-12-02
/// it had neither, and slow clients could take every file descriptor
/// Spawner has, the proxy's and the backends' too.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_listener_of_its_own_cuts_slow_request_heads_and_caps_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = format!("{FAST}[proxy]\nheader-read-timeout-ms = 1000\nmax-connections = 2\n");
    let dev = Dev::start(&config, &["--api-listen", "127.0.0.1:0"]);
    let api = api_listen_address(&dev).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(api.trim_start_matches("http://")).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    // Both places taken: said, for this listener.
    let until = Instant::now() + Duration::from_secs(20);
    while !dev.log_text().lines().any(|l| l.contains("every connection slot is taken") && l.contains(r#"listener="api-listen""#)) {
        assert!(Instant::now() < until, "the cap was not reached:\n{}", dev.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A whole request is answered once the slow ones are cut.
    let answer = tokio::time::timeout(Duration::from_secs(20), dev.http.get(format!("{api}/healthz")).send()).await;
    assert_eq!(answer.expect("answered once a place was free").unwrap().status(), 200);
    // Counted, as on the main listener: the metric to alert on.
    let metrics = dev.http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    let reached = metrics.lines().find_map(|l| l.strip_prefix("spawner_proxy_connection_limit_reached_total ")).unwrap_or("0");
    assert!(reached.parse::<f64>().unwrap() >= 1.0, "{metrics}");
    for mut s in slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a request head that never ended held its connection open");
    }
}

/// Behind a trusted proxy (a TLS terminator, an Ingress controller) the
/// backend is told the client's address that proxy saw, not the proxy's
/// own; and never what the client itself wrote to the left of it.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_backends_are_told_the_clients_address() {
    let dev = Dev::start_with_api_token(&format!("{FAST}[proxy]\ntrusted-proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n"), &[]);
    let (name, token) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    let seen = |xff: Option<&'static str>| {
        let dev = &dev;
        let (name, token) = (&name, &token);
        async move {
            let mut r = dev.http.get(format!("{}/p/{name}/headers", dev.base)).bearer_auth(token);
            if let Some(v) = xff {
                r = r.header("x-forwarded-for", v);
            }
            let seen: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
            (seen["headers"]["x-forwarded-for"].clone(), seen["headers"]["x-real-ip"].clone())
        }
    };
    // The client forged 6.6.6.6; the terminator (trusted: loopback here)
    // appended the address it saw, then passed an internal hop.
    assert_eq!(seen(Some("6.6.6.6, 198.51.100.7, 10.1.2.3")).await, (json!(["198.51.100.7"]), json!(["198.51.100.7"])));
    assert_eq!(seen(None).await.0, json!(["127.0.0.1"]), "no header: the peer");
    // A backend's event stream is marked for nginx not to buffer.
    let events = dev.http.get(format!("{}/p/{name}/events?ticks=1", dev.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(events.headers().get("x-accel-buffering").map(|v| v.to_str().unwrap()), Some("no"));
}

/// With a host domain a backend is served on its own host only: not under
/// `/p/` (on the API's host, or the public URL's, its pages would share an
/// origin with the deployment's, from where a script could use every other
/// backend's cookie), and hosts under the domain that name no backend get
/// neither a backend nor the API.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_host_domain_backends_are_served_on_their_own_host_only() {
    let dev = Dev::start(FAST, &["--host-domain", "apps.localhost"]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&name).await;
    let get = |host: String, path: &str| dev.http.get(format!("{}{path}", dev.base)).header("host", host).bearer_auth(&token).send();
    let r = get("127.0.0.1".into(), &format!("/p/{name}/api/stats")).await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("backends are served on their own host here, not under /p/: open {name}.apps.localhost")), "{text}");
    assert!(!text.contains(&format!("{name}.apps.localhost:")), "the request named no port: {text}");
    // On the port the request came to: without it, the host would be port 80.
    let r = get("127.0.0.1:18087".into(), &format!("/p/{name}/")).await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("not under /p/: open {name}.apps.localhost:18087")), "{text}");
    assert_eq!(get("apps.localhost".into(), &format!("/p/{name}/api/stats")).await.unwrap().status(), 404);
    for host in [format!("x.{name}.apps.localhost"), ".apps.localhost".into()] {
        let r = get(host.clone(), "/api/v1/backends").await.unwrap();
        assert_eq!(r.status(), 404, "{host}: not the API");
        assert!(r.text().await.unwrap().contains("no backend is named by this host"), "{host}");
    }
    // The bare domain is not a backend's: the API may live there.
    assert_eq!(get("apps.localhost".into(), "/api/v1/backends").await.unwrap().status(), 200);
    // A fully qualified name is the same host.
    let r = get(format!("{name}.apps.localhost."), "/api/stats").await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // The request's target is the backend's path here: `*` is none (it
    // reached port 80 of the backend's host, identity headers and all),
    // two Host headers are refused, and `Connection: host` does not take
    // the host away from the backend.
    let raw = |target: &str, extra: &str| {
        let request = format!(
            "{target} HTTP/1.1\r\nHost: {name}.apps.localhost\r\n{extra}Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let base = dev.base.trim_start_matches("http://").to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(base).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await.expect("no answer").unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    for method in ["GET", "OPTIONS", "POST"] {
        let answer = raw(&format!("{method} *"), "").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{method} *: {answer}");
        assert!(answer.contains("the request target must be a path starting with /"), "{answer}");
    }
    let answer = raw("GET /headers", "Host: other.example\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("more than one Host header"), "{answer}");
    let answer = raw("GET /headers", "Connection: host\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!(r#""host":["{name}.apps.localhost"]"#)), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_with_one_key_start_one_process() {
    let dev = std::sync::Arc::new(Dev::start(FAST, &[]));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move { dev.create(json!({"template": "demo", "key": "doc-42", "gracePeriodSeconds": 30})).await }));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert!(status == 200 || status == 201, "{status}: {v}");
        created += usize::from(status == 201);
        names.insert(v["backend"]["name"].as_str().unwrap().to_string());
    }
    assert_eq!((names.len(), created), (1, 1), "{names:?}");
    let name = names.into_iter().next().unwrap();
    dev.wait_ready(&name).await;
    assert_eq!(processes_with_env("SPAWNER_BACKEND_KEY=doc-42").len(), 1);
}

/// Creates at the same moment are scheduled one at a time, each counting
/// the ones admitted before it: a quota per owner holds.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_for_one_owner_keep_to_the_quota() {
    let dev = std::sync::Arc::new(Dev::start(FAST, &["--plugin-settings", r#"scheduler={"max-per-owner": 2}"#]));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let dev = dev.clone();
            tokio::spawn(async move { dev.create_ok(json!({"template": "demo", "owner": "alice", "gracePeriodSeconds": 30})).await.0 })
        })
        .collect();
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.unwrap());
    }
    let mut ended = Vec::new();
    for name in &names {
        // Each create is decided right after its 201: rejected ones fail.
        let phase = loop {
            let b = dev.backend(name).await;
            let phase = b["status"]["phase"].as_str().unwrap().to_string();
            if phase != "pending" && phase != "scheduled" {
                break (phase, b["status"]["reason"].as_str().map(String::from));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ended.push(phase);
    }
    let rejected = ended.iter().filter(|(p, r)| p == "failed" && r.as_deref() == Some("rejected")).count();
    assert_eq!((ended.len() - rejected, rejected), (2, 6), "{ended:?}");
}

const FAILING: &str = r#"
[sweeper]
interval-ms = 100
[backends]
startup-timeout-seconds = 2
stop-timeout-seconds = 1
[templates.crash]
command = "sh"
args = ["-c", "sleep 0.2; echo request 1; echo request 2; echo about to fail >&2; sleep 0.1; seq 1 40; echo cleaning up; exit 3"]
[templates.deaf]
command = "sh"
args = ["-c", "printf 'starting\\rlistening on 127.0.0.1:3000'; exec sleep 600"]
[templates.missing]
command = "/nonexistent/program"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn crashes_silence_and_missing_programs_fail_with_the_reason() {
    let dev = Dev::start(FAILING, &[]);
    let (crash, _) = dev.create_ok(json!({"template": "crash"})).await;
    let (deaf, _) = dev.create_ok(json!({"template": "deaf"})).await;
    let (missing, _) = dev.create_ok(json!({"template": "missing"})).await;

    let c = dev.wait_phase(&crash, "failed").await;
    assert_eq!((c["status"]["reason"].as_str(), c["status"]["exitCode"].as_i64()), (Some("exited"), Some(3)), "{c}");
    // What it wrote last says why; the status carries it, what it wrote
    // to stderr in its last second last (two pipes' order is a guess).
    assert_eq!(c["status"]["message"], "exited on its own with code 3; its last output: 40 | cleaning up | about to fail", "{c}");
    let logs = dev.http.get(format!("{}/api/v1/backends/{crash}/logs", dev.base)).send().await.unwrap().text().await.unwrap();
    // The logs keep the order read, which is the order written for what
    // the reader saw written (stdout first when both were waiting).
    let at = |line: &str| logs.find(line).unwrap_or_else(|| panic!("{line:?} missing: {logs}"));
    assert!(at("stdout request 2") < at("stderr about to fail"), "{logs}");

    // What it writes shows before its newline (it writes none), as a
    // terminal shows it: the carriage return started the line over.
    let logs_of =
        async |name: &str| dev.http.get(format!("{}/api/v1/backends/{name}/logs", dev.base)).send().await.unwrap().text().await.unwrap();
    let shown = Instant::now() + Duration::from_secs(10);
    let mut logs = logs_of(&deaf).await;
    while !logs.contains("listening") && Instant::now() < shown {
        tokio::time::sleep(Duration::from_millis(50)).await;
        logs = logs_of(&deaf).await;
    }
    assert!(logs.trim_end().ends_with("stdout listening on 127.0.0.1:3000") && !logs.contains("starting"), "{logs}");
    let d = dev.wait_phase(&deaf, "failed").await;
    assert_eq!(d["status"]["reason"], "startup-timeout", "{d}");
    // Where Spawner looked, and what the backend said, side by side.
    let message = d["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("did not accept connections on 127.0.0.1:"), "{message}");
    assert!(message.ends_with("(its PORT; a server listening only on ::1, on another port or on a Unix socket is not seen) within 2 s; its last output: listening on 127.0.0.1:3000"), "{message}");
    // Failed is recorded before the process is stopped.
    let stopped_by = Instant::now() + Duration::from_secs(10);
    while !backend_pids(&deaf).is_empty() && Instant::now() < stopped_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(backend_pids(&deaf).is_empty(), "the silent process was left running");
    // The stop's exit code is recorded after the failure too (143: SIGTERM).
    let stopped = Instant::now() + Duration::from_secs(10);
    let mut d = dev.backend(&deaf).await;
    while d["status"]["exitCode"].is_null() && Instant::now() < stopped {
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = dev.backend(&deaf).await;
    }
    assert_eq!((d["status"]["phase"].as_str(), d["status"]["exitCode"].as_i64()), (Some("failed"), Some(143)), "{d}");

    let m = dev.wait_phase(&missing, "failed").await;
    assert!(m["status"]["message"].as_str().unwrap().contains("could not start: /nonexistent/program: No such file"), "{m}");

    // The long poll says why it will never be ready.
    let r = dev.http.get(format!("{}/api/v1/backends/{deaf}/ready", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 410);
}

/// Ended backends are kept for the retention, but no more than
/// `max-ended` of them: a web app creating and ending backends in a loop
/// does not grow Spawner without bound.
#[tokio::test(flavor = "multi_thread")]
async fn at_most_max_ended_ended_backends_are_kept() {
    let config = FAILING.replace("stop-timeout-seconds = 1", "stop-timeout-seconds = 1\nmax-ended = 2\nretention-seconds = 3600");
    let dev = Dev::start(&config, &[]);
    let (live, _) = dev.create_ok(json!({"template": "demo"})).await;
    let mut ended = Vec::new();
    for _ in 0..4 {
        let (name, _) = dev.create_ok(json!({"template": "crash"})).await;
        dev.wait_phase(&name, "failed").await;
        ended.push(name);
    }
    let mut expected = vec![live.clone(), ended[2].clone(), ended[3].clone()];
    expected.sort();
    // The last one is forgotten just after it is recorded as failed.
    let settled = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let list: Value = dev.http.get(format!("{}/api/v1/backends", dev.base)).send().await.unwrap().json().await.unwrap();
        let mut listed: Vec<String> = list.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect();
        listed.sort();
        if listed == expected || Instant::now() > settled {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed, expected, "the two newest ended ones, and the live one");
    let forgotten = dev.http.get(format!("{}/api/v1/backends/{}", dev.base, ended[0])).send().await.unwrap();
    assert_eq!(forgotten.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lifetime_limit_ends_a_busy_backend() {
    let dev = Dev::start(FAST, &[]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 600, "lifetimeLimitSeconds": 6})).await;
    dev.wait_ready(&name).await;
    let mut ws = dev.websocket(&name, &token).await;
    let busy = tokio::spawn(async move {
        for i in 0..200 {
            if ws.send(Message::Text(format!("keystroke {i}").into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ended = dev.wait_phase(&name, "terminated").await;
    assert_eq!(ended["status"]["reason"], "lifetime", "{ended}");
    busy.abort();
}

/// [`FAST`] with another stop timeout (checked: a test relying on a long
/// one must not pass with FAST's 2 s because FAST changed).
fn fast_with_stop_timeout(seconds: u32) -> String {
    let config = FAST.replace("stop-timeout-seconds = 2", &format!("stop-timeout-seconds = {seconds}"));
    assert_ne!(config, FAST, "FAST no longer sets stop-timeout-seconds = 2");
    config
}

/// A template whose process ignores SIGTERM, so it stops only by SIGKILL
/// after the stop timeout (FAST's 2 s): a backend that stays `terminating`.
const STUBBORN: &str =
    "\n[templates.stubborn]\ncommand = \"sh\"\nargs = [\"-c\", \"trap '' TERM; exec python3 -m http.server $PORT --bind 127.0.0.1\"]\n";

/// Spawner with three demo backends and one that ignores SIGTERM, all ready.
async fn dev_with_backends() -> (Dev, Vec<String>) {
    let config = format!("{FAST}{STUBBORN}");
    let dev = Dev::start(&config, &[]);
    let mut names = Vec::new();
    for template in ["demo", "demo", "demo", "stubborn"] {
        let (name, _) = dev.create_ok(json!({"template": template, "gracePeriodSeconds": 600})).await;
        dev.wait_ready(&name).await;
        assert!(!backend_pids(&name).is_empty(), "{name} is running");
        names.push(name);
    }
    (dev, names)
}

/// A user coming back to a document whose backend is stopping (swept, or
/// terminated a moment ago) gets a new session, not the ending one.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_whose_backend_is_stopping_starts_a_new_one() {
    // Stopping for 10 s: the reads below must see it still stopping on a
    // busy machine too.
    let dev = Dev::start(&format!("{}{STUBBORN}", fast_with_stop_timeout(10)), &[]);
    let create = json!({"template": "stubborn", "key": "doc-9"});
    let (first, token) = dev.create_ok(create.clone()).await;
    dev.wait_ready(&first).await;
    let r = dev.http.delete(format!("{}/api/v1/backends/{first}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(dev.backend(&first).await["status"]["phase"], "terminating", "it ignores SIGTERM for 10 s");
    // The proxy says it is stopping, with no promise that retrying helps.
    let r = dev.get(&first, "/", Some(&token)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none(), "{:?}", r.headers());
    assert_eq!(r.text().await.unwrap(), format!("backend {first} is stopping\n"));
    // No new tokens for it: they could never open anything.
    let r = dev
        .http
        .post(format!("{}/api/v1/backends/{first}/tokens", dev.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let text = r.text().await.unwrap();
    assert!(text.contains("stopping"), "{text}");
    // Waiting for it to be ready ends at once: it never will be (the wait
    // was the whole timeout, then 202 "keep waiting").
    let r = dev.http.get(format!("{}/api/v1/backends/{first}/ready?timeout=8", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("backend {first} is stopping and will not be ready again")), "{text}");
    // The original API calls it `Swept`, and its clients poll `ready` on 409.
    let r = dev.http.get(format!("{}/api/backend/{first}/ready", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 410);
    // Its `time` is when it began stopping (it was when it became ready).
    let original: serde_json::Value =
        dev.http.get(format!("{}/api/backend/{first}/status", dev.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(original["state"], "Swept");
    let at = |field: &str| original[field].as_str().unwrap_or_else(|| panic!("{field}: {original}")).parse::<jiff::Timestamp>().unwrap();
    let off = at("time").duration_since(at("terminatingAt")).abs();
    assert!(off < jiff::SignedDuration::from_micros(1), "{original}");
    assert!(at("time") != at("readyAt"), "{original}");
    // As Kubernetes wrote the original's event times: six fractional
    // digits, always (Python's `strptime` with `%f` takes no more).
    let time = original["time"].as_str().unwrap();
    let fraction = time.rsplit_once('.').map(|(_, f)| f).unwrap_or_default();
    assert!(fraction.len() == 7 && fraction.ends_with('Z') && fraction[..6].bytes().all(|b| b.is_ascii_digit()), "{time}");
    assert_eq!(dev.backend(&first).await["status"]["phase"], "terminating", "the answers above came while it was stopping");

    let (status, again) = dev.create(create.clone()).await;
    assert_eq!((status, &again["created"]), (201, &json!(true)), "{again}");
    let second = again["backend"]["name"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    dev.wait_ready(&second).await;
    dev.wait_phase(&first, "terminated").await;
    // And the key is the new one's, once the old one has ended too.
    let (status, third) = dev.create(create).await;
    assert_eq!((status, third["backend"]["name"].as_str()), (200, Some(second.as_str())), "{third}");
}

/// A wrapper script whose server saves its state on SIGTERM: the script
/// dies at once, and the server still gets the stop timeout to finish.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_backends_whole_group_gets_the_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved");
    // The server (a subshell that takes a second to save on SIGTERM) runs
    // beside the listener, which dies on SIGTERM as a wrapper would.
    let config = format!(
        "{}\n[templates.saver]\ncommand = \"sh\"\nargs = [\"-c\", \"(trap 'sleep 1; echo done > \\\"$OUT\\\"; exit 0' TERM; while :; do sleep 0.1; done) & exec python3 -m http.server $PORT --bind 127.0.0.1\"]\nenv = {{ OUT = \"{}\" }}\n",
        fast_with_stop_timeout(20),
        saved.display()
    );
    let dev = Dev::start(&config, &[]);
    let (name, _) = dev.create_ok(json!({"template": "saver"})).await;
    dev.wait_ready(&name).await;
    let r = dev.http.delete(format!("{}/api/v1/backends/{name}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let ended = dev.wait_phase(&name, "terminated").await;
    assert_eq!(
        std::fs::read_to_string(&saved).map_err(|e| format!("{e}: {ended}")),
        Ok("done\n".to_string()),
        "the server was killed with its wrapper"
    );
    assert_eq!((ended["status"]["reason"].as_str(), ended["status"]["exitCode"].as_i64()), (Some("requested"), Some(143)), "{ended}");
    assert!(backend_pids(&name).is_empty(), "nothing of it is left");
}

/// A process the backend started in a session of its own (`setsid`, as a
/// daemon does) is out of its process group, which stopping signals: it
/// is killed once the backend ends, not left running for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_left_the_backends_group_ends_with_it() {
    let config = format!(
        "{FAST}\n[templates.daemonizing]\ncommand = \"sh\"\nargs = [\"-c\", \"setsid sleep 300 & exec python3 -m http.server $PORT --bind 127.0.0.1\"]\n"
    );
    let dev = Dev::start(&config, &[]);
    let (name, _) = dev.create_ok(json!({"template": "daemonizing"})).await;
    dev.wait_ready(&name).await;
    let pids = backend_pids(&name);
    assert_eq!(pids.len(), 2, "the server and the daemon: {pids:?}");
    let r = dev.http.delete(format!("{}/api/v1/backends/{name}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    dev.wait_phase(&name, "terminated").await;
    assert!(backend_pids(&name).is_empty(), "{:?} still running", backend_pids(&name));
    assert!(dev.log_text().contains("outside its process group"), "{}", dev.log_text());
}

/// Closing the terminal (or SSH session) Spawner runs in sends SIGHUP:
/// a graceful stop, as SIGTERM's (it ended Spawner at once, and a backend's
/// `setsid` child outlived it); under `nohup` it stays ignored.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_stops_spawner_gracefully_unless_started_under_nohup() {
    // SIGHUP at its default, whatever this test inherited (a CI runner
    // under nohup passes it on ignored, and spawner would keep that).
    let config = format!("{FAST}{STUBBORN}");
    let mut dev = Dev::start_wrapped(&["env", "--default-signal=HUP"], tempfile::tempdir().unwrap(), &config, &[]);
    let mut names = Vec::new();
    for template in ["demo", "stubborn"] {
        let (name, _) = dev.create_ok(json!({"template": template, "gracePeriodSeconds": 600})).await;
        dev.wait_ready(&name).await;
        names.push(name);
    }
    let (status, _) = dev.signal_and_wait(nix::sys::signal::Signal::SIGHUP);
    assert!(status.success(), "spawner exited with {status}:\n{}", dev.log_text());
    assert!(dev.log_text().contains("shutting down: stopping every backend"), "{}", dev.log_text());
    for n in &names {
        assert!(backend_pids(n).is_empty(), "{n} survived spawner's SIGHUP");
    }

    let mut nohup = std::process::Command::new("nohup")
        .args([env!("CARGO_BIN_EXE_spawner"), "dev", "--listen", "127.0.0.1:0"])
        .env("SPAWNER_LOG", "spawner=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(nohup.stderr.take().unwrap());
    use std::io::BufRead as _;
    let mut lines = stderr.lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("spawner dev is ready")), "spawner dev did not start under nohup");
    let pid = nix::unistd::Pid::from_raw(nohup.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(nohup.try_wait().unwrap().is_none(), "SIGHUP stopped spawner under nohup");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(nohup.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_leaves_no_backend_running() {
    let (mut dev, names) = dev_with_backends().await;
    let status = dev.terminate();
    assert!(status.success(), "spawner exited with {status}");
    for n in &names {
        assert!(backend_pids(n).is_empty(), "{n} survived spawner's SIGTERM");
    }
}

/// A web app watching a backend when Spawner stops sees it stopping, with
/// why, and its end when it stops within the drain, as the demo backend
/// does (the stream was cut while the backend still showed ready).
#[tokio::test(flavor = "multi_thread")]
async fn a_status_stream_open_at_shutdown_ends_with_the_backends_last_status() {
    let mut dev = Dev::start(FAST, &[]);
    let (name, _) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    let mut stream = dev.http.get(format!("{}/api/v1/backends/{name}/events", dev.base)).send().await.unwrap().bytes_stream();
    let mut events = String::new();
    while !events.contains("\"phase\":\"ready\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("events").expect("the stream goes on");
        events.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let stopped = tokio::task::spawn_blocking(move || {
        let status = dev.terminate();
        (status, dev.log_text())
    });
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(40), stream.next()).await.expect("the stream ends") {
        match chunk {
            Ok(bytes) => events.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => break,
        }
    }
    let (status, log) = stopped.await.unwrap();
    assert!(status.success(), "spawner exited with {status}:\n{log}");
    assert!(events.contains("\"phase\":\"terminating\"") && events.contains("spawner is shutting down"), "{events}");
    let last = events.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("\"phase\":\"terminated\"") && last.contains("\"reason\":\"requested\""), "{events}");
}

/// Spawner's log is stderr, which can stop taking lines (a full disk, a log
/// shipper that went away): lines are dropped then, and Spawner goes on
/// serving (it aborted, every backend with it, at the first line it could
/// not write).
#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_written_stops_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spawner.toml");
    std::fs::write(&config, FAST).unwrap();
    // Every write to /dev/full fails with ENOSPC.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut spawner = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--config", config.to_str().unwrap()])
        .env("SPAWNER_LOG", "spawner=debug,info")
        .env("SPAWNER_PLUGIN_DEADLINE_MS", common::dev::PATIENT_PLUGINS)
        .env_remove("SPAWNER_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(spawner.try_wait().unwrap().is_none(), "spawner exited: {:?}", spawner.try_wait());
        assert!(started.elapsed() < Duration::from_secs(60), "spawner dev did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A create, its backend's start and a request through the proxy each
    // log lines (debug ones too).
    let created: Value =
        http.post(format!("{base}/api/v1/backends")).json(&json!({"template": "demo"})).send().await.unwrap().json().await.unwrap();
    let name = created["backend"]["name"].as_str().unwrap_or_else(|| panic!("{created}")).to_string();
    let ready = http.get(format!("{base}/api/v1/backends/{name}/ready?timeout=30")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let page = http.get(format!("{base}/p/{name}/")).bearer_auth(created["token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(spawner.try_wait().unwrap().is_none(), "still running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || spawner.wait().unwrap()).await.unwrap();
    assert!(status.success(), "a clean stop, not an abort: {status}");
    assert!(backend_pids(&name).is_empty(), "its backend stopped with it");
}

/// Ctrl-C stops backends gracefully; a second Ctrl-C does not wait for
/// one that ignores SIGTERM (here for the 20 s stop timeout).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_ctrl_c_kills_backends_at_once() {
    use nix::sys::signal::Signal;
    let mut dev = Dev::start(&format!("{}{STUBBORN}", fast_with_stop_timeout(20)), &[]);
    let (name, _) = dev.create_ok(json!({"template": "stubborn"})).await;
    dev.wait_ready(&name).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dev.pid() as i32), Signal::SIGINT).unwrap();
    let stopping = Instant::now() + Duration::from_secs(10);
    while !dev.log_text().contains("shutting down") && Instant::now() < stopping {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second signal within a second counts as the same keypress (a
    // process manager forwarding what the terminal sent too).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, took) = dev.signal_and_wait(Signal::SIGINT);
    assert!(status.success(), "spawner exited with {status}");
    assert!(took < Duration::from_secs(15), "waited {took:?}: the stop timeout, not the second Ctrl-C:\n{}", dev.log_text());
    assert!(dev.log_text().contains("second stop signal: killing every backend now"), "{}", dev.log_text());
    let gone_by = Instant::now() + Duration::from_secs(10);
    while !backend_pids(&name).is_empty() && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(backend_pids(&name).is_empty(), "the backend outlived spawner");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_open_websockets_saying_the_session_is_over() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let mut dev = Dev::start(FAST, &[]);
    let (name, token) = dev.create_ok(json!({"template":"demo"})).await;
    dev.wait_ready(&name).await;
    let mut ws = dev.websocket(&name, &token).await;
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("".into()), "relayed both ways");
    let stopped = tokio::task::spawn_blocking(move || dev.terminate());
    // The browser is told its session is over (1000, and why) before its
    // backend stops, rather than finding the connection cut (1006), or
    // being told to reconnect (1001, as `spawner proxy` does on
    // Kubernetes, where backends outlive it) to a backend that is gone.
    let close = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("no answer within 20 s");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Normal, "backend ending (requested): spawner is shutting down"))
        }
        other => panic!("expected a Close frame with status 1000, got {other:?}"),
    }
    assert!(stopped.await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_still_streaming_when_the_drain_ends_is_cut_then() {
    // A backend given 30 s to stop: a response it streams must not keep
    // flowing through the proxy all that time after the 2 s drain.
    let slow_stop = "[backends]\nstop-timeout-seconds = 30\n";
    let mut dev = Dev::start(slow_stop, &[]);
    let (name, token) = dev.create_ok(json!({"template":"demo"})).await;
    dev.wait_ready(&name).await;
    let url = format!("{}/p/{name}/events?ticks=600", dev.base);
    let mut stream = dev.http.get(url).bearer_auth(&token).send().await.unwrap().bytes_stream();
    stream.next().await.unwrap().unwrap();
    let stopped = tokio::task::spawn_blocking(move || dev.terminate());
    let ended = tokio::time::timeout(Duration::from_secs(15), async { while let Some(Ok(_)) = stream.next().await {} }).await;
    assert!(ended.is_ok(), "still streaming 15 s after SIGTERM");
    assert!(stopped.await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_spawner_leaves_no_backend_running() {
    let (mut dev, names) = dev_with_backends().await;
    // Spawner gets no chance to stop them: the reaper must (SIGTERM, then
    // SIGKILL after the 2 s stop timeout for the one that ignores SIGTERM).
    dev.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left: Vec<&String> = names.iter().collect();
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left.retain(|n| !backend_pids(n).is_empty());
    }
    assert!(left.is_empty(), "{left:?} outlived spawner's SIGKILL");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_token_names_are_used_by_proxy_api_and_auth() {
    let config = format!("{FAST}[proxy]\ntoken-cookie = \"session\"\ntoken-query-param = \"t\"\n");
    let dev = Dev::start(&config, &[]);
    let (status, created) = dev.create(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    assert_eq!(status, 201, "{created}");
    let name = created["backend"]["name"].as_str().unwrap().to_string();
    let browser_url = created["browserUrl"].as_str().unwrap().to_string();
    assert!(browser_url.contains("?t=st1."), "{browser_url}");

    // Opened at once (the backend may still be starting): the token moves
    // into the renamed cookie before any waiting page is shown.
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.get(&browser_url).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("session=st1."), "{cookie}");
    assert!(!r.headers()["location"].to_str().unwrap().contains("st1."));

    dev.wait_ready(&name).await;
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
    assert_eq!(browser.get(&browser_url).send().await.unwrap().status(), 200);
    let seen: serde_json::Value = browser.get(format!("{}/p/{name}/headers?keep=1", dev.base)).send().await.unwrap().json().await.unwrap();
    assert!(!seen.to_string().contains("st1."), "a token reached the backend: {seen}");
    assert_eq!(seen["uri"], "/headers?keep=1", "{seen}");
    // A stray token in a link leaves the address bar but does not replace
    // the cookie that works (it used to, locking the browser out).
    let stray = browser.get(format!("{}/p/{name}/headers?t=st1.not-a-token", dev.base)).send().await.unwrap();
    assert_eq!(stray.status(), 200, "let in by the cookie");
    assert!(!stray.url().as_str().contains("t=st1"), "{}", stray.url());
    assert_eq!(browser.get(format!("{}/p/{name}/headers", dev.base)).send().await.unwrap().status(), 200, "the cookie still works");
    // A POST is forwarded, not redirected; its answer keeps the URL's
    // token out of Referer headers.
    let token = created["token"].as_str().unwrap();
    let r = no_follow.post(format!("{}/p/{name}/headers?t={token}", dev.base)).send().await.unwrap();
    assert_eq!(r.headers().get("referrer-policy").map(|v| v.to_str().unwrap()), Some("no-referrer"), "{:?}", r.headers());
}

/// Under host routing the token redirect's target is a path of this host:
/// `//evil.example/` must not become a link to another site that any user
/// could send, with their own token, to anyone.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_redirect_stays_on_the_backends_host() {
    let dev = Dev::start(FAST, &["--host-domain", "apps.localhost"]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    for path in ["//evil.example/", "/\\evil.example/", "///evil.example/x"] {
        let r = dev
            .http
            .get(format!("{}{path}?token={token}", dev.base))
            .header("host", format!("{name}.apps.localhost"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let location = r.headers()["location"].to_str().unwrap();
        assert!(location.starts_with("/evil.example/") && !location.starts_with("//"), "{path}: {location}");
    }
    // Host names are case-insensitive, the backend's name included.
    dev.wait_ready(&name).await;
    let r = dev
        .http
        .get(format!("{}/api/stats", dev.base))
        .header("host", format!("{}.Apps.LocalHost:8080", name.to_uppercase()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// Under host routing over HTTPS the cookie is a `__Host-` one, which
/// browsers refuse from another host's page: a sibling backend's page
/// cannot plant its user's token in this backend's cookie.
#[tokio::test(flavor = "multi_thread")]
async fn host_routing_over_https_keeps_the_token_in_a_host_only_cookie() {
    let dev = Dev::start_with_api_token(FAST, &["--host-domain", "apps.localhost", "--forwarded-proto", "https"]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&name).await;
    let host = format!("{name}.apps.localhost");
    let get = |path: &str, cookie: Option<String>| {
        let r = dev.http.get(format!("{}{path}", dev.base)).header("host", &host);
        match cookie {
            Some(c) => r.header("cookie", c),
            None => r,
        }
        .send()
    };
    let r = get(&format!("/?token={token}"), None).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["set-cookie"].to_str().unwrap(),
        format!("__Host-spawner-token={token}; Path=/; HttpOnly; SameSite=Lax; Secure")
    );
    // The cookie a page of any host under the parent domain could set does
    // not count; the host-only one does.
    assert_eq!(get("/api/stats", Some(format!("spawner-token={token}"))).await.unwrap().status(), 401);
    assert_eq!(get("/api/stats", Some(format!("__Host-spawner-token={token}"))).await.unwrap().status(), 200);
    // Neither reaches the backend.
    let seen: serde_json::Value = get("/headers", Some(format!("__Host-spawner-token={token}; spawner-token={token}; theme=dark")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["cookie"], json!(["theme=dark"]), "{seen}");
}

/// A create-or-get that returns a live backend gives it a fresh grace
/// period: its new user is on the way, and a backend quiet for nearly its
/// grace period would otherwise be swept as they arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_or_get_of_a_live_backend_restarts_its_grace_period() {
    let dev = Dev::start(FAST, &[]);
    let spec = json!({"template": "demo", "key": "doc-7", "gracePeriodSeconds": 4});
    let (name, _) = dev.create_ok(spec.clone()).await;
    dev.wait_ready(&name).await;
    let created = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, again) = dev.create(spec).await;
    assert_eq!((status, again["backend"]["name"].as_str()), (200, Some(name.as_str())), "{again}");
    // Past the grace period counted from the create, within it counted
    // from the second call.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(created.elapsed())).await;
    assert_eq!(dev.backend(&name).await["status"]["phase"], "ready");
    assert_eq!(dev.wait_phase(&name, "terminated").await["status"]["reason"], "idle");
}

/// A CORS preflight, which browsers send without cookies or
/// `Authorization` before a cross-origin request with a token header or a
/// JSON body, is denied without a token, saying where the token goes; with
/// the token in its URL it reaches the backend (which answers it with its
/// own CORS policy), the token taken out.
#[tokio::test(flavor = "multi_thread")]
async fn a_cors_preflight_needs_the_token_in_its_url_and_is_told_so() {
    let dev = Dev::start(FAST, &[]);
    let (name, token) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    let preflight = |query: String| {
        dev.http
            .request(reqwest::Method::OPTIONS, format!("{}/p/{name}/headers{query}", dev.base))
            .header("origin", "http://127.0.0.1:5000")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let r = preflight(String::new()).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("put the token in the URL's token query parameter"));
    let r = preflight(format!("?token={token}")).await.unwrap();
    assert_eq!(r.status(), 200, "answered by the backend");
    let seen: Value = r.json().await.unwrap();
    assert_eq!((seen["method"].as_str(), seen["uri"].as_str()), (Some("OPTIONS"), Some("/headers")), "{seen}");
}

/// Another site's frame or subresource (an `EventSource`, an iframe) with
/// the token in its URL is answered where it is: the browser would refuse
/// the redirect's `SameSite=Lax` cookie, and the redirected request would
/// carry no token. A top-level navigation is still redirected.
#[tokio::test(flavor = "multi_thread")]
async fn another_sites_frames_keep_their_query_token() {
    let dev = Dev::start(FAST, &[]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&name).await;
    let url = format!("{}/p/{name}/headers?x=1&token={token}", dev.base);
    let get = |dest: &'static str| dev.http.get(&url).header("sec-fetch-site", "cross-site").header("sec-fetch-dest", dest).send();
    let r = get("iframe").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/headers?x=1", "the token does not reach the backend");
    assert_eq!(get("empty").await.unwrap().status(), 200);
    assert_eq!(get("document").await.unwrap().status(), 303);
    // Any page's subresource too, of any site: a `fetch` from the web app's
    // page on another port of the same host (same site) would fail at a
    // redirect without CORS headers.
    for (site, mode) in [("same-site", "cors"), ("same-origin", "no-cors"), ("same-origin", "cors")] {
        let r = dev.http.get(&url).header("sec-fetch-site", site).header("sec-fetch-mode", mode).header("sec-fetch-dest", "empty");
        let r = r.header("origin", "http://127.0.0.1:5000").send().await.unwrap();
        assert_eq!(r.status(), 200, "{site} {mode}");
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["uri"], "/headers?x=1", "the token does not reach the backend");
    }
    // The frame reloading itself (or the waiting page's refresh, or a page
    // of this origin loading it) keeps its token too: in another site's page
    // the cookie of a redirect would be refused, and the frame locked out.
    // It is given the cookie where it is, which a page of this origin's
    // frame keeps (the browser refuses it in another site's page).
    let reload = dev.http.get(&url).header("sec-fetch-site", "same-origin").header("sec-fetch-dest", "iframe").send().await.unwrap();
    assert_eq!(reload.status(), 200);
    assert_eq!(reload.headers()["referrer-policy"], "no-referrer");
    let cookie = reload.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&format!("spawner-token={token}; Path=/p/{name}/; HttpOnly; SameSite=Lax")), "{cookie}");
    // A frame a page of a sibling origin opens gets the cookie, as before.
    let same_site = dev.http.get(&url).header("sec-fetch-site", "same-site").header("sec-fetch-dest", "iframe").send().await.unwrap();
    assert_eq!(same_site.status(), 303);
    // Without the slash, the redirect that adds it keeps the query, token
    // included, and tells the browser not to send that URL on.
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.get(format!("{}/p/{name}?token={token}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("/p/{name}/?token={token}").as_str());
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
}

/// A frame answered where it is keeps the backend's own cookies beside
/// the token's (the token cookie replaced them all).
#[tokio::test(flavor = "multi_thread")]
async fn a_frames_token_cookie_goes_beside_the_backends_own() {
    let server = [
        "import http.server, os",
        "class H(http.server.BaseHTTPRequestHandler):",
        "    def do_GET(self):",
        "        self.send_response(200)",
        "        self.send_header('Set-Cookie', 'sid=1; Path=/')",
        "        self.send_header('Content-Length', '2')",
        "        self.end_headers()",
        "        self.wfile.write(b'ok')",
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()",
    ]
    .join("\n");
    let config = format!("{FAST}{}", python_template("cookies", &server));
    let dev = Dev::start(&config, &[]);
    let (name, token) = dev.create_ok(json!({"template": "cookies"})).await;
    dev.wait_ready(&name).await;
    let url = format!("{}/p/{name}/?token={token}", dev.base);
    let r = dev.http.get(&url).header("sec-fetch-site", "same-origin").header("sec-fetch-dest", "iframe").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookies: Vec<&str> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(cookies.iter().any(|c| c.starts_with("sid=1")), "{cookies:?}");
    assert!(cookies.iter().any(|c| c.starts_with("spawner-token=")), "{cookies:?}");
}

/// A Python backend for timing tests: `GET /slow` answers after 1.5 s,
/// any other GET never answers, and a POST answers with the length of the
/// body it read (chunked or not) once it has it all.
const SLOW_SERVER: &str = r#"
import http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def answer(self, body):
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith('/slow'):
            time.sleep(1.5)
            self.answer(b'slow')
        else:
            time.sleep(3600)
    def do_POST(self):
        data = b''
        if self.headers.get('Transfer-Encoding') == 'chunked':
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        self.answer(str(len(data)).encode())
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"#;

/// A backend that accepts a request and never answers: the browser gets a
/// 504 after `proxy.response-timeout-seconds`, and a WebSocket upgrade a
/// 502 as soon, instead of waiting for as long as it is willing to. The
/// time runs from the end of the upload: a slow one is not the backend's,
/// but one that stops moving for as long is given up.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_never_answers_times_out_but_a_slow_upload_does_not() {
    let config = format!("{FAST}[proxy]\nresponse-timeout-seconds = 1\n{}", python_template("mute", SLOW_SERVER));
    let dev = Dev::start(&config, &[]);
    let (name, token) = dev.create_ok(json!({"template": "mute"})).await;
    dev.wait_ready(&name).await;
    // Without the timeout these would wait for the client's own 20 s.
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let r = patient.get(format!("{}/p/{name}/", dev.base)).bearer_auth(&token).send().await.expect("an answer from the proxy");
    assert_eq!(r.status(), 504);
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("backend {name} did not answer within 1 s")), "{text}");

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/p/{name}/ws", dev.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let upgrade =
        tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::connect_async(req)).await.expect("an answer to the upgrade");
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 502),
        other => panic!("expected a 502, got {other:?}"),
    }
    // The operator's log says why the browser got its 504.
    let log = dev.log_text();
    assert!(log.contains("backend did not answer a request in time"), "{log}");

    // An upload of 2.5 s, the backend answering once it has it all.
    let chunks = futures_util::stream::iter(0..5).then(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1000]))
    });
    let r = patient
        .post(format!("{}/p/{name}/upload", dev.base))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("an answer to the upload");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(r.text().await.unwrap(), "5000");

    // An upload that stops moving is given up after as long: it held the
    // request, and its backend busy, for ever. Here the client went quiet:
    // its time ran out (408), not the backend's.
    let stalls = futures_util::stream::iter(0..4)
        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1 << 20])))
        .chain(futures_util::stream::pending());
    let r = patient
        .post(format!("{}/p/{name}/upload", dev.base))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stalls))
        .send()
        .await
        .expect("an answer to the stalled upload");
    assert_eq!(r.status(), 408);
    let text = r.text().await.unwrap();
    assert!(text.contains("the request's body stopped arriving for 1 s"), "{text}");
}

/// A request being forwarded when Spawner is asked to stop gets its
/// answer: its backend is stopped after it (it was stopped at once, and the
/// browser got a 502).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_at_shutdown_gets_its_answer() {
    let config = format!("{FAST}{}", python_template("slow", SLOW_SERVER));
    let mut dev = Dev::start(&config, &[]);
    let (name, token) = dev.create_ok(json!({"template": "slow"})).await;
    dev.wait_ready(&name).await;
    let url = format!("{}/p/{name}/slow", dev.base);
    let slow = tokio::spawn(dev.http.get(url).bearer_auth(&token).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = tokio::task::spawn_blocking(move || dev.terminate());
    let r = slow.await.unwrap().expect("an answer");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slow");
    assert!(stopped.await.unwrap().success());
}

/// A backend that answers 101 to a request that offered no upgrade: the
/// browser gets a 502 that says so (it got a bare 101, and the connection
/// closed).
#[tokio::test(flavor = "multi_thread")]
async fn a_switch_nobody_asked_for_is_a_bad_gateway() {
    let server = [
        "import http.server, os",
        "class H(http.server.BaseHTTPRequestHandler):",
        "    protocol_version = 'HTTP/1.1'",
        "    def do_GET(self):",
        "        self.send_response(101)",
        "        self.end_headers()",
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()",
    ]
    .join("\n");
    let config = format!("{FAST}{}", python_template("switcher", &server));
    let dev = Dev::start(&config, &[]);
    let (name, token) = dev.create_ok(json!({"template": "switcher"})).await;
    dev.wait_ready(&name).await;
    let r = dev.get(&name, "/switch", Some(&token)).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("backend {name} switched protocols unasked")), "{text}");
}

/// A template `name` that runs `script` with `python3 -c`.
fn python_template(name: &str, script: &str) -> String {
    format!("\n[templates.{name}]\ncommand = \"python3\"\nargs = [\"-c\", {}]\n", toml_string(script))
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A backend that does not know its prefix redirects to its own root
/// (Python's file server sends `/docs` to `/docs/`): the browser must stay
/// on the backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_backends_redirects_stay_under_its_prefix() {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("docs")).unwrap();
    std::fs::write(files.path().join("docs/index.html"), "the docs\n").unwrap();
    let serve = format!("exec python3 -m http.server $PORT --bind 127.0.0.1 --directory '{}'", files.path().display());
    let config = format!("{FAST}\n[templates.files]\ncommand = \"sh\"\nargs = [\"-c\", {serve:?}]\n");
    let dev = Dev::start(&config, &[]);
    let (name, token) = dev.create_ok(json!({"template": "files", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&name).await;
    let r = dev.get(&name, "/docs?x=1", Some(&token)).await;
    assert_eq!(r.status(), 301);
    // Python's server answers in HTTP/1.0; the proxy answers in its own
    // version, so the browser's connection keeps HTTP/1.1 and keep-alive.
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/p/{name}/docs/?x=1"));
    let r = dev.http.get(format!("{}{location}", dev.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "the docs\n".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_original_spawner_flow_works_as_its_clients_used_it() {
    let dev = Dev::start(FAST, &[]);
    let r = dev.http.post(format!("{}/api/spawn", dev.base)).json(&json!({"image": "demo", "gracePeriodSeconds": 3})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let spawned: serde_json::Value = r.json().await.unwrap();
    let name = spawned["name"].as_str().unwrap().to_string();
    let ready_url = spawned["readyUrl"].as_str().unwrap();
    assert!(spawned["statusUrl"].as_str().unwrap().ends_with(&format!("/api/backend/{name}/status")));

    // Poll ready until 302.
    let location = loop {
        let r = dev.http.get(ready_url).send().await.unwrap();
        match r.status().as_u16() {
            302 => break r.headers()["location"].to_str().unwrap().to_string(),
            409 => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("ready answered {other}"),
        }
    };
    assert!(location.contains("token="));

    // A browser: follows redirects, keeps cookies.
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let page = browser.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(!page.url().as_str().contains("token="), "the token stays in the address bar: {}", page.url());
    assert!(page.text().await.unwrap().contains("Shared notepad"));
    let stats: serde_json::Value = browser.get(format!("{}/p/{name}/api/stats", dev.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["name"], name.as_str());

    let status: serde_json::Value = dev.http.get(spawned["statusUrl"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "Ready");

    // Leave; after the grace period it is terminated as idle.
    drop(browser);
    let ended = dev.wait_phase(&name, "terminated").await;
    assert_eq!(ended["status"]["reason"], "idle");

    // The status stream replays the whole history and ends.
    let events = dev.http.get(format!("{}/api/backend/{name}/status/stream", dev.base)).send().await.unwrap().text().await.unwrap();
    // The original's state names and `time`, in unnamed events (an
    // `EventSource`'s `onmessage` gets them).
    for state in ["Submitted", "Scheduled", "Running", "Ready", "Swept"] {
        assert!(events.contains(&format!("\"state\":\"{state}\",\"time\":\"")), "{state} missing in {events}");
    }
    assert!(!events.contains("event:"), "{events}");
    let resumed = dev
        .http
        .get(format!("{}/api/v1/backends/{name}/events", dev.base))
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!resumed.contains("id: 4\n") && resumed.contains("id: 5\n"), "{resumed}");
    // Resuming after the last event of an ended backend: 204, so an
    // EventSource stops reconnecting instead of waiting on an empty stream.
    let last = resumed.lines().filter_map(|l| l.strip_prefix("id: ")).next_back().unwrap().to_string();
    for path in [format!("/api/v1/backends/{name}/events"), format!("/api/backend/{name}/status/stream")] {
        let r = dev.http.get(format!("{}{path}", dev.base)).header("last-event-id", &last).send().await.unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let r = dev.http.get(format!("{}{path}", dev.base)).header("last-event-id", "abc").send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}: an id no stream sent is not read as the start");
        // Nor one beyond the last: it would skip every event to come, the
        // end included.
        let ahead = (last.parse::<u64>().unwrap() + 1).to_string();
        let r = dev.http.get(format!("{}{path}", dev.base)).header("last-event-id", &ahead).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains(&format!("Last-Event-ID {ahead} is not an event of this stream (its last event is {last})")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_loaded_from_files_change_behaviour() {
    use spawner_test_plugins as built;
    let dir = tempfile::tempdir().unwrap();
    let secret = "files-secret-0123456789";
    let settings = dir.path().join("auth.json");
    std::fs::write(&settings, format!(r#"{{"secret":"{secret}", "owner-only": true}}"#)).unwrap();
    // Working hours of midnight to 1 a.m., in a time zone where it is now
    // about noon: the example then applies the grace period, whatever the
    // day and hour the test runs (a fixed UTC window failed at 00:27 UTC).
    let utc_hour = (spawner::token::now_unix() % 86_400 / 3600) as i64;
    let noon_offset_minutes = (12 - utc_hour) * 60;
    let args = [
        format!("auth={}", built::HMAC_HEADER_AUTH),
        format!("auth=@{}", settings.display()),
        format!("idle={}", built::BUSINESS_HOURS_IDLE),
        format!(r#"idle={{"start-hour": 0, "end-hour": 1, "utc-offset-minutes": {noon_offset_minutes}, "weekends": true}}"#),
    ];
    let dev = Dev::start_in(
        dir,
        FAST,
        &["--plugin", &args[0], "--plugin-settings", &args[1], "--plugin", &args[2], "--plugin-settings", &args[3]],
    );
    let (name, token) = dev.create_ok(json!({"template": "demo", "owner": "alice", "gracePeriodSeconds": 5})).await;
    dev.wait_ready(&name).await;

    // Capability tokens mean nothing to the HMAC plugin; signed headers do.
    assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), 401);
    use hmac::{Hmac, Mac};
    let expires = (spawner::token::now_unix() + 60).to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("alice:{expires}:{name}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let signed = dev
        .http
        .get(format!("{}/p/{name}/headers", dev.base))
        .header("x-auth-user", "alice")
        .header("x-auth-expires", &expires)
        .header("x-auth-signature", &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let seen: serde_json::Value = signed.json().await.unwrap();
    // The plugin only names the subject; the proxy makes it the header.
    assert_eq!(seen["headers"]["x-spawner-user"], serde_json::json!(["alice"]));
    let bob = dev
        .http
        .get(format!("{}/p/{name}/", dev.base))
        .header("x-auth-user", "bob")
        .header("x-auth-expires", &expires)
        .header("x-auth-signature", &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 401, "a signature for alice does not let bob in");

    // The idle example decides: outside its working hours, the grace period applies.
    let ended = dev.wait_phase(&name, "terminated").await;
    assert_eq!(ended["status"]["reason"], "idle");
    assert!(ended["status"]["message"].as_str().unwrap().contains("after hours"), "{ended}");
}

/// A plugin directory deleted and made again (`rm -rf plugins && mkdir
/// plugins`, a deploy script) is watched again: its watch went with it, and
/// no later file there was ever loaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_directory_deleted_and_made_again_is_watched_again() {
    use spawner_test_plugins as built;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let parent = root.join("site");
    let plugins = parent.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let auth = plugins.join("auth.wasm");
    std::fs::copy(built::FIXTURE_ALLOW, &auth).unwrap();
    // Settings given inline: a settings file beside the directory would
    // have its parent watched, which sees the directory come back.
    let (plugin_arg, settings_arg) = (format!("auth={}", auth.display()), r#"auth={"secret":"rebuilt-dir-secret-0123"}"#.to_string());
    let dev = Dev::start_in(dir, FAST, &["--plugin", &plugin_arg, "--plugin-settings", &settings_arg]);
    let (name, _) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    assert_eq!(dev.get(&name, "/api/stats", None).await.status(), 200, "the allow-all fixture decides");

    std::fs::remove_dir_all(&plugins).unwrap();
    refused_after(&dev, 0).await;
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(built::HMAC_HEADER_AUTH, &auth).unwrap();
    let status_becomes = |want: u16, what: &'static str| {
        let dev = &dev;
        let name = &name;
        async move {
            let until = Instant::now() + Duration::from_secs(20);
            while dev.get(name, "/api/stats", None).await.status() != want {
                assert!(Instant::now() < until, "{what}:\n{}", dev.log_text());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    status_becomes(401, "the new file was not loaded").await;

    // Made again at once, before the watch could see it gone: another
    // directory of the name, whose watch is not the first one's.
    std::fs::remove_dir_all(&plugins).unwrap();
    std::fs::create_dir(&plugins).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::copy(built::FIXTURE_ALLOW, &auth).unwrap();
    status_becomes(200, "the file in the directory made again at once was not loaded").await;

    // While the directory is gone its parent stands in; that one deleted
    // and made again (or moved away) too is watched anew.
    let before = refusals(&dev);
    std::fs::remove_dir_all(&plugins).unwrap();
    refused_after(&dev, before).await;
    std::fs::rename(&parent, root.join("site.old")).unwrap();
    std::fs::create_dir(&parent).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::create_dir(&plugins).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::copy(built::HMAC_HEADER_AUTH, &auth).unwrap();
    status_becomes(401, "the file in a directory whose parent was made again was not loaded").await;
}

/// An auth plugin out of time denies with 503 and `Retry-After`: a busy
/// machine can make a healthy plugin miss its deadline, and a client
/// should retry, not take it for a refusal (until 2026-12-01: 403).
#[tokio::test(flavor = "multi_thread")]
async fn an_auth_plugin_out_of_time_answers_503_retry_shortly() {
    use spawner_test_plugins as built;
    let plugin = format!("auth={}", built::FIXTURE_ALLOW);
    let dev = Dev::start(FAST, &["--plugin", &plugin]);
    let (name, _) = dev.create_ok(json!({"template": "demo"})).await;
    dev.wait_ready(&name).await;
    // The fixture loops on /spin, past the default 20 ms deadline.
    let r = dev.get(&name, "/spin", None).await;
    assert_eq!((r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string())), (503, Some("1".into())));
    let text = r.text().await.unwrap();
    assert!(text.contains("did not decide in time") && text.contains("retry shortly"), "{text}");
    assert_eq!(dev.get(&name, "/api/stats", None).await.status(), 200, "and it decides the next request");
}

/// Plugin reloads refused so far.
fn refusals(dev: &Dev) -> usize {
    dev.log_text().matches("plugin reload refused").count()
}

/// Waits until a plugin reload is refused beyond the `before` so far.
async fn refused_after(dev: &Dev, before: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while refusals(dev) == before {
        assert!(Instant::now() < until, "the deleted file was not noticed:\n{}", dev.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WebSocket is a client connection for `max-connections` and the
/// open-connections gauge for as long as it is open: hyper's connection
/// future ends at the upgrade, and both used to be given back then.
#[tokio::test(flavor = "multi_thread")]
async fn open_websockets_count_as_open_connections() {
    let dev = Dev::start(FAST, &[]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
    dev.wait_ready(&name).await;
    let open = || async {
        let m = dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap();
        let line = m.lines().find(|l| l.starts_with("spawner_proxy_open_connections ")).unwrap().to_string();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let before = open().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = dev.websocket(&name, &token).await;
        ws.next().await.unwrap().unwrap();
        sockets.push(ws);
    }
    assert_eq!(open().await, before + 3, "each open WebSocket is an open connection");
    for mut ws in sockets {
        ws.close(None).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open().await != before {
        assert!(std::time::Instant::now() < deadline, "closed WebSockets are given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every connection slot taken is said, in a warning and a counter: new
/// connections, the API's too, wait in the backlog until one closes, and
/// until 2026-12-01 nothing told an operator why the API hung.
#[tokio::test(flavor = "multi_thread")]
async fn every_connection_slot_taken_is_logged_and_counted() {
    let dev = Dev::start(&format!("{FAST}[proxy]\nmax-connections = 3\n"), &[]);
    let addr = dev.base.trim_start_matches("http://").to_string();
    let held: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let until = Instant::now() + Duration::from_secs(10);
    while !dev.log_text().contains("every connection slot is taken") {
        assert!(Instant::now() < until, "no warning:\n{}", dev.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dev.log_text().contains("max_connections=3"), "{}", dev.log_text());
    drop(held);
    let metrics = dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap();
    let reached = metrics.lines().find(|l| l.starts_with("spawner_proxy_connection_limit_reached_total ")).unwrap();
    assert!(reached.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1, "{reached}");
}

/// A `std` auth plugin writes to WASI streams when it prints or panics;
/// the proxy calls it on a tokio worker, where wasmtime-wasi's blocking
/// writes used to panic the request's task (the client saw the connection
/// close, with no answer). One that panics on every call is loaded with a
/// warning at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_std_auth_plugin_that_prints_or_panics_still_answers_through_the_proxy() {
    use spawner_test_plugins as built;
    let plugin = format!("auth={}", built::FIXTURE_FAIL_AUTH);
    for (settings, status) in [("print", 451), ("panic", 403)] {
        let settings = format!("auth={settings}");
        let dev = Dev::start(FAST, &["--plugin", &plugin, "--plugin-settings", &settings]);
        let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 60})).await;
        dev.wait_ready(&name).await;
        for _ in 0..3 {
            assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), status, "{settings}");
        }
        let metrics = dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap();
        let trapped = metrics.lines().find(|l| l.starts_with("spawner_plugin_failures_total{") && l.contains(r#"error="trap""#));
        match status {
            451 => assert_eq!(trapped, None, "printing is not a failure"),
            _ => assert!(trapped.is_some_and(|l| l.ends_with(" 3")), "each panic is a counted trap: {trapped:?}"),
        }
        // Loaded all the same (there is nothing else to keep), but the
        // start says the plugin fails its trial, as a reload would.
        let warned = dev.log_text().lines().any(|l| l.contains("may fail every call") && l.contains("panicked"));
        assert_eq!(warned, status == 403, "{settings}:\n{}", dev.log_text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_the_auth_plugin_file_keeps_open_websockets() {
    use spawner_test_plugins as built;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.wasm");
    let settings = dir.path().join("auth.json");
    std::fs::write(&auth, spawner::plugins::embedded::DEFAULT_AUTH).unwrap();
    std::fs::write(&settings, "{}").unwrap();
    let (a, s) = (format!("auth={}", auth.display()), format!("auth=@{}", settings.display()));
    let dev = Dev::start_in(dir, FAST, &["--plugin", &a, "--plugin-settings", &s]);
    let (name, token) = dev.create_ok(json!({"template": "demo", "gracePeriodSeconds": 600})).await;
    dev.wait_ready(&name).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut ws = dev.websocket(&name, &token).await;
        ws.next().await.unwrap().unwrap();
        sockets.push(ws);
    }

    // A broken file is refused and the current plugin keeps deciding.
    std::fs::write(&auth, b"not a component").unwrap();
    let metric = |m: &str, key: &str| {
        m.lines().find(|l| l.starts_with(key)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let loads = |m: &str| {
        (
            metric(m, r#"spawner_plugin_loads_total{kind="auth",result="loaded"}"#),
            metric(m, r#"spawner_plugin_loads_total{kind="auth",result="refused"}"#),
        )
    };
    let wait_for = |want: (u64, u64)| {
        let dev = &dev;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let m = dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap();
                let got = loads(&m);
                if got.0 >= want.0 && got.1 >= want.1 {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "plugin loads {got:?}, waiting for {want:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for((1, 1)).await;
    assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), 200, "the old plugin still decides");
    // One bad write is one refusal: reading the file for the reload must not
    // trigger another reload (five debounce periods later, still one).
    let settled = || {
        let dev = &dev;
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            loads(&dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap())
        }
    };
    assert_eq!(settled().await, (1, 1), "a refused file is tried once");

    // Now a real replacement: the HMAC example (settings first, then the file).
    std::fs::write(&settings, r#"{"secret":"swap-secret-0123456789"}"#).unwrap();
    std::fs::copy(built::HMAC_HEADER_AUTH, &auth).unwrap();
    wait_for((2, 1)).await;
    assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), 401, "the new plugin decides new requests");
    // The settings may have been tried on their own against the broken file
    // (one more refusal), but the new plugin is loaded once and stays.
    let (loaded, refused) = settled().await;
    assert_eq!(loaded, 2, "the new plugin is loaded once");
    assert!(refused <= 2, "no reload loop: {refused} refusals");

    // Every WebSocket opened before the swap still works.
    for (i, ws) in sockets.iter_mut().enumerate() {
        let text = format!("still here {i}");
        ws.send(Message::Text(text.clone().into())).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == text => break,
                Some(Ok(_)) => continue,
                other => panic!("websocket {i} dropped: {other:?}"),
            }
        }
    }

    // A deleted file is a refused reload too, counted as one; the plugin
    // stays.
    std::fs::remove_file(&auth).unwrap();
    wait_for((2, refused + 1)).await;
    assert_eq!(dev.get(&name, "/api/stats", Some(&token)).await.status(), 401, "the HMAC plugin still decides");
    assert!(dev.log_text().contains("plugin reload refused; keeping the current plugin"), "{}", dev.log_text());
    // Said once: other changes in its directory (a log written there) do
    // not refuse it again, which looped when the refusal's own log line was
    // such a change.
    for i in 0..3 {
        std::fs::write(auth.with_file_name(format!("other-{i}")), "x").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(settled().await, (2, refused + 1), "a missing file is refused once");
    // And when it is back, it is loaded.
    std::fs::copy(built::HMAC_HEADER_AUTH, &auth).unwrap();
    wait_for((3, refused + 1)).await;
}

/// The README's "Your own backend": examples/own-backend, as shipped, runs
/// its Python server under the name `counter`, reached through the proxy
/// with the verified user passed on, counting the requests it served.
#[tokio::test(flavor = "multi_thread")]
async fn the_own_backend_example_runs_as_the_readme_says() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/own-backend");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example.join("app.py"), dir.path().join("app.py")).unwrap();
    let config = std::fs::read_to_string(example.join("spawner.toml")).unwrap();
    let dev = Dev::start_in(dir, &config, &[]);
    let (status, created) = dev.create(json!({"template": "counter", "owner": "alice"})).await;
    assert_eq!(status, 201, "{created}");
    let name = created["backend"]["name"].as_str().unwrap().to_string();
    dev.wait_ready(&name).await;
    // As a browser opens the browserUrl: the redirect, then the cookie.
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let url = created["browserUrl"].as_str().unwrap();
    for served in [1, 2] {
        let r = browser.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"backend": name, "key": null, "user": "alice", "served": served}));
    }
    let logs = dev.http.get(format!("{}/api/v1/backends/{name}/logs", dev.base)).send().await.unwrap().text().await.unwrap();
    assert!(logs.contains("listening on 127.0.0.1:"), "unbuffered, its line is there: {logs}");
}
