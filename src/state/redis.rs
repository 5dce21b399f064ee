//! Redis as the state cache shared by every gateway instance: one server, a master
//! found through Sentinel, or a Cluster (`RedisEndpoint`, the redis crate's own
//! Sentinel and Cluster clients).
//!
//! Layout: hash `ekyc:accounts` (id → account JSON), hash `ekyc:credentials`
//! (SecretId → credential JSON, SecretKey sealed), marker `ekyc:filled` (set once the
//! hashes hold everything from SQL), channel `ekyc:events` (one JSON record per change).
//! Every write goes through one Lua script that stores a record only if its version is
//! newer, counts the write in the hash's field `#generation` and publishes it in the
//! same step, so concurrent writers and refills can never put an older copy over a
//! newer one, and a re-sync can skip hashes nobody wrote since it last read them.
//!
//! `CacheSync` is the gateway's background task: subscribe, then load everything (so no
//! change falls between the two), apply events as they come, re-sync every
//! `resync_interval` (reading the hashes a page at a time, when their counts moved), refill Redis from SQL when the marker is gone (flushed or
//! restarted empty), and reconnect by itself. A Sentinel master is looked up again on
//! every reconnection, so a gateway follows a promoted replica; a Cluster connection
//! that loses a node ends the session the same way, since an event may have been missed
//! meanwhile. Must not block the hot path: it only writes into the mirror.

use super::mirror::StateMirror;
use super::{Freshness, StatePublisher};
use crate::clock::SharedClock;
use crate::config::{RedisCredentials, RedisTarget};
use crate::store::Store;
use crate::store::records::{AccountRecord, CredentialRecord};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub const ACCOUNTS_KEY: &str = "ekyc:accounts";
pub const CREDENTIALS_KEY: &str = "ekyc:credentials";
pub const FILLED_KEY: &str = "ekyc:filled";
pub const EVENTS_CHANNEL: &str = "ekyc:events";
/// A field of each hash counting the writes to it (no account id or SecretId starts
/// with `#`), so that a re-sync can tell that nothing was written since its last read.
/// The count starts from a random number wherever the field is missing: a Redis wiped
/// and refilled then never shows a count a gateway read before the wipe (counting from
/// 0, one account refilled gave 1 again, and a gateway whose subscription missed the
/// refill's events skipped reading it).
pub const GENERATION_FIELD: &str = "#generation";

/// Where a hash's count of writes starts: random, below 2^62 so that counting never
/// overflows Redis's 64-bit integers.
fn generation_start() -> i64 {
    (rand::random::<u64>() >> 2) as i64
}

/// KEYS: hash. ARGV: field, record JSON, version, event JSON, channel, generation field,
/// the count's start if the hash has none.
/// The channel is not a key: a Cluster refuses a script whose keys lie in different
/// slots, and a PUBLISH reaches every node of a Cluster from any of them.
const SET_IF_NEWER: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['version'] and tonumber(decoded['version']) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HSETNX', KEYS[1], ARGV[6], ARGV[7]) == 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[6], 1)
end
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"#;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Event {
    Account(AccountRecord),
    Credential(CredentialRecord),
}

async fn set_if_newer(
    conn: &mut StateConnection,
    hash: &str,
    field: &str,
    record_json: &str,
    version: i64,
    event_json: &str,
) -> redis::RedisResult<bool> {
    let stored: i64 = redis::Script::new(SET_IF_NEWER)
        .key(hash)
        .arg(field)
        .arg(record_json)
        .arg(version)
        .arg(event_json)
        .arg(EVENTS_CHANNEL)
        .arg(GENERATION_FIELD)
        .arg(generation_start())
        .invoke_async(conn)
        .await?;
    Ok(stored == 1)
}

/// Copies every account and credential from SQL into Redis (newer copies win), then
/// sets the marker.
pub async fn refill_from_store(conn: &mut StateConnection, store: &Store) -> anyhow::Result<usize> {
    let accounts = store.all_accounts().await?;
    let credentials = store.all_credentials().await?;
    copy_into_redis(conn, &accounts, &credentials).await?;
    Ok(accounts.len() + credentials.len())
}

