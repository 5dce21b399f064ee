//! The data plane's handle: everything a request may touch while it is served, built
//! once by `App` and shared by every connection. It holds the in-memory parts (state
//! mirror, catalog, rate limits, usage counters, metrics), the upstream client, the
//! settings the pipeline reads, and the tenant desk through which tenant actions ask
//! the control plane. Must not hold a path to the billing store, the state publisher
//! or the configuration as a whole: the data plane never touches the store.

use crate::billing::pricing::PriceBook;
use crate::catalog::{ActionId, Catalog};
use crate::clock::SharedClock;
use crate::config::{Config, Limits};
use crate::meter::Counters;
use crate::metrics::Metrics;
use crate::proxy::forward::UpstreamClient;
use crate::proxy::ratelimit::RateLimits;
use crate::proxy::tenant::TenantDesk;
use crate::state::mirror::StateMirror;
use crate::state::{Freshness, StalePolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub struct DataPlane {
    pub clock: SharedClock,
    pub catalog: Catalog,
    pub upstream: UpstreamClient,
    pub metrics: Metrics,
    pub rate_limits: RateLimits,
    pub mirror: Arc<StateMirror>,
    pub freshness: Arc<Freshness>,
    pub counters: Counters,
    /// Per action id: whether its successful calls are counted.
    pub billable: Vec<bool>,
    /// Per action id: the most one call costs now (micro-units), set by credit control
    /// (`billing::credit`) and compared with the account's credit headroom.
    pub credit_prices: Box<[AtomicI64]>,
    pub settings: PlaneSettings,
    /// The configured prices (immutable, like the catalog): `DescribePriceList` answers
    /// from here without a turn at the store.
    pub prices: Arc<PriceBook>,
    /// Answers tenant actions from the control plane (bounded; see `tenant`).
    pub tenants: Arc<dyn TenantDesk>,
    /// One line per call, when configured (`access_log`).
    pub access_log: super::access_log::AccessLog,
}

impl DataPlane {
    /// Whether the account can pay for one more call of `action` (credit control).
    #[inline]
    pub fn credit_covers(&self, account: &crate::state::mirror::AccountEntry, action: ActionId) -> bool {
        account.credit_covers(self.credit_prices[action.0 as usize].load(Ordering::Relaxed))
    }
}

/// The part of the configuration the pipeline reads.
#[derive(Debug, Clone)]
pub struct PlaneSettings {
    pub limits: Limits,
    /// The service name a TC3 scope may carry besides the Host's first label.
    pub service: String,
    pub billing_utc_offset_seconds: i32,
    pub max_staleness_seconds: i64,
    pub stale_policy: StalePolicy,
}

impl PlaneSettings {
    pub fn of(config: &Config) -> Self {
        PlaneSettings {
            limits: config.limits.clone(),
            service: config.upstream.service.clone(),
            billing_utc_offset_seconds: config.meter.billing_utc_offset_seconds,
            max_staleness_seconds: config.state.max_staleness.as_secs() as i64,
            stale_policy: config.state.stale_policy,
        }
    }
}
