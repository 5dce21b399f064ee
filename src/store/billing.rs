//! The billing tables of the store: bills, billed usage, the ledger, the billing lease
//! and the record of finished runs. Only inserts on bills, billed usage and the ledger
//! (the schema refuses UPDATE and DELETE on them). Must not price anything: the job
//! (`billing::job`) does.

use super::{Store, StoreError, push_placeholders};
use sqlx::Row;
use std::collections::HashMap;

/// A bill as stored; `lines` is the JSON of `billing::job::BillLine`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRecord {
    pub id: String,
    pub account_id: String,
    pub month: String,
    pub currency: String,
    pub subtotal: i64,
    pub total: i64,
    pub lines: String,
    pub issued_at: i64,
}

/// Calls a bill charged for one (usage month, action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilledUsage {
    pub month: String,
    pub action: String,
    pub calls: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub account_id: String,
    pub at: i64,
    /// "topup", "charge" or "adjustment".
    pub kind: String,
    /// Micro-units; credits > 0, debits < 0.
    pub amount: i64,
    pub bill_id: Option<String>,
    pub idempotency_key: String,
    pub actor: String,
    pub note: Option<String>,
}

/// A bill to insert, with what it charges.
pub struct NewBill {
    pub bill: BillRecord,
    pub billed: Vec<BilledUsage>,
    pub actor: String,
}

/// Calls of (account, usage month, action) not yet charged by any bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbilled {
    pub account_id: String,
    pub month: String,
    pub action: String,
    /// All calls of the month so far.
    pub calls: u64,
    /// Of which already on a bill.
    pub billed: u64,
}

/// A finished billing run, as `billing_runs` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingRun {
    pub month: String,
    pub finished_at: i64,
    pub actor: String,
    pub bills_created: u64,
}

pub enum TopupOutcome {
    Recorded(LedgerEntry),
    /// The idempotency key was used before, for the same amount: nothing new recorded.
    Duplicate(LedgerEntry),
}

/// Rows per multi-row INSERT: 8 parameters a bill row, well under SQLite's limit.
const BILLS_PER_STATEMENT: usize = 400;

const BILL_COLUMNS: &str = "id, account_id, month, currency, subtotal, total, lines, issued_at";
const LEDGER_COLUMNS: &str = "id, account_id, at, kind, amount, bill_id, idempotency_key, actor, note";

