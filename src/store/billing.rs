//! The billing tables of the store: bills, billed usage, the ledger, the billing lease
//! and the record of finished runs. Only inserts on bills, billed usage and the ledger
//! (the schema refuses UPDATE and DELETE on them, a negative top-up, credit or bill
//! total, and a positive charge; a bill's due date is written with it). Every money
//! movement commits in one transaction with its audit entry and with the account's
//! arrears flag as the books read in that same transaction say (balance, funds and the
//! bills with their due dates: `billing::ledger`'s one rule at the transaction's `now`),
//! the account rows locked first so a concurrent top-up, billing run and due sweep are
//! ordered. Must not price anything: the job (`billing::job`) does; must not decide a
//! flag from anything read outside the transaction that writes it. A new bill, a credit
//! that settles bills and an arrears change write their webhook events in the same
//! transaction.

use super::records::{AccountRecord, Suspension};
use super::{
    ACCOUNT_COLUMNS, AccountChange, AuditInsert, Backend, Store, StoreError, account_from_row, account_json,
    bind_account, insert_audit, outbox, push_placeholders,
};
use crate::billing::ledger::{self, arrears_reason};
use crate::billing::pricing::format_amount;
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
    /// When it must be paid by: `issued_at` plus `billing.grace_days`. Unpaid after
    /// this, the bill is overdue and the account in arrears.
    pub due_at: i64,
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
    /// "topup", "credit", "charge", or "adjustment" (history: no longer written).
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

/// A top-up or credit as committed: the entry, the balance after it and what its
/// transaction did to the account's arrears flag.
pub struct Movement {
    pub outcome: TopupOutcome,
    pub balance: i64,
    pub account: AccountChange,
}

/// One account as a billing transaction left it.
pub struct Billed {
    pub account_id: String,
    /// After the bill's charge, read in the transaction that inserted it.
    pub balance: i64,
    pub change: AccountChange,
}

/// Rows per multi-row INSERT: 9 parameters a bill row, well under SQLite's limit.
const BILLS_PER_STATEMENT: usize = 400;

