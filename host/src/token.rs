//! Capability tokens: what the browser presents to reach one backend.
//!
//! Spawner mints a token when it creates a backend and hands it to the web
//! app with the backend's URL. The host finds tokens in a request and
//! verifies them before the auth plugin runs (`plugins::credentials`), and
//! plugins may ask it to verify others (`verify-capability-token`), so the
//! secret never enters the sandbox.
//!
//! Format (URL-, header- and cookie-safe; no padding):
//!
//! ```text
//! st1.<base64url(payload JSON)>.<base64url(HMAC-SHA256(secret, "st1." + payload part))>
//! payload: {"b": backend name, "o": backend object (optional), "sub": user (optional), "iat": issued at, "exp": expires at}
//! ```
//!
//! Times are seconds since the Unix epoch. The signature covers the version
//! prefix so a future format cannot be confused with this one. Verification
//! is constant time (the `hmac` crate's `verify_slice`). Expiry is *not*
//! checked here: the auth plugin compares `exp` with the request's `now`,
//! so a policy may allow a grace period.
//!
//! Rotation: a key may also hold previous secrets, which verify tokens but
//! never sign them, so a new secret can be rolled out without cutting off
//! the tokens already handed out (README, "Rotating the token secret").

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Version prefix of tokens in this format.
pub const PREFIX: &str = "st1.";

/// Shortest secret accepted: 128 bits, the HMAC-SHA256 security floor we
/// are willing to ship.
pub const MIN_SECRET_BYTES: usize = 16;

/// Tokens longer than this are refused before any decoding: a real one is
/// about 150 bytes, and the limit bounds work done on hostile input.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Longest token lifetime, configured or asked for: 30 days. A leaked token
/// is good until it expires (there is no revocation list), so this bounds
/// the damage.
pub const MAX_TTL_SECONDS: u64 = 30 * 86_400;

/// Token lifetimes accepted, in the configuration and in API requests.
pub const TTL_SECONDS: std::ops::RangeInclusive<u64> = 1..=MAX_TTL_SECONDS;

/// Characters of a signature: base64url of an HMAC-SHA256 (32 bytes).
const SIGNATURE_CHARS: usize = 43;

/// Fewest characters of a payload: base64url of the shortest claims
/// (`{"b":"x","iat":0,"exp":0}`).
const MIN_PAYLOAD_CHARS: usize = 32;

/// Whether `text` holds something shaped like a token anywhere in it
/// (`st1.`, a payload, `.`, a signature, each part whole), valid or not:
/// what the proxy keeps from backends however it was sent (a cookie or
/// parameter of any name, any `Authorization` form), since some server
/// would read it. The shape is exact enough that an application's own
/// values (`st1.example.com`, a JWT) do not match.
pub fn shaped_in(text: &str) -> bool {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = text.as_bytes();
    let run = |from: usize| bytes[from..].iter().take_while(|c| b64(**c)).count();
    text.match_indices(PREFIX).any(|(at, _)| {
        let starts_a_word = at == 0 || !b64(bytes[at - 1]);
        let payload_at = at + PREFIX.len();
        let payload = run(payload_at);
        let sig_at = payload_at + payload + 1;
        starts_a_word
            && payload >= MIN_PAYLOAD_CHARS
            && bytes.get(sig_at - 1) == Some(&b'.')
            && run(sig_at) == SIGNATURE_CHARS
            && bytes.get(sig_at + SIGNATURE_CHARS).is_none_or(|c| *c != b'.')
    })
}

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The secret is too short to be safe.
    #[error("the token secret must be at least {MIN_SECRET_BYTES} bytes (got {0}); generate one with `openssl rand -hex 32`")]
    WeakSecret(usize),
    /// Not a token in this format.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Well formed but not signed with this secret.
    #[error("token signature does not match")]
    BadSignature,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Backend the token grants access to.
    pub backend: String,
    /// User it was issued for, if any.
    pub subject: Option<String>,
    /// Issue time, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Expiry time, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The backend object it was minted for, where a name can come back as
    /// another object (a key's next backend, on Kubernetes: its uid).
    pub object: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    b: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    iat: u64,
    exp: u64,
}

