//! The data listener's HTTP/1.1 server: reads each request head with `httparse` under
//! the header limits and the header-read deadline, hands the request to the pipeline
//! with a body read from the same connection, and writes the answer with one write.
//! Keep-alive, pipelined requests, `Expect: 100-continue` and HTTP/1.0 clients are
//! handled here; a client that opens with the HTTP/2 preface is given back to the
//! caller (with the bytes already read) to be served by hyper.
//!
//! Why not hyper's server for HTTP/1.1: per request it allocated the `X-TC-*` header
//! names, boxed a header-read timer and went through a dispatcher and a body channel;
//! together about a fifth of the gateway's instructions per call (docs/PERFORMANCE.md).
//!
//! What could smuggle a request or exhaust the server is refused here, and the
//! connection closed: a malformed head (400), a head over `limits.max_header_bytes` or
//! with more than `limits.max_headers` fields (431), conflicting or malformed
//! `Content-Length`s (400). A request with `Transfer-Encoding` goes to the pipeline,
//! which refuses it, and its connection is closed since its body is never read.
//! Must not contain request logic: requests go to `proxy::handle`.

use crate::proxy::body::{BodyError, ReceivedBody, RequestBody};
use crate::proxy::fields::{Known, RequestFields};
use crate::proxy::h1::{COPY_BODY_UP_TO, parse_content_length};
use crate::proxy::headers::{PassedHeaders, list_items};
use crate::proxy::plane::DataPlane;
use crate::tc3::Sha256;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header;
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

#[doc(hidden)]
pub mod fuzzing;

/// What a client sends first to speak HTTP/2 without TLS (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The read buffer's size: a signed eKYC call's head and body fit.
const READ_BUFFER: usize = 8 * 1024;
/// Spare read buffers kept per thread; a buffer grown past `MAX_SPARE_CAPACITY` (a
/// large upload) is freed instead.
const MAX_SPARE_BUFFERS: usize = 64;
const MAX_SPARE_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// Read buffers of this thread's connections that wait for their next request: a
    /// connection with nothing to read holds no buffer, and the one that reads next
    /// takes the buffer used last, still in the CPU's cache.
    static SPARE_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Answer heads (with small bodies) being written, likewise.
    static SPARE_WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_spare_buffer() -> BytesMut {
    let mut buffer = SPARE_BUFFERS.with_borrow_mut(Vec::pop).unwrap_or_default();
    // A buffer whose earlier bytes have all been dropped is reused from its start.
    buffer.reserve(READ_BUFFER);
    buffer
}

fn give_back_buffer(buffer: BytesMut) {
    if buffer.capacity() <= MAX_SPARE_CAPACITY {
        SPARE_BUFFERS.with_borrow_mut(|spare| {
            if spare.len() < MAX_SPARE_BUFFERS {
                spare.push(buffer);
            }
        });
    }
}

/// A client connection's stream. Plain TCP tells when it has bytes without being lent
/// a buffer, so an idle keep-alive connection holds none (`SPARE_BUFFERS`); a stream
/// that cannot tell (TLS) says it is ready and keeps its buffer while it waits.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientStream for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl<S: ClientStream> ClientStream for tokio_rustls::server::TlsStream<S> {}
/// `limits.max_headers`' upper bound (config), so the parser's slots live on the stack.
const MAX_HEADER_SLOTS: usize = 1000;
/// A body hashed as it arrives is read this much at a time at most: the kernel's copy
/// and the hash then meet in the L2 cache (512 KiB on the machines measured).
const HASHED_READ: usize = 256 * 1024;

