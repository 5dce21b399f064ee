//! Phase 1 of the pipeline (bound the request) and the body type the proxy answers with.
//! Reads a request body under a size cap and a deadline, and carries answers (read
//! whole, under the same cap, by `pool`) to the client with the ticket that counts a
//! billable one. Must not change body bytes; it only reads an answer to decide
//! whether it is billable.

use crate::app::App;
use crate::meter::CounterKey;
use crate::meter::billable::BillableScanner;
use crate::proxy::fields::{Known, RequestFields};
use crate::proxy::headers::PassedHeaders;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body was not received in time")]
    Timeout,
    #[error("the request body could not be read: {0}")]
    Read(String),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request's body as read, with its SHA-256 when it was hashed as it arrived.
pub struct ReceivedBody {
    pub bytes: Bytes,
    /// Taken only when asked for and only where it saves reading the body twice: a
    /// body that came with its head is hashed whole by the signature check.
    pub sha256: Option<[u8; 32]>,
}

impl ReceivedBody {
    pub fn unhashed(bytes: Bytes) -> Self {
        Self { bytes, sha256: None }
    }
}

/// A request's body as the server hands it to the pipeline: hyper's for HTTP/2, the
/// connection itself for HTTP/1.1 (`server::http1`).
pub trait RequestBody: Send {
    /// Reads the whole body, refusing more than `limit` bytes and giving up after
    /// `deadline`. The declared length is checked first, so an oversized upload is
    /// refused before it is read. When `hash` says so, a body that arrives in pieces
    /// is hashed piece by piece as it comes, while each piece is still in the CPU's
    /// cache and the rest still on its way (`tc3::Sha256`); it is asked only
    /// then, as a body that came with its head (the usual call) is hashed whole.
    fn read_bounded(
        self,
        fields: &RequestFields,
        limit: usize,
        deadline: Duration,
        hash: impl FnOnce() -> bool + Send,
    ) -> impl Future<Output = Result<ReceivedBody, BodyError>> + Send;
}

impl RequestBody for Incoming {
    async fn read_bounded(
        self,
        fields: &RequestFields,
        limit: usize,
        deadline: Duration,
        hash: impl FnOnce() -> bool + Send,
    ) -> Result<ReceivedBody, BodyError> {
        read_incoming(fields, self, limit, deadline, hash()).await
    }
}

async fn read_incoming(
    fields: &RequestFields,
    body: Incoming,
    limit: usize,
    deadline: Duration,
    hash: bool,
) -> Result<ReceivedBody, BodyError> {
    let declared = fields.get_str(Known::ContentLength).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        // Boxed, as the other rare paths: every request's future is as large as its
        // largest state, and is copied whole when it is created.
        Box::pin(drain_for_lingering_close(fields, body, limit, deadline)).await;
        return Err(BodyError::TooLarge { limit });
    }
    let mut hasher = hash.then(crate::tc3::Sha256::default);
    let collect = async {
        let mut body = Limited::new(body, limit);
        // The usual body, one DATA frame, is kept as it came: no copy. More are joined
        // into one buffer sized once for the rest (hyper tells the rest of the
        // declared length, which h2 enforces), so a large body is neither copied
        // again as the buffer grows nor held in one twice its size.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue; // trailers: not part of what is signed or forwarded
            };
            if let Some(hasher) = &mut hasher {
                hasher.update(&data);
            }
            if first.is_none() && joined.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(earlier) = first.take() {
                let rest = (body.size_hint().lower() as usize).min(limit);
                joined.reserve(earlier.len() + data.len() + rest);
                joined.extend_from_slice(&earlier);
            }
            joined.extend_from_slice(&data);
        }
        Ok::<_, BoxError>(first.unwrap_or_else(|| joined.freeze()))
    };
    match tokio::time::timeout(deadline, collect).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(bytes)) => Ok(ReceivedBody {
            bytes,
            sha256: hasher.map(crate::tc3::Sha256::finish),
        }),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}

