//! The server's request reading, reachable from the fuzz targets (`fuzz/`) and the
//! differential test (`tests/http1_differential.rs`): bytes from memory, handed over in
//! reads of a chosen size, go through the real `Connection` (`read_head`,
//! `take_request`, the body read, `after_answer`, the discard of an unread body) as
//! `serve` drives it, with a stand-in for the pipeline that reads every body it can.
//! Must not parse or frame anything itself: what it reports is what the server did.

use super::{Connection, ConnectionBody, HeadRead, ShutdownWait, Waits};
use crate::config::Limits;
use crate::proxy::body::{BodyError, RequestBody};
use crate::proxy::fields::{Known, RequestFields};
use http::{Method, StatusCode, Version};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One request the server handed to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedRequest {
    pub method: Method,
    pub target: String,
    pub version: Version,
    /// Every header field as sent: name, value.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The bytes of the stream the head took.
    pub head_length: usize,
    pub body: Body,
    /// The bytes of the stream this request took: its head, and its body whether read
    /// or dropped.
    pub consumed: usize,
    /// The connection went on to read another request.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Read whole (empty when the request declares none).
    Read(Vec<u8>),
    /// Declared over `limits.max_body_bytes`: refused unread.
    TooLarge,
    /// The stream ended before the declared length.
    Cut,
    /// `Transfer-Encoding`: the pipeline refuses it without reading a byte of it.
    NotRead,
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// End of stream, or a request after which the connection is not kept; `unread`
    /// bytes of the stream were never looked at as a request.
    Closed { unread: usize },
    /// The head was refused with this status, and the connection closed.
    Refused(StatusCode),
    /// The client opened with the HTTP/2 preface.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub requests: Vec<FramedRequest>,
    pub end: End,
}

/// Serves `input` as one connection's bytes, given to the server `read_size` bytes (at
/// least 1) at a time, then end of stream. Needs a Tokio runtime with time enabled.
pub async fn read_requests(input: &[u8], read_size: usize, limits: &Limits) -> Outcome {
    let stream = MemoryStream {
        input,
        position: 0,
        read_size: read_size.max(1),
    };
    let mut connection = Connection::new(stream);
    // Kept alive: a dropped sender reads as shutdown.
    let (_stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut waits = Waits {
        deadline_timer: std::pin::pin!(tokio::time::sleep(limits.header_read_timeout)),
        shutdown: ShutdownWait {
            begins: std::pin::pin!(super::shutdown_begins(stop.clone())),
            registered: false,
            stop: &stop,
        },
    };
    let mut fields = RequestFields::default();
    let mut requests = Vec::new();
    let mut first = true;
    let position =
        |connection: &Connection<MemoryStream<'_>>| connection.stream.position - connection.read_buffer.len();
    loop {
        let start = position(&connection);
        let head = match connection.read_head(limits, &mut waits, first).await {
            HeadRead::Head(head) => head,
            HeadRead::Http2 => {
                return Outcome {
                    requests,
                    end: End::Http2,
                };
            }
            HeadRead::Closed => {
                let unread = input.len() - start;
                return Outcome {
                    requests,
                    end: End::Closed { unread },
                };
            }
            HeadRead::Refused(status) => {
                return Outcome {
                    requests,
                    end: End::Refused(status),
                };
            }
        };
        first = false;
        let request = match connection.take_request(&head, &mut fields) {
            Ok(request) => request,
            Err(status) => {
                return Outcome {
                    requests,
                    end: End::Refused(status),
                };
            }
        };
        let body = if fields.contains(Known::TransferEncoding) {
            Body::NotRead
        } else {
            let read = ConnectionBody {
                connection: &mut connection,
            }
            .read_bounded(&fields, limits.max_body_bytes, limits.body_read_timeout, || false);
            match read.await {
                Ok(body) => Body::Read(body.bytes.to_vec()),
                Err(BodyError::TooLarge { .. }) => Body::TooLarge,
                Err(_) => Body::Cut,
            }
        };
        let (reusable, drainable) = connection.after_answer(limits);
        let mut keep_alive = request.keep_alive && reusable;
        if drainable {
            // As `serve` does, kept or not (a lingering close); when not all of it
            // comes, the connection ends there.
            keep_alive &= connection.discard_body(limits).await;
        }
        let parts = request.parts;
        requests.push(FramedRequest {
            method: parts.method,
            target: parts.uri.to_string(),
            version: parts.version,
            headers: fields
                .iter()
                .map(|(name, value, _)| (name.to_vec(), value.to_vec()))
                .collect(),
            head_length: head.length,
            body,
            consumed: position(&connection) - start,
            keep_alive,
        });
        if !keep_alive {
            let unread = input.len() - position(&connection);
            return Outcome {
                requests,
                end: End::Closed { unread },
            };
        }
    }
}

/// A client that has sent `input` and closed its side; answers are dropped.
struct MemoryStream<'a> {
    input: &'a [u8],
    position: usize,
    read_size: usize,
}

impl super::ClientStream for MemoryStream<'_> {}

impl AsyncRead for MemoryStream<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let n = (this.input.len() - this.position)
            .min(this.read_size)
            .min(buf.remaining());
        buf.put_slice(&this.input[this.position..this.position + n]);
        this.position += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemoryStream<'_> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The smallest limits the configuration allows, so that a fuzzer reaches them.
pub const SMALLEST_LIMITS: Limits = Limits {
    max_connections: 1,
    max_body_bytes: 1024,
    max_header_bytes: 8192,
    max_headers: 16,
    header_read_timeout: std::time::Duration::from_secs(10),
    body_read_timeout: std::time::Duration::from_secs(30),
};

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = SMALLEST_LIMITS;

    /// Found by the `http1_requests` fuzz target: a refused body that ends before its
    /// declared length ends the connection, as in `serve`; it was reported as kept.
    #[tokio::test]
    async fn a_refused_body_cut_short_ends_the_connection() {
        let mut stream = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1100\r\n\r\n".to_vec();
        stream.extend_from_slice(&[b'b'; 100]);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        for read_size in [1, 64, stream.len()] {
            let outcome = read_requests(&stream, read_size, &LIMITS).await;
            assert_eq!(outcome.requests.len(), 1);
            let request = &outcome.requests[0];
            assert_eq!(request.body, Body::TooLarge);
            assert!(!request.keep_alive);
            assert_eq!(request.consumed, stream.len(), "what came was read and dropped");
            assert_eq!(outcome.end, End::Closed { unread: 0 });
        }
    }
}