/// Serves HTTP/1.1 requests on `stream` until the client or the server ends the
/// connection. Returns the stream, with what was read of it, when the client opened
/// with the HTTP/2 preface.
pub(crate) async fn serve<S>(stream: S, plane: Arc<DataPlane>, stop: watch::Receiver<bool>) -> Option<Rewind<S>>
where
    S: ClientStream,
{
    let mut connection = Connection::new(stream);
    let limits = &plane.settings.limits;
    let shutdown = std::pin::pin!(shutdown_begins(stop.clone()));
    let deadline_timer = std::pin::pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut waits = Waits {
        deadline_timer,
        shutdown: ShutdownWait {
            begins: shutdown,
            registered: false,
            stop: &stop,
        },
    };
    let mut first = true;
    // One list for every request of the connection: its allocation is kept.
    let mut fields = RequestFields::default();
    let mut callers = crate::proxy::auth::CallerCache::default();
    loop {
        let head = match connection.read_head(limits, &mut waits, first).await {
            HeadRead::Head(head) => head,
            HeadRead::Http2 => return Some(connection.into_rewind()),
            HeadRead::Closed => return None,
            HeadRead::Refused(status) => {
                let _ = connection.write_refusal(status).await;
                return None;
            }
        };
        first = false;
        let request = match connection.take_request(&head, &mut fields) {
            Ok(request) => request,
            Err(status) => {
                let _ = connection.write_refusal(status).await;
                return None;
            }
        };
        let head_request = request.parts.method == Method::HEAD;
        let mut keep_alive = request.keep_alive;
        let version = request.parts.version;
        let answer = crate::proxy::handle(
            &plane,
            request.parts,
            &fields,
            &mut callers,
            ConnectionBody {
                connection: &mut connection,
            },
        )
        .await;
        // The pipeline's last phase: counts a billable call, records its metrics.
        let response = answer.respond(&plane);
        // The head's bytes are let go: the read buffer is not kept shared with them.
        fields.reset(Bytes::new());
        let (parts, body) = response.into_parts();
        let (reusable, drainable) = connection.after_answer(limits);
        keep_alive &= reusable && !shutting_down(&stop) && !asks_to_close(&parts.headers);
        let (data, upstream_headers) = body.into_sent();
        let persistence = match (keep_alive, version) {
            (false, _) => Persistence::Close,
            (true, Version::HTTP_10) => Persistence::KeepAlive10,
            (true, _) => Persistence::KeepAlive,
        };
        // Bounded like a body read: a client that stops reading its answers must not
        // hold its connection for ever.
        let write = connection.write_response(&parts, &upstream_headers, &data, !head_request, version, persistence);
        if !written_in_time(write, limits.body_read_timeout).await {
            return None;
        }
        if !keep_alive {
            let _ = connection.stream.shutdown().await;
            if drainable {
                // Lingering close: a client still sending would otherwise get a reset,
                // which can destroy the answer before it reads it.
                connection.discard_body(limits).await;
            }
            return None;
        }
        if drainable && !connection.discard_body(limits).await {
            return None;
        }
    }
}

/// How much of an unread request body is read and dropped to keep (or cleanly close)
/// a connection: four bodies' worth, at least 16 MiB.
fn discard_budget(limits: &crate::config::Limits) -> u64 {
    (limits.max_body_bytes as u64).saturating_mul(4).max(16 << 20)
}

/// What a connection waits on besides its socket. Both live as long as the connection,
/// so waiting for a request head does not create, register and drop a timer and a
/// shutdown waiter each time (they were 2% of the gateway's CPU).
struct Waits<'a> {
    /// Fires at or before the current head's deadline; reset only when it fires early.
    deadline_timer: Pin<&'a mut tokio::time::Sleep>,
    /// Waited for only while the connection is idle.
    shutdown: ShutdownWait<'a>,
}

/// Shutdown, as an idle connection waits for it.
struct ShutdownWait<'a> {
    /// Completes when shutdown begins.
    begins: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    /// `begins` was polled and is pending: it holds the connection task's waker, which
    /// it wakes when shutdown begins.
    registered: bool,
    stop: &'a watch::Receiver<bool>,
}

impl ShutdownWait<'_> {
    /// Ready once shutdown has begun. `begins` is polled until it has registered the
    /// task's waker, then no more: the waker stays registered while it is pending, and
    /// a connection's task (hence its waker) never changes. Polled again, it would
    /// lock the stop channel's list of waiters, a lock that every connection of every
    /// worker took on each idle wait, one cache line passed between the cores per call.
    /// After the wake-up, `shutting_down` reads the channel's version without a lock.
    fn poll_begun(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return if shutting_down(self.stop) {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let begun = self.begins.as_mut().poll(cx);
        self.registered = begun.is_pending();
        begun
    }
}

