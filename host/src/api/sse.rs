//! Server-sent status streams with `Last-Event-ID` replay.

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use crate::backends::{StatusEvent, StatusFeed};
use crate::lifecycle::Status;

/// The `Last-Event-ID` request header, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Read by `last_event_id`; this type only describes it.
pub(super) struct LastEventId {
    /// The `id` of the last event received: the stream resumes after it
    /// (an `EventSource` sends it when it reconnects).
    #[param(rename = "Last-Event-ID", required = false)]
    last_event_id: u64,
}

/// The `Last-Event-ID` header, if the client is resuming (0 if not); one
/// that no stream of ours sent is refused rather than read as "from the
/// start".
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<u64, super::ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(0) };
    value.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
        super::ApiError::bad_request(format!(
            "Last-Event-ID must be the id of an event this stream sent (a whole number), got {:?}",
            String::from_utf8_lossy(value.as_bytes())
        ))
    })
}

/// Replays history after `after`, then follows live changes; ends after a
/// terminal status has been sent. A client resuming after the terminal
/// status (an `EventSource` reconnects whenever a stream closes) gets 204,
/// which tells it to stop, rather than a stream that never sends anything.
pub(super) fn stream(
    feed: StatusFeed,
    after: u64,
    name: Option<&'static str>,
    render: impl Fn(&Status) -> String + Send + 'static,
) -> Response {
    let current = feed.live.borrow().seq;
    if feed.complete && after > current {
        // No stream of this backend sent it: resuming "after" it would
        // skip every event up to there, the end included.
        return super::ApiError::bad_request(format!(
            "Last-Event-ID {after} is not an event of this stream (its last event is {current}): resume from an id it sent, or send none to start over"
        ))
        .into_response();
    }
    let ended = feed.live.borrow().status.phase.is_terminal();
    if ended && feed.history.iter().all(|e| e.seq <= after) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut response = events(feed, after, name, render).into_response();
    // nginx buffers proxied responses by default, which would hold each
    // small event back; this asks it not to.
    response.headers_mut().insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}

fn events(
    feed: StatusFeed,
    after: u64,
    name: Option<&'static str>,
    render: impl Fn(&Status) -> String + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let backlog: std::collections::VecDeque<StatusEvent> = feed.history.into_iter().filter(|e| e.seq > after).collect();
    // What was sent last: its id, and its status (unknown when resuming,
    // so the event the client already has is not sent again). A status
    // may change within one id (on Kubernetes, an id per phase, and a note
    // on why a Pod waits added later): that is sent again, same id.
    let state = (backlog, feed.live, (after, None::<Status>), false, render);
    let events = futures_util::stream::unfold(state, move |(mut backlog, mut live, mut last, done, render)| async move {
        if done {
            return None;
        }
        let next = match backlog.pop_front() {
            Some(e) => e,
            None => loop {
                {
                    let current = live.borrow_and_update().clone();
                    let (seq, sent) = &last;
                    if current.seq > *seq || (current.seq == *seq && sent.as_ref().is_some_and(|s| *s != current.status)) {
                        break current;
                    }
                    // Ended at or before what the client says it has (an
                    // id from the future, or a replica's cache behind the
                    // one it resumed from): nothing more will come.
                    if current.status.phase.is_terminal() {
                        return None;
                    }
                }
                if live.changed().await.is_err() {
                    return None;
                }
            },
        };
        let done = next.status.phase.is_terminal();
        let event = Event::default().id(next.seq.to_string()).data(render(&next.status));
        let event = match name {
            Some(name) => event.event(name),
            None => event,
        };
        last = (next.seq, Some(next.status));
        Some((Ok(event), (backlog, live, last, done, render)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use jiff::Timestamp;
    use tokio::sync::watch;

    use super::*;
    use crate::backends::StatusEvent;
    use crate::lifecycle::Phase;

    fn starting(message: Option<&str>) -> StatusEvent {
        let mut status = Status::new(Timestamp::UNIX_EPOCH);
        status.phase = Phase::Starting;
        status.message = message.map(Into::into);
        StatusEvent { seq: 13, status }
    }

    /// The ids and messages of the first `n` events of a stream.
    async fn first(feed: StatusFeed, after: u64, n: usize) -> Vec<(String, String)> {
        let body = events(feed, after, Some("status"), |s: &Status| s.message.clone().unwrap_or_default()).into_response().into_body();
        let mut stream = body.into_data_stream();
        let mut text = String::new();
        while text.matches("\n\n").count() < n {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.expect("no event").unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.split("\n\n")
            .filter(|e| e.contains("id:"))
            .map(|e| {
                let field = |name: &str| e.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string();
                (field("id:"), field("data:"))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_status_that_changes_within_one_id_is_sent_again_but_not_to_a_client_that_has_it() {
        let (tx, live) = watch::channel(starting(None));
        let feed = StatusFeed { history: Vec::new(), live, complete: false };
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            later.send_replace(starting(Some("no node can run its Pod yet")));
        });
        let sent = first(feed, 0, 2).await;
        assert_eq!(sent, [("13".into(), "".into()), ("13".into(), "no node can run its Pod yet".into())]);

        // Resuming after id 13: what it has is not sent again; a change is.
        let (tx, live) = watch::channel(starting(Some("no node can run its Pod yet")));
        let resumed = tokio::spawn(first(StatusFeed { history: Vec::new(), live, complete: false }, 13, 1));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!resumed.is_finished(), "the event the client has was sent again");
        let mut ready = starting(None);
        ready.seq = 14;
        ready.status.phase = Phase::Ready;
        tx.send_replace(ready);
        assert_eq!(resumed.await.unwrap(), [("14".into(), "".into())]);
    }

    #[tokio::test]
    async fn a_stream_resumed_past_its_ids_ends_when_the_backend_does() {
        let (tx, live) = watch::channel(starting(None));
        let body = events(StatusFeed { history: Vec::new(), live, complete: false }, 999, Some("status"), |_: &Status| String::new())
            .into_response()
            .into_body();
        let read = tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            let mut text = String::new();
            while let Some(chunk) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            text
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut ended = starting(None);
        ended.seq = 16;
        ended.status.phase = Phase::Terminated;
        tx.send_replace(ended);
        let text = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.expect("the stream never ended").unwrap();
        assert!(!text.contains("id:"), "nothing the client would take for news: {text}");
        drop(tx);
    }
}
