//! `/api/v1/backends`: the API a web app's server uses.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;

use super::object::Object;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::Name;
use super::query::StrictQuery;
use super::{ApiError, ApiState, sse};
use crate::backends::{BackendSpec, BackendView, Filter, MAX_GRACE_SECONDS, Toleration, is_label, out_of_range};
use crate::lifecycle::Phase;
use crate::token::{MAX_TTL_SECONDS, TTL_SECONDS};

/// Longest wait-for-ready long poll, seconds.
const MAX_WAIT_SECONDS: u64 = 300;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/backends", post(create).get(list))
        .route("/api/v1/backends/{name}", get(get_one).delete(terminate))
        .route("/api/v1/backends/{name}/events", get(events))
        .route("/api/v1/backends/{name}/ready", get(ready))
        .route("/api/v1/backends/{name}/logs", get(logs))
        .route("/api/v1/backends/{name}/tokens", post(token))
}

/// Requested compute (used by the scheduler plugin).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Resources {
    /// Thousandths of a CPU core.
    cpu_millis: u64,
    /// Bytes of memory.
    memory_bytes: u64,
}

/// Create (or get by key) a backend.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CreateRequest {
    /// Template to run (`image` is accepted as an alias).
    #[serde(alias = "image")]
    #[schema(min_length = 1)]
    template: String,
    /// Get-or-create key: while a backend with this key is live (and not
    /// stopping), creates return it instead of starting another.
    /// 1-253 bytes (UTF-8) without spaces or control characters.
    #[schema(min_length = 1, max_length = 253)]
    key: Option<String>,
    /// The user the backend is for (passed to plugins; the token's subject
    /// unless `subject` says otherwise). 1-253 bytes (UTF-8) without
    /// control characters.
    #[schema(min_length = 1, max_length = 253)]
    owner: Option<String>,
    /// Labels for plugins (quota, policy).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Environment variables for the backend.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// How long the backend may stay unused before it is terminated (s).
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    grace_period_seconds: Option<i64>,
    /// Hard limit on the backend's lifetime (s).
    #[schema(minimum = 1)]
    lifetime_limit_seconds: Option<i64>,
    /// Requested compute.
    #[serde(default)]
    resources: Resources,
    /// Node labels required.
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    /// Node taints tolerated (Kubernetes' tolerations; checked, and without
    /// effect, locally).
    #[serde(default)]
    tolerations: Vec<Toleration>,
    /// The application's HTTP port on Kubernetes (default 8080, also passed
    /// as `PORT`). Local backends listen on the port Spawner passes in
    /// `PORT`, so locally this is ignored.
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<u16>,
    /// Lifetime of the returned token (s; default from configuration).
    #[schema(minimum = 1, maximum = 2592000)]
    token_ttl_seconds: Option<i64>,
    /// Subject of the returned token (default: `owner`). 1-253 bytes
    /// (UTF-8) without control characters.
    #[schema(min_length = 1, max_length = 253)]
    subject: Option<String>,
}

/// A created (or found) backend and a token for it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateResponse {
    /// False when a live backend with the same key was returned.
    created: bool,
    /// The backend.
    backend: BackendView,
    /// Capability token for this backend (send as `Authorization: Bearer`,
    /// or let the proxy turn `?token=` into a cookie).
    token: String,
    /// When the token expires.
    #[schema(value_type = String)]
    token_expires_at: Timestamp,
    /// The URL to hand to the browser: `url` with the token in the query.
    browser_url: String,
    /// What the caller should know about its request (absent when
    /// nothing): e.g. that `port` is not used in local mode, or that the
    /// live backend returned for the key runs another template.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// Mint a token for someone else (e.g. a second user of a shared document).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TokenRequest {
    /// Subject (user) of the token. 1-253 bytes (UTF-8) without control
    /// characters.
    #[schema(min_length = 1, max_length = 253)]
    subject: Option<String>,
    /// Lifetime, seconds (default from configuration).
    #[schema(minimum = 1, maximum = 2592000)]
    ttl_seconds: Option<i64>,
}

/// A token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenResponse {
    /// The token.
    token: String,
    /// When it expires.
    #[schema(value_type = String)]
    expires_at: Timestamp,
    /// The backend URL with the token.
    browser_url: String,
}

/// The token lifetime to use: `requested` (the request field `field`) or
/// the configured default, checked before anything is created so a refused
/// request leaves nothing running.
pub(super) fn token_ttl(s: &ApiState, requested: Option<i64>, field: &str) -> Result<u64, ApiError> {
    let Some(ttl) = requested else { return Ok(s.token_ttl_seconds) };
    u64::try_from(ttl).ok().filter(|t| TTL_SECONDS.contains(t)).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field} must be between 1 and {MAX_TTL_SECONDS} (30 days), got {ttl}"))
    })
}

