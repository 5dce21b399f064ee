//! The billing tables of the store: bills, billed usage, the ledger and the billing-run
//! lock. Only inserts on bills, billed usage and the ledger (the schema refuses UPDATE
//! and DELETE on them). A new bill, and a credit that settles bills, write their
//! webhook events (`bill.issued`, `bill.paid`, `bill.overdue`) in the same transaction.
//! Must not price anything: the job (`billing::job`) does.

use super::{Backend, Store, StoreError, outbox, push_placeholders};
use crate::webhooks::events;
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
    /// Takes the billing-run lock for `holder`. A lock older than `stale_after` seconds
    /// (a run that died) is taken over. False: another run holds it.
    pub async fn try_lock_billing(&self, holder: &str, now: i64, stale_after: i64) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "INSERT INTO billing_locks (name, holder, acquired_at) VALUES ('billing-run', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at \
             WHERE billing_locks.acquired_at < $3",
        )
        .bind(holder)
        .bind(now)
        .bind(now - stale_after)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    pub async fn unlock_billing(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM billing_locks WHERE name = 'billing-run' AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
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
            let accounts: Vec<&str> = chunk.iter().map(|n| n.bill.account_id.as_str()).collect();
            self.lock_accounts(&mut tx, &accounts).await?;
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

            // Paid at issue when the balance after the charge covers it.
            let mut sql = "SELECT account_id, CAST(SUM(amount) AS BIGINT) AS balance FROM ledger WHERE account_id IN "
                .to_string();
            push_placeholders(&mut sql, 1, accounts.len());
            sql.push_str(" GROUP BY account_id");
            let mut query = sqlx::query(&sql);
            for account in &accounts {
                query = query.bind(*account);
            }
            let balances: HashMap<String, i64> = query
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("account_id")?, row.try_get("balance")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let new_events: Vec<events::NewEvent> = chunk
                .iter()
                .flat_map(|n| events::bill_issued(&n.bill, balances.get(&n.bill.account_id).copied().unwrap_or(0)))
                .collect();
            outbox::insert_events(&mut tx, &new_events).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Orders this transaction after any other one changing the same accounts' money
    /// (PostgreSQL row locks; SQLite has one writer at a time already), so the balance
    /// it reads next includes every committed credit and the events it derives from it
    /// are not missed by a concurrent one.
    async fn lock_accounts(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        accounts: &[&str],
    ) -> Result<usize, StoreError> {
        if self.backend != Backend::Postgres || accounts.is_empty() {
            return Ok(accounts.len());
        }
        let mut sql = "SELECT id FROM accounts WHERE id IN ".to_string();
        push_placeholders(&mut sql, 1, accounts.len());
        sql.push_str(" ORDER BY id FOR UPDATE");
        let mut query = sqlx::query(&sql);
        for account in accounts {
            query = query.bind(*account);
        }
        Ok(query.fetch_all(&mut **tx).await?.len())
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
        // On SQLite the INSERT comes first: a transaction that read before writing could
        // not take the write lock after another writer committed.
        let mut tx = self.pool.begin().await?;
        self.lock_accounts(&mut tx, &[account_id]).await?;
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
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE idempotency_key = $1"
        ))
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        let entry = ledger_entry(&row)?;
        if inserted.rows_affected() == 1 {
            if entry.amount > 0 {
                let settled = settled_by(&mut tx, &entry).await?;
                outbox::insert_events(&mut tx, &settled).await?;
            }
            tx.commit().await?;
            return Ok(TopupOutcome::Recorded(entry));
        }
        tx.rollback().await?;
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

/// `bill.paid` for each bill of the account that `credit` (just inserted, in `tx`)
/// turned from overdue to paid.
async fn settled_by(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    credit: &LedgerEntry,
) -> Result<Vec<events::NewEvent>, StoreError> {
    use crate::billing::ledger::{BillStatus, bill_statuses};
    let bills: Vec<BillRecord> = sqlx::query(&format!(
        "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 ORDER BY month, id"
    ))
    .bind(&credit.account_id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(bill_record)
    .collect::<Result<_, _>>()?;
    if bills.is_empty() {
        return Ok(Vec::new());
    }
    let ledger: Vec<LedgerEntry> = sqlx::query(&format!(
        "SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id = $1 ORDER BY id"
    ))
    .bind(&credit.account_id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(ledger_entry)
    .collect::<Result<_, _>>()?;
    let without: Vec<LedgerEntry> = ledger.iter().filter(|e| e.id != credit.id).cloned().collect();
    let before = bill_statuses(&bills, &without);
    let after = bill_statuses(&bills, &ledger);
    Ok(bills
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(bill, (before, after))| match (before, after) {
            (BillStatus::Overdue, BillStatus::Paid { paid_at }) => Some(events::bill_paid(bill, paid_at)),
            _ => None,
        })
        .collect())
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
