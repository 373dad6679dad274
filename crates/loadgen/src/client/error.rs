//! Failures classified: why a response's body broke off, why no response came (and whether the
//! connection was a stale one, worth the one retry), and the excerpts and messages records keep.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use stats::RequestError;

use super::guarded::{BodyError, GuardedBody};

/// Longest HTTP error body excerpt kept in a record, in bytes.
pub(crate) const BODY_EXCERPT: usize = 512;
/// Longest excerpt of a bad event kept in an error message, in bytes.
pub(crate) const EVENT_EXCERPT: usize = 200;

pub(crate) fn classify<E: StdError>(e: BodyError<E>) -> RequestError {
    match e {
        BodyError::Stall(stall) => {
            RequestError::Timeout { message: format!("no data for the stall timeout of {}", secs(stall)) }
        }
        BodyError::Http(e) => RequestError::StreamCut { message: chain(&e) },
        e @ (BodyError::EventTooLarge(_) | BodyError::BodyTooLarge(_)) => {
            RequestError::MalformedEvent { message: e.to_string() }
        }
        BodyError::Utf8 => {
            RequestError::MalformedEvent { message: "invalid UTF-8 in the event stream".into() }
        }
    }
}

/// The first [`BODY_EXCERPT`] bytes of an error body (as text), whatever else happens.
pub(crate) async fn read_excerpt<S, E>(body: &mut GuardedBody<S>) -> String
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut buf = Vec::new();
    while buf.len() < BODY_EXCERPT {
        match body.next().await {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            Some(Err(_)) | None => break,
        }
    }
    excerpt(&String::from_utf8_lossy(&buf), BODY_EXCERPT).to_string()
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn excerpt(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why no response headers arrived.
#[derive(Debug)]
pub(crate) enum SendError {
    HeadersTimeout,
    Http(reqwest::Error),
}

impl SendError {
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, SendError::HeadersTimeout)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::HeadersTimeout => f.write_str("no response headers within the stall timeout"),
            SendError::Http(e) => e.fmt(f),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::HeadersTimeout => None,
            SendError::Http(e) => e.source(),
        }
    }
}

/// The connection was closed or reset before any part of the response arrived (hyper's
/// "incomplete message", or ECONNRESET / EPIPE while sending): the request met a connection the
/// server had already given up. A refused connection is not stale: it is not retried.
pub(crate) fn is_stale_connection(e: &SendError) -> bool {
    use std::io::ErrorKind;
    let mut source = e.source();
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message()) {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// An error and its sources, `: `-separated (reqwest hides the cause in the sources).
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_at_char_boundaries() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("abcdef", 3), "abc");
        assert_eq!(excerpt("aé", 2), "a");
        assert_eq!(excerpt("", 0), "");
    }
}