/// A duration field as sent, read signed so that a negative one gets the
/// same message as zero (which [`crate::backends::validate_spec`] refuses,
/// with a too large one) instead of a type error.
pub(super) fn seconds(field: &str, value: i64, max: Option<u64>) -> Result<u64, ApiError> {
    u64::try_from(value).map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, out_of_range(field, max, value)))
}

/// The grace period a request asks for, or the configured default.
pub(super) fn grace(s: &ApiState, requested: Option<i64>) -> Result<u64, ApiError> {
    requested.map_or_else(|| Ok(s.backends.default_grace_seconds()), |g| seconds("gracePeriodSeconds", g, Some(MAX_GRACE_SECONDS)))
}

/// A token for `view` valid for `ttl` seconds (see [`token_ttl`]), its
/// expiry, and the browser URL that carries it.
pub(super) fn mint(s: &ApiState, view: &BackendView, subject: Option<&str>, ttl: u64) -> (String, Timestamp, String) {
    let now = crate::token::now_unix();
    let token = s.tokens.mint_for(&view.name, view.uid.as_deref(), subject, now, now + ttl);
    let expires = Timestamp::from_second((now + ttl) as i64).unwrap_or(Timestamp::MAX);
    let browser_url = format!("{}?{}={token}", view.url, s.token_query_param);
    (token, expires, browser_url)
}

/// Create a backend, or get the live one with the same key.
#[utoipa::path(post, path = "/api/v1/backends", request_body = CreateRequest,
    responses((status = 201, description = "Created", body = CreateResponse, headers(("Location" = String, description = "The backend's path in this API"))),
        (status = 200, description = "Existing backend with this key", body = CreateResponse, headers(("Location" = String, description = "The backend's path in this API"))),
        (status = 400, description = "Malformed JSON"), (status = 413, description = "Body over 64 KiB"), (status = 415, description = "Body not sent as application/json"),
        (status = 409, description = "Kubernetes: the key is held by an object this API did not create"),
        (status = 422, description = "Invalid values or unknown template"), (status = 429, description = "Too many backends")))]
pub(crate) async fn create(
    State(s): State<ApiState>,
    body: Result<Json<Object<CreateRequest>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(Object(r)) = body?;
    let ttl = token_ttl(&s, r.token_ttl_seconds, "tokenTtlSeconds")?;
    // Before anything starts: a bad subject must not leave a backend behind.
    if let Some(subject) = &r.subject {
        crate::backends::check_user("subject", subject)?;
    }
    let spec = BackendSpec {
        template: r.template,
        key: r.key,
        owner: r.owner.clone(),
        labels: r.labels,
        env: r.env,
        grace_period_seconds: grace(&s, r.grace_period_seconds)?,
        lifetime_limit_seconds: r.lifetime_limit_seconds.map(|l| seconds("lifetimeLimitSeconds", l, None)).transpose()?,
        cpu_millis: r.resources.cpu_millis,
        memory_bytes: r.resources.memory_bytes,
        node_selector: r.node_selector,
        tolerations: r.tolerations,
        port: r.port,
    };
    let created = s.backends.create(spec).await?;
    let subject = r.subject.or(r.owner);
    let (token, token_expires_at, browser_url) = mint(&s, &created.backend, subject.as_deref(), ttl);
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    let location = format!("/api/v1/backends/{}", created.backend.name);
    let body = CreateResponse {
        created: created.created,
        backend: created.backend,
        token,
        token_expires_at,
        browser_url,
        warnings: created.warnings,
    };
    Ok((status, [(header::LOCATION, location), (header::REFERRER_POLICY, "no-referrer".into())], Json(body)).into_response())
}

/// List filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only these phases, separated by commas: `ready` or `terminated,failed`.
    #[param(min_length = 1)]
    phase: Option<String>,
    /// Only this owner.
    #[param(min_length = 1)]
    owner: Option<String>,
    /// Only this key.
    #[param(min_length = 1)]
    key: Option<String>,
    /// Only backends with these labels: `k=v,k2=v2`.
    #[param(min_length = 1)]
    labels: Option<String>,
    /// `true`: only live (not ended) backends; `false`: only ended ones.
    live: Option<bool>,
}

