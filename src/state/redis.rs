//! Redis as the state cache shared by every gateway instance.
//!
//! Layout: hash `ekyc:accounts` (id → account JSON), hash `ekyc:credentials`
//! (SecretId → credential JSON, SecretKey sealed), marker `ekyc:filled` (set once the
//! hashes hold everything from SQL), channel `ekyc:events` (one JSON record per change).
//! Every write goes through one Lua script that stores a record only if its version is
//! newer and publishes it in the same step, so concurrent writers and refills can never
//! put an older copy over a newer one.
//!
//! `CacheSync` is the gateway's background task: subscribe, then load everything (so no
//! change falls between the two), apply events as they come, re-sync every
//! `resync_interval`, refill Redis from SQL when the marker is gone (flushed or
//! restarted empty), and reconnect by itself. Must not block the hot path: it only
//! writes into the mirror.

use super::mirror::StateMirror;
use super::{Freshness, StatePublisher};
use crate::clock::SharedClock;
use crate::store::Store;
use crate::store::records::{AccountRecord, CredentialRecord};
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const ACCOUNTS_KEY: &str = "ekyc:accounts";
pub const CREDENTIALS_KEY: &str = "ekyc:credentials";
pub const FILLED_KEY: &str = "ekyc:filled";
pub const EVENTS_CHANNEL: &str = "ekyc:events";

/// KEYS: hash, channel. ARGV: field, record JSON, version, event JSON.
const SET_IF_NEWER: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['version'] and tonumber(decoded['version']) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
"#;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Event {
    Account(AccountRecord),
    Credential(CredentialRecord),
}

async fn set_if_newer(
    conn: &mut ConnectionManager,
    hash: &str,
    field: &str,
    record_json: &str,
    version: i64,
    event_json: &str,
) -> redis::RedisResult<bool> {
    let stored: i64 = redis::Script::new(SET_IF_NEWER)
        .key(hash)
        .key(EVENTS_CHANNEL)
        .arg(field)
        .arg(record_json)
        .arg(version)
        .arg(event_json)
        .invoke_async(conn)
        .await?;
    Ok(stored == 1)
}

async fn put_account(conn: &mut ConnectionManager, record: &AccountRecord) -> redis::RedisResult<bool> {
    let json = serde_json::to_string(record).expect("serialisable");
    let event = serde_json::to_string(&Event::Account(record.clone())).expect("serialisable");
    set_if_newer(conn, ACCOUNTS_KEY, &record.id, &json, record.version, &event).await
}

async fn put_credential(conn: &mut ConnectionManager, record: &CredentialRecord) -> redis::RedisResult<bool> {
    let json = serde_json::to_string(record).expect("serialisable");
    let event = serde_json::to_string(&Event::Credential(record.clone())).expect("serialisable");
    set_if_newer(conn, CREDENTIALS_KEY, &record.secret_id, &json, record.version, &event).await
}

/// Copies every account and credential from SQL into Redis (newer copies win), then
/// sets the marker.
pub async fn refill_from_store(conn: &mut ConnectionManager, store: &Store) -> anyhow::Result<usize> {
    let accounts = store.all_accounts().await?;
    let credentials = store.all_credentials().await?;
    copy_into_redis(conn, &accounts, &credentials).await?;
    Ok(accounts.len() + credentials.len())
}

/// Writes the records into Redis (newer copies win) and sets the marker.
async fn copy_into_redis(
    conn: &mut ConnectionManager,
    accounts: &[AccountRecord],
    credentials: &[CredentialRecord],
) -> redis::RedisResult<()> {
    for account in accounts {
        put_account(conn, account).await?;
    }
    for credential in credentials {
        put_credential(conn, credential).await?;
    }
    conn.set(FILLED_KEY, "1").await
}

/// The writer side for many nodes: Redis first, then this process's own mirror, so the
/// instance that took an operator's change enforces it even before the event returns.
/// It connects on first use, so a gateway starts (and serves) while Redis is down.
pub struct RedisPublisher {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    mirror: Arc<StateMirror>,
}

impl RedisPublisher {
    pub fn new(url: &str, mirror: Arc<StateMirror>) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::OnceCell::new(),
            mirror,
        })
    }

    async fn conn(&self) -> anyhow::Result<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await?;
        Ok(conn.clone())
    }
}

#[async_trait::async_trait]
impl StatePublisher for RedisPublisher {
    async fn account_changed(&self, record: &AccountRecord) -> anyhow::Result<()> {
        self.mirror.apply_account(record);
        put_account(&mut self.conn().await?, record).await?;
        Ok(())
    }

    async fn credential_changed(&self, record: &CredentialRecord) -> anyhow::Result<()> {
        self.mirror.apply_credential(record)?;
        put_credential(&mut self.conn().await?, record).await?;
        Ok(())
    }
}

