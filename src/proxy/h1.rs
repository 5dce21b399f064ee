//! The HTTP/1.1 wire format towards the upstream (RFC 9112): writes a request head and
//! parses an answer's head, its framing and chunked bodies. Pure byte handling, no I/O,
//! so every case is unit-tested here; `pool` drives the connection. Must not decide
//! anything about a call (whether it is allowed, billable or retried).

use crate::proxy::headers::{PassedHeaders, list_items};
use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use std::mem::MaybeUninit;

/// Bodies up to this size are copied behind their head and written with one `send`,
/// larger ones go with their head in one `writev`: both ways, the upstream request
/// (`pool`) and the answer to the client (`server::http1`). The kernel's `writev` path
/// costs more per call than copying a small body does (docs/PERFORMANCE.md, "One send
/// per upstream request").
pub const COPY_BODY_UP_TO: usize = 16 * 1024;

/// More headers than this in an answer: malformed (hyper's client default is 100).
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// An answer whose head does not end within this many bytes is malformed.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line (with extensions) or a trailer section longer than this: malformed.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed answer head: {0}")]
    Head(&'static str),
    #[error("answer head larger than {MAX_RESPONSE_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// Appends `METHOD target HTTP/1.1` to `out`: the start of a request head.
pub fn write_request_line(out: &mut Vec<u8>, method: &Method, target: &str) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends one header line. The caller passes names and values that are valid
/// (from a `HeaderMap`, or its own constants).
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Ends a request head with the body's length.
pub fn end_request_head(out: &mut Vec<u8>, body_len: usize) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// How the answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (no length, or a transfer coding
    /// other than chunked last).
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: PassedHeaders,
    pub framing: Framing,
    /// The connection may carry another request once this answer has ended.
    pub reusable: bool,
}

/// Parses an answer head at the start of `buffer`. `Ok(None)`: incomplete, read more.
/// On success the head's bytes are consumed from `buffer`. 1xx answers come back like
/// any other; the caller skips them.
pub fn parse_response_head(buffer: &mut BytesMut, request_method: &Method) -> Result<Option<ResponseHead>, WireError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buffer, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buffer.len() >= MAX_RESPONSE_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(WireError::Head("too many headers")),
            Err(_) => return Err(WireError::Head("not an HTTP/1.x answer")),
        };
    let status = StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| WireError::Head("bad status code"))?;
    let http_1_0 = response.version == Some(0);
    let (mut said_close, mut said_keep_alive) = (false, false);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_content_length(h.value).ok_or(WireError::Head("bad content-length"))?;
            if content_length.is_some_and(|seen| seen != parsed) {
                return Err(WireError::Head("conflicting content-length"));
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_items(h.value) {
                said_close |= token.eq_ignore_ascii_case(b"close");
                said_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let headers = PassedHeaders::from_fields(response.headers);
    // `close` anywhere wins; HTTP/1.0 keeps the connection only when asked to.
    let mut reusable = !said_close && (!http_1_0 || said_keep_alive);
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *request_method == Method::HEAD
    {
        Framing::Empty
    } else if let Some(codings) = transfer_encoding {
        // HTTP/1.0 has no transfer codings: the framing is faulty (RFC 9112 §6.1), and
        // its body's end cannot be trusted. An error, as hyper's client makes it.
        if http_1_0 {
            return Err(WireError::Head("transfer coding in an HTTP/1.0 answer"));
        }
        // Both headers: a smuggling vector; the coding wins and the connection ends
        // here.
        if content_length.is_some() {
            reusable = false;
        }
        let last = codings.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            reusable = false;
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    buffer.advance(head_len);
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        reusable,
    }))
}

/// RFC 9110 §8.6: digits only; a list of equal values (`5, 5`) is the same length.
/// Requests (`server::http1`) and answers are read with the same rule.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let parsed = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|seen| seen != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
}

