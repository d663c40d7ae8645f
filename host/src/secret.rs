//! A secret from the command line or the environment (a token, a signing
//! key): `Debug` shows `<redacted>`, so a printed or logged configuration
//! never carries it. Read it with [`Secret::expose`], where it is used.

use std::sync::Arc;

/// See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the bearer token in `headers` is this secret. Compared as
    /// SHA-256 digests, so the time taken says nothing about where a guess
    /// first differs, nor about the secret's length.
    pub fn presented_in(&self, headers: &http::HeaderMap) -> bool {
        self.is(bearer(headers))
    }

    /// Whether `candidate` is this secret, compared as
    /// [`presented_in`](Self::presented_in) does.
    pub fn is(&self, candidate: &str) -> bool {
        use sha2::{Digest, Sha256};
        Sha256::digest(candidate.as_bytes()) == Sha256::digest(self.0.as_bytes())
    }
}

/// The token of an `Authorization: Bearer` header (empty if there is none).
pub fn bearer(headers: &http::HeaderMap) -> &str {
    headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::plugins::credentials::bearer).unwrap_or("")
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.into()))
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(s.into()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s: Secret = "hunter2-hunter2-hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }

    #[test]
    fn only_the_same_bearer_token_matches() {
        let s = Secret::from("the-api-token-0123");
        let headers = |v: &str| http::HeaderMap::from_iter([(http::header::AUTHORIZATION, v.parse().unwrap())]);
        assert!(s.presented_in(&headers("Bearer the-api-token-0123")));
        assert!(!s.presented_in(&headers("Bearer the-api-token-012")));
        assert!(!s.presented_in(&headers("the-api-token-0123")), "not as a bearer token");
        assert!(!s.presented_in(&http::HeaderMap::new()));
    }
}
