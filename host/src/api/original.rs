//! The original Spawner surface, kept so existing clients work unchanged:
//! `POST /api/spawn`, `GET /api/backend/{id}/ready`, `.../status` and
//! `.../status/stream`.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::backends::mint;
use super::error::Name;
use super::{ApiError, ApiState, sse};
use crate::backends::BackendSpec;
use crate::lifecycle::{Phase, Status};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/spawn", post(spawn))
        .route("/api/backend/{id}/ready", get(ready))
        .route("/api/backend/{id}/status", get(status))
        .route("/api/backend/{id}/status/stream", get(status_stream))
}

/// The original spawn request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SpawnRequest {
    /// Image (a template name locally).
    image: String,
    /// The container's HTTP port. Locally backends always listen on the
    /// port Spawner passes in `PORT`; on Kubernetes this is the Pod's port.
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<u16>,
    /// Environment variables.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Idle grace period, seconds.
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    grace_period_seconds: Option<i64>,
}

/// The original spawn response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpawnResponse {
    /// The URL to open (carries a capability token).
    url: String,
    /// Backend name.
    name: String,
    /// Redirects to `url` once ready (409 before).
    ready_url: String,
    /// Status as JSON.
    status_url: String,
}

/// Original-style status: the original Spawner's `{state, time}`, plus
/// the full status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OriginalStatus<'a> {
    /// The phase as the original Spawner named its states: `Submitted`,
    /// `Scheduled`, `Running` (started, not accepting connections yet),
    /// `Ready`, `Swept` (ending or ended: idle, lifetime, requested) and
    /// `Failed`.
    state: &'static str,
    /// When it reached that state: RFC 3339 in UTC with exactly six
    /// fractional digits, as Kubernetes wrote the original's event times
    /// (`MicroTime`), which strict parsers (Python's `%f`) expect.
    time: String,
    #[serde(flatten)]
    status: &'a Status,
}

/// The original Spawner's state names (its `SessionLivedBackendState`),
/// which its clients compare against (`Ready`; `Swept` or `Failed` for
/// the end). It had no state for stopping: a backend being stopped will
/// not be ready again, so it is swept already.
fn state_name(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Submitted",
        Phase::Scheduled => "Scheduled",
        Phase::Starting => "Running",
        Phase::Ready => "Ready",
        Phase::Terminating | Phase::Terminated => "Swept",
        Phase::Failed => "Failed",
    }
}

fn render(status: &Status) -> String {
    let time =
        [status.finished_at, status.terminating_at, status.ready_at, status.started_at, status.scheduled_at].into_iter().flatten().next();
    let time = format!("{:.6}", time.unwrap_or(status.created_at));
    let original = OriginalStatus { state: state_name(status.phase), time, status };
    serde_json::to_string(&original).unwrap_or_default()
}

/// Start a backend from an image (original API).
#[utoipa::path(post, path = "/api/spawn", request_body = SpawnRequest, responses((status = 200, body = SpawnResponse), (status = 400, description = "Malformed JSON"),
    (status = 413, description = "Body over 64 KiB"), (status = 415, description = "Body not sent as application/json"),
    (status = 422, description = "Invalid values or unknown image"), (status = 429, description = "Too many backends")))]
pub(crate) async fn spawn(
    State(s): State<ApiState>,
    body: Result<Json<super::object::Object<SpawnRequest>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(super::object::Object(r)) = body?;
    let spec = BackendSpec {
        template: r.image,
        key: None,
        owner: None,
        labels: BTreeMap::new(),
        env: r.env,
        grace_period_seconds: super::backends::grace(&s, r.grace_period_seconds)?,
        lifetime_limit_seconds: None,
        cpu_millis: 0,
        memory_bytes: 0,
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        port: r.port,
    };
    let created = s.backends.create(spec).await?;
    let (_, _, url) = mint(&s, &created.backend, None, s.token_ttl_seconds);
    let name = created.backend.name;
    // API URLs: where the API is served (its own listener, if it has one).
    let base = s.api_url.as_ref().unwrap_or(&s.public_url);
    Ok((
        [(header::REFERRER_POLICY, "no-referrer")],
        Json(SpawnResponse {
            url,
            ready_url: format!("{base}/api/backend/{name}/ready"),
            status_url: format!("{base}/api/backend/{name}/status"),
            name,
        }),
    )
        .into_response())
}

/// 302 to the backend's URL (with a fresh token) once ready; 409 before;
/// 410 once it is stopping or has ended (`Swept`: it will not be ready
/// again, and an original client polls on 409); 404 if unknown.
#[utoipa::path(get, path = "/api/backend/{id}/ready", operation_id = "original_ready", params(("id" = String, Path)),
    responses((status = 302, headers(("Location" = String, description = "The URL a browser opens, with a fresh token"))), (status = 409), (status = 410), (status = 404)))]
pub(crate) async fn ready(State(s): State<ApiState>, Name(id): Name) -> Result<Response, ApiError> {
    let view = s.backends.get(&id).await?.ok_or_else(|| ApiError::no_backend(&id))?;
    match view.status.phase {
        Phase::Ready => {
            let (_, _, url) = mint(&s, &view, None, s.token_ttl_seconds);
            Ok((StatusCode::FOUND, [(header::LOCATION, url), (header::REFERRER_POLICY, "no-referrer".into())]).into_response())
        }
        p if p.is_terminal() => Err(ApiError::new(StatusCode::GONE, format!("backend {id} has ended"))),
        Phase::Terminating => Err(ApiError::new(StatusCode::GONE, format!("backend {id} is stopping and will not be ready again"))),
        p => Err(ApiError::new(StatusCode::CONFLICT, format!("backend {id} is not ready yet ({})", p.as_str()))),
    }
}

/// Status (original shape: `state` plus the status fields).
#[utoipa::path(get, path = "/api/backend/{id}/status", params(("id" = String, Path)), responses((status = 200, body = OriginalStatus), (status = 404)))]
pub(crate) async fn status(State(s): State<ApiState>, Name(id): Name) -> Result<Response, ApiError> {
    let view = s.backends.get(&id).await?.ok_or_else(|| ApiError::no_backend(&id))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], render(&view.status)).into_response())
}

/// Status changes as server-sent events (original shape).
#[utoipa::path(get, path = "/api/backend/{id}/status/stream", params(("id" = String, Path), super::sse::LastEventId), responses((status = 200, content_type = "text/event-stream"),
    (status = 204, description = "Ended, and nothing after Last-Event-ID to replay"), (status = 400, description = "Last-Event-ID is not an event id"), (status = 404)))]
pub(crate) async fn status_stream(State(s): State<ApiState>, Name(id): Name, headers: HeaderMap) -> Result<Response, ApiError> {
    let feed = s.backends.subscribe(&id).await?.ok_or_else(|| ApiError::no_backend(&id))?;
    // Unnamed events, as the original sent: an `EventSource`'s `onmessage`
    // gets them.
    Ok(sse::stream(feed, sse::last_event_id(&headers)?, None, render))
}
