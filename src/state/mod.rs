//! Account state and credentials as every gateway sees them.
//!
//! Writers (the admin API, the billing job) change the billing store first, then tell a
//! `StatePublisher`, which updates the shared cache and notifies every gateway:
//!
//! - `LocalPublisher`: single node (the embedded default, `demo`): the change goes
//!   straight into this process's mirror.
//! - `redis::RedisPublisher`: many nodes: the change goes to Redis (only if newer) and
//!   is published; each gateway's `redis::CacheSync` applies it to its own mirror,
//!   re-syncs periodically so a lost event heals, and copies SQL into Redis when Redis
//!   lost its data or after any outage (changes may have missed it meanwhile).
//!
//! The hot path only ever reads the `mirror`. `Freshness` tells it how old that mirror
//! is, so a gateway cut off from Redis for too long applies the configured policy.

pub mod mirror;
pub mod redis;

use crate::store::records::{AccountRecord, CredentialRecord};
use mirror::StateMirror;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[async_trait::async_trait]
pub trait StatePublisher: Send + Sync {
    /// Called after `record` was committed to the billing store.
    async fn account_changed(&self, record: &AccountRecord) -> anyhow::Result<()>;
    /// Called after `record` was committed to the billing store.
    async fn credential_changed(&self, record: &CredentialRecord) -> anyhow::Result<()>;
}

/// Single node: changes go straight into the local mirror.
pub struct LocalPublisher {
    pub mirror: Arc<StateMirror>,
}

#[async_trait::async_trait]
impl StatePublisher for LocalPublisher {
    async fn account_changed(&self, record: &AccountRecord) -> anyhow::Result<()> {
        self.mirror.apply_account(record);
        Ok(())
    }

    async fn credential_changed(&self, record: &CredentialRecord) -> anyhow::Result<()> {
        self.mirror.apply_credential(record)?;
        Ok(())
    }
}

/// For a process that serves no calls (`billing run`) on a single-node store: changes
/// are in the store, which single-node gateways reload every `state.resync_interval`.
pub struct StoreOnlyPublisher;

#[async_trait::async_trait]
impl StatePublisher for StoreOnlyPublisher {
    async fn account_changed(&self, _record: &AccountRecord) -> anyhow::Result<()> {
        Ok(())
    }

    async fn credential_changed(&self, _record: &CredentialRecord) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What to do when the mirror is older than `state.max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Refuse calls with `ServiceUnavailable` (a suspended account must not slip through).
    FailClosed,
    /// Keep serving on the last known state.
    FailOpen,
}

/// Hands the memory of a full load's records (freed by now) back to the system. The
/// binary's allocator, mimalloc, purges freed pages only when the thread that owns them
/// allocates again after a delay; the thread that loaded a million records may then sit
/// idle, and the process keeps about 0.5 KiB per account resident for nothing
/// (`tests/memory.rs`: 1,336 bytes per account before, 807 after). Harmless when
/// mimalloc is not the global allocator (tests): it then collects an empty heap.
pub fn return_freed_memory() {
    // SAFETY: mi_collect only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// When the mirror last agreed with its source (Unix seconds; `i64::MAX` = always
/// fresh, for the single-node mode where the mirror is the source).
#[derive(Debug)]
pub struct Freshness {
    synced_at: AtomicI64,
    /// Full loads of the mirror so far: lets a test (or a log line) tell that a sync
    /// has completed, not just started.
    syncs: AtomicU64,
}

impl Freshness {
    pub fn always_fresh() -> Self {
        Self {
            synced_at: AtomicI64::new(i64::MAX),
            syncs: AtomicU64::new(0),
        }
    }

    pub fn never_synced() -> Self {
        Self {
            synced_at: AtomicI64::new(i64::MIN),
            syncs: AtomicU64::new(0),
        }
    }

    pub fn mark_synced(&self, now: i64) {
        self.synced_at.fetch_max(now, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::AcqRel);
    }

    /// How many syncs have completed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// Seconds since the last sync, 0 when always fresh, `None` before the first sync.
    pub fn age(&self, now: i64) -> Option<i64> {
        match self.synced_at.load(Ordering::Acquire) {
            i64::MAX => Some(0),
            i64::MIN => None,
            at => Some((now - at).max(0)),
        }
    }
}
