//! The monthly billing job: for a closed month M, every account with calls not yet on
//! a bill (M's, and late usage of earlier months) gets one bill for M with a line per
//! (usage month, action), due `billing.grace_days` after issue. The charge, its audit entry and the account's `arrears` flag
//! go in the same transaction as the bill, the flag decided from the balance read in
//! that transaction (`billing::ledger`'s one rule), so a top-up committed at any moment
//! of the run is counted; then the changes are published to every gateway. Accounts no
//! bill touched are settled the same way, one transaction each, so a stale flag or
//! reason is repaired.
//!
//! Idempotent: an account with a bill for M is skipped (unique (account, month) in the
//! store, charge keyed by bill id); two runs cannot overlap (a lease in the store, renewed
//! while the run goes on, taken over once it expires). A finished run is recorded per
//! month (`billing_runs`), which is what the scheduler (`billing::scheduler`) reads.
//! Must not edit or delete a bill or a ledger entry, must not bill an open month, and
//! must never charge less than zero: a late line that the month's tiers would price
//! below what was charged is 0.

use super::pricing::{Price, PriceBook, TierCharge, format_amount};
use crate::meter::Month;
use crate::state::StatePublisher;
use crate::store::billing::{BillRecord, BilledUsage, NewBill, Unbilled};
use crate::store::{AccountChange, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How long the billing lease lasts without a renewal: a run that died (killed, cut
/// off from the store) blocks the next one for at most this long.
pub const LEASE_SECONDS: i64 = 60;
/// How often a run renews its lease: several renewals fit in one lease, so a slow
/// store round trip does not lose it.
const LEASE_RENEWAL: Duration = Duration::from_secs(15);
/// Accounts written per transaction.
const ACCOUNTS_PER_TRANSACTION: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Calls of the bill's month.
    Usage,
    /// Calls of an earlier month that reached the store after that month was billed.
    LateUsage,
}

/// One line of a bill, as stored in `bills.lines` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub kind: LineKind,
    pub action: String,
    /// The month the calls were made in.
    pub month: String,
    pub calls: u64,
    /// Calls of that month billed before (late usage continues the month's tiers).
    pub previously_billed: u64,
    /// The price in force for `month`, and the month it took effect.
    pub price: Price,
    pub price_from: Option<String>,
    /// The month's tier breakdown, counting every call of the month billed so far.
    pub tiers: Vec<TierCharge>,
    /// Micro-units: price of all the month's calls billed so far, minus what was
    /// charged for `previously_billed`, and never below 0 (volume tiers can price more
    /// calls lower; a late line never lowers what was charged).
    pub amount: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("{0} is not over yet in the billing time zone: only past months can be billed")]
    OpenMonth(Month),
    #[error(
        "another billing run holds the lease; try again when it has finished (a run that died frees it within a minute)"
    )]
    Locked,
    #[error("the billing lease was lost to another run (not renewed in time); this run stopped")]
    LeaseLost,
    #[error(
        "no price for {action} in {month}: add one to the catalog (actions.{action}.prices) or set billing.default_unit"
    )]
    NoPrice { action: String, month: String },
    #[error("amount overflow billing {account}")]
    Overflow { account: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not tell the gateways about account {account}: {error}")]
    Publish { account: String, error: String },
}

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub month: Month,
    /// Unix seconds.
    pub now: i64,
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Who runs it, for the audit log and the ledger.
    pub actor: String,
    /// From issue to due date (`billing.grace_days`): the new bills are due at
    /// `now + grace_seconds`.
    pub grace_seconds: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub month: String,
    pub currency: String,
    pub dry_run: bool,
    /// Accounts that got a bill in this run.
    pub bills_created: u64,
    /// Accounts that had a bill for the month before this run (skipped).
    pub already_billed: u64,
    /// Sum of the new bills' totals (micro-units; a decimal string in JSON).
    #[serde(serialize_with = "crate::billing::pricing::serialize_amount")]
    pub total: i64,
    /// New bills covered by the balance at issue.
    pub paid: u64,
    /// New bills unpaid and due at issue (no grace).
    pub overdue: u64,
    /// New bills unpaid with a due date still to come (the due sweep suspends for them
    /// if it passes unpaid).
    pub open: u64,
    pub arrears_set: u64,
    pub arrears_lifted: u64,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}billing {}: {} bills created ({} already billed), total {} {}, {} paid, {} overdue{}; arrears set on {}, lifted on {}",
            if self.dry_run { "[dry run] " } else { "" },
            self.month,
            self.bills_created,
            self.already_billed,
            format_amount(self.total),
            self.currency,
            self.paid,
            self.overdue,
            match self.open {
                0 => String::new(),
                open => format!(", {open} open (due later)"),
            },
            self.arrears_set,
            self.arrears_lifted
        )
    }
}

/// The bill id of `account` for `month`: stable, so a re-run finds it.
pub fn bill_id(account: &str, month: Month) -> String {
    format!("B{:04}{:02}-{account}", month.year(), month.number())
}