impl Store {
    /// Takes the billing lease for `holder` until `now + lease_seconds`. A lease whose
    /// expiry has passed (its holder died, or stopped renewing) is taken over. False:
    /// another run holds it.
    pub async fn try_lock_billing(&self, holder: &str, now: i64, lease_seconds: i64) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "INSERT INTO billing_locks (name, holder, acquired_at, expires_at) VALUES ('billing-run', $1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, \
             expires_at = excluded.expires_at WHERE billing_locks.expires_at <= $2",
        )
        .bind(holder)
        .bind(now)
        .bind(now + lease_seconds)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Moves the expiry of `holder`'s lease to `now + lease_seconds`. False: the lease
    /// is someone else's now (it expired and was taken over).
    pub async fn renew_billing_lock(&self, holder: &str, now: i64, lease_seconds: i64) -> Result<bool, StoreError> {
        let renewed =
            sqlx::query("UPDATE billing_locks SET expires_at = $2 WHERE name = 'billing-run' AND holder = $1")
                .bind(holder)
                .bind(now + lease_seconds)
                .execute(&self.pool)
                .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Who holds the billing lease and until when, if anyone ever took it.
    pub async fn billing_lock(&self) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query("SELECT holder, expires_at FROM billing_locks WHERE name = 'billing-run'")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((row.try_get("holder")?, row.try_get("expires_at")?))),
        }
    }

    pub async fn unlock_billing(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM billing_locks WHERE name = 'billing-run' AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the run for `month` finished; a month already recorded keeps its
    /// first record.
    pub async fn record_billing_run(
        &self,
        month: &str,
        now: i64,
        actor: &str,
        bills_created: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO billing_runs (month, finished_at, actor, bills_created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (month) DO NOTHING",
        )
        .bind(month)
        .bind(now)
        .bind(actor)
        .bind(bills_created as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every finished run, oldest month first.
    pub async fn billing_runs(&self) -> Result<Vec<BillingRun>, StoreError> {
        let rows = sqlx::query("SELECT month, finished_at, actor, bills_created FROM billing_runs ORDER BY month")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(BillingRun {
                    month: row.try_get("month")?,
                    finished_at: row.try_get("finished_at")?,
                    actor: row.try_get("actor")?,
                    bills_created: row.try_get::<i64, _>("bills_created")?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Months before `current` with flushed calls of an account that has no bill for
    /// that month, and no finished run: the months a run was missed for, oldest first.
    /// Reads the whole usage table: the scheduler asks once per process and month.
    pub async fn months_missing_a_run(&self, current: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT u.month FROM usage u \
             WHERE u.month < $1 AND u.calls > 0 \
             AND NOT EXISTS (SELECT 1 FROM billing_runs r WHERE r.month = u.month) \
             AND NOT EXISTS (SELECT 1 FROM bills b WHERE b.account_id = u.account_id AND b.month = u.month) \
             ORDER BY u.month",
        )
        .bind(current)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get("month"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Every call of `month` and earlier months not yet on a bill.
    pub async fn unbilled_through(&self, month: &str) -> Result<Vec<Unbilled>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.account_id, u.month, u.action, u.calls, COALESCE(b.calls, 0) AS billed \
             FROM usage u LEFT JOIN ( \
                 SELECT account_id, month, action, CAST(SUM(calls) AS BIGINT) AS calls FROM billed_usage \
                 WHERE month <= $1 GROUP BY account_id, month, action \
             ) b ON b.account_id = u.account_id AND b.month = u.month AND b.action = u.action \
             WHERE u.month <= $1 AND u.calls > COALESCE(b.calls, 0) \
             ORDER BY u.account_id, u.month, u.action",
        )
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Unbilled {
                    account_id: row.try_get("account_id")?,
                    month: row.try_get("month")?,
                    action: row.try_get("action")?,
                    calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
                    billed: row.try_get::<i64, _>("billed")?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Accounts that have a bill for `month`.
    pub async fn billed_accounts(&self, month: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT account_id FROM bills WHERE month = $1")
            .bind(month)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get("account_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The balance (micro-units) of every account with a ledger entry.
    pub async fn balances(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT account_id, CAST(SUM(amount) AS BIGINT) AS balance FROM ledger GROUP BY account_id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account_id")?, row.try_get("balance")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn balance(&self, account_id: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS balance FROM ledger WHERE account_id = $1")
                .bind(account_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("balance")?)
    }

    /// Inserts bills, their billed usage and their charges, all or nothing. A bill whose
    /// (account, month) exists already makes the whole call fail: the caller skipped
    /// those, so it means a concurrent run, which the lock should have stopped.
    pub async fn insert_bills(&self, bills: &[NewBill]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in bills.chunks(BILLS_PER_STATEMENT) {
            let mut sql = format!("INSERT INTO bills ({BILL_COLUMNS}) VALUES ");
            push_placeholders(&mut sql, chunk.len(), 8);
            let mut query = sqlx::query(&sql);
            for new in chunk {
                let b = &new.bill;
                query = query
                    .bind(&b.id)
                    .bind(&b.account_id)
                    .bind(&b.month)
                    .bind(&b.currency)
                    .bind(b.subtotal)
                    .bind(b.total)
                    .bind(&b.lines)
                    .bind(b.issued_at);
            }
            query.execute(&mut *tx).await?;

            let billed: Vec<(&NewBill, &BilledUsage)> = chunk
                .iter()
                .flat_map(|n| n.billed.iter().map(move |u| (n, u)))
                .collect();
            for part in billed.chunks(BILLS_PER_STATEMENT) {
                let mut sql =
                    "INSERT INTO billed_usage (bill_id, account_id, month, action, calls) VALUES ".to_string();
                push_placeholders(&mut sql, part.len(), 5);
                let mut query = sqlx::query(&sql);
                for (new, usage) in part {
                    query = query
                        .bind(&new.bill.id)
                        .bind(&new.bill.account_id)
                        .bind(&usage.month)
                        .bind(&usage.action)
                        .bind(usage.calls as i64);
                }
                query.execute(&mut *tx).await?;
            }

            let charged: Vec<&NewBill> = chunk.iter().filter(|n| n.bill.total != 0).collect();
            if !charged.is_empty() {
                let mut sql =
                    "INSERT INTO ledger (account_id, at, kind, amount, bill_id, idempotency_key, actor, note) VALUES "
                        .to_string();
                push_placeholders(&mut sql, charged.len(), 8);
                let mut query = sqlx::query(&sql);
                for new in charged {
                    let b = &new.bill;
                    query = query
                        .bind(&b.account_id)
                        .bind(b.issued_at)
                        .bind("charge")
                        .bind(-b.total)
                        .bind(&b.id)
                        .bind(format!("charge:{}", b.id))
                        .bind(&new.actor)
                        .bind(format!("bill {} for {}", b.id, b.month));
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a payment once per idempotency key (per account). The same key with
    /// another amount is refused.
    pub async fn record_topup(
        &self,
        account_id: &str,
        amount: i64,
        idempotency_key: &str,
        actor: &str,
        now: i64,
    ) -> Result<TopupOutcome, StoreError> {
        if amount <= 0 {
            return Err(StoreError::Invalid("a top-up amount must be positive".into()));
        }
        self.record_entry(account_id, "topup", amount, idempotency_key, actor, None, now)
            .await
    }

    /// Records an operator's correction (a credit > 0 or a debit < 0, with its reason),
    /// once per idempotency key. Nothing is ever edited: a correction is a new entry.
    pub async fn record_adjustment(
        &self,
        account_id: &str,
        amount: i64,
        reason: &str,
        idempotency_key: &str,
        actor: &str,
        now: i64,
    ) -> Result<TopupOutcome, StoreError> {
        if amount == 0 {
            return Err(StoreError::Invalid("an adjustment amount cannot be zero".into()));
        }
        self.record_entry(
            account_id,
            "adjustment",
            amount,
            idempotency_key,
            actor,
            Some(reason),
            now,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_entry(
        &self,
        account_id: &str,
        kind: &str,
        amount: i64,
        idempotency_key: &str,
        actor: &str,
        note: Option<&str>,
        now: i64,
    ) -> Result<TopupOutcome, StoreError> {
        if self.get_account(account_id).await?.is_none() {
            return Err(StoreError::NotFound(format!("account {account_id}")));
        }
        let key = format!("{kind}:{account_id}:{idempotency_key}");
        let inserted = sqlx::query(
            "INSERT INTO ledger (account_id, at, kind, amount, bill_id, idempotency_key, actor, note) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(account_id)
        .bind(now)
        .bind(kind)
        .bind(amount)
        .bind(&key)
        .bind(actor)
        .bind(note)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE idempotency_key = $1"
        ))
        .bind(&key)
        .fetch_one(&self.pool)
        .await?;
        let entry = ledger_entry(&row)?;
        if inserted.rows_affected() == 1 {
            return Ok(TopupOutcome::Recorded(entry));
        }
        if entry.amount != amount {
            return Err(StoreError::Conflict(format!(
                "a {kind} with idempotency key {idempotency_key:?} and another amount"
            )));
        }
        Ok(TopupOutcome::Duplicate(entry))
    }

    /// An account's ledger, oldest first.
    pub async fn ledger(&self, account_id: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id = $1 ORDER BY id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ledger_entry).collect()
    }

    /// An account's bills, oldest first.
    pub async fn bills(&self, account_id: &str) -> Result<Vec<BillRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 ORDER BY month, id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bill_record).collect()
    }

    pub async fn bill(&self, id: &str) -> Result<Option<BillRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BILL_COLUMNS} FROM bills WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(bill_record).transpose()
    }

    /// Every bill of `month`, by account.
    pub async fn bills_of_month(&self, month: &str) -> Result<Vec<BillRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BILL_COLUMNS} FROM bills WHERE month = $1 ORDER BY account_id"
        ))
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bill_record).collect()
    }
}

fn bill_record(row: &sqlx::any::AnyRow) -> Result<BillRecord, StoreError> {
    Ok(BillRecord {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        month: row.try_get("month")?,
        currency: row.try_get("currency")?,
        subtotal: row.try_get("subtotal")?,
        total: row.try_get("total")?,
        lines: row.try_get("lines")?,
        issued_at: row.try_get("issued_at")?,
    })
}

fn ledger_entry(row: &sqlx::any::AnyRow) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        amount: row.try_get("amount")?,
        bill_id: row.try_get("bill_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        actor: row.try_get("actor")?,
        note: row.try_get("note")?,
    })
}
