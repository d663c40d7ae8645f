//! Small conveniences on the generated types, so plugins read as policy.

use alloc::string::String;
use alloc::vec::Vec;

use crate::auth::{Allow, AuthRequest, Deny, Header, HttpRequest, Verdict};
use crate::idle::{IdleVerdict, Termination, TerminationKind};
use crate::scheduler::Resources;
use crate::{Backend, Label};

impl Backend {
    /// The value of label `key`, if the backend has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        find_label(&self.labels, key)
    }
}

/// The value of `key` in a label list.
pub fn find_label<'a>(labels: &'a [Label], key: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.key == key).map(|l| l.value.as_str())
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// The value of query parameter `name`, percent-decoding not applied
    /// (tokens and ids are URL-safe).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// Whether this is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`, which a browser sends before a
    /// cross-origin request that carries a token header or a JSON body,
    /// to ask the backend whether it takes it. Browsers send it with its
    /// URL but without cookies or `Authorization`, so only a token in the
    /// query reaches a plugin with one (the default auth plugin's denial
    /// says so).
    pub fn is_cors_preflight(&self) -> bool {
        self.method == "OPTIONS" && self.header("origin").is_some() && self.header("access-control-request-method").is_some()
    }

    /// The value of cookie `name` from the `cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cookie")).flat_map(|h| h.value.split(';')).find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

impl AuthRequest {
    /// Shortcut for `self.request.header(name)`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }
}

impl Verdict {
    /// Allow with no subject and no injected headers.
    pub fn allow() -> Self {
        Verdict::Allow(Allow { subject: None, headers: Vec::new() })
    }

    /// Allow as `subject`: the proxy sends it to the backend as
    /// `x-spawner-user`.
    ///
    /// ```
    /// # use spawner_plugin_sdk::auth::Verdict;
    /// let v = Verdict::allow_as("ada").with_header("x-spawner-role", "editor");
    /// assert!(v.is_allow());
    /// ```
    pub fn allow_as(subject: impl Into<String>) -> Self {
        Verdict::Allow(Allow { subject: Some(subject.into()), headers: Vec::new() })
    }

    /// This verdict with the identity header `name: value` added, if it
    /// allows (a deny is returned as it is). Names must start with
    /// `x-spawner-` (the WIT's `allow` says which the proxy keeps).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Verdict::Allow(allow) = &mut self {
            allow.headers.push(Header { name: name.into(), value: value.into() });
        }
        self
    }

    /// Deny with `status` and `reason`.
    pub fn deny(status: u16, reason: impl Into<String>) -> Self {
        Verdict::Deny(Deny { status, reason: reason.into() })
    }

    /// True for `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

impl IdleVerdict {
    /// Terminate with reason `idle`.
    pub fn terminate_idle(detail: impl Into<String>) -> Self {
        IdleVerdict::Terminate(Termination { kind: TerminationKind::Idle, detail: detail.into() })
    }

    /// Terminate with reason `lifetime`.
    pub fn terminate_lifetime(detail: impl Into<String>) -> Self {
        IdleVerdict::Terminate(Termination { kind: TerminationKind::Lifetime, detail: detail.into() })
    }
}

impl Resources {
    /// Component-wise sum, saturating.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}
