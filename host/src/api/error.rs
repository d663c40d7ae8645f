//! API errors: a status and a message a user can act on, as JSON
//! `{"error": "..."}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::backends::ControlError;
use crate::log_gate::LogGate;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for a backend name.
    pub fn no_backend(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no backend named {name}"))
    }
}

/// The body of every error answer of the API.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::UnknownTemplate(..) | ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Capacity(_) => StatusCode::TOO_MANY_REQUESTS,
            ControlError::Gone(_) => StatusCode::GONE,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::ShuttingDown | ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        // What the operator of Spawner must hear about too, not only the
        // caller: the API server out of reach or refusing (RBAC), and
        // creates turned away for capacity.
        // Each once per gate period at most: they come once per request,
        // and a client that retries would flood the log with one cause.
        static UNAVAILABLE: LogGate = LogGate::new();
        static CAPACITY: LogGate = LogGate::new();
        let now = std::time::Instant::now();
        match &e {
            ControlError::Unavailable(why) => {
                if let Some(not_logged) = UNAVAILABLE.pass(now) {
                    tracing::warn!(error = %why, not_logged, "API request failed: the platform is unavailable");
                }
            }
            ControlError::Capacity(why) => {
                if let Some(not_logged) = CAPACITY.pass(now) {
                    tracing::info!(reason = %why, not_logged, "create refused for capacity");
                }
            }
            _ => {}
        }
        ApiError::new(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => "send the body as JSON with Content-Type: application/json".to_string(),
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is larger than the API's limit of {} KiB", super::MAX_BODY_BYTES / 1024)
            }
            JsonRejection::JsonSyntaxError(_) => syntax_message(&plain_serde_message(&r.body_text())),
            _ => plain_serde_message(&r.body_text()),
        };
        ApiError::new(r.status(), message)
    }
}

/// How the message for an empty JSON body starts; an endpoint whose fields
/// are all optional says more after it.
pub(crate) const EMPTY_BODY: &str = "the body is empty: send a JSON object";

/// A JSON syntax error in the API's terms: said to be about the body's
/// syntax (serde's "key must be a string" is about an object key, not the
/// API's `key` field), and an empty body said to be one.
fn syntax_message(serde: &str) -> String {
    if serde.starts_with("EOF while parsing a value at line 1 column 0") {
        return format!("{EMPTY_BODY} (the fields are in /api/openapi.json)");
    }
    let serde = serde.replace("key must be a string", "object keys must be strings in double quotes");
    format!("the body is not valid JSON: {serde}")
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(plain_serde_message(&r.body_text()))
    }
}

/// Rewrites a serde/axum rejection ("Failed to deserialize the JSON body
/// into the target type: gracePeriodSeconds: invalid value: integer `-5`,
/// expected u64 at line 1 column 40") in the API's terms ("gracePeriodSeconds:
/// invalid value: integer `-5`, expected a whole number, 0 or more at line 1
/// column 40"): no framework prefixes, no Rust type names.
pub fn plain_serde_message(text: &str) -> String {
    const PREFIXES: &[&str] = &[
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
    ];
    let text = PREFIXES.iter().find_map(|p| text.strip_prefix(p)).unwrap_or(text).to_string();
    if text.starts_with("missing field `template`") {
        return "missing field `template` (or its alias `image`): the template to run".into();
    }
    if text.contains("duplicate field `template`") {
        return "the template is given twice (as `template`, or as its alias `image`): give it once".into();
    }
    if text.contains("duplicate field `phase`") {
        return "give phase once, with several phases separated by commas: phase=terminated,failed".into();
    }
    if text.contains("duplicate field `labels`") {
        return "give labels once, with several labels separated by commas: labels=team=docs,tier=free".into();
    }
    if let Some(field) = text.strip_prefix("duplicate field `").and_then(|t| t.split('`').next()) {
        return format!("{field} is given twice: give it once");
    }
    let mut text = crate::text::plain_types(&text);
    for (from, to) in [("expected a string", "expected a JSON string"), ("expected a map", "expected a JSON object")] {
        text = text.replace(from, to);
    }
    // A whole number beyond u64 reaches serde as a float, and was reported
    // as one ("invalid type: floating point `1.8446744073709552e+19`").
    const FLOAT: &str = "invalid type: floating point `";
    if let Some(at) = text.find(FLOAT)
        && let Some(len) = text[at + FLOAT.len()..].find('`')
        && text[at + FLOAT.len()..][..len].contains("e+")
    {
        let number = text[at + FLOAT.len()..][..len].to_string();
        text.replace_range(at..at + FLOAT.len() + len + 1, &format!("the number {number} is out of range"));
    }
    // Every body of this API is a JSON object. A message without a field
    // path is about the body itself ("invalid type: sequence, expected
    // struct CreateRequest"), and serde reads a top-level array as the
    // struct's fields in order ("[0]: invalid type ..."). With a path
    // ("resources: invalid type: null, expected struct Resources") it is
    // about that field.
    let top_level_array = text.starts_with('[');
    let body_not_an_object = (text.starts_with("invalid type") || text.starts_with("invalid length")) && text.contains("expected struct ");
    if top_level_array || body_not_an_object {
        return "the body must be a JSON object ({...}), not an array or a value".into();
    }
    crate::text::name_structs_as(&text, "a JSON object")
}

