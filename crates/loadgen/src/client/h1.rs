//! A small HTTP/1.1 client for plain `http://` engines: the request's own future writes the
//! request on a kept-alive connection of its worker, parses the response head (`httparse`) and
//! decodes the body (chunked, `Content-Length` or until close) straight from the socket's read
//! buffer. No connection task, no body channel, no wake-up of another task per token: the
//! request's future is woken by the socket and the event parser gets a slice of the read.
//!
//! Each worker has its own pool of idle connections (its runtime drives them). A connection goes
//! back to the pool when its response was read to the end and neither side asked to close it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::chunked::{ChunkError, Chunked, Decoded};
use super::wire::Wire;

/// Bytes asked of the socket per read, at least.
const READ_SIZE: usize = 16 << 10;
/// The longest response head, in bytes.
const MAX_HEAD: usize = 256 << 10;
/// Headers per response, at most.
const MAX_HEADERS: usize = 128;

/// Where requests go, parsed once per run from the root URL.
#[derive(Debug)]
struct Origin {
    /// `host:port`, to connect to.
    connect: String,
    /// The `Host` header.
    host: String,
    /// The path before `/v1/...` (usually empty).
    prefix: String,
}

impl Origin {
    /// `None` for anything but `http://host[:port][/path]`: user info, a query or a fragment,
    /// characters to escape. Such a root goes through reqwest.
    fn parse(root: &str) -> Option<Origin> {
        let rest = root.strip_prefix("http://")?;
        let (authority, prefix) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && !b"@?#\\\"<>{}|^`".contains(&b));
        if authority.is_empty() || !plain(authority) || !plain(prefix) {
            return None;
        }
        let port = match authority.rfind(']') {
            Some(i) => authority[i + 1..].strip_prefix(':'),
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        let connect = match port {
            Some(p) => {
                p.parse::<u16>().ok()?;
                authority.to_owned()
            }
            None if authority.starts_with('[') && !authority.ends_with(']') => return None,
            None => format!("{authority}:80"),
        };
        Some(Origin { connect, host: authority.to_owned(), prefix: prefix.to_owned() })
    }
}

/// One connection and what was read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads what the socket has into `buf`; `Ok(0)` at its end. Through tokio's `AsyncRead`,
    /// which takes a read shorter than the buffer as the socket drained: no second `recv` that
    /// only says "would block" per wake-up.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn read(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }
}

type Idle = Arc<Mutex<Vec<Conn>>>;

/// The HTTP/1.1 client of one worker: the origin and the worker's idle connections.
#[derive(Clone)]
pub(crate) struct H1 {
    origin: Arc<Origin>,
    idle: Idle,
}

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) struct SendError {
    /// The connection ended (closed or reset) before any byte of the response: it was one the
    /// server had already given up, and the request is worth sending once more.
    pub(crate) stale: bool,
    pub(crate) cause: Cause,
}

/// What went wrong before the response head.
#[derive(Debug)]
pub(crate) enum Cause {
    Connect(io::Error),
    Io(io::Error),
    Closed,
    Head(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Connect(e) => write!(f, "tcp connect error: {e}"),
            Cause::Io(e) => e.fmt(f),
            Cause::Closed => f.write_str("connection closed before the response head"),
            Cause::Head(why) => write!(f, "invalid HTTP response head: {why}"),
        }
    }
}

/// A response head and the body that follows it.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Body,
}

/// How the body's end is known.
enum Framing {
    Chunked(Chunked),
    Length(u64),
    /// Until the connection closes.
    Close,
}

impl H1 {
    /// The client for `root` (as [`crate::LoadgenConfig::root_url`] gives it), or `None` when
    /// the root is not a plain `http://host[:port][/path]`.
    pub(crate) fn new(root: &str) -> Option<H1> {
        Some(H1 { origin: Arc::new(Origin::parse(root)?), idle: Idle::default() })
    }

    /// The same origin with a pool of its own (for another worker).
    pub(crate) fn fresh_pool(&self) -> H1 {
        H1 { origin: Arc::clone(&self.origin), idle: Idle::default() }
    }

