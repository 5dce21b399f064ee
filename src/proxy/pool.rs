//! Upstream connections: HTTP/1.1 keep-alive connections to the one upstream, kept
//! idle per data-plane thread (see `workers`). Checking one out is a pop from a
//! thread-local list, with no lock, and the connection's I/O is driven by the thread
//! that uses it. A connection goes back to the list only once its answer has been read
//! to the end (`PooledConnection::release`); one dropped half-way is closed.
//! Must not retry a request: the upstream may have served (and billed) it.

use crate::config;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type Sender = SendRequest<Full<Bytes>>;

thread_local! {
    /// Idle connections of every pool used on this thread, tagged with the pool's id
    /// (tests run several gateways in one process).
    static IDLE: RefCell<Vec<(u64, Sender)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub enum PoolError {
    Connect(String),
    Protocol(String),
}

pub struct UpstreamPool {
    id: u64,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    max_idle: usize,
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
            max_idle: upstream.pool_max_idle_per_host,
        })
    }

    /// Sends `request` on an idle connection of this thread, or a new one. The
    /// connection comes back with the answer: release it when the body has ended.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, PooledConnection), PoolError> {
        let mut sender = match self.idle().await {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| PoolError::Protocol(error_chain(&e)))?;
        let connection = PooledConnection {
            pool: self.id,
            max_idle: self.max_idle,
            sender: Some(sender),
        };
        Ok((response, connection))
    }

    /// The most recently used idle connection still open.
    async fn idle(&self) -> Option<Sender> {
        loop {
            let mut sender = IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                let position = idle.iter().rposition(|(pool, _)| *pool == self.id)?;
                Some(idle.swap_remove(position).1)
            })?;
            if sender.is_closed() {
                continue;
            }
            // Ready again once the connection task has seen the previous answer end.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
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
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| PoolError::Connect("TLS handshake timed out".into()))?
                    .map_err(|e| PoolError::Connect(format!("TLS handshake: {e}")))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<Sender, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| PoolError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A connection whose answer is being read. `release` when the body has ended puts it
/// back for the next call; dropping it closes it.
pub struct PooledConnection {
    pool: u64,
    max_idle: usize,
    sender: Option<Sender>,
}

impl PooledConnection {
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                if idle.iter().filter(|(pool, _)| *pool == self.pool).count() < self.max_idle {
                    idle.push((self.pool, sender));
                }
            });
        }
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