/// Writes the records into Redis (newer copies win) and sets the marker.
async fn copy_into_redis(
    conn: &mut StateConnection,
    accounts: &[AccountRecord],
    credentials: &[CredentialRecord],
) -> redis::RedisResult<()> {
    let accounts = accounts.iter().map(|record| {
        (
            ACCOUNTS_KEY,
            record.id.as_str(),
            serde_json::to_string(record),
            record.version,
            Event::Account(record.clone()),
        )
    });
    let credentials = credentials.iter().map(|record| {
        (
            CREDENTIALS_KEY,
            record.secret_id.as_str(),
            serde_json::to_string(record),
            record.version,
            Event::Credential(record.clone()),
        )
    });
    // Pipelined, a round trip per chunk rather than per record; a chunk never mixes the
    // two hashes, so a Cluster sends it to one node. EVAL, not EVALSHA: a pipeline cannot
    // load a missing script half-way.
    const CHUNK: usize = 1000;
    let mut pipe = redis::pipe();
    let mut hash_in_pipe = ACCOUNTS_KEY;
    let mut in_pipe = 0;
    for (hash, field, json, version, event) in accounts.chain(credentials) {
        if in_pipe == CHUNK || (in_pipe > 0 && hash != hash_in_pipe) {
            pipe.query_async::<()>(conn).await?;
            pipe.clear();
            in_pipe = 0;
        }
        let json = json.expect("serialisable");
        let event = serde_json::to_string(&event).expect("serialisable");
        pipe.add_command(set_if_newer_eval(hash, field, &json, version, &event))
            .ignore();
        hash_in_pipe = hash;
        in_pipe += 1;
    }
    if in_pipe > 0 {
        pipe.query_async::<()>(conn).await?;
    }
    conn.set(FILLED_KEY, "1").await
}

fn set_if_newer_eval(hash: &str, field: &str, record_json: &str, version: i64, event_json: &str) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SET_IF_NEWER)
        .arg(1)
        .arg(hash)
        .arg(field)
        .arg(record_json)
        .arg(version)
        .arg(event_json)
        .arg(EVENTS_CHANNEL)
        .arg(GENERATION_FIELD)
        .arg(generation_start());
    cmd
}

/// The writer side for many nodes: Redis first, then this process's own mirror, so the
/// instance that took an operator's change enforces it even before the event returns.
/// It connects on first use, so a gateway starts (and serves) while Redis is down. After
/// a failed write it connects afresh (a Sentinel master looked up again); the caller
/// retries (`accounts::propagate`), which is safe: only a newer version is stored.
pub struct RedisPublisher {
    endpoint: RedisEndpoint,
    conn: tokio::sync::Mutex<Option<StateConnection>>,
    mirror: Arc<StateMirror>,
}

