//! Prometheus metrics for the admin listener's `/metrics`. Every per-request handle is
//! created at start-up and indexed by (action id, outcome), so recording a request is
//! an array index and an atomic add: no lock, no allocation, no label strings built on
//! the hot path. What is recorded per request is sharded per data-plane worker
//! (`LatencyHistogram`, `ShardedCounts`): two workers adding to one atomic pass its
//! cache line back and forth on every call. Must not hold request data beyond the
//! counts.

use crate::catalog::{ActionId, Catalog};
use crate::proxy::errors::ErrorCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

    fn sum(&self, cell: usize) -> u64 {
        (0..HISTOGRAM_SHARDS)
            .map(|shard| self.values[shard * self.stride + cell].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// A counter without labels, sharded (`ShardedCounts`).
#[derive(Clone, Debug)]
pub struct ShardedCounter(Arc<ShardedCounts>);

impl Default for ShardedCounter {
    fn default() -> Self {
        Self(Arc::new(ShardedCounts::new(1)))
    }
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.0.add(0);
    }

    pub fn get(&self) -> u64 {
        self.0.sum(0)
    }
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
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
            "Requests on the data listener by action and outcome (forwarded, or the error code the gateway answered)",
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
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The upstream answered and its answer was passed on.
    Forwarded,
    /// The gateway answered itself with this code.
    Refused(ErrorCode),
}

impl Outcome {
    const COUNT: usize = 1 + ErrorCode::ALL.len();

    fn index(self) -> usize {
        match self {
            Outcome::Forwarded => 0,
            Outcome::Refused(code) => 1 + code.index(),
        }
    }

    fn label(index: usize) -> &'static str {
        if index == 0 {
            "forwarded"
        } else {
            ErrorCode::ALL[index - 1].as_str()
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// `[action][outcome]`, flattened; the last action row is "unknown".
    requests: Arc<ShardedCounts>,
    actions: usize,
    duration: LatencyHistogram,
    upstream_duration: LatencyHistogram,
    upstream_errors: Family<KindLabels, Counter>,
    pub data_connections: Gauge,
    pub admin_connections: Gauge,
    /// Seconds since the state mirror last agreed with Redis (0 on a single node, -1
    /// before the first sync); set when scraped.
    pub state_age_seconds: Gauge,
    pub accounts_loaded: Gauge,
    pub credentials_loaded: Gauge,
    pub billable_calls: ShardedCounter,
    pub usage_pending_calls: Gauge,
    pub usage_oldest_pending_seconds: Gauge,
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
        let mut registry = Registry::with_prefix("ekyc_gateway");
        let mut labels = Vec::with_capacity((catalog.len() + 1) * Outcome::COUNT);
        let action_names = catalog.names().chain(std::iter::once("unknown"));
        for action in action_names {
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
        let duration = LatencyHistogram::new();
        registry.register(
            "request_duration_seconds",
            "Time from the request's arrival to the answer's headers, all outcomes",
            duration.clone(),
        );
        let upstream_duration = LatencyHistogram::new();
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer with headers",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Calls the upstream did not answer (connect, timeout, protocol, too_large)",
            upstream_errors.clone(),
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
        let accounts_loaded = Gauge::default();
        registry.register(
            "accounts_loaded",
            "Accounts in the in-memory state mirror",
            accounts_loaded.clone(),
        );
        let credentials_loaded = Gauge::default();
        registry.register(
            "credentials_loaded",
            "Credentials in the in-memory state mirror",
            credentials_loaded.clone(),
        );
        let billable_calls = ShardedCounter::default();
        registry.register(
            "billable_calls",
            "Calls counted for billing (upstream HTTP 200 without Error, billable action)",
            billable_calls.clone(),
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
        registry.register(
            "webhook_events_given_up",
            "Webhook events this gateway marked failed: still refused at the end of the retry window",
            webhooks.events_given_up.clone(),
        );
        Self {
            registry,
            requests,
            actions: catalog.len(),
            duration,
            upstream_duration,
            upstream_errors,
            data_connections,
            admin_connections,
            state_age_seconds,
            accounts_loaded,
            credentials_loaded,
            billable_calls,
            usage_pending_calls,
            usage_oldest_pending_seconds,
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

    pub fn record_request(&self, action: Option<ActionId>, outcome: Outcome, seconds: f64) {
        let row = action.map_or(self.actions, |a| a.0 as usize);
        self.requests.add(row * Outcome::COUNT + outcome.index());
        self.duration.observe(seconds);
    }

    pub fn record_upstream(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    pub fn record_upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
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
        let liveness = catalog.lookup("LivenessCompare");
        std::thread::scope(|scope| {
            // Workers 1, 2 and 17 (17 shares worker 1's shard), and a thread that is
            // not a worker (shard 0).
            for worker in [1, 2, 17, 0] {
                let m = &m;
                scope.spawn(move || {
                    crate::workers::act_as_worker(worker);
                    for _ in 0..1000 {
                        m.record_request(liveness, Outcome::Forwarded, 0.001);
                        m.billable_calls.inc();
                    }
                    m.record_request(None, Outcome::Refused(ErrorCode::ALL[0]), 0.001);
                });
            }
        });
        assert_eq!(m.billable_calls.get(), 4000);
        let text = m.render();
        let refused = ErrorCode::ALL[0].as_str();
        for line in [
            r#"ekyc_gateway_requests_total{action="LivenessCompare",outcome="forwarded"} 4000"#.to_string(),
            r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="forwarded"} 0"#.to_string(),
            format!(r#"ekyc_gateway_requests_total{{action="unknown",outcome="{refused}"}} 4"#),
            "ekyc_gateway_billable_calls_total 4000".to_string(),
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
        m.record_upstream(0.0004);
        m.record_upstream(0.003);
        // From another thread, which records into another shard.
        std::thread::scope(|scope| {
            scope.spawn(|| m.record_upstream(100.0));
        });
        let text = m.render();
        for line in [
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.0005"} 1"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.002"} 1"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="0.004"} 2"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="16.384"} 2"#,
            r#"ekyc_gateway_upstream_duration_seconds_bucket{le="+Inf"} 3"#,
            "ekyc_gateway_upstream_duration_seconds_count 3",
            "ekyc_gateway_upstream_duration_seconds_sum 100.0034",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn records_by_action_and_outcome() {
        let catalog = Catalog::new(&crate::catalog::tests::actions(&["LivenessCompare"]));
        let m = Metrics::new(&catalog);
        m.record_request(Some(ActionId(0)), Outcome::Forwarded, 0.001);
        m.record_request(None, Outcome::Refused(ErrorCode::InvalidAction), 0.001);
        let text = m.render();
        assert!(
            text.contains(r#"ekyc_gateway_requests_total{action="LivenessCompare",outcome="forwarded"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ekyc_gateway_requests_total{action="unknown",outcome="InvalidAction"} 1"#));
        assert!(text.contains("ekyc_gateway_request_duration_seconds_count 2"));
    }
}