/// The signing secret, and previous ones that still verify. `Debug` does
/// not print them.
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
    previous: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// A key from a configured secret.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        Ok(TokenKey { mac: hmac(secret)?, previous: Vec::new() })
    }

    /// This key, also accepting tokens signed with `previous` secrets (it
    /// signs with its own only).
    pub fn with_previous<S: AsRef<[u8]>>(mut self, previous: &[S]) -> Result<Self, TokenError> {
        self.previous = previous.iter().map(|s| hmac(s.as_ref())).collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// The key of a configured `secret`, also accepting tokens signed with
    /// the `previous` ones (rotating the secret): what `spawner dev` and
    /// `spawner proxy` run with.
    pub fn configured(secret: &crate::secret::Secret, previous: &[crate::secret::Secret]) -> Result<Self, TokenError> {
        Self::new(secret.expose().as_bytes())?.with_previous(&previous.iter().map(|p| p.expose().as_bytes()).collect::<Vec<_>>())
    }

    /// A random key, for a single process that mints and verifies its own
    /// tokens (tokens do not survive a restart).
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        Self::new(&secret).expect("32 bytes is long enough")
    }

    /// Mints a token for `backend` valid until `expires_at`.
    pub fn mint(&self, backend: &str, subject: Option<&str>, issued_at: u64, expires_at: u64) -> String {
        self.mint_for(backend, None, subject, issued_at, expires_at)
    }

    /// The same, for the backend object `object` of that name (its uid on
    /// Kubernetes): no later object of the name accepts it.
    pub fn mint_for(&self, backend: &str, object: Option<&str>, subject: Option<&str>, issued_at: u64, expires_at: u64) -> String {
        let payload = Payload {
            b: backend.to_string(),
            o: object.map(str::to_string),
            sub: subject.map(str::to_string),
            iat: issued_at,
            exp: expires_at,
        };
        let json = serde_json::to_vec(&payload).expect("payload serialises");
        let mut token = String::with_capacity(160);
        token.push_str(PREFIX);
        B64.encode_string(json, &mut token);
        let sig = self.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(sig, &mut token);
        token
    }

    /// Checks the signature and decodes the claims (expiry not checked).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("too long"));
        }
        if !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed("not a Spawner token (expected prefix st1.)"));
        }
        let rest = &token[PREFIX.len()..];
        let (payload_b64, sig) = rest.split_once('.').ok_or(TokenError::Malformed("no signature"))?;
        let signed = &token[..PREFIX.len() + payload_b64.len()];
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signed_by = |key: &Hmac<Sha256>| {
            let mut mac = key.clone();
            mac.update(signed.as_bytes());
            mac.verify_slice(&sig).is_ok()
        };
        if !self.keys().any(signed_by) {
            return Err(TokenError::BadSignature);
        }
        let json = B64.decode(payload_b64).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("payload is not valid JSON"))?;
        // An empty user (a minter outside Spawner writing `"sub": ""` for
        // nobody) names no user: the proxy sends no `x-spawner-user`.
        Ok(Claims { backend: p.b, subject: p.sub.filter(|s| !s.is_empty()), issued_at: p.iat, expires_at: p.exp, object: p.o })
    }

    /// A seal over `data` (base64url), for Spawner to recognise later what
    /// it wrote (on Kubernetes, the backend objects its API created).
    /// Domain-separated from tokens: no seal is a token's signature.
    pub fn seal(&self, data: &[u8]) -> String {
        B64.encode(sealing(&self.mac, data).finalize().into_bytes())
    }

    /// Whether `seal` is [`Self::seal`]'s over `data`, with this secret or
    /// a previous one (constant time).
    pub fn sealed(&self, data: &[u8], seal: &str) -> bool {
        let Ok(seal) = B64.decode(seal) else { return false };
        self.keys().any(|key| sealing(key, data).verify_slice(&seal).is_ok())
    }

    /// The secret and the previous ones: what verifies.
    fn keys(&self) -> impl Iterator<Item = &Hmac<Sha256>> {
        std::iter::once(&self.mac).chain(&self.previous)
    }

    fn sign(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// What every seal's MAC starts with (a token's starts with `st1.`).
const SEAL_DOMAIN: &[u8] = b"spawner seal\0";

/// `key`'s MAC over a seal's domain and `data`, to finish or verify.
fn sealing(key: &Hmac<Sha256>, data: &[u8]) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(SEAL_DOMAIN);
    mac.update(data);
    mac
}

