//! The proxy: `/p/{name}/…` (or `{name}.{domain}`) to the backend, for HTTP
//! and WebSocket, with the auth plugin deciding every request and upgrade.
//!
//! Order of work for one request: route → resolve the backend (404/410) →
//! find and verify the request's capability tokens (`credentials`; the
//! cookie not for another backend's WebSocket or post, `origin`) → auth
//! plugin (its status on deny) → move a query token into a cookie and
//! redirect to the clean URL → readiness (503 + Retry-After, or a page that
//! reloads itself) → header hygiene (`headers`) → forward, with
//! bodies streamed and metered (`body`) or the WebSocket relayed
//! (`websocket`, `frames`).
//!
//! The proxy knows backends only through [`Resolve`], so the same code
//! serves the local runtime and Kubernetes.

mod body;
pub mod client_address;
pub mod frames;
pub mod headers;
mod origin;
mod pages;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::activity::Activity;
use crate::lifecycle::Phase;
use crate::log_gate::LogGate;
use crate::metrics::{Metrics, StatusClassLabels};
use crate::plugins::Plugins;
use crate::plugins::credentials::{self, TokenNames};
use crate::plugins::types::{AuthRequest, Backend, CredentialSource, HttpRequest, Verdict};
use body::{Direction, Held, Metered};

/// Idle keep-alive connections kept per backend. Backends are small
/// servers; a few warm connections cover bursts without hogging them.
const POOL_IDLE_PER_BACKEND: usize = 32;

/// How long a connection to a backend may take to open. A backend on
/// loopback or a Pod network answers in microseconds; an address that has
/// gone (a Pod deleted while the status still names it) would otherwise
/// hold each request, counted in flight, for the kernel's two minutes of
/// SYN retries.
const BACKEND_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a backend may take to answer a WebSocket upgrade: one that
/// accepts the connection and never answers would hold the browser's
/// connection (and its place under `max-connections`) for as long as the
/// browser waits.
const UPGRADE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the proxy sees a backend.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend, as the auth plugin sees it.
    pub backend: Arc<Backend>,
    /// Its phase.
    pub phase: Phase,
    /// Where to send requests (only when ready).
    pub addr: Option<SocketAddr>,
    /// Where to count activity.
    pub activity: Arc<Activity>,
    /// Which object of its name it is (when it was created, and its uid
    /// where a name can come back as another object): tokens for an
    /// earlier backend of the name do not open it.
    pub reached: credentials::Reached,
}

/// Finds backends by name.
pub trait Resolve: Send + Sync + 'static {
    /// The backend called `name`, if any.
    fn resolve(&self, name: &str) -> Option<Target>;
}

/// Proxy behaviour that comes from configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Host routing domain (`{name}.{domain}`), if enabled.
    pub host_domain: Option<String>,
    /// `X-Forwarded-Proto` to send.
    pub forwarded_proto: crate::config::Scheme,
    /// Where capability tokens are looked for, moved to and stripped from
    /// (Spawner's config `proxy.token-cookie` and `proxy.token-query-param`).
    pub tokens: TokenNames,
    /// The API's bearer token, if it has one: a request that carries it to
    /// a backend (a server relaying a browser's headers with it added) has
    /// it taken out, as a capability token is (see `headers`).
    pub api_token: Option<crate::secret::Secret>,
    /// Time a backend has to send a proxied request's response head once
    /// the upload is over, and the longest an upload may stall
    /// (`proxy.response-timeout-seconds`).
    pub response_timeout: std::time::Duration,
    /// Proxies whose `X-Forwarded-For` names the client
    /// (`proxy.trusted-proxies`).
    pub trusted_proxies: client_address::TrustedProxies,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings::new(None, crate::config::Scheme::Http, TokenNames::default())
    }
}

/// The prefix browsers keep for cookies a page of another host cannot set:
/// only over HTTPS, with `Path=/` and no `Domain`.
pub const HOST_COOKIE_PREFIX: &str = "__Host-";

