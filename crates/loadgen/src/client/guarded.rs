//! The response body guarded: a stall timer, size caps, UTF-8 validation and line ends
//! normalized, cut so that the event parser ([`crate::sse`]) gets at most one line (and the blank
//! line after it) per piece.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::config::LoadgenConfig;

/// The size caps of a response body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) max_event_bytes: usize,
    pub(crate) max_body_bytes: u64,
}

impl Caps {
    pub(crate) fn of(cfg: &LoadgenConfig) -> Caps {
        Caps { max_event_bytes: cfg.max_event_bytes, max_body_bytes: cfg.max_body_bytes }
    }
}

/// Why the body stream failed.
#[derive(Debug)]
pub(crate) enum BodyError<E> {
    Http(E),
    /// No byte for the stall timeout.
    Stall(Duration),
    /// More than `max_event_bytes` since the last blank line.
    EventTooLarge(usize),
    /// More than `max_body_bytes` in all.
    BodyTooLarge(u64),
    /// Bytes that are not UTF-8 (an incomplete character at a read's end is not an error).
    Utf8,
}

impl<E: std::fmt::Display> std::fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Http(e) => e.fmt(f),
            BodyError::Stall(_) => f.write_str("stall timeout"),
            BodyError::EventTooLarge(cap) => write!(f, "an SSE event longer than the cap of {cap} bytes"),
            BodyError::BodyTooLarge(cap) => write!(f, "a response body longer than the cap of {cap} bytes"),
            BodyError::Utf8 => f.write_str("invalid UTF-8 in the event stream"),
        }
    }
}

/// The SSE line structure seen so far, carried across reads.
#[derive(Debug, Clone, Copy)]
struct Lines {
    /// The last byte ended a line (or nothing came yet): a line end now is a blank line.
    at_line_start: bool,
    /// The last byte was `\r`: a `\n` now belongs to it.
    after_cr: bool,
}

impl Lines {
    /// The length of the next piece of `buf`: through the end of its first line and of the blank
    /// line right after it (an event's end), or through a blank line, or all of `buf`. Also says
    /// whether the piece ends an event. Each byte is looked at once.
    fn cut(&mut self, buf: &[u8]) -> Cut {
        if self.after_cr && buf.first() == Some(&b'\n') {
            // The `\n` of a `\r\n` cut by the end of a read: a piece of its own (empty once
            // line ends are normalized).
            self.after_cr = false;
            return Cut { len: 1, event_end: false, saw_cr: false };
        }
        let mut i = 0;
        let mut ended_a_line = false;
        let mut saw_cr = false;
        while i < buf.len() {
            let b = buf[i];
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                i += 1;
                continue;
            }
            if b == b'\n' || b == b'\r' {
                let blank = self.at_line_start;
                self.at_line_start = true;
                self.after_cr = b == b'\r';
                saw_cr |= self.after_cr;
                i += 1;
                if blank {
                    if self.after_cr && buf.get(i) == Some(&b'\n') {
                        self.after_cr = false;
                        i += 1;
                    }
                    return Cut { len: i, event_end: true, saw_cr };
                }
                ended_a_line = true;
                continue;
            }
            if ended_a_line {
                return Cut { len: i, event_end: false, saw_cr };
            }
            self.at_line_start = false;
            self.after_cr = false;
            i += memchr::memchr2(b'\n', b'\r', &buf[i..]).unwrap_or(buf.len() - i);
        }
        Cut { len: i, event_end: false, saw_cr }
    }
}

/// Where [`Lines::cut`] cuts.
struct Cut {
    len: usize,
    /// The piece ends with a blank line: an event's end.
    event_end: bool,
    /// The piece holds a `\r`.
    saw_cr: bool,
}

/// `piece` with every line end (`\r\n`, `\r`, `\n`) as `\n`; `cr_before`: the byte before
/// it was a `\r` (so a leading `\n` belongs to it). The event parser waits after a `\r` for
/// the byte that tells whether a `\n` follows; with `\n` only, what is complete is parsed at
/// once, however the body was split into reads.
fn normalize_line_ends(piece: &[u8], cr_before: bool) -> Bytes {
    let mut out = Vec::with_capacity(piece.len());
    let mut prev_cr = cr_before;
    for &b in piece {
        match b {
            b'\r' => out.push(b'\n'),
            b'\n' if prev_cr => {}
            b => out.push(b),
        }
        prev_cr = b == b'\r';
    }
    Bytes::from(out)
}

