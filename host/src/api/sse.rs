//! Server-sent status streams with `Last-Event-ID` replay.

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use crate::backends::{StatusEvent, StatusFeed};
use crate::lifecycle::Status;

/// The `Last-Event-ID` header, if the client is resuming.
pub(super) fn last_event_id(headers: &HeaderMap) -> u64 {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Replays history after `after`, then follows live changes; ends after a
/// terminal status has been sent. A client resuming after the terminal
/// status (an `EventSource` reconnects whenever a stream closes) gets 204,
/// which tells it to stop, rather than a stream that never sends anything.
pub(super) fn stream(feed: StatusFeed, after: u64, render: impl Fn(&Status) -> String + Send + 'static) -> Response {
    let ended = feed.live.borrow().status.phase.is_terminal();
    if ended && feed.history.iter().all(|e| e.seq <= after) {
        return StatusCode::NO_CONTENT.into_response();
    }
    events(feed, after, render).into_response()
}

fn events(
    feed: StatusFeed,
    after: u64,
    render: impl Fn(&Status) -> String + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let backlog: std::collections::VecDeque<StatusEvent> = feed.history.into_iter().filter(|e| e.seq > after).collect();
    let state = (backlog, feed.live, after, false, render);
    let events = futures_util::stream::unfold(state, |(mut backlog, mut live, mut last, done, render)| async move {
        if done {
            return None;
        }
        let next = match backlog.pop_front() {
            Some(e) => e,
            None => loop {
                {
                    let current = live.borrow_and_update().clone();
                    if current.seq > last {
                        break current;
                    }
                }
                if live.changed().await.is_err() {
                    return None;
                }
            },
        };
        last = next.seq;
        let done = next.status.phase.is_terminal();
        let event = Event::default().id(next.seq.to_string()).event("status").data(render(&next.status));
        Some((Ok(event), (backlog, live, last, done, render)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