impl ProxySettings {
    /// Settings for a proxy with the configured token names. Under host
    /// routing over HTTPS the cookie is named `__Host-` + the configured
    /// name: any backend's page can set a cookie for the parent domain,
    /// which every backend's host then receives, and one holding another
    /// user's token for this backend would make the browser act as that
    /// user; browsers refuse `__Host-` cookies set that way.
    pub fn new(host_domain: Option<String>, forwarded_proto: crate::config::Scheme, mut tokens: TokenNames) -> Self {
        if host_domain.is_some() && forwarded_proto == crate::config::Scheme::Https && !tokens.cookie.starts_with(HOST_COOKIE_PREFIX) {
            tokens.cookie = format!("{HOST_COOKIE_PREFIX}{}", tokens.cookie);
        }
        let response_timeout = std::time::Duration::from_secs(crate::config::ProxyConfig::default().response_timeout_seconds);
        ProxySettings { host_domain, forwarded_proto, tokens, api_token: None, response_timeout, trusted_proxies: Default::default() }
    }

    /// These settings, believing `X-Forwarded-For` from `trusted_proxies`.
    pub fn with_trusted_proxies(self, trusted_proxies: client_address::TrustedProxies) -> Self {
        ProxySettings { trusted_proxies, ..self }
    }

    /// These settings, with the time a backend has to answer.
    pub fn with_response_timeout(self, response_timeout: std::time::Duration) -> Self {
        ProxySettings { response_timeout, ..self }
    }

    /// These settings, with the API token the proxy keeps from backends.
    pub fn with_api_token(self, api_token: Option<crate::secret::Secret>) -> Self {
        ProxySettings { api_token: api_token.filter(|t| !t.expose().is_empty()), ..self }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    name: String,
    /// `/p/{name}` for path routing, empty for host routing.
    prefix: String,
    /// The path the backend sees, starting with `/`.
    rest: String,
    /// `/p/{name}` without the slash: redirect so relative URLs work.
    add_slash: bool,
}

/// Where a request goes (see [`Proxy::route`]).
enum Routed {
    /// To a backend.
    Backend(Route),
    /// Nowhere: a 404 saying why.
    Refused(String),
    /// To the API.
    Api,
}

/// The reverse proxy.
pub struct Proxy {
    resolver: Arc<dyn Resolve>,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    client: Client<HttpConnector, Metered<Incoming, UploadNotice>>,
    settings: ProxySettings,
    /// Turns true when the server stops: every relayed WebSocket then
    /// closes (see [`websocket`]). Each relay holds a receiver, so the
    /// receivers' count is the number of WebSockets open.
    going_away: tokio::sync::watch::Sender<bool>,
    /// Each HTTP request forwarded holds a receiver until its response
    /// ends, so the receivers' count is the number in flight (a stopping
    /// server lets them finish before it stops backends).
    forwarding: tokio::sync::watch::Sender<()>,
    /// Backend requests and WebSocket handshakes that failed: one line per
    /// period each (a crashed backend fails every request browsers keep
    /// sending; the `5xx` class counts them all).
    request_failures: LogGate,
    handshake_failures: LogGate,
}

impl Proxy {
    /// A proxy over `resolver`.
    pub fn new(resolver: Arc<dyn Resolve>, plugins: Arc<Plugins>, metrics: Arc<Metrics>, settings: ProxySettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(BACKEND_CONNECT_TIMEOUT));
        let keepalive = crate::server::KEEPALIVE;
        connector.set_keepalive(Some(keepalive.idle));
        connector.set_keepalive_interval(Some(keepalive.interval));
        connector.set_keepalive_retries(Some(keepalive.probes));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(POOL_IDLE_PER_BACKEND).build(connector);
        Proxy {
            resolver,
            plugins,
            metrics,
            client,
            settings,
            going_away: tokio::sync::watch::Sender::new(false),
            forwarding: tokio::sync::watch::Sender::new(()),
            request_failures: LogGate::default(),
            handshake_failures: LogGate::default(),
        }
    }

    /// Asks every relayed WebSocket to close with status 1001 ("going
    /// away") at its next frame boundary: the server is stopping.
    pub fn close_websockets(&self) {
        self.going_away.send_replace(true);
    }

    /// Resolves once no HTTP request is being forwarded (its response
    /// streamed to its end).
    pub async fn forwarded_all(&self) {
        self.forwarding.closed().await;
    }

    /// Resolves once no WebSocket is relayed.
    pub async fn websockets_closed(&self) {
        self.going_away.closed().await;
    }

    /// WebSockets relayed (or upgrading) right now.
    pub fn open_websockets(&self) -> usize {
        self.going_away.receiver_count()
    }

    /// Whether this request is the proxy's (a backend's, or one it refuses
    /// as no backend's) rather than the API's.
    pub fn claims(&self, req: &Request<Incoming>) -> bool {
        !matches!(self.route(req), Routed::Api)
    }

