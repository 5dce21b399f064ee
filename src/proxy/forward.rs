//! Phase 6 of the pipeline: forward a call to the eKYC API over a pooled keep-alive
//! HTTP/1.1 connection (`pool`; rustls for https), re-signed with the platform's
//! credentials. The client's `Authorization` and `X-TC-Token` never leave the gateway;
//! action, version, region, language and body bytes pass through untouched. Must not decide whether a call is
//! allowed or billable: earlier and later phases do.

use crate::config;
use crate::proxy::body::ProxyBody;
use crate::proxy::fields::{Known, RequestFields};
use crate::proxy::h1;
use crate::proxy::headers::connection_named;
use crate::proxy::pool::{PoolError, UpstreamPool};
use crate::tc3::{OutgoingCall, Signer};
use bytes::Bytes;
use http::{Response, request};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// `PoolError::Connect`, kept as the source.
    #[error("the upstream could not be reached: {0}")]
    Connect(#[source] PoolError),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// `PoolError::Protocol`, kept as the source.
    #[error("the upstream answer was malformed: {0}")]
    Protocol(#[source] PoolError),
    #[error("the upstream answer is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
}

/// How the forwarded call is signed: TC3 over the payload hash the client's request
/// was verified with, or the legacy v1 signature over the call's parameters.
pub enum Resign<'a> {
    Tc3 { payload_hash: &'a str },
    V1 { params: &'a crate::sigv1::Params },
}

/// Whether a header the client sent is left out of the upstream request: hop-by-hop
/// fields, the client's credentials (`Authorization`, `X-TC-Token`) and timestamp, and
/// those the forwarder writes itself (`Host`, `X-TC-Timestamp`) or that describe how
/// the client sent its body (`Content-Length`, written from the body; a 100-continue
/// wait would only stall a body that is sent whole).
fn left_out(known: Known) -> bool {
    known.is_hop_by_hop()
        || matches!(
            known,
            Known::Authorization
                | Known::XTcToken
                | Known::XTcTimestamp
                | Known::Host
                | Known::ContentLength
                | Known::Expect
        )
}

pub struct UpstreamClient {
    /// Keep-alive connections, idle per data-plane thread (see `pool`).
    pool: UpstreamPool,
    authority: http::uri::Authority,
    signer: Signer,
    /// The legacy v1 signature signs with the SecretKey itself.
    v1_secret_key: String,
    timeout: Duration,
    max_body_bytes: usize,
}

impl UpstreamClient {
    pub fn new(upstream: &config::Upstream, max_body_bytes: usize) -> anyhow::Result<Self> {
        // Written as they are into the upstream's `Authorization` line (`write_head`):
        // a space or a line break would corrupt the request head.
        for (what, value) in [
            ("the upstream SecretId", &upstream.credentials.secret_id),
            ("upstream.service", &upstream.service),
        ] {
            anyhow::ensure!(
                !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()),
                "{what} must be visible ASCII without spaces"
            );
        }
        Ok(Self {
            pool: UpstreamPool::new(upstream)?,
            authority: upstream.authority.clone(),
            signer: Signer::new(
                upstream.credentials.secret_id.clone(),
                upstream.credentials.secret_key.clone(),
                upstream.service.clone(),
            ),
            v1_secret_key: upstream.credentials.secret_key.clone(),
            timeout: upstream.timeout,
            max_body_bytes,
        })
    }

    /// The pool's connection counts, for the metrics.
    pub fn pool_gauges(&self) -> crate::metrics::PoolGauges {
        self.pool.gauges()
    }

    /// Sends the call, re-signed, and returns the upstream's whole answer. Its deadline
    /// runs from `started`.
    /// `payload_hash_hex` is the hash the client's request was (or would be) signed with.
    pub async fn forward(
        &self,
        parts: &request::Parts,
        fields: &RequestFields,
        body: Bytes,
        resign: Resign<'_>,
        now_unix: i64,
        started: std::time::Instant,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut target = std::borrow::Cow::Borrowed(path_and_query);
        let mut body = body;
        if let Resign::V1 { params } = resign {
            let path = parts.uri.path();
            let signed = crate::sigv1::resign(
                crate::sigv1::Target {
                    method: parts.method.as_str(),
                    host: self.authority.as_str(),
                    path,
                },
                params,
                self.signer.secret_id(),
                &self.v1_secret_key,
                now_unix,
                rand::random(),
            )
            .to_form();
            // The re-signed parameters are the call: the client's own query (on a POST)
            // does not travel beside them, so the upstream cannot act on another
            // `Action` than the one the gateway authorized and bills.
            if parts.method == http::Method::GET {
                target = std::borrow::Cow::Owned(format!("{path}?{signed}"));
            } else {
                target = std::borrow::Cow::Borrowed(path);
                body = Bytes::from(signed);
            }
        }
        let write_head = |out: &mut Vec<u8>| self.write_head(out, parts, fields, &target, resign, now_unix);
        let exchange = self.pool.exchange(
            &parts.method,
            write_head,
            &body,
            self.max_body_bytes,
            started,
            self.timeout,
        );
        let answer = match exchange.await {
            Err(PoolError::Timeout) => return Err(ForwardError::Timeout(self.timeout)),
            Err(e @ PoolError::Connect(_)) => return Err(ForwardError::Connect(e)),
            Err(e @ PoolError::Protocol(_)) => return Err(ForwardError::Protocol(e)),
            Err(PoolError::TooLarge) => {
                return Err(ForwardError::ResponseTooLarge {
                    limit: self.max_body_bytes,
                });
            }
            Ok(answer) => answer,
        };
        // The answer's header fields travel with its body, as lines (`PassedHeaders`).
        let mut response = Response::new(ProxyBody::from(answer.body).with_upstream_headers(answer.headers));
        *response.status_mut() = answer.status;
        Ok(response)
    }

    /// Writes the upstream request's head: the client's end-to-end headers, then `Host`
    /// and, for TC3, the platform's timestamp and signature. Written straight into the
    /// connection's buffer: no header map is built for the upstream.
    fn write_head(
        &self,
        out: &mut Vec<u8>,
        parts: &request::Parts,
        fields: &RequestFields,
        target: &str,
        resign: Resign<'_>,
        now_unix: i64,
    ) {
        h1::write_request_line(out, &parts.method, target);
        let named = connection_named(fields);
        let is_named = |name: &[u8]| named.iter().any(|token| token.eq_ignore_ascii_case(name));
        // A v1 call's action, version and region are its signed parameters: routing
        // headers beside them could name another action than the one authorized.
        let v1 = matches!(resign, Resign::V1 { .. });
        let leave_out = |known: Known| {
            left_out(known) || v1 && matches!(known, Known::XTcAction | Known::XTcVersion | Known::XTcRegion)
        };
        for (name, value, known) in fields.iter() {
            if !known.is_some_and(leave_out) && !is_named(name) {
                h1::write_header(out, name, value);
            }
        }
        h1::write_header(out, b"host", self.authority.as_str().as_bytes());
        if let Resign::Tc3 { payload_hash } = resign {
            h1::write_header(out, b"x-tc-timestamp", itoa::Buffer::new().format(now_unix).as_bytes());
            let call = OutgoingCall {
                method: parts.method.as_str(),
                query: target.split_once('?').map_or("", |(_, query)| query),
                // Signed only if sent: a client's `Connection: content-type` drops it.
                content_type: fields.get(Known::ContentType).filter(|_| !is_named(b"content-type")),
                host: self.authority.as_str(),
                payload_hash_hex: payload_hash,
                timestamp: now_unix,
            };
            out.extend_from_slice(b"authorization: ");
            self.signer.write_authorization(&call, out);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

pub type SharedUpstream = Arc<UpstreamClient>;
