//! When the token cookie may not vouch for a request: a WebSocket upgrade
//! or a state-changing method sent by another backend's page.
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
//! Only the backend's own origin and the deployment's origins outside the
//! host-routing domain (the web app at `app.example.com` posting a form, a
//! sign-in service posting back) keep their cookie. Any origin under the
//! domain other than the request's own is another backend's, or could
//! serve one's content; `null` (a sandboxed frame, a redirect across
//! origins) could be anyone's, a backend's page included, and so could an
//! `Origin` that names no host. One `null` is the backend's own: a form on
//! a page served with `Referrer-Policy: no-referrer` (as the proxy serves
//! token-bearing pages) posts with `Origin: null`; the browser then says
//! `Sec-Fetch-Site: same-origin`, which no page can set and which a
//! sandboxed frame or a redirect through another origin never gets
//! (browsers send it over HTTPS and to localhost only). A WebSocket always
//! carries its page's real origin, so for one `null` stays refused.
//!
//! With a host domain the proxy serves backends on their own hosts only
//! (see `Proxy::route`), so no other origin of the deployment carries a
//! backend's page. In path routing every backend's pages share the proxy's
//! origin, which no origin check can tell apart (the README says so: host
//! routing is for backends that run code you do not trust). Browsers send
//! `Origin` with every WebSocket handshake and every cross-origin post; a
//! request without one is not a page's.

use http::{HeaderMap, Method, header};

/// The origin, when `host_domain` routes by host, that may not use the
/// cookie for a WebSocket upgrade or an unsafe request: another host under
/// the domain (the bare domain included), `null` (unless the browser says
/// `Sec-Fetch-Site: same-origin` of a request other than a WebSocket), or
/// one that names no host. `None` when the cookie may vouch for it: a safe
/// method, no `Origin`, the request's own host, or an origin outside the
/// domain.
pub fn cookie_refused_for(method: &Method, websocket: bool, headers: &HeaderMap, host_domain: Option<&str>) -> Option<String> {
    let domain = host_domain?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    if safe && !websocket {
        return None;
    }
    let origin = String::from_utf8_lossy(headers.get(header::ORIGIN)?.as_bytes()).into_owned();
    let same_origin = headers.get("sec-fetch-site").is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"same-origin"));
    // Not for a WebSocket, which always carries its page's real origin:
    // the hijack stays closed whatever a browser gets wrong about
    // `Sec-Fetch-Site`.
    if origin == "null" && same_origin && !websocket {
        return None;
    }
    let from = host_of(origin.split_once("://").map_or("", |(_, rest)| rest));
    let own = host_of(headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""));
    if from.is_empty() {
        return Some(origin);
    }
    let domain = domain.to_ascii_lowercase();
    let under = from == domain || crate::config::below_domain(&from, &domain).is_some();
    (under && from != own).then_some(origin)
}

/// The host name of an authority (`host[:port]`, or an origin's part after
/// the scheme), lower case, without the port.
fn host_of(authority: &str) -> String {
    let authority = authority.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn cookies_vouch_for_all_but_other_backends_upgrades_and_posts() {
        let domain = Some("apps.test");
        let refused = |m: Method, ws: bool, h: &[(&'static str, &str)]| cookie_refused_for(&m, ws, &headers(h), domain);
        let sibling = [("origin", "https://a.apps.test"), ("host", "b.apps.test")];
        assert_eq!(refused(Method::GET, true, &sibling).as_deref(), Some("https://a.apps.test"));
        assert_eq!(refused(Method::POST, false, &sibling).as_deref(), Some("https://a.apps.test"));
        assert_eq!(
            refused(Method::DELETE, false, &[("origin", "http://A.Apps.Test:8080"), ("host", "b.apps.test:8080")]).as_deref(),
            Some("http://A.Apps.Test:8080")
        );
        // Reading is left to CORS.
        assert_eq!(refused(Method::GET, false, &sibling), None);
        // Its own pages, with or without a port.
        assert_eq!(refused(Method::GET, true, &[("origin", "https://B.apps.test"), ("host", "b.apps.test")]), None);
        assert_eq!(refused(Method::POST, false, &[("origin", "http://b.apps.test:8080"), ("host", "b.apps.test:8080")]), None);
        // The deployment's own origins of the site, and no Origin at all.
        assert_eq!(refused(Method::POST, false, &[("origin", "https://app.test"), ("host", "b.apps.test")]), None);
        assert_eq!(refused(Method::POST, false, &[("origin", "https://sso.test"), ("host", "b.apps.test")]), None);
        assert_eq!(
            refused(Method::POST, false, &[("origin", "https://evilapps.test"), ("host", "b.apps.test")]),
            None,
            "not under the domain"
        );
        assert_eq!(refused(Method::POST, false, &[("host", "b.apps.test")]), None);
        // Origins that could carry a backend's page: the bare domain (and
        // any host under it), an opaque origin, one without a host.
        for from in ["https://apps.test", "http://x.y.apps.test:8080", "null", "http://", "garbage"] {
            assert_eq!(refused(Method::GET, true, &[("origin", from), ("host", "b.apps.test")]).as_deref(), Some(from), "{from}");
        }
        // The backend's own form under `Referrer-Policy: no-referrer`; a
        // sandboxed frame or a cross-origin redirect says otherwise.
        let own_form = [("origin", "null"), ("host", "b.apps.test"), ("sec-fetch-site", "same-origin")];
        assert_eq!(refused(Method::POST, false, &own_form), None);
        assert_eq!(refused(Method::GET, true, &own_form).as_deref(), Some("null"), "a WebSocket carries its real origin");
        for site in ["cross-site", "same-site", "none"] {
            let h = [("origin", "null"), ("host", "b.apps.test"), ("sec-fetch-site", site)];
            assert_eq!(refused(Method::POST, false, &h).as_deref(), Some("null"), "{site}");
        }
        let named = [("origin", "https://a.apps.test"), ("host", "b.apps.test"), ("sec-fetch-site", "same-origin")];
        assert_eq!(refused(Method::POST, false, &named).as_deref(), Some("https://a.apps.test"), "only null is excused");
        // Path routing: one origin for all, nothing to tell apart.
        assert_eq!(cookie_refused_for(&Method::GET, true, &headers(&sibling), None), None);
    }
}
