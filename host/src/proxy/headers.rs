//! Header hygiene for proxied requests and responses.
//!
//! - hop-by-hop headers (and those named in `Connection`) are not forwarded;
//! - `X-Forwarded-*`, `Forwarded`, `X-Real-IP` (and the client-address
//!   headers of CDNs, `X-Client-IP`, `True-Client-IP`…) from clients are
//!   dropped, and the first three set from what the proxy saw (clients
//!   cannot spoof their address);
//! - identity headers (`x-spawner-*`) from clients are dropped; only
//!   verified ones are injected: the backend's name, the auth verdict's
//!   subject, and the auth plugin's own;
//! - so are those names spelt with underscores (`X_Spawner_User`): servers
//!   that follow CGI (WSGI, Rack) read `-` and `_` alike, as the same
//!   `HTTP_X_SPAWNER_USER`, and would take the client's for the proxy's;
//! - Spawner's credentials are removed before the backend sees the request:
//!   the token query parameter, the token cookie (its name read as loosely
//!   as any server reads it), a `Bearer st1.…` header, anything shaped like
//!   a capability token wherever it is sent (another parameter or cookie,
//!   any `Authorization` form: [`crate::token::shaped_in`]), and an
//!   `Authorization` header that holds the API's own token. Other
//!   `Authorization` values are the application's own and pass through.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::plugins::IDENTITY_HEADER_PREFIX;
use crate::plugins::credentials;
use crate::plugins::types::Header;
use crate::secret::Secret;
use crate::token::PREFIX as TOKEN_PREFIX;

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Client-address headers other proxies and CDNs set, which libraries read
/// (npm's `request-ip` reads `X-Client-IP` before `X-Forwarded-For`, Rails
/// and PHP code `Client-IP`, Java code `Proxy-Client-IP`): from a client,
/// each is a claimed address. The list cannot be complete; the README
/// names the headers a backend can trust.
const CLIENT_ADDRESS: [&str; 19] = [
    "forwarded",
    "x-forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-pseudo-ipv4",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-appengine-user-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "proxy-client-ip",
    "wl-proxy-client-ip",
    "fly-client-ip",
    "x-azure-clientip",
];

/// Client-sent headers a backend could take for the proxy's: every
/// `X-Forwarded-*` (frameworks read `-Port`, `-Ssl`, `-Scheme` and more,
/// not only those the proxy sets), the [`CLIENT_ADDRESS`] ones, and
/// identity headers. `name` is lower case, as `HeaderMap` keeps it; `_`
/// counts as `-`.
fn untrusted(name: &str) -> bool {
    let name = if name.contains('_') { std::borrow::Cow::Owned(name.replace('_', "-")) } else { name.into() };
    name.starts_with("x-forwarded-") || name.starts_with(IDENTITY_HEADER_PREFIX) || CLIENT_ADDRESS.contains(&name.as_ref())
}

/// Removes hop-by-hop headers, including any listed in `Connection`.
/// `keep_upgrade` (a WebSocket handshake) sends `Connection: upgrade` and
/// `Upgrade: websocket` alone, whatever else the client offered (`h2c`: a
/// backend that switched to it would give the client a channel the proxy
/// does not read), and no body framing (a handshake has no body, and the
/// proxy sends none: a `Content-Length` would keep the backend waiting).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        // The request's own host is no hop's to remove (`Connection: host`
        // left the backend seeing the proxy's address for it).
        .filter(|n| n != header::HOST)
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.remove(header::CONTENT_LENGTH);
        h.remove("http2-settings");
    }
}

/// Removes client-sent forwarding and identity headers ([`untrusted`]).
pub fn strip_untrusted(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h.keys().filter(|k| untrusted(k.as_str())).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

/// Removes Spawner's credentials: every `Authorization` header that holds
/// one ([`holds_a_credential`]), and the token cookie. Other values and
/// cookies are kept.
pub fn strip_credentials(h: &mut HeaderMap, cookie: &str, api_token: Option<&Secret>) {
    remove_values(h, header::AUTHORIZATION, |v| holds_a_credential(v, api_token));
    let cookies: Vec<HeaderValue> = h.get_all(header::COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return;
    }
    h.remove(header::COOKIE);
    // Bytes, not `to_str`: a cookie value may hold UTF-8 (a page's
    // `document.cookie = "city=Zürich"`), and the application's cookies
    // pass whatever they hold. Token cookie names hold no `=`, so the
    // first one ends the name. Some servers read names loosely (trimmed,
    // in any case, pairs joined by RFC 2965's `,`), so the cookie goes in
    // those forms too; and a token goes under any name (Python's
    // `SimpleCookie` reads `a=1 spawner-token=…` as two cookies).
    let token = |c: &[u8]| {
        c.split(|b| *b == b',').any(|c| c.iter().position(|b| *b == b'=').is_some_and(|eq| is_token_cookie(c[..eq].trim_ascii(), cookie)))
            || crate::token::shaped_in(&String::from_utf8_lossy(c))
    };
    let kept: Vec<&[u8]> = cookies
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty() && !token(c))
        .collect();
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..]))
    {
        h.insert(header::COOKIE, v);
    }
}

