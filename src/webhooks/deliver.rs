//! The delivery worker, a background task of every `serve` process with endpoints
//! configured: it claims due events from the outbox under a lease (one worker sends a
//! given event at a time, whichever gateway it runs in), POSTs each, signed, to every
//! endpoint that has not accepted it yet, and records the outcome: delivered, or the
//! next attempt after an exponential backoff, or failed once the retry window is over.
//! At-least-once: a worker that dies mid-send leaves the lease to run out and another
//! sends again; receivers de-duplicate by event id. Must not write anything but the
//! outbox's delivery columns.

use super::sign;
use crate::clock::SharedClock;
use crate::config::WebhookConfig;
use crate::store::Store;
use crate::store::outbox::{Attempt, EventRecord};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Most bytes of an endpoint's error answer kept in `last_error`.
const ERROR_BODY_BYTES: usize = 200;

pub struct Deliverer {
    store: Arc<Store>,
    clock: SharedClock,
    config: WebhookConfig,
    secret: String,
    /// Names this worker's leases.
    holder: String,
    tls: tokio_rustls::TlsConnector,
    /// Where the outcomes are counted (`with_metrics`); none in a bare worker.
    metrics: Option<crate::metrics::WebhookMetrics>,
}

impl Deliverer {
    /// None when no endpoint is configured.
    pub fn new(store: Arc<Store>, clock: SharedClock, config: &WebhookConfig) -> anyhow::Result<Option<Self>> {
        let Some(secret) = config.secret.as_ref().filter(|_| !config.urls.is_empty()) else {
            return Ok(None);
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::new(crate::tls::client_config(None)?));
        Ok(Some(Self {
            store,
            clock,
            config: config.clone(),
            secret: secret.0.clone(),
            holder: format!("webhooks-{}", uuid::Uuid::new_v4().simple()),
            tls,
            metrics: None,
        }))
    }

    /// Counts deliveries, failed attempts and events given up on in `metrics`, and
    /// keeps its outbox gauges current after each round.
    pub fn with_metrics(mut self, metrics: crate::metrics::WebhookMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Delivers until `stop` turns true; an event in flight then is finished first.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(endpoints = self.config.urls.len(), "webhook delivery worker started");
        loop {
            if *stop.borrow() {
                return;
            }
            let delivered = match self.deliver_due().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the outbox; retrying");
                    0
                }
            };
            // A full batch means more may be due at once.
            if delivered as i64 >= self.config.batch_size {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One round: claims due events and attempts each. Returns how many were claimed.
    pub async fn deliver_due(&self) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now_unix();
        let events = self
            .store
            .claim_events(&self.holder, now, self.config.lease_seconds, self.config.batch_size)
            .await?;
        let claimed = events.len();
        let attempts = events.iter().map(|event| self.attempt(event));
        for result in futures_util::future::join_all(attempts).await {
            result?;
        }
        if let Some(metrics) = &self.metrics
            && claimed > 0
        {
            let (pending, oldest) = self.store.pending_events().await?;
            let now = self.clock.now_unix();
            metrics.events_pending.set(pending);
            metrics
                .oldest_pending_seconds
                .set(oldest.map_or(0, |created| (now - created).max(0)));
        }
        Ok(claimed)
    }

    async fn attempt(&self, event: &EventRecord) -> Result<(), crate::store::StoreError> {
        let mut delivered_to = event.delivered_to.clone();
        let mut errors = Vec::new();
        for url in &self.config.urls {
            if delivered_to.contains(url) {
                continue;
            }
            let timestamp = self.clock.now_unix();
            let sent = tokio::time::timeout(self.config.timeout, self.post(url, event, timestamp)).await;
            match sent {
                Ok(Ok(())) => delivered_to.push(url.clone()),
                Ok(Err(e)) => errors.push(format!("{url}: {e}")),
                Err(_) => errors.push(format!("{url}: no answer within {:?}", self.config.timeout)),
            }
        }
        let now = self.clock.now_unix();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let (status, next_attempt_at) = match &error {
            None => ("delivered", now),
            Some(_) if now >= event.retry_from + self.config.retry_for_seconds => ("failed", now),
            Some(_) => ("pending", now + self.backoff(event.attempts + 1)),
        };
        if let Some(metrics) = &self.metrics {
            match status {
                "delivered" => metrics.events_delivered.inc(),
                "failed" => {
                    metrics.attempts_failed.inc();
                    metrics.events_given_up.inc()
                }
                _ => metrics.attempts_failed.inc(),
            };
        }
        match status {
            "delivered" => tracing::debug!(id = %event.id, kind = %event.kind, "webhook delivered"),
            "failed" => tracing::error!(id = %event.id, kind = %event.kind, error = ?error,
                "webhook undeliverable: retries over; the operator can retry it from the admin API"),
            _ => tracing::warn!(id = %event.id, kind = %event.kind, error = ?error, next_attempt_at,
                "webhook delivery failed; will retry"),
        }
        let attempt = Attempt {
            status,
            next_attempt_at,
            error: error.as_deref(),
            delivered_to: &delivered_to,
        };
        if !self.store.finish_event(&event.id, &self.holder, now, attempt).await? {
            tracing::warn!(id = %event.id, "webhook lease ran out during the attempt; another worker owns the event");
        }
        Ok(())
    }

    /// The wait after the `attempt`-th failure: `initial · 2^(attempt-1)`, capped.
    pub fn backoff(&self, attempt: i64) -> i64 {
        backoff(
            self.config.initial_backoff_seconds,
            self.config.max_backoff_seconds,
            attempt,
        )
    }

    async fn post(&self, url: &str, event: &EventRecord, timestamp: i64) -> anyhow::Result<()> {
        let uri: http::Uri = url.parse()?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or_else(|| anyhow::anyhow!("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "ekyc-gateway-webhooks/1")
            .header("ekyc-event-id", &event.id)
            .header("ekyc-event-type", &event.kind)
            .header(
                sign::HEADER,
                sign::header_value(&self.secret, timestamp, event.payload.as_bytes()),
            )
            .body(Full::new(Bytes::from(event.payload.clone())))?;
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        tcp.set_nodelay(true)?;
        if https {
            let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
            let stream = self.tls.connect(name, tcp).await?;
            send(stream, request).await
        } else {
            send(tcp, request).await
        }
    }
}

pub fn backoff(initial: i64, max: i64, attempt: i64) -> i64 {
    let doublings = (attempt - 1).clamp(0, 40) as u32;
    initial.saturating_mul(1i64 << doublings).min(max)
}

/// One request on a fresh HTTP/1.1 connection: a 2xx answer is an acceptance.
async fn send<S>(stream: S, request: http::Request<Full<Bytes>>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    connection.abort();
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]).into_owned();
    anyhow::bail!("HTTP {status}: {text}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<i64> = (1..=8).map(|n| super::backoff(10, 300, n)).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(super::backoff(10, 3600, 1000), 3600, "no overflow");
    }
}