async fn shutdown_begins(mut stop: watch::Receiver<bool>) {
    // An error means the server is gone: shutting down as well.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Without a lock: the stop channel's version moves only when shutdown begins.
fn shutting_down(stop: &watch::Receiver<bool>) -> bool {
    stop.has_changed().unwrap_or(true)
}

enum HeadRead {
    Head(ParsedHead),
    Http2,
    /// End of stream, an I/O error, the header-read deadline, or shutdown while idle.
    Closed,
    Refused(StatusCode),
}

/// Where the parts of a complete head lie in the read buffer.
struct ParsedHead {
    length: usize,
    method: Range<usize>,
    target: Range<usize>,
    version: Version,
}

struct HeaderSpan {
    name: Range<usize>,
    value: Range<usize>,
}

struct ReadyRequest {
    /// Method, target and version; the header map is left empty (the fields are in
    /// the connection's `RequestFields`).
    parts: http::request::Parts,
    keep_alive: bool,
}

#[derive(Clone, Copy)]
enum Persistence {
    Close,
    KeepAlive,
    /// An HTTP/1.0 client that asked for keep-alive: the answer must say it is kept.
    KeepAlive10,
}

struct Connection<S> {
    stream: S,
    read_buffer: BytesMut,
    /// The last parsed head's header positions, reused from request to request.
    spans: Vec<HeaderSpan>,
    /// Declared body bytes of the current request not read yet.
    unread_body: u64,
    /// The client sent `Expect: 100-continue` and has not been told to go on.
    awaits_continue: bool,
    /// The body could not be read whole, or its length is unknown: the connection
    /// cannot carry another request.
    must_close: bool,
}

impl<S: ClientStream> Connection<S> {
    fn new(stream: S) -> Self {
        Connection {
            stream,
            // Taken when the first bytes arrive (`read_head`).
            read_buffer: BytesMut::new(),
            spans: Vec::new(),
            unread_body: 0,
            awaits_continue: false,
            must_close: false,
        }
    }

    /// Waits for a complete request head. The deadline covers the wait for its first
    /// byte too, so an idle keep-alive connection is closed after
    /// `limits.header_read_timeout`, as hyper did.
    async fn read_head(&mut self, limits: &crate::config::Limits, waits: &mut Waits<'_>, first: bool) -> HeadRead {
        let deadline = Instant::now() + limits.header_read_timeout;
        loop {
            if !self.read_buffer.is_empty() {
                if first && self.read_buffer[0] == b'P' {
                    let seen = self.read_buffer.len().min(H2_PREFACE.len());
                    if self.read_buffer[..seen] == H2_PREFACE[..seen] {
                        if seen == H2_PREFACE.len() {
                            return HeadRead::Http2;
                        }
                        // A prefix of the preface: wait for the rest before deciding.
                    } else if let Some(read) = self.parse_head(limits) {
                        return read;
                    }
                } else if let Some(read) = self.parse_head(limits) {
                    return read;
                }
                if self.read_buffer.len() >= limits.max_header_bytes {
                    return HeadRead::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                }
            }
            let idle = self.read_buffer.is_empty();
            if idle && shutting_down(waits.shutdown.stop) {
                return HeadRead::Closed;
            }
            if idle {
                if self.read_buffer.capacity() > 0 {
                    give_back_buffer(std::mem::take(&mut self.read_buffer));
                }
                let stream = &mut self.stream; // `&mut`: Send without `S: Sync`
                let ready = tokio::select! {
                    biased;
                    ready = std::future::poll_fn(move |cx| stream.poll_read_ready(cx)) => Some(ready),
                    () = waits.deadline_timer.as_mut() => None,
                    () = std::future::poll_fn(|cx| waits.shutdown.poll_begun(cx)) => return HeadRead::Closed,
                };
                match ready {
                    Some(Ok(())) => self.read_buffer = take_spare_buffer(),
                    Some(Err(_)) => return HeadRead::Closed,
                    None if Instant::now() < deadline => {
                        waits.deadline_timer.as_mut().reset(deadline);
                        continue;
                    }
                    None => {
                        tracing::debug!("no request head in time: closing the idle connection");
                        return HeadRead::Closed;
                    }
                }
            } else if self.read_buffer.capacity() - self.read_buffer.len() < 1024 {
                self.read_buffer.reserve(READ_BUFFER);
            }
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.read_buffer) => Some(read),
                () = waits.deadline_timer.as_mut() => None,
                // Shutting down: an idle connection just ends. (Never polled again once
                // it has completed: the connection ends here.)
                () = std::future::poll_fn(|cx| waits.shutdown.poll_begun(cx)), if idle => return HeadRead::Closed,
            };
            match read {
                Some(Ok(0)) | Some(Err(_)) => return HeadRead::Closed,
                Some(Ok(_)) => {}
                // The timer was set for an earlier head: move it to this one's deadline.
                None if Instant::now() < deadline => waits.deadline_timer.as_mut().reset(deadline),
                None => {
                    tracing::debug!("request head not received in time: closing the connection");
                    return HeadRead::Closed;
                }
            }
        }
    }

    /// Parses what is buffered; `None` when the head is not complete yet.
    #[inline(never)]
    fn parse_head(&mut self, limits: &crate::config::Limits) -> Option<HeadRead> {
        // On the stack and uninitialised: nothing to fill per request, whatever
        // `limits.max_headers` is.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_SLOTS];
        let slots = &mut slots[..limits.max_headers.min(MAX_HEADER_SLOTS)];
        let buffer = &self.read_buffer[..];
        let mut request = httparse::Request::new(&mut []);
        let length = match request.parse_with_uninit_headers(buffer, slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => {
                return Some(HeadRead::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed request head");
                return Some(HeadRead::Refused(StatusCode::BAD_REQUEST));
            }
        };
        if length > limits.max_header_bytes {
            return Some(HeadRead::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        let base = buffer.as_ptr() as usize;
        let span = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            start..start + part.len()
        };
        let (Some(method), Some(target)) = (request.method, request.path) else {
            return Some(HeadRead::Refused(StatusCode::BAD_REQUEST));
        };
        let version = match request.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let head = ParsedHead {
            length,
            method: span(method.as_bytes()),
            target: span(target.as_bytes()),
            version,
        };
        self.spans.clear();
        for field in request.headers.iter() {
            let name = span(field.name.as_bytes());
            let value = span(field.value);
            self.spans.push(HeaderSpan { name, value });
        }
        Some(HeadRead::Head(head))
    }

    /// Turns the parsed head into the request's parts and `fields` and sets up its body.
    /// The fields are positions in the head's bytes: nothing is copied.
    fn take_request(&mut self, parsed: &ParsedHead, fields: &mut RequestFields) -> Result<ReadyRequest, StatusCode> {
        let head = self.read_buffer.split_to(parsed.length).freeze();
        let mut request = Request::new(());
        *request.method_mut() =
            Method::from_bytes(&head[parsed.method.clone()]).map_err(|_| StatusCode::BAD_REQUEST)?;
        *request.uri_mut() =
            Uri::from_maybe_shared(head.slice(parsed.target.clone())).map_err(|_| StatusCode::BAD_REQUEST)?;
        *request.version_mut() = parsed.version;
        fields.reset(head);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut connection_close = false;
        let mut connection_keep_alive = false;
        let mut expects_continue = false;
        let mut hosts = 0;
        for span in &self.spans {
            let Some(known) = fields.push(span.name.clone(), span.value.clone()) else {
                continue;
            };
            let value = fields.last_value();
            match known {
                Known::ContentLength => {
                    let length = parse_content_length(value).ok_or(StatusCode::BAD_REQUEST)?;
                    if content_length.is_some_and(|seen| seen != length) {
                        return Err(StatusCode::BAD_REQUEST);
                    }
                    content_length = Some(length);
                }
                Known::TransferEncoding => chunked = true,
                Known::Connection => {
                    connection_close |= has_token(value, b"close");
                    connection_keep_alive |= has_token(value, b"keep-alive");
                }
                Known::Expect => expects_continue = value.eq_ignore_ascii_case(b"100-continue"),
                Known::Host => {
                    hosts += 1;
                    if hosts > 1 || !is_valid_host(value) {
                        return Err(StatusCode::BAD_REQUEST);
                    }
                }
                _ => {}
            }
        }
        // RFC 9112 §3.2: an HTTP/1.1 request without a Host is answered 400. (HTTP/1.0
        // predates the header; one sent is still checked above.)
        if hosts == 0 && parsed.version != Version::HTTP_10 {
            return Err(StatusCode::BAD_REQUEST);
        }
        let keep_alive = match parsed.version {
            Version::HTTP_10 => connection_keep_alive && !connection_close,
            _ => !connection_close,
        };
        // With Transfer-Encoding the body's end is unknown to us (the pipeline refuses
        // such a request without reading it): nothing after it on this connection can
        // be trusted to be a request.
        self.must_close = chunked;
        self.unread_body = if chunked { 0 } else { content_length.unwrap_or(0) };
        self.awaits_continue = expects_continue && parsed.version == Version::HTTP_11 && self.unread_body > 0;
        let (parts, ()) = request.into_parts();
        Ok(ReadyRequest { parts, keep_alive })
    }

    /// Once the answer is decided: whether what is left of the request lets the
    /// connection carry another one, and whether an unread body is to be read and
    /// dropped first. A body the pipeline did not read (it refused the call first) is
    /// read and dropped after the answer: the client reads the answer at once, and then
    /// the next request can follow. One the client holds back for a `100 Continue` it
    /// never got, or larger than the discard budget, ends the connection.
    fn after_answer(&self, limits: &crate::config::Limits) -> (bool, bool) {
        let unread = self.unread_body > 0 && !self.must_close;
        let drainable = unread && !self.awaits_continue;
        let reusable = !self.must_close && (!unread || drainable && self.unread_body <= discard_budget(limits));
        (reusable, drainable)
    }

    /// Reads until `length` bytes are buffered, feeding `hasher` the first `length`
    /// bytes as they come: at most `HASHED_READ` bytes a read, hashed right after it.
    async fn fill_to(&mut self, length: usize, mut hasher: Option<&mut Sha256>) -> io::Result<()> {
        let mut hashed = self.read_buffer.len().min(length);
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(&self.read_buffer[..hashed]);
        }
        while self.read_buffer.len() < length {
            let missing = length - self.read_buffer.len();
            self.read_buffer.reserve(missing);
            let read = match hasher.as_deref_mut() {
                None => self.stream.read_buf(&mut self.read_buffer).await?,
                Some(hasher) => {
                    let read = self
                        .stream
                        .read_buf(&mut (&mut self.read_buffer).limit(missing.min(HASHED_READ)))
                        .await?;
                    // The read stops at the body's end; `min` keeps it so if that changes.
                    let end = self.read_buffer.len().min(length);
                    hasher.update(&self.read_buffer[hashed..end]);
                    hashed = end;
                    read
                }
            };
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    async fn send_continue(&mut self) -> io::Result<()> {
        self.awaits_continue = false;
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        self.stream.flush().await
    }

    /// Reads and drops the body the pipeline did not read, within the discard budget
    /// and the body deadline; `false` when not all of it came.
    async fn discard_body(&mut self, limits: &crate::config::Limits) -> bool {
        let mut allowance = discard_budget(limits);
        let discard = async {
            while self.unread_body > 0 {
                if allowance == 0 {
                    return Err(io::Error::other("over the discard budget"));
                }
                if self.read_buffer.is_empty() {
                    self.read_buffer.reserve(READ_BUFFER);
                    if self.stream.read_buf(&mut self.read_buffer).await? == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                }
                let step = (self.read_buffer.len() as u64).min(self.unread_body).min(allowance);
                self.read_buffer.advance(step as usize);
                self.unread_body -= step;
                allowance -= step;
            }
            Ok(())
        };
        matches!(
            tokio::time::timeout(limits.body_read_timeout, discard).await,
            Ok(Ok(()))
        )
    }

    async fn write_response(
        &mut self,
        parts: &http::response::Parts,
        upstream_headers: &PassedHeaders,
        body: &Bytes,
        with_body: bool,
        version: Version,
        persistence: Persistence,
    ) -> io::Result<()> {
        // From the thread's spares, not kept by the connection: 10,000 idle keep-alive
        // connections would each hold their last answer.
        let mut head = SPARE_WRITE_BUFFERS.with_borrow_mut(Vec::pop).unwrap_or_default();
        head.clear();
        encode_head(&mut head, parts, upstream_headers, body.len(), version, persistence);
        let body: &[u8] = if with_body && allows_body(parts.status) {
            body
        } else {
            &[]
        };
        let result = if body.len() <= COPY_BODY_UP_TO {
            head.extend_from_slice(body);
            self.stream.write_all(&head).await
        } else {
            write_all_vectored(&mut self.stream, &head, body).await
        };
        if head.capacity() <= MAX_SPARE_CAPACITY {
            SPARE_WRITE_BUFFERS.with_borrow_mut(|spare| {
                if spare.len() < MAX_SPARE_BUFFERS {
                    spare.push(head);
                }
            });
        }
        result?;
        self.stream.flush().await
    }

    /// An empty answer with `status`, then the connection ends: the head could not be
    /// read as a request, so its version is unknown and HTTP/1.1 is answered.
    async fn write_refusal(&mut self, status: StatusCode) -> io::Result<()> {
        let (parts, ()) = crate::proxy::errors::unreadable_request(status).into_parts();
        let mut answer = Vec::with_capacity(128);
        encode_head(
            &mut answer,
            &parts,
            &PassedHeaders::default(),
            0,
            Version::HTTP_11,
            Persistence::Close,
        );
        self.stream.write_all(&answer).await?;
        self.stream.flush().await?;
        self.stream.shutdown().await
    }

    fn into_rewind(self) -> Rewind<S> {
        Rewind {
            prefix: self.read_buffer.freeze(),
            inner: self.stream,
        }
    }
}

/// The request body as the pipeline reads it: straight from the connection, under the
/// same cap and deadline as an HTTP/2 body.
struct ConnectionBody<'a, S> {
    connection: &'a mut Connection<S>,
}

impl<S: ClientStream> RequestBody for ConnectionBody<'_, S> {
    async fn read_bounded(
        self,
        _fields: &RequestFields,
        limit: usize,
        deadline: Duration,
        hash: impl FnOnce() -> bool + Send,
    ) -> Result<ReceivedBody, BodyError> {
        let connection = self.connection;
        let declared = connection.unread_body;
        if declared > limit as u64 {
            // Refused before it is read. When it is not too large to drop, it is read
            // and dropped after the answer so the client reads our error, not a reset.
            return Err(BodyError::TooLarge { limit });
        }
        if declared == 0 {
            return Ok(ReceivedBody::unhashed(Bytes::new()));
        }
        let length = declared as usize;
        if connection.read_buffer.len() >= length {
            // Sent with its head, as the SDKs do: no wait, so no timer. Hashed whole
            // by the signature check, as it is already in the cache.
            connection.unread_body = 0;
            return Ok(ReceivedBody::unhashed(connection.read_buffer.split_to(length).freeze()));
        }
        let mut hasher = hash().then(Sha256::default);
        let read = async {
            if connection.awaits_continue && connection.read_buffer.len() < length {
                connection.send_continue().await?;
            }
            connection.fill_to(length, hasher.as_mut()).await
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok(())) => {
                connection.unread_body = 0;
                Ok(ReceivedBody {
                    bytes: connection.read_buffer.split_to(length).freeze(),
                    sha256: hasher.map(Sha256::finish),
                })
            }
            Ok(Err(e)) => {
                connection.must_close = true;
                Err(BodyError::Read(e.to_string()))
            }
            Err(_) => {
                connection.must_close = true;
                Err(BodyError::Timeout)
            }
        }
    }
}