    /// Where a request goes. With a host domain, backends are served on
    /// their own host only: `/p/{name}/` would serve a backend's pages on
    /// an origin shared with others (this host, the public URL), from where
    /// a script could reach any other backend's host with its cookie, since
    /// all are the same site. Hosts under the domain that name no backend
    /// (`x.y.{domain}`) are refused rather than given the API.
    fn route(&self, req: &Request<Incoming>) -> Routed {
        if let Some(domain) = &self.settings.host_domain {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let (host, port) = match host.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => (h, port),
                _ => (host, ""),
            };
            // A fully qualified name's trailing dot names the same host.
            let host = host.strip_suffix('.').unwrap_or(host);
            // Host names are case-insensitive.
            if let Some(name) = crate::config::below_domain(host, domain) {
                if name.is_empty() || name.contains('.') {
                    return Routed::Refused(format!("no backend is named by this host: a backend's host is {{name}}.{domain}"));
                }
                return Routed::Backend(Route {
                    name: name.to_ascii_lowercase(),
                    prefix: String::new(),
                    rest: req.uri().path().into(),
                    add_slash: false,
                });
            }
            return match req.uri().path().strip_prefix("/p/") {
                // On the port this request came to, if it named one.
                Some(rest) => Routed::Refused(format!(
                    "backends are served on their own host here, not under /p/: open {}.{domain}{}",
                    rest.split('/').next().unwrap_or_default(),
                    if port.is_empty() { String::new() } else { format!(":{port}") }
                )),
                None => Routed::Api,
            };
        }
        let Some(rest) = req.uri().path().strip_prefix("/p/") else { return Routed::Api };
        let (name, path) = match rest.split_once('/') {
            Some((n, p)) => (n, format!("/{p}")),
            None => (rest, String::new()),
        };
        if name.is_empty() {
            return Routed::Refused("not a backend URL: /p/{name}/".into());
        }
        Routed::Backend(Route {
            name: name.into(),
            prefix: format!("/p/{name}"),
            add_slash: path.is_empty(),
            rest: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // Whatever the answer to a URL that carries a token (the redirect
        // to the clean URL, a frame or a POST answered where it is, a
        // refusal, an unknown or ended backend's page), the page it shows
        // sends no Referer with it: the one place that says so.
        let name = &self.settings.tokens.query_param;
        let token_in_url = req.uri().query().is_some_and(|q| q.split('&').any(|pair| credentials::split_pair(pair).0 == name));
        let mut response = self.handle_inner(req, peer).await;
        if token_in_url {
            response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        let class = match response.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics.proxy.requests.get_or_create(&StatusClassLabels { class }).inc();
        response
    }

    async fn handle_inner(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // Counted from here, through the auth plugin and a WebSocket's
        // handshake: a stopping server waits for it before it stops the
        // backend it is for.
        let forwarding = self.forwarding.subscribe();
        let accept = req.headers().get(header::ACCEPT).cloned();
        // Routing reads the first; the backend would get both, and could
        // take the other as the host it serves (RFC 9112: a request with
        // more than one is answered 400).
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return pages::error(StatusCode::BAD_REQUEST, "more than one Host header", accept.as_ref());
        }
        let route = match self.route(&req) {
            Routed::Backend(route) => route,
            Routed::Refused(why) => return pages::error(StatusCode::NOT_FOUND, &why, accept.as_ref()),
            Routed::Api => return pages::error(StatusCode::NOT_FOUND, "not a backend URL", accept.as_ref()),
        };
        if route.add_slash {
            let location = match req.uri().query() {
                Some(q) => format!("{}/?{q}", route.prefix),
                None => format!("{}/", route.prefix),
            };
            // The query may carry a token: the next page must not send it on.
            let mut response = redirect(StatusCode::PERMANENT_REDIRECT, &location);
            response.headers_mut().insert(header::REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
            return response;
        }
        let Some(target) = self.resolver.resolve(&route.name) else {
            return pages::error(StatusCode::NOT_FOUND, &format!("no backend named {}", route.name), accept.as_ref());
        };
        if target.phase.is_terminal() {
            return pages::error(StatusCode::GONE, &format!("backend {} has ended", route.name), accept.as_ref());
        }

        let websocket = is_websocket(&req);
        let request = HttpRequest {
            method: req.method().as_str().to_string(),
            path: route.rest.clone(),
            query: req.uri().query().map(str::to_string),
            headers: headers::for_plugin(req.headers()),
            peer: peer.to_string(),
            websocket,
        };
        let token_key = self.plugins.runtime().token_key();
        let mut credentials =
            credentials::find_reaching(&request, &self.settings.tokens, token_key, &target.backend.name, Some(&target.reached));
        // A cookie does not vouch for another backend's WebSocket or post.
        let cross_origin = origin::cookie_refused_for(req.method(), websocket, req.headers(), self.settings.host_domain.as_deref());
        let cookie_refused = cross_origin.is_some() && credentials.iter().any(|c| c.source == CredentialSource::Cookie);
        if cookie_refused {
            credentials.retain(|c| c.source != CredentialSource::Cookie);
        }
        let auth = AuthRequest { request, backend: (*target.backend).clone(), now: crate::token::now_unix(), credentials };
        let identity = match self.plugins.auth().check_reaching(&auth, &target.reached) {
            Verdict::Deny(d) => {
                // At debug: every refused request of a busy site would
                // otherwise be a line (the metrics count them).
                tracing::debug!(backend = %route.name, status = d.status, reason = %d.reason, "auth plugin denied a request");
                let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN);
                let reason = match cross_origin.filter(|_| cookie_refused) {
                    Some(from) => format!(
                        "{} (the {} cookie does not count for a {} from {from}: only this backend's own pages and origins outside \
                         the host domain may act as its user; send the token as Authorization: Bearer, or in the {} query parameter)",
                        d.reason,
                        self.settings.tokens.cookie,
                        if websocket { "WebSocket".to_string() } else { format!("{} request", req.method()) },
                        self.settings.tokens.query_param,
                    ),
                    // Spawner's API token is no capability token ("token is
                    // malformed" left whoever sent it guessing).
                    None if self.settings.api_token.as_ref().is_some_and(|t| t.presented_in(req.headers())) => format!(
                        "{}: that is Spawner's API token, which opens the API, not backends; send this backend's capability token (the token a create returns, or POST /api/v1/backends/{}/tokens)",
                        d.reason, route.name
                    ),
                    None => d.reason,
                };
                // Answered where it is, token and all (`handle` keeps it
                // from the page's Referer).
                let mut denied = pages::error(status, &reason, accept.as_ref());
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    // The plugin could not decide in time: worth a retry.
                    denied.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return denied;
            }
            Verdict::Allow(a) => a,
        };
        // Before the readiness check: a browser usually opens its URL while
        // the backend is still starting, and the waiting page must not keep
        // the token in the address bar.
        let (clean_query, token) = headers::take_query_param(req.uri().query(), &self.settings.tokens.query_param);
        // Only a token that opens this backend becomes its cookie: the
        // request may have been let in by the cookie already there, and a
        // stray, expired or foreign token in a link must not replace it (and
        // lock the browser out until it is given a new URL).
        let cookie_token = token.as_deref().filter(|t| query_token_opens(&auth, &target.backend.name) && cookie_safe(t));
        let navigation = !websocket && (req.method() == Method::GET || req.method() == Method::HEAD);
        let self_framed = frame_navigating_itself(req.headers());
        if token.is_some() && navigation && !redirect_would_fail(req.headers()) && !self_framed {
            return self.token_redirect(&route, clean_query.as_deref(), cookie_token);
        }
        // A frame that navigates itself keeps its token and is answered
        // where it is, given the cookie too: when a page of this origin
        // holds the frame (its first load is same-origin) the browser takes
        // it; in another site's page it refuses it, and the token in the
        // frame's URL goes on opening the backend.
        let frame_cookie = cookie_token.filter(|_| navigation && self_framed).and_then(|t| self.token_cookie(&route, t));
        // Spawner's own pages there, as the backend's.
        let own_page = |mut r: Response<Body>| {
            with_frame_cookie(r.headers_mut(), frame_cookie.as_ref());
            r
        };
        let Some(addr) = target.addr else {
            // Stopping: it will not come back, so no page that reloads
            // itself and no Retry-After (410 follows once it has ended).
            if target.phase == Phase::Terminating {
                return own_page(pages::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("backend {} is stopping", route.name),
                    accept.as_ref(),
                ));
            }
            // Ready, but its workload is not answering for now (on
            // Kubernetes: its Pod is not Ready, or not where the status
            // says): it may come back, as a Service's endpoint does.
            let state = if target.phase == Phase::Ready { "not answering (its Pod is not ready)" } else { target.phase.as_str() };
            // Someone is waiting for it (the page reloads itself): not idle.
            target.activity.touch();
            return own_page(pages::starting(&route.name, state, accept.as_ref()));
        };

        let (mut parts, body) = req.into_parts();
        let path = match &clean_query {
            Some(q) => format!("{}?{q}", route.rest),
            None => route.rest.clone(),
        };
        // Under host routing the path is the request's own, and `*` (the
        // target of `OPTIONS *`, which hyper passes for any method) is no
        // path: after the backend's address it made `http://ip:port*`,
        // whose port no longer parses, and the request went to port 80 of
        // the backend's host, with the identity headers.
        if !path.starts_with('/') {
            return pages::error(StatusCode::BAD_REQUEST, "the request target must be a path starting with /", accept.as_ref());
        }
        let host = parts.headers.get(header::HOST).cloned();
        // Read before the client's X-Forwarded-For goes with the rest.
        let client = self.settings.trusted_proxies.client(peer.ip(), &parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers, websocket);
        headers::strip_untrusted(&mut parts.headers);
        headers::strip_credentials(&mut parts.headers, &self.settings.tokens.cookie, self.settings.api_token.as_ref());
        headers::set_forwarded(
            &mut parts.headers,
            &client.to_string(),
            self.settings.forwarded_proto.as_str(),
            host.as_ref(),
            &route.prefix,
        );
        headers::inject_identity(&mut parts.headers, &target.backend.name, identity.subject.as_deref(), &identity.headers);

        if websocket {
            let client_upgrade = parts.extensions.remove::<OnUpgrade>();
            let slot = parts.extensions.remove::<crate::server::ConnectionSlot>();
            parts.uri = match path.parse() {
                Ok(u) => u,
                Err(_) => return pages::error(StatusCode::BAD_REQUEST, "bad request path", accept.as_ref()),
            };
            let mut response = self.websocket(&route.name, parts, client_upgrade, slot, addr, target.activity).await;
            drop(forwarding);
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                headers::prefix_location(response.headers_mut(), &route.prefix, host.as_ref(), addr, self.settings.forwarded_proto);
            }
            return response;
        }

