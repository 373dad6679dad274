//! When a request went on the wire: the moment its connection took the body to write it.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

/// When a request's body was taken by its connection to be written.
pub(crate) type Wire = Arc<OnceLock<Instant>>;

/// A request body that notes when the connection first asks for it: hyper writes the head and
/// the body in the same turn, right after, so this is when the request goes on the wire. The
/// client's own work before that (building the request, queueing it for its connection) is not
/// counted as the server's latency.
pub(crate) struct StampedBody {
    data: Option<Bytes>,
    len: u64,
    wire: Wire,
}

impl StampedBody {
    pub(crate) fn body(data: Bytes) -> (reqwest::Body, Wire) {
        let wire = Wire::default();
        let body = StampedBody { len: data.len() as u64, data: Some(data), wire: Arc::clone(&wire) };
        (reqwest::Body::wrap(body), wire)
    }
}

impl http_body::Body for StampedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let _ = self.wire.set(Instant::now());
        Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}
