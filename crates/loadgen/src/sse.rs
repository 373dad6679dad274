//! Server-sent events from the pieces [`crate::client::GuardedBody`] cuts, without copying.
//!
//! The same events as eventsource-stream's `EventStream` (which the client used before, and
//! which the tests hold this against): the WHATWG rules for lines (`field: value`, comments,
//! a blank line ends an event, an event with no `data` is not dispatched, the data's last line
//! end removed, a byte order mark at the very start ignored), with line ends already normalized
//! to `\n` by the body. Only `data` is kept: the load generator reads nothing else.
//!
//! Why not eventsource-stream itself: per event it copies the read into a `String`, splits its
//! buffer (a new allocation per line) and allocates the event's type, id and data. Measured on
//! the user's path (`benches/loadbench.rs`), those allocations were the largest part of the
//! client's per-token cost after the runtime's. Here an event that is one `data:` line followed
//! by a blank line within one piece (every engine's usual chunk) is handed on as a slice of the
//! piece; others are gathered in buffers kept across events.

/// The state carried from piece to piece.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// A line cut by the end of a piece.
    line: Vec<u8>,
    /// The data lines of the event so far, each followed by `\n`.
    data: String,
    /// The first line has been seen (a byte order mark can only come before it).
    started: bool,
}

/// The bytes of an event stream were not UTF-8.
#[derive(Debug)]
pub(crate) struct NotUtf8;

impl Events {
    /// Feeds one piece; `on_data` gets the data of each event it completes and returns false to
    /// stop reading (the rest of the piece is then ignored).
    pub(crate) fn feed(
        &mut self,
        mut piece: &[u8],
        mut on_data: impl FnMut(&str) -> bool,
    ) -> Result<bool, NotUtf8> {
        while !piece.is_empty() {
            let Some(eol) = memchr::memchr(b'\n', piece) else {
                self.line.extend_from_slice(piece);
                return Ok(true);
            };
            let rest = &piece[eol + 1..];
            let go_on = if self.line.is_empty() {
                // The whole line is in this piece. The usual event, `data: ...` and a blank
                // line right after it with no data before, goes out as a slice of the piece.
                let line = self.strip_bom(&piece[..eol]);
                let line = std::str::from_utf8(line).map_err(|_| NotUtf8)?;
                if self.data.is_empty() && rest.first() == Some(&b'\n') {
                    if let Some(value) = data_value(line) {
                        piece = &rest[1..];
                        if !on_data(value) {
                            return Ok(false);
                        }
                        continue;
                    }
                }
                self.on_line(line, &mut on_data)
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&piece[..eol]);
                let text = std::str::from_utf8(self.strip_bom(&line)).map_err(|_| NotUtf8)?;
                let go_on = self.on_line(text, &mut on_data);
                line.clear();
                self.line = line;
                go_on
            };
            if !go_on {
                return Ok(false);
            }
            piece = rest;
        }
        Ok(true)
    }

    fn strip_bom<'a>(&mut self, line: &'a [u8]) -> &'a [u8] {
        if std::mem::replace(&mut self.started, true) {
            return line;
        }
        line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
    }

    /// One complete line (without its `\n`).
    fn on_line(&mut self, line: &str, on_data: &mut impl FnMut(&str) -> bool) -> bool {
        if line.is_empty() {
            if self.data.is_empty() {
                return true;
            }
            self.data.pop();
            let go_on = on_data(&self.data);
            self.data.clear();
            return go_on;
        }
        if let Some(value) = data_value(line) {
            self.data.push_str(value);
            self.data.push('\n');
        }
        true
    }
}

/// The value of a `data` field line (`data`, `data:value`, `data: value`); `None` for any other
/// line (other fields, comments).
fn data_value(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("data")?;
    if rest.is_empty() {
        return Some("");
    }
    let value = rest.strip_prefix(':')?;
    Some(value.strip_prefix(' ').unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of `pieces`, as eventsource-stream gives them and as [`Events`] does.
    fn both(pieces: &[&str]) -> (Vec<String>, Vec<String>) {
        use futures_util::{FutureExt, StreamExt};
        let theirs: Vec<String> = eventsource_stream::EventStream::new(futures_util::stream::iter(
            pieces.iter().map(|p| Ok::<_, std::convert::Infallible>(p.as_bytes().to_vec())),
        ))
        .map(|e| e.expect("valid").data)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("in memory");
        let mut ours = Vec::new();
        let mut events = Events::default();
        for p in pieces {
            events
                .feed(p.as_bytes(), |d| {
                    ours.push(d.to_string());
                    true
                })
                .expect("utf-8");
        }
        (theirs, ours)
    }

    #[test]
    fn same_events_as_eventsource_stream() {
        let cases: &[&[&str]] = &[
            &["data: a\n\n"],
            &["data: a\n\ndata: b\n\n"],
            &["data: a\n", "\n"],
            &["da", "ta: a\n\n"],
            &["data: a\ndata: b\n\n"],
            &["data:a\n\n", "data\n\n", "data:\n\n", "data:  two spaces\n\n"],
            &[": comment\nevent: x\nid: 7\nretry: 5\ndata: v\n\n"],
            &["event: only\n\n", "data: after\n\n"],
            &["datax: no\n\n", "dat: no\n\n", "data: yes\n\n"],
            &["data: no blank line at the end\n"],
            &["data: cut line"],
            &["\n\n\ndata: é\n\n"],
            &["data: {\"a\":1}\n\n", "data: [DONE]\n\n"],
        ];
        for pieces in cases {
            let (theirs, ours) = both(pieces);
            assert_eq!(ours, theirs, "pieces {pieces:?}");
        }
    }

    /// A byte order mark at the very start is ignored, anywhere else it is data. (eventsource-stream
    /// panics on one: it slices one byte off the three of U+FEFF.)
    #[test]
    fn byte_order_mark() {
        let events = |pieces: &[&str]| {
            let mut out = Vec::new();
            let mut events = Events::default();
            for p in pieces {
                events
                    .feed(p.as_bytes(), |d| {
                        out.push(d.to_string());
                        true
                    })
                    .expect("utf-8");
            }
            out
        };
        assert_eq!(events(&["\u{feff}data: a\n\n", "\u{feff}data: b\n\n"]), ["a"]);
        assert_eq!(events(&["\u{feff}", "data: a\n\n"]), ["a"]);
        assert_eq!(events(&["data: \u{feff}a\n\n"]), ["\u{feff}a"]);
    }

    #[test]
    fn stopping_ignores_the_rest() {
        let mut seen = Vec::new();
        let go_on = Events::default()
            .feed(b"data: 1\n\ndata: 2\n\n", |d| {
                seen.push(d.to_string());
                false
            })
            .expect("utf-8");
        assert!(!go_on);
        assert_eq!(seen, ["1"]);
    }
}