/// Runs `write` under `deadline`. An answer that fits in the socket's buffer (almost
/// all) is written by the first poll, and then no timer is set up at all.
async fn written_in_time(write: impl Future<Output = io::Result<()>>, deadline: Duration) -> bool {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(result) => result.is_ok(),
        Poll::Pending => matches!(tokio::time::timeout(deadline, write).await, Ok(Ok(()))),
    }
}

/// A `Host` value as RFC 9112 §3.2 has it: `uri-host [ ":" port ]`, with no user
/// information, path or space. An IP literal is bracketed; a registered name (or an
/// IPv4 address) is the unreserved, sub-delims and percent characters of RFC 3986.
/// Checked on every request: a name is read in one pass over a table.
fn is_valid_host(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let (host, port) = if value.first() == Some(&b'[') {
        // An IP literal ends at its ']'; a port may follow it.
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match &value[close + 1..] {
            [] => (&value[..=close], None),
            [b':', port @ ..] => (&value[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| !REG_NAME_BYTES[b as usize]) {
            None => (value, None),
            Some(at) if value[at] == b':' => (&value[..at], Some(&value[at + 1..])),
            Some(_) => return false,
        }
    };
    !host.is_empty() && port.is_none_or(|port| port.len() <= 5 && port.iter().all(u8::is_ascii_digit))
}

/// The bytes of an RFC 3986 reg-name (unreserved, sub-delims and '%'), as a table: the
/// Host is checked on every request, and a search of the punctuation per byte cost
/// about 500 instructions a call.
static REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = matches!(c as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
            || matches!(
                c as u8,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        c += 1;
    }
    table
};

fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token))
}

fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_token(value.as_bytes(), b"close"))
}

/// 1xx, 204 and 304 answers have no body (RFC 9110 §6.4.1).
fn allows_body(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

/// The status line and headers: the gateway's own, then the upstream's as it sent them.
/// The length is the body's: the pipeline's answers are always whole, so there is no
/// chunked encoding on the way out. `Connection` is ours to write; `Date` is added when
/// the answer has none, as hyper and nginx do.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    upstream_headers: &PassedHeaders,
    body_length: usize,
    version: Version,
    persistence: Persistence,
) {
    // An HTTP/1.0 client gets an HTTP/1.0 status line, as hyper and nginx answer.
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(upstream_headers.as_bytes());
    has_date |= upstream_headers.has_date();
    if allows_body(parts.status) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_length).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match persistence {
        Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
        Persistence::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persistence::KeepAlive => {}
    }
    if !has_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>\r\n`, formatted once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(writer: &mut W, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let written = writer.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if written < head.len() {
            head = &head[written..];
        } else {
            body = &body[written - head.len()..];
            head = &[];
        }
    }
    writer.write_all(body).await
}

/// A stream with bytes already read from it put back in front, for hyper to read the
/// HTTP/2 preface we peeked at.
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_judged_as_rfc_9112_has_them() {
        for good in [
            "127.0.0.1:8080",
            "localhost",
            "faceid.tencentcloudapi.com",
            "faceid.tencentcloudapi.com:443",
            "[::1]:8080",
            "[2001:db8::1]",
            "a-b_c~d.example",
            " padded.example ",
            // RFC 3986 allows an empty port.
            "localhost:",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            " ",
            "::1",
            "user@host",
            "host/path",
            "host:port",
            "host:123456",
            "[::1",
            "[]",
            "[::1]x",
            "two words",
            "host?q",
            "host#f",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens_are_matched_whole_and_without_case() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }

    /// A connection whose head has been read, with `buffered` bytes of a body of
    /// `length` in its buffer, and the client's end of the socket.
    async fn connection_in_a_body(
        buffered: &[u8],
        length: usize,
    ) -> (Connection<tokio::net::TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut connection = Connection::new(server);
        connection.read_buffer.extend_from_slice(buffered);
        connection.unread_body = length as u64;
        (connection, client)
    }

    async fn read_body(connection: &mut Connection<tokio::net::TcpStream>, hash: bool) -> ReceivedBody {
        let body = ConnectionBody { connection };
        let fields = RequestFields::default();
        let read = body.read_bounded(&fields, 16 << 20, Duration::from_secs(10), || hash);
        read.await.unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_body_that_comes_after_its_head_is_hashed_as_read_and_only_up_to_its_end() {
        let body: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        let next_request = b"POST / HTTP/1.1\r\n";
        let (mut connection, mut client) = connection_in_a_body(&body[..1000], body.len()).await;
        let sender = tokio::spawn(async move {
            for piece in body[1000..].chunks(100_003) {
                client.write_all(piece).await.unwrap();
            }
            client.write_all(next_request).await.unwrap();
            (client, body)
        });
        let received = read_body(&mut connection, true).await;
        let (_client, body) = sender.await.unwrap();
        assert_eq!(received.bytes, body);
        let digest = received.sha256.expect("hashed as it was read");
        assert_eq!(
            crate::tc3::HexDigest::from_digest(&digest),
            crate::tc3::HexDigest::of(&body)
        );
        // What follows the body stays for the next request, unhashed.
        assert!(next_request.starts_with(&connection.read_buffer));
        assert_eq!(connection.unread_body, 0);
    }

    #[tokio::test]
    async fn a_body_is_not_hashed_as_read_unless_asked_or_when_it_came_with_its_head() {
        let body = vec![b'x'; 300_000];
        let (mut connection, mut client) = connection_in_a_body(&body[..10], body.len()).await;
        // Written while the body is read: more than a socket's buffer may hold unread.
        let rest = body[10..].to_vec();
        let sender = tokio::spawn(async move {
            client.write_all(&rest).await.unwrap();
            client
        });
        let received = read_body(&mut connection, false).await;
        let _client = sender.await.unwrap();
        assert_eq!(received.bytes, body);
        assert_eq!(received.sha256, None);

        let (mut connection, _client) = connection_in_a_body(&body, body.len()).await;
        let received = read_body(&mut connection, true).await;
        assert_eq!(received.bytes, body);
        assert_eq!(received.sha256, None, "hashed whole by the signature check instead");
    }
}
