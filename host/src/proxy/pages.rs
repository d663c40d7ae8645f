//! The proxy's own responses: not found, gone, starting, denied, errors.
//! Browsers (Accept: text/html) get a small page; other clients plain text.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

fn wants_html(accept: Option<&HeaderValue>) -> bool {
    accept.and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A plain response with `status` and `message`.
pub fn error(status: StatusCode, message: &str, accept: Option<&HeaderValue>) -> Response<Body> {
    let (ctype, body) = if wants_html(accept) {
        let title = status.canonical_reason().unwrap_or("Error");
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{}</p></body></html>",
                escape(message)
            ),
        )
    } else {
        ("text/plain; charset=utf-8", format!("{message}\n"))
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .expect("static response")
}

/// 503 while a backend starts: `Retry-After: 1`, and for browsers a page
/// that reloads itself every second until the backend answers.
pub fn starting(name: &str, phase: &str, accept: Option<&HeaderValue>) -> Response<Body> {
    let mut r = if wants_html(accept) {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"1\"><title>Starting…</title>\
             <style>body{{font-family:system-ui,sans-serif;display:grid;place-items:center;height:90vh;color:#444}}</style></head>\
             <body><p>Starting <code>{}</code> ({})… this page reloads by itself.</p></body></html>",
            escape(name),
            escape(phase)
        );
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(body))
    } else {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(format!("backend {name} is {phase}; retry shortly\n")))
    }
    .expect("static response");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
