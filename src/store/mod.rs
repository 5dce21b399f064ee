//! The billing store: the source of truth for accounts, credentials, the audit log,
//! usage, bills and the ledger. One implementation over sqlx's `Any`
//! driver serves PostgreSQL (production) and SQLite (the embedded default), chosen by the
//! URL; the queries are written once in the SQL both understand, the schema twice
//! (`migrations/postgres`, `migrations/sqlite`), applied at start. Changes that cause a
//! webhook event write it to the outbox (`outbox`) in their own transaction. Must not
//! be called on the request hot path: gateways read state from their in-memory mirror.

pub mod billing;
pub mod outbox;
pub mod records;

use records::{AccountRecord, AuditEntry, CredentialRecord, CredentialStatus, Suspension};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool};
use sqlx::{Executor, Row};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("billing store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("billing store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("billing store did not answer within {0:?} (store.timeout_ms)")]
    TimedOut(Duration),
}

/// How long a background job waits on the store for one piece of work: `store.timeout_ms`,
/// doubled after each time-out in a row up to an hour, so that work which is merely slow
/// (a flush of a million rows, a repair reading every account) still gets through while
/// a connection gone silent is given up on.
#[derive(Debug)]
pub struct Patience {
    base: Duration,
    timeouts_in_a_row: std::sync::atomic::AtomicU32,
}

impl Patience {
    const MOST: Duration = Duration::from_secs(3600);

    pub fn new(base: Duration) -> Self {
        Self {
            base,
            timeouts_in_a_row: Default::default(),
        }
    }

    /// The limit for the next try.
    pub fn limit(&self) -> Duration {
        let doublings = self
            .timeouts_in_a_row
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(16);
        self.base.saturating_mul(1 << doublings).min(Self::MOST.max(self.base))
    }

    /// Takes a try's outcome into account: a time-out doubles the next limit, anything
    /// else (an answer, even an error) resets it.
    pub fn note<T>(&self, outcome: &Result<T, StoreError>) {
        use std::sync::atomic::Ordering::Relaxed;
        if matches!(outcome, Err(StoreError::TimedOut(_))) {
            self.timeouts_in_a_row.fetch_add(1, Relaxed);
        } else {
            self.timeouts_in_a_row.store(0, Relaxed);
        }
    }
}

/// One row of a flush batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub account_id: String,
    pub action: String,
    pub month: String,
    pub calls: u64,
}

/// Counts flushed by one gateway instance, identified by `(instance_id, seq)`.
#[derive(Debug, Clone)]
pub struct UsageBatch {
    pub instance_id: String,
    pub seq: u64,
    pub rows: Vec<UsageRow>,
}

/// What `Store::migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations the schema has now.
    pub applied: usize,
    /// The gateway's role, where it differs from the owner and was granted its rights.
    pub granted_to: Option<String>,
}

/// The user a `postgres://` URL connects as (`postgres` when it names none, as libpq).
fn postgres_user(url: &str) -> String {
    use std::str::FromStr;
    sqlx::postgres::PgConnectOptions::from_str(url)
        .map(|options| options.get_username().to_string())
        .unwrap_or_default()
}

pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// What an account change did, for the caller's cache update and audit echo.
pub struct AccountChange {
    pub before: AccountRecord,
    pub after: AccountRecord,
    pub changed: bool,
}

/// 5 parameters a row: well under SQLite's 32,766 and PostgreSQL's 65,535 limits.
const USAGE_ROWS_PER_STATEMENT: usize = 1000;
const PG_USAGE_ROWS_PER_STATEMENT: usize = 20_000;

const ACCOUNT_COLUMNS: &str = "id, name, activated, activated_at, manual_reason, manual_since, arrears_reason, \
                               arrears_since, rate_limit_qps, credit_limit, created_at, version";
const CREDENTIAL_COLUMNS: &str =
    "secret_id, account_id, secret_key_sealed, api_key_hash, status, created_at, revoked_at, version";

