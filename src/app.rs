//! The one shared application state, built once from the `Config` and handed to every
//! listener and background task as an `Arc`. No global state lives anywhere else.
//! Building it connects to the billing store and loads the state mirror, so a gateway
//! never serves before it knows its accounts. Must not bind sockets: `server` does that.
//!
//! The control plane (admin API, usage flush, state sync, billing) holds the `App`; the
//! data plane holds only its `plane` (`proxy::plane::DataPlane`), which has no path to
//! the store: tenant actions reach it through `tenant_desk`.

use crate::catalog::Catalog;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::meter::flush::Flusher;
use crate::meter::journal::Journal;
use crate::meter::{Counters, SLOT_HEADROOM};
use crate::metrics::Metrics;
use crate::proxy::access_log::AccessLogWriter;
use crate::proxy::forward::UpstreamClient;
use crate::proxy::plane::{DataPlane, PlaneSettings};
use crate::proxy::ratelimit::RateLimits;
use crate::state::mirror::StateMirror;
use crate::state::redis::{CacheSync, RedisEndpoint, RedisPublisher};
use crate::state::{Freshness, LocalPublisher, StatePublisher};
use crate::store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type ShutdownHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub struct App {
    pub config: Config,
    pub clock: SharedClock,
    pub store: Arc<Store>,
    pub mirror: Arc<StateMirror>,
    pub publisher: Arc<dyn StatePublisher>,
    pub freshness: Arc<Freshness>,
    pub flusher: Flusher,
    /// What the data listener serves with; also where the control plane reads the
    /// metrics and counters.
    pub plane: Arc<DataPlane>,
    cache_sync: Mutex<Option<CacheSync>>,
    shutdown_hooks: Mutex<Vec<ShutdownHook>>,
    /// The access log's writer thread, finished after the last request is answered.
    access_log_writer: Mutex<Option<AccessLogWriter>>,
}

impl App {
    pub async fn new(config: Config, clock: SharedClock) -> anyhow::Result<Arc<Self>> {
        let catalog = Catalog::new(&config.actions);
        let upstream = UpstreamClient::new(&config.upstream, config.limits.max_body_bytes)?;
        let mut metrics = Metrics::new(&catalog);
        metrics.watch_pool(upstream.pool_gauges());
        metrics.usage_last_flush_timestamp_seconds.set(clock.now_unix());
        let (access_log, access_log_writer) =
            crate::proxy::access_log::start(&config.access_log, metrics.access_log_dropped.clone())
                .map_err(|e| anyhow::anyhow!("access_log.path: {e}"))?;
        let rate_limits = RateLimits::new(config.default_rate_limit_qps, &config.actions);
        let store = Arc::new(Store::open(&config.store_url, config.store_migrate_url.as_deref()).await?);
        let mirror = Arc::new(StateMirror::new(config.master_key.clone()));
        let (publisher, freshness, cache_sync): (Arc<dyn StatePublisher>, _, _) = match &config.state.redis {
            None => {
                let failed = mirror.apply_snapshot(&store.all_accounts().await?, &store.all_credentials().await?);
                crate::state::return_freed_memory();
                anyhow::ensure!(
                    failed == 0,
                    "{failed} credentials could not be opened with EKYC_MASTER_KEY: is it the key they were sealed with?"
                );
                let publisher = LocalPublisher { mirror: mirror.clone() };
                (Arc::new(publisher), Arc::new(Freshness::always_fresh()), None)
            }
            Some(target) => {
                let freshness = Arc::new(Freshness::never_synced());
                let sync = CacheSync {
                    endpoint: RedisEndpoint::new(target).map_err(|e| anyhow::anyhow!("[state]: {e}"))?,
                    store: store.clone(),
                    mirror: mirror.clone(),
                    freshness: freshness.clone(),
                    clock: clock.clone(),
                    resync_interval: config.state.resync_interval,
                    store_patience: crate::store::Patience::new(config.store_timeout),
                    resyncs_read: metrics.state_resyncs_read.clone(),
                    resyncs_skipped: metrics.state_resyncs_skipped.clone(),
                    initial_generations: Default::default(),
                };
                if let Err(e) = sync.initial_load().await {
                    // Redis down at start: serve from the source of truth until it returns.
                    tracing::warn!(error = %e, "state cache: Redis unreachable at start; loading from the billing store");
                    mirror.apply_snapshot(&store.all_accounts().await?, &store.all_credentials().await?);
                    crate::state::return_freed_memory();
                    freshness.mark_synced(clock.now_unix());
                }
                let publisher =
                    RedisPublisher::new(target, mirror.clone()).map_err(|e| anyhow::anyhow!("[state]: {e}"))?;
                (Arc::new(publisher) as Arc<dyn StatePublisher>, freshness, Some(sync))
            }
        };
        let billable = config.actions.iter().map(|a| a.billable).collect();
        let max_keys = config.meter.max_pending_keys;
        let journal = Journal::open(
            &config.meter.journal_path,
            max_keys as u32 + SLOT_HEADROOM,
            &config.meter.instance_id,
        )?;
        let counters = Counters::new(journal, max_keys);
        tracing::info!(
            instance_id = counters.journal().instance_id(),
            journal = %config.meter.journal_path.display(),
            carried_over = counters.distinct_keys(),
            "meter journal open"
        );
        let app = Arc::new_cyclic(|app| {
            let plane = DataPlane {
                clock: clock.clone(),
                catalog,
                upstream,
                metrics,
                rate_limits,
                mirror: mirror.clone(),
                freshness: freshness.clone(),
                counters,
                billable,
                credit_prices: (0..config.actions.len()).map(|_| Default::default()).collect(),
                settings: PlaneSettings::of(&config),
                prices: Arc::new(config.prices.clone()),
                tenants: Arc::new(crate::tenant_desk::StoreDesk::new(app.clone())),
                access_log,
            };
            Self {
                flusher: Flusher::new(config.store_timeout),
                config,
                clock,
                store,
                mirror,
                publisher,
                freshness,
                plane: Arc::new(plane),
                cache_sync: Mutex::new(cache_sync),
                shutdown_hooks: Mutex::new(Vec::new()),
                access_log_writer: Mutex::new(access_log_writer),
            }
        });
        // The last flush runs after in-flight requests have finished (and been counted).
        let weak = Arc::downgrade(&app);
        app.on_shutdown(Box::new(move || {
            Box::pin(async move {
                if let Some(app) = weak.upgrade() {
                    app.final_flush().await;
                    let writer = app.access_log_writer.lock().ok().and_then(|mut w| w.take());
                    if let Some(writer) = writer {
                        // Joins a thread that only drains a queue: blocking briefly here
                        // is the point (every line of the run is written).
                        tokio::task::spawn_blocking(move || writer.finish()).await.ok();
                    }
                }
            })
        }));
        Ok(app)
    }

