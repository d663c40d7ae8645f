//! Spawner's default auth plugin: capability tokens.
//!
//! Spawner's API returns, with each backend, a capability token scoped to
//! that backend (format documented in `host/src/token.rs` and the README).
//! The host finds tokens where Spawner puts them (`Authorization: Bearer`,
//! the token query parameter, the token cookie; the names are Spawner's
//! config, `proxy.token-query-param` and `proxy.token-cookie`), checks
//! their signatures (the secret never enters the sandbox) and passes the
//! results in `credentials`. This plugin is the policy over those claims:
//! which backend, until when.
//!
//! Verdicts: no token → 401; forged, malformed or expired → 401; a valid
//! token for another backend → 403; otherwise allow, with the token's user
//! (if it names one) as the subject, which the proxy passes to the backend
//! as `x-spawner-user` (and the backend's name as `x-spawner-backend`).
//! When several tokens fail, the most specific refusal wins. A CORS
//! preflight with no token is denied like any request, saying where the
//! token goes instead: browsers send a preflight with its URL but without
//! cookies or `Authorization`, so from another origin the token belongs in
//! the query parameter.
//!
//! No settings. The plugin calls no host function and traps on panic
//! without logging (`lean_runtime!(panic = trap)`), so it imports nothing:
//! the host instantiates one core module per call instead of three, which
//! with the host's token check made a decision about 22% cheaper
//! (bench/README.md).

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::vec;
use spawner_plugin_sdk::auth::*;

/// The plugin, exported below.
pub struct DefaultAuth;

impl Auth for DefaultAuth {
    fn check(request: AuthRequest) -> Result<Verdict, PluginError> {
        Ok(decide(&request))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        let blank = settings.chars().filter(|c| !c.is_whitespace()).eq("{}".chars());
        if settings.trim().is_empty() || blank {
            return Ok(());
        }
        Err(PluginError::InvalidSettings(
            "the default auth plugin takes no settings; the token cookie and query parameter are set in Spawner's config (proxy.token-cookie, proxy.token-query-param)".into(),
        ))
    }
}

spawner_plugin_sdk::lean_runtime!(panic = trap);
spawner_plugin_sdk::export!(auth: DefaultAuth);

/// The whole policy, as a plain function so it runs natively in tests and
/// benchmarks.
pub fn decide(request: &AuthRequest) -> Verdict {
    let mut refusal: Option<Verdict> = None;
    for credential in &request.credentials {
        let verdict = match &credential.verified {
            Err(TokenError::BadSignature) => Verdict::deny(401, "token signature is not valid"),
            // Not only a broken token: also one minted for an earlier
            // backend of the name, or the API token sent to a backend (the
            // host says which), so not "malformed".
            Err(TokenError::Malformed(why)) => Verdict::deny(401, format!("token is not valid: {why}")),
            Ok(cap) if cap.backend != request.backend.name => {
                Verdict::deny(403, format!("token is for backend {}, not {}", cap.backend, request.backend.name))
            }
            Ok(cap) if cap.expires_at <= request.now => Verdict::deny(401, format!("token expired {} s ago", request.now - cap.expires_at)),
            Ok(cap) => return allow(cap),
        };
        if refusal.as_ref().is_none_or(|r| status(r) < status(&verdict)) {
            refusal = Some(verdict);
        }
    }
    refusal.unwrap_or_else(|| match request.request.is_cors_preflight() {
        // The browser's question before a cross-origin request with a token
        // header or a JSON body: it never carries cookies or headers of the
        // page's, only the URL.
        true => Verdict::deny(
            401,
            "no capability token in this CORS preflight: browsers send a preflight without cookies or Authorization, so from another origin put the token in the URL's token query parameter (the preflight carries the URL)",
        ),
        false => Verdict::deny(401, "no capability token: use the URL or token Spawner returned for this backend"),
    })
}

