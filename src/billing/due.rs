//! The due sweep: the background task in every `serve` process that acts when time
//! passes with nobody calling. Every `billing.due_check_interval_ms` it looks at the
//! accounts that owe something or are in arrears and, on the gateway's clock:
//!
//! - suspends for a bill whose due date passed unpaid (and tells `bill.overdue`), lifts
//!   or rewrites a stale arrears flag: each account whose flag differs from what
//!   `billing::ledger`'s one rule says now is settled by `Store::settle_arrears`, which
//!   decides again under the account's lock from the ledger, so N gateways sweeping
//!   together change it once;
//! - raises `bill.reminder` for an unpaid bill `billing.reminder_days` before its due
//!   date (the nearest such day reached; once per bill and day: a stable event id);
//! - raises `balance.low` when an account's available funds (balance minus its unbilled
//!   running amount, as credit control computes it) are below
//!   `billing.balance_low_threshold`, once per crossing: the event id is the account's
//!   and its latest top-up's or credit's, so only new money re-arms it. Accounts never
//!   funded get none (they are not running out of anything);
//! - refreshes the outbox gauges (pending events, oldest pending age).
//!
//! Idempotent and stateless: a sweep repeated, or run by N gateways at once, changes
//! and emits what one would. Reads the time from `app.clock` only. Must not write a
//! flag without the store's settlement (the one rule decides under the lock), and must
//! not run on the request path.

use crate::app::App;
use crate::billing::ledger::{self, arrears_reason};
use crate::meter::Month;
use crate::store::StoreError;
use crate::webhooks::events::{self, LowBalance, NewEvent};
use std::sync::Arc;
use tokio::sync::watch;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Accounts looked at (owing or in arrears).
    pub candidates: u64,
    /// Accounts whose arrears flag this sweep set, rewrote or lifted.
    pub settled: u64,
    /// Events this sweep added to the outbox (reminders, low balances).
    pub events: u64,
}

pub struct DueSweep {
    app: Arc<App>,
    /// The audit log's actor of the flags this gateway's sweep changes.
    actor: String,
}

/// Accounts per books read: one IN list each.
const ACCOUNTS_PER_READ: usize = 500;

impl DueSweep {
    pub fn new(app: Arc<App>) -> Self {
        let actor = format!("due-sweep@{}", app.plane.counters.journal().instance_id());
        Self { app, actor }
    }

