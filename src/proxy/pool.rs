//! Upstream connections and the HTTP/1.1 exchange over them. Keep-alive connections to
//! the one upstream sit idle per data-plane thread (see `workers`): checking one out is
//! a pop from a thread-local list, with no lock, and the request that holds it writes
//! its call and reads the answer on it directly, with no connection task or channel in
//! between (the wire format is in `h1`). The whole answer is read, under the size cap,
//! before it is passed on; the connection then goes back to the list, unless the
//! exchange failed or the upstream asked to close it.
//! Must not retry a request: the upstream may have served (and billed) it.

use crate::config;
use crate::metrics::PoolGauges;
use crate::proxy::h1::{self, ChunkedDecoder, Framing};
use crate::proxy::headers::PassedHeaders;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use rustls_pki_types::ServerName;
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

thread_local! {
    /// Idle connections of every pool used on this thread, oldest first, tagged with
    /// the pool's id (tests run several gateways in one process).
    static IDLE: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// Read buffer per connection; an answer head may grow it to `h1::MAX_RESPONSE_HEAD_BYTES`.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// A connection's write buffer: what it starts with, and the most it keeps between
/// calls (a pooled idle connection holds it).
const WRITE_BUFFER_BYTES: usize = 1024;
const KEEP_WRITE_BUFFER_UP_TO: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Protocol(String),
    #[error("answer larger than the cap")]
    TooLarge,
    #[error("no answer in time")]
    Timeout,
}

impl From<io::Error> for PoolError {
    fn from(e: io::Error) -> Self {
        PoolError::Protocol(e.to_string())
    }
}

impl From<h1::WireError> for PoolError {
    fn from(e: h1::WireError) -> Self {
        PoolError::Protocol(e.to_string())
    }
}

/// The upstream's whole answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: PassedHeaders,
    pub body: Bytes,
}

pub struct UpstreamPool {
    id: u64,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    gauges: PoolGauges,
}

