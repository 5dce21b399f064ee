//! Webhooks: signed notices of billing events (`bill.issued`, `bill.paid`,
//! `bill.overdue`, `bill.reminder`, `account.suspended`, `account.reactivated`,
//! `balance.low`, `billing.run_late`) to the operator's endpoints. Events are values built here (`events`) and written by the
//! store into its outbox in the transaction of the change that causes them; the
//! delivery worker (`deliver`) sends them from there, signed (`sign`), at least once.
//! Must not be called from the data plane.

pub mod deliver;
pub mod events;
pub mod sign;

use crate::store::{Store, StoreError};

/// Raises `billing.run_late` for `month` (one event per month, however often it is
/// called): for the scheduler, when a month is still not billed past its deadline.
/// True when this call created the event.
pub async fn billing_run_late(store: &Store, month: &str, now: i64, detail: &str) -> Result<bool, StoreError> {
    store.emit_event(&events::billing_run_late(month, now, detail)).await
}