impl RedisPublisher {
    pub fn new(target: &RedisTarget, mirror: Arc<StateMirror>) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: RedisEndpoint::new(target)?,
            conn: tokio::sync::Mutex::new(None),
            mirror,
        })
    }

    async fn conn(&self) -> anyhow::Result<StateConnection> {
        let mut cached = self.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.endpoint.connect().await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    async fn put(
        &self,
        hash: &str,
        field: &str,
        record_json: &str,
        version: i64,
        event_json: &str,
    ) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        if let Err(e) = set_if_newer(&mut conn, hash, field, record_json, version, event_json).await {
            // The next write connects afresh: a Sentinel set may name a new master by then.
            self.conn.lock().await.take();
            return Err(e.into());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl StatePublisher for RedisPublisher {
    async fn account_changed(&self, record: &AccountRecord) -> anyhow::Result<()> {
        self.mirror.apply_account(record);
        let json = serde_json::to_string(record).expect("serialisable");
        let event = serde_json::to_string(&Event::Account(record.clone())).expect("serialisable");
        self.put(ACCOUNTS_KEY, &record.id, &json, record.version, &event).await
    }

    async fn credential_changed(&self, record: &CredentialRecord) -> anyhow::Result<()> {
        self.mirror.apply_credential(record)?;
        let json = serde_json::to_string(record).expect("serialisable");
        let event = serde_json::to_string(&Event::Credential(record.clone())).expect("serialisable");
        self.put(CREDENTIALS_KEY, &record.secret_id, &json, record.version, &event)
            .await
    }
}

/// A connection for commands, whichever deployment `[state]` names. Cloning shares it.
#[derive(Clone)]
pub enum StateConnection {
    /// One server, or the master a Sentinel set named when the connection was made.
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for StateConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The published changes as they arrive; ends (`None` or an error) when the
/// subscription was lost and events may have been missed.
pub struct StateEvents(BoxStream<'static, anyhow::Result<String>>);

impl StateEvents {
    async fn next(&mut self) -> Option<anyhow::Result<String>> {
        self.0.next().await
    }
}

/// The Redis deployment, resolved to connections on demand.
#[derive(Clone)]
pub struct RedisEndpoint {
    target: RedisTarget,
}

/// How long a Cluster or Sentinel lookup may take before the attempt counts as failed
/// (the caller retries with backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisEndpoint {
    /// Checks the addresses parse; connects to nothing.
    pub fn new(target: &RedisTarget) -> anyhow::Result<Self> {
        match target {
            RedisTarget::Node(url) => {
                redis::Client::open(url.as_str())?;
            }
            RedisTarget::Sentinel { sentinels, .. } => {
                for url in sentinels {
                    redis::Client::open(url.as_str())?;
                }
            }
            RedisTarget::Cluster { nodes, .. } => {
                cluster_builder(nodes, &RedisCredentials::default()).build()?;
            }
        }
        Ok(Self { target: target.clone() })
    }

    /// The server to talk to for one server or a Sentinel set: the master the
    /// sentinels name now (checked to answer as a master).
    async fn node_client(&self) -> anyhow::Result<redis::Client> {
        match &self.target {
            RedisTarget::Node(url) => Ok(redis::Client::open(url.as_str())?),
            RedisTarget::Sentinel {
                master,
                sentinels,
                db,
                credentials,
            } => {
                let mut node = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(username) = &credentials.username {
                    node = node.set_username(username);
                }
                if let Some(password) = &credentials.password {
                    node = node.set_password(password);
                }
                let mut client = redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
                    redis::sentinel::SentinelServerType::Master,
                )?;
                let found = tokio::time::timeout(CONNECT_TIMEOUT, client.async_get_client())
                    .await
                    .map_err(|_| anyhow::anyhow!("no sentinel named master {master:?} within {CONNECT_TIMEOUT:?}"))??;
                Ok(found)
            }
            RedisTarget::Cluster { .. } => unreachable!("a Cluster has no single node"),
        }
    }

    /// A connection for commands.
    pub async fn connect(&self) -> anyhow::Result<StateConnection> {
        match &self.target {
            RedisTarget::Cluster { nodes, credentials } => {
                let client = cluster_builder(nodes, credentials).build()?;
                Ok(StateConnection::Cluster(client.get_async_connection().await?))
            }
            _ => Ok(StateConnection::Node(
                ConnectionManager::new(self.node_client().await?).await?,
            )),
        }
    }

    /// A connection for commands and the subscription to the change channel, on the
    /// same server (one server, Sentinel) or the same Cluster connection.
    async fn subscribe(&self) -> anyhow::Result<(StateConnection, StateEvents)> {
        match &self.target {
            RedisTarget::Cluster { nodes, credentials } => {
                let (pushes, received) = mpsc::unbounded_channel();
                let client = cluster_builder(nodes, credentials)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(EVENTS_CHANNEL).await?;
                let events = futures_util::stream::unfold(received, |mut received| async move {
                    loop {
                        let push = received.recv().await?;
                        match push.kind {
                            redis::PushKind::Message => {
                                let payload = push.data.get(1).map(redis::from_redis_value_ref::<String>);
                                return Some((
                                    payload
                                        .unwrap_or_else(|| Err(redis::ParsingError::from("a message without payload")))
                                        .map_err(anyhow::Error::from),
                                    received,
                                ));
                            }
                            redis::PushKind::Disconnection => {
                                return Some((
                                    Err(anyhow::anyhow!(
                                        "a Cluster node connection closed; events may have been missed"
                                    )),
                                    received,
                                ));
                            }
                            _ => continue,
                        }
                    }
                });
                Ok((StateConnection::Cluster(conn), StateEvents(events.boxed())))
            }
            _ => {
                let client = self.node_client().await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(EVENTS_CHANNEL).await?;
                let conn = ConnectionManager::new(client).await?;
                let events = pubsub
                    .into_on_message()
                    .map(|message| message.get_payload::<String>().map_err(anyhow::Error::from));
                Ok((StateConnection::Node(conn), StateEvents(events.boxed())))
            }
        }
    }
}

fn cluster_builder(nodes: &[String], credentials: &RedisCredentials) -> redis::cluster::ClusterClientBuilder {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CONNECT_TIMEOUT);
    if let Some(username) = &credentials.username {
        builder = builder.username(username);
    }
    if let Some(password) = &credentials.password {
        builder = builder.password(password.clone());
    }
    builder
}

/// The gateway's background task keeping its mirror equal to Redis.
pub struct CacheSync {
    pub endpoint: RedisEndpoint,
    pub store: Arc<Store>,
    pub mirror: Arc<StateMirror>,
    pub freshness: Arc<Freshness>,
    pub clock: SharedClock,
    pub resync_interval: Duration,
    /// How long a repair waits for the store's records (`store.timeout_ms`); given up
    /// on, the repair stays owed and is tried again.
    pub store_patience: crate::store::Patience,
    pub resyncs_read: prometheus_client::metrics::counter::Counter,
    pub resyncs_skipped: prometheus_client::metrics::counter::Counter,
    /// The hashes' generations before `initial_load`'s read, for the first session:
    /// unchanged when it subscribes, nothing was written since, and it need not read
    /// everything again (at 1 M accounts a whole read is 5-8 s of one core, right
    /// after the gateway turned ready).
    pub(crate) initial_generations: std::sync::Mutex<Option<Generations>>,
}

impl CacheSync {
    /// Loads the mirror once; used at start so the gateway does not serve before it
    /// knows its accounts.
    pub async fn initial_load(&self) -> anyhow::Result<()> {
        let mut conn = self.endpoint.connect().await?;
        let filled: bool = conn.exists(FILLED_KEY).await?;
        if !filled {
            let copied = refill_from_store(&mut conn, &self.store).await?;
            tracing::warn!(
                records = copied,
                "state cache: Redis was empty; refilled it from the billing store"
            );
        }
        let before = Generations::read(&mut conn).await?;
        self.load_mirror(&mut conn).await?;
        *self.initial_generations.lock().expect("poisoned") = Some(before);
        Ok(())
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
        let (mut conn, mut events) = self.endpoint.subscribe().await?;
        // The SQL-to-Redis copy owed after an outage. The billing store may be down at
        // the same time: then stay subscribed (live events keep being applied) and
        // retry the copy every second, instead of dropping the subscription and
        // missing events while backing off.
        let mut repair_owed = reconnecting;
        // The hashes' generations before the whole read the mirror reflects:
        // `initial_load`'s while no session has read yet (any write after that read
        // moved them; the subscription is younger than it).
        let mut read_at = self.initial_generations.lock().expect("poisoned").take();
        self.sync_applying_events(&mut conn, &mut events, &mut repair_owed, &mut read_at)
            .await?;
        let mut resync = tokio::time::interval(self.resync_interval);
        resync.reset();
        let mut repair = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = events.next() => self.apply_message(message)?,
                _ = resync.tick() => {
                    self.sync_applying_events(&mut conn, &mut events, &mut repair_owed, &mut read_at).await?
                }
                _ = repair.tick(), if repair_owed => {
                    self.sync_applying_events(&mut conn, &mut events, &mut repair_owed, &mut read_at).await?
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// `sync`, with the events that arrive meanwhile applied as they come: left unread
    /// they would pile up in the client's buffer (a repair of 1 M accounts publishes 2 M
    /// events of its own, about 1 GiB), and a repair waiting on the store would hold
    /// every live change back.
    async fn sync_applying_events(
        &self,
        conn: &mut StateConnection,
        events: &mut StateEvents,
        repair_owed: &mut bool,
        read_at: &mut Option<Generations>,
    ) -> anyhow::Result<()> {
        let sync = self.sync(conn, repair_owed, read_at);
        tokio::pin!(sync);
        loop {
            tokio::select! {
                done = &mut sync => return done,
                message = events.next() => self.apply_message(message)?,
            }
        }
    }

    /// Repairs Redis from SQL when owed (or when Redis is empty), then loads the mirror
    /// from Redis unless neither hash was written since the session's last read (every
    /// write since then came as an event: the subscription is older). Errors are
    /// Redis's only: with the store down the repair stays owed, and an empty Redis is
    /// not taken for "no accounts" (the mirror is kept, and it ages, so
    /// `state.stale_policy` applies).
    async fn sync(
        &self,
        conn: &mut StateConnection,
        repair_owed: &mut bool,
        read_at: &mut Option<Generations>,
    ) -> anyhow::Result<()> {
        let filled: bool = conn.exists(FILLED_KEY).await?;
        if *repair_owed || !filled {
            let records = self
                .store
                .accounts_and_credentials_within(self.store_patience.limit())
                .await;
            self.store_patience.note(&records);
            match records {
                Ok((accounts, credentials)) => {
                    copy_into_redis(conn, &accounts, &credentials).await?;
                    *repair_owed = false;
                    tracing::info!(
                        records = accounts.len() + credentials.len(),
                        "state cache: copied the billing store into Redis"
                    );
                }
                Err(e) => {
                    *repair_owed = true;
                    tracing::warn!(error = %e, "state cache: billing store unreachable; Redis not repaired yet (live changes still applied)");
                    if !filled {
                        return Ok(());
                    }
                }
            }
        }
        let now = Generations::read(conn).await?;
        if read_at.as_ref() == Some(&now) && now.is_known() {
            self.freshness.mark_synced(self.clock.now_unix());
            self.resyncs_skipped.inc();
            return Ok(());
        }
        self.load_mirror(conn).await?;
        self.resyncs_read.inc();
        *read_at = Some(now);
        Ok(())
    }

    /// One message of the subscription; an error once it has ended or failed (events
    /// may then have been missed: the session starts again).
    fn apply_message(&self, message: Option<anyhow::Result<String>>) -> anyhow::Result<()> {
        let Some(payload) = message else {
            anyhow::bail!("the subscription closed");
        };
        self.apply_event(&payload?);
        Ok(())
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

    /// Applies every record in Redis to the mirror, page by page as read: collected first,
    /// every record would be held twice more, and at 1 M accounts a restart would spend
    /// most of its time having the kernel zero pages for those copies. A repeat or an
    /// older copy is ignored by the mirror's versions, and a read that fails midway
    /// leaves only newer copies applied.
    async fn load_mirror(&self, conn: &mut StateConnection) -> anyhow::Result<()> {
        for_each_record(conn, ACCOUNTS_KEY, |record: AccountRecord| {
            self.mirror.apply_account(&record)
        })
        .await?;
        for_each_record(conn, CREDENTIALS_KEY, |record: CredentialRecord| {
            if let Err(e) = self.mirror.apply_credential(&record) {
                tracing::error!(error = %e, "state cache: credential skipped");
            }
        })
        .await?;
        super::return_freed_memory();
        self.freshness.mark_synced(self.clock.now_unix());
        Ok(())
    }
}

/// How many writes each hash has had (`GENERATION_FIELD`); None where a hash has no
/// count (empty, or written only by a gateway that did not keep one).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Generations {
    accounts: Option<i64>,
    credentials: Option<i64>,
}

impl Generations {
    async fn read(conn: &mut StateConnection) -> redis::RedisResult<Self> {
        Ok(Self {
            accounts: conn.hget(ACCOUNTS_KEY, GENERATION_FIELD).await?,
            credentials: conn.hget(CREDENTIALS_KEY, GENERATION_FIELD).await?,
        })
    }

    fn is_known(&self) -> bool {
        self.accounts.is_some() && self.credentials.is_some()
    }
}

/// Calls `apply` on every record in `hash`, read a page at a time with HSCAN: one
/// HGETALL of a million records outlasts any response timeout and holds the whole raw
/// answer in memory. A record present for the whole scan is passed at least once (HSCAN
/// may return it again); one written meanwhile also arrives as an event, the
/// subscription being older.
async fn for_each_record<T: serde::de::DeserializeOwned>(
    conn: &mut StateConnection,
    hash: &str,
    mut apply: impl FnMut(T),
) -> anyhow::Result<()> {
    const PAGE: usize = 2000;
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(hash)
            .arg(cursor)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        for (field, json) in page {
            if field == GENERATION_FIELD {
                continue;
            }
            if let Ok(record) = serde_json::from_str(&json) {
                apply(record);
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
