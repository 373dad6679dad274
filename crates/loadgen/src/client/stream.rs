//! The event stream of a response followed to its end: each event's data parsed as an OpenAI
//! chunk and recorded, `[DONE]` noted, what comes after it drained.

use std::error::Error as StdError;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use stats::RequestError;
use tokio::time::Instant;

use super::error::{classify, excerpt, EVENT_EXCERPT};
use super::guarded::GuardedBody;
use super::record::Partial;
use crate::chunk::Chunk;
use crate::sse::{Events, NotUtf8};

/// Events after `[DONE]` read at most, in bytes, so that the connection can go back to the pool.
const DRAIN_AFTER_DONE: usize = 64 << 10;

/// Follows an event stream to its end, recording into `st`.
pub(crate) async fn follow<S, E>(mut body: GuardedBody<S>, st: &mut Partial) -> Result<(), RequestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: StdError,
{
    let mut events = Events::default();
    let mut drained = 0usize;
    while let Some(piece) = body.next().await {
        let now = body.last_byte();
        let piece = match piece {
            Ok(piece) => piece,
            // Whatever fails after `[DONE]` does not change the result.
            Err(_) if st.done => break,
            Err(e) => return Err(classify(e)),
        };
        let mut failed = None;
        let go_on = events
            .feed(&piece, |data| {
                if st.done {
                    // Drained after `[DONE]` so the connection goes back to the pool; what comes
                    // now does not change the result, and is not read for long.
                    drained += data.len() + 1;
                    return drained < DRAIN_AFTER_DONE;
                }
                match on_event(st, data, now) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(|NotUtf8| RequestError::MalformedEvent {
                message: "invalid UTF-8 in the event stream".into(),
            });
        if let Some(e) = failed {
            return Err(e);
        }
        match go_on {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) if st.done => break,
            Err(e) => return Err(e),
        }
    }
    if !st.done && !st.finish_reason {
        return Err(RequestError::StreamCut {
            message: "the stream ended before [DONE] and before any finish_reason".into(),
        });
    }
    Ok(())
}

/// One event's data, before `[DONE]`.
fn on_event(st: &mut Partial, data: &str, now: Instant) -> Result<(), RequestError> {
    if data == "[DONE]" {
        st.done = true;
        st.end = Some(now);
        return Ok(());
    }
    let chunk = Chunk::parse(data).map_err(|e| RequestError::MalformedEvent {
        message: format!("{e} in event {:?}", excerpt(data, EVENT_EXCERPT)),
    })?;
    if chunk.error.is_some() {
        return Err(RequestError::StreamCut {
            message: format!("server sent an error event: {}", excerpt(data, EVENT_EXCERPT)),
        });
    }
    st.on_chunk(&chunk, now);
    Ok(())
}