    /// A sweep at start (a gateway back after downtime acts at once), then one every
    /// `billing.due_check_interval_ms` until `shutdown`. A failed sweep is retried at the
    /// next interval: nothing it skipped is lost, the next one sees the same books.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "due sweep failed; retrying at the next interval");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.app.config.due.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One sweep at the clock's `now`.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = self.app.clock.now_unix();
        let mut report = SweepReport::default();
        self.settle_and_remind(now, &mut report).await?;
        if self.app.config.due.balance_low_threshold.is_some() {
            report.events += self.balance_low(now).await?;
        }
        self.refresh_outbox_gauges(now).await?;
        Ok(report)
    }

    async fn settle_and_remind(&self, now: i64, report: &mut SweepReport) -> Result<(), StoreError> {
        let store = &self.app.store;
        let candidates = store.due_candidates().await?;
        report.candidates = candidates.len() as u64;
        let reminder_days = &self.app.config.due.reminder_days;
        for part in candidates.chunks(ACCOUNTS_PER_READ) {
            let ids: Vec<&str> = part.iter().map(|(id, _)| id.as_str()).collect();
            let books = store.books(&ids).await?;
            let mut reminders: Vec<NewEvent> = Vec::new();
            for (id, reason) in part {
                let books = books.get(id).cloned().unwrap_or_default();
                let wanted = arrears_reason(ledger::overdue_owed(&books.bills, books.funds, now));
                if wanted != *reason {
                    // Decided again under the account's lock: another gateway may have
                    // settled it meanwhile, or a payment come in.
                    let change = store.settle_arrears(id, &self.actor, now).await?;
                    if change.changed {
                        report.settled += 1;
                        tracing::info!(account = %id, arrears = ?change.after.arrears, "due sweep settled arrears");
                    }
                    if (change.changed || change.after.arrears.is_some())
                        && let Err(e) = crate::billing::job::publish(self.app.publisher.as_ref(), &change.after).await
                    {
                        tracing::warn!(error = %e, account = %id, "due sweep could not publish an account change");
                    }
                }
                if reminder_days.is_empty() {
                    continue;
                }
                let due = ledger::amounts_due(&books.bills, books.funds);
                for (bill, amount_due) in books.bills.iter().zip(due) {
                    if amount_due <= 0 || now >= bill.due_at {
                        continue;
                    }
                    if let Some(days) = reminder_reached(reminder_days, bill.due_at, now) {
                        reminders.push(events::bill_reminder(bill, days, books.balance, amount_due, now));
                    }
                }
            }
            report.events += store.emit_events_once(&reminders).await?;
        }
        Ok(())
    }

    /// `balance.low` for every funded account whose available funds are below the
    /// threshold now; returns how many events were new.
    async fn balance_low(&self, now: i64) -> Result<u64, StoreError> {
        let Some(threshold) = self.app.config.due.balance_low_threshold else {
            return Ok(0);
        };
        let store = &self.app.store;
        let fundings = store.latest_fundings().await?;
        if fundings.is_empty() {
            return Ok(0);
        }
        let month = Month::of(now, self.app.config.meter.billing_utc_offset_seconds)
            .ok_or_else(|| StoreError::Invalid("the clock is outside the years 0-9999".into()))?
            .to_string();
        let balances = store.balances().await?;
        let running = crate::billing::credit::running_amounts(&self.app, &month).await?;
        let currency = &self.app.config.prices.currency;
        let mut low = Vec::new();
        for (account, funded_by) in &fundings {
            let balance = balances.get(account).copied().unwrap_or(0);
            let unbilled = running.get(account).copied().unwrap_or(0);
            let available = balance.saturating_sub(unbilled);
            if available < threshold {
                low.push(events::balance_low(
                    &LowBalance {
                        account,
                        available,
                        balance,
                        running: unbilled,
                        threshold,
                        funded_by: *funded_by,
                        currency,
                    },
                    now,
                ));
            }
        }
        store.emit_events_once(&low).await
    }

    async fn refresh_outbox_gauges(&self, now: i64) -> Result<(), StoreError> {
        let (pending, oldest) = self.app.store.pending_events().await?;
        let metrics = &self.app.plane.metrics.webhooks;
        metrics.events_pending.set(pending);
        metrics
            .oldest_pending_seconds
            .set(oldest.map_or(0, |created| (now - created).max(0)));
        Ok(())
    }
}

/// The reminder day (of `days`, largest first) an unpaid bill due at `due_at` has
/// reached at `now`: the nearest one, so a gateway that was down over the 3-day mark
/// sends only the 1-day one. None before the first, and from the due date on.
fn reminder_reached(days: &[u32], due_at: i64, now: i64) -> Option<u32> {
    if now >= due_at {
        return None;
    }
    days.iter()
        .rev()
        .find(|d| now >= due_at - i64::from(**d) * 86_400)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_reminder_day_reached() {
        let due = 10 * 86_400;
        let days = [3, 1];
        assert_eq!(reminder_reached(&days, due, due - 3 * 86_400 - 1), None);
        assert_eq!(reminder_reached(&days, due, due - 3 * 86_400), Some(3));
        assert_eq!(reminder_reached(&days, due, due - 86_400 - 1), Some(3));
        assert_eq!(reminder_reached(&days, due, due - 86_400), Some(1));
        assert_eq!(reminder_reached(&days, due, due - 1), Some(1));
        assert_eq!(reminder_reached(&days, due, due), None, "overdue, not reminded");
        assert_eq!(reminder_reached(&[], due, due - 1), None);
    }
}