const BILL_COLUMNS: &str = "id, account_id, month, currency, subtotal, total, lines, issued_at, due_at";
/// The same, as read: a bill written without a due date (by a gateway of the previous
/// version, on SQLite, which cannot default it) was due when issued.
const BILL_SELECT: &str =
    "id, account_id, month, currency, subtotal, total, lines, issued_at, COALESCE(due_at, issued_at) AS due_at";
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

    /// Every call of `month` and earlier months not yet on a bill, in no order. Reads
    /// only rows still to bill (migration 0010: the rows never billed by an index of
    /// their own, the late ones through `usage_late`), not the months already billed.
    pub async fn unbilled_through(&self, month: &str) -> Result<Vec<Unbilled>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, month, action, calls, billed FROM usage WHERE billed = 0 AND month <= $1 \
             UNION ALL \
             SELECT u.account_id, u.month, u.action, u.calls, u.billed FROM usage_late l \
             JOIN usage u ON u.account_id = l.account_id AND u.month = l.month AND u.action = l.action \
             WHERE u.billed > 0 AND u.calls > u.billed AND u.month <= $1",
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
        let rows = sqlx::query("SELECT account_id, balance FROM account_balances")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account_id")?, row.try_get("balance")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn balance(&self, account_id: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(balance), 0) AS balance FROM account_balances WHERE account_id = $1")
                .bind(account_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("balance")?)
    }

    /// Inserts bills, their billed usage and their charges, audits each charge, then
    /// sets or clears each account's arrears flag from the balance read in the same
    /// transaction: all or nothing. A bill whose (account, month) exists already makes
    /// the whole call fail: the caller skipped those, so it means a concurrent run,
    /// which the lock should have stopped. `actor` and `now` are the run's.
    pub async fn insert_bills(&self, bills: &[NewBill], actor: &str, now: i64) -> Result<Vec<Billed>, StoreError> {
        if let Some(negative) = bills.iter().find(|n| n.bill.total < 0 || n.bill.subtotal < 0) {
            return Err(StoreError::Invalid(format!(
                "bill {} has a negative total",
                negative.bill.id
            )));
        }
        let mut ids: Vec<&str> = bills.iter().map(|n| n.bill.account_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tx = self.pool.begin().await?;
        self.lock_accounts(&mut tx, &ids).await?;
        for chunk in bills.chunks(BILLS_PER_STATEMENT) {
            let accounts: Vec<&str> = chunk.iter().map(|n| n.bill.account_id.as_str()).collect();
            self.lock_accounts(&mut tx, &accounts).await?;
            let mut sql = format!("INSERT INTO bills ({BILL_COLUMNS}) VALUES ");
            push_placeholders(&mut sql, chunk.len(), 9);
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
                    .bind(b.issued_at)
                    .bind(b.due_at);
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
            let charged_count = charged.len();
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
                // Each charge's audit entry, in the same transaction.
                let mut sql = "INSERT INTO audit_log (at, actor, action, target, before, after) VALUES ".to_string();
                push_placeholders(&mut sql, charged_count, 6);
                let mut query = sqlx::query(&sql);
                for new in chunk.iter().filter(|n| n.bill.total != 0) {
                    let b = &new.bill;
                    let after = serde_json::json!({
                        "kind": "charge", "amount": format_amount(-b.total), "bill_id": b.id, "month": b.month,
                    });
                    query = query
                        .bind(b.issued_at)
                        .bind(&new.actor)
                        .bind("ledger.charge")
                        .bind(&b.account_id)
                        .bind(None::<String>)
                        .bind(after.to_string());
                }
                query.execute(&mut *tx).await?;
            }

            // Paid at issue when the balance after the charge covers it.
            let mut sql = "SELECT account_id, balance FROM account_balances WHERE account_id IN ".to_string();
            push_placeholders(&mut sql, 1, accounts.len());
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
        let mut books = books_in(&mut tx, &ids).await?;
        let mut billed = Vec::with_capacity(ids.len());
        for account in self.accounts_in(&mut tx, &ids).await? {
            let books = books.remove(&account.id).unwrap_or_default();
            let balance = books.balance;
            let change = settle_arrears_in(&mut tx, account, &books, actor, now).await?;
            billed.push(Billed {
                account_id: change.after.id.clone(),
                balance,
                change,
            });
        }
        tx.commit().await?;
        Ok(billed)
    }

    /// Sets, updates or lifts one account's arrears flag from its balance, in one
    /// transaction: repairs an account no bill of this run touched.
    pub async fn settle_arrears(&self, account_id: &str, actor: &str, now: i64) -> Result<AccountChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        // SQLite: a write first, so the transaction holds the write lock before it reads.
        if self.backend == Backend::Sqlite {
            sqlx::query("UPDATE accounts SET version = version WHERE id = $1")
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
        }
        self.lock_accounts(&mut tx, &[account_id]).await?;
        let account = self
            .accounts_in(&mut tx, &[account_id])
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
        let books = books_in(&mut tx, &[account_id])
            .await?
            .remove(account_id)
            .unwrap_or_default();
        let change = settle_arrears_in(&mut tx, account, &books, actor, now).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// PostgreSQL: locks the accounts' rows (in id order, so two lockers cannot
    /// deadlock) until the transaction ends. SQLite needs none: its first write takes
    /// the database's one write lock, and every caller writes before it reads.
    async fn lock_accounts(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, ids: &[&str]) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres || ids.is_empty() {
            return Ok(());
        }
        for part in ids.chunks(BILLS_PER_STATEMENT * 4) {
            let mut sql = "SELECT id FROM accounts WHERE id IN ".to_string();
            push_in_list(&mut sql, part.len());
            sql.push_str(" ORDER BY id FOR UPDATE");
            let mut query = sqlx::query(&sql);
            for id in part {
                query = query.bind(*id);
            }
            query.fetch_all(&mut **tx).await?;
        }
        Ok(())
    }

    async fn accounts_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ids: &[&str],
    ) -> Result<Vec<AccountRecord>, StoreError> {
        let mut accounts = Vec::with_capacity(ids.len());
        for part in ids.chunks(BILLS_PER_STATEMENT * 4) {
            let mut sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN ");
            push_in_list(&mut sql, part.len());
            sql.push_str(" ORDER BY id");
            let mut query = sqlx::query(&sql);
            for id in part {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut **tx).await? {
                accounts.push(account_from_row(&row)?);
            }
        }
        Ok(accounts)
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
    ) -> Result<Movement, StoreError> {
        if amount <= 0 {
            return Err(StoreError::Invalid("a top-up amount must be positive".into()));
        }
        self.record_entry(account_id, "topup", amount, idempotency_key, actor, None, now)
            .await
    }

    /// Records an operator's credit (positive, with its reason), once per idempotency
    /// key. Money never moves out: there is no negative counterpart.
    pub async fn record_credit(
        &self,
        account_id: &str,
        amount: i64,
        reason: &str,
        idempotency_key: &str,
        actor: &str,
        now: i64,
    ) -> Result<Movement, StoreError> {
        if amount <= 0 {
            return Err(StoreError::Invalid(
                "a credit must be positive: money only moves toward the platform, there are no refunds".into(),
            ));
        }
        self.record_entry(account_id, "credit", amount, idempotency_key, actor, Some(reason), now)
            .await
    }

    /// One transaction: the entry, its audit record, and the arrears flag as the
    /// balance after it says. A repeated key records nothing but still settles the flag.
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
    ) -> Result<Movement, StoreError> {
        let key = format!("{kind}:{account_id}:{idempotency_key}");
        let mut tx = self.pool.begin().await?;
        self.lock_accounts(&mut tx, &[account_id]).await?;
        // The first statement writes (SQLite: the transaction holds the write lock from here).
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
        let Some(account) = self.accounts_in(&mut tx, &[account_id]).await?.pop() else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!("account {account_id}")));
        };
        let row = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE idempotency_key = $1"
        ))
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        let entry = ledger_entry(&row)?;
        let books = books_in(&mut tx, &[account_id])
            .await?
            .remove(account_id)
            .unwrap_or_default();
        let balance = books.balance;
        let outcome = if inserted.rows_affected() == 1 {
            insert_audit(
                &mut tx,
                AuditInsert {
                    at: now,
                    actor,
                    action: if kind == "topup" {
                        "ledger.topup"
                    } else {
                        "ledger.credit"
                    },
                    target: account_id,
                    before: None,
                    after: Some(serde_json::json!({
                        "kind": kind, "amount": format_amount(amount), "ledger_id": entry.id,
                        "idempotency_key": idempotency_key, "note": note, "balance": format_amount(balance),
                    })),
                },
            )
            .await?;
            if entry.amount > 0 {
                let settled = settled_by(&mut tx, &entry).await?;
                outbox::insert_events(&mut tx, &settled).await?;
            }
            TopupOutcome::Recorded(entry)
        } else if entry.amount != amount {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a {kind} with idempotency key {idempotency_key:?} and another amount"
            )));
        } else {
            TopupOutcome::Duplicate(entry)
        };
        let account = settle_arrears_in(&mut tx, account, &books, actor, now).await?;
        tx.commit().await?;
        Ok(Movement {
            outcome,
            balance,
            account,
        })
    }

    /// The accounts the due sweep must look at: those in arrears (the flag may be lifted
    /// or its amount be stale) and those with a negative balance (they have an unpaid
    /// bill, which may have come due), each with its arrears reason now.
    pub async fn due_candidates(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, arrears_reason FROM accounts WHERE arrears_reason IS NOT NULL \
             OR id IN (SELECT account_id FROM account_balances WHERE balance < 0) ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("arrears_reason")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The books (balance, funds, bills) of `ids`, read without locks: what the due
    /// sweep decides from before it settles an account under its lock.
    pub async fn books(&self, ids: &[&str]) -> Result<HashMap<String, Books>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        books_in(&mut conn, ids).await
    }

    /// The id of each account's latest top-up or credit (accounts never funded are
    /// absent): what a `balance.low` notice is keyed on.
    pub async fn latest_fundings(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, latest_funding AS id FROM account_balances WHERE latest_funding IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account_id")?, row.try_get("id")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
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
            "SELECT {BILL_SELECT} FROM bills WHERE account_id = $1 ORDER BY month, id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bill_record).collect()
    }

    pub async fn bill(&self, id: &str) -> Result<Option<BillRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BILL_SELECT} FROM bills WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(bill_record).transpose()
    }

    /// Every bill of `month`, by account.
    pub async fn bills_of_month(&self, month: &str) -> Result<Vec<BillRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BILL_SELECT} FROM bills WHERE month = $1 ORDER BY account_id"
        ))
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bill_record).collect()
    }
}