    /// The request's bytes: head and body.
    pub(crate) fn render(
        &self,
        method: &str,
        path: &str,
        auth: Option<&[u8]>,
        body: Option<&[u8]>,
    ) -> Vec<u8> {
        let o = &*self.origin;
        let mut out = Vec::with_capacity(160 + body.map_or(0, <[u8]>::len));
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(o.prefix.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if body.is_some() {
            out.extend_from_slice(b"content-type: application/json\r\n");
        }
        if let Some(auth) = auth {
            out.extend_from_slice(b"authorization: ");
            out.extend_from_slice(auth);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"accept: */*\r\nhost: ");
        out.extend_from_slice(o.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Sends `request` (an idle connection of the pool, or a new one when `fresh` or none is
    /// idle) and reads the response head. `wire` is stamped when the request is written.
    pub(crate) async fn send(&self, request: &[u8], fresh: bool, wire: &Wire) -> Result<Response, SendError> {
        let idle = if fresh { None } else { self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() };
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let io = TcpStream::connect(self.origin.connect.as_str())
                    .await
                    .map_err(|e| SendError { stale: false, cause: Cause::Connect(e) })?;
                let _ = io.set_nodelay(true);
                Conn { io, buf: BytesMut::with_capacity(READ_SIZE) }
            }
        };
        let _ = wire.set(Instant::now());
        if let Err(e) = conn.io.write_all(request).await {
            return Err(SendError { stale: is_reset(&e), cause: Cause::Io(e) });
        }
        let mut answered = false;
        loop {
            if !conn.buf.is_empty() {
                answered = true;
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut head = httparse::Response::new(&mut headers);
                let bad = |why: String| SendError { stale: false, cause: Cause::Head(why) };
                match head.parse(&conn.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let parsed = Head::of(&head).map_err(|why| bad(why.into()))?;
                        conn.buf.advance(len);
                        // Informational answers (100 Continue, 103 Early Hints) come before
                        // the response.
                        if (100..200).contains(&parsed.status) && parsed.status != 101 {
                            continue;
                        }
                        return Ok(parsed.into_response(conn, &self.idle));
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() > MAX_HEAD => {
                        return Err(bad(format!("longer than {MAX_HEAD} bytes")));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(bad(e.to_string())),
                }
            }
            match conn.read().await {
                Ok(0) => return Err(SendError { stale: !answered, cause: Cause::Closed }),
                Ok(_) => {}
                Err(e) => return Err(SendError { stale: !answered && is_reset(&e), cause: Cause::Io(e) }),
            }
        }
    }
}

/// The connection was reset or aborted by the other side.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// What the response head says.
struct Head {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    fn of(head: &httparse::Response<'_, '_>) -> Result<Head, &'static str> {
        let status = head.code.ok_or("no status")?;
        let mut content_type = None;
        let mut retry_after = None;
        let mut chunked = None;
        let mut length: Option<u64> = None;
        let mut close = head.version == Some(0);
        let text = |v: &[u8]| std::str::from_utf8(v).ok().map(str::to_owned);
        for h in head.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-type") {
                content_type = text(h.value);
            } else if name.eq_ignore_ascii_case("retry-after") {
                retry_after = text(h.value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked when it is the last coding; any other ends at the close.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && head.version == Some(0) {
                        close = false;
                    }
                }
            }
        }
        let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked(Chunked::default()),
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let keep_alive = !close && !matches!(framing, Framing::Close);
        Ok(Head { status, content_type, retry_after, framing, keep_alive })
    }

    fn into_response(self, conn: Conn, idle: &Idle) -> Response {
        Response {
            status: self.status,
            content_type: self.content_type,
            retry_after: self.retry_after,
            body: Body {
                conn: Some(conn),
                framing: self.framing,
                keep_alive: self.keep_alive,
                idle: Arc::clone(idle),
            },
        }
    }
}

/// A response body, read from its connection as it is polled. Read to its end, the connection
/// goes back to the pool (when both sides keep it); dropped before, it is closed.
pub(crate) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    idle: Idle,
}

/// Why a body broke off.
#[derive(Debug)]
pub(crate) enum BodyError {
    Io(io::Error),
    Closed,
    Chunk(ChunkError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("error decoding response body")
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Io(e) => Some(e),
            BodyError::Closed => Some(&ClosedEarly),
            BodyError::Chunk(e) => Some(e),
        }
    }
}

#[derive(Debug)]
struct ClosedEarly;

impl std::fmt::Display for ClosedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection closed before the body was complete")
    }
}

impl std::error::Error for ClosedEarly {}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        loop {
            let step = match &mut this.framing {
                Framing::Chunked(d) => d.decode(&mut conn.buf).map_err(BodyError::Chunk),
                Framing::Length(0) => Ok(Decoded::End),
                Framing::Length(left) => Ok(if conn.buf.is_empty() {
                    Decoded::NeedMore
                } else {
                    let n = (*left).min(conn.buf.len() as u64) as usize;
                    *left -= n as u64;
                    Decoded::Data(conn.buf.split_to(n).freeze())
                }),
                Framing::Close => Ok(if conn.buf.is_empty() {
                    Decoded::NeedMore
                } else {
                    Decoded::Data(conn.buf.split().freeze())
                }),
            };
            match step {
                Ok(Decoded::Data(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Ok(Decoded::End) => {
                    if let Some(conn) = this.conn.take().filter(|c| this.keep_alive && c.buf.is_empty()) {
                        this.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
                    }
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_read(cx)) {
                Ok(0) => {
                    let ended = matches!(this.framing, Framing::Close);
                    this.conn = None;
                    return Poll::Ready(if ended { None } else { Some(Err(BodyError::Closed)) });
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = |root: &str| Origin::parse(root).map(|o| (o.connect, o.host, o.prefix));
        let s = |a: &str, b: &str, c: &str| Some((a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(o("http://127.0.0.1:8000"), s("127.0.0.1:8000", "127.0.0.1:8000", ""));
        assert_eq!(o("http://localhost"), s("localhost:80", "localhost", ""));
        assert_eq!(o("http://[::1]:9"), s("[::1]:9", "[::1]:9", ""));
        assert_eq!(o("http://[::1]"), s("[::1]:80", "[::1]", ""));
        assert_eq!(o("http://h:1/api/x"), s("h:1", "h:1", "/api/x"));
        // Anything unusual goes through reqwest.
        assert_eq!(o("http://user:pw@h:1"), None);
        assert_eq!(o("http://h:1/a?b"), None);
        assert_eq!(o("http://h:port"), None);
        assert_eq!(o("http://h:"), None);
        assert_eq!(o("https://h:1"), None);
        assert_eq!(o("http://"), None);
    }
}
