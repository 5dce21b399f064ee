//! Listeners and connections: the one entry point `run(listeners, config, shutdown)`
//! that `main`, `demo` and the tests all use. Accepts on the data and admin listeners,
//! terminates TLS (rustls), speaks HTTP/1.1 and HTTP/2 on one port (h2c by prior
//! knowledge, h2 by ALPN), and shuts down gracefully: stop accepting, let in-flight
//! requests finish within the grace period, then run the shutdown hooks. The data
//! listener's HTTP/1.1 is our own (`http1`); its HTTP/2 and the admin listener are
//! hyper's. Must not contain request logic: requests go to `proxy::handle` or
//! `admin::handle`.

pub mod http1;

use crate::app::App;
use crate::clock::SystemClock;
use crate::config::{Config, Limits};
use crate::proxy::plane::DataPlane;
use crate::workers::Workers;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::proxy::body::BoxError;

/// The two bound sockets the gateway serves on.
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(data: SocketAddr, admin: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            data: TcpListener::bind(data).await?,
            admin: TcpListener::bind(admin).await?,
        })
    }
}

/// Builds the app from `config` on the system clock and serves until `shutdown` resolves.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let app = App::new(config, Arc::new(SystemClock)).await?;
    serve(app, listeners, shutdown).await
}

/// Serves an already built app (tests use this to inject a clock or read metrics).
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = match &app.config.tls {
        Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(&files.cert, &files.key)?)),
        None => None,
    };
    raise_open_file_limit(app.config.limits.max_connections);
    let builder = Arc::new(http_builder(&app.config.limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(sync) = app.take_cache_sync() {
        tokio::spawn(sync.run(stop_rx.clone()));
    } else {
        tokio::spawn(reload_from_store(app.clone(), stop_rx.clone()));
    }
    tokio::spawn(crate::meter::flush::run(
        app.clone(),
        app.config.meter.flush_interval,
        app.config.meter.flush_max_rows_per_second,
        stop_rx.clone(),
    ));
    // Its first check runs before the listeners accept: an account that cannot pay is
    // refused from the first call.
    if let Err(e) = crate::billing::credit::refresh(&app).await {
        tracing::warn!(error = %e, "first credit check failed; calls are not refused for credit until one succeeds");
    }
    tokio::spawn(crate::billing::credit::run(
        app.clone(),
        app.config.credit.check_interval,
        stop_rx.clone(),
    ));
    if app.config.scheduler.enabled {
        let scheduler = crate::billing::scheduler::Scheduler::new(app.clone());
        tokio::spawn(scheduler.run(stop_rx.clone()));
    }
    // Every gateway sweeps, scheduler or not: a due date passes whether or not this
    // gateway bills.
    tokio::spawn(crate::billing::due::DueSweep::new(app.clone()).run(stop_rx.clone()));
    if let Some(deliverer) =
        crate::webhooks::deliver::Deliverer::new(app.store.clone(), app.clock.clone(), &app.config.webhooks)?
    {
        let deliverer = deliverer.with_metrics(app.plane.metrics.webhooks.clone());
        tokio::spawn(deliverer.run(stop_rx.clone()));
    }
    let data_graceful = Arc::new(GracefulShutdown::new());
    let admin_graceful = Arc::new(GracefulShutdown::new());

    tracing::info!(
        data = %listeners.data.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        tls = tls.is_some(),
        upstream = %app.plane.upstream.authority(),
        "ekyc-gateway serving"
    );

    let workers = Arc::new(Workers::start(
        crate::workers::thread_count(app.config.worker_threads),
        app.config.pin_worker_threads,
    )?);
    // Off loopback the admin listener speaks TLS only (config refuses it without).
    let admin_tls = match listeners.admin.local_addr()?.ip().is_loopback() {
        true => None,
        false => tls.clone(),
    };
    let data_listener = DataListener {
        plane: app.plane.clone(),
        http2: Arc::new(http2_builder(&app.config.limits)),
        stop: stop_rx.clone(),
    };
    let data_loop = accept_loop(
        listeners.data,
        Some(app.config.limits.max_connections),
        Some(workers.clone()),
        tls,
        data_graceful.clone(),
        app.plane.metrics.data_connections.clone(),
        app.config.limits.header_read_timeout,
        stop_rx.clone(),
        data_listener,
    );
    let admin_app = app.clone();
    let admin_loop = accept_loop(
        listeners.admin,
        None,
        None,
        admin_tls,
        admin_graceful.clone(),
        app.plane.metrics.admin_connections.clone(),
        app.config.limits.header_read_timeout,
        stop_rx,
        HyperServer {
            builder,
            handler: move |request| {
                let app = admin_app.clone();
                async move { Ok::<_, Infallible>(crate::admin::handle(&app, request).await) }
            },
        },
    );
    let data_task = tokio::spawn(data_loop);
    let admin_task = tokio::spawn(admin_loop);

    shutdown.await;
    tracing::info!(grace = ?app.config.shutdown_grace, "shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    let _ = data_task.await;
    let _ = admin_task.await;
    let drained = tokio::time::timeout(app.config.shutdown_grace, async {
        // The accept loops have returned, so these are the last references.
        if let Ok(graceful) = Arc::try_unwrap(data_graceful) {
            graceful.shutdown().await;
        }
        if let Ok(graceful) = Arc::try_unwrap(admin_graceful) {
            graceful.shutdown().await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over with requests still in flight; closing them");
    }
    app.run_shutdown_hooks().await;
    if let Ok(workers) = Arc::try_unwrap(workers) {
        tokio::task::spawn_blocking(move || workers.stop()).await?;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Raises the soft open-file limit to the hard one, as nginx's `worker_rlimit_nofile`
/// and Go's runtime do: Debian's default soft limit (1,024) would refuse connections
/// long before `limits.max_connections` (default 10,000) is reached.
pub fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // Upstream connections, the stores and the journal need descriptors too.
    let needed = max_connections as u64 + 1024;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "the open-file limit is below limits.max_connections + 1024: raise it (ulimit -n, LimitNOFILE=) or lower the cap"
        );
    }
}

/// The HTTP/2 settings of every listener. A macro because hyper's HTTP/2-only builder
/// and the HTTP/2 half of its auto builder are different types with the same methods.
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_header_list_size($limits.max_header_bytes as u32)
            .max_concurrent_streams(256)
            // Rapid reset (CVE-2023-44487): more than 20 streams reset by the client
            // before we accepted them, or 1024 we had to reset, and the connection gets
            // GOAWAY ENHANCE_YOUR_CALM. Set here so a change of library default cannot
            // drop them.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
    };
}

/// hyper's HTTP/1.1 + HTTP/2 server settings: the admin listener and the simulator.
pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    http2_settings!(builder.http2(), limits);
    builder
}