/// Whether an `Authorization` value holds one of Spawner's credentials:
/// the bearer token the credential search reads (`Bearer st1.…`), read as
/// the plugin's view of the request is (`for_plugin`); a capability token
/// in any other form ([`crate::token::shaped_in`]: `Token st1.…`, a
/// no-break space, a list); or the API token, as the API reads it or as a
/// word of the value (a server relaying a browser's requests with it added
/// must not hand it to backends, which could then use the whole API).
fn holds_a_credential(value: &HeaderValue, api_token: Option<&Secret>) -> bool {
    let value = String::from_utf8_lossy(value.as_bytes());
    let bearer = credentials::bearer(&value);
    if bearer.is_some_and(|t| t.starts_with(TOKEN_PREFIX)) || crate::token::shaped_in(&value) {
        return true;
    }
    let Some(api_token) = api_token else { return false };
    // Words between spaces (any), punctuation and bytes that are not
    // UTF-8, and what follows a word's `=` (`token=…`). Each is hashed to
    // be compared, so there is a bound, past which the header goes: no
    // real one has so many.
    let separator = |c: char| c.is_whitespace() || matches!(c, ',' | '"' | '\'' | ';' | ':' | '(' | ')' | '<' | '>' | '\u{fffd}');
    let words = value.split(separator).filter(|w| !w.is_empty());
    let candidates: Vec<&str> = bearer
        .into_iter()
        .chain(words.flat_map(|w| [Some(w), w.split_once('=').map(|(_, v)| v)]).flatten())
        .take(MAX_API_TOKEN_CANDIDATES + 1)
        .collect();
    candidates.len() > MAX_API_TOKEN_CANDIDATES || candidates.iter().any(|c| api_token.is(c))
}

/// Parts of one `Authorization` value compared with the API token, at most:
/// one with more goes too.
const MAX_API_TOKEN_CANDIDATES: usize = 64;

/// Removes a backend's `Set-Cookie` headers that would set Spawner's token
/// cookie: the browser's credential is the proxy's to set, and a backend
/// (in path routing, any backend on this origin) must not replace or
/// shadow it for itself or for another backend's path.
pub fn strip_token_cookies(h: &mut HeaderMap, cookie: &str) {
    // The name as browsers read it (RFC 6265 5.2): up to the first `=`,
    // whitespace around it trimmed.
    let sets_ours = |v: &HeaderValue| {
        let pair = v.as_bytes().split(|b| *b == b';').next().unwrap_or_default();
        pair.iter().position(|b| *b == b'=').is_some_and(|eq| is_token_cookie(pair[..eq].trim_ascii(), cookie))
    };
    remove_values(h, header::SET_COOKIE, sets_ours);
}

/// Whether `name` is the token cookie's, `cookie`, with or without the
/// `__Host-` prefix (which the proxy adds under host routing over HTTPS),
/// in any case (some servers read names so): no form reaches a backend, or
/// is set by one.
fn is_token_cookie(name: &[u8], cookie: &str) -> bool {
    // Compared in place: this runs for every cookie of every request.
    fn unprefixed(n: &[u8]) -> &[u8] {
        let prefix = super::HOST_COOKIE_PREFIX.as_bytes();
        match n.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => &n[prefix.len()..],
            _ => n,
        }
    }
    unprefixed(name).eq_ignore_ascii_case(unprefixed(cookie.as_bytes()))
}

/// Removes the values of header `name` that are `unwanted`, keeping the
/// others in their order (the map is left alone when none is).
fn remove_values(h: &mut HeaderMap, name: HeaderName, unwanted: impl Fn(&HeaderValue) -> bool) {
    if h.get_all(&name).iter().any(&unwanted) {
        let kept: Vec<HeaderValue> = h.get_all(&name).iter().filter(|v| !unwanted(v)).cloned().collect();
        h.remove(&name);
        for v in kept {
            h.append(&name, v);
        }
    }
}

