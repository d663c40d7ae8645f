//! Kubernetes mode end to end against a real control plane: the operator
//! runs a SessionLivedBackend's Pod, `spawner proxy` routes a request with
//! a capability token to it (and refuses one without), and when it falls
//! idle the sweeper's verdict reaches the operator, which stops the Pod and
//! records `terminated`, reason `idle`.
//!
//! kwok's Pods run nothing, so the test runs the demo backend on loopback
//! and reports that address as the Pod's IP, as a kubelet would report a
//! real one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::k8s::{
    WAIT, demo_backend, namespace, plugins, proxy_options, report_loopback_pod_ip, spawn_operator, until, until_status, until_status_within,
};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use spawner::k8s::cluster::TERMINATE_ANNOTATION;
use spawner::k8s::crd::SessionLivedBackend;
use spawner::k8s::serve::{self, ProxyOptions};
use spawner::lifecycle::{Phase, Reason};
use spawner::server::Stopping;
use spawner::token::{TokenKey, now_unix};

/// A backend `name` whose Pod (kwok's, which runs nothing) is the demo
/// backend on loopback: created, ready, its Pod IP recorded. The guard
/// stops the demo backend.
async fn demo_slab(
    client: &kube::Client,
    ns: &str,
    name: &str,
    grace_seconds: Option<u32>,
) -> (common::k8s::Demo, Api<SessionLivedBackend>) {
    let (demo, port) = demo_backend().await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), ns);
    let slab: SessionLivedBackend = serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "metadata": {"name": name},
        "spec": {"template": {"containers": [{"name": "app", "image": "example.invalid/notes:1"}]}, "httpPort": port, "gracePeriodSeconds": grace_seconds}
    }))
    .unwrap();
    slabs.create(&PostParams::default(), &slab).await.unwrap();
    until(&slabs, name, "became ready", |s| s.phase == Some(Phase::Ready)).await;
    report_loopback_pod_ip(client, ns, name).await;
    until(&slabs, name, "recorded the Pod IP", |s| s.pod_ip.as_deref() == Some("127.0.0.1")).await;
    (demo, slabs)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_with_a_token_then_swept_when_idle() {
    let (client, ns) = namespace("proxy").await;
    spawn_operator(&client, &ns, plugins(""));
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let proxy = serve::start(client.clone(), proxy_options(&ns, tokens.clone())).await.unwrap();

    let (_demo, slabs) = demo_slab(&client, &ns, "notes", Some(10)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let http = reqwest::Client::new();
    let url = format!("http://{}/p/notes/api/stats", proxy.addr);
    let token = tokens.mint("notes", Some("alice"), now_unix(), now_unix() + 600);
    let mut stats = None;
    for _ in 0..200 {
        // The proxy's cache follows the API server within moments.
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        if r.status() == 200 {
            stats = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        // Before the cache catches up: not there yet (404), not ready yet
        // (503), or ready at the address kwok gave the Pod before the test
        // reported loopback (502: nothing answers there).
        let status = r.status().as_u16();
        assert!(matches!(status, 404 | 502 | 503), "{status}: {}", r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = stats.expect("the proxy never reached the backend");
    assert_eq!(stats["requests"], 1, "the demo backend saw this one request");

    let refused = http.get(&url).send().await.unwrap();
    assert!(refused.status() == 401 || refused.status() == 403, "no token: {}", refused.status());
    let other = tokens.mint("someone-else", None, now_unix(), now_unix() + 600);
    assert_eq!(http.get(&url).bearer_auth(&other).send().await.unwrap().status(), 403, "a token for another backend");
    let r: serde_json::Value = http.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["requests"], 2, "refused requests never reached the backend");

    // Its Pod stops being Ready (its own probe fails, say): routed to no
    // more, with a 503 that says so, until it is Ready again.
    let readiness = |ready: &str| {
        Patch::Merge(
            serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": ready}, {"type": "ContainersReady", "status": ready}]}}),
        )
    };
    pods.patch_status("notes", &PatchParams::default(), &readiness("False")).await.unwrap();
    until_status_within(Duration::from_secs(10), "a Pod that is not Ready is not routed to", 503, &[200], async || {
        http.get(&url).bearer_auth(&token).send().await.unwrap()
    })
    .await;
    let text = http.get(&url).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("not answering (its Pod is not ready)"), "{text}");
    pods.patch_status("notes", &PatchParams::default(), &readiness("True")).await.unwrap();
    until_status_within(Duration::from_secs(10), "routed again once Ready", 200, &[503], async || {
        http.get(&url).bearer_auth(&token).send().await.unwrap()
    })
    .await;

    // Idle for the grace period: the sweeper condemns it, the operator stops it.
    let ended = until(&slabs, "notes", "was terminated", |s| s.phase == Some(Phase::Terminated)).await;
    let status = ended.status.as_ref().unwrap();
    assert_eq!(status.reason, Some(Reason::Idle), "{status:?}");
    assert!(ended.metadata.annotations.as_ref().unwrap().contains_key(TERMINATE_ANNOTATION));
    let pod_gone = tokio::time::timeout(WAIT, await_condition(pods.clone(), "notes", |p: Option<&Pod>| p.is_none())).await;
    assert!(pod_gone.is_ok(), "the idle backend's Pod was never deleted");
    // The proxy's cache may still hold it as ready with a termination
    // requested (200: the demo backend still runs) or terminating (503),
    // for moments: not for seconds.
    let within = Duration::from_secs(10);
    until_status_within(within, "an ended backend is gone", 410, &[200, 503], async || {
        http.get(&url).bearer_auth(&token).send().await.unwrap()
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_fails_the_health_check_first_and_lets_requests_in_flight_finish() {
    let (client, ns) = namespace("proxy-stop").await;
    spawn_operator(&client, &ns, plugins(""));
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    // A delay long enough for the three requests made during it, on a busy
    // machine too.
    let stopping = Stopping { delay: Duration::from_secs(10), drain: Duration::from_secs(30) };
    let proxy = serve::start(client.clone(), ProxyOptions { stopping, ..proxy_options(&ns, tokens.clone()) }).await.unwrap();
    let addr = proxy.addr;

    let (_demo, _slabs) = demo_slab(&client, &ns, "stream", None).await;

    let http = reqwest::Client::new();
    let token = tokens.mint("stream", None, now_unix(), now_unix() + 600);
    let stats = format!("http://{addr}/p/stream/api/stats");
    for _ in 0..200 {
        if http.get(&stats).bearer_auth(&token).send().await.unwrap().status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(http.get(format!("http://{addr}/healthz")).send().await.unwrap().status(), 200);

    // A WebSocket open before the stop.
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _, protocol::frame::coding::CloseCode};
    let mut req = format!("ws://{addr}/p/stream/ws").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.expect("a WebSocket before the stop");
    // (The demo backend sends the notepad first, then each edit back.)
    let first = tokio::time::timeout(WAIT, socket.next()).await.expect("no notepad").unwrap().unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), "", "the empty notepad");
    socket.send(Message::text("before the stop")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, socket.next()).await.expect("no echo").unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "before the stop");

    // A response that streams for about fifteen seconds, well past the delay.
    let mut events = http.get(format!("http://{addr}/p/stream/events?ticks=150")).bearer_auth(&token).send().await.unwrap().bytes_stream();
    let mut received = String::from_utf8_lossy(&events.next().await.unwrap().unwrap()).to_string();

    let stopped = tokio::spawn(proxy.stop());
    // Within the delay: the health check fails (as soon as the stop has
    // begun), but new requests are served.
    until_status("load balancers are told to stop sending", 503, &[200], async || {
        http.get(format!("http://{addr}/healthz")).send().await.unwrap()
    })
    .await;
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let during = fresh.get(&stats).bearer_auth(&token).send().await.unwrap();
    assert_eq!(during.status(), 200, "a new connection is still accepted during the delay");
    assert_eq!(during.headers()["connection"], "close", "and closed after its response");
    let ws = format!("ws://{addr}/p/stream/ws?token={token}");
    match tokio_tungstenite::connect_async(ws.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503, "new WebSockets go elsewhere"),
        other => panic!("a WebSocket was accepted while stopping: {:?}", other.map(|_| ())),
    }
    // The open one is closed cleanly after the delay, "going away", so the
    // browser reconnects.
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("the WebSocket was never closed") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("the WebSocket ended without a Close frame: {other:?}"),
        }
    };
    let close = close.expect("a status in the Close frame");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    assert!(close.reason.contains("reconnect"), "{close:?}");

    // The stream in flight finishes whole, after the delay, before the drain runs out.
    while let Some(chunk) = tokio::time::timeout(WAIT, events.next()).await.expect("the stream stalled") {
        received.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if received.matches("data: tick").count() < 149 {
            assert!(!stopped.is_finished(), "stop returned with a response in flight");
        }
    }
    assert_eq!(received.matches("data: tick").count(), 150, "every tick arrived: {received}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("idle keep-alive connections did not hold the stop for the whole drain")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting once stopped");
}