/// The arrears flag as the account's `books` say at `now` (`billing::ledger`'s one
/// rule: what is owed on bills past their due date), written with its audit entry when
/// it differs from the account's; the caller holds the row's lock. A changed amount
/// owed rewrites the reason and keeps the date the arrears began. When the flag is set
/// or its amount changes, each bill overdue now gets its `bill.overdue` event (once per
/// bill: a stable id), so a bill whose due date passed unpaid is told in the
/// transaction that suspends for it.
async fn settle_arrears_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    before: AccountRecord,
    books: &Books,
    actor: &str,
    now: i64,
) -> Result<AccountChange, StoreError> {
    let mut after = before.clone();
    after.arrears = arrears_reason(ledger::overdue_owed(&books.bills, books.funds, now)).map(|reason| Suspension {
        reason,
        since: before.arrears.as_ref().map_or(now, |a| a.since),
    });
    if after == before {
        return Ok(AccountChange {
            before,
            after,
            changed: false,
        });
    }
    after.version = before.version + 1;
    let updated = bind_account(sqlx::query(super::UPDATE_ACCOUNT), &after)
        .bind(&after.id)
        .bind(before.version)
        .execute(&mut **tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Invalid(format!(
            "account {} changed during a billing transaction; try again",
            after.id
        )));
    }
    insert_audit(
        tx,
        AuditInsert {
            at: now,
            actor,
            action: if after.arrears.is_some() {
                "billing.arrears"
            } else {
                "billing.arrears_lifted"
            },
            target: &after.id,
            before: Some(account_json(&before)),
            after: Some(account_json(&after)),
        },
    )
    .await?;
    let mut new_events = Vec::new();
    if after.arrears.is_some() {
        let due = ledger::amounts_due(&books.bills, books.funds);
        for (bill, amount_due) in books.bills.iter().zip(due) {
            if amount_due > 0 && now >= bill.due_at {
                new_events.push(events::bill_overdue(bill, books.balance, amount_due, now));
            }
        }
    }
    new_events.extend(events::account_changed(&before, &after, actor, now));
    outbox::insert_events(tx, &new_events).await?;
    Ok(AccountChange {
        before,
        after,
        changed: true,
    })
}