/// The data listener's HTTP/2 (its HTTP/1.1 is `http1`'s).
fn http2_builder(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2_settings!(&mut builder, limits);
    builder
}

/// What a listener does with an accepted connection, once TLS (if any) is set up.
pub(crate) trait ServeConnection: Clone + Send + Sync + 'static {
    /// `h2_by_alpn`: the TLS handshake chose HTTP/2.
    fn serve<S>(
        self,
        stream: S,
        h2_by_alpn: bool,
        watcher: Watcher,
    ) -> impl Future<Output = Result<(), BoxError>> + Send
    where
        S: http1::ClientStream + 'static;
}

/// hyper's server (HTTP/1.1, or HTTP/2 by its preface) calling `handler`.
#[derive(Clone)]
pub(crate) struct HyperServer<F> {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub handler: F,
}

impl<F, Fut, B> ServeConnection for HyperServer<F>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn serve<S>(self, stream: S, _h2_by_alpn: bool, watcher: Watcher) -> Result<(), BoxError>
    where
        S: http1::ClientStream + 'static,
    {
        let service = hyper::service::service_fn(self.handler);
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        watcher.watch(connection).await
    }
}

/// The data listener: our HTTP/1.1 server, hyper's HTTP/2, both into `proxy::handle`.
#[derive(Clone)]
struct DataListener {
    plane: Arc<DataPlane>,
    http2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
}

