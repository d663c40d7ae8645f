//! The REST API the web app's server calls, under `/api/`.
//!
//! - `api/v1` (`backends`): create-or-get, status, status stream (SSE with
//!   `Last-Event-ID`), wait-for-ready, terminate, list, logs, tokens;
//! - `original`: the original Spawner surface (`POST /api/spawn`,
//!   `GET /api/backend/{id}/ready|status|status/stream`);
//! - `error`: [`ApiError`], JSON errors with a status and a message;
//! - `query`: query strings read strictly (a malformed `%` escape is a 400);
//! - `/api/openapi.json`: this API as OpenAPI 3.1 (utoipa).
//!
//! Every route but `/api/openapi.json` requires `Authorization: Bearer
//! <api-token>` when a token is configured (mandatory on non-loopback
//! listeners). Bodies are limited to 64 KiB.

mod backends;
pub mod error;
mod object;
mod original;
mod query;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;

use crate::backends::Backends;
use crate::metrics::Metrics;
use crate::token::TokenKey;
pub use error::ApiError;

/// Largest request body accepted (create requests are well under 1 KiB).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The runtime.
    pub backends: Backends,
    /// Signs capability tokens.
    pub tokens: Arc<TokenKey>,
    /// Default token lifetime, seconds.
    pub token_ttl_seconds: u64,
    /// Query parameter `browserUrl` carries the token in (the proxy's).
    pub token_query_param: String,
    /// Base URL for links.
    pub public_url: String,
    /// Base URL of the API itself, when it is not `public_url`'s listener
    /// (`api-listen`): for links to API endpoints (the original API's
    /// `readyUrl` and `statusUrl`).
    pub api_url: Option<String>,
    /// The API bearer token, if any.
    pub api_token: Option<crate::secret::Secret>,
    /// Metrics registry (served at /metrics).
    pub metrics: Arc<Metrics>,
    /// Time a caller has to send a request's body, once its head arrived
    /// (the proxy's header-read timeout, which bounds the head).
    pub body_timeout: std::time::Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Spawner API", description = "Session-lived backends: create, watch, reach and terminate per-user server processes."),
    paths(
        backends::create, backends::list, backends::get_one, backends::terminate, backends::events,
        backends::ready, backends::logs, backends::token,
        original::spawn, original::ready, original::status, original::status_stream,
    ),
    components(schemas(
        backends::CreateRequest, backends::CreateResponse, backends::Resources, backends::TokenRequest,
        backends::TokenResponse, crate::backends::BackendView, original::SpawnRequest, original::SpawnResponse,
        original::OriginalStatus, error::ErrorBody,
    )),
    modifiers(&BearerAuth, &CommonAnswers, &ErrorBodies, &ImageAlias),
)]
struct ApiDoc;

struct BearerAuth;

/// Every error answer has the same JSON body, [`error::ErrorBody`]: said
/// once here rather than on each of some forty responses.
struct ErrorBodies;

impl utoipa::Modify for ErrorBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr};
        let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                for (status, response) in op.responses.responses.iter_mut() {
                    if let (true, RefOr::T(response)) = (status.parse::<u16>().is_ok_and(|s| s >= 400), response)
                        && response.content.is_empty()
                    {
                        response.content.insert("application/json".into(), body.clone());
                    }
                }
            }
        }
    }
}

/// `template` may be sent as `image` (serde's alias, which the schema
/// derive cannot see): one of the two is required, so neither is listed
/// as required, and `image` is a property of its own.
struct ImageAlias;