/// The query without parameter `name`, nor any other holding a token, and
/// the value of `name` if it was there (only that one: another parameter's
/// token is no token the browser was handed for this URL).
pub fn take_query_param(query: Option<&str>, name: &str) -> (Option<String>, Option<String>) {
    let Some(q) = query else { return (None, None) };
    let mut value = None;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let (k, v) = credentials::split_pair(pair);
            if k == name {
                value.get_or_insert_with(|| v.to_string());
            }
            k != name && !crate::token::shaped_in(pair)
        })
        .collect();
    let rest = if kept.is_empty() { None } else { Some(kept.join("&")) };
    (rest, value)
}

/// Sets the forwarding headers from what the proxy saw.
pub fn set_forwarded(h: &mut HeaderMap, peer_ip: &str, proto: &str, host: Option<&HeaderValue>, prefix: &str) {
    if let Ok(v) = HeaderValue::from_str(peer_ip) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v.clone());
        h.insert(HeaderName::from_static("x-real-ip"), v);
    }
    if let Ok(v) = HeaderValue::from_str(proto) {
        h.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if !prefix.is_empty()
        && let Ok(v) = HeaderValue::from_str(prefix)
    {
        h.insert(HeaderName::from_static("x-forwarded-prefix"), v);
    }
}

/// Keeps a redirect under the backend's prefix (path routing), as nginx's
/// `proxy_redirect` does: a backend that does not know it is served under
/// `/p/{name}/` redirects to `/login`, or to `http://{Host}/login` (the
/// `Host` it was sent), or to its own `http://127.0.0.1:{port}/login`, and
/// the browser would leave the backend (a 404 from Spawner, or a URL only
/// the server can reach). Such a `Location` gets the prefix; one already
/// under it, relative ones (the browser resolves them under the prefix)
/// and other sites' are left alone. `host` is the request's `Host`. Behind
/// a TLS terminator (`https`, the scheme browsers use) an `http://{Host}/…`
/// of a backend that does not read `X-Forwarded-Proto` becomes
/// `https://{Host}/…`, as nginx's `proxy_redirect default` does: the
/// terminator would answer plain HTTP on its port with 400.
pub fn prefix_location(
    h: &mut HeaderMap,
    prefix: &str,
    host: Option<&HeaderValue>,
    backend: std::net::SocketAddr,
    public_scheme: crate::config::Scheme,
) {
    if prefix.is_empty() {
        return;
    }
    let Some(location) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) else { return };
    let (origin, path) = if location.starts_with('/') {
        if location.starts_with("//") || location.starts_with("/\\") {
            return; // another site, scheme-relative
        }
        (String::new(), location)
    } else {
        let Some((scheme, rest)) = location.split_once("://") else { return };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return;
        }
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let end = location.len() - rest.len() + authority.len();
        if authority == backend.to_string() || authority.eq_ignore_ascii_case(&format!("localhost:{}", backend.port())) {
            // The backend's own address is no use to a browser: keep it on
            // the origin it came from.
            (String::new(), &location[end..])
        } else if host.and_then(|h| h.to_str().ok()).is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            let upgraded = public_scheme == crate::config::Scheme::Https && scheme.eq_ignore_ascii_case("http");
            (if upgraded { format!("https://{authority}") } else { location[..end].to_string() }, &location[end..])
        } else {
            return;
        }
    };
    let under = path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']));
    let slash = if path.starts_with('/') { "" } else { "/" };
    let rewritten = if under { format!("{origin}{path}") } else { format!("{origin}{prefix}{slash}{path}") };
    if rewritten != location
        && let Ok(v) = HeaderValue::from_str(&rewritten)
    {
        h.insert(header::LOCATION, v);
    }
}

/// Marks a backend's event stream (`text/event-stream`) for proxies in
/// front not to buffer (`X-Accel-Buffering: no`, which nginx reads and
/// removes): nginx buffers responses by default and would hold each event
/// until the stream ends, as Spawner's own status stream already says.
pub fn unbuffered_event_stream(h: &mut HeaderMap) {
    let stream = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream")));
    if stream && !h.contains_key("x-accel-buffering") {
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    }
}

