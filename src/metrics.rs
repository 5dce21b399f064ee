//! Prometheus metrics for the admin listener's `/metrics`. Every per-request handle is
//! created at start-up and indexed by (action id, outcome), so recording a request is
//! an array index and an atomic add: no lock, no allocation, no label strings built on
//! the hot path; latency histograms are sharded per data-plane worker
//! (`LatencyHistogram`). Must not hold request data beyond the counts.

use crate::catalog::{ActionId, Catalog};
use crate::proxy::errors::ErrorCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
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
    requests: Vec<Counter>,
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
    pub billable_calls: Counter,
    pub usage_pending_calls: Gauge,
    pub usage_oldest_pending_seconds: Gauge,
    pub flush_batches_ok: Counter,
    pub flush_batches_failed: Counter,
}

impl Metrics {
    pub fn new(catalog: &Catalog) -> Self {
        let mut registry = Registry::with_prefix("ekyc_gateway");
        let family = Family::<RequestLabels, Counter>::default();
        let mut requests = Vec::with_capacity((catalog.len() + 1) * Outcome::COUNT);
        let action_names = catalog.names().chain(std::iter::once("unknown"));
        for action in action_names {
            for outcome in 0..Outcome::COUNT {
                let labels = RequestLabels {
                    action: action.to_string(),
                    outcome: Outcome::label(outcome).to_string(),
                };
                requests.push(family.get_or_create(&labels).clone());
            }
        }
        registry.register(
            "requests",
            "Requests on the data listener by action and outcome (forwarded, or the error code the gateway answered)",
            family,
        );
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
        let billable_calls = Counter::default();
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
        }
    }

    pub fn record_request(&self, action: Option<ActionId>, outcome: Outcome, seconds: f64) {
        let row = action.map_or(self.actions, |a| a.0 as usize);
        self.requests[row * Outcome::COUNT + outcome.index()].inc();
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
