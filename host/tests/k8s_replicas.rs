//! Two `spawner proxy` replicas against a real control plane: one holds the
//! sweeper Lease and, before each sweep, asks the other for its activity,
//! so a WebSocket held open through the replica that does not sweep keeps
//! its backend alive; once it closes, the backend is swept. If a running
//! replica cannot be asked, no backend is judged idle (fail safe) until it
//! is gone, and lifetime limits still apply.
//!
//! The replicas run in this process; kwok runs a Pod standing for each
//! (with the `peer` port each listens on), and the test reports their IP as
//! loopback, as a kubelet would report a real one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::k8s::{WAIT, demo_backend, namespace, plugins, proxy_options, report_loopback_pod_ip, spawn_operator, until};
use futures_util::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use spawner::k8s::crd::SessionLivedBackend;
use spawner::k8s::leader::LeaseSettings;
use spawner::k8s::peers::PeerOptions;
use spawner::k8s::serve::{self, ProxyOptions, Replicas, RunningProxy};
use spawner::lifecycle::{Phase, Reason};
use spawner::token::{TokenKey, now_unix};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const SELECTOR: &str = "app=spawner-proxy-test";
const PEER_TOKEN: &str = "the-peer-token-of-this-test";

async fn replica(client: &kube::Client, ns: &str, identity: &str, tokens: Arc<TokenKey>) -> RunningProxy {
    let peers = PeerOptions {
        namespace: ns.into(),
        selector: SELECTOR.into(),
        identity: identity.into(),
        token: PEER_TOKEN.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let lease =
        LeaseSettings { namespace: ns.into(), name: "sweeper".into(), identity: identity.into(), duration_seconds: 15, grace_seconds: 5 };
    let options = ProxyOptions { replicas: Some(Replicas { peers, lease }), ..proxy_options(ns, tokens) };
    let proxy = serve::start(client.clone(), options).await.unwrap();
    // The Pod this replica would run in, answering on its peer port.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": identity, "labels": {"app": "spawner-proxy-test"}},
        "spec": {"containers": [{"name": "proxy", "image": "example.invalid/spawner:1",
                                  "ports": [{"name": "peer", "containerPort": proxy.peer_addr.unwrap().port()}]}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
    report_loopback_pod_ip(client, ns, identity).await;
    proxy
}

fn slab(name: &str, port: u16, grace_seconds: u32) -> SessionLivedBackend {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
        "metadata": {"name": name},
        "spec": {"template": {"containers": [{"name": "app", "image": "example.invalid/notes:1"}]}, "httpPort": port, "gracePeriodSeconds": grace_seconds}
    }))
    .unwrap()
}

/// Creates a backend and waits until the proxies can route to it.
async fn ready_backend(client: &kube::Client, ns: &str, name: &str, port: u16, grace_seconds: u32) {
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), ns);
    slabs.create(&PostParams::default(), &slab(name, port, grace_seconds)).await.unwrap();
    report_loopback_pod_ip(client, ns, name).await;
    until(&slabs, name, "became ready at the Pod IP", |s| s.phase == Some(Phase::Ready) && s.pod_ip.as_deref() == Some("127.0.0.1")).await;
}

async fn phase(slabs: &Api<SessionLivedBackend>, name: &str) -> Option<Phase> {
    slabs.get(name).await.unwrap().status.and_then(|s| s.phase)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeping_replica_counts_the_other_replicas_connections() {
    let (client, ns) = namespace("replicas").await;
    spawn_operator(&client, &ns, plugins(""));
    let tokens = Arc::new(TokenKey::new(b"a test secret of some length").unwrap());
    let a = replica(&client, &ns, "proxy-a", tokens.clone()).await;
    let b = replica(&client, &ns, "proxy-b", tokens.clone()).await;

    // Which one sweeps: the Lease says.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut holder = None;
    for _ in 0..(WAIT.as_millis() / 50) {
        holder = leases.get_opt("sweeper").await.unwrap().and_then(|l| l.spec?.holder_identity);
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sweeping, other) = match holder.as_deref() {
        Some("proxy-a") => (a, b),
        Some("proxy-b") => (b, a),
        other => panic!("nobody holds the sweeper Lease: {other:?}"),
    };

    // Replicas answer each other only with the peer token.
    let peer_url = format!("http://{}/activity", other.peer_addr.unwrap());
    assert_eq!(reqwest::get(&peer_url).await.unwrap().status(), 401);

    let (_demo, port) = demo_backend().await;
    // The grace runs from ready, and the WebSocket below is opened only
    // after the test has reported the Pod's IP and the other replica's cache
    // has it: a short grace could run out first on a busy machine.
    ready_backend(&client, &ns, "notes", port, 8).await;
    let slabs: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);

    // A WebSocket through the replica that does not sweep, held open for
    // several grace periods and sweeps.
    let token = tokens.mint("notes", Some("alice"), now_unix(), now_unix() + 600);
    let mut connected = None;
    for _ in 0..100 {
        // The replica's cache follows the API server within moments.
        let mut request = format!("ws://{}/p/notes/ws", other.addr).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                connected = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut ws = connected.expect("no WebSocket through the other replica");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert!(ws.next().await.is_some(), "the backend answers through the other replica");
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert_eq!(phase(&slabs, "notes").await, Some(Phase::Ready), "swept although a WebSocket was open on the other replica");

    // Closed: idle everywhere, and swept.
    ws.close(None).await.unwrap();
    drop(ws);
    let ended = until(&slabs, "notes", "was swept once idle", |s| s.phase == Some(Phase::Terminated)).await;
    assert_eq!(ended.status.unwrap().reason, Some(Reason::Idle));

    // A running replica that cannot be asked: nobody is judged idle (its
    // connections are unknown) until its Pod is gone. Stopped first, so
    // that no sweep can end the new backend before the replica is gone.
    // Lifetime limits, which do not depend on activity, still end backends
    // (a lifetime may change on a live backend).
    other.stop().await;
    ready_backend(&client, &ns, "notes-2", port, 1).await;
    ready_backend(&client, &ns, "long-lived", port, 3600).await;
    slabs
        .patch("long-lived", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"lifetimeLimitSeconds": 1}})))
        .await
        .unwrap();
    let ended = until(&slabs, "long-lived", "ended by its lifetime", |s| s.phase == Some(Phase::Terminated)).await;
    assert_eq!(ended.status.unwrap().reason, Some(Reason::Lifetime));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(phase(&slabs, "notes-2").await, Some(Phase::Ready), "swept while a replica could not be asked");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete(&holder_other(&holder), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let ended = until(&slabs, "notes-2", "was swept once the replica was gone", |s| s.phase == Some(Phase::Terminated)).await;
    assert_eq!(ended.status.unwrap().reason, Some(Reason::Idle));
    sweeping.stop().await;
}

/// The replica that does not hold the Lease.
fn holder_other(holder: &Option<String>) -> String {
    if holder.as_deref() == Some("proxy-a") { "proxy-b".into() } else { "proxy-a".into() }
}
