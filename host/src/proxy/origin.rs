//! When the token cookie may not vouch for a request: a WebSocket upgrade
//! or a state-changing method sent by a page of another origin.
//!
//! Why: browsers attach a cookie to every request for its host and path,
//! whoever asked. `SameSite=Lax` keeps it off other *sites'* forms and
//! WebSockets, but not off other origins of the same site: with host
//! routing, a page of `a.apps.example.com` is same-site with
//! `b.apps.example.com`, and WebSockets have no CORS, so A's page could
//! open B's WebSocket, or post a form to B, as B's user (a cross-site
//! WebSocket hijack). A bearer or query token is different: a page sends
//! it only if it has it.
//!
//! Browsers mark each request with `Sec-Fetch-Site`; older ones send
//! `Origin` on WebSocket upgrades and cross-origin posts, which is then
//! compared with the request's own origin. Server-side clients send
//! neither and are not affected.

use http::{HeaderMap, Method, header};

/// The other origin (or site) that sent a WebSocket upgrade or an unsafe
/// request, or `None` when the cookie may vouch for it: a safe method, a
/// request from the same origin, typed in, or not from a browser. `scheme`
/// is the one browsers use to reach Spawner (`proxy.forwarded-proto`).
pub fn cookie_refused_for(method: &Method, websocket: bool, headers: &HeaderMap, scheme: &str) -> Option<String> {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    if safe && !websocket {
        return None;
    }
    let text = |name| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let origin = text(header::ORIGIN);
    if let Some(site) = headers.get("sec-fetch-site") {
        if site == "same-origin" || site == "none" {
            return None;
        }
        return Some(origin.unwrap_or_else(|| format!("a {} page", String::from_utf8_lossy(site.as_bytes()))));
    }
    let origin = origin?;
    let own = text(header::HOST).map(|host| format!("{scheme}://{host}"));
    if own.is_some_and(|own| same_origin(&origin, &own)) { None } else { Some(origin) }
}

/// Origins compare as ASCII case-insensitive strings, with a scheme's
/// default port and no port alike (`http://a:80` is `http://a`).
fn same_origin(a: &str, b: &str) -> bool {
    let normal = |o: &str| {
        let o = o.to_ascii_lowercase();
        o.strip_suffix(":80")
            .filter(|_| o.starts_with("http://"))
            .or_else(|| o.strip_suffix(":443").filter(|_| o.starts_with("https://")))
            .map(str::to_string)
            .unwrap_or(o)
    };
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn cookies_vouch_for_safe_and_same_origin_requests_only() {
        let refused = |m: Method, ws: bool, h: &[(&'static str, &str)]| cookie_refused_for(&m, ws, &headers(h), "http");
        // Reading is left to CORS and SameSite.
        assert_eq!(refused(Method::GET, false, &[("sec-fetch-site", "cross-site"), ("origin", "http://evil.test")]), None);
        // Same origin, typed in, or a server-side client.
        assert_eq!(refused(Method::GET, true, &[("sec-fetch-site", "same-origin")]), None);
        assert_eq!(refused(Method::POST, false, &[("sec-fetch-site", "none")]), None);
        assert_eq!(refused(Method::POST, false, &[]), None);
        // Another origin of the same site, by the fetch metadata...
        let sibling = [("sec-fetch-site", "same-site"), ("origin", "http://a.apps.test"), ("host", "b.apps.test")];
        assert_eq!(refused(Method::GET, true, &sibling).as_deref(), Some("http://a.apps.test"));
        assert_eq!(refused(Method::DELETE, false, &[("sec-fetch-site", "cross-site")]).as_deref(), Some("a cross-site page"));
        // ... or, from a browser without it, by `Origin` against `Host`.
        assert_eq!(
            refused(Method::GET, true, &[("origin", "http://a.apps.test"), ("host", "b.apps.test")]).as_deref(),
            Some("http://a.apps.test")
        );
        assert_eq!(refused(Method::POST, false, &[("origin", "null"), ("host", "b.apps.test")]).as_deref(), Some("null"));
        assert_eq!(refused(Method::GET, true, &[("origin", "HTTP://B.apps.test:80"), ("host", "b.apps.test")]), None);
        assert_eq!(refused(Method::PUT, false, &[("origin", "http://b.apps.test:8080"), ("host", "b.apps.test:8080")]), None);
        assert!(
            refused(Method::PUT, false, &[("origin", "https://b.apps.test:8080"), ("host", "b.apps.test:8080")]).is_some(),
            "scheme counts"
        );
    }
}
