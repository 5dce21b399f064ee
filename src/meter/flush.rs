//! The flusher: moves counts from memory to the billing store in batches
//! `(instance_id, seq, rows)` that the store applies at most once. A batch is frozen
//! until the store acknowledges it; new counts go to the next one. While the store is
//! down the batch is retried with backoff and the gateway keeps serving; a store that
//! stops answering is given up on after `store.timeout_ms` (`store::Patience`). Runs every
//! `meter.flush_interval` (longer after large batches: `next_delay`) and once more at
//! shutdown, after in-flight requests. Must not be called from the request path.

use super::{Counters, FrozenBatch};
use crate::store::{Patience, Store, UsageBatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// What one flush sent: the calls the store counted (0 for a batch it had already
/// applied) and the rows of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flushed {
    pub calls: u64,
    pub rows: usize,
}

pub struct Flusher {
    /// The batch waiting for the store's acknowledgement, and when its oldest count was
    /// made. Also in the journal (`Counters::frozen_batch`), for a process that dies.
    pending: Mutex<Option<(UsageBatch, i64)>>,
    /// How long a send may wait on the store.
    patience: Patience,
}

impl Flusher {
    /// `store_timeout`: `store.timeout_ms`.
    pub fn new(store_timeout: Duration) -> Self {
        Self {
            pending: Mutex::new(None),
            patience: Patience::new(store_timeout),
        }
    }

    /// Sends the frozen batch (this process's, or one a killed process left in the
    /// journal), or freezes a new one from the counters and sends it. `day` dates the
    /// calls for the per-day chart. A send the store does not answer in time leaves the
    /// batch frozen, to be sent again under its id, which the store applies at most once.
    pub async fn flush_once(&self, counters: &Counters, store: &Store, now: i64, day: &str) -> anyhow::Result<Flushed> {
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
                        None => return Ok(Flushed::default()),
                    }
                }
            };
            let FrozenBatch { seq, rows } = batch;
            if rows.is_empty() {
                // Every slot already shows it flushed: the process died between the
                // acknowledgement and clearing the mark.
                counters.acknowledge();
                return Ok(Flushed::default());
            }
            let batch = UsageBatch {
                instance_id: counters.journal().instance_id().to_string(),
                seq,
                rows,
            };
            *pending = Some((batch, oldest));
        }
        let (batch, _) = pending.as_ref().expect("set above");
        let sent = store
            .apply_usage_batch_within(batch, now, day, self.patience.limit())
            .await;
        self.patience.note(&sent);
        match sent {
            Ok(applied) => {
                if !applied {
                    tracing::info!(
                        seq = batch.seq,
                        "usage batch was already in the store (acknowledgement lost); not counted again"
                    );
                }
                let calls = batch.rows.iter().map(|r| r.calls).sum();
                let rows = batch.rows.len();
                counters.acknowledge();
                *pending = None;
                Ok(Flushed {
                    calls: if applied { calls } else { 0 },
                    rows,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// When the oldest count of the frozen batch was made.
    pub async fn frozen_since(&self) -> Option<i64> {
        self.pending.lock().await.as_ref().map(|(_, oldest)| *oldest)
    }
}

/// The wait after a batch of `rows` rows: `interval`, stretched so that the store gets
/// at most `max_rows_per_second` rows a second on average (0: no cap), to at most ten
/// intervals. Each row is an upsert of two tables; with calls spread over 100,000
/// accounts a 1 s flush sent a row for nearly every call (36,000 a second on 2 cores),
/// and PostgreSQL spent more CPU per call than the gateway's whole user time. A longer
/// wait merges an account's calls into fewer rows; they wait in the journal meanwhile.
pub fn next_delay(interval: Duration, rows: usize, max_rows_per_second: usize) -> Duration {
    if max_rows_per_second == 0 {
        return interval;
    }
    let paced = Duration::from_secs_f64(rows as f64 / max_rows_per_second as f64);
    paced.clamp(interval, interval * 10)
}

/// The background task: flush every `interval` (longer after large batches) until
/// shutdown, backing off while the store is down. The final flush is a shutdown hook,
/// run after in-flight requests.
pub async fn run(
    app: Arc<crate::app::App>,
    interval: Duration,
    max_rows_per_second: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        match app.flush_usage().await {
            Ok(flushed) => delay = next_delay(interval, flushed.rows, max_rows_per_second),
            Err(e) => {
                // Capped low: once the store is back, the backlog should not wait long.
                delay = (delay * 2).min(Duration::from_secs(5).max(interval));
                tracing::warn!(error = %e, retry_in = ?delay, "usage flush failed; counts are kept and retried");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_delay;
    use std::time::Duration;

    #[test]
    fn large_batches_stretch_the_wait_to_at_most_ten_intervals() {
        let second = Duration::from_secs(1);
        assert_eq!(next_delay(second, 0, 10_000), second);
        assert_eq!(next_delay(second, 9_000, 10_000), second);
        assert_eq!(next_delay(second, 36_000, 10_000), Duration::from_millis(3_600));
        assert_eq!(next_delay(second, 1_000_000, 10_000), 10 * second);
        assert_eq!(next_delay(second, 1_000_000, 0), second, "0: no cap");
    }
}