/// Header naming the backend a request was routed to.
pub const BACKEND_HEADER: &str = "x-spawner-backend";

/// Header naming the user the auth plugin's verdict names (`subject`).
pub const USER_HEADER: &str = "x-spawner-user";

/// Tells the backend who is calling: [`BACKEND_HEADER`] (the backend the
/// proxy routed to), [`USER_HEADER`] (the auth verdict's subject, when it
/// names one), then the plugin's other identity headers (already checked
/// by the plugin host: prefix and syntax). Those two names are the host's
/// to set: a plugin's headers of the same names are dropped, so a backend
/// can rely on them whatever auth plugin runs.
pub fn inject_identity(h: &mut HeaderMap, backend: &str, subject: Option<&str>, extra: &[Header]) {
    let set = [Some(backend), subject].into_iter().zip([BACKEND_HEADER, USER_HEADER]).filter_map(|(v, n)| v.map(|v| (n, v)));
    let theirs = extra.iter().filter(|e| !set_by_proxy(&e.name)).map(|e| (e.name.as_str(), e.value.as_str()));
    for (name, value) in set.chain(theirs) {
        // Bytes, not `from_str`: a subject may be any UTF-8 (obs-text).
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value.as_bytes())) {
            h.append(n, v);
        }
    }
}

/// Whether `name` is one of the identity headers only the proxy sets
/// ([`BACKEND_HEADER`], [`USER_HEADER`]): an auth verdict's header of that
/// name is dropped.
pub fn set_by_proxy(name: &str) -> bool {
    [BACKEND_HEADER, USER_HEADER].iter().any(|ours| name.eq_ignore_ascii_case(ours))
}

