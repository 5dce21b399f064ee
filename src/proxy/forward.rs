//! Phase 6 of the pipeline: forward a call to the eKYC API over a pooled keep-alive
//! HTTP/1.1 connection (`pool`; rustls for https), re-signed with the platform's
//! credentials. The client's
//! `Authorization` and `X-TC-Token` never leave the gateway; action, version, region,
//! language and body bytes pass through untouched. Must not decide whether a call is
//! allowed or billable: earlier and later phases do.

use crate::config;
use crate::proxy::body::ProxyBody;
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::pool::{PoolError, UpstreamPool, UpstreamRequest};
use crate::tc3::{SignedRequest, Signer};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header, request};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the upstream could not be reached: {0}")]
    Connect(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream answer was malformed: {0}")]
    Protocol(String),
    #[error("the upstream answer is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
}

/// How the forwarded call is signed: TC3 over the payload hash the client's request
/// was verified with, or the legacy v1 signature over the call's parameters.
pub enum Resign<'a> {
    Tc3 { payload_hash: &'a str },
    V1 { params: &'a crate::sigv1::Params },
}

/// Headers the client sent that must never reach the upstream.
const CLIENT_ONLY: [&str; 3] = ["authorization", "x-tc-token", "x-tc-timestamp"];

pub struct UpstreamClient {
    /// Keep-alive connections, idle per data-plane thread (see `pool`).
    pool: UpstreamPool,
    authority: http::uri::Authority,
    host_header: HeaderValue,
    signer: Signer,
    /// The legacy v1 signature signs with the SecretKey itself.
    v1_secret_key: String,
    timeout: Duration,
    max_body_bytes: usize,
}

impl UpstreamClient {
    pub fn new(upstream: &config::Upstream, max_body_bytes: usize) -> anyhow::Result<Self> {
        Ok(Self {
            pool: UpstreamPool::new(upstream)?,
            authority: upstream.authority.clone(),
            host_header: HeaderValue::from_str(upstream.authority.as_str())?,
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

    /// Sends the call and returns the upstream's answer, its body streaming under the cap.
    /// `payload_hash_hex` is the hash the client's request was (or would be) signed with.
    /// The client's headers are moved into the upstream request: `parts.headers` is
    /// empty afterwards.
    pub async fn forward(
        &self,
        parts: &mut request::Parts,
        body: Bytes,
        resign: Resign<'_>,
        now_unix: i64,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (target, headers, body) = self.upstream_request(parts, body, resign, now_unix)?;
        let request = UpstreamRequest {
            method: &parts.method,
            target: target.as_str(),
            headers: &headers,
            body: &body,
        };
        let answer = match tokio::time::timeout(self.timeout, self.pool.exchange(&request, self.max_body_bytes)).await {
            Err(_) => return Err(ForwardError::Timeout(self.timeout)),
            Ok(Err(PoolError::Connect(e))) => return Err(ForwardError::Connect(e)),
            Ok(Err(PoolError::Protocol(e))) => return Err(ForwardError::Protocol(e)),
            Ok(Err(PoolError::TooLarge)) => {
                return Err(ForwardError::ResponseTooLarge {
                    limit: self.max_body_bytes,
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let mut headers = answer.headers;
        strip_hop_by_hop(&mut headers);
        // The answer is whole: the server states its length from the body.
        headers.remove(header::CONTENT_LENGTH);
        let mut response = Response::new(ProxyBody::from(answer.body));
        *response.status_mut() = answer.status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    fn upstream_request(
        &self,
        parts: &mut request::Parts,
        body: Bytes,
        resign: Resign<'_>,
        now_unix: i64,
    ) -> Result<(http::uri::PathAndQuery, HeaderMap, Bytes), ForwardError> {
        let mut path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let mut body = body;
        if let Resign::V1 { params } = resign {
            let target = crate::sigv1::Target {
                method: parts.method.as_str(),
                host: self.authority.as_str(),
                path: path_and_query.path(),
            };
            let signed = crate::sigv1::resign(
                target,
                params,
                self.signer.secret_id(),
                &self.v1_secret_key,
                now_unix,
                rand::random(),
            )
            .to_form();
            if parts.method == http::Method::GET {
                path_and_query = format!("{}?{signed}", path_and_query.path())
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| ForwardError::Protocol(e.to_string()))?;
            } else {
                body = Bytes::from(signed);
            }
        }
        let query = path_and_query.query().unwrap_or("");

        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        for name in CLIENT_ONLY {
            headers.remove(name);
        }
        headers.remove(header::CONTENT_LENGTH);
        // The body is sent whole with its length; a 100-continue wait would only stall.
        headers.remove(header::EXPECT);
        headers.insert(header::HOST, self.host_header.clone());
        if let Resign::Tc3 { payload_hash } = resign {
            headers.insert("x-tc-timestamp", HeaderValue::from(now_unix));
            let authorization = self.signer.authorization(&SignedRequest {
                method: parts.method.as_str(),
                query,
                headers: &headers,
                payload_hash_hex: payload_hash,
                timestamp: now_unix,
            });
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&authorization).map_err(|e| ForwardError::Protocol(e.to_string()))?,
            );
        }
        // Origin form: the connection is to the upstream already; `Host` names it.
        Ok((path_and_query, headers, body))
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

pub type SharedUpstream = Arc<UpstreamClient>;
