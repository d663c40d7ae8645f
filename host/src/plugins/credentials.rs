//! The capability tokens a request carries where Spawner puts them, found
//! and verified by the host before the auth plugin runs.
//!
//! Why the host and not the plugin: the proxy must know these places anyway
//! (it moves a query token into the cookie and strips all three before
//! forwarding), the secret stays in the host either way, and a plugin that
//! gets verified claims in its input calls no host function. A plugin with
//! no string-passing imports is instantiated as one core module instead of
//! three, which makes an auth decision about a fifth cheaper
//! (bench/README.md).
//! The plugin keeps the policy: which backend, which user, until when.

use super::types::{Capability, Credential, CredentialSource, HttpRequest, TokenError};
use crate::token::{self, TokenKey};

/// Where tokens are looked for, besides `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenNames {
    /// Cookie the proxy stores a token in.
    pub cookie: String,
    /// Query parameter a browser's first visit carries the token in.
    pub query_param: String,
}

impl Default for TokenNames {
    fn default() -> Self {
        TokenNames { cookie: "spawner-token".into(), query_param: "token".into() }
    }
}

/// Token cookies looked at per request: a browser sends every cookie of
/// that name whose path matches (the proxy's own, and any a page set), the
/// longest paths first.
const MAX_COOKIE_TOKENS: usize = 64;

/// Cookie tokens passed on that verified for the backend being reached
/// (each a credential for the plugin).
const MAX_VALID_COOKIE_TOKENS: usize = 4;

/// The tokens a request for `backend` carries, each verified with `key`
/// (without a key every token is refused as malformed), in the order
/// bearer, query, cookie; an empty one gives no credential. For the bearer
/// and the query the first occurrence counts, as for the proxy's token
/// redirect. Of the token cookies (up to [`MAX_COOKIE_TOKENS`] are looked
/// at), those that verify and name `backend` count (up to
/// [`MAX_VALID_COOKIE_TOKENS`]); when none does, the first that verifies
/// for another backend (the plugin refuses it, naming both), else the first
/// at all, for the reason it fails. Stray cookies of that name, set by a
/// page on paths the browser sends first, must not hide the proxy's own,
/// even when they hold valid tokens for other backends.
pub fn find(request: &HttpRequest, names: &TokenNames, key: Option<&TokenKey>, backend: &str) -> Vec<Credential> {
    find_reaching(request, names, key, backend, None)
}

/// [`find`], for the backend object `reached`: a token for its name
/// minted for another object of it, or issued before it was created, was
/// for an earlier backend (see [`verify_for`]).
pub fn find_reaching(
    request: &HttpRequest,
    names: &TokenNames,
    key: Option<&TokenKey>,
    backend: &str,
    reached: Option<&Reached>,
) -> Vec<Credential> {
    let verify = |key, token| verify_for(key, token, backend, reached);
    let header = |name: &'static str| request.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str());
    let bearer = header("authorization").find_map(bearer);
    let query = request.query.as_deref().and_then(|q| pair_value(q.split('&'), &names.query_param));
    let mut found: Vec<Credential> = [(CredentialSource::Bearer, bearer), (CredentialSource::Query, query)]
        .into_iter()
        .filter_map(|(source, token)| token.filter(|t| !t.is_empty()).map(|t| Credential { source, verified: verify(key, t) }))
        .collect();
    let cookies = pair_values(header("cookie").flat_map(|v| v.split(';').map(str::trim_ascii)), &names.cookie)
        .filter(|t| !t.is_empty())
        .take(MAX_COOKIE_TOKENS);
    let (mut first_other, mut first_failure) = (None, None);
    let mut valid = Vec::new();
    for token in cookies {
        let credential = Credential { source: CredentialSource::Cookie, verified: verify(key, token) };
        let first = match &credential.verified {
            // All of them, for the users they name (see below); only the
            // first few go to the plugin.
            Ok(cap) if cap.backend == backend => {
                valid.push(credential);
                continue;
            }
            Ok(_) => &mut first_other,
            Err(_) => &mut first_failure,
        };
        first.get_or_insert(credential);
    }
    if valid.is_empty() {
        found.extend(first_other.or(first_failure));
    } else if names_several_users(&valid) {
        found.push(Credential {
            source: CredentialSource::Cookie,
            verified: Err(TokenError::Malformed(format!(
                "the {} cookies for this backend name different users, so none counts (a page of another backend under the same \
                 parent domain may have set one for the browser): clear this site's cookies and open the backend's link again, \
                 or send the token as Authorization: Bearer",
                names.cookie
            ))),
        });
    } else {
        valid.truncate(MAX_VALID_COOKIE_TOKENS);
        found.extend(valid);
    }
    found
}

