//! Credit control, the control plane's half: every `billing.credit_check_interval_ms`
//! each gateway works out, per account, what it may still spend before its balance
//! minus its unbilled running amount falls below minus its credit limit, and leaves
//! that figure in the state mirror (`AccountEntry::credit_headroom`), where the
//! pipeline compares it with the price of the call it is about to forward.
//!
//! The running amount is every call not yet on a bill, priced as the billing job
//! would: the calls in the store (all gateways' flushed counts) plus this gateway's
//! counts not yet flushed. It lags by the other gateways' flush interval plus one check
//! interval; a call in that window is not refused (see docs/BILLING.md for the bound).
//! Must not refuse anything itself or write the store: it only computes headroom.

use crate::app::App;
use crate::meter::Month;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one check found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CreditSweep {
    /// Accounts under a credit limit.
    pub limited: u64,
    /// Of which cannot pay for one more call of their most expensive action.
    pub exhausted: u64,
}

/// One check: computes every account's headroom and each action's call price.
pub async fn refresh(app: &App) -> Result<CreditSweep, StoreError> {
    let plane = &app.plane;
    let now = app.clock.now_unix();
    let month = Month::of(now, app.config.meter.billing_utc_offset_seconds)
        .ok_or_else(|| StoreError::Invalid("the clock is outside the years 0-9999".into()))?
        .to_string();
    let prices = &app.config.prices;
    for (id, price) in plane.credit_prices.iter().enumerate() {
        let name = plane.catalog.name(crate::catalog::ActionId(id as u16));
        let unit = prices.price(name, &month).map_or(0, |p| p.highest_unit());
        price.store(unit, std::sync::atomic::Ordering::Relaxed);
    }
    let default_limit = app.config.credit.default_limit;
    if default_limit.is_none() && app.mirror.accounts_with_credit_limit() == 0 {
        app.mirror.lift_credit_headrooms();
        plane.metrics.credit_exhausted_accounts.set(0);
        return Ok(CreditSweep::default());
    }
    app.mirror.mark_headrooms_lowered();
    let balances = app.store.balances().await?;
    let running = running_amounts(app, &month).await?;
    let highest_price = plane
        .credit_prices
        .iter()
        .map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let mut sweep = CreditSweep::default();
    app.mirror.for_each_account(|account| {
        let Some(limit) = account.credit_limit().or(default_limit) else {
            account.set_credit_headroom(i64::MAX);
            return;
        };
        let balance = balances.get(account.id()).copied().unwrap_or(0);
        let owed = running.get(account.id()).copied().unwrap_or(0);
        let headroom = balance.saturating_add(limit).saturating_sub(owed);
        account.set_credit_headroom(headroom);
        sweep.limited += 1;
        if headroom < highest_price {
            sweep.exhausted += 1;
        }
    });
    plane.metrics.credit_exhausted_accounts.set(sweep.exhausted as i64);
    Ok(sweep)
}

/// Each account's unbilled running amount (micro-units): every call not yet on a bill
/// through `month`, priced as the billing job would, from the store's counts plus this
/// gateway's not yet flushed. Balance minus this is what the account has available
/// (credit control's headroom before the limit, and the due sweep's `balance.low`).
pub async fn running_amounts(app: &App, month: &str) -> Result<HashMap<String, i64>, StoreError> {
    let prices = &app.config.prices;
    // (account, month, action) → (calls counted, calls billed)
    let mut usage: HashMap<(String, String, String), (u64, u64)> = HashMap::new();
    for row in app.store.unbilled_through(month).await? {
        usage.insert((row.account_id, row.month, row.action), (row.calls, row.billed));
    }
    for row in app.plane.counters.pending_rows() {
        let (calls, _) = usage.entry((row.account_id, row.month, row.action)).or_default();
        *calls += row.calls;
    }
    let mut running: HashMap<String, i64> = HashMap::new();
    for ((account, month, action), (calls, billed)) in usage {
        let amount = prices.price(&action, &month).map_or(0, |price| {
            let all = price.charge(calls).map_or(i64::MAX, |(micros, _)| micros);
            let before = price.charge(billed).map_or(0, |(micros, _)| micros);
            all.saturating_sub(before).max(0)
        });
        let sum = running.entry(account).or_default();
        *sum = sum.saturating_add(amount);
    }
    Ok(running)
}

/// The background task: a check every `interval` until shutdown. A failed check keeps
/// the last figures (calls go on being judged by them) and is retried next interval.
pub async fn run(app: Arc<App>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = refresh(&app).await {
            tracing::warn!(error = %e, "credit check failed; the last figures stay in force");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
