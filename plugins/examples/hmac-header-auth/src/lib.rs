//! Example auth: HMAC-signed identity headers from the web app's server.
//!
//! Instead of Spawner's capability tokens, the web app (which already knows
//! its user) puts three headers on the request, e.g. through its own
//! reverse proxy:
//!
//! - `x-auth-user`: the user;
//! - `x-auth-expires`: Unix seconds after which the signature is void;
//! - `x-auth-signature`: hex HMAC-SHA256 of `"{user}:{expires}:{backend}"`
//!   with the shared secret.
//!
//! With `owner-only` (default), the user must also be the backend's owner.
//! Settings: `{"secret": "at least 16 characters", "owner-only": true}`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use spawner_plugin_sdk::auth::*;
use spawner_plugin_sdk::host;

/// Settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Shared secret with the web app.
    pub secret: String,
    /// Only the backend's owner may connect.
    #[serde(default = "yes")]
    pub owner_only: bool,
}

fn yes() -> bool {
    true
}

/// The plugin.
pub struct HmacHeaderAuth;

impl Auth for HmacHeaderAuth {
    fn check(request: AuthRequest) -> Result<Verdict, PluginError> {
        Ok(decide(&request, &host::settings_json()?))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        let s: Settings = host::parse_settings(settings)?;
        if s.secret.len() < 16 {
            return Err(PluginError::InvalidSettings("secret must be at least 16 characters".into()));
        }
        Ok(())
    }
}

spawner_plugin_sdk::export!(auth: HmacHeaderAuth);

/// The signature the web app computes.
pub fn sign(secret: &str, user: &str, expires: u64, backend: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{user}:{expires}:{backend}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The policy.
pub fn decide(request: &AuthRequest, settings: &Settings) -> Verdict {
    let (Some(user), Some(expires), Some(signature)) =
        (request.header("x-auth-user"), request.header("x-auth-expires"), request.header("x-auth-signature"))
    else {
        return Verdict::deny(401, "missing x-auth-user, x-auth-expires or x-auth-signature");
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return Verdict::deny(401, "x-auth-expires is not a number");
    };
    let Ok(signature) = hex::decode(signature) else {
        return Verdict::deny(401, "x-auth-signature is not hex");
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(settings.secret.as_bytes()).expect("any key length");
    mac.update(format!("{user}:{expires}:{}", request.backend.name).as_bytes());
    if mac.verify_slice(&signature).is_err() {
        return Verdict::deny(401, "signature does not match");
    }
    if expires <= request.now {
        return Verdict::deny(401, "signature expired");
    }
    if settings.owner_only && request.backend.owner.as_deref() != Some(user) {
        return Verdict::deny(403, format!("{user} is not the owner of this backend"));
    }
    // The proxy passes the subject to the backend as `x-spawner-user`.
    Verdict::allow_as(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::backend;

    const SECRET: &str = "0123456789abcdef";

    fn request(user: &str, expires: u64, sig: &str) -> AuthRequest {
        let mut b = backend("b1");
        b.owner = Some("alice".into());
        let h = |n: &str, v: &str| Header { name: n.into(), value: v.into() };
        AuthRequest {
            request: HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                query: None,
                headers: vec![h("x-auth-user", user), h("x-auth-expires", &expires.to_string()), h("x-auth-signature", sig)],
                peer: "127.0.0.1:1".into(),
                websocket: true,
            },
            backend: b,
            now: 1000,
            credentials: vec![],
        }
    }

    fn settings() -> Settings {
        Settings { secret: SECRET.into(), owner_only: true }
    }

    #[test]
    fn signed_owner_is_allowed_others_are_not() {
        assert!(decide(&request("alice", 2000, &sign(SECRET, "alice", 2000, "b1")), &settings()).is_allow());
        assert!(!decide(&request("bob", 2000, &sign(SECRET, "bob", 2000, "b1")), &settings()).is_allow());
        assert!(!decide(&request("alice", 2000, &sign(SECRET, "alice", 2000, "b2")), &settings()).is_allow());
        assert!(!decide(&request("alice", 999, &sign(SECRET, "alice", 999, "b1")), &settings()).is_allow());
    }
}
