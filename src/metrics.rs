//! Prometheus metrics for the admin listener's `/metrics`, in the OpenMetrics text
//! format (`CONTENT_TYPE`). Every per-request handle is created at start-up and indexed
//! by (action row, outcome), so recording a request is an array index and an atomic
//! add: no lock, no allocation, no label strings built on the hot path. What is
//! recorded per request is sharded per data-plane worker (`LatencyHistogram`,
//! `ShardedCounts`): two workers adding to one atomic pass its cache line back and
//! forth on every call. What is cheap to read only when scraped (the process, the
//! mirror's suspensions) is read then. Must not hold request data beyond the counts.

mod process;

use crate::catalog::{ActionId, Catalog};
use crate::proxy::errors::ErrorCode;
use crate::proxy::tenant::TenantAction;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What `/metrics` answers with: the body is OpenMetrics text (`# EOF`, `_total`
/// counters, `info` metrics), which Prometheus parses as such only when told so.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histograms: 0.5 ms doubling 16 times (to about 16 s),
/// then +Inf.
const LATENCY_BOUNDS: usize = 16;
/// Shards of a histogram: data-plane workers record into their own (worker index
/// modulo this), every other thread into shard 0.
const HISTOGRAM_SHARDS: usize = 16;

/// A latency histogram without a lock. prometheus-client's `Histogram` takes a write
/// lock on every observation, shared by all threads: two per request on the hot path.
/// Here each data-plane worker adds to its own cache-line-aligned shard with relaxed
/// atomics, and a scrape sums the shards (a scrape may see a count without its bucket
/// for an instant: Prometheus tolerates that, histograms are not transactional).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    bounds: Arc<[f64; LATENCY_BOUNDS]>,
    shards: Arc<[HistogramShard; HISTOGRAM_SHARDS]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct HistogramShard {
    /// Per-bucket (not cumulative) counts; the last is +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn new() -> Self {
        let mut bounds = [0.0; LATENCY_BOUNDS];
        for (bound, value) in bounds
            .iter_mut()
            .zip(exponential_buckets(0.0005, 2.0, LATENCY_BOUNDS as u16))
        {
            *bound = value;
        }
        Self {
            bounds: Arc::new(bounds),
            shards: Arc::new(std::array::from_fn(|_| HistogramShard::default())),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let shard = &self.shards[crate::workers::current_worker() % HISTOGRAM_SHARDS];
        let bucket = self.bounds.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BOUNDS);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        shard
            .sum_nanos
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        let (mut count, mut sum_nanos) = (0u64, 0u64);
        for shard in self.shards.iter() {
            for (total, bucket) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += bucket.load(Ordering::Relaxed);
            }
            count += shard.count.load(Ordering::Relaxed);
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        encoder.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `u64`s in a 128-byte span (two cache lines: adjacent-line prefetching pairs them).
const LINE_U64S: usize = 16;

/// Counters the data-plane workers add to, each worker in its own cache lines (worker
/// index modulo `HISTOGRAM_SHARDS`, other threads in shard 0), summed when scraped.
#[derive(Debug)]
struct ShardedCounts {
    cells: usize,
    /// Cells of one shard, rounded up to whole spans, plus one span so that no span
    /// holds cells of two shards whatever the allocation's alignment.
    stride: usize,
    values: Box<[AtomicU64]>,
}

impl ShardedCounts {
    fn new(cells: usize) -> Self {
        let stride = cells.div_ceil(LINE_U64S) * LINE_U64S + LINE_U64S;
        Self {
            cells,
            stride,
            values: (0..stride * HISTOGRAM_SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, cell: usize) {
        debug_assert!(cell < self.cells);
        let shard = crate::workers::current_worker() % HISTOGRAM_SHARDS;
        self.values[shard * self.stride + cell].fetch_add(1, Ordering::Relaxed);
    }

    /// Undoes an `add` (gauges: the sum wraps back through zero).
    fn sub(&self, cell: usize) {
        debug_assert!(cell < self.cells);
        let shard = crate::workers::current_worker() % HISTOGRAM_SHARDS;
        self.values[shard * self.stride + cell].fetch_sub(1, Ordering::Relaxed);
    }

    fn sum(&self, cell: usize) -> u64 {
        (0..HISTOGRAM_SHARDS)
            .map(|shard| self.values[shard * self.stride + cell].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// Billable calls, one sharded cell per catalog action: exposed per action and as
/// their sum (the unlabelled total predates the per-action one).
#[derive(Debug)]
struct BillableCounts {
    counts: Arc<ShardedCounts>,
    actions: Vec<ActionLabels>,
}

impl Collector for BillableCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let total = (0..self.actions.len())
            .map(|cell| self.counts.sum(cell))
            .fold(0u64, u64::wrapping_add);
        encoder
            .encode_descriptor(
                "billable_calls",
                "Calls counted for billing (upstream HTTP 200 without Error, billable action)",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&total, None)?;
        let mut metric = encoder.encode_descriptor(
            "billable_calls_by_action",
            "Calls counted for billing, by action",
            None,
            MetricType::Counter,
        )?;
        for (cell, labels) in self.actions.iter().enumerate() {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(&self.counts.sum(cell), None)?;
        }
        Ok(())
    }
}

/// Latency histograms by action row (see `CallAction`).
#[derive(Debug)]
struct LatencyByAction {
    name: &'static str,
    help: &'static str,
    rows: Vec<(ActionLabels, LatencyHistogram)>,
}

impl Collector for LatencyByAction {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, histogram) in &self.rows {
            histogram.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Upstream connections of the data plane's pool (`proxy::pool`), over every worker:
/// opened minus closed, and those idle in a worker's list. Sharded like the request
/// counts: a call takes a connection out of its worker's list and puts it back.
#[derive(Clone, Debug)]
pub struct PoolGauges(Arc<ShardedCounts>);

const POOL_OPEN: usize = 0;
const POOL_IDLE: usize = 1;

impl Default for PoolGauges {
    fn default() -> Self {
        Self(Arc::new(ShardedCounts::new(2)))
    }
}

impl PoolGauges {
    pub fn opened(&self) {
        self.0.add(POOL_OPEN);
    }

    pub fn closed(&self) {
        self.0.sub(POOL_OPEN);
    }

    pub fn idled(&self) {
        self.0.add(POOL_IDLE);
    }

    pub fn taken(&self) {
        self.0.sub(POOL_IDLE);
    }

    /// (in use, idle).
    pub fn read(&self) -> (i64, i64) {
        let (open, idle) = (self.0.sum(POOL_OPEN) as i64, self.0.sum(POOL_IDLE) as i64);
        (open - idle, idle)
    }
}

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (in_use, idle) = self.read();
        let mut metric = encoder.encode_descriptor(
            "upstream_connections",
            "Upstream connections of the pool: in_use (carrying a call) or idle (kept alive for the next)",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [("in_use", in_use), ("idle", idle)] {
            metric
                .encode_family(&StateLabels { state: state.into() })?
                .encode_gauge(&value)?;
        }
        Ok(())
    }
}

/// `requests`, by action and outcome: one sharded cell per pair.
#[derive(Debug)]
struct RequestCounts {
    counts: Arc<ShardedCounts>,
    /// Each cell's labels, in cell order.
    labels: Vec<RequestLabels>,
}

impl Collector for RequestCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "requests",
            "Requests on the data listener by action and outcome (forwarded, answered: a tenant action, or the error code the gateway answered)",
            None,
            MetricType::Counter,
        )?;
        for (cell, labels) in self.labels.iter().enumerate() {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(&self.counts.sum(cell), None)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    read: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlagLabels {
    flag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// What a request asked for, as the metrics label it: a catalog action, a tenant
/// action the gateway answers itself, or neither (no action, or one it does not sell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAction {
    Catalog(ActionId),
    Tenant(TenantAction),
    Unknown,
}

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The upstream answered and its answer was passed on.
    Forwarded,
    /// A tenant action, answered by the gateway itself.
    Answered,
    /// The gateway answered itself with this code.
    Refused(ErrorCode),
}

impl Outcome {
    const COUNT: usize = 2 + ErrorCode::ALL.len();

    fn index(self) -> usize {
        match self {
            Outcome::Forwarded => 0,
            Outcome::Answered => 1,
            Outcome::Refused(code) => 2 + code.index(),
        }
    }

    fn label(index: usize) -> &'static str {
        match index {
            0 => "forwarded",
            1 => "answered",
            _ => ErrorCode::ALL[index - 2].as_str(),
        }
    }
}

/// The upstream failures `record_upstream_error` is given (`GatewayError::upstream_label`),
/// each exposed from the start so a rate over them exists before the first failure.
const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "protocol", "too_large"];

pub struct Metrics {
    /// Unprefixed, for the conventional `process_*` metrics; everything else is in its
    /// `ekyc_gateway` sub-registry.
    registry: Registry,
    /// `[action row][outcome]`, flattened: catalog actions by id, then tenant actions,
    /// then "unknown" (`row`).
    requests: Arc<ShardedCounts>,
    actions: usize,
    /// By action row.
    duration: Vec<LatencyHistogram>,
    /// By catalog action: only those are forwarded.
    upstream_duration: Vec<LatencyHistogram>,
    billable: Arc<ShardedCounts>,
    upstream_errors: [Counter; UPSTREAM_ERROR_KINDS.len()],
    pub data_connections: Gauge,
    pub admin_connections: Gauge,
    /// Seconds since the state mirror last agreed with Redis (0 on a single node, -1
    /// before the first sync); set when scraped.
    pub state_age_seconds: Gauge,
    /// Re-syncs of the mirror with Redis that read both hashes, and those that found
    /// them unchanged since the last read and skipped it.
    pub state_resyncs_read: Counter,
    pub state_resyncs_skipped: Counter,
    pub accounts_loaded: Gauge,
    pub credentials_loaded: Gauge,
    pub usage_pending_calls: Gauge,
    pub usage_oldest_pending_seconds: Gauge,
    /// When (Unix seconds, the gateway's clock) the billing store last acknowledged a
    /// flush, or the gateway started: the flusher's liveness.
    pub usage_last_flush_timestamp_seconds: Gauge,
    /// Accounts in the mirror suspended manually, and for arrears (an account may be
    /// both); set when scraped.
    pub accounts_suspended_manual: Gauge,
    pub accounts_suspended_arrears: Gauge,
    pub flush_batches_ok: Counter,
    pub flush_batches_failed: Counter,
    /// Accounts under a credit limit whose headroom does not cover one more call.
    pub credit_exhausted_accounts: Gauge,
    /// 1 while a closed month is not billed after the 3rd of the next month (billing
    /// time zone); set by the billing scheduler.
    pub billing_month_late: Gauge,
    /// The latest month with a finished run, as YYYYMM (0: none yet); set by the
    /// billing scheduler.
    pub billing_last_month_billed: Gauge,
    /// Runs this gateway's scheduler finished, and attempts that failed.
    pub billing_scheduled_runs_ok: Counter,
    pub billing_scheduled_runs_failed: Counter,
    pub webhooks: WebhookMetrics,
    /// Access log lines dropped because the writer was behind (`proxy::access_log`).
    pub access_log_dropped: Counter,
}

/// The webhook outbox's metrics: handles onto the registry's, so the delivery worker
/// keeps a clone.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    /// Events in the outbox still to deliver (all gateways'), and the age of the
    /// oldest: set by the due sweep and after each delivery round.
    pub events_pending: Gauge,
    pub oldest_pending_seconds: Gauge,
    /// This gateway's delivery worker: events delivered, attempts that failed, events
    /// given up on (`failed`, the retry window over).
    pub events_delivered: Counter,
    pub attempts_failed: Counter,
    pub events_given_up: Counter,
}

impl Metrics {
    pub fn new(catalog: &Catalog) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("ekyc_gateway");
        registry.register(
            "build",
            "The gateway's version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        let row_names: Vec<&str> = catalog
            .names()
            .chain(TenantAction::ALL.iter().map(|t| t.name()))
            .chain(std::iter::once("unknown"))
            .collect();
        let action_labels = |names: &[&str]| -> Vec<ActionLabels> {
            names
                .iter()
                .map(|name| ActionLabels {
                    action: name.to_string(),
                })
                .collect()
        };
        let mut labels = Vec::with_capacity(row_names.len() * Outcome::COUNT);
        for action in &row_names {
            for outcome in 0..Outcome::COUNT {
                labels.push(RequestLabels {
                    action: action.to_string(),
                    outcome: Outcome::label(outcome).to_string(),
                });
            }
        }
        let requests = Arc::new(ShardedCounts::new(labels.len()));
        registry.register_collector(Box::new(RequestCounts {
            counts: requests.clone(),
            labels,
        }));
        let histograms = |names: &[&str], name: &'static str, help: &'static str| {
            let rows: Vec<(ActionLabels, LatencyHistogram)> = action_labels(names)
                .into_iter()
                .map(|labels| (labels, LatencyHistogram::new()))
                .collect();
            let handles = rows.iter().map(|(_, histogram)| histogram.clone()).collect();
            (LatencyByAction { name, help, rows }, handles)
        };
        let (collector, duration) = histograms(
            &row_names,
            "request_duration_seconds",
            "Time from the request's arrival to the answer's headers, all outcomes, by action",
        );
        registry.register_collector(Box::new(collector));
        let (collector, upstream_duration) = histograms(
            &row_names[..catalog.len()],
            "upstream_duration_seconds",
            "Time the upstream took to answer with headers, by action",
        );
        registry.register_collector(Box::new(collector));
        let billable = Arc::new(ShardedCounts::new(catalog.len().max(1)));
        registry.register_collector(Box::new(BillableCounts {
            counts: billable.clone(),
            actions: action_labels(&row_names[..catalog.len()]),
        }));
        let upstream_error_family = Family::<KindLabels, Counter>::default();
        let upstream_errors = UPSTREAM_ERROR_KINDS.map(|kind| {
            upstream_error_family
                .get_or_create(&KindLabels { kind: kind.into() })
                .clone()
        });
        registry.register(
            "upstream_errors",
            "Calls the upstream did not answer (connect, timeout, protocol, too_large)",
            upstream_error_family,
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        let data_connections = connections
            .get_or_create(&ListenerLabels {
                listener: "data".into(),
            })
            .clone();
        let admin_connections = connections
            .get_or_create(&ListenerLabels {
                listener: "admin".into(),
            })
            .clone();
        registry.register("open_connections", "Open client connections by listener", connections);
        let state_age_seconds = Gauge::default();
        registry.register(
            "state_age_seconds",
            "Seconds since the account-state mirror last synced with Redis (0: single node, -1: never)",
            state_age_seconds.clone(),
        );
        let resyncs = Family::<ReadLabels, Counter>::default();
        let state_resyncs_read = resyncs.get_or_create(&ReadLabels { read: "whole".into() }).clone();
        let state_resyncs_skipped = resyncs.get_or_create(&ReadLabels { read: "skipped".into() }).clone();
        registry.register(
            "state_resyncs",
            "Re-syncs of the state mirror with Redis: whole (both hashes read) or skipped (neither written since the last read)",
            resyncs,
        );
        let accounts_loaded = Gauge::default();
        registry.register(
            "accounts_loaded",
            "Accounts in the in-memory state mirror",
            accounts_loaded.clone(),
        );
        let suspended = Family::<FlagLabels, Gauge>::default();
        let accounts_suspended_manual = suspended.get_or_create(&FlagLabels { flag: "manual".into() }).clone();
        let accounts_suspended_arrears = suspended.get_or_create(&FlagLabels { flag: "arrears".into() }).clone();
        registry.register(
            "accounts_suspended",
            "Accounts in the state mirror suspended, by flag (manual, arrears; an account may have both)",
            suspended,
        );
        let credentials_loaded = Gauge::default();
        registry.register(
            "credentials_loaded",
            "Credentials in the in-memory state mirror",
            credentials_loaded.clone(),
        );
        let usage_pending_calls = Gauge::default();
        registry.register(
            "usage_pending_calls",
            "Counted calls not yet acknowledged by the billing store",
            usage_pending_calls.clone(),
        );
        let usage_oldest_pending_seconds = Gauge::default();
        registry.register(
            "usage_oldest_pending_seconds",
            "Age of the oldest counted call not yet acknowledged by the billing store (0: none)",
            usage_oldest_pending_seconds.clone(),
        );
        let usage_last_flush_timestamp_seconds = Gauge::default();
        registry.register(
            "usage_last_flush_timestamp_seconds",
            "When the billing store last acknowledged a usage flush (Unix seconds; the start until the first)",
            usage_last_flush_timestamp_seconds.clone(),
        );
        let flushes = Family::<KindLabels, Counter>::default();
        let flush_batches_ok = flushes.get_or_create(&KindLabels { kind: "ok".into() }).clone();
        let flush_batches_failed = flushes.get_or_create(&KindLabels { kind: "failed".into() }).clone();
        registry.register("flush_batches", "Usage flush attempts by result (ok, failed)", flushes);
        let credit_exhausted_accounts = Gauge::default();
        registry.register(
            "credit_exhausted_accounts",
            "Accounts whose balance and credit limit do not cover one more call, at the last credit check",
            credit_exhausted_accounts.clone(),
        );
        let billing_month_late = Gauge::default();
        registry.register(
            "billing_month_late",
            "1 while a closed month is still not billed after the 3rd of the next month (billing time zone)",
            billing_month_late.clone(),
        );
        let billing_last_month_billed = Gauge::default();
        registry.register(
            "billing_last_month_billed",
            "The latest month whose billing run finished, as YYYYMM (0: none yet)",
            billing_last_month_billed.clone(),
        );
        let runs = Family::<KindLabels, Counter>::default();
        let billing_scheduled_runs_ok = runs.get_or_create(&KindLabels { kind: "ok".into() }).clone();
        let billing_scheduled_runs_failed = runs.get_or_create(&KindLabels { kind: "failed".into() }).clone();
        registry.register(
            "billing_scheduled_runs",
            "Billing runs this gateway's scheduler finished (ok) or attempted and failed (failed)",
            runs,
        );
        let webhooks = WebhookMetrics::default();
        registry.register(
            "webhook_events_pending",
            "Webhook events in the outbox not yet delivered nor given up, over all gateways",
            webhooks.events_pending.clone(),
        );
        registry.register(
            "webhook_oldest_pending_seconds",
            "Age of the oldest webhook event still pending (0: none)",
            webhooks.oldest_pending_seconds.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Webhook events this gateway delivered to every endpoint",
            webhooks.events_delivered.clone(),
        );
        registry.register(
            "webhook_attempts_failed",
            "Webhook delivery attempts by this gateway that some endpoint did not accept",
            webhooks.attempts_failed.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );
        registry.register(
            "webhook_events_given_up",
            "Webhook events this gateway marked failed: still refused at the end of the retry window",
            webhooks.events_given_up.clone(),
        );
        Self {
            access_log_dropped,
            registry: root,
            requests,
            actions: catalog.len(),
            duration,
            upstream_duration,
            billable,
            upstream_errors,
            data_connections,
            admin_connections,
            state_age_seconds,
            state_resyncs_read,
            state_resyncs_skipped,
            accounts_loaded,
            credentials_loaded,
            usage_pending_calls,
            usage_oldest_pending_seconds,
            usage_last_flush_timestamp_seconds,
            accounts_suspended_manual,
            accounts_suspended_arrears,
            flush_batches_ok,
            flush_batches_failed,
            credit_exhausted_accounts,
            billing_month_late,
            billing_last_month_billed,
            billing_scheduled_runs_ok,
            billing_scheduled_runs_failed,
            webhooks,
        }
    }

    /// Exposes the upstream pool's connections (`upstream_connections`).
    pub fn watch_pool(&mut self, gauges: PoolGauges) {
        self.registry
            .sub_registry_with_prefix("ekyc_gateway")
            .register_collector(Box::new(gauges));
    }

    fn row(&self, action: CallAction) -> usize {
        match action {
            CallAction::Catalog(id) => id.0 as usize,
            CallAction::Tenant(tenant) => self.actions + tenant.index(),
            CallAction::Unknown => self.actions + TenantAction::ALL.len(),
        }
    }

    pub fn record_request(&self, action: CallAction, outcome: Outcome, seconds: f64) {
        let row = self.row(action);
        self.requests.add(row * Outcome::COUNT + outcome.index());
        self.duration[row].observe(seconds);
    }

    pub fn record_upstream(&self, action: ActionId, seconds: f64) {
        self.upstream_duration[action.0 as usize].observe(seconds);
    }

    pub fn record_billable(&self, action: ActionId) {
        self.billable.add(action.0 as usize);
    }

    /// Billable calls over every action.
    pub fn billable_calls(&self) -> u64 {
        (0..self.actions)
            .map(|cell| self.billable.sum(cell))
            .fold(0, u64::wrapping_add)
    }

    pub fn record_upstream_error(&self, kind: &'static str) {
        if let Some(at) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.upstream_errors[at].inc();
        }
    }

    /// The OpenMetrics text exposition (`CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(32 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_billable_counts_sum_every_workers_shard() {
        let catalog = Catalog::new(&crate::catalog::tests::actions(&[
            "LivenessCompare",
            "IdCardVerification",
        ]));
        let m = Metrics::new(&catalog);
        let liveness = catalog.lookup("LivenessCompare").unwrap();
        std::thread::scope(|scope| {
            // Workers 1, 2 and 17 (17 shares worker 1's shard), and a thread that is
            // not a worker (shard 0).
            for worker in [1, 2, 17, 0] {
                let m = &m;
                scope.spawn(move || {
                    crate::workers::act_as_worker(worker);
                    for _ in 0..1000 {
                        m.record_request(CallAction::Catalog(liveness), Outcome::Forwarded, 0.001);
                        m.record_billable(liveness);
                    }
                    m.record_request(CallAction::Unknown, Outcome::Refused(ErrorCode::ALL[0]), 0.001);
                });
            }
        });
        assert_eq!(m.billable_calls(), 4000);
        let text = m.render();
        let refused = ErrorCode::ALL[0].as_str();
        for line in [
            r#"ekyc_gateway_requests_total{action="LivenessCompare",outcome="forwarded"} 4000"#.to_string(),
            r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="forwarded"} 0"#.to_string(),
            format!(r#"ekyc_gateway_requests_total{{action="unknown",outcome="{refused}"}} 4"#),
            "ekyc_gateway_billable_calls_total 4000".to_string(),
            r#"ekyc_gateway_billable_calls_by_action_total{action="LivenessCompare"} 4000"#.to_string(),
            r#"ekyc_gateway_billable_calls_by_action_total{action="IdCardVerification"} 0"#.to_string(),
        ] {
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE ekyc_gateway_requests counter").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn latency_histogram_sums_its_shards_into_cumulative_buckets() {
        let catalog = Catalog::new(&crate::catalog::tests::actions(&["LivenessCompare"]));
        let m = Metrics::new(&catalog);
        let action = ActionId(0);
        m.record_upstream(action, 0.0004);
        m.record_upstream(action, 0.003);
        // From another thread, which records into another shard.
        std::thread::scope(|scope| {
            scope.spawn(|| m.record_upstream(action, 100.0));
        });
        let text = m.render();
        for line in [
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.0005",action="LivenessCompare"} 1"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.002",action="LivenessCompare"} 1"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.004",action="LivenessCompare"} 2"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="16.384",action="LivenessCompare"} 2"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="+Inf",action="LivenessCompare"} 3"#,
            r#"ekyc_gateway_upstream_duration_seconds_count{action="LivenessCompare"} 3"#,
            r#"ekyc_gateway_upstream_duration_seconds_sum{action="LivenessCompare"} 100.0034"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn records_by_action_and_outcome() {
        let catalog = Catalog::new(&crate::catalog::tests::actions(&["LivenessCompare"]));
        let m = Metrics::new(&catalog);
        m.record_request(CallAction::Catalog(ActionId(0)), Outcome::Forwarded, 0.001);
        m.record_request(CallAction::Unknown, Outcome::Refused(ErrorCode::InvalidAction), 0.001);
        m.record_request(
            CallAction::Tenant(TenantAction::DescribePriceList),
            Outcome::Answered,
            0.001,
        );
        let text = m.render();
        for line in [
            r#"ekyc_gateway_requests_total{action="LivenessCompare",outcome="forwarded"} 1"#,
            r#"ekyc_gateway_requests_total{action="unknown",outcome="InvalidAction"} 1"#,
            r#"ekyc_gateway_requests_total{action="DescribePriceList",outcome="answered"} 1"#,
            r#"ekyc_gateway_request_duration_seconds_count{action="LivenessCompare"} 1"#,
            r#"ekyc_gateway_request_duration_seconds_count{action="DescribePriceList"} 1"#,
            r#"ekyc_gateway_request_duration_seconds_count{action="unknown"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn pool_gauges_split_open_connections_into_in_use_and_idle() {
        let gauges = PoolGauges::default();
        gauges.opened();
        gauges.opened();
        gauges.idled();
        std::thread::scope(|scope| {
            // Taken on another worker than the one that put it back: the sums still agree.
            scope.spawn(|| {
                crate::workers::act_as_worker(3);
                gauges.taken();
                gauges.closed();
            });
        });
        assert_eq!(gauges.read(), (1, 0));
    }

    #[test]
    fn exposes_build_info_and_the_process() {
        let catalog = Catalog::new(&crate::catalog::tests::actions(&["LivenessCompare"]));
        let text = Metrics::new(&catalog).render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(r#"ekyc_gateway_build_info{{version="{version}"}} 1"#)),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(name), "{name} missing from:\n{text}");
            }
        }
    }
}