impl UpstreamPool {
    pub fn new(upstream: &config::Upstream) -> anyhow::Result<Self> {
        let https = upstream.scheme == http::uri::Scheme::HTTPS;
        let host = upstream
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = upstream.authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut config = crate::tls::client_config(upstream.extra_ca_file.as_deref())?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            host,
            port,
            tls,
            connect_timeout: upstream.connect_timeout,
            idle_timeout: upstream.pool_idle_timeout,
            max_idle: upstream.pool_max_idle_per_host,
            gauges: PoolGauges::default(),
        })
    }

    /// The counts of this pool's connections, open and idle.
    pub fn gauges(&self) -> PoolGauges {
        self.gauges.clone()
    }

    /// Sends a request on an idle connection of this thread, or a new one, and reads
    /// the whole answer, refusing a body over `limit` bytes and giving up `timeout`
    /// after `started` (connecting included; the caller's clock reading, so that the
    /// call's timing and its deadline need one read). `write_head` writes the request line and
    /// headers (`h1::write_request_line`, `h1::write_header`); the body's length ends
    /// the head.
    pub async fn exchange(
        &self,
        method: &Method,
        write_head: impl FnOnce(&mut Vec<u8>),
        body: &[u8],
        limit: usize,
        started: Instant,
        timeout: Duration,
    ) -> Result<Answer, PoolError> {
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let mut connection = match self.checkout(started) {
            Some(connection) => connection,
            // Boxed: connecting (with TLS) is rare and its future large; inline it would
            // make every request's future larger, and futures are copied when created.
            None => Box::pin(tokio::time::timeout_at(deadline, self.connect()))
                .await
                .map_err(|_| PoolError::Timeout)??,
        };
        // Dropped on any error, timeout or cancellation: the connection is then in an
        // unknown state and is closed, never reused.
        connection.write_buffer.clear();
        write_head(&mut connection.write_buffer);
        h1::end_request_head(&mut connection.write_buffer, body.len());
        // The connection's own timer: it stays registered from call to call and is
        // reset only when it fires before this call's deadline, instead of a timer
        // inserted into and removed from the wheel for every call.
        let mut timer = connection
            .deadline_timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            // Kept from a call with a longer timeout: never let this one overrun.
            timer.as_mut().reset(deadline);
        }
        let (answer, reusable) = {
            let mut exchange = std::pin::pin!(connection.exchange(method, body, limit));
            loop {
                tokio::select! {
                    biased;
                    result = &mut exchange => break result?,
                    () = timer.as_mut() => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(PoolError::Timeout);
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        };
        if reusable {
            connection.deadline_timer = Some(timer);
            self.check_in(connection, started);
        }
        Ok(answer)
    }

    /// The most recently used idle connection of this pool that is still open.
    fn checkout(&self, now: Instant) -> Option<Connection> {
        loop {
            let mut connection = IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                let position = idle.iter().rposition(|(pool, _)| *pool == self.id)?;
                Some(idle.remove(position).1)
            })?;
            connection.counted.set_idle(false);
            if now.saturating_duration_since(connection.idle_since) >= self.idle_timeout || !connection.still_open() {
                continue;
            }
            return Some(connection);
        }
    }

    /// Puts a connection back, idle since `since`: the call's start, not its end, which
    /// saves a clock read and can only make a connection look idle for longer (it is
    /// then closed a call's length early, never late).
    fn check_in(&self, mut connection: Connection, since: Instant) {
        let now = since;
        connection.idle_since = now;
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            // The oldest sit at the front: drop those past their idle timeout so that a
            // quiet period does not keep sockets the upstream has long closed.
            while idle
                .first()
                .is_some_and(|(pool, c)| *pool == self.id && now.duration_since(c.idle_since) >= self.idle_timeout)
            {
                idle.remove(0);
            }
            // Counted only when the whole list could be over the cap: with hundreds of
            // client connections the scan was on every call.
            if idle.len() < self.max_idle || idle.iter().filter(|(pool, _)| *pool == self.id).count() < self.max_idle {
                connection.counted.set_idle(true);
                idle.push((self.id, connection));
            }
        });
    }

    async fn connect(&self) -> Result<Connection, PoolError> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => {
                return Err(PoolError::Connect(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(PoolError::Connect(e.to_string())),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| PoolError::Connect("TLS handshake timed out".into()))?
                    .map_err(|e| PoolError::Connect(format!("TLS handshake: {e}")))?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Connection {
            stream,
            read_buffer: BytesMut::with_capacity(READ_BUFFER_BYTES),
            write_buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            idle_since: Instant::now(),
            deadline_timer: None,
            counted: Counted::new(self.gauges.clone()),
        })
    }
}

struct Connection {
    stream: Stream,
    read_buffer: BytesMut,
    /// The request head, and behind it a body up to `h1::COPY_BODY_UP_TO`; kept to
    /// reuse its allocation, up to `KEEP_WRITE_BUFFER_UP_TO`.
    write_buffer: Vec<u8>,
    idle_since: Instant,
    /// Set at or before the current call's deadline (see `UpstreamPool::exchange`).
    deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    counted: Counted,
}

/// A connection's place in its pool's gauges, from its connect to its drop, wherever
/// it is dropped (an error, an idle timeout, a thread's idle list going away).
struct Counted {
    gauges: PoolGauges,
    idle: bool,
}

impl Counted {
    fn new(gauges: PoolGauges) -> Self {
        gauges.opened();
        Self { gauges, idle: false }
    }