/// A path segment naming a backend. A segment axum cannot read (not UTF-8
/// once decoded: `/api/v1/backends/%FF`) gets the API's JSON error, as
/// every other bad input does, rather than axum's plain text.
pub(crate) struct Name(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(name)) => Ok(Name(name)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_serde_message as plain;

    #[test]
    fn serde_messages_lose_rust_type_names_and_framework_prefixes() {
        assert_eq!(
            plain(
                "Failed to deserialize the JSON body into the target type: gracePeriodSeconds: invalid value: integer `-5`, expected u64 at line 1 column 40"
            ),
            "gracePeriodSeconds: invalid value: integer `-5`, expected a whole number, 0 or more at line 1 column 40"
        );
        assert!(plain("Failed to deserialize the JSON body into the target type: invalid type: sequence, expected struct CreateRequest with 11 elements at line 1 column 1").starts_with("the body must be a JSON object"));
        assert!(plain("Failed to deserialize the JSON body into the target type: [0]: invalid type: integer `1`, expected a string at line 1 column 2").starts_with("the body must be a JSON object"));
        assert_eq!(
            plain("Failed to deserialize query string: timeout: invalid digit found in string"),
            "timeout: expected a whole number, 0 or more"
        );
        assert!(
            plain("Failed to deserialize the JSON body into the target type: duplicate field `template` at line 1 column 30")
                .contains("the template is given twice (as `template`, or as its alias `image`)")
        );
        assert_eq!(
            plain("lifetimeLimitSeconds: invalid value: integer `18446744073709551615`, expected i64 at line 1 column 60"),
            "lifetimeLimitSeconds: invalid value: integer `18446744073709551615`, expected a whole number up to 9223372036854775807 at line 1 column 60"
        );
        assert_eq!(plain("unknown field `x`, expected one of `a`, `b`"), "unknown field `x`, expected one of `a`, `b`");
        assert_eq!(
            plain("lifetimeLimitSeconds: invalid type: floating point `1.8446744073709552e+19`, expected i64 at line 1 column 45"),
            "lifetimeLimitSeconds: the number 1.8446744073709552e+19 is out of range, expected a whole number at line 1 column 45"
        );
        assert_eq!(
            plain("gracePeriodSeconds: invalid type: floating point `1.5`, expected i64 at line 1 column 25"),
            "gracePeriodSeconds: invalid type: floating point `1.5`, expected a whole number at line 1 column 25",
            "a fraction stays a fraction"
        );
        assert_eq!(
            plain("gracePeriodSeconds: invalid type: floating point `1e-7`, expected i64 at line 1 column 25"),
            "gracePeriodSeconds: invalid type: floating point `1e-7`, expected a whole number at line 1 column 25",
            "a small one too"
        );
        // A nested object is named, not blamed on the body.
        assert_eq!(
            plain(
                "Failed to deserialize the JSON body into the target type: resources: invalid type: null, expected struct Resources at line 1 column 37"
            ),
            "resources: invalid type: null, expected a JSON object at line 1 column 37"
        );
    }
}