/// Bills `request.month`. `progress(done, total)` is called as accounts are written.
pub async fn run(
    store: &Store,
    prices: &PriceBook,
    publisher: &dyn StatePublisher,
    billing_utc_offset_seconds: i32,
    request: RunRequest,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunSummary, BillingError> {
    let summary = run_leased(
        store,
        prices,
        publisher,
        billing_utc_offset_seconds,
        request,
        progress,
        false,
    )
    .await?;
    Ok(summary.expect("a manual run is never skipped"))
}

/// Bills `request.month` unless a finished run of it is recorded (checked under the
/// lease, so of N schedulers that all saw the month pending, one runs it). None: it
/// was recorded already.
pub async fn run_unless_done(
    store: &Store,
    prices: &PriceBook,
    publisher: &dyn StatePublisher,
    billing_utc_offset_seconds: i32,
    request: RunRequest,
) -> Result<Option<RunSummary>, BillingError> {
    run_leased(
        store,
        prices,
        publisher,
        billing_utc_offset_seconds,
        request,
        &mut |_, _| {},
        true,
    )
    .await
}

async fn run_leased(
    store: &Store,
    prices: &PriceBook,
    publisher: &dyn StatePublisher,
    billing_utc_offset_seconds: i32,
    request: RunRequest,
    progress: &mut (dyn FnMut(u64, u64) + Send),
    unless_done: bool,
) -> Result<Option<RunSummary>, BillingError> {
    let current = Month::of(request.now, billing_utc_offset_seconds)
        .ok_or_else(|| BillingError::Store(StoreError::Invalid("the clock is outside the years 0-9999".into())))?;
    if request.month >= current {
        return Err(BillingError::OpenMonth(request.month));
    }
    if request.dry_run {
        return bill_month(store, prices, publisher, &request, progress).await.map(Some);
    }
    let holder = format!("{}:{}", request.actor, uuid::Uuid::new_v4().simple());
    if !store.try_lock_billing(&holder, request.now, LEASE_SECONDS).await? {
        return Err(BillingError::Locked);
    }
    let month = request.month.to_string();
    let work = async {
        if unless_done && store.billing_runs().await?.iter().any(|r| r.month == month) {
            return Ok(None);
        }
        let summary = bill_month(store, prices, publisher, &request, progress).await?;
        store
            .record_billing_run(&month, request.now, &request.actor, summary.bills_created)
            .await?;
        Ok::<_, BillingError>(Some(summary))
    };
    let result = tokio::select! {
        result = work => result,
        lost = keep_lease(store, &holder, request.now) => Err(lost),
    };
    if let Err(e) = store.unlock_billing(&holder).await {
        tracing::warn!(error = %e, "could not release the billing lease; the next run takes it over once it expires");
    }
    result
}

/// Renews the lease until it is lost (then returns), while the run it guards goes on:
/// both are polled by the same task, so a run that dies stops renewing. The expiry is
/// counted from the run's `now` plus the time the run has taken, so a pinned clock in
/// tests gives the same leases as the wall clock.
async fn keep_lease(store: &Store, holder: &str, started_at: i64) -> BillingError {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEWAL).await;
        let now = started_at + started.elapsed().as_secs() as i64;
        match store.renew_billing_lock(holder, now, LEASE_SECONDS).await {
            Ok(true) => {}
            Ok(false) => return BillingError::LeaseLost,
            // The run itself meets the same store: it fails or the next renewal works.
            Err(e) => tracing::warn!(error = %e, "could not renew the billing lease; retrying"),
        }
    }
}