    fn set_idle(&mut self, idle: bool) {
        if idle != self.idle {
            if idle {
                self.gauges.idled();
            } else {
                self.gauges.taken();
            }
            self.idle = idle;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set_idle(false);
        self.gauges.closed();
    }
}

impl Connection {
    /// Sends the head in `write_buffer` and `body`, and reads the whole answer. `true` with the answer: the connection may
    /// carry another request.
    async fn exchange(&mut self, method: &Method, body: &[u8], limit: usize) -> Result<(Answer, bool), PoolError> {
        if body.len() <= h1::COPY_BODY_UP_TO {
            // One send of one buffer: a writev costs the kernel an iovec import and
            // checks per segment, more than copying a small body behind the head.
            self.write_buffer.extend_from_slice(body);
            self.stream.write_all(&self.write_buffer).await?;
            if self.write_buffer.capacity() > KEEP_WRITE_BUFFER_UP_TO {
                // A mid-sized body: not kept by an idle connection (up to
                // `pool_max_idle_per_host` of them per thread).
                self.write_buffer = Vec::with_capacity(WRITE_BUFFER_BYTES);
            }
        } else {
            // One writev for head and body when the stream takes vectored writes.
            let mut outgoing = Buf::chain(&self.write_buffer[..], body);
            self.stream.write_all_buf(&mut outgoing).await?;
        }
        self.stream.flush().await?;

        let head = loop {
            if let Some(head) = h1::parse_response_head(&mut self.read_buffer, method)? {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(PoolError::Protocol("unexpected 101 Switching Protocols".into()));
                }
                // 100 Continue and other interim answers: the final one follows.
                if !head.status.is_informational() {
                    break head;
                }
                continue;
            }
            self.fill_read_buffer("before its answer head").await?;
        };
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(length) => self.read_length(length, limit).await?,
            Framing::Chunked => self.read_chunked(limit).await?,
            Framing::UntilClose => self.read_until_close(limit).await?,
        };
        // Bytes after the answer: the upstream is not speaking HTTP/1.1 as we do.
        let reusable = head.reusable && head.framing != Framing::UntilClose && self.read_buffer.is_empty();
        Ok((
            Answer {
                status: head.status,
                headers: head.headers,
                body,
            },
            reusable,
        ))
    }

    async fn fill_read_buffer(&mut self, during: &str) -> Result<(), PoolError> {
        if self.read_buffer.capacity() - self.read_buffer.len() < 1024 {
            self.read_buffer.reserve(READ_BUFFER_BYTES);
        }
        if self.stream.read_buf(&mut self.read_buffer).await? == 0 {
            return Err(PoolError::Protocol(format!(
                "the upstream closed the connection {during}"
            )));
        }
        Ok(())
    }

    async fn read_length(&mut self, length: u64, limit: usize) -> Result<Bytes, PoolError> {
        if length > limit as u64 {
            return Err(PoolError::TooLarge);
        }
        let length = length as usize;
        if self.read_buffer.len() >= length {
            // The usual case, a small answer that came with its head: no copy.
            return Ok(self.read_buffer.split_to(length).freeze());
        }
        let mut body = BytesMut::with_capacity(length);
        body.extend_from_slice(&self.read_buffer);
        self.read_buffer.clear();
        while body.len() < length {
            let want = length - body.len();
            let read = (&mut self.stream).take(want as u64).read_buf(&mut body).await?;
            if read == 0 {
                return Err(PoolError::Protocol(
                    "the upstream closed the connection mid-answer".into(),
                ));
            }
        }
        Ok(body.freeze())
    }

    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, PoolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = BytesMut::new();
        loop {
            let done = decoder.decode(&mut self.read_buffer, &mut body)?;
            if body.len() > limit {
                return Err(PoolError::TooLarge);
            }
            if done {
                return Ok(body.freeze());
            }
            self.fill_read_buffer("mid-answer").await?;
        }
    }

    async fn read_until_close(&mut self, limit: usize) -> Result<Bytes, PoolError> {
        let mut body = self.read_buffer.split();
        loop {
            if body.len() > limit {
                return Err(PoolError::TooLarge);
            }
            body.reserve(READ_BUFFER_BYTES);
            if self.stream.read_buf(&mut body).await? == 0 {
                return Ok(body.freeze());
            }
        }
    }

    /// False when the upstream has closed the connection (or sent something unasked).
    /// Usually free: tokio marks a socket drained after a short read, so unless the
    /// poller has seen it readable since (a FIN, say) this returns without a system call.
    fn still_open(&mut self) -> bool {
        if !self.read_buffer.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut context = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut context, &mut probe),
            Poll::Pending
        )
    }
}

/// Plain TCP or TLS towards the upstream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