        // Built in parts, so that no path can change the address.
        parts.uri = match http::Uri::builder().scheme("http").authority(addr.to_string()).path_and_query(path).build() {
            Ok(u) => u,
            Err(_) => return pages::error(StatusCode::BAD_REQUEST, "bad request path", accept.as_ref()),
        };
        let in_flight = (target.activity.request(), forwarding);
        let (notice, upload_over) = UploadNotice::new();
        let progress = notice.progress.clone();
        let request = Request::from_parts(parts, Metered::new(body, target.activity.clone(), Direction::In, Some(notice)));
        let response = self.client.request(request);
        tokio::pin!(response);
        tokio::pin!(upload_over);
        let timeout = self.settings.response_timeout;
        // The backend's time to answer runs from the end of the upload: a
        // large or slow one is the client's time, not the backend's. While
        // it lasts, it must move: an upload that makes no progress for as
        // long (a backend that stopped reading, a client that stopped
        // sending) would otherwise hold the request, and its backend
        // busy, for ever.
        let answer = loop {
            let wait = timeout.saturating_sub(progress.still_for());
            if wait.is_zero() {
                break None;
            }
            tokio::select! {
                r = &mut response => break Some(r),
                _ = &mut upload_over => break tokio::time::timeout(timeout, &mut response).await.ok(),
                () = tokio::time::sleep(wait) => {}
            }
        };
        // Dropping the request closes its connection to the backend (a
        // pooled one is not reused with an answer still owed).
        let Some(answer) = answer else {
            let seconds = timeout.as_secs();
            // The client stopped sending (a phone that lost its network
            // mid-upload): its time ran out, not the backend's.
            if !progress.over() && progress.waiting_for_client() {
                tracing::debug!(backend = %route.name, timeout_seconds = seconds, "client request body stopped arriving");
                let message = format!("the request's body stopped arriving for {seconds} s");
                return pages::error(StatusCode::REQUEST_TIMEOUT, &message, accept.as_ref());
            }
            if let Some(suppressed) = self.request_failures.pass(std::time::Instant::now()) {
                tracing::warn!(backend = %route.name, timeout_seconds = seconds, upload_over = progress.over(), suppressed, "backend did not answer a request in time (`suppressed`: failures of any backend not logged since the last line)");
            }
            let message = match progress.over() {
                true => format!("backend {} did not answer within {seconds} s", route.name),
                false => format!("backend {} took no more of the request's body for {seconds} s", route.name),
            };
            return pages::error(StatusCode::GATEWAY_TIMEOUT, &message, accept.as_ref());
        };
        match answer {
            // A switch nobody asked for (this request offered no upgrade):
            // passed on, it would leave the browser a bare 101 and a
            // connection that then closes.
            Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                if let Some(suppressed) = self.request_failures.pass(std::time::Instant::now()) {
                    tracing::warn!(backend = %route.name, suppressed, "backend answered 101 to a request that asked for no upgrade (`suppressed`: failures of any backend not logged since the last line)");
                }
                pages::error(StatusCode::BAD_GATEWAY, &format!("backend {} switched protocols unasked", route.name), accept.as_ref())
            }
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                speak_for_ourselves(&mut parts);
                headers::strip_hop_by_hop(&mut parts.headers, false);
                headers::strip_token_cookies(&mut parts.headers, &self.settings.tokens.cookie);
                headers::prefix_location(&mut parts.headers, &route.prefix, host.as_ref(), addr, self.settings.forwarded_proto);
                headers::unbuffered_event_stream(&mut parts.headers);
                with_frame_cookie(&mut parts.headers, frame_cookie.as_ref());
                Response::from_parts(parts, Body::new(Metered::new(body, target.activity, Direction::Out, Some(in_flight))))
            }
            // The client's own body failed (it stopped sending mid-upload
            // and went away): not the backend's failure, not a 5xx.
            Err(e) if client_body_failed(&e) => {
                tracing::debug!(backend = %route.name, error = %error_chain(&e), "client request body failed");
                pages::error(StatusCode::BAD_REQUEST, "the request body was cut short", accept.as_ref())
            }
            Err(e) => {
                if let Some(suppressed) = self.request_failures.pass(std::time::Instant::now()) {
                    tracing::warn!(backend = %route.name, error = %error_chain(&e), suppressed, "backend request failed (`suppressed`: failures of any backend not logged since the last line)");
                }
                pages::error(StatusCode::BAD_GATEWAY, &format!("backend {} did not answer", route.name), accept.as_ref())
            }
        }
    }

    /// Relays a WebSocket; `slot` (the client connection's place under
    /// `max-connections`) is held until it closes.
    async fn websocket(
        &self,
        backend: &str,
        parts: http::request::Parts,
        client_upgrade: Option<OnUpgrade>,
        slot: Option<crate::server::ConnectionSlot>,
        addr: SocketAddr,
        activity: Arc<Activity>,
    ) -> Response<Body> {
        let bad_gateway = |why: String| {
            if let Some(suppressed) = self.handshake_failures.pass(std::time::Instant::now()) {
                tracing::warn!(%backend, %addr, error = %why, suppressed, "websocket handshake with backend failed (`suppressed`: failures of any backend not logged since the last line)");
            }
            pages::error(StatusCode::BAD_GATEWAY, "the backend did not accept the WebSocket", None)
        };
        let Some(client_upgrade) = client_upgrade else { return bad_gateway("client connection cannot be upgraded".into()) };
        let stream = match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return bad_gateway(e.to_string()),
            Err(_) => return bad_gateway(format!("no connection within {} s", BACKEND_CONNECT_TIMEOUT.as_secs())),
        };
        let _ = stream.set_nodelay(true);
        crate::server::keep_alive(&stream);
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => return bad_gateway(e.to_string()),
        };
        let connection = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let request = Request::from_parts(parts, Empty::<bytes::Bytes>::new());
        let answer_timeout = UPGRADE_ANSWER_TIMEOUT.min(self.settings.response_timeout);
        let mut response = match tokio::time::timeout(answer_timeout, sender.send_request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return bad_gateway(e.to_string()),
            Err(_) => {
                connection.abort();
                return bad_gateway(format!("no answer to the upgrade within {} s", answer_timeout.as_secs()));
            }
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            speak_for_ourselves(&mut parts);
            headers::strip_hop_by_hop(&mut parts.headers, false);
            headers::strip_token_cookies(&mut parts.headers, &self.settings.tokens.cookie);
            return Response::from_parts(parts, Body::new(Metered::<_, ()>::new(body, activity, Direction::Out, None)));
        }
        // Only WebSocket was offered (see `strip_hop_by_hop`): a backend
        // switching to anything else is not relayed.
        let upgrade = response.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("nothing");
        if !upgrade.trim().eq_ignore_ascii_case("websocket") {
            connection.abort();
            return bad_gateway(format!("the backend switched to {upgrade:?}, not WebSocket"));
        }
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let going_away = self.going_away.subscribe();
        let relay = websocket::relay(client_upgrade, backend_upgrade, activity, self.metrics.clone(), going_away);
        tokio::spawn(async move {
            relay.await;
            drop(slot);
        });
        let (mut parts, _) = response.into_parts();
        headers::strip_token_cookies(&mut parts.headers, &self.settings.tokens.cookie);
        Response::from_parts(parts, Body::empty())
    }

    /// Sends the browser to the clean URL, so the token leaves the address
    /// bar, history and logs; a `token` that opens this backend moves into a
    /// cookie scoped to it on the way.
    fn token_redirect(&self, route: &Route, clean_query: Option<&str>, token: Option<&str>) -> Response<Body> {
        // One leading slash under host routing (no prefix): a path of
        // `//evil.example/` (or `/\evil.example/`, which browsers read
        // alike) would send the browser to another site. After a prefix the
        // path is the backend's, as it was asked for.
        let rest = if route.prefix.is_empty() { format!("/{}", route.rest.trim_start_matches(['/', '\\'])) } else { route.rest.clone() };
        let location = match clean_query {
            Some(q) => format!("{}{rest}?{q}", route.prefix),
            None => format!("{}{rest}", route.prefix),
        };
        let mut r = redirect(StatusCode::SEE_OTHER, &location);
        if let Some(cookie) = token.and_then(|t| self.token_cookie(route, t)) {
            r.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        r
    }

    /// The cookie that holds `token` for the backend of `route`.
    fn token_cookie(&self, route: &Route, token: &str) -> Option<HeaderValue> {
        let path = if route.prefix.is_empty() { "/".to_string() } else { format!("{}/", route.prefix) };
        let secure = if self.settings.forwarded_proto == crate::config::Scheme::Https { "; Secure" } else { "" };
        HeaderValue::from_str(&format!("{}={token}; Path={path}; HttpOnly; SameSite=Lax{secure}", self.settings.tokens.cookie)).ok()
    }
}