/// List backends, newest first.
#[utoipa::path(get, path = "/api/v1/backends", params(ListQuery), responses((status = 200, body = [BackendView]), (status = 400, description = "Bad filter")))]
pub(crate) async fn list(State(s): State<ApiState>, StrictQuery(q): StrictQuery<ListQuery>) -> Result<Json<Vec<BackendView>>, ApiError> {
    // An empty filter is a mistake, not "no filter": a web app that sends
    // `owner=${user}` for a user it failed to look up would list everyone's.
    for (name, value) in [("phase", &q.phase), ("owner", &q.owner), ("key", &q.key), ("labels", &q.labels)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ApiError::bad_request(format!("{name} is empty: give a value, or leave it out to list without it")));
        }
    }
    let mut labels = BTreeMap::new();
    for pair in q.labels.iter().flat_map(|l| l.split(',')) {
        // A label no backend can carry would silently match nothing.
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, v)| is_label(k, v))
            .ok_or_else(|| ApiError::bad_request(format!("labels must be k=v pairs of valid labels separated by commas (got {pair:?})")))?;
        if labels.insert(k.to_string(), v.to_string()).is_some_and(|first| first != v) {
            return Err(ApiError::bad_request(format!("labels: {k} is given twice with different values: no backend carries both")));
        }
    }
    let mut phases = Vec::new();
    for name in q.phase.iter().flat_map(|p| p.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
        let phase = Phase::ALL.into_iter().find(|p| p.as_str() == name).ok_or_else(|| {
            let known: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
            ApiError::bad_request(format!("phase: unknown phase {name:?}; one of {}, or several separated by commas", known.join(", ")))
        })?;
        phases.push(phase);
    }
    // `phase=,` names no phase: as empty as `phase=`, not "every phase".
    if q.phase.is_some() && phases.is_empty() {
        return Err(ApiError::bad_request("phase is empty: give a value, or leave it out to list without it"));
    }
    let filter = Filter { phases, owner: q.owner, key: q.key, labels, live: q.live };
    Ok(Json(s.backends.list(&filter).await))
}

/// One backend.
#[utoipa::path(get, path = "/api/v1/backends/{name}", params(("name" = String, Path)), responses((status = 200, body = BackendView), (status = 404)))]
pub(crate) async fn get_one(State(s): State<ApiState>, Name(name): Name) -> Result<Json<BackendView>, ApiError> {
    s.backends.get(&name).await?.map(Json).ok_or_else(|| ApiError::no_backend(&name))
}

/// Terminate a backend (reason `requested`). Idempotent.
#[utoipa::path(delete, path = "/api/v1/backends/{name}", params(("name" = String, Path)), responses((status = 202, body = BackendView), (status = 404)))]
pub(crate) async fn terminate(State(s): State<ApiState>, Name(name): Name) -> Result<Response, ApiError> {
    let view = s.backends.terminate(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Status changes as server-sent events (`event: status`, `id` = sequence
/// number; send `Last-Event-ID` to resume). Ends after a terminal status.
#[utoipa::path(get, path = "/api/v1/backends/{name}/events", params(("name" = String, Path), sse::LastEventId), responses((status = 200, content_type = "text/event-stream"),
    (status = 204, description = "Ended, and nothing after Last-Event-ID to replay"), (status = 400, description = "Last-Event-ID is not an event id"), (status = 404)))]
pub(crate) async fn events(State(s): State<ApiState>, Name(name): Name, headers: HeaderMap) -> Result<Response, ApiError> {
    let feed = s.backends.subscribe(&name).await?.ok_or_else(|| ApiError::no_backend(&name))?;
    Ok(sse::stream(feed, sse::last_event_id(&headers)?, Some("status"), |status| serde_json::to_string(status).unwrap_or_default()))
}

/// Wait-for-ready query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WaitQuery {
    /// Seconds to wait at most (default 30; more than 300 waits 300).
    timeout: Option<u64>,
}

/// Wait until the backend is ready: 200 when it is, 409 once it is
/// stopping (it will not be ready again, and stopping can take its whole
/// stop timeout), 410 if it ended, 202 (with the current status) if the
/// timeout passed first.
#[utoipa::path(get, path = "/api/v1/backends/{name}/ready", params(("name" = String, Path), WaitQuery),
    responses((status = 200, body = BackendView), (status = 202, body = BackendView, headers(("Retry-After" = u32, description = "Seconds before asking again"))), (status = 409, description = "Stopping: it will not be ready again"),
    (status = 410, description = "Ended"), (status = 400, description = "Bad timeout"), (status = 404)))]
