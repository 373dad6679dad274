//! `Transfer-Encoding: chunked` decoded in place: the chunk framing is consumed from the
//! connection's read buffer byte by byte, the data is split off it without copying. The decoder
//! is a state machine over whatever the reads brought, so a body decodes the same however it was
//! split into reads.

use bytes::{Buf, Bytes, BytesMut};

/// The longest chunk size line (size, extensions) and the longest trailer section, in bytes.
const MAX_LINE: usize = 16 << 10;

/// Where in the chunked framing the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chunk size's hex digits.
    Size,
    /// Blanks after the size.
    SizeBlank,
    /// A chunk extension (`;name=value`), ignored.
    Extension,
    /// The `\n` of the size line's `\r\n`.
    SizeLf,
    /// Chunk data, `size` bytes left.
    Data,
    /// The `\r\n` after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final `\r\n`.
    TrailerStart,
    /// Inside a trailer line, ignored.
    Trailer,
    /// The final `\n`.
    EndLf,
    End,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    digits: u32,
    /// Bytes of the current size line or of the trailers.
    line: usize,
}

/// What the buffer gave.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Chunk data (never empty).
    Data(Bytes),
    /// Everything in the buffer was consumed; more must be read.
    NeedMore,
    /// The body ended (last chunk and trailers read); what follows in the buffer is not body.
    End,
}

/// A chunked body that breaks the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    SizeLine,
    SizeOverflow,
    LineTooLong,
    DataEnd,
    TrailersTooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::SizeLine => "invalid chunk size line",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::LineTooLong => "chunk size line too long",
            ChunkError::DataEnd => "no CRLF after a chunk's data",
            ChunkError::TrailersTooLong => "chunked trailers too long",
        })
    }
}

impl std::error::Error for ChunkError {}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked { state: State::Size, size: 0, digits: 0, line: 0 }
    }
}

