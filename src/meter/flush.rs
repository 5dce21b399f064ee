//! The flusher: moves counts from memory to the billing store in batches
//! `(instance_id, seq, rows)` that the store applies at most once. A batch is frozen
//! until the store acknowledges it; new counts go to the next one. While the store is
//! down the batch is retried with backoff and the gateway keeps serving. Runs every
//! `meter.flush_interval` and once more at shutdown, after in-flight requests. Must
//! not be called from the request path.

use super::{CounterKey, Counters};
use crate::catalog::Catalog;
use crate::state::mirror::StateMirror;
use crate::store::{Store, UsageBatch, UsageRow};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, watch};

pub struct Flusher {
    instance_id: String,
    next_seq: AtomicU64,
    /// The batch waiting for the store's acknowledgement, and when its oldest count was made.
    pending: Mutex<Option<(UsageBatch, i64)>>,
    pub batches_ok: AtomicU64,
    pub batches_failed: AtomicU64,
}

impl Flusher {
    pub fn new(instance_id: String) -> Self {
        Self {
            instance_id,
            next_seq: AtomicU64::new(1),
            pending: Mutex::new(None),
            batches_ok: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
        }
    }

    /// Sends the frozen batch, or freezes a new one from the counters and sends it.
    /// Returns the calls the store acknowledged.
    pub async fn flush_once(
        &self,
        counters: &Counters,
        mirror: &StateMirror,
        catalog: &Catalog,
        store: &Store,
        now: i64,
    ) -> anyhow::Result<u64> {
        let mut pending = self.pending.lock().await;
        if pending.is_none() {
            let (taken, oldest) = counters.take();
            let oldest = oldest.unwrap_or(now);
            if taken.is_empty() {
                return Ok(0);
            }
            let mut rows = Vec::with_capacity(taken.len());
            let mut unknown: Vec<(CounterKey, u64)> = Vec::new();
            for (key, calls) in taken {
                match mirror.account_by_index(key.account) {
                    Some(account) => rows.push(UsageRow {
                        account_id: account.id().to_string(),
                        action: catalog.name(crate::catalog::ActionId(key.action)).to_string(),
                        month: key.month.to_string(),
                        calls,
                    }),
                    None => unknown.push((key, calls)),
                }
            }
            // Cannot happen (indexes come from the mirror); kept, never dropped.
            if !unknown.is_empty() {
                counters.give_back(&unknown, oldest);
            }
            if rows.is_empty() {
                return Ok(0);
            }
            let batch = UsageBatch {
                instance_id: self.instance_id.clone(),
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                rows,
            };
            *pending = Some((batch, oldest));
        }
        let (batch, _) = pending.as_ref().expect("set above");
        match store.apply_usage_batch(batch, now).await {
            Ok(_) => {
                let calls = batch.rows.iter().map(|r| r.calls).sum();
                *pending = None;
                self.batches_ok.fetch_add(1, Ordering::Relaxed);
                Ok(calls)
            }
            Err(e) => {
                self.batches_failed.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// Calls in the frozen batch, not yet acknowledged.
    pub async fn frozen_calls(&self) -> u64 {
        self.pending
            .lock()
            .await
            .as_ref()
            .map_or(0, |(b, _)| b.rows.iter().map(|r| r.calls).sum())
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
                delay = (delay * 2).min(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in = ?delay, "usage flush failed; counts are kept and retried");
            }
        }
    }
}