/// The token's user, if it names one, is the subject: the proxy sends it
/// to the backend as `x-spawner-user` (with `x-spawner-backend`).
fn allow(cap: &Capability) -> Verdict {
    Verdict::Allow(Allow { subject: cap.subject.clone(), headers: vec![] })
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
    use spawner_plugin_sdk::testing::{auth_request, backend, capability, check_verdict};

    const NOW: u64 = 1_800_000_000;

    fn cap(backend: &str, expires_at: u64, subject: Option<&str>) -> Result<Capability, TokenError> {
        Ok(capability(backend, subject, expires_at))
    }

    fn request(credentials: Vec<Result<Capability, TokenError>>) -> AuthRequest {
        let sources = [CredentialSource::Bearer, CredentialSource::Query, CredentialSource::Cookie];
        let mut request = auth_request(backend("b1"), "GET", "/", NOW);
        request.credentials = credentials.into_iter().zip(sources).map(|(verified, source)| Credential { source, verified }).collect();
        request
    }

    fn deny_status(v: Verdict) -> u16 {
        match v {
            Verdict::Deny(d) => d.status,
            Verdict::Allow(a) => panic!("expected deny, got allow {a:?}"),
        }
    }

    #[test]
    fn a_valid_token_for_this_backend_is_allowed_with_identity() {
        let v = DefaultAuth::check(request(vec![cap("b1", NOW + 60, Some("alice"))])).unwrap();
        check_verdict(&v).expect("the host would use this answer");
        let Verdict::Allow(a) = v else { panic!("denied: {v:?}") };
        assert_eq!(a.subject.as_deref(), Some("alice"), "the proxy sends it as x-spawner-user");
        assert!(a.headers.is_empty(), "nothing beyond what the proxy sets itself: {:?}", a.headers);
    }

    #[test]
    fn missing_expired_foreign_forged_and_malformed_tokens_are_denied() {
        assert_eq!(deny_status(decide(&request(vec![]))), 401);
        assert_eq!(deny_status(decide(&request(vec![cap("b1", NOW, None)]))), 401, "expiry is exclusive");
        assert_eq!(deny_status(decide(&request(vec![cap("b2", NOW + 60, None)]))), 403);
        assert_eq!(deny_status(decide(&request(vec![Err(TokenError::BadSignature)]))), 401);
        let v = decide(&request(vec![Err(TokenError::Malformed("no signature".into()))]));
        assert!(matches!(&v, Verdict::Deny(d) if d.reason == "token is not valid: no signature"), "{v:?}");
        // A token for an earlier backend of this name, as the host passes it.
        let v = decide(&request(vec![Err(spawner_plugin_sdk::testing::issued_before_creation("b1"))]));
        assert!(matches!(&v, Verdict::Deny(d) if d.status == 401 && d.reason.contains("issued before backend b1 was created")), "{v:?}");
    }

    #[test]
    fn one_valid_token_among_bad_ones_is_enough_and_the_most_specific_refusal_wins() {
        assert!(decide(&request(vec![Err(TokenError::BadSignature), cap("b1", NOW + 60, None)])).is_allow());
        assert_eq!(deny_status(decide(&request(vec![Err(TokenError::BadSignature), cap("b2", NOW + 60, None)]))), 403);
    }

    #[test]
    fn a_cors_preflight_without_a_token_is_told_where_the_token_goes() {
        let mut preflight = request(vec![]);
        preflight.request.method = "OPTIONS".into();
        let header = |name: &str, value: &str| Header { name: name.into(), value: value.into() };
        preflight.request.headers = vec![header("origin", "http://localhost:5000"), header("access-control-request-method", "POST")];
        let v = decide(&preflight);
        assert!(matches!(&v, Verdict::Deny(d) if d.status == 401 && d.reason.contains("token query parameter")), "{v:?}");
        // With the token in its URL it is let in, as its user.
        preflight.credentials = request(vec![cap("b1", NOW + 60, Some("alice"))]).credentials;
        assert!(matches!(decide(&preflight), Verdict::Allow(a) if a.subject.as_deref() == Some("alice")));
        // Not a preflight: an OPTIONS without the CORS question, or the
        // question on another method.
        let mut options = request(vec![]);
        options.request.method = "OPTIONS".into();
        options.request.headers = vec![header("origin", "http://localhost:5000")];
        let mut get = request(vec![]);
        get.request.headers = preflight.request.headers.clone();
        for v in [decide(&options), decide(&get)] {
            assert!(matches!(&v, Verdict::Deny(d) if d.status == 401 && d.reason.starts_with("no capability token: use")), "{v:?}");
        }
    }

    #[test]
    fn settings_are_refused_with_where_the_token_names_live() {
        assert!(DefaultAuth::validate_settings("").is_ok());
        assert!(DefaultAuth::validate_settings(" { } ").is_ok());
        let e = DefaultAuth::validate_settings(r#"{"cookie":"session"}"#).unwrap_err();
        assert!(matches!(&e, PluginError::InvalidSettings(m) if m.contains("proxy.token-cookie")), "{e:?}");
    }
}
