//! A native test harness: run plugin logic under plain `cargo test`.
//!
//! Native only: inside Spawner the host wrappers call the real host.
//!
//! ```
//! use spawner_plugin_sdk::testing::Harness;
//! use spawner_plugin_sdk::host;
//!
//! let harness = Harness::new().settings(r#"{"limit": 3}"#);
//! let seen = harness.run(|| host::settings());
//! assert_eq!(seen, r#"{"limit": 3}"#);
//! ```
//!
//! Outside [`Harness::run`], settings are empty, token verification fails
//! with `malformed` and logs go to stderr.

use std::cell::RefCell;
use std::eprintln;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::auth::{AuthRequest, Credential, CredentialSource, HttpRequest, Verdict};
use crate::host::{Capability, TokenError};
use crate::idle::{Activity, IdleRequest};
use crate::scheduler::{Node, PlacedBackend, PlacementRequest, Resources};
use crate::{Backend, Label, LogLevel};

type Verifier = dyn Fn(&str) -> Result<Capability, TokenError>;

struct State {
    settings: String,
    verifier: Option<Rc<Verifier>>,
    logs: Rc<RefCell<Vec<(LogLevel, String)>>>,
}

std::thread_local! {
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Plays the host for code run inside [`Harness::run`].
#[derive(Clone, Default)]
pub struct Harness {
    settings: String,
    verifier: Option<Rc<Verifier>>,
    logs: Rc<RefCell<Vec<(LogLevel, String)>>>,
}

impl Harness {
    /// A harness with empty settings and no token verifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The string `host::settings()` returns.
    pub fn settings(mut self, settings: impl Into<String>) -> Self {
        self.settings = settings.into();
        self
    }

    /// What `host::verify_capability_token` does (the host checks an HMAC;
    /// tests usually map a few literal tokens to claims).
    pub fn token_verifier(mut self, verify: impl Fn(&str) -> Result<Capability, TokenError> + 'static) -> Self {
        self.verifier = Some(Rc::new(verify));
        self
    }

    /// Runs `f` with this harness playing the host, then restores the
    /// previous one (also when `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<State>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let state = State { settings: self.settings.clone(), verifier: self.verifier.clone(), logs: self.logs.clone() };
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(state)));
        f()
    }

    /// Log lines written so far inside [`Harness::run`].
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }
}

pub(crate) fn record_log(level: LogLevel, message: &str) {
    let logged = CURRENT.with(|c| c.borrow().as_ref().map(|s| s.logs.borrow_mut().push((level, message.to_string()))).is_some());
    if !logged {
        eprintln!("[plugin {level:?}] {message}");
    }
}

pub(crate) fn current_settings() -> String {
    CURRENT.with(|c| c.borrow().as_ref().map(|s| s.settings.clone()).unwrap_or_default())
}

pub(crate) fn verify_token(token: &str) -> Result<Capability, TokenError> {
    let verifier = CURRENT.with(|c| c.borrow().as_ref().and_then(|s| s.verifier.clone()));
    match verifier {
        Some(v) => v(token),
        None => Err(TokenError::Malformed("no token verifier in this test: use Harness::token_verifier".into())),
    }
}

/// A backend with just a name, for building test inputs.
pub fn backend(name: &str) -> Backend {
    Backend { name: name.into(), key: None, owner: None, labels: Vec::new() }
}

/// A label, for building test inputs.
pub fn label(key: &str, value: &str) -> Label {
    Label { key: key.into(), value: value.into() }
}

/// An auth request for a test: `method path` to `backend` at time `now`,
/// from 127.0.0.1, no query, headers or credentials (push what the test is
/// about, e.g. [`bearer`]).
///
/// ```
/// use spawner_plugin_sdk::testing::{auth_request, backend, bearer, capability};
///
/// let mut request = auth_request(backend("doc-1"), "GET", "/", 1_800_000_000);
/// request.credentials.push(bearer(Ok(capability("doc-1", Some("alice"), 1_800_000_000 + 60))));
/// assert_eq!(request.credentials.len(), 1);
/// ```
pub fn auth_request(backend: Backend, method: &str, path: &str, now: u64) -> AuthRequest {
    AuthRequest {
        request: HttpRequest {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: Vec::new(),
            peer: "127.0.0.1:50000".into(),
            websocket: false,
        },
        backend,
        now,
        credentials: Vec::new(),
    }
}

/// A token's claims: for `backend`, issued to `subject` a minute before it
/// expires at `expires_at`.
pub fn capability(backend: &str, subject: Option<&str>, expires_at: u64) -> Capability {
    Capability { backend: backend.into(), subject: subject.map(Into::into), issued_at: expires_at.saturating_sub(60), expires_at }
}

/// A credential as the proxy passes one found in `Authorization: Bearer`,
/// verified (`Ok`) or not (`Err`, e.g. `TokenError::BadSignature`).
pub fn bearer(verified: Result<Capability, TokenError>) -> Credential {
    credential(CredentialSource::Bearer, verified)
}

/// A credential as the proxy passes one found in `source` (the `token`
/// query parameter, the token cookie, or `Authorization: Bearer`).
pub fn credential(source: CredentialSource, verified: Result<Capability, TokenError>) -> Credential {
    Credential { source, verified }
}

/// What the host passes for a token for `backend` that was issued before
/// that backend was created (for an earlier backend of the same name, a
/// key's previous one): `malformed`, saying so, in `credentials` and from
/// `host::verify_capability_token`. For a test of how a plugin treats one:
/// `bearer(Err(issued_before_creation("b")))`.
pub fn issued_before_creation(backend: &str) -> TokenError {
    TokenError::Malformed(std::format!("issued before backend {backend} was created: it was for an earlier backend of that name"))
}

