//! Bodies that count their bytes into a backend's activity as they stream
//! (nothing is buffered), and hold its in-flight guard until they end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::activity::{Activity, RequestGuard};

/// Which way the bytes go.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client to backend.
    In,
    /// Backend to client.
    Out,
}

/// A body wrapper that meters data frames.
pub struct Metered<B> {
    inner: B,
    activity: Arc<Activity>,
    direction: Direction,
    _in_flight: Option<RequestGuard>,
}

impl<B> Metered<B> {
    /// Wraps `inner`; `in_flight` is released when the body ends or drops.
    pub fn new(inner: B, activity: Arc<Activity>, direction: Direction, in_flight: Option<RequestGuard>) -> Self {
        Metered { inner, activity, direction, _in_flight: in_flight }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            match this.direction {
                Direction::In => this.activity.add_in(n),
                Direction::Out => this.activity.add_out(n),
            }
        }
        if let Poll::Ready(None) = &polled {
            this._in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
