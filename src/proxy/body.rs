//! Phase 1 of the pipeline (bound the request) and the body type the proxy answers with.
//! Reads a request body under a size cap and a deadline, and wraps upstream answers so
//! they stream through under the same cap. Must not inspect or change body bytes.

use crate::app::App;
use crate::meter::CounterKey;
use crate::meter::billable::BillableScanner;
use crate::proxy::pool::PooledConnection;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
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

/// Reads the whole request body, refusing more than `limit` bytes. The declared
/// `Content-Length` is checked first so an oversized upload is refused before it is read.
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        drain_for_lingering_close(headers, body, limit, deadline).await;
        return Err(BodyError::TooLarge { limit });
    }
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}

/// Reads and discards an oversized upload (bounded in bytes and time) before answering,
/// so the client reads our error instead of a connection reset. A client that asked
/// `Expect: 100-continue` is answered at once: it has not sent the body.
async fn drain_for_lingering_close(headers: &HeaderMap, body: Incoming, limit: usize, deadline: Duration) {
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
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

/// Phase 7 (meter): counts the call once its answer has streamed through to the end
/// and was found billable. A failed or cut answer is never counted.
pub struct MeterTicket {
    pub app: Arc<App>,
    pub key: CounterKey,
    /// The call's arrival (Unix seconds).
    pub at: i64,
}

impl MeterTicket {
    fn count(self) {
        let app = &self.app;
        let key = self.key;
        app.counters.add(key, self.at, || {
            let account = app.mirror.account_by_index(key.account).map(|a| a.id().to_string());
            (
                account.unwrap_or_else(|| format!("unknown-account-{}", key.account)),
                app.catalog.name(crate::catalog::ActionId(key.action)).to_string(),
            )
        });
        self.app.metrics.billable_calls.inc();
    }
}

pin_project_lite::pin_project! {
    /// What the data listener answers with: a locally built body, or the upstream's
    /// body streamed through under the response size cap (and, for billable actions,
    /// scanned on the way to decide whether to count it).
    #[project = ProxyBodyProjection]
    pub enum ProxyBody {
        Local { #[pin] body: Full<Bytes> },
        Upstream { #[pin] body: Limited<Incoming>, connection: Option<PooledConnection> },
        Metered {
            #[pin] body: Limited<Incoming>,
            connection: Option<PooledConnection>,
            scanner: BillableScanner,
            ticket: Option<MeterTicket>,
        },
    }
}

impl ProxyBody {
    /// The upstream's answer; `connection` goes back to the pool once it has ended.
    pub fn upstream(body: Incoming, limit: usize, connection: PooledConnection) -> Self {
        let ended = body.is_end_stream();
        let mut connection = Some(connection);
        if ended {
            release(&mut connection);
        }
        ProxyBody::Upstream {
            body: Limited::new(body, limit),
            connection,
        }
    }

    /// The same upstream answer, counted by `ticket` if it turns out billable.
    pub fn metered(self, ticket: MeterTicket) -> Self {
        match self {
            ProxyBody::Upstream { body, connection } => ProxyBody::Metered {
                body,
                connection,
                scanner: BillableScanner::new(),
                ticket: Some(ticket),
            },
            other => other,
        }
    }
}

/// The upstream's answer was read to its end without error: its connection is reusable.
fn answer_ended(polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>, end_stream: bool) -> bool {
    match polled {
        Poll::Ready(None) => true,
        Poll::Ready(Some(Ok(_))) => end_stream,
        _ => false,
    }
}

fn release(connection: &mut Option<PooledConnection>) {
    if let Some(connection) = connection.take() {
        connection.release();
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Local { body: Full::new(bytes) }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProjection::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
            ProxyBodyProjection::Upstream { mut body, connection } => {
                let polled = body.as_mut().poll_frame(cx);
                if answer_ended(&polled, body.is_end_stream()) {
                    release(connection);
                }
                polled
            }
            ProxyBodyProjection::Metered {
                mut body,
                connection,
                scanner,
                ticket,
            } => {
                let polled = body.as_mut().poll_frame(cx);
                if answer_ended(&polled, body.is_end_stream()) {
                    release(connection);
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            scanner.feed(data);
                        }
                        // The server may stop polling once the body says it has ended.
                        if body.is_end_stream()
                            && scanner.is_billable()
                            && let Some(ticket) = ticket.take()
                        {
                            ticket.count();
                        }
                    }
                    Poll::Ready(None) => {
                        if scanner.is_billable()
                            && let Some(ticket) = ticket.take()
                        {
                            ticket.count();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *ticket = None,
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local { body } => body.is_end_stream(),
            ProxyBody::Upstream { body, .. } | ProxyBody::Metered { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local { body } => body.size_hint(),
            ProxyBody::Upstream { body, .. } | ProxyBody::Metered { body, .. } => body.size_hint(),
        }
    }
}