impl DataListener {
    async fn serve_http2<S>(self, stream: S, watcher: Watcher) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let plane = self.plane;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let plane = plane.clone();
            async move {
                let (parts, body) = request.into_parts();
                let fields = crate::proxy::fields::RequestFields::from_header_map(&parts.headers);
                // Per request: hyper runs an HTTP/2 connection's requests as separate tasks.
                let mut callers = crate::proxy::auth::CallerCache::default();
                let answer = crate::proxy::handle(&plane, parts, &fields, &mut callers, body).await;
                let mut response = answer.respond(&plane);
                let upstream_headers = response.body_mut().take_upstream_headers();
                upstream_headers.append_to(response.headers_mut());
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.http2.serve_connection(TokioIo::new(stream), service);
        Ok(watcher.watch(connection).await?)
    }
}

impl ServeConnection for DataListener {
    async fn serve<S>(self, stream: S, h2_by_alpn: bool, watcher: Watcher) -> Result<(), BoxError>
    where
        S: http1::ClientStream + 'static,
    {
        // HTTP/2 boxed, as TLS is in `accept_loop`: unboxed, hyper's connection state
        // would be part of every HTTP/1.1 connection's task.
        if h2_by_alpn {
            return Box::pin(self.serve_http2(stream, watcher)).await;
        }
        // The watcher is held while HTTP/1.1 is served so a graceful shutdown waits for
        // this connection; `http1` sees the shutdown itself through `stop`.
        match http1::serve(stream, self.plane.clone(), self.stop.clone()).await {
            Some(rewound) => Box::pin(self.serve_http2(rewound, watcher)).await,
            None => Ok(()),
        }
    }
}

/// Accepts connections until `stop` turns true, serving each on its own task.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_loop<C: ServeConnection>(
    listener: TcpListener,
    max_connections: Option<usize>,
    workers: Option<Arc<Workers>>,
    tls: Option<TlsAcceptor>,
    graceful: Arc<GracefulShutdown>,
    open_connections: Gauge,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    server: C,
) {
    loop {
        let (stream, peer) = tokio::select! {
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if max_connections.is_some_and(|cap| open_connections.get() >= cap as i64) {
            // Closed at once: memory stays bounded whatever a client opens.
            tracing::debug!(%peer, "connection cap reached: closing a new connection");
            drop(stream);
            continue;
        }
        open_connections.inc();
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let server = server.clone();
        let gauge = open_connections.clone();
        let serve = move |stream: TcpStream| async move {
            let result = match tls {
                None => server.serve(stream, false, watcher).await,
                // Boxed: a TLS session's state is kilobytes, and every plain connection's
                // task would otherwise reserve room for it (15 KiB a task, not 2.6).
                Some(acceptor) => {
                    Box::pin(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                let h2_by_alpn = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                server.serve(tls_stream, h2_by_alpn, watcher).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        }
                    })
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            gauge.dec();
        };
        match &workers {
            Some(workers) => {
                // The socket moves to the worker's runtime: its reactor must own it.
                let gauge = open_connections.clone();
                match stream.into_std() {
                    Ok(stream) => workers.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => serve(stream).await,
                            Err(e) => {
                                gauge.dec();
                                tracing::warn!(error = %e, "could not hand a connection to a worker")
                            }
                        }
                    }),
                    Err(e) => {
                        open_connections.dec();
                        tracing::warn!(error = %e, "could not hand a connection to a worker")
                    }
                }
            }
            None => {
                tokio::spawn(serve(stream));
            }
        }
    }
}

/// Single node (no Redis): other processes on the same store (`billing run`, a second
/// admin) change accounts behind this one's back, so the mirror is reloaded from the
/// store every `state.resync_interval`.
async fn reload_from_store(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(app.config.state.resync_interval) => {}
            _ = stop.changed() => return,
        }
        match (app.store.all_accounts().await, app.store.all_credentials().await) {
            (Ok(accounts), Ok(credentials)) => {
                app.mirror.apply_snapshot(&accounts, &credentials);
                drop((accounts, credentials));
                crate::state::return_freed_memory();
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "reloading account state from the store failed; keeping the last one")
            }
        }
    }
}