/// A backend that ends (here: asked to, as the API's terminate does) has
/// its WebSockets closed by the proxy with status 1000 and the reason, as
/// soon as the proxy's watch sees it: its Pod (kwok's) would otherwise
/// leave the page with a connection cut, or none cut at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_ends_closes_its_websockets_saying_why() {
    use spawner::k8s::cluster::termination_patch;
    use spawner::lifecycle::TerminationRequest;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let (client, ns) = namespace("proxy-ending").await;
    spawn_operator(&client, &ns, plugins(""));
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let proxy = serve::start(client.clone(), proxy_options(&ns, tokens.clone())).await.unwrap();
    let (_demo, slabs) = demo_slab(&client, &ns, "ending", None).await;

    let token = tokens.mint("ending", None, now_unix(), now_unix() + 600);
    let stats = format!("http://{}/p/ending/api/stats", proxy.addr);
    until_status("the proxy reaches the backend", 200, &[404, 502, 503], async || {
        reqwest::Client::new().get(&stats).bearer_auth(&token).send().await.unwrap()
    })
    .await;
    // A token the API minted for another object of this name (an earlier
    // backend of the key) is refused, whenever it was issued.
    let earlier = tokens.mint_for("ending", Some("the-uid-of-an-earlier-object"), None, now_unix() + 1, now_unix() + 600);
    let refused = reqwest::Client::new().get(&stats).bearer_auth(&earlier).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("minted for an earlier backend named ending"));
    let uid = slabs.get("ending").await.unwrap().metadata.uid.unwrap();
    let own = tokens.mint_for("ending", Some(&uid), None, now_unix(), now_unix() + 600);
    assert_eq!(reqwest::Client::new().get(&stats).bearer_auth(&own).send().await.unwrap().status(), 200);
    let mut req = format!("ws://{}/p/ending/ws", proxy.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.expect("a WebSocket");
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::Text("".into()), "the empty notepad");

    let ask = TerminationRequest { reason: Reason::Requested, message: "closed by its user".into() };
    slabs.patch("ending", &PatchParams::default(), &Patch::Merge(termination_patch(&ask))).await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("the WebSocket was never closed") {
            Some(Ok(Message::Close(frame))) => break frame.expect("a status"),
            Some(Ok(_)) => continue,
            other => panic!("the WebSocket ended without a Close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1000, "the session is over, not a reason to reconnect: {close:?}");
    assert_eq!(close.reason.as_str(), "backend ending (requested): closed by its user", "{close:?}");
    proxy.stop().await;
}

/// A control-plane upgrade restarts the API server: here it is killed,
/// first for a moment, then for 15 s (longer than the operator may lead
/// without renewing its Lease, 12 s), and comes back on the same address
/// and etcd. After the blip, a new backend is started and routed to (the
/// operator's and the proxy's watches came back). During the outage the
/// proxy goes on serving the backends it knows, and the operator stops
/// leading; afterwards the same operator and proxy, never restarted, are
/// soon at work again: the operator leads within seconds and ends a
/// deleted backend, the proxy stops routing to it, and a new backend gets
/// its Pod and is routed to. With kube-lease-manager's own retries
/// (doubling up to 30 s) the operator led again up to 16 s after the API
/// server was back.
#[tokio::test(flavor = "multi_thread")]
async fn operator_and_proxy_ride_out_an_api_server_restart() {
    use spawner::k8s::controller::{Context, OperatorConfig};
    use spawner::k8s::leader::{self, LeaseSettings};
    use spawner::metrics::Metrics;

    // Its own control plane: the other tests' must stay up.
    let plane = spawner_testenv::ControlPlane::start(&[spawner_testenv::FakeNode::new("node-r")]).await.unwrap();
    let (client, ns) = common::k8s::namespace_on(&plane, "restart").await;
    let lease = LeaseSettings {
        namespace: ns.clone(),
        name: "spawner-operator".into(),
        identity: "op".into(),
        // deploy/'s: renewed every 8 s, led for 12 s after a renewal.
        duration_seconds: 15,
        grace_seconds: 7,
    };
    let metrics = Arc::new(Metrics::new());
    let config = OperatorConfig { namespace: Some(ns.clone()), stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
    let operator = tokio::spawn(leader::run_elected(
        Context::new(client.clone(), plugins(""), metrics.clone(), config),
        lease,
        std::future::pending(),
    ));
    let leads = || metrics.encode().contains("spawner_leader{lease=\"spawner-operator\"} 1");
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let proxy = serve::start(client.clone(), proxy_options(&ns, tokens.clone())).await.unwrap();
    let http = reqwest::Client::new();
    let get = |name: &str| {
        let request = http.get(format!("http://{}/p/{name}/api/stats", proxy.addr)).bearer_auth(tokens.mint(
            name,
            None,
            now_unix(),
            now_unix() + 600,
        ));
        async move { request.send().await.unwrap() }
    };

    let (_before, slabs) = demo_slab(&client, &ns, "before", None).await;
    until_status("routed before the restart", 200, &[404, 502, 503], async || get("before").await).await;
    assert!(leads(), "leading before the restart");

    // A blip: the watches fail and come back.
    plane.stop_api_server().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    plane.start_api_server().await.unwrap();
    let (_blip, _) = demo_slab(&client, &ns, "blip", None).await;
    until_status("a backend created after a blip is routed to", 200, &[404, 502, 503], async || get("blip").await).await;

    plane.stop_api_server().unwrap();
    // Longer than it may lead without renewing: the operator must stop
    // leading, the proxy must go on routing from what it knows.
    let down = tokio::time::Instant::now();
    let mut stepped_down = false;
    while down.elapsed() < Duration::from_secs(15) {
        let r = get("before").await;
        assert_eq!(r.status(), 200, "while the API server was down: {}", r.text().await.unwrap_or_default());
        stepped_down |= !leads();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(stepped_down, "went on leading with a Lease it could not renew");
    assert!(!operator.is_finished(), "the operator ended: {:?}", operator.await);
    plane.start_api_server().await.unwrap();

    // The same operator and proxy, back at work: the operator's next try
    // comes within 3 s, its next read of the Lease a second later; 8 s
    // leaves room for a busy machine.
    let back = tokio::time::Instant::now();
    while !leads() {
        assert!(back.elapsed() < Duration::from_secs(8), "not leading 8 s after the API server came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let uid = slabs.get("before").await.unwrap().metadata.uid.unwrap();
    slabs.delete("before", &Default::default()).await.unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(slabs.clone(), "before", kube::runtime::conditions::is_deleted(&uid))).await;
    assert!(gone.is_ok(), "a backend deleted after the restart was never let go");
    assert!(pods.get_opt("before").await.unwrap().is_none(), "its Pod runs on");
    until_status_within(Duration::from_secs(10), "a deleted backend is no longer routed to", 404, &[200, 503], async || {
        get("before").await
    })
    .await;
    let (_after, _) = demo_slab(&client, &ns, "after", None).await;
    until_status("a backend created after the restart is routed to", 200, &[404, 502, 503], async || get("after").await).await;
    assert!(!operator.is_finished(), "the operator ended: {:?}", operator.await);
    proxy.stop().await;
}