/// Held by a forwarded request's body until the upload ends: dropped, it
/// tells the proxy to start the backend's time to answer; each frame it
/// sees is progress.
pub struct UploadNotice {
    _over: tokio::sync::oneshot::Sender<()>,
    progress: Arc<UploadProgress>,
}

impl UploadNotice {
    fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (over, upload_over) = tokio::sync::oneshot::channel();
        let progress =
            Arc::new(UploadProgress { started: std::time::Instant::now(), last_ms: Default::default(), client_owes: Default::default() });
        (UploadNotice { _over: over, progress }, upload_over)
    }
}

impl Held for UploadNotice {
    fn frame(&self) {
        let ms = self.progress.started.elapsed().as_millis() as u64;
        self.progress.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
        self.progress.client_owes.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn pending(&self) {
        self.progress.client_owes.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for UploadNotice {
    fn drop(&mut self) {
        self.progress.last_ms.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    }
}

/// When an upload last moved.
struct UploadProgress {
    started: std::time::Instant,
    /// Milliseconds from `started` to the last frame; `u64::MAX` once over.
    last_ms: std::sync::atomic::AtomicU64,
    /// Whether the backend's side asked for more than the client has sent
    /// (else it has not asked: it is not reading, or not connected yet).
    client_owes: std::sync::atomic::AtomicBool,
}

impl UploadProgress {
    /// How long it has not moved (zero once over).
    fn still_for(&self) -> std::time::Duration {
        match self.last_ms.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => std::time::Duration::ZERO,
            ms => self.started.elapsed().saturating_sub(std::time::Duration::from_millis(ms)),
        }
    }

    /// Whether the upload waits for the client, not the backend.
    fn waiting_for_client(&self) -> bool {
        self.client_owes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the whole body has gone to the backend.
    fn over(&self) -> bool {
        self.last_ms.load(std::sync::atomic::Ordering::Relaxed) == u64::MAX
    }
}

impl Held for (crate::activity::RequestGuard, tokio::sync::watch::Receiver<()>) {}

/// An error with its causes, `: `-separated: hyper-util's client error
/// alone says only `client error (SendRequest)`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a failed forward failed on the client's request body: hyper's
/// client reports an error of the body it was given to send as a "user"
/// error caused by that body's error, which for the client's `Incoming`
/// body is the server side's own `hyper::Error` (an incomplete message).
/// Other "user" errors (the backend connection's task gone) have no such
/// cause, and stay the backend's.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user)
            && cause.source().is_some_and(|inner| inner.downcast_ref::<hyper::Error>().is_some())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The response goes out in the client connection's HTTP version, not the
/// backend's: hyper writes the version it is given, and a backend that
/// answers in HTTP/1.0 (Python's `http.server`) would otherwise make every
/// response to the browser HTTP/1.0, without keep-alive or chunked bodies.
/// HTTP/1.1 here; hyper lowers it for an HTTP/1.0 client.
fn speak_for_ourselves(parts: &mut http::response::Parts) {
    parts.version = http::Version::HTTP_11;
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::LOCATION, location)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::empty())
        .expect("static response")
}

/// A WebSocket upgrade request (RFC 6455: GET, `Connection: upgrade`,
/// `Upgrade: websocket`).
pub(crate) fn is_websocket<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    req.method() == Method::GET && has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// A request a token redirect would fail, which keeps its token for itself
/// and is answered where it is (the token still goes from what the backend
/// sees, and `Referrer-Policy: no-referrer` keeps it out of what the page
/// loads next):
/// - a page's subresource (`Sec-Fetch-Mode` other than `navigate`: a
///   `fetch`, an `EventSource`, an image), which has no address bar to
///   clean; a `fetch` from another origin follows a redirect only if the
///   redirect answers CORS, which Spawner's does not (until 2026-12-01 the
///   web app's page at `localhost:5000` fetching from Spawner at
///   `localhost:8080` with the token in the URL failed);
/// - another site's frame (`Sec-Fetch-Site: cross-site`, `Sec-Fetch-Dest`
///   other than `document`): the browser would refuse the `SameSite=Lax`
///   cookie of a token redirect, and the redirected request would arrive
///   with no token at all.
fn redirect_would_fail(h: &http::HeaderMap) -> bool {
    let subresource = h.get("sec-fetch-mode").is_some_and(|m| m != "navigate");
    let cross_site_frame =
        h.get("sec-fetch-site").is_some_and(|s| s == "cross-site") && h.get("sec-fetch-dest").is_some_and(|d| d != "document");
    subresource || cross_site_frame
}

/// A response to a frame answered where it is, its URL's token and all:
/// the frame's `cookie`, if any, goes beside the response's own (`handle`
/// keeps the token out of the Referer headers the page causes).
fn with_frame_cookie(headers: &mut http::HeaderMap, cookie: Option<&HeaderValue>) {
    if let Some(cookie) = cookie {
        headers.append(header::SET_COOKIE, cookie.clone());
    }
}

/// A frame's navigation from its own origin: a reload, the waiting page's
/// refresh, or a page of this origin loading it. Nothing in the request
/// says whether the frame sits in another site's page, where a redirect's
/// cookie would be refused and the frame locked out: it keeps its token.
fn frame_navigating_itself(h: &http::HeaderMap) -> bool {
    h.get("sec-fetch-site").is_some_and(|s| s == "same-origin") && for_a_frame(h)
}

/// Whether the browser fetches this for a frame (`Sec-Fetch-Dest`).
pub(crate) fn for_a_frame(h: &http::HeaderMap) -> bool {
    h.get("sec-fetch-dest").is_some_and(|d| d == "iframe" || d == "frame")
}

/// True when the request's query token verified (signature, and not issued
/// before the backend existed), names `backend` and has not expired.
fn query_token_opens(auth: &AuthRequest, backend: &str) -> bool {
    auth.credentials.iter().any(|c| {
        c.source == crate::plugins::types::CredentialSource::Query
            && c.verified.as_ref().is_ok_and(|cap| cap.backend == backend && cap.expires_at > auth.now)
    })
}

/// Only token-shaped values go into a cookie (no `;`, spaces or quotes).
fn cookie_safe(t: &str) -> bool {
    !t.is_empty() && t.len() <= crate::token::MAX_TOKEN_BYTES && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