impl Store {
    /// Connects to `postgres://…` or `sqlite://path` (the file is created) and applies
    /// the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(file).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Invalid(format!("cannot create {} for the SQLite store: {e}", parent.display()))
                })?;
            }
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else {
            return Err(StoreError::Invalid(
                "the store URL must start with postgres:// or sqlite://".into(),
            ));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Self { pool, backend };
        let pending = store.pending_migrations().await?;
        if pending > 0 && store.backend == Backend::Postgres {
            // Asked before running: a failed run would leave sqlx's advisory lock held by
            // a pooled connection, and the owner's `migrate` would wait on it.
            let may_create: bool = sqlx::query("SELECT has_schema_privilege(current_schema(), 'CREATE')")
                .fetch_one(&store.pool)
                .await?
                .try_get(0)?;
            if !may_create {
                store.pool.close().await;
                return Err(StoreError::Invalid(format!(
                    "{pending} store migrations are pending and this role may not apply them: set [store] \
                     migrate_url (EKYC_STORE_MIGRATE_URL) to the schema owner's URL or run `ekyc-gateway migrate` with it"
                )));
            }
        }
        if pending > 0 {
            store.migrator().run(&store.pool).await.map_err(|e| match e {
                // A gateway role that may not create tables: the schema is the owner's job.
                sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("42501") =>
                {
                    StoreError::Invalid(format!(
                        "{pending} store migrations are pending and this role may not apply them ({}): \
                         set [store] migrate_url (EKYC_STORE_MIGRATE_URL) to the owner's URL or run \
                         `ekyc-gateway migrate` with it",
                        db.message()
                    ))
                }
                other => StoreError::Migrate(other),
            })?;
        }
        Ok(store)
    }

    /// Applies the migrations as the schema's owner (`owner_url`) and, where the gateway
    /// connects as another role (`gateway_url`), grants that role only what serving and
    /// billing need: it reads and writes the working tables, appends to the append-only
    /// ones (bills, billed usage, the ledger, the audit log) and can neither change their
    /// rows nor drop their triggers, which only the owner may. Idempotent: run again after
    /// each upgrade, as tables added later need their grants.
    pub async fn migrate(owner_url: &str, gateway_url: Option<&str>) -> Result<MigrationReport, StoreError> {
        let owner = Self::connect(owner_url).await?;
        let owner_role = postgres_user(owner_url);
        let granted_to = match gateway_url.map(postgres_user) {
            Some(role) if owner.backend == Backend::Postgres && role != owner_role => {
                owner.grant_gateway_role(&role).await?;
                Some(role)
            }
            _ => None,
        };
        let applied = owner.migrator().iter().count();
        owner.pool.close().await;
        Ok(MigrationReport { applied, granted_to })
    }

    /// Opens the store as a serving or billing process does: migrations first under the
    /// owner's URL where one is configured, then the connection under `url`.
    pub async fn open(url: &str, migrate_url: Option<&str>) -> Result<Self, StoreError> {
        if let Some(owner_url) = migrate_url {
            Self::migrate(owner_url, Some(url)).await?;
        }
        Self::connect(url).await
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
        static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
        match self.backend {
            Backend::Postgres => &POSTGRES,
            Backend::Sqlite => &SQLITE,
        }
    }

    /// Migrations this binary has that the database has not applied. Read without
    /// creating anything, so a role that may not create tables can tell it is up to date;
    /// an applied migration whose text changed since is an error, as sqlx's own check.
    async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let exists_sql = match self.backend {
            Backend::Postgres => {
                "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()"
            }
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        };
        let exists: i64 = sqlx::query(exists_sql).fetch_one(&self.pool).await?.try_get(0)?;
        let mut applied = std::collections::HashMap::new();
        if exists > 0 {
            for row in sqlx::query("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
            {
                let version: i64 = row.try_get(0)?;
                let checksum: Vec<u8> = row.try_get(1)?;
                applied.insert(version, checksum);
            }
        }
        let mut pending = 0;
        for migration in self.migrator().iter() {
            match applied.get(&migration.version) {
                Some(checksum) if checksum[..] != migration.checksum[..] => {
                    return Err(StoreError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(
                        migration.version,
                    )));
                }
                Some(_) => {}
                None => pending += 1,
            }
        }
        Ok(pending)
    }

    async fn grant_gateway_role(&self, role: &str) -> Result<(), StoreError> {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Invalid(format!(
                "the gateway's database role {role:?} must be letters, digits and _"
            )));
        }
        let append_only = "bills, billed_usage, ledger, audit_log";
        let mut tx = self.pool.begin().await?;
        for statement in [
            format!("GRANT USAGE ON SCHEMA public TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
            format!("REVOKE UPDATE, DELETE, TRUNCATE ON {append_only} FROM {role}"),
            format!("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM {role}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        ] {
            tx.execute(statement.as_str()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ------------------------------------------------------------ accounts

    pub async fn create_account(&self, account: &AccountRecord, actor: &str, now: i64) -> Result<(), StoreError> {
        let insert = bind_account(
            sqlx::query(
                "INSERT INTO accounts (name, activated, activated_at, manual_reason, manual_since, arrears_reason, \
                 arrears_since, rate_limit_qps, credit_limit, version, id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            ),
            account,
        )
        .bind(&account.id)
        .bind(account.created_at);
        let audit = AuditInsert {
            at: now,
            actor,
            action: "account.create",
            target: &account.id,
            before: None,
            after: Some(account_json(account)),
        };
        self.insert_audited(insert, format!("account {}", account.id), audit)
            .await
    }

    /// Runs `insert` and records `audit` in one transaction; a duplicate key is a conflict.
    async fn insert_audited(
        &self,
        insert: AnyQuery<'_>,
        what: String,
        audit: AuditInsert<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Err(e) = insert.execute(&mut *tx).await {
            return Err(conflict_or(e, what));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_account(&self, id: &str) -> Result<Option<AccountRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| account_from_row(&r)).transpose().map_err(Into::into)
    }

    /// Accounts ordered by id; `search` matches a part of the id or the name.
    pub async fn list_accounts(
        &self,
        search: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<AccountRecord>, StoreError> {
        let pattern = format!("%{}%", search.unwrap_or("").to_lowercase());
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE LOWER(id) LIKE $1 OR LOWER(name) LIKE $1 \
             ORDER BY id LIMIT $2 OFFSET $3"
        ))
        .bind(pattern)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(account_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    pub async fn all_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        Self::accounts_on(&self.pool).await
    }

    async fn accounts_on<'e>(on: impl sqlx::Executor<'e, Database = Any>) -> Result<Vec<AccountRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts"))
            .fetch_all(on)
            .await?;
        rows.iter()
            .map(account_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Applies `change` to the account and records it in the audit log, in one
    /// transaction. Concurrent writers are ordered by the version (optimistic locking):
    /// a lost race re-reads and re-applies. A change that changes nothing writes nothing.
    pub async fn update_account(
        &self,
        id: &str,
        actor: &str,
        action: &str,
        now: i64,
        change: impl Fn(&mut AccountRecord) -> Result<(), StoreError>,
    ) -> Result<AccountChange, StoreError> {
        for _ in 0..32 {
            let before = self
                .get_account(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
            let mut after = before.clone();
            change(&mut after)?;
            if after == before {
                return Ok(AccountChange {
                    before,
                    after,
                    changed: false,
                });
            }
            after.version = before.version + 1;
            let mut tx = self.pool.begin().await?;
            let updated = bind_account(sqlx::query(UPDATE_ACCOUNT), &after)
                .bind(id)
                .bind(before.version)
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                continue; // another writer got there first
            }
            insert_audit(
                &mut tx,
                AuditInsert {
                    at: now,
                    actor,
                    action,
                    target: id,
                    before: Some(account_json(&before)),
                    after: Some(account_json(&after)),
                },
            )
            .await?;
            let events = crate::webhooks::events::account_changed(&before, &after, actor, now);
            outbox::insert_events(&mut tx, &events).await?;
            tx.commit().await?;
            return Ok(AccountChange {
                before,
                after,
                changed: true,
            });
        }
        Err(StoreError::Invalid(format!(
            "account {id} is changing too fast; try again"
        )))
    }

    // ------------------------------------------------------------ credentials

    pub async fn create_credential(
        &self,
        credential: &CredentialRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        let insert = sqlx::query(&sql)
            .bind(&credential.secret_id)
            .bind(&credential.account_id)
            .bind(&credential.secret_key_sealed)
            .bind(&credential.api_key_hash)
            .bind(credential.status.as_str())
            .bind(credential.created_at)
            .bind(credential.revoked_at)
            .bind(credential.version);
        let audit = AuditInsert {
            at: now,
            actor,
            action: "credential.create",
            target: &credential.account_id,
            before: None,
            after: Some(credential_json(credential)),
        };
        self.insert_audited(insert, format!("credential {}", credential.secret_id), audit)
            .await
    }

    pub async fn get_credential(&self, secret_id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE secret_id = $1"
        ))
        .bind(secret_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| credential_from_row(&r)).transpose()
    }

    pub async fn list_credentials(&self, account_id: &str) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE account_id = $1 ORDER BY created_at, secret_id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    pub async fn all_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError> {
        Self::credentials_on(&self.pool).await
    }

    async fn credentials_on<'e>(
        on: impl sqlx::Executor<'e, Database = Any>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials"))
            .fetch_all(on)
            .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// Every account and every credential, read within `limit` on a connection of its
    /// own (see `connection_within`).
    pub async fn accounts_and_credentials_within(
        &self,
        limit: Duration,
    ) -> Result<(Vec<AccountRecord>, Vec<CredentialRecord>), StoreError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut conn = self.connection_within(deadline, limit).await?;
        let read = async {
            Ok((
                Self::accounts_on(&mut *conn).await?,
                Self::credentials_on(&mut *conn).await?,
            ))
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .unwrap_or_else(|_| Err(given_up(conn, limit)))
    }

    /// A connection of the pool's, taken by `deadline`. Work on it that outlasts the
    /// deadline gives it up with `given_up`.
    async fn connection_within(
        &self,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        tokio::time::timeout_at(deadline, self.pool.acquire())
            .await
            .map_err(|_| StoreError::TimedOut(limit))?
            .map_err(Into::into)
    }

    /// Revokes a credential for good. Revoking a revoked credential changes nothing.
    pub async fn revoke_credential(
        &self,
        secret_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<CredentialRecord, StoreError> {
        let before = self
            .get_credential(secret_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("credential {secret_id}")))?;
        if before.status == CredentialStatus::Revoked {
            return Ok(before);
        }
        let mut after = before.clone();
        after.status = CredentialStatus::Revoked;
        after.revoked_at = Some(now);
        after.version += 1;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE credentials SET status = $1, revoked_at = $2, version = version + 1 WHERE secret_id = $3 AND status = $4",
        )
        .bind(CredentialStatus::Revoked.as_str())
        .bind(now)
        .bind(secret_id)
        .bind(CredentialStatus::Active.as_str())
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            AuditInsert {
                at: now,
                actor,
                action: "credential.revoke",
                target: &before.account_id,
                before: Some(credential_json(&before)),
                after: Some(credential_json(&after)),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(self.get_credential(secret_id).await?.unwrap_or(after))
    }

    /// Master-key rotation: every SecretKey sealed by another key than `master_key` is
    /// opened (with `master_key` or its previous key) and sealed again with
    /// `master_key`, one audited transaction per credential (the audit entry names the
    /// key ids, never a secret). Returns the changed records, for the caches. Safe to
    /// run again: already resealed ones are skipped.
    pub async fn reseal_credentials(
        &self,
        master_key: &crate::crypto::MasterKey,
        actor: &str,
        now: i64,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut changed = Vec::new();
        for before in self.all_credentials().await? {
            if !master_key.is_stale(&before.secret_key_sealed) {
                continue;
            }
            let plain = master_key
                .open(&before.secret_key_sealed, &before.account_id)
                .map_err(|e| StoreError::Invalid(format!("credential {}: {e}", before.secret_id)))?;
            let mut after = before.clone();
            after.secret_key_sealed = master_key.seal(&plain, &before.account_id);
            after.version += 1;
            let old_key = before.secret_key_sealed.split('.').nth(1).unwrap_or("?").to_string();
            let mut tx = self.pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE credentials SET secret_key_sealed = $1, version = version + 1 WHERE secret_id = $2 AND version = $3",
            )
            .bind(&after.secret_key_sealed)
            .bind(&before.secret_id)
            .bind(before.version)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::Invalid(format!(
                    "credential {} changed during the rotation; run it again",
                    before.secret_id
                )));
            }
            insert_audit(
                &mut tx,
                AuditInsert {
                    at: now,
                    actor,
                    action: "credential.reseal",
                    target: &before.account_id,
                    before: Some(serde_json::json!({"secret_id": before.secret_id, "master_key": old_key})),
                    after: Some(serde_json::json!({"secret_id": before.secret_id, "master_key": master_key.id()})),
                },
            )
            .await?;
            tx.commit().await?;
            changed.push(after);
        }
        Ok(changed)
    }

    // ------------------------------------------------------------ usage

    /// Applies a flush batch at most once: the batch id is inserted in the same
    /// transaction as the counts, so a retry of an applied batch changes nothing.
    /// Returns whether this call applied it. `day` ("YYYY-MM-DD") dates the batch's
    /// calls in `usage_daily`.
    pub async fn apply_usage_batch_on(&self, batch: &UsageBatch, now: i64, day: &str) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.apply_usage_batch_in(&mut conn, batch, now, day).await
    }

    /// `apply_usage_batch_on` within `limit` (see `connection_within`). A batch given
    /// up on may have been applied all the same; sent again, its id makes that harmless.
    pub async fn apply_usage_batch_within(
        &self,
        batch: &UsageBatch,
        now: i64,
        day: &str,
        limit: Duration,
    ) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut conn = self.connection_within(deadline, limit).await?;
        tokio::time::timeout_at(deadline, self.apply_usage_batch_in(&mut conn, batch, now, day))
            .await
            .unwrap_or_else(|_| Err(given_up(conn, limit)))
    }

    async fn apply_usage_batch_in(
        &self,
        conn: &mut sqlx::pool::PoolConnection<Any>,
        batch: &UsageBatch,
        now: i64,
        day: &str,
    ) -> Result<bool, StoreError> {
        let calls: u64 = batch.rows.iter().map(|r| r.calls).sum();
        let mut tx = sqlx::Acquire::begin(&mut **conn).await?;
        let claimed = sqlx::query(
            "INSERT INTO usage_batches (instance_id, seq, rows, calls, applied_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (instance_id, seq) DO NOTHING",
        )
        .bind(&batch.instance_id)
        .bind(batch.seq as i64)
        .bind(batch.rows.len() as i64)
        .bind(calls as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // The rows of a batch have distinct keys (the meter merges them), as one ON
        // CONFLICT statement requires.
        if self.backend == Backend::Postgres {
            // PostgreSQL: the rows travel as one text parameter per chunk (tab-separated
            // fields, one line per row; ids and action names cannot hold either) and are
            // split server-side: one parameter instead of five per row, no per-row
            // placeholders to parse. 1 M rows: see the `flush_of_a_million_rows` test.
            // In primary-key order: the index is then filled left to right, which
            // PostgreSQL does markedly faster than in hash order.
            let mut sorted: Vec<&UsageRow> = batch.rows.iter().collect();
            sorted.sort_unstable_by(|a, b| {
                (a.account_id.as_bytes(), a.month.as_bytes(), a.action.as_bytes()).cmp(&(
                    b.account_id.as_bytes(),
                    b.month.as_bytes(),
                    b.action.as_bytes(),
                ))
            });
            for chunk in sorted.chunks(PG_USAGE_ROWS_PER_STATEMENT) {
                let mut lines = String::with_capacity(chunk.len() * 48);
                for row in chunk {
                    use std::fmt::Write;
                    let _ = writeln!(
                        lines,
                        "{}\t{}\t{}\t{}",
                        row.account_id, row.action, row.month, row.calls
                    );
                }
                lines.pop();
                sqlx::query(
                    "INSERT INTO usage (account_id, action, month, calls, updated_at) \
                     SELECT f[1], f[2], f[3], f[4]::BIGINT, $2 \
                     FROM (SELECT string_to_array(line, E'\\t') AS f \
                           FROM unnest(string_to_array($1, E'\\n')) AS line) AS parsed \
                     ON CONFLICT (account_id, month, action) DO UPDATE SET calls = usage.calls + excluded.calls, \
                     updated_at = excluded.updated_at",
                )
                .bind(lines.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO usage_daily (account_id, day, calls) \
                     SELECT f[1], $2, SUM(f[4]::BIGINT) \
                     FROM (SELECT string_to_array(line, E'\\t') AS f \
                           FROM unnest(string_to_array($1, E'\\n')) AS line) AS parsed \
                     GROUP BY f[1] \
                     ON CONFLICT (account_id, day) DO UPDATE SET calls = usage_daily.calls + excluded.calls",
                )
                .bind(lines)
                .bind(day)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return Ok(true);
        }
        // SQLite: many rows per statement, one round trip per chunk instead of per row.
        for chunk in batch.rows.chunks(USAGE_ROWS_PER_STATEMENT) {
            let mut sql = String::with_capacity(120 + chunk.len() * 40);
            sql.push_str("INSERT INTO usage (account_id, action, month, calls, updated_at) VALUES ");
            push_placeholders(&mut sql, chunk.len(), 5);
            sql.push_str(
                " ON CONFLICT (account_id, month, action) DO UPDATE SET calls = usage.calls + excluded.calls, \
                 updated_at = excluded.updated_at",
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(&row.account_id)
                    .bind(&row.action)
                    .bind(&row.month)
                    .bind(row.calls as i64)
                    .bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        let mut per_account: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for row in &batch.rows {
            *per_account.entry(row.account_id.as_str()).or_default() += row.calls;
        }
        let per_account: Vec<(&str, u64)> = per_account.into_iter().collect();
        for chunk in per_account.chunks(USAGE_ROWS_PER_STATEMENT) {
            let mut sql = String::with_capacity(100 + chunk.len() * 24);
            sql.push_str("INSERT INTO usage_daily (account_id, day, calls) VALUES ");
            push_placeholders(&mut sql, chunk.len(), 3);
            sql.push_str(" ON CONFLICT (account_id, day) DO UPDATE SET calls = usage_daily.calls + excluded.calls");
            let mut query = sqlx::query(&sql);
            for (account, calls) in chunk {
                query = query.bind(*account).bind(day).bind(*calls as i64);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Calls per day of one account, for days `from..=to` ("YYYY-MM-DD"), oldest first;
    /// days without calls are absent.
    pub async fn daily_usage(&self, account_id: &str, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT day, calls FROM usage_daily WHERE account_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        )
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("day")?, row.try_get::<i64, _>("calls")?.max(0) as u64)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Billable calls of one account in one month ("YYYY-MM"), per action, by name.
    pub async fn usage(&self, account_id: &str, month: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT action, calls FROM usage WHERE account_id = $1 AND month = $2 ORDER BY action")
            .bind(account_id)
            .bind(month)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("action")?, row.try_get::<i64, _>("calls")?.max(0) as u64)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The months ("YYYY-MM") in which one account made billable calls, newest first,
    /// at most `limit`.
    pub async fn usage_months(&self, account_id: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT month FROM usage WHERE account_id = $1 AND calls > 0 ORDER BY month DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get("month"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    // ------------------------------------------------------------ audit

    /// Newest first; `target` filters to one account.
    pub async fn list_audit(&self, target: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = match target {
            Some(target) => {
                sqlx::query(
                    "SELECT id, at, actor, action, target, before, after FROM audit_log WHERE target = $1 \
                     ORDER BY id DESC LIMIT $2",
                )
                .bind(target)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, at, actor, action, target, before, after FROM audit_log ORDER BY id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                let json = |name: &str| -> Result<Option<serde_json::Value>, sqlx::Error> {
                    Ok(row
                        .try_get::<Option<String>, _>(name)?
                        .and_then(|text: String| serde_json::from_str(&text).ok()))
                };
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    before: json("before")?,
                    after: json("after")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// Appends `rows` groups of `columns` numbered placeholders, `($1, $2), ($3, $4)`, for
/// a multi-row `INSERT … VALUES` (the form both PostgreSQL and SQLite accept).
fn push_placeholders(sql: &mut String, rows: usize, columns: usize) {
    use std::fmt::Write;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            let _ = write!(
                sql,
                "{}${}",
                if column == 0 { "" } else { ", " },
                row * columns + column + 1
            );
        }
        sql.push(')');
    }
}

/// Closes a connection whose work outlasted its limit instead of returning it to the
/// pool: the pool would first test it with a ping that a silent server never answers,
/// holding one of its slots until TCP gives up.
fn given_up(mut conn: sqlx::pool::PoolConnection<Any>, limit: Duration) -> StoreError {
    conn.close_on_drop();
    StoreError::TimedOut(limit)
}

fn conflict_or(error: sqlx::Error, what: String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(what.replace("credential", "account of credential"))
        }
        _ => StoreError::Unavailable(error),
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// An account's optimistic update: `bind_account`'s values, then the id and the version
/// read before.
pub(crate) const UPDATE_ACCOUNT: &str = "UPDATE accounts SET name = $1, activated = $2, activated_at = $3, \
     manual_reason = $4, manual_since = $5, arrears_reason = $6, arrears_since = $7, rate_limit_qps = $8, \
     credit_limit = $9, version = $10 WHERE id = $11 AND version = $12";

/// Binds name … version, in the order the INSERT and the UPDATE of accounts both list them.
fn bind_account<'q>(query: AnyQuery<'q>, account: &'q AccountRecord) -> AnyQuery<'q> {
    query
        .bind(&account.name)
        .bind(account.activated as i64)
        .bind(account.activated_at)
        .bind(account.manual.as_ref().map(|s| s.reason.clone()))
        .bind(account.manual.as_ref().map(|s| s.since))
        .bind(account.arrears.as_ref().map(|s| s.reason.clone()))
        .bind(account.arrears.as_ref().map(|s| s.since))
        .bind(account.rate_limit_qps.map(i64::from))
        .bind(account.credit_limit)
        .bind(account.version)
}

/// One audit-log entry, written in the transaction of the change it records.
struct AuditInsert<'a> {
    at: i64,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

async fn insert_audit(tx: &mut sqlx::Transaction<'_, sqlx::Any>, entry: AuditInsert<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(entry.at)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.before.map(|v| v.to_string()))
        .bind(entry.after.map(|v| v.to_string()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What the audit log keeps of an account: what the admin API shows of it.
fn account_json(account: &AccountRecord) -> serde_json::Value {
    account.view()
}

/// What the audit log keeps of a credential: never the sealed key or the key hash.
fn credential_json(credential: &CredentialRecord) -> serde_json::Value {
    credential.view()
}

fn account_from_row(row: &AnyRow) -> Result<AccountRecord, sqlx::Error> {
    let suspension = |reason: &str, since: &str| -> Result<Option<Suspension>, sqlx::Error> {
        let reason: Option<String> = row.try_get(reason)?;
        let since: Option<i64> = row.try_get(since)?;
        Ok(reason.map(|reason| Suspension {
            reason,
            since: since.unwrap_or(0),
        }))
    };
    Ok(AccountRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        activated: row.try_get::<i64, _>("activated")? != 0,
        activated_at: row.try_get("activated_at")?,
        manual: suspension("manual_reason", "manual_since")?,
        arrears: suspension("arrears_reason", "arrears_since")?,
        rate_limit_qps: row
            .try_get::<Option<i64>, _>("rate_limit_qps")?
            .map(|q| q.clamp(0, u32::MAX as i64) as u32),
        credit_limit: row.try_get("credit_limit")?,
        created_at: row.try_get("created_at")?,
        version: row.try_get("version")?,
    })
}

fn credential_from_row(row: &AnyRow) -> Result<CredentialRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(CredentialRecord {
        secret_id: row.try_get("secret_id")?,
        account_id: row.try_get("account_id")?,
        secret_key_sealed: row.try_get("secret_key_sealed")?,
        api_key_hash: row.try_get("api_key_hash")?,
        status: CredentialStatus::parse(&status)
            .ok_or_else(|| StoreError::Invalid(format!("unknown credential status {status:?}")))?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        version: row.try_get("version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::{Patience, StoreError, push_placeholders};
    use std::time::Duration;

    #[test]
    fn patience_doubles_after_each_time_out_up_to_an_hour_and_resets_on_an_answer() {
        let patience = Patience::new(Duration::from_secs(30));
        let timed_out: Result<(), StoreError> = Err(StoreError::TimedOut(Duration::ZERO));
        let mut limits = vec![patience.limit()];
        for _ in 0..8 {
            patience.note(&timed_out);
            limits.push(patience.limit());
        }
        let seconds: Vec<u64> = limits.iter().map(Duration::as_secs).collect();
        assert_eq!(seconds, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        // Any answer, an error too, is not a time-out.
        patience.note(&Err::<(), _>(StoreError::Invalid("refused".into())));
        assert_eq!(patience.limit(), Duration::from_secs(30));
        // Many time-outs in a row neither overflow nor pass the hour.
        let short = Patience::new(Duration::from_millis(100));
        for _ in 0..100 {
            short.note(&timed_out);
        }
        assert_eq!(short.limit(), Duration::from_secs(3600));
        // A limit set above the hour is kept.
        let long = Patience::new(Duration::from_secs(7200));
        long.note(&timed_out);
        assert_eq!(long.limit(), Duration::from_secs(7200));
    }

    #[test]
    fn placeholders_are_numbered_across_rows() {
        let mut sql = "VALUES ".to_string();
        push_placeholders(&mut sql, 2, 3);
        assert_eq!(sql, "VALUES ($1, $2, $3), ($4, $5, $6)");
        let mut one = String::new();
        push_placeholders(&mut one, 1, 1);
        assert_eq!(one, "($1)");
    }
}