/// The response body with a stall timer (no byte for `stall` ends it with
/// [`BodyError::Stall`]), size caps, UTF-8 validation and line ends normalized to `\n`, cut so
/// that each item holds at most one line and the blank line after it: the event parser never
/// copies a long buffer per line, and never holds more than `max_event_bytes` (plus one read).
pub(crate) struct GuardedBody<S> {
    inner: S,
    pending: Bytes,
    caps: Caps,
    lines: Lines,
    event_bytes: usize,
    body_bytes: u64,
    /// The bytes of a UTF-8 character cut by the end of a read.
    utf8_carry: ([u8; 4], usize),
    stall: Duration,
    last_byte: Instant,
    /// Armed at a deadline no later than `last_byte + stall`; moved forward only when it fires,
    /// so a fast stream does not touch the timer wheel per read. `None`: no stall timeout (the
    /// body is in memory).
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<S> GuardedBody<S> {
    /// `stall: None` needs no runtime (for a body that is already in memory).
    pub(crate) fn new(inner: S, caps: Caps, stall: Option<Duration>) -> GuardedBody<S> {
        let now = Instant::now();
        GuardedBody {
            inner,
            pending: Bytes::new(),
            caps,
            lines: Lines { at_line_start: true, after_cr: false },
            event_bytes: 0,
            body_bytes: 0,
            utf8_carry: ([0; 4], 0),
            stall: stall.unwrap_or(Duration::MAX),
            last_byte: now,
            timer: stall.map(|stall| Box::pin(tokio::time::sleep_until(now + stall))),
            failed: false,
        }
    }

    /// When the body last gave bytes: the arrival time of every piece cut from them (one clock
    /// read per read of the body, not one more per event).
    pub(crate) fn last_byte(&self) -> Instant {
        self.last_byte
    }

    /// The next piece of `pending`, or the cap it passes.
    fn next_piece<E>(&mut self) -> Result<Bytes, BodyError<E>> {
        let cr_before = self.lines.after_cr;
        let cut = self.lines.cut(&self.pending);
        self.event_bytes = self.event_bytes.saturating_add(cut.len);
        if self.event_bytes > self.caps.max_event_bytes {
            return Err(BodyError::EventTooLarge(self.caps.max_event_bytes));
        }
        if cut.event_end {
            self.event_bytes = 0;
        }
        let piece = self.pending.split_to(cut.len);
        // Checked per piece, not per read: the events before a bad byte count the same however
        // the body was split into reads.
        if !self.check_utf8(&piece) {
            return Err(BodyError::Utf8);
        }
        if cut.saw_cr || (cr_before && piece.first() == Some(&b'\n')) {
            return Ok(normalize_line_ends(&piece, cr_before));
        }
        Ok(piece)
    }

    /// Checks that `bytes`, after what came before, is UTF-8 so far.
    fn check_utf8(&mut self, mut bytes: &[u8]) -> bool {
        let (carry, len) = &mut self.utf8_carry;
        if *len > 0 {
            let width = match carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - *len).min(bytes.len());
            carry[*len..*len + take].copy_from_slice(&bytes[..take]);
            *len += take;
            bytes = &bytes[take..];
            match std::str::from_utf8(&carry[..*len]) {
                Ok(_) => *len = 0,
                Err(e) if e.error_len().is_none() && bytes.is_empty() => return true,
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                carry[..tail.len()].copy_from_slice(tail);
                *len = tail.len();
                true
            }
            Err(_) => false,
        }
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, BodyError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if this.pending.is_empty() {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    this.last_byte = Instant::now();
                    this.body_bytes = this.body_bytes.saturating_add(bytes.len() as u64);
                    if this.body_bytes > this.caps.max_body_bytes {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::BodyTooLarge(this.caps.max_body_bytes))));
                    }
                    this.pending = bytes;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Http(e)))),
                Poll::Ready(None) => {
                    if this.utf8_carry.1 > 0 {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::Utf8)));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let Some(timer) = this.timer.as_mut() else { return Poll::Pending };
                    loop {
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let deadline = this.last_byte + this.stall;
                        if Instant::now() >= deadline {
                            return Poll::Ready(Some(Err(BodyError::Stall(this.stall))));
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        }
        let piece = this.next_piece();
        this.failed = piece.is_err();
        Poll::Ready(Some(piece))
    }
}