/// An HMAC key from a secret of at least [`MIN_SECRET_BYTES`].
fn hmac(secret: &[u8]) -> Result<Hmac<Sha256>, TokenError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(TokenError::WeakSecret(secret.len()));
    }
    Ok(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length"))
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> TokenKey {
        TokenKey::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let k = key("0123456789abcdef-secret");
        let t = k.mint("b-1", Some("alice"), 100, 200);
        assert!(t.starts_with(PREFIX));
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{t}");
        let c = k.verify(&t).unwrap();
        assert_eq!(c, Claims { backend: "b-1".into(), subject: Some("alice".into()), issued_at: 100, expires_at: 200, object: None });
        let for_object = k.verify(&k.mint_for("b-1", Some("uid-7"), None, 100, 200)).unwrap();
        assert_eq!(for_object.object.as_deref(), Some("uid-7"));
    }

    #[test]
    fn a_token_is_seen_in_any_text_and_an_applications_values_are_not() {
        let k = key("0123456789abcdef-secret");
        let shortest = k.mint("x", None, 0, 0);
        let t = k.mint_for("doc-42", Some("9f8e7d6c-uid"), Some("alice"), 1_700_000_000, 1_700_003_600);
        for text in [
            shortest.clone(),
            t.clone(),
            format!("Bearer\u{a0}{t}"),
            format!("a=1 spawner-token={t}"),
            format!("Digest username=\"{t}\""),
            format!("x=1;token={t}&y=2"),
            format!("{t},"),
        ] {
            assert!(shaped_in(&text), "{text}");
        }
        for text in [
            "st1.example.com",
            "Digest username=\"st1.alice\", realm=\"st1.example.com\"",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "st1.abc.def",
        ] {
            assert!(!shaped_in(text), "{text}");
        }
        assert!(!shaped_in(&format!("x{t}")), "inside a longer word");
        assert!(!shaped_in(&format!("{t}.more")), "a longer dotted value");
        assert!(!shaped_in(&t[..t.len() - 1]), "a cut signature");
    }

    #[test]
    fn another_secret_or_a_tampered_payload_is_a_bad_signature() {
        let t = key("0123456789abcdef-one").mint("b", None, 1, 2);
        assert_eq!(key("0123456789abcdef-two").verify(&t), Err(TokenError::BadSignature));
        let k = key("0123456789abcdef-one");
        let (_, sig) = t.rsplit_once('.').unwrap();
        let forged_payload = B64.encode(br#"{"b":"other","iat":1,"exp":99999999999}"#);
        let forged = format!("{PREFIX}{forged_payload}.{sig}");
        assert_eq!(k.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn an_empty_subject_names_no_user() {
        let k = key("0123456789abcdef-secret");
        assert_eq!(k.verify(&k.mint("b", Some(""), 1, 2)).unwrap().subject, None);
    }

    #[test]
    fn seals_hold_for_their_data_and_secret_only_and_are_never_tokens() {
        let key = key("0123456789abcdef-new");
        let seal = key.seal(b"name\0{}");
        assert!(key.sealed(b"name\0{}", &seal));
        assert!(!key.sealed(b"name\0{ }", &seal), "other data");
        assert!(!key.sealed(b"name\0{}", "not base64!"));
        assert!(!self::key("0123456789abcdef-other").sealed(b"name\0{}", &seal), "another secret");
        let rotated = self::key("0123456789abcdef-newer").with_previous(&["0123456789abcdef-new"]).unwrap();
        assert!(rotated.sealed(b"name\0{}", &seal), "a previous secret still recognises its seals");
        // A seal over a token's signed part is not that token's signature.
        let token = key.mint("b1", None, 1, 2);
        let (signed, signature) = token.rsplit_once('.').unwrap();
        assert_ne!(key.seal(signed.as_bytes()), signature);
    }

    #[test]
    fn previous_secrets_verify_but_never_sign() {
        let (old, new) = (key("0123456789abcdef-old"), key("0123456789abcdef-new"));
        let rotated = key("0123456789abcdef-new").with_previous(&["0123456789abcdef-old"]).unwrap();
        let handed_out = old.mint("b", Some("alice"), 1, 2);
        assert_eq!(rotated.verify(&handed_out).unwrap().subject.as_deref(), Some("alice"), "a token already handed out");
        let fresh = rotated.mint("b", None, 1, 2);
        assert!(new.verify(&fresh).is_ok(), "signed with the new secret");
        assert_eq!(old.verify(&fresh), Err(TokenError::BadSignature), "not with the old one");
        assert_eq!(key("0123456789abcdef-new").verify(&handed_out), Err(TokenError::BadSignature), "once the old one is dropped");
        assert_eq!(key("0123456789abcdef-new").with_previous(&["short"]).unwrap_err(), TokenError::WeakSecret(5));
    }

    #[test]
    fn garbage_is_malformed_and_short_secrets_are_refused() {
        let k = key("0123456789abcdef");
        assert!(matches!(k.verify("hello"), Err(TokenError::Malformed(_))));
        assert!(matches!(k.verify("st1.abc"), Err(TokenError::Malformed(_))));
        assert!(matches!(k.verify("st1.abc.!!"), Err(TokenError::Malformed(_))));
        assert!(matches!(k.verify(&"x".repeat(5000)), Err(TokenError::Malformed(_))));
        assert_eq!(TokenKey::new(b"short").unwrap_err(), TokenError::WeakSecret(5));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        assert_eq!(format!("{:?}", key("0123456789abcdef-secret")), "TokenKey(<redacted>)");
    }
}
