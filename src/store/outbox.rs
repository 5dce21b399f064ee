//! The webhook outbox table: events are inserted in the transaction of the change that
//! causes them (`insert_events`, called by the store's writers), claimed by delivery
//! workers under a lease so one worker at a time sends a given event, and marked with
//! each attempt's outcome. Must not build event bodies (`webhooks::events` does) nor
//! send anything (`webhooks::deliver` does).

use super::{Store, StoreError, push_placeholders};
use crate::webhooks::events::NewEvent;
use serde::Serialize;
use sqlx::Row;

/// An outbox row as the delivery worker and the admin API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: i64,
    #[serde(skip)]
    pub payload: String,
    /// "pending", "delivered" or "failed".
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub retry_from: i64,
    pub last_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    /// Endpoints that accepted it.
    pub delivered_to: Vec<String>,
    pub locked_until: i64,
}

/// The outcome of one attempt, as the worker decided it.
pub struct Attempt<'a> {
    pub status: &'a str,
    pub next_attempt_at: i64,
    pub error: Option<&'a str>,
    pub delivered_to: &'a [String],
}

const EVENT_COLUMNS: &str = "id, type, created_at, payload, status, attempts, next_attempt_at, retry_from, \
                             last_attempt_at, last_error, delivered_at, delivered_to, locked_until";
/// 6 parameters a row.
const EVENTS_PER_STATEMENT: usize = 1000;

/// Writes `events` in the caller's transaction; an id already there is skipped (the
/// events that happen once per thing have stable ids).
pub(crate) async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let mut sql = "INSERT INTO webhook_events (id, type, created_at, payload, next_attempt_at, retry_from) VALUES "
            .to_string();
        push_placeholders(&mut sql, chunk.len(), 6);
        sql.push_str(" ON CONFLICT (id) DO NOTHING");
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query
                .bind(&event.id)
                .bind(event.kind)
                .bind(event.created_at)
                .bind(&event.payload)
                .bind(event.created_at)
                .bind(event.created_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Puts one event in the outbox on its own (for causes that are not a store
    /// change, such as a late billing run). False: an event with its id exists.
    pub async fn emit_event(&self, event: &NewEvent) -> Result<bool, StoreError> {
        // One statement, no read before it: on SQLite a transaction that reads first
        // cannot write once another writer (a delivery worker) has committed.
        let done = sqlx::query(
            "INSERT INTO webhook_events (id, type, created_at, payload, next_attempt_at, retry_from) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(event.kind)
        .bind(event.created_at)
        .bind(&event.payload)
        .bind(event.created_at)
        .bind(event.created_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts in the outbox those of `events` whose id is not there yet; returns how many
    /// it added. For causes a periodic look raises again and again (reminders, low
    /// balances): the ids are read first, so a look that finds nothing new writes
    /// nothing; two gateways racing on a new one still make one row (the id is the key).
    pub async fn emit_events_once(&self, events: &[NewEvent]) -> Result<u64, StoreError> {
        let mut added = 0;
        for chunk in events.chunks(EVENTS_PER_STATEMENT) {
            let mut sql = "SELECT id FROM webhook_events WHERE id IN (".to_string();
            for i in 1..=chunk.len() {
                sql.push_str(&format!("{}${i}", if i == 1 { "" } else { ", " }));
            }
            sql.push(')');
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query.bind(&event.id);
            }
            let existing: std::collections::HashSet<String> = query
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<Result<_, sqlx::Error>>()?;
            for event in chunk.iter().filter(|e| !existing.contains(&e.id)) {
                added += u64::from(self.emit_event(event).await?);
            }
        }
        Ok(added)
    }

    /// Events not yet delivered nor failed, and the creation time of the oldest: the
    /// outbox gauges.
    pub async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS pending, MIN(created_at) AS oldest FROM webhook_events \
             WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("pending")?, row.try_get("oldest")?))
    }

    /// Claims up to `limit` due events for `holder` until `now + lease_seconds`, oldest
    /// first. An event claimed by a worker that died is claimable again once its lease
    /// has run out.
    pub async fn claim_events(
        &self,
        holder: &str,
        now: i64,
        lease_seconds: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        // The outer WHERE is checked again on the locked row, so of two workers racing
        // for an event only one updates it.
        let rows = sqlx::query(&format!(
            "UPDATE webhook_events SET locked_until = $1, locked_by = $2 \
             WHERE id IN (SELECT id FROM webhook_events WHERE status = 'pending' AND next_attempt_at <= $3 \
                          AND locked_until <= $3 ORDER BY created_at, id LIMIT $4) \
             AND status = 'pending' AND locked_until <= $3 \
             RETURNING {EVENT_COLUMNS}"
        ))
        .bind(now + lease_seconds)
        .bind(holder)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events: Vec<EventRecord> = rows.iter().map(event_record).collect::<Result<_, _>>()?;
        events.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(events)
    }

    /// Records an attempt on an event `holder` claimed. False: the lease was lost to
    /// another worker meanwhile, which then owns the outcome.
    pub async fn finish_event(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        attempt: Attempt<'_>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_events SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             last_attempt_at = $3, last_error = $4, delivered_at = $5, delivered_to = $6, locked_until = 0, \
             locked_by = NULL WHERE id = $7 AND locked_by = $8",
        )
        .bind(attempt.status)
        .bind(attempt.next_attempt_at)
        .bind(now)
        .bind(attempt.error)
        .bind((attempt.status == "delivered").then_some(now))
        .bind(attempt.delivered_to.join("\n"))
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Newest first; `status` filters.
    pub async fn list_events(&self, status: Option<&str>, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        let rows =
            match status {
                Some(status) => sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE status = $1 ORDER BY created_at DESC, id DESC \
                     LIMIT $2"
                ))
                .bind(status)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(&format!(
                        "SELECT {EVENT_COLUMNS} FROM webhook_events ORDER BY created_at DESC, id DESC LIMIT $1"
                    ))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter().map(event_record).collect()
    }

    pub async fn event(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_record).transpose()
    }

    /// An operator's retry: the event is due now, with a fresh retry window. A
    /// delivered event is sent again (its endpoints de-duplicate by id).
    pub async fn retry_event(&self, id: &str, now: i64) -> Result<Option<EventRecord>, StoreError> {
        sqlx::query(
            "UPDATE webhook_events SET status = 'pending', next_attempt_at = $1, retry_from = $1, \
             delivered_to = CASE WHEN status = 'delivered' THEN '' ELSE delivered_to END WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.event(id).await
    }
}

fn event_record(row: &sqlx::any::AnyRow) -> Result<EventRecord, StoreError> {
    let delivered_to: String = row.try_get("delivered_to")?;
    Ok(EventRecord {
        id: row.try_get("id")?,
        kind: row.try_get("type")?,
        created_at: row.try_get("created_at")?,
        payload: row.try_get("payload")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        retry_from: row.try_get("retry_from")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        last_error: row.try_get("last_error")?,
        delivered_at: row.try_get("delivered_at")?,
        delivered_to: delivered_to.lines().map(str::to_string).collect(),
        locked_until: row.try_get("locked_until")?,
    })
}