/// The request's headers as the auth plugin sees them: every one, its
/// value as UTF-8 (browsers send cookies a page set with non-ASCII text as
/// UTF-8; bytes that are not UTF-8 read as U+FFFD).
pub fn for_plugin(h: &HeaderMap) -> Vec<Header> {
    h.iter().map(|(k, v)| Header { name: k.as_str().to_string(), value: String::from_utf8_lossy(v.as_bytes()).into_owned() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h =
            map(&[("connection", "keep-alive, x-secret"), ("keep-alive", "5"), ("x-secret", "1"), ("te", "trailers"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        // Not the request's host, whatever `Connection` lists.
        let mut h = map(&[("connection", "host, x-secret"), ("host", "b1.apps.example.com"), ("x-secret", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("host").unwrap(), "b1.apps.example.com");
        assert_eq!(h.len(), 1);

        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("keep-alive", "5")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(!h.contains_key("keep-alive"));
        // A WebSocket handshake offers the backend WebSocket alone, and no
        // body.
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket, h2c"),
            ("http2-settings", "AAA"),
            ("content-length", "5"),
            ("sec-websocket-key", "k"),
        ]);
        strip_hop_by_hop(&mut h, true);
        let mut kept: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        kept.sort();
        assert_eq!(kept, [("connection", "upgrade"), ("sec-websocket-key", "k"), ("upgrade", "websocket")]);
    }

    #[test]
    fn spoofed_forwarding_and_identity_headers_are_replaced() {
        let mut h =
            map(&[("x-forwarded-for", "6.6.6.6"), ("x-spawner-user", "admin"), ("X-Spawner-Backend", "x"), ("forwarded", "for=1.2.3.4")]);
        strip_untrusted(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Every X-Forwarded-*, and the same names with underscores, which
        // CGI-style servers read as the proxy's.
        let mut h = map(&[
            ("x-forwarded-port", "443"),
            ("x-forwarded-ssl", "on"),
            ("x_spawner_user", "admin"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-forwarded", "for=6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("Client_IP", "6.6.6.6"),
            ("forwarded-for", "6.6.6.6"),
            ("wl-proxy-client-ip", "6.6.6.6"),
            ("x_app_id", "kept"),
            ("x-spawnerish", "kept"),
        ]);
        strip_untrusted(&mut h);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["x-spawnerish", "x_app_id"]);
        set_forwarded(&mut h, "127.0.0.1", "http", Some(&HeaderValue::from_static("example.test")), "/p/b1");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(h.get("x-forwarded-prefix").unwrap(), "/p/b1");
        let plugins = [("x-spawner-user", "mallory"), ("X-Spawner-Backend", "other"), ("x-spawner-role", "editor")];
        let plugins: Vec<Header> = plugins.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect();
        inject_identity(&mut h, "b1", Some("alice"), &plugins);
        let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(all("x-spawner-user"), ["alice"], "the verdict's subject, and only that");
        assert_eq!(all("x-spawner-backend"), ["b1"], "the backend routed to, and only that");
        assert_eq!(all("x-spawner-role"), ["editor"], "the plugin's own headers pass");

        let mut h = HeaderMap::new();
        inject_identity(&mut h, "b1", None, &[]);
        assert!(!h.contains_key("x-spawner-user"), "no subject, no user");
        inject_identity(&mut h, "b1", Some("José"), &[]);
        assert_eq!(h.get("x-spawner-user").unwrap().as_bytes(), "José".as_bytes(), "any UTF-8 subject");
    }

    #[test]
    fn spawner_credentials_go_and_the_apps_own_stay() {
        let mut h = map(&[("authorization", "Bearer st1.abc.def"), ("cookie", "a=1; spawner-token=st1.x.y"), ("cookie", "b=2")]);
        strip_credentials(&mut h, "spawner-token", None);
        assert!(!h.contains_key("authorization"));
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");

        let mut h = map(&[("authorization", "Basic dXNlcjpwdw=="), ("cookie", "spawner-token=st1.x.y")]);
        strip_credentials(&mut h, "spawner-token", None);
        assert_eq!(h.get("authorization").unwrap(), "Basic dXNlcjpwdw==");
        assert!(!h.contains_key("cookie"));

        // Both forms of the name, whichever the proxy uses (`__Host-` under
        // host routing over HTTPS), in requests and in a backend's answers.
        for name in ["spawner-token", "__Host-spawner-token"] {
            let mut h = map(&[("cookie", "a=1; spawner-token=st1.x.y; __Host-spawner-token=st1.x.z; b=2")]);
            strip_credentials(&mut h, name, None);
            assert_eq!(h.get("cookie").unwrap(), "a=1; b=2", "{name}");
            let mut h =
                map(&[("set-cookie", "__Host-spawner-token=st1.x; Path=/"), ("set-cookie", "spawner-token=st1.y"), ("set-cookie", "c=3")]);
            strip_token_cookies(&mut h, name);
            assert_eq!(h.get_all("set-cookie").iter().collect::<Vec<_>>(), ["c=3"], "{name}");
        }

        // A cookie holding UTF-8 (what a browser sends for a page's
        // `document.cookie = "city=Zürich"`) neither hides the token from
        // the plugin nor costs the application its cookies.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_bytes("sid=abc; city=Zürich; spawner-token=st1.x.y".as_bytes()).unwrap());
        let seen = for_plugin(&h);
        assert_eq!(seen.len(), 1, "shown to the plugin");
        assert!(seen[0].value.ends_with("spawner-token=st1.x.y"), "{seen:?}");
        strip_credentials(&mut h, "spawner-token", None);
        assert_eq!(h.get("cookie").unwrap().as_bytes(), "sid=abc; city=Zürich".as_bytes());

        // A bearer value with bytes that are not ASCII is read by the
        // search as the plugin sees it, and stripped by the same reading.
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, HeaderValue::from_bytes("Bearer st1.x.y\u{a0}".as_bytes()).unwrap());
        let request = crate::plugins::types::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: for_plugin(&h),
            peer: "127.0.0.1:1".into(),
            websocket: false,
        };
        assert_eq!(credentials::find(&request, &credentials::TokenNames::default(), None, "b1").len(), 1, "a credential");
        strip_credentials(&mut h, "spawner-token", None);
        assert!(!h.contains_key("authorization"), "so it goes");
    }

    #[test]
    fn credentials_in_forms_servers_read_go_too() {
        let api = Secret::from("api-token-0123456789abcdef");
        let key = crate::token::TokenKey::new(b"headers-test-secret-0123").unwrap();
        let t = key.mint("doc-42", Some("alice"), 1_700_000_000, 1_700_003_600);
        let kept = |pairs: &[(&str, &str)], name: &str| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(v.as_bytes()).unwrap());
            }
            strip_credentials(&mut h, "spawner-token", Some(&api));
            h.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>()
        };
        for auth in [
            format!("Bearer\t{t}"),
            format!("Bearer\u{a0}{t}"),
            format!("Basic dXNlcjpwdw==, Bearer {t}"),
            format!("Token {t}"),
            format!("Bearer \"{t}\""),
            format!("Token token={t}"),
            format!("bearer  {t}"),
            // What the credential search reads, valid or not.
            "Bearer st1.abc.def".into(),
            // Spawner's API token, from a server relaying a browser's
            // headers with it added: backends must never see it, in any
            // form the API or a server reads it.
            "Bearer api-token-0123456789abcdef".into(),
            "Bearer\tapi-token-0123456789abcdef".into(),
            "Bearer token=api-token-0123456789abcdef".into(),
            "Bearer api-token-0123456789abcdef;".into(),
            "Bearer 'api-token-0123456789abcdef'".into(),
        ] {
            assert!(kept(&[("authorization", &auth)], "authorization").is_empty(), "{auth:?} is taken out");
        }
        let spaced = Secret::from("correct horse battery staple");
        let mut h = map(&[("authorization", "Bearer correct horse battery staple")]);
        strip_credentials(&mut h, "spawner-token", Some(&spaced));
        assert!(h.is_empty(), "an API token with spaces, as the API reads it");
        for auth in [
            "Basic dXNlcjpwdw==",
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
            "Bearer api-token-0123456789abcdeX",
            "Token xst1.abc",
            "Digest username=\"st1.alice\", realm=\"st1.example.com\", nonce=\"x\"",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ] {
            assert_eq!(kept(&[("authorization", auth)], "authorization"), [auth], "the application's own {auth:?} stays");
        }
        for cookie in [
            format!("spawner-token ={t}; a=1"),
            format!("a=1; spawner-token\t={t}"),
            format!("a=1, spawner-token={t}"),
            format!("a=1;spawner-token={t}"),
            format!("a=1 spawner-token={t}"),
            format!("a=1; \u{a0}spawner-token={t}"),
            format!("a=1; Spawner-Token={t}"),
            format!("a=1; my-copy={t}"),
        ] {
            let left = kept(&[("cookie", &cookie)], "cookie");
            assert!(left.iter().all(|c| !c.contains("st1.")), "{cookie:?} left {left:?}");
        }
        assert_eq!(kept(&[("cookie", "a=1, b=2; spawner-token-ish=3")], "cookie"), ["a=1, b=2; spawner-token-ish=3"]);
        // Parameters: the token's, and a token under any other name.
        for query in [format!("x=1&token={t}"), format!("x=1&%74oken={t}"), format!("x=1&Token={t}")] {
            let (clean, _) = take_query_param(Some(&query), "token");
            assert_eq!(clean.as_deref(), Some("x=1"), "{query}");
        }
        // Split on `&` only: a pair holding a token goes whole.
        assert_eq!(take_query_param(Some(&format!("x=1;token={t}&y=2")), "token").0.as_deref(), Some("y=2"));
        // The token parameter's value is the one given back (it may become
        // the cookie), not another parameter's token before it.
        let other = key.mint("doc-42", Some("bob"), 1, 2);
        assert_eq!(take_query_param(Some(&format!("ref={other}&token={t}")), "token"), (None, Some(t.clone())));
        let many = format!("Bearer {}", "w ".repeat(100));
        assert!(kept(&[("authorization", &many)], "authorization").is_empty(), "too many words to compare: it goes");
        for auth in ["Bearer key:api-token-0123456789abcdef", "Bearer (api-token-0123456789abcdef)"] {
            assert!(kept(&[("authorization", auth)], "authorization").is_empty(), "{auth:?}");
        }
    }

    #[test]
    fn a_backend_cannot_set_the_token_cookie() {
        let mut h = map(&[
            ("set-cookie", "theme=dark; Path=/"),
            ("set-cookie", "spawner-token=junk; Path=/p/other/api"),
            ("set-cookie", " spawner-token=x"),
            ("set-cookie", "spawner-token =y; Path=/p/other/"),
            ("set-cookie", "spawner-token\t=z"),
            ("set-cookie", "spawner-token-ish=1"),
        ]);
        strip_token_cookies(&mut h, "spawner-token");
        let left: Vec<&str> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["theme=dark; Path=/", "spawner-token-ish=1"]);
    }

    #[test]
    fn every_authorization_header_is_checked_in_either_order() {
        for pair in [["Basic dXNlcjpwdw==", "Bearer st1.abc.def"], ["Bearer st1.abc.def", "Basic dXNlcjpwdw=="]] {
            let mut h = map(&[("authorization", pair[0]), ("authorization", pair[1])]);
            strip_credentials(&mut h, "spawner-token", None);
            let left: Vec<&str> = h.get_all("authorization").iter().map(|v| v.to_str().unwrap()).collect();
            assert_eq!(left, ["Basic dXNlcjpwdw=="], "{pair:?}");
        }
    }

    #[test]
    fn redirects_out_of_the_prefix_are_put_back_under_it() {
        let backend: std::net::SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let host = HeaderValue::from_static("spawner.example:8080");
        let rewrite = |location: &str, prefix: &str| {
            let mut h = map(&[("location", location)]);
            prefix_location(&mut h, prefix, Some(&host), backend, crate::config::Scheme::Http);
            h.get("location").unwrap().to_str().unwrap().to_string()
        };
        for (from, to) in [
            ("/login?next=%2F", "/p/b1/login?next=%2F"),
            ("/", "/p/b1/"),
            ("/p/b1/already", "/p/b1/already"),
            ("/p/b1", "/p/b1"),
            ("/p/b1?x=1", "/p/b1?x=1"),
            ("/p/b10/other", "/p/b1/p/b10/other"),
            ("http://spawner.example:8080/sub/", "http://spawner.example:8080/p/b1/sub/"),
            ("HTTPS://Spawner.Example:8080", "HTTPS://Spawner.Example:8080/p/b1/"),
            ("http://spawner.example:8080/p/b1/x", "http://spawner.example:8080/p/b1/x"),
            ("http://127.0.0.1:40123/sub/?a=b", "/p/b1/sub/?a=b"),
            ("http://localhost:40123#top", "/p/b1/#top"),
            ("http://127.0.0.1:40123/p/b1/x", "/p/b1/x"),
            // Left alone: relative, other sites, other schemes.
            ("sub/", "sub/"),
            ("../up", "../up"),
            ("//evil.example/", "//evil.example/"),
            ("/\\evil.example/", "/\\evil.example/"),
            ("https://accounts.example/login", "https://accounts.example/login"),
            ("http://127.0.0.1:40124/", "http://127.0.0.1:40124/"),
            ("http://spawner.example:8080.evil.example/", "http://spawner.example:8080.evil.example/"),
            ("mailto:someone@example.com", "mailto:someone@example.com"),
        ] {
            assert_eq!(rewrite(from, "/p/b1"), to, "{from}");
        }
        assert_eq!(rewrite("/login", ""), "/login", "host routing: the backend's paths are the browser's");
        // Behind a TLS terminator: the browser's scheme for its own host.
        let behind_tls = |location: &str| {
            let mut h = map(&[("location", location)]);
            prefix_location(&mut h, "/p/b1", Some(&host), backend, crate::config::Scheme::Https);
            h.get("location").unwrap().to_str().unwrap().to_string()
        };
        assert_eq!(behind_tls("http://spawner.example:8080/sub/"), "https://spawner.example:8080/p/b1/sub/");
        assert_eq!(behind_tls("https://spawner.example:8080/sub/"), "https://spawner.example:8080/p/b1/sub/");
        assert_eq!(behind_tls("http://accounts.example/login"), "http://accounts.example/login", "other sites are theirs");
    }

    #[test]
    fn a_backends_event_stream_is_marked_for_proxies_in_front_not_to_buffer() {
        let mut sse = map(&[("content-type", "Text/Event-Stream; charset=utf-8")]);
        unbuffered_event_stream(&mut sse);
        assert_eq!(sse.get("x-accel-buffering").unwrap(), "no");
        let mut own = map(&[("content-type", "text/event-stream"), ("x-accel-buffering", "yes")]);
        unbuffered_event_stream(&mut own);
        assert_eq!(own.get("x-accel-buffering").unwrap(), "yes", "the backend's own choice stands");
        let mut page = map(&[("content-type", "text/html")]);
        unbuffered_event_stream(&mut page);
        assert!(page.get("x-accel-buffering").is_none());
    }

    #[test]
    fn the_token_parameter_is_taken_out_of_the_query() {
        assert_eq!(take_query_param(Some("a=1&token=st1.x&b=2"), "token"), (Some("a=1&b=2".into()), Some("st1.x".into())));
        assert_eq!(take_query_param(Some("token=st1.x"), "token"), (None, Some("st1.x".into())));
        assert_eq!(take_query_param(Some("a=1"), "token"), (Some("a=1".into()), None));
        assert_eq!(take_query_param(None, "token"), (None, None));
    }
}