/// Whether valid tokens for one backend name more than one user. The proxy
/// sets one cookie per backend, replaced by each link opened: another, for
/// another user, was set by someone else (under host routing, a sibling
/// backend's page can set a cookie for the parent domain, on a path the
/// browser sends first), and would make this browser act as that user.
/// Expired ones do not count: they let no one in, and one planted must not
/// lock the browser out.
fn names_several_users(valid: &[Credential]) -> bool {
    let now = token::now_unix();
    let mut subjects = valid.iter().filter_map(|c| c.verified.as_ref().ok()).filter(|c| c.expires_at > now).map(|c| &c.subject);
    let first = subjects.next();
    subjects.any(|s| Some(s) != first)
}

/// The token in an `Authorization` value of the Bearer scheme (whose name
/// is case-insensitive, RFC 7235). The proxy strips by the same reading, so
/// what the plugin was shown is what never reaches the backend, and the API
/// reads its token the same way. Only ASCII whitespace is trimmed, as HTTP
/// defines it and as the proxy reads cookies: a token followed by another
/// kind of space (a no-break space) is then a malformed token, not a valid
/// one the stripping would not recognise.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_ascii())
}

/// A query or cookie pair as `(name, value)`; a name alone has an empty
/// value. The proxy's token redirect reads the query the same way.
pub fn split_pair(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

/// The value of the first pair named `name`.
fn pair_value<'a>(pairs: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    pair_values(pairs, name).next()
}

/// The values of every pair named `name`, in order.
fn pair_values<'a>(pairs: impl Iterator<Item = &'a str>, name: &str) -> impl Iterator<Item = &'a str> {
    pairs.filter_map(move |pair| {
        let (k, v) = split_pair(pair);
        (k == name).then_some(v)
    })
}

/// Clock difference tolerated between whoever minted a token and whoever
/// created its backend (the API server, on Kubernetes).
pub const ISSUE_SKEW_SECONDS: u64 = 5;

/// A verified token for `backend` issued before `backend_created_at` (Unix
/// seconds, 0 for unknown) was for an earlier backend of the same name: an
/// error that says so (the WIT's `malformed`, with the reason).
pub fn issued_since(cap: &Capability, backend: &str, backend_created_at: u64) -> Result<(), TokenError> {
    if cap.backend == backend && cap.issued_at.saturating_add(ISSUE_SKEW_SECONDS) < backend_created_at {
        let why = format!("issued before backend {} was created: it was for an earlier backend of that name", cap.backend);
        return Err(TokenError::Malformed(why));
    }
    Ok(())
}

/// The backend object a request reaches: when it was created (Unix
/// seconds, 0 for unknown) and, where a name can come back as another
/// object (a key's next backend, on Kubernetes), its uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    /// Creation time.
    pub created_at: u64,
    /// Object uid.
    pub uid: Option<String>,
}

/// Checks one token's signature: what `host.verify-capability-token`
/// answers, and what each credential carries.
pub fn verify(key: Option<&TokenKey>, token: &str) -> Result<Capability, TokenError> {
    verify_for(key, token, "", None)
}

/// [`verify`], and for `backend`, the object `reached`: a token for its
/// name minted for another object of it (an earlier backend of the key,
/// whose user must not reach the next one) is refused, whenever it was
/// issued and whatever the clocks of who minted it and who created the
/// object say; one that names no object (minted outside the API) is
/// refused when issued before the object was created ([`issued_since`]).
pub fn verify_for(key: Option<&TokenKey>, token: &str, backend: &str, reached: Option<&Reached>) -> Result<Capability, TokenError> {
    let (cap, minted_for) = verify_claims(key, token)?;
    if let Some(reached) = reached
        && cap.backend == backend
    {
        match (&minted_for, &reached.uid) {
            (Some(minted_for), Some(uid)) if minted_for != uid => {
                return Err(TokenError::Malformed(format!(
                    "minted for an earlier backend named {backend}: a later one of that name does not take it"
                )));
            }
            (Some(_), Some(_)) => {}
            _ => issued_since(&cap, backend, reached.created_at)?,
        }
    }
    Ok(cap)
}

