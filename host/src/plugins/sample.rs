//! Representative inputs for each kind: the trial call of
//! `spawner plugin check`, `plugin run --input sample` and what `plugin
//! sample` prints are the same (for auth, the one with a token).

use super::types::*;

/// A request from a browser without a token.
pub fn auth_request(now: u64) -> AuthRequest {
    AuthRequest {
        request: HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: vec![
                Header { name: "host".into(), value: "localhost:8080".into() },
                Header { name: "user-agent".into(), value: "spawner-plugin-check".into() },
            ],
            peer: "127.0.0.1:50000".into(),
            websocket: false,
        },
        backend: sample_backend(),
        now,
        credentials: vec![],
    }
}

/// The same request carrying a bearer token for its backend, issued a
/// minute ago to its owner, as the proxy passes it once verified: the
/// header it was found in (the token itself elided: plugins read the
/// verified claims) and its credential.
pub fn auth_request_with_token(now: u64) -> AuthRequest {
    auth_request_minted(now, None)
}

/// [`auth_request_with_token`], its header carrying a real token minted
/// with `key` when one is given (so that `plugin run --token-secret`,
/// which verifies the tokens in the request, finds the same credential).
pub fn auth_request_minted(now: u64, key: Option<&crate::token::TokenKey>) -> AuthRequest {
    let mut request = auth_request(now);
    let capability = Capability {
        backend: request.backend.name.clone(),
        subject: request.backend.owner.clone(),
        issued_at: now.saturating_sub(60),
        expires_at: now + 3600,
    };
    let token = match key {
        Some(key) => key.mint(&capability.backend, capability.subject.as_deref(), capability.issued_at, capability.expires_at),
        None => "st1.…".into(),
    };
    request.request.headers.push(Header { name: "authorization".into(), value: format!("Bearer {token}") });
    request.credentials.push(Credential { source: CredentialSource::Bearer, verified: Ok(capability) });
    request
}

/// A backend quiet for a minute, one hour old.
pub fn idle_request(now: u64) -> IdleRequest {
    IdleRequest {
        backend: sample_backend(),
        age_seconds: 3600,
        grace_period_seconds: 300,
        lifetime_limit_seconds: Some(86_400),
        activity: Activity {
            open_connections: 0,
            in_flight_requests: 0,
            seconds_since_last_activity: 60,
            bytes_in: 0,
            bytes_out: 0,
            websocket_messages: 0,
        },
        now,
    }
}

/// A backend to place on one of two nodes.
pub fn placement_request(now: u64) -> PlacementRequest {
    let node = |name: &str, backends: Vec<PlacedBackend>| Node {
        name: name.into(),
        labels: vec![Label { key: "kubernetes.io/os".into(), value: "linux".into() }],
        capacity: Resources { cpu_millis: 4000, memory_bytes: 8 << 30 },
        backends,
    };
    let running = PlacedBackend {
        name: "doc-41".into(),
        owner: Some("bob".into()),
        labels: vec![],
        node: Some("node-a".into()),
        requests: Resources { cpu_millis: 500, memory_bytes: 1 << 30 },
    };
    PlacementRequest {
        backend: sample_backend(),
        requests: Resources { cpu_millis: 250, memory_bytes: 512 << 20 },
        node_selector: vec![],
        nodes: vec![node("node-a", vec![running]), node("node-b", vec![])],
        owner_backends: vec![],
        now,
    }
}

fn sample_backend() -> Backend {
    Backend {
        name: "doc-42".into(),
        key: Some("document-42".into()),
        owner: Some("alice".into()),
        labels: vec![Label { key: "team".into(), value: "data".into() }],
    }
}
