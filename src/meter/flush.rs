//! The flusher: moves counts from memory to the billing store in batches
//! `(instance_id, seq, rows)` that the store applies at most once. A batch is frozen
//! until the store acknowledges it; new counts go to the next one. While the store is
//! down the batch is retried with backoff and the gateway keeps serving. Runs every
//! `meter.flush_interval` and once more at shutdown, after in-flight requests. Must
//! not be called from the request path.

use super::{Counters, FrozenBatch};
use crate::store::{Store, UsageBatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

pub struct Flusher {
    /// The batch waiting for the store's acknowledgement, and when its oldest count was
    /// made. Also in the journal (`Counters::frozen_batch`), for a process that dies.
    pending: Mutex<Option<(UsageBatch, i64)>>,
}

impl Default for Flusher {
    fn default() -> Self {
        Self::new()
    }
}

impl Flusher {
    pub fn new() -> Self {
        Self {
            pending: Mutex::new(None),
        }
    }

    /// Sends the frozen batch (this process's, or one a killed process left in the
    /// journal), or freezes a new one from the counters and sends it. Returns the calls
    /// the store acknowledged. `day` dates the calls for the per-day chart.
    pub async fn flush_once(&self, counters: &Counters, store: &Store, now: i64, day: &str) -> anyhow::Result<u64> {
        let mut pending = self.pending.lock().await;
        if pending.is_none() {
            let (batch, oldest) = match counters.frozen_batch() {
                Some(resumed) => {
                    tracing::info!(
                        seq = resumed.seq,
                        rows = resumed.rows.len(),
                        "resending the usage batch left frozen in the meter journal"
                    );
                    (resumed, now)
                }
                None => {
                    let oldest = counters.oldest_pending().unwrap_or(now);
                    match counters.freeze() {
                        Some(batch) => (batch, oldest),
                        None => return Ok(0),
                    }
                }
            };
            let FrozenBatch { seq, rows } = batch;
            if rows.is_empty() {
                // Every slot already shows it flushed: the process died between the
                // acknowledgement and clearing the mark.
                counters.acknowledge();
                return Ok(0);
            }
            let batch = UsageBatch {
                instance_id: counters.journal().instance_id().to_string(),
                seq,
                rows,
            };
            *pending = Some((batch, oldest));
        }
        let (batch, _) = pending.as_ref().expect("set above");
        match store.apply_usage_batch_on(batch, now, day).await {
            Ok(applied) => {
                if !applied {
                    tracing::info!(
                        seq = batch.seq,
                        "usage batch was already in the store (acknowledgement lost); not counted again"
                    );
                }
                let calls = batch.rows.iter().map(|r| r.calls).sum();
                counters.acknowledge();
                *pending = None;
                Ok(if applied { calls } else { 0 })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// When the oldest count of the frozen batch was made.
    pub async fn frozen_since(&self) -> Option<i64> {
        self.pending.lock().await.as_ref().map(|(_, oldest)| *oldest)
    }
}

/// The background task: flush every `interval` until shutdown, backing off while the
/// store is down. The final flush is a shutdown hook, run after in-flight requests.
pub async fn run(app: Arc<crate::app::App>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut delay = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        match app.flush_usage().await {
            Ok(_) => delay = interval,
            Err(e) => {
                // Capped low: once the store is back, the backlog should not wait long.
                delay = (delay * 2).min(Duration::from_secs(5).max(interval));
                tracing::warn!(error = %e, retry_in = ?delay, "usage flush failed; counts are kept and retried");
            }
        }
    }
}