/// The capability a token grants, and the object it was minted for.
fn verify_claims(key: Option<&TokenKey>, token: &str) -> Result<(Capability, Option<String>), TokenError> {
    let Some(key) = key else {
        // Only `spawner plugin run` has no key (the servers always have
        // one, random when unconfigured): say how to give it one.
        return Err(TokenError::Malformed(
            "not checked: no token secret to verify it with (spawner plugin run: pass --token-secret, the secret the token was minted with)"
                .into(),
        ));
    };
    match key.verify(token) {
        Ok(c) => Ok((Capability { backend: c.backend, subject: c.subject, issued_at: c.issued_at, expires_at: c.expires_at }, c.object)),
        Err(token::TokenError::BadSignature) => Err(TokenError::BadSignature),
        // The variant already says "malformed"; pass only the why.
        Err(token::TokenError::Malformed(why)) => Err(TokenError::Malformed(why.into())),
        Err(e) => Err(TokenError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::types::Header;

    #[test]
    fn a_token_minted_for_another_object_of_the_name_is_refused() {
        let key = TokenKey::new(b"0123456789abcdef-objects").unwrap();
        let now = token::now_unix();
        let found = |token: &str, uid: Option<&str>| {
            let request = HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                query: None,
                headers: vec![Header { name: "authorization".into(), value: format!("Bearer {token}") }],
                peer: "127.0.0.1:1".into(),
                websocket: false,
            };
            let reached = Reached { created_at: now, uid: uid.map(str::to_string) };
            find_reaching(&request, &TokenNames::default(), Some(&key), "k-1", Some(&reached)).remove(0).verified
        };
        let earlier = key.mint_for("k-1", Some("uid-1"), Some("alice"), now, now + 60);
        let Err(TokenError::Malformed(why)) = found(&earlier, Some("uid-2")) else { panic!("accepted") };
        assert!(why.contains("minted for an earlier backend named k-1"), "{why}");
        assert!(found(&earlier, Some("uid-1")).is_ok(), "its own object");
        assert!(found(&earlier, None).is_ok(), "no object known (local mode): the creation time decides");
        let late = key.mint_for("k-1", Some("uid-1"), Some("alice"), now - 600, now + 60);
        assert!(found(&late, None).is_err(), "and does, for a token issued before");
        assert!(found(&key.mint("k-1", None, now, now + 60), Some("uid-2")).is_ok(), "a token that names none");
        let other = key.mint_for("k-0", Some("uid-9"), None, now, now + 60);
        assert_eq!(found(&other, Some("uid-2")).map(|c| c.backend), Ok("k-0".into()), "another backend's: the plugin's to refuse");
    }

    /// Plugin authors' tests build this refusal with the SDK's
    /// `testing::issued_before_creation`: it must be the host's, message
    /// included.
    #[test]
    fn the_sdk_refuses_tokens_of_earlier_backends_as_the_host_does() {
        let cap = Capability { backend: "b".into(), subject: None, issued_at: 100, expires_at: 200 };
        let Err(TokenError::Malformed(host)) = issued_since(&cap, "b", 100 + ISSUE_SKEW_SECONDS + 1) else { panic!("accepted") };
        let spawner_plugin_sdk::host::TokenError::Malformed(sdk) = spawner_plugin_sdk::testing::issued_before_creation("b") else {
            panic!("another variant")
        };
        assert_eq!(host, sdk);
        assert!(issued_since(&cap, "b", 100 + ISSUE_SKEW_SECONDS).is_ok(), "within the clock tolerance");
        assert!(issued_since(&cap, "other", 1000).is_ok(), "another backend's token is the plugin's to refuse");
    }

    fn request(query: Option<&str>, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: query.map(Into::into),
            headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
            peer: "127.0.0.1:1".into(),
            websocket: false,
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_whatever_its_case() {
        for value in ["Bearer st1.x", "bearer st1.x", "BEARER  st1.x "] {
            assert_eq!(bearer(value), Some("st1.x"), "{value}");
        }
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearer"), None);
    }

    fn sources(found: &[Credential]) -> Vec<CredentialSource> {
        found.iter().map(|c| c.source).collect()
    }

    #[test]
    fn tokens_from_before_the_backend_existed_are_refused() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let created = 1_800_000_000;
        let old = key.mint("k-1", Some("alice"), created - 600, created + 3600);
        let fresh = key.mint("k-1", Some("bob"), created, created + 3600);
        let skewed = key.mint("k-1", Some("bob"), created - ISSUE_SKEW_SECONDS, created + 3600);
        let reached = Reached { created_at: created, uid: None };
        let check = |t: &str| verify_for(Some(&key), t, "k-1", Some(&reached));
        assert!(matches!(check(&old), Err(TokenError::Malformed(why)) if why.contains("earlier backend")));
        assert!(check(&fresh).is_ok());
        assert!(check(&skewed).is_ok(), "a few seconds of clock difference are tolerated");
        // A token for another backend, older than this one, stays what it
        // is: the plugin refuses it for being another backend's (403).
        let other = key.mint("k-0", Some("alice"), created - 600, created + 3600);
        assert_eq!(check(&other).map(|c| c.backend), Ok("k-0".into()));
        // A token that names this object is this object's, whatever the
        // clocks say of its issue.
        let reached = Reached { created_at: created, uid: Some("uid-1".into()) };
        let named = key.mint_for("k-1", Some("uid-1"), None, created - 600, created + 3600);
        assert!(verify_for(Some(&key), &named, "k-1", Some(&reached)).is_ok());
        assert!(verify_for(Some(&key), &old, "k-1", Some(&reached)).is_err(), "one that names none still has the time check");
    }

    #[test]
    fn finds_one_token_per_source_in_order_and_verifies_each() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let now = token::now_unix();
        let good = key.mint("b1", Some("alice"), now, now + 60);
        let req = request(
            Some(&format!("a=1&token={good}&token=second")),
            &[("cookie", "x=1; spawner-token=st1.forged.sig"), ("authorization", &format!("Bearer {good}"))],
        );
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(sources(&found), [CredentialSource::Bearer, CredentialSource::Query, CredentialSource::Cookie]);
        let cap = found[0].verified.as_ref().unwrap();
        assert_eq!((cap.backend.as_str(), cap.subject.as_deref()), ("b1", Some("alice")));
        assert!(found[1].verified.is_ok(), "the first query value is the one checked");
        assert!(found[2].verified.is_err(), "a forged cookie is reported, not dropped");
    }

    #[test]
    fn stray_token_cookies_cannot_hide_the_proxys() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let now = token::now_unix();
        let good = key.mint("b1", Some("alice"), now, now + 60);
        // A browser sends the cookie with the longer path first: one a page
        // set on /p/b1/api/ comes before the proxy's, on /p/b1/.
        let stray = ["spawner-token=st1.junk.sig"; 10].join("; ");
        let req = request(None, &[("cookie", &format!("{stray}; theme=dark; spawner-token={good}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(sources(&found), [CredentialSource::Cookie], "the one that verifies");
        assert!(found[0].verified.is_ok());
        // None verifies: the first says why.
        let found = find(&request(None, &[("cookie", &stray)]), &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found.len(), 1);
        assert!(found[0].verified.is_err());
        // What is looked at is bounded.
        let flood = ["spawner-token=x"; MAX_COOKIE_TOKENS].join("; ");
        let hidden = request(None, &[("cookie", &format!("{flood}; spawner-token={good}"))]);
        assert!(find(&hidden, &TokenNames::default(), Some(&key), "b1")[0].verified.is_err());
        // Valid tokens for other backends (a page may set its own on longer
        // paths) neither crowd this backend's out nor stand in for it.
        let other = key.mint("b0", Some("mallory"), now, now + 60);
        let crowd = vec![format!("spawner-token={other}"); MAX_VALID_COOKIE_TOKENS + 2].join("; ");
        let req = request(None, &[("cookie", &format!("{crowd}; spawner-token={good}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found.iter().map(|c| c.verified.as_ref().unwrap().backend.as_str()).collect::<Vec<_>>(), ["b1"]);
        // Only others': the first, which the plugin refuses naming it.
        let found =
            find(&request(None, &[("cookie", &format!("spawner-token=st1.junk.sig; {crowd}"))]), &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verified.as_ref().map(|c| c.backend.as_str()), Ok("b0"));
    }

    #[test]
    fn cookies_for_one_backend_that_name_different_users_do_not_count() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let now = token::now_unix();
        let alice = key.mint("b1", Some("alice"), now, now + 60);
        // Another user's token for the same backend, in a cookie a sibling
        // backend's page set for the parent domain on a longer path: the
        // browser sends it first.
        let bob = key.mint("b1", Some("bob"), now, now + 60);
        let req = request(None, &[("cookie", &format!("spawner-token={bob}; spawner-token={alice}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(sources(&found), [CredentialSource::Cookie]);
        let Err(TokenError::Malformed(why)) = &found[0].verified else { panic!("counted: {found:?}") };
        assert!(why.starts_with("the spawner-token cookies for this backend name different users, so none counts"), "{why}");
        // A bearer token still counts, first.
        let mut with_bearer = req.clone();
        with_bearer.headers.push(Header { name: "authorization".into(), value: format!("Bearer {alice}") });
        let found = find(&with_bearer, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found[0].verified.as_ref().map(|c| c.subject.as_deref()), Ok(Some("alice")));
        // Two tokens of one user (an older one on a longer path) both count.
        let again = key.mint("b1", Some("alice"), now, now + 120);
        let req = request(None, &[("cookie", &format!("spawner-token={again}; spawner-token={alice}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|c| c.verified.is_ok()));
        // However many of the other user's come first (a page can set one
        // per path the request's path starts with), the browser's own is
        // still seen.
        let planted = vec![format!("spawner-token={bob}"); MAX_VALID_COOKIE_TOKENS + 1].join("; ");
        let req = request(None, &[("cookie", &format!("{planted}; spawner-token={alice}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(found.len(), 1);
        assert!(found[0].verified.is_err(), "{found:?}");
        // An expired one of another user's lets no one in, and locks no one
        // out.
        let old_bob = key.mint("b1", Some("bob"), now - 120, now - 60);
        let req = request(None, &[("cookie", &format!("spawner-token={old_bob}; spawner-token={alice}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert!(found.iter().all(|c| c.verified.is_ok()) && found.len() == 2, "{found:?}");
        // A token naming nobody is another user than alice too.
        let nobody = key.mint("b1", None, now, now + 60);
        let req = request(None, &[("cookie", &format!("spawner-token={nobody}; spawner-token={alice}"))]);
        assert!(find(&req, &TokenNames::default(), Some(&key), "b1")[0].verified.is_err());
    }

    #[test]
    fn only_ascii_whitespace_is_trimmed_as_the_stripping_does() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let now = token::now_unix();
        let good = key.mint("b1", None, now, now + 60);
        // A no-break space next to a token: not a valid credential, so the
        // plugin cannot be let in by a token the proxy would not strip.
        let req = request(None, &[("authorization", &format!("Bearer {good}\u{a0}")), ("cookie", &format!("\u{a0}spawner-token={good}"))]);
        let found = find(&req, &TokenNames::default(), Some(&key), "b1");
        assert_eq!(sources(&found), [CredentialSource::Bearer]);
        assert!(found[0].verified.is_err());
        let req = request(None, &[("authorization", &format!("Bearer \t{good} ")), ("cookie", &format!(" spawner-token={good}\t"))]);
        assert!(find(&req, &TokenNames::default(), Some(&key), "b1").iter().all(|c| c.verified.is_ok()));
    }

    #[test]
    fn names_are_configurable_and_empty_or_absent_tokens_are_skipped() {
        let key = TokenKey::new(b"0123456789abcdef-credentials").unwrap();
        let names = TokenNames { cookie: "sess".into(), query_param: "t".into() };
        let req =
            request(Some("token=ignored&t="), &[("cookie", "spawner-token=ignored; sess=st1.a.b"), ("authorization", "Basic dXNlcg==")]);
        let found = find(&req, &names, Some(&key), "b1");
        assert_eq!(sources(&found), [CredentialSource::Cookie]);
        assert!(find(&request(None, &[]), &names, Some(&key), "b1").is_empty());
    }

    #[test]
    fn without_a_key_every_token_is_refused_with_a_reason() {
        let req = request(Some("token=st1.a.b"), &[]);
        let found = find(&req, &TokenNames::default(), None, "b1");
        assert!(matches!(&found[0].verified, Err(TokenError::Malformed(why)) if why.contains("no token secret")));
    }
}