async fn bill_month(
    store: &Store,
    prices: &PriceBook,
    publisher: &dyn StatePublisher,
    request: &RunRequest,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunSummary, BillingError> {
    let month = request.month.to_string();
    let mut summary = RunSummary {
        month: month.clone(),
        currency: prices.currency.clone(),
        dry_run: request.dry_run,
        ..Default::default()
    };
    let already: HashSet<String> = store.billed_accounts(&month).await?.into_iter().collect();
    summary.already_billed = already.len() as u64;
    let mut by_account: BTreeMap<String, Vec<Unbilled>> = BTreeMap::new();
    for row in store.unbilled_through(&month).await? {
        by_account.entry(row.account_id.clone()).or_default().push(row);
    }
    for rows in by_account.values_mut() {
        rows.sort_unstable_by(|a, b| (&a.month, &a.action).cmp(&(&b.month, &b.action)));
    }
    let mut bills = Vec::with_capacity(by_account.len());
    for (account, rows) in by_account {
        if already.contains(&account) {
            // Its late usage waits for the next month's bill.
            continue;
        }
        let bill = price_bill(&account, request, prices, &rows)?;
        summary.bills_created += 1;
        summary.total += bill.bill.total;
        bills.push(bill);
    }
    let total_accounts = bills.len() as u64;
    if request.dry_run {
        // An estimate: the balances as they are now, before any of these charges.
        let balances = store.balances().await?;
        for bill in &bills {
            if balances.get(&bill.bill.account_id).copied().unwrap_or(0) >= bill.bill.total {
                summary.paid += 1;
            } else if bill.bill.due_at <= request.now {
                summary.overdue += 1;
            } else {
                summary.open += 1;
            }
        }
        return Ok(summary);
    }
    let mut done = 0u64;
    let mut settled = HashSet::with_capacity(bills.len());
    progress(done, total_accounts);
    for chunk in bills.chunks(ACCOUNTS_PER_TRANSACTION) {
        for billed in store.insert_bills(chunk, &request.actor, request.now).await? {
            if billed.balance >= 0 {
                summary.paid += 1;
            } else if request.grace_seconds <= 0 {
                summary.overdue += 1;
            } else {
                summary.open += 1;
            }
            count_and_publish(publisher, &billed.change, &mut summary).await?;
            settled.insert(billed.account_id);
        }
        done += chunk.len() as u64;
        progress(done, total_accounts);
    }
    reconcile_arrears(store, publisher, request, &settled, &mut summary).await?;
    Ok(summary)
}

fn price_bill(
    account: &str,
    request: &RunRequest,
    prices: &PriceBook,
    rows: &[Unbilled],
) -> Result<NewBill, BillingError> {
    let month = request.month.to_string();
    let overflow = || BillingError::Overflow {
        account: account.to_string(),
    };
    let mut lines = Vec::with_capacity(rows.len());
    let mut billed = Vec::with_capacity(rows.len());
    let mut subtotal = 0i64;
    for row in rows {
        let (price_from, price) =
            prices
                .price_in_force(&row.action, &row.month)
                .ok_or_else(|| BillingError::NoPrice {
                    action: row.action.clone(),
                    month: row.month.clone(),
                })?;
        let (all, tiers) = price.charge(row.calls).ok_or_else(overflow)?;
        let (before, _) = price.charge(row.billed).ok_or_else(overflow)?;
        let amount = (all - before).max(0);
        subtotal = subtotal.checked_add(amount).ok_or_else(overflow)?;
        let calls = row.calls - row.billed;
        lines.push(BillLine {
            kind: if row.month == month && row.billed == 0 {
                LineKind::Usage
            } else {
                LineKind::LateUsage
            },
            action: row.action.clone(),
            month: row.month.clone(),
            calls,
            previously_billed: row.billed,
            price: price.clone(),
            price_from: price_from.map(str::to_string),
            tiers,
            amount,
        });
        billed.push(BilledUsage {
            month: row.month.clone(),
            action: row.action.clone(),
            calls,
        });
    }
    let total = prices.round_total(subtotal);
    Ok(NewBill {
        bill: BillRecord {
            id: bill_id(account, request.month),
            account_id: account.to_string(),
            month,
            currency: prices.currency.clone(),
            subtotal,
            total,
            lines: serde_json::to_string(&lines).expect("bill lines serialize"),
            issued_at: request.now,
            due_at: request.now + request.grace_seconds.max(0),
        },
        billed,
        actor: request.actor.clone(),
    })
}

/// Settles the arrears of every account this run did not bill whose flag may be out of
/// step with its balance (in arrears, or owing), each in its own transaction. Accounts
/// in arrears are published even when their flag did not change here, so a run that
/// died between the store and the publish is repaired by the next one.
async fn reconcile_arrears(
    store: &Store,
    publisher: &dyn StatePublisher,
    request: &RunRequest,
    settled: &HashSet<String>,
    summary: &mut RunSummary,
) -> Result<(), BillingError> {
    let balances = store.balances().await?;
    for account in store.all_accounts().await? {
        if settled.contains(&account.id) {
            continue;
        }
        let owes = balances.get(&account.id).is_some_and(|b| *b < 0);
        if !owes && account.arrears.is_none() {
            continue;
        }
        let change = store.settle_arrears(&account.id, &request.actor, request.now).await?;
        count_and_publish(publisher, &change, summary).await?;
    }
    Ok(())
}

/// Counts a committed arrears change in the summary and publishes it (and any account
/// in arrears, changed or not).
async fn count_and_publish(
    publisher: &dyn StatePublisher,
    change: &AccountChange,
    summary: &mut RunSummary,
) -> Result<(), BillingError> {
    match (&change.before.arrears, &change.after.arrears) {
        (None, Some(_)) => summary.arrears_set += 1,
        (Some(_), None) => summary.arrears_lifted += 1,
        _ => {}
    }
    if change.changed || change.after.arrears.is_some() {
        publish(publisher, &change.after).await?;
    }
    Ok(())
}

/// Publishes an account change, retrying for a few seconds.
pub async fn publish(
    publisher: &dyn StatePublisher,
    account: &crate::store::records::AccountRecord,
) -> Result<(), BillingError> {
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match publisher.account_changed(account).await {
            Ok(()) => return Ok(()),
            Err(e) if attempts >= 6 => {
                return Err(BillingError::Publish {
                    account: account.id.clone(),
                    error: e.to_string(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, account = %account.id, "state cache unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempts += 1;
            }
        }
    }
}