impl Chunked {
    /// Consumes framing from `buf` up to the next data, the body's end, or the buffer's end.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        loop {
            match self.state {
                State::Data => {
                    buf.advance(i);
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = self.size.min(buf.len() as u64) as usize;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::End => {
                    buf.advance(i);
                    return Ok(Decoded::End);
                }
                _ => {}
            }
            let Some(&b) = buf.get(i) else {
                buf.advance(i);
                return Ok(Decoded::NeedMore);
            };
            i += 1;
            self.state = self.step(b)?;
        }
    }

    /// The state after framing byte `b`.
    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        if matches!(self.state, Size | SizeBlank | Extension) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkError::LineTooLong);
            }
        }
        if matches!(self.state, TrailerStart | Trailer) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkError::TrailersTooLong);
            }
        }
        Ok(match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(ChunkError::SizeOverflow);
                }
                let v = (b as char).to_digit(16).unwrap_or(0);
                self.size = (self.size << 4) | u64::from(v);
                self.digits += 1;
                Size
            }
            (Size, b' ' | b'\t') if self.digits > 0 => SizeBlank,
            (Size, b';') | (SizeBlank, b';') if self.digits > 0 => Extension,
            (Size, b'\r') if self.digits > 0 => SizeLf,
            (SizeBlank, b' ' | b'\t') => SizeBlank,
            (SizeBlank, b'\r') | (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err(ChunkError::SizeLine),
            (Extension, _) => Extension,
            (SizeLf, b'\n') => {
                self.digits = 0;
                self.line = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (Size | SizeBlank | SizeLf, _) => return Err(ChunkError::SizeLine),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err(ChunkError::DataEnd),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | Trailer, b'\n') => TrailerStart,
            (TrailerStart | Trailer, _) => Trailer,
            (EndLf, b'\n') => End,
            (EndLf, _) => return Err(ChunkError::DataEnd),
            (Data | End, _) => self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data and the outcome (`Ok(true)`: ended, `Ok(false)`: wants more) of `parts` fed in
    /// order, each appended to what is left in the buffer.
    fn run(parts: &[&[u8]]) -> (Vec<u8>, Result<bool, ChunkError>) {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                match d.decode(&mut buf) {
                    Ok(Decoded::Data(b)) => {
                        assert!(!b.is_empty());
                        data.extend_from_slice(&b);
                    }
                    Ok(Decoded::NeedMore) => {
                        assert!(buf.is_empty(), "NeedMore leaves nothing unread");
                        break;
                    }
                    Ok(Decoded::End) => return (data, Ok(true)),
                    Err(e) => return (data, Err(e)),
                }
            }
        }
        (data, Ok(false))
    }

    /// `input` decodes to `expect` (data and outcome) whole, split in two at every byte, and
    /// one byte at a time.
    fn check(input: &str, expect: (&str, Result<bool, ChunkError>)) {
        let input = input.as_bytes();
        let expect = (expect.0.as_bytes().to_vec(), expect.1);
        assert_eq!(run(&[input]), expect, "whole: {:?}", String::from_utf8_lossy(input));
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            assert_eq!(run(&[a, b]), expect, "split at {k}: {:?}", String::from_utf8_lossy(input));
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), expect, "byte by byte: {:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn chunked_bodies() {
        use ChunkError::*;
        check("0\r\n\r\n", ("", Ok(true)));
        check("5\r\nhello\r\n0\r\n\r\n", ("hello", Ok(true)));
        check("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", ("hello world", Ok(true)));
        check("A\r\n0123456789\r\n0\r\n\r\n", ("0123456789", Ok(true)));
        check("a\r\n0123456789\r\n0\r\n\r\n", ("0123456789", Ok(true)));
        check("005\r\nhello\r\n000\r\n\r\n", ("hello", Ok(true)));
        // Extensions and blanks after the size are ignored.
        check("5;name=value\r\nhello\r\n0;x\r\n\r\n", ("hello", Ok(true)));
        check("5 \t\r\nhello\r\n0 ;x\r\n\r\n", ("hello", Ok(true)));
        // Trailers are read and ignored.
        check("5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", ("hello", Ok(true)));
        // Cut short: the data so far, and more wanted.
        check("", ("", Ok(false)));
        check("5\r\nhel", ("hel", Ok(false)));
        check("5\r\nhello\r\n", ("hello", Ok(false)));
        check("5\r\nhello\r\n0\r\n", ("hello", Ok(false)));
        check("5\r\nhello\r\n0\r\nX: 1\r\n", ("hello", Ok(false)));
        // Bad size lines.
        check("zz\r\nhello\r\n", ("", Err(SizeLine)));
        check("\r\n", ("", Err(SizeLine)));
        check(";x\r\n", ("", Err(SizeLine)));
        check(" 5\r\nhello\r\n", ("", Err(SizeLine)));
        check("5\nhello\r\n", ("", Err(SizeLine)));
        check("5 x\r\nhello\r\n", ("", Err(SizeLine)));
        check("5;x\nhello\r\n", ("", Err(SizeLine)));
        check("-5\r\nhello\r\n", ("", Err(SizeLine)));
        check("5\r\nhello\r\nzz\r\n", ("hello", Err(SizeLine)));
        check("10000000000000000\r\n", ("", Err(SizeOverflow)));
        check("fffffffffffffffff\r\n", ("", Err(SizeOverflow)));
        // Data longer than its size.
        check("3\r\nhello\r\n0\r\n\r\n", ("hel", Err(DataEnd)));
        check("5\r\nhello\n0\r\n\r\n", ("hello", Err(DataEnd)));
        check("0\r\n\rx", ("", Err(DataEnd)));
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_LINE));
        assert_eq!(run(&[long.as_bytes()]), (Vec::new(), Err(LineTooLong)));
        let long = format!("0\r\nX: {}\r\n\r\n", "x".repeat(MAX_LINE));
        assert_eq!(run(&[long.as_bytes()]), (Vec::new(), Err(TrailersTooLong)));
    }

    /// What follows the body's end stays in the buffer.
    #[test]
    fn stops_at_the_end() {
        let mut buf = BytesMut::from(&b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1"[..]);
        let mut d = Chunked::default();
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(b)) if &b[..] == b"hi"));
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::End)));
        assert_eq!(&buf[..], b"HTTP/1.1");
    }
}