    /// Moves the counted calls into the billing store (one batch, retried until acknowledged).
    pub async fn flush_usage(&self) -> anyhow::Result<crate::meter::flush::Flushed> {
        let now = self.clock.now_unix();
        let day = crate::meter::Month::day_of(now, self.config.meter.billing_utc_offset_seconds).unwrap_or_default();
        let result = self
            .flusher
            .flush_once(&self.plane.counters, &self.store, now, &day)
            .await;
        match &result {
            Ok(_) => {
                self.plane.metrics.flush_batches_ok.inc();
                self.plane.metrics.usage_last_flush_timestamp_seconds.set(now);
            }
            Err(_) => {
                self.plane.metrics.flush_batches_failed.inc();
            }
        }
        result
    }

    /// Flushes until nothing is left, retrying a failing store for up to the grace period.
    async fn final_flush(&self) {
        let deadline = std::time::Instant::now() + self.config.shutdown_grace.max(std::time::Duration::from_secs(5));
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match self.flush_usage().await {
                Ok(flushed) if flushed.calls == 0 && self.plane.counters.pending() == 0 => {
                    tracing::info!("final usage flush done");
                    return;
                }
                Ok(_) => continue,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "final usage flush failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        calls = self.plane.counters.pending(),
                        "final usage flush gave up: these calls stay in the meter journal and are sent at the next start"
                    );
                    return;
                }
            }
        }
    }

    /// The background task keeping the mirror in sync with Redis, taken once by `server`.
    pub(crate) fn take_cache_sync(&self) -> Option<CacheSync> {
        self.cache_sync.lock().expect("poisoned").take()
    }

    /// Registers work to run once in-flight requests have finished (e.g. the final
    /// counter flush). Hooks run in registration order.
    pub fn on_shutdown(&self, hook: ShutdownHook) {
        self.shutdown_hooks.lock().expect("hook list poisoned").push(hook);
    }

    pub(crate) async fn run_shutdown_hooks(&self) {
        let hooks = std::mem::take(&mut *self.shutdown_hooks.lock().expect("hook list poisoned"));
        for hook in hooks {
            hook().await;
        }
    }
}