/// Reads and discards an oversized upload (bounded in bytes and time) before answering,
/// so the client reads our error instead of a connection reset. A client that asked
/// `Expect: 100-continue` is answered at once: it has not sent the body.
async fn drain_for_lingering_close(fields: &RequestFields, body: Incoming, limit: usize, deadline: Duration) {
    let expects_continue = fields
        .get(Known::Expect)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let budget = limit.saturating_mul(4).max(16 << 20);
    let drain = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > budget {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(deadline, drain).await;
}

/// Phase 7 (meter): counts a billable call when the server takes its answer (read
/// whole from the upstream) to send it. An answer the upstream cut short, garbled or
/// sent over the cap never gets this far. The HTTP/1.1 server takes every answer it
/// gets: the upstream has made (and billed) the call, whether or not the client is
/// still there to read it. hyper's HTTP/2 server drops the answer of a stream the
/// client reset, and it is not counted.
///
/// The ticket holds no `Arc<App>`: cloning one on every call passed its reference
/// count's cache line between the workers. The server that sends the answer counts it
/// with its own `App` (`into_sent`); hyper's HTTP/2 server, which takes the body
/// itself, is handed one (`counted_by`).
pub struct MeterTicket {
    pub key: CounterKey,
    /// The call's arrival (Unix seconds).
    pub at: i64,
}

impl MeterTicket {
    fn count(self, app: &App) {
        let key = self.key;
        app.counters.add(key, self.at, || {
            let account = app.mirror.account_by_index(key.account).map(|a| a.id().to_string());
            (
                account.unwrap_or_else(|| format!("unknown-account-{}", key.account)),
                app.catalog.name(crate::catalog::ActionId(key.action)).to_string(),
            )
        });
        app.metrics.billable_calls.inc();
    }
}

/// What the data listener answers with: one buffer, built here or read whole from the
/// upstream, and for a billable action the ticket that counts it. The count happens
/// when the server takes the bytes to send, never for an answer that is not billable.
/// A forwarded answer's header fields ride along as lines, not in the response's
/// `HeaderMap`: the HTTP/1.1 server writes them as they are, the HTTP/2 one moves them
/// into the map (`take_upstream_headers`).
pub struct ProxyBody {
    data: Option<Bytes>,
    ticket: Option<MeterTicket>,
    /// Where `ticket` is counted when the body is taken through `Body` (HTTP/2).
    counter: Option<Arc<App>>,
    upstream_headers: PassedHeaders,
}

impl ProxyBody {
    /// The same answer, counted by `ticket` when it is sent if it is billable (HTTP 200
    /// checked by the caller; here: a `Response` with no `Error`).
    pub fn metered(mut self, ticket: MeterTicket) -> Self {
        let mut scanner = BillableScanner::new();
        scanner.feed(self.data.as_deref().unwrap_or_default());
        if scanner.is_billable() {
            self.ticket = Some(ticket);
        }
        self
    }
}

impl ProxyBody {
    pub fn with_upstream_headers(mut self, headers: PassedHeaders) -> Self {
        self.upstream_headers = headers;
        self
    }

    /// The upstream's header fields, left empty here.
    pub fn take_upstream_headers(&mut self) -> PassedHeaders {
        std::mem::take(&mut self.upstream_headers)
    }

    /// The answer's bytes, taken to be sent (which counts the call in `app` if it is
    /// billable), and the upstream's header fields.
    pub fn into_sent(mut self, app: &App) -> (Bytes, PassedHeaders) {
        if let Some(ticket) = self.ticket.take() {
            ticket.count(app);
        }
        (self.data.take().unwrap_or_default(), self.upstream_headers)
    }

    /// The same body, counting its call in `app` when a server takes it through
    /// `Body` (hyper's HTTP/2). Only a billable answer keeps the reference.
    pub fn counted_by(mut self, app: &Arc<App>) -> Self {
        if self.ticket.is_some() {
            self.counter = Some(app.clone());
        }
        self
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody {
            data: (!bytes.is_empty()).then_some(bytes),
            ticket: None,
            counter: None,
            upstream_headers: PassedHeaders::default(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let data = this.data.take();
        if let Some(ticket) = this.ticket.take() {
            match &this.counter {
                Some(app) => ticket.count(app),
                // A server that takes bodies through `Body` must call `counted_by`.
                None => tracing::error!(
                    account = ticket.key.account,
                    action = ticket.key.action,
                    "a billable answer was sent by a server that does not count: not counted"
                ),
            }
        }
        Poll::Ready(data.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