/// The gateway's background task keeping its mirror equal to Redis.
pub struct CacheSync {
    pub redis_url: String,
    pub store: Arc<Store>,
    pub mirror: Arc<StateMirror>,
    pub freshness: Arc<Freshness>,
    pub clock: SharedClock,
    pub resync_interval: Duration,
}

impl CacheSync {
    /// Loads the mirror once; used at start so the gateway does not serve before it
    /// knows its accounts.
    pub async fn initial_load(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = ConnectionManager::new(client).await?;
        self.full_sync(&mut conn).await
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut reconnecting = false;
        loop {
            match self.session(&mut shutdown, reconnecting).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "state cache: Redis session ended"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            reconnecting = true;
        }
    }

    /// One connection's life. After an outage, Redis may have missed changes (a writer
    /// that died before its retry got through, a Redis restarted from an old snapshot),
    /// so a reconnection first copies SQL over it; newer copies win, so this is safe.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>, reconnecting: bool) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(EVENTS_CHANNEL).await?;
        let mut conn = ConnectionManager::new(client).await?;
        // The SQL-to-Redis copy owed after an outage. The billing store may be down at
        // the same time: then stay subscribed (live events keep being applied) and
        // retry the copy every second, instead of dropping the subscription and
        // missing events while backing off.
        let mut repair_owed = reconnecting;
        self.sync(&mut conn, &mut repair_owed).await?;
        let mut events = pubsub.on_message();
        let mut resync = tokio::time::interval(self.resync_interval);
        resync.reset();
        let mut repair = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = events.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the subscription closed");
                    };
                    let payload: String = message.get_payload()?;
                    self.apply_event(&payload);
                }
                _ = resync.tick() => self.sync(&mut conn, &mut repair_owed).await?,
                _ = repair.tick(), if repair_owed => self.sync(&mut conn, &mut repair_owed).await?,
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Repairs Redis from SQL when owed (or when Redis is empty), then loads the mirror
    /// from Redis. Errors are Redis's only: with the store down the repair stays owed,
    /// and an empty Redis is not taken for "no accounts" (the mirror is kept, and it
    /// ages, so `state.stale_policy` applies).
    async fn sync(&self, conn: &mut ConnectionManager, repair_owed: &mut bool) -> anyhow::Result<()> {
        let filled: bool = conn.exists(FILLED_KEY).await?;
        if *repair_owed || !filled {
            match (self.store.all_accounts().await, self.store.all_credentials().await) {
                (Ok(accounts), Ok(credentials)) => {
                    copy_into_redis(conn, &accounts, &credentials).await?;
                    *repair_owed = false;
                    tracing::info!(
                        records = accounts.len() + credentials.len(),
                        "state cache: copied the billing store into Redis"
                    );
                }
                (Err(e), _) | (_, Err(e)) => {
                    *repair_owed = true;
                    tracing::warn!(error = %e, "state cache: billing store unreachable; Redis not repaired yet (live changes still applied)");
                    if !filled {
                        return Ok(());
                    }
                }
            }
        }
        self.load_mirror(conn).await
    }

    fn apply_event(&self, payload: &str) {
        match serde_json::from_str::<Event>(payload) {
            Ok(Event::Account(record)) => self.mirror.apply_account(&record),
            Ok(Event::Credential(record)) => {
                if let Err(e) = self.mirror.apply_credential(&record) {
                    tracing::error!(error = %e, "state cache: credential event skipped");
                }
            }
            Err(e) => tracing::warn!(error = %e, "state cache: unreadable event"),
        }
    }

    async fn full_sync(&self, conn: &mut ConnectionManager) -> anyhow::Result<()> {
        let filled: bool = conn.exists(FILLED_KEY).await?;
        if !filled {
            let copied = refill_from_store(conn, &self.store).await?;
            tracing::warn!(
                records = copied,
                "state cache: Redis was empty; refilled it from the billing store"
            );
        }
        self.load_mirror(conn).await
    }

    async fn load_mirror(&self, conn: &mut ConnectionManager) -> anyhow::Result<()> {
        let accounts: HashMap<String, String> = conn.hgetall(ACCOUNTS_KEY).await?;
        let credentials: HashMap<String, String> = conn.hgetall(CREDENTIALS_KEY).await?;
        let accounts: Vec<AccountRecord> = accounts.values().filter_map(|j| serde_json::from_str(j).ok()).collect();
        let credentials: Vec<CredentialRecord> = credentials
            .values()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        self.mirror.apply_snapshot(&accounts, &credentials);
        drop((accounts, credentials));
        super::return_freed_memory();
        self.freshness.mark_synced(self.clock.now_unix());
        Ok(())
    }
}
