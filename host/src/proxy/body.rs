//! Bodies that count their bytes into a backend's activity as they stream
//! (nothing is buffered), and hold something until they end: a response,
//! its request's places among those in flight; a request, the sender whose
//! drop tells the proxy the upload is over.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::activity::Activity;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client to backend.
    In,
    /// Backend to client.
    Out,
}

/// What a [`Metered`] body holds until it ends, told of each frame.
pub trait Held: Unpin {
    /// A frame went through.
    fn frame(&self) {}
    /// The body was asked for a frame it does not have yet: its sender
    /// (not its reader) is the one to wait for.
    fn pending(&self) {}
}

impl Held for () {}

/// A body wrapper that meters data frames.
pub struct Metered<B, H> {
    inner: B,
    activity: Arc<Activity>,
    direction: Direction,
    held: Option<H>,
}

impl<B: Body, H> Metered<B, H> {
    /// Wraps `inner`; `held` is dropped when the body ends (or drops).
    pub fn new(inner: B, activity: Arc<Activity>, direction: Direction, held: Option<H>) -> Self {
        // Nothing to send, nothing to wait for.
        let held = held.filter(|_| !inner.is_end_stream());
        Metered { inner, activity, direction, held }
    }
}

impl<B, H> Body for Metered<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    H: Held,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match (&polled, &this.held) {
            (Poll::Ready(Some(Ok(_))), Some(held)) => held.frame(),
            (Poll::Pending, Some(held)) => held.pending(),
            _ => {}
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            match this.direction {
                Direction::In => this.activity.add_in(n),
                Direction::Out => this.activity.add_out(n),
            }
        }
        // The end: no more frames, an error, or the last data frame (a
        // sender that knows the length stops polling after it).
        if matches!(&polled, Poll::Ready(None | Some(Err(_)))) || (polled.is_ready() && this.inner.is_end_stream()) {
            this.held.take();
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