impl utoipa::Modify for ImageAlias {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        let schemas = openapi.components.as_mut().map(|c| &mut c.schemas);
        let Some(RefOr::T(Schema::Object(create))) = schemas.and_then(|s| s.get_mut("CreateRequest")) else { return };
        create.required.retain(|r| r != "template");
        let image = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some("The template, under the name the original Spawner used (send one of `template` and `image`)."))
            .build();
        create.properties.insert("image".into(), image.into());
    }
}

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// Answers every operation may give: 401 once an API token is configured,
/// 403 for a browser page's request without one, 405 for a method it does
/// not take, 408 (those with a body) for a body that does not arrive, and
/// 503 while Spawner stops or (on Kubernetes) cannot reach the API server.
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ResponseBuilder, header::HeaderBuilder};
        let common = [
            ("401", "The API token is missing or wrong (when `api-token` is configured: always off loopback)"),
            (
                "403",
                "Without an `api-token`: the request came from a browser page (`Origin`, or `Sec-Fetch-Site` other than `none`); call the API from your web app's server",
            ),
            ("405", "The endpoint does not take this method; the `Allow` header lists those it takes"),
            ("503", "Spawner is stopping, or (Kubernetes) the API server cannot be reached: try again"),
        ];
        // The API reads a body within the header-read timeout.
        let body_late = (
            "408",
            "The request body did not arrive within the header-read timeout (`proxy.header-read-timeout-ms`; is Content-Length larger than the body sent?)",
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                let late = op.request_body.is_some().then_some(body_late);
                for (status, description) in common.into_iter().chain(late) {
                    let mut response = ResponseBuilder::new().description(description);
                    if status == "401" {
                        let scheme = HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::String))
                            .description(Some("`Bearer`"))
                            .build();
                        response = response.header("WWW-Authenticate", scheme);
                    }
                    op.responses.responses.entry(status.into()).or_insert_with(|| response.build().into());
                }
            }
        }
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The API router (plus `/metrics` and `/healthz`).
pub fn router(state: ApiState) -> Router {
    router_with(state, true)
}

