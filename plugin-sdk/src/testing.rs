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

use crate::host::{Capability, TokenError};
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