pub(crate) async fn ready(
    State(s): State<ApiState>,
    Name(name): Name,
    StrictQuery(q): StrictQuery<WaitQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(q.timeout.unwrap_or(30).min(MAX_WAIT_SECONDS));
    let mut feed = s.backends.subscribe(&name).await?.ok_or_else(|| ApiError::no_backend(&name))?;
    let decided = |p: Phase| matches!(p, Phase::Ready | Phase::Terminating) || p.is_terminal();
    let _ = tokio::time::timeout(wait, feed.live.wait_for(|e| decided(e.status.phase))).await;
    let view = s.backends.get(&name).await?.ok_or_else(|| ApiError::no_backend(&name))?;
    Ok(match view.status.phase {
        Phase::Ready => (StatusCode::OK, Json(view)).into_response(),
        Phase::Terminating => ApiError::new(StatusCode::CONFLICT, stopping(&name)).into_response(),
        p if p.is_terminal() => {
            let why = view.status.message.as_deref().unwrap_or(p.as_str());
            let message = match (view.status.ready_at, view.status.finished_at) {
                (Some(_), Some(at)) => format!("backend {name} was ready and has ended (at {at}): {why}"),
                (Some(_), None) => format!("backend {name} was ready and has ended: {why}"),
                (None, _) => format!("backend {name} ended before it was ready: {why}"),
            };
            ApiError::new(StatusCode::GONE, message).into_response()
        }
        _ => (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], Json(view)).into_response(),
    })
}

/// Why a stopping backend gets no token and will not be ready: the caller
/// should create a new one.
fn stopping(name: &str) -> String {
    format!("backend {name} is stopping and will not be ready again: create a new one (with its key, the same call)")
}

/// Log query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Only the last N lines.
    tail: Option<usize>,
}

/// The backend's captured stdout and stderr, one line per entry:
/// `<time> <stream> <text>`.
#[utoipa::path(get, path = "/api/v1/backends/{name}/logs", params(("name" = String, Path), LogsQuery), responses((status = 200, content_type = "text/plain"), (status = 400, description = "Bad tail"), (status = 404)))]
pub(crate) async fn logs(
    State(s): State<ApiState>,
    Name(name): Name,
    StrictQuery(q): StrictQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let lines = s.backends.logs(&name, q.tail).await?;
    let mut text = String::new();
    for l in lines {
        let stream = match l.stream {
            crate::process::Stream::Stdout => "stdout",
            crate::process::Stream::Stderr => "stderr",
        };
        text.push_str(&format!("{} {stream} {}\n", l.time, l.text));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Mint another token for a backend.
#[utoipa::path(post, path = "/api/v1/backends/{name}/tokens", params(("name" = String, Path)), request_body = Option<TokenRequest>, responses((status = 201, body = TokenResponse), (status = 400, description = "Malformed JSON"),
    (status = 413, description = "Body over 64 KiB"), (status = 415, description = "Body not sent as application/json"), (status = 422, description = "Invalid ttlSeconds or subject, or an unknown field"), (status = 404), (status = 409, description = "The backend is stopping"), (status = 410, description = "The backend has ended")))]
pub(crate) async fn token(
    State(s): State<ApiState>,
    Name(name): Name,
    headers: http::HeaderMap,
    // Every field is optional: no body (and no Content-Type), or `null`
    // (which the OpenAPI document allows), is all defaults.
    body: Result<Option<Json<Option<Object<TokenRequest>>>>, JsonRejection>,
) -> Result<Response, ApiError> {
    // A body without a Content-Type is not "no body": axum would skip it,
    // and `{"subject":"bob","ttlSeconds":60}` sent so (Python's
    // `requests.post(url, data=...)`) would mint a day-long token for
    // nobody.
    let sized = headers.get(header::CONTENT_LENGTH).is_some_and(|l| l != "0") || headers.contains_key(header::TRANSFER_ENCODING);
    if sized && !headers.contains_key(header::CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body has no Content-Type: send it as Content-Type: application/json (or send no body for all defaults)",
        ));
    }
    let r = body
        .map_err(|e| match ApiError::from(e) {
            // Every field is optional here, which is worth saying.
            empty if empty.message.starts_with(super::error::EMPTY_BODY) => {
                ApiError::bad_request(format!("{} ({{}} for all defaults), or no body and no Content-Type", super::error::EMPTY_BODY))
            }
            other => other,
        })?
        .and_then(|Json(r)| r)
        .map(|Object(r)| r)
        .unwrap_or_default();
    // The request's own values first, as a create checks them: the same
    // body gets the same answer whatever the backend's state.
    let ttl = token_ttl(&s, r.ttl_seconds, "ttlSeconds")?;
    if let Some(subject) = &r.subject {
        crate::backends::check_user("subject", subject)?;
    }
    let view = s.backends.get(&name).await?.ok_or_else(|| ApiError::no_backend(&name))?;
    if view.status.phase.is_terminal() {
        return Err(ApiError::new(StatusCode::GONE, format!("backend {name} has ended")));
    }
    if view.status.phase == Phase::Terminating {
        return Err(ApiError::new(StatusCode::CONFLICT, stopping(&name)));
    }
    let (token, expires_at, browser_url) = mint(&s, &view, r.subject.as_deref(), ttl);
    Ok((StatusCode::CREATED, [(header::REFERRER_POLICY, "no-referrer")], Json(TokenResponse { token, expires_at, browser_url }))
        .into_response())
}
