//! Phase 1 of the pipeline (bound the request) and the body type the proxy answers with.
//! Reads a request body under a size cap and a deadline, and carries answers (read
//! whole, under the same cap, by `pool`) to the client. Must not change body bytes,
//! nor count anything: counting is the last phase (`proxy::respond`).

use crate::proxy::fields::{Known, RequestFields};
use crate::proxy::headers::PassedHeaders;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::pin::Pin;
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
    let declared = fields
        .get(Known::ContentLength)
        .and_then(crate::proxy::h1::parse_content_length);
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

/// What the data listener answers with: one buffer, built here or read whole from the
/// upstream. A forwarded answer's header fields ride along as lines, not in the
/// response's `HeaderMap`: the HTTP/1.1 server writes them as they are, the HTTP/2 one
/// moves them into the map (`take_upstream_headers`). Counting a billable answer is
/// not the body's business: it happens in the last phase (`proxy::respond`).
pub struct ProxyBody {
    data: Option<Bytes>,
    upstream_headers: PassedHeaders,
}

impl ProxyBody {
    pub fn with_upstream_headers(mut self, headers: PassedHeaders) -> Self {
        self.upstream_headers = headers;
        self
    }

    /// The answer's bytes, as they will be sent.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }

    /// The upstream's header fields, left empty here.
    pub fn take_upstream_headers(&mut self) -> PassedHeaders {
        std::mem::take(&mut self.upstream_headers)
    }

    /// The answer's bytes and the upstream's header fields, taken to be sent.
    pub fn into_sent(mut self) -> (Bytes, PassedHeaders) {
        (self.data.take().unwrap_or_default(), self.upstream_headers)
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody {
            data: (!bytes.is_empty()).then_some(bytes),
            upstream_headers: PassedHeaders::default(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