/// Decodes a chunked body (RFC 9112 §7.1) as its bytes arrive. Chunk extensions and
/// trailers are read and dropped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl ChunkedDecoder {
    /// Moves decoded body bytes from `input` to `out`, consuming what it used.
    /// `Ok(true)` once the last chunk and the trailers are in; bytes after that stay in
    /// `input`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, WireError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let Some(line) = take_line(input, MAX_CHUNK_LINE_BYTES)? else {
                        return Ok(false);
                    };
                    // Hex digits only (`from_str_radix` alone would take a sign), then
                    // optional whitespace before any extension.
                    let digits = line[..]
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii_end();
                    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                        return Err(WireError::Chunked("bad chunk size"));
                    }
                    let size = u64::from_str_radix(
                        std::str::from_utf8(digits).map_err(|_| WireError::Chunked("bad chunk size"))?,
                        16,
                    )
                    .map_err(|_| WireError::Chunked("bad chunk size"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let take = (left.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..take]);
                    input.advance(take);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(WireError::Chunked("chunk not followed by CRLF"));
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = take_line(input, MAX_CHUNK_LINE_BYTES)? else {
                        return Ok(false);
                    };
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(WireError::Chunked("trailers too large"));
                    }
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// One CRLF-terminated line off the front of `input`, without its CRLF. Over `max`
/// it is refused whether or not its end has arrived, so that the verdict does not
/// depend on how the bytes were cut.
fn take_line(input: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, WireError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > max => Err(WireError::Chunked("line too long")),
        Some(end) => {
            let line = input.split_to(end);
            input.advance(2);
            Ok(Some(line))
        }
        None if input.len() > max => Err(WireError::Chunked("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_or_a_list_of_one_value() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"42, 42"), Some(42));
        assert_eq!(parse_content_length(b"42, 43"), None);
        assert_eq!(parse_content_length(b"+42"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }

    fn parse(raw: &[u8]) -> Result<Option<ResponseHead>, WireError> {
        parse_response_head(&mut BytesMut::from(raw), &Method::POST)
    }

    #[test]
    fn writes_a_request_head_with_its_length() {
        let mut out = Vec::new();
        write_request_line(&mut out, &Method::POST, "/?a=1");
        write_header(&mut out, b"host", b"faceid.tencentcloudapi.com");
        write_header(&mut out, b"x-tc-action", b"IdCardVerification");
        end_request_head(&mut out, 42);
        assert_eq!(
            out,
            b"POST /?a=1 HTTP/1.1\r\nhost: faceid.tencentcloudapi.com\r\nx-tc-action: IdCardVerification\r\ncontent-length: 42\r\n\r\n"
        );
    }

    #[test]
    fn length_framed_answer_is_reusable_and_leaves_the_body_in_the_buffer() {
        let mut buffer =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..]);
        let head = parse_response_head(&mut buffer, &Method::POST).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.reusable);
        assert_eq!(head.headers.as_bytes(), b"Content-Type: application/json\r\n");
        assert_eq!(&buffer[..], b"{}");
    }

    #[test]
    fn incomplete_head_asks_for_more_and_consumes_nothing() {
        let mut buffer = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_response_head(&mut buffer, &Method::POST).unwrap().is_none());
        assert_eq!(buffer.len(), 27);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &[u8]| parse(raw).unwrap().unwrap().framing;
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n"), Framing::Empty);
        assert_eq!(framing(b"HTTP/1.1 100 Continue\r\n\r\n"), Framing::Empty);
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        let head = parse_response_head(
            &mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]),
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn reuse_only_when_the_upstream_keeps_the_connection() {
        let reusable = |raw: &[u8]| parse(raw).unwrap().unwrap().reusable;
        assert!(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(
            b"HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.1 200 OK\r\n\r\n"), "read until close");
        assert!(
            !reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "both length headers: never reused"
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n").is_err());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        // Transfer codings in HTTP/1.0: faulty framing (found by tests/http1_differential.rs).
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            WireError::Head("transfer coding in an HTTP/1.0 answer")
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").is_ok());
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), WireError::Head("too many headers"));
        let mut endless = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        endless.resize(MAX_RESPONSE_HEAD_BYTES, b'a');
        assert_eq!(parse(&endless).unwrap_err(), WireError::HeadTooLarge);
    }

    #[test]
    fn chunked_body_decodes_across_any_split() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut out = BytesMut::new();
            let mut input = BytesMut::from(&wire[..split]);
            let done = decoder.decode(&mut input, &mut out).unwrap();
            assert!(!done || split >= wire.len() - 4);
            input.extend_from_slice(&wire[split..]);
            assert!(decoder.decode(&mut input, &mut out).unwrap(), "split at {split}");
            assert_eq!(&out[..], b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(&input[..], b"NEXT");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let decode = |wire: &[u8]| ChunkedDecoder::default().decode(&mut BytesMut::from(wire), &mut BytesMut::new());
        assert!(decode(b"zz\r\n").is_err());
        assert!(decode(b"+4\r\nWiki\r\n").is_err());
        assert!(decode(b" 4\r\nWiki\r\n").is_err());
        assert_eq!(decode(b"4 ;ext\r\nWi"), Ok(false));
        assert!(decode(b"4\r\nWikiXX").is_err());
        assert!(decode(b"fffffffffffffffff\r\n").is_err());
        assert!(decode(&vec![b'1'; MAX_CHUNK_LINE_BYTES + 1]).is_err());
        // A long extension is refused even when its line's end came with it, as it is
        // when the line comes in pieces.
        let mut long_line = b"4;".to_vec();
        long_line.resize(MAX_CHUNK_LINE_BYTES + 10, b'x');
        long_line.extend_from_slice(b"\r\nWiki\r\n0\r\n\r\n");
        assert_eq!(decode(&long_line), Err(WireError::Chunked("line too long")));
        assert_eq!(decode(b"4\r\nWi"), Ok(false));
    }
}