/// `($1, $2, …)` for `n` values.
fn push_in_list(sql: &mut String, n: usize) {
    use std::fmt::Write;
    sql.push('(');
    for i in 1..=n {
        let _ = write!(sql, "{}${i}", if i == 1 { "" } else { ", " });
    }
    sql.push(')');
}

/// What the one rule reads of an account: its balance, its funds (every entry but the
/// charges) and its bills, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub balance: i64,
    pub funds: i64,
    pub bills: Vec<BillRecord>,
}

/// The books of `ids`, read on `conn` (a transaction's, or a pooled connection for a
/// look without locks); an account without entries or bills has empty ones.
async fn books_in(conn: &mut sqlx::AnyConnection, ids: &[&str]) -> Result<HashMap<String, Books>, StoreError> {
    let mut books: HashMap<String, Books> = HashMap::with_capacity(ids.len());
    for part in ids.chunks(BILLS_PER_STATEMENT * 4) {
        let mut sql = "SELECT account_id, balance, funds FROM account_balances WHERE account_id IN ".to_string();
        push_in_list(&mut sql, part.len());
        let mut query = sqlx::query(&sql);
        for id in part {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let entry = books.entry(row.try_get("account_id")?).or_default();
            entry.balance = row.try_get("balance")?;
            entry.funds = row.try_get("funds")?;
        }
        let mut sql = format!("SELECT {BILL_SELECT} FROM bills WHERE account_id IN ");
        push_in_list(&mut sql, part.len());
        sql.push_str(" ORDER BY account_id, month, id");
        let mut query = sqlx::query(&sql);
        for id in part {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let bill = bill_record(&row)?;
            books.entry(bill.account_id.clone()).or_default().bills.push(bill);
        }
    }
    Ok(books)
}

/// `bill.paid` for each bill of the account that `credit` (just inserted, in `tx`)
/// turned from unpaid (open or overdue) to paid.
async fn settled_by(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    credit: &LedgerEntry,
) -> Result<Vec<events::NewEvent>, StoreError> {
    use crate::billing::ledger::{BillStatus, bill_statuses};
    let bills: Vec<BillRecord> = sqlx::query(&format!(
        "SELECT {BILL_SELECT} FROM bills WHERE account_id = $1 ORDER BY month, id"
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
    let before = bill_statuses(&bills, &without, credit.at);
    let after = bill_statuses(&bills, &ledger, credit.at);
    Ok(bills
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(bill, (before, after))| match (before.is_unpaid(), after) {
            (true, BillStatus::Paid { paid_at }) => Some(events::bill_paid(bill, paid_at)),
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
        due_at: row.try_get("due_at")?,
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
