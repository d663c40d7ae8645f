//! Spawner's default auth plugin: capability tokens.
//!
//! Spawner's API returns, with each backend, a capability token scoped to
//! that backend (format documented in `host/src/token.rs` and the README).
//! This plugin looks for it in, in order: `Authorization: Bearer <token>`,
//! the `token` query parameter, the `spawner-token` cookie (names
//! configurable). The signature is checked by the host
//! (`verify-capability-token`), so the signing secret never enters the
//! sandbox; the plugin checks the backend and the expiry.
//!
//! Verdicts: no token → 401; forged, malformed or expired → 401; a valid
//! token for another backend → 403; otherwise allow, injecting
//! `x-spawner-backend` and (when the token names a user) `x-spawner-user`.
//!
//! Settings (JSON, all optional):
//! `{"cookie": "spawner-token", "query-param": "token"}`.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use serde::Deserialize;
use spawner_plugin_sdk::auth::*;
use spawner_plugin_sdk::host;

/// Where tokens are looked for.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Cookie name the proxy stores tokens in.
    pub cookie: String,
    /// Query parameter a browser's first visit carries the token in.
    pub query_param: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { cookie: "spawner-token".into(), query_param: "token".into() }
    }
}

/// The plugin, exported below.
pub struct DefaultAuth;

impl Auth for DefaultAuth {
    fn check(request: AuthRequest) -> Result<Verdict, PluginError> {
        let settings: Settings = host::settings_json()?;
        Ok(decide(&request, &settings, host::verify_capability_token))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        let s: Settings = host::parse_settings(settings)?;
        if s.cookie.is_empty() || s.query_param.is_empty() {
            return Err(PluginError::InvalidSettings("cookie and query-param must not be empty".into()));
        }
        Ok(())
    }
}

spawner_plugin_sdk::lean_runtime!();
spawner_plugin_sdk::export!(auth: DefaultAuth);

/// The whole policy, as a plain function so it runs natively in tests and
/// benchmarks. `verify` checks a token's signature.
pub fn decide(request: &AuthRequest, settings: &Settings, verify: impl Fn(&str) -> Result<Capability, TokenError>) -> Verdict {
    let http = &request.request;
    let bearer = http.header("authorization").and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
    let candidates = [bearer, http.query_param(&settings.query_param), http.cookie(&settings.cookie)];

    // The most specific refusal wins when several candidates fail.
    let mut refusal: Option<Verdict> = None;
    for token in candidates.into_iter().flatten().filter(|t| !t.is_empty()) {
        let verdict = match verify(token) {
            Err(TokenError::BadSignature) => Verdict::deny(401, "token signature is not valid"),
            Err(TokenError::Malformed(why)) => Verdict::deny(401, format!("token is malformed: {why}")),
            Ok(cap) if cap.backend != request.backend.name => {
                Verdict::deny(403, format!("token is for backend {}, not {}", cap.backend, request.backend.name))
            }
            Ok(cap) if cap.expires_at <= request.now => Verdict::deny(401, format!("token expired {} s ago", request.now - cap.expires_at)),
            Ok(cap) => return allow(request, cap),
        };
        if refusal.as_ref().is_none_or(|r| status(r) < status(&verdict)) {
            refusal = Some(verdict);
        }
    }
    refusal.unwrap_or_else(|| Verdict::deny(401, "no capability token: use the URL or token Spawner returned for this backend"))
}

fn allow(request: &AuthRequest, cap: Capability) -> Verdict {
    let mut headers = vec![Header { name: "x-spawner-backend".into(), value: request.backend.name.clone() }];
    if let Some(user) = &cap.subject {
        headers.push(Header { name: "x-spawner-user".into(), value: user.clone() });
    }
    Verdict::Allow(Allow { subject: cap.subject, headers })
}

fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Deny(d) => d.status,
        Verdict::Allow(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::{Harness, backend};

    const NOW: u64 = 1_800_000_000;

    fn request(headers: &[(&str, &str)], query: Option<&str>) -> AuthRequest {
        AuthRequest {
            request: HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                query: query.map(Into::into),
                headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
                peer: "127.0.0.1:5000".into(),
                websocket: false,
            },
            backend: backend("b1"),
            now: NOW,
        }
    }

    /// Tokens are "<backend>:<expiry>[:<user>]"; "forged" has a bad signature.
    fn verifier(token: &str) -> Result<Capability, TokenError> {
        if token == "forged" {
            return Err(TokenError::BadSignature);
        }
        let parts: Vec<&str> = token.split(':').collect();
        if parts.len() < 2 {
            return Err(TokenError::Malformed("test token".into()));
        }
        Ok(Capability {
            backend: parts[0].into(),
            subject: parts.get(2).map(|s| s.to_string()),
            issued_at: NOW - 10,
            expires_at: parts[1].parse().unwrap(),
        })
    }

    fn run(req: AuthRequest) -> Verdict {
        Harness::new().token_verifier(verifier).run(|| DefaultAuth::check(req).unwrap())
    }

    fn deny_status(v: Verdict) -> u16 {
        match v {
            Verdict::Deny(d) => d.status,
            Verdict::Allow(a) => panic!("expected deny, got allow {a:?}"),
        }
    }

    #[test]
    fn bearer_token_for_this_backend_is_allowed_with_identity() {
        let valid = format!("b1:{}:alice", NOW + 60);
        let v = run(request(&[("authorization", &format!("Bearer {valid}"))], None));
        let Verdict::Allow(a) = v else { panic!("denied: {v:?}") };
        assert_eq!(a.subject.as_deref(), Some("alice"));
        assert!(a.headers.iter().any(|h| h.name == "x-spawner-user" && h.value == "alice"));
    }

    #[test]
    fn query_and_cookie_tokens_are_found() {
        let valid = format!("b1:{}", NOW + 60);
        assert!(run(request(&[], Some(&format!("a=1&token={valid}")))).is_allow());
        let cookie = format!("other=x; spawner-token={valid}");
        assert!(run(request(&[("cookie", &cookie)], None)).is_allow());
    }

    #[test]
    fn missing_expired_foreign_and_forged_tokens_are_denied() {
        assert_eq!(deny_status(run(request(&[], None))), 401);
        let expired = format!("b1:{}", NOW - 1);
        assert_eq!(deny_status(run(request(&[("authorization", &format!("Bearer {expired}"))], None))), 401);
        let foreign = format!("b2:{}", NOW + 60);
        assert_eq!(deny_status(run(request(&[("authorization", &format!("Bearer {foreign}"))], None))), 403);
        assert_eq!(deny_status(run(request(&[("authorization", "Bearer forged")], None))), 401);
    }

    #[test]
    fn one_valid_token_among_bad_ones_is_enough() {
        let valid = format!("b1:{}", NOW + 60);
        let req = request(&[("authorization", "Bearer forged"), ("cookie", &format!("spawner-token={valid}"))], None);
        assert!(run(req).is_allow());
    }

    #[test]
    fn settings_rename_the_cookie_and_bad_settings_are_refused() {
        let valid = format!("b1:{}", NOW + 60);
        let req = request(&[("cookie", &format!("sess={valid}"))], None);
        let v = Harness::new().token_verifier(verifier).settings(r#"{"cookie":"sess"}"#).run(|| DefaultAuth::check(req).unwrap());
        assert!(v.is_allow());
        assert!(DefaultAuth::validate_settings(r#"{"cookies":"x"}"#).is_err());
        assert!(DefaultAuth::validate_settings(r#"{"cookie":""}"#).is_err());
        assert!(DefaultAuth::validate_settings("").is_ok());
    }
}