/// The API router, with `/metrics` only if `metrics` (else it is served
/// elsewhere, off the public listener) and `/healthz`.
pub fn router_with(state: ApiState, metrics: bool) -> Router {
    let api = Router::new()
        .merge(backends::routes())
        .merge(original::routes())
        // Inside the token check: an anonymous caller's body is not read.
        .route_layer(middleware::from_fn_with_state(state.clone(), body_within))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/api/openapi.json", get(|| async { axum::Json(openapi()) }));
    let ops = if metrics { Router::new().route("/metrics", get(self::metrics)) } else { Router::new() };
    Router::new()
        .merge(api)
        .merge(ops)
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(move |uri: axum::http::Uri, headers: HeaderMap| async move {
            let hint = match (uri.path(), linked_from_a_backend(&headers)) {
                (p, Some(name)) if !p.starts_with("/api/") => format!(
                    " (backend {name}'s page asked for {p}: a link that starts with / leaves the backend's /p/{name}/ prefix; make it relative, or route backends by host with --host-domain)"
                ),
                // Only where the API has a listener of its own (on the
                // main one the proxy answers these).
                (p, _) if p.starts_with("/p/") => {
                    " (this is the API's own listener, api-listen: backends are served on the main listener, at their browserUrl)".to_string()
                }
                // `/api/v1/backends/` is the commonest near miss; said only
                // where the path without it is an endpoint.
                (p, _) if p.len() > 1 && p.ends_with('/') && is_endpoint(p.trim_end_matches('/'), metrics) => {
                    format!(" (paths take no trailing slash: {})", p.trim_end_matches('/'))
                }
                _ => String::new(),
            };
            ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint{hint}; see /api/openapi.json"))
        })
        .method_not_allowed_fallback(move |method: Method, uri: axum::http::Uri, headers: HeaderMap| async move {
            // A page's CORS preflight to the API: say what its request
            // would be told.
            let preflight = method == Method::OPTIONS
                && headers.contains_key(header::ORIGIN)
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            if preflight && uri.path().starts_with("/api/") {
                return ApiError::new(StatusCode::FORBIDDEN, FOR_SERVERS);
            }
            let message = match endpoint(uri.path(), metrics) {
                Some((_, takes)) => format!("this endpoint takes {}, not {method}; see /api/openapi.json", takes.join(", ")),
                None => format!("this endpoint does not take {method}; see /api/openapi.json"),
            };
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state((state.clone(), metrics), count_requests))
        .with_state(state)
}

/// Counts every request the API answers, by method, endpoint and status
/// code (`spawner_api_requests_total`).
async fn count_requests(State((s, metrics)): State<(ApiState, bool)>, req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let endpoint = endpoint(req.uri().path(), metrics).map_or("none", |(template, _)| template);
    let response = next.run(req).await;
    let labels = crate::metrics::ApiRequestLabels { method, endpoint, code: response.status().as_u16() };
    s.metrics.api.requests.get_or_create(&labels).inc();
    response
}

/// Whether `path` is one of the API's endpoints (see [`endpoint`]).
fn is_endpoint(path: &str, metrics: bool) -> bool {
    endpoint(path, metrics).is_some()
}

/// The endpoint `path` is, as the OpenAPI document writes it (`{name}`
/// standing for any one segment; or `/healthz`, `/metrics` where it is
/// served (`metrics`), the document itself), and the methods it takes
/// (HEAD wherever GET, as axum answers it).
fn endpoint(path: &str, metrics: bool) -> Option<(&'static str, &'static [&'static str])> {
    static ENDPOINTS: std::sync::OnceLock<Vec<(String, Vec<&'static str>)>> = std::sync::OnceLock::new();
    let endpoints = ENDPOINTS.get_or_init(|| {
        let documented = openapi().paths.paths.into_iter().map(|(path, item)| {
            let operations =
                [("GET", &item.get), ("POST", &item.post), ("PUT", &item.put), ("DELETE", &item.delete), ("PATCH", &item.patch)];
            let mut methods: Vec<&'static str> = operations.into_iter().filter_map(|(m, op)| op.as_ref().map(|_| m)).collect();
            if methods.first() == Some(&"GET") {
                methods.insert(1, "HEAD");
            }
            (path, methods)
        });
        let own = ["/healthz", "/metrics", "/api/openapi.json"].map(|p| (p.to_string(), vec!["GET", "HEAD"]));
        own.into_iter().chain(documented).collect()
    });
    let matches = |template: &str| {
        let (mut pattern, mut segments) = (template.split('/'), path.split('/'));
        loop {
            match (pattern.next(), segments.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if p == s || (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) => {}
                _ => return false,
            }
        }
    };
    endpoints
        .iter()
        .filter(|(t, _)| metrics || t != "/metrics")
        .find(|(t, _)| matches(t))
        .map(|(t, methods)| (t.as_str(), methods.as_slice()))
}

/// Reads a request's body (up to one byte past the API's limit, which the
/// extractors then refuse) within [`ApiState::body_timeout`] before the
/// endpoint runs. Without it a caller that announced a body and sent less
/// held its connection, and its place under `max-connections`, for ever.
async fn body_within(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    let (parts, mut body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let mut read = Vec::new();
    let reading = async {
        while read.len() <= MAX_BODY_BYTES
            && let Some(frame) = body.frame().await
        {
            if let Ok(data) = frame?.into_data() {
                read.extend_from_slice(&data);
            }
        }
        Ok::<_, axum::Error>(())
    };
    match tokio::time::timeout(s.body_timeout, reading).await {
        Ok(Ok(())) => next.run(Request::from_parts(parts, axum::body::Body::from(read))).await,
        Ok(Err(e)) => ApiError::new(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}")).into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (is Content-Length larger than the body sent?)",
                s.body_timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    metrics_response(&s.metrics)
}

fn metrics_response(metrics: &Metrics) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode()).into_response()
}

/// `/metrics` and `/healthz` only: what the operator serves, and what
/// `spawner proxy` serves next to the proxy when it has no API token (the
/// REST API is off).
pub fn ops_router(metrics: Arc<Metrics>) -> Router {
    healthz_router().route("/metrics", get(move || async move { metrics_response(&metrics) }))
}

/// `/healthz` only: `spawner proxy`'s public listener when metrics are
/// served on their own listener.
pub fn healthz_router() -> Router {
    healthz_router_saying(
        "no such endpoint: this listener serves /healthz, /metrics (unless --metrics-listen moved it) and, on spawner \
         proxy, backends under /p/{name}/; the REST API (/api/) is off until spawner proxy gets --api-token",
    )
}

/// `/healthz` only: `spawner dev`'s main listener when the API (and
/// `/metrics`) are served on `api-listen`.
pub fn api_elsewhere_router() -> Router {
    // The API's address is not said: this listener is the public one, and
    // where the API listens is the operator's business.
    healthz_router_saying(
        "no such endpoint: this listener serves backends (under /p/{name}/, or with host routing on their own host, {name}.{host-domain}) and /healthz; the REST API, /metrics and the OpenAPI document are on another listener (api-listen)",
    )
}

/// `/healthz`, and 404 saying `elsewhere` for anything else.
fn healthz_router_saying(elsewhere: &'static str) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(move || async move { ApiError::new(StatusCode::NOT_FOUND, elsewhere) })
}

/// Whether a browser page sent `req`: a script, a form, or a frame or
/// window it opened. Every current browser marks its requests with
/// `Sec-Fetch-Site`, and older ones cross-origin and unsafe ones with
/// `Origin`; server-side clients (curl, Node's `fetch`, Python) send
/// neither. What the user types in (`Sec-Fetch-Site: none`) passes, and so
/// does a GET navigation of a window (not a frame) from another origin to
/// the original API's `readyUrl` (`/api/backend/{id}/ready`), which its
/// clients hand to the browser: that link names an unguessable backend, so
/// only who was given it can follow it. Any other navigation does not: a backend's page can
/// open a window or frame on the API through another site's redirect
/// (which makes it "cross-site") and, being of the API's origin in path
/// routing, read what it shows.
fn from_a_page(req: &Request) -> bool {
    let h = req.headers();
    let site = h.get("sec-fetch-site");
    // A page's own window, not a frame another site's page embeds (it
    // would show the backend under that page, for clicks it steers).
    let ready_link = h.get("sec-fetch-mode").is_some_and(|m| m == "navigate")
        && h.get("sec-fetch-dest").is_none_or(|d| d == "document")
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && site.is_none_or(|s| s != "same-origin")
        && req.uri().path().strip_prefix("/api/backend/").and_then(|p| p.strip_suffix("/ready")).is_some_and(|id| !id.contains('/'));
    !ready_link && (site.is_some_and(|s| s != "none") || h.contains_key(header::ORIGIN))
}

/// Why a page may not call the API.
const FOR_SERVERS: &str = "the API is for your web app's server, not for browsers: a page (a backend's shares this origin) may not call it; call it from your server (with an api-token set, which must never reach a browser, the server may relay a browser's headers)";

/// The backend whose page (in path routing, `/p/{name}/…` on this host,
/// as its `Referer` says) asked for a path outside its prefix: a
/// root-absolute link, which lands on Spawner's own routes.
fn linked_from_a_backend(headers: &HeaderMap) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let rest = referer.split_once("://")?.1;
    let (authority, path) = rest.split_at(rest.find('/')?);
    if Some(authority) != headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        return None;
    }
    let name = path.strip_prefix("/p/")?.split(['/', '?', '#']).next()?;
    crate::backends::is_object_name(name).then(|| name.to_string())
}

/// Checks the bearer token (compared as digests, see
/// [`crate::secret::Secret::presented_in`]); with no token configured (an
/// API open on loopback), refuses requests from pages ([`from_a_page`]):
/// in path routing every backend's pages share the API's origin and could
/// otherwise list the backends, mint tokens for them and end them. (With a
/// token, a page cannot know it, and a server relaying a browser's headers
/// with the token added is let in.)
async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if s.api_token.is_none() && from_a_page(&req) {
        let why = if crate::proxy::for_a_frame(req.headers()) && req.uri().path().ends_with("/ready") {
            "readyUrl opens in a window or tab, not in a frame: another site's page could show the backend under its own, for clicks it steers"
        } else {
            FOR_SERVERS
        };
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    if let Some(expected) = &s.api_token
        && !expected.presented_in(req.headers())
    {
        let presented = crate::secret::bearer(req.headers());
        let msg = if presented.is_empty() {
            "this API needs Authorization: Bearer <api-token>"
        } else if crate::token::shaped_in(presented) {
            // The opposite of the proxy's hint for the API token sent to a
            // backend: the two are easy to swap.
            "the API token is not valid: that is a backend's capability token (st1.…), which opens its backend through the \
             proxy, not the API; send the API token (--api-token or SPAWNER_API_TOKEN, or api-token in spawner dev's config)"
        } else {
            "the API token is not valid"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_are_the_openapi_documents_paths_with_any_segment_for_a_name() {
        for yes in ["/api/v1/backends", "/api/v1/backends/demo-1", "/api/v1/backends/demo-1/tokens", "/api/spawn", "/healthz"] {
            assert!(super::is_endpoint(yes, true), "{yes}");
        }
        for no in ["/foo", "/api/v1/backends/demo-1/nope", "/api/v1/backends//tokens", "/p/demo-1", "/api/v1"] {
            assert!(!super::is_endpoint(no, true), "{no}");
        }
        let endpoint = |p| super::endpoint(p, true);
        assert_eq!(endpoint("/api/v1/backends/demo-1/tokens"), Some(("/api/v1/backends/{name}/tokens", &["POST"][..])));
        assert_eq!(endpoint("/api/backend/demo-1/status/stream").map(|e| e.0), Some("/api/backend/{id}/status/stream"));
        assert_eq!(endpoint("/api/v1/backends/demo-1"), Some(("/api/v1/backends/{name}", &["GET", "HEAD", "DELETE"][..])));
        // Where /metrics is served elsewhere (--metrics-listen), not here.
        assert!(super::is_endpoint("/metrics", true) && !super::is_endpoint("/metrics", false));
    }
}