/// A node for a test: `name`, with `cpu_millis` and `memory_bytes` of
/// capacity, no labels and no backends (push what the test is about).
pub fn node(name: &str, cpu_millis: u64, memory_bytes: u64) -> Node {
    Node { name: name.into(), labels: Vec::new(), capacity: Resources { cpu_millis, memory_bytes }, backends: Vec::new() }
}

/// A backend already running, for a node's `backends` or the request's
/// `owner_backends`: `name`, for `owner`, on `node`, requesting nothing.
pub fn placed(name: &str, owner: Option<&str>, node: Option<&str>) -> PlacedBackend {
    PlacedBackend {
        name: name.into(),
        owner: owner.map(Into::into),
        labels: Vec::new(),
        node: node.map(Into::into),
        requests: Resources { cpu_millis: 0, memory_bytes: 0 },
    }
}

/// A placement request for a test: `backend` to place on one of `nodes`
/// at time `now`, requesting nothing, with no node selector and no other
/// backends of its owner (set the fields a test is about).
///
/// ```
/// use spawner_plugin_sdk::testing::{backend, node, placed, placement_request};
///
/// let mut a = node("node-a", 4000, 8 << 30);
/// a.backends.push(placed("doc-1", Some("alice"), Some("node-a")));
/// let request = placement_request(backend("doc-2"), vec![a, node("node-b", 4000, 8 << 30)], 1_800_000_000);
/// assert_eq!(request.nodes[0].backends.len(), 1);
/// ```
pub fn placement_request(backend: Backend, nodes: Vec<Node>, now: u64) -> PlacementRequest {
    PlacementRequest {
        backend,
        requests: Resources { cpu_millis: 0, memory_bytes: 0 },
        node_selector: Vec::new(),
        nodes,
        owner_backends: Vec::new(),
        now,
    }
}

/// An idle request for a test: `backend`, an hour old, with grace period
/// `grace_seconds` and no lifetime limit, nothing open and quiet for
/// `quiet_seconds`, at time `now` (change the fields a test is about).
pub fn idle_request(backend: Backend, quiet_seconds: u64, grace_seconds: u64, now: u64) -> IdleRequest {
    IdleRequest {
        backend,
        age_seconds: 3600,
        grace_period_seconds: grace_seconds,
        lifetime_limit_seconds: None,
        activity: Activity {
            open_connections: 0,
            in_flight_requests: 0,
            seconds_since_last_activity: quiet_seconds,
            bytes_in: 0,
            bytes_out: 0,
            websocket_messages: 0,
        },
        now,
    }
}

/// The most identity headers one allow may inject, and their names' and
/// values' bytes together (Spawner's host refuses more).
pub const MAX_IDENTITY_HEADERS: usize = 32;
/// See [`MAX_IDENTITY_HEADERS`].
pub const MAX_IDENTITY_BYTES: usize = 8 << 10;
/// The longest subject the host accepts, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// What Spawner's host checks of an auth plugin's verdict, so that a test
/// can assert its plugin's answers will be used: `Err` says why the host
/// would refuse it, which Spawner treats as a failed call (the request is
/// denied, fail closed, and the failure counted as `invalid-answer`).
/// `cargo test` runs the plugin's logic natively, where nothing else
/// checks this.
///
/// ```
/// use spawner_plugin_sdk::auth::Verdict;
/// use spawner_plugin_sdk::testing::check_verdict;
///
/// let role = |name: &str| Verdict::allow().with_header(name, "admin");
/// assert!(check_verdict(&role("x-spawner-role")).is_ok());
/// assert!(check_verdict(&role("x-role")).unwrap_err().contains("outside the identity prefix"));
/// ```
pub fn check_verdict(verdict: &Verdict) -> Result<(), String> {
    match verdict {
        Verdict::Deny(d) if !(400..=599).contains(&d.status) => {
            Err(std::format!("deny status {} is not an HTTP error status (400-599)", d.status))
        }
        Verdict::Deny(_) => Ok(()),
        Verdict::Allow(a) => {
            let bytes: usize = a.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
            if a.headers.len() > MAX_IDENTITY_HEADERS || bytes > MAX_IDENTITY_BYTES {
                return Err(std::format!(
                    "{} identity headers of {bytes} bytes: at most {MAX_IDENTITY_HEADERS} headers and {MAX_IDENTITY_BYTES} bytes",
                    a.headers.len()
                ));
            }
            for h in &a.headers {
                if !h.name.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX)) {
                    return Err(std::format!("header {} is outside the identity prefix {PREFIX}", h.name));
                }
                if !h.name.bytes().all(is_token_byte) || !is_header_value(&h.value) {
                    return Err(std::format!("header {} is not a valid HTTP header", h.name));
                }
            }
            if let Some(subject) = &a.subject {
                if subject.is_empty() {
                    return Err("the subject is empty: a request that names no user has none (subject: None)".into());
                }
                if subject.len() > MAX_SUBJECT_BYTES {
                    return Err(std::format!("subject of {} bytes: at most {MAX_SUBJECT_BYTES}", subject.len()));
                }
                if !is_header_value(subject) {
                    return Err(std::format!("subject {subject:?} has control characters; it cannot be a header value"));
                }
            }
            Ok(())
        }
    }
}

/// Where identity headers live.
const PREFIX: &str = "x-spawner-";

/// A header name's bytes (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header value the proxy can send: no control characters but tabs
/// (UTF-8 goes as bytes).
fn is_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}
