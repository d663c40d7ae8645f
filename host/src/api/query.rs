//! Query strings read strictly.
//!
//! axum's `Query` (serde_urlencoded) keeps a malformed percent-escape
//! (`owner=%ZZ`) as literal text and turns bytes that are not UTF-8
//! (`owner=%FF`) into U+FFFD. A filter read that way matches nothing, and
//! the caller sees an empty list instead of the mistake; [`StrictQuery`]
//! answers 400 and says where the query is malformed.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// `Query<T>`, refusing malformed escapes and non-UTF-8 values, and
/// answering every rejection as an [`ApiError`].
#[derive(Debug)]
pub(crate) struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(query) = parts.uri.query() {
            check(query).map_err(ApiError::bad_request)?;
        }
        let Query(t) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(StrictQuery(t))
    }
}

/// Every `%` starts two hex digits, each `name=value` pair decodes to
/// UTF-8, and no value is empty (`timeout=` would be read as a number and
/// refused as "cannot parse integer from empty string", which names no
/// parameter; an empty filter is a mistake, not "no filter").
fn check(query: &str) -> Result<(), String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let (name, "") = pair.split_once('=').unwrap_or((pair, "")) {
            return Err(format!("{name} is empty: give a value, or leave it out"));
        }
        let mut decoded = Vec::with_capacity(pair.len());
        let mut bytes = pair.bytes().enumerate();
        while let Some((i, b)) = bytes.next() {
            if b != b'%' {
                decoded.push(b);
                continue;
            }
            let hex = pair.get(i + 1..i + 3).filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            let Some(hex) = hex else {
                let seen: String = pair[i..].chars().take(3).collect();
                return Err(format!(
                    "the query string has a malformed percent-escape {seen:?} in {pair:?}: a % must be followed by two hex digits (write a literal % as %25)"
                ));
            };
            decoded.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            bytes.nth(1);
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(format!("the query string's {pair:?} does not decode to UTF-8 text"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn well_formed_queries_pass() {
        for q in ["", "owner=alice", "owner=a%20b&live=true", "labels=app%3Dnotes%2Cteam%3Dx", "owner=%C3%A9t%C3%A9", "a=%25", "k=v+w"] {
            assert_eq!(check(q), Ok(()), "{q}");
        }
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused_saying_where() {
        let e = check("live=true&owner=%ZZ").unwrap_err();
        assert!(e.contains("\"%ZZ\"") && e.contains("\"owner=%ZZ\"") && e.contains("%25"), "{e}");
        let e = check("owner=ab%4").unwrap_err();
        assert!(e.contains("\"%4\""), "{e}");
        assert!(check("owner=%").unwrap_err().contains("\"%\""));
        assert!(check("owner=%FF").unwrap_err().contains("UTF-8"));
        assert!(check("owner=%C3").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn empty_values_are_refused_naming_the_parameter() {
        assert_eq!(check("tail=").unwrap_err(), "tail is empty: give a value, or leave it out");
        assert_eq!(check("owner=a&live").unwrap_err(), "live is empty: give a value, or leave it out");
        assert_eq!(check("owner=a&&live=true"), Ok(()), "an empty pair is no parameter");
    }
}
