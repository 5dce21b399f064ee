//! The gateway's in-memory mirror of account state and credentials: what the hot path
//! reads instead of the network. Concurrent maps (dashmap) keyed by SecretId, API-key
//! hash and account id; an account's state lives in atomics inside a shared entry, so
//! an update is visible to the next request without replacing anything. Copies are
//! applied only when their version is newer, so a late or replayed event cannot undo a
//! change. Must not do I/O, and must not hold a map guard across an `.await`.

use crate::crypto::MasterKey;
use crate::store::records::{AccountRecord, CredentialRecord, CredentialStatus};
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const ACTIVATED: u8 = 1;
const MANUAL: u8 = 2;
const ARREARS: u8 = 4;

pub use crate::store::records::AccountStanding;

/// One account's enforcement state, shared by all its credentials.
pub struct AccountEntry {
    id: Box<str>,
    /// Dense number given in this process, for per-account tables (rate limiters).
    index: u32,
    /// The account's own rate limiter and the qps it was built for (rebuilt when the
    /// override changes). Lives here so the hot path finds it without another lookup.
    pub(crate) limiter: Mutex<Option<(u32, governor::DefaultDirectRateLimiter)>>,
    flags: AtomicU8,
    /// 0: the configured default.
    rate_limit_qps: AtomicU32,
    version: AtomicI64,
    /// What the account may still spend (micro-units), as this gateway's credit check
    /// last computed it (`billing::credit`); `i64::MAX` until then and when no limit
    /// applies. Local to each gateway: never published.
    credit_headroom: AtomicI64,
    /// The account's own credit limit (micro-units), `NO_OWN_LIMIT` for the default.
    credit_limit: AtomicI64,
}

/// `AccountEntry::credit_limit` when the account has no limit of its own.
const NO_OWN_LIMIT: i64 = i64::MIN;

impl std::fmt::Debug for AccountEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountEntry")
            .field("id", &self.id)
            .field("standing", &self.standing())
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl AccountEntry {
    fn placeholder(id: &str, index: u32) -> Self {
        Self {
            id: id.into(),
            index,
            limiter: Mutex::new(None),
            flags: AtomicU8::new(0),
            rate_limit_qps: AtomicU32::new(0),
            version: AtomicI64::new(0),
            credit_headroom: AtomicI64::new(i64::MAX),
            credit_limit: AtomicI64::new(NO_OWN_LIMIT),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The first reason to refuse (`AccountStanding::of`).
    pub fn standing(&self) -> AccountStanding {
        let flags = self.flags.load(Ordering::Acquire);
        AccountStanding::of(flags & ACTIVATED != 0, flags & MANUAL != 0, flags & ARREARS != 0)
    }

    pub fn rate_limit_qps(&self) -> Option<u32> {
        match self.rate_limit_qps.load(Ordering::Relaxed) {
            0 => None,
            qps => Some(qps),
        }
    }

    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether a call costing `price` micro-units fits what the account may still
    /// spend (always, until the credit check has run or when no limit applies).
    #[inline]
    pub fn credit_covers(&self, price: i64) -> bool {
        self.credit_headroom.load(Ordering::Relaxed) >= price
    }

    pub fn credit_headroom(&self) -> i64 {
        self.credit_headroom.load(Ordering::Relaxed)
    }

    /// Written only when it changes: the check runs over every account every few
    /// seconds, and a store would take the entry's line from the cores reading it.
    pub fn set_credit_headroom(&self, micros: i64) {
        if self.credit_headroom.load(Ordering::Relaxed) != micros {
            self.credit_headroom.store(micros, Ordering::Relaxed);
        }
    }

    /// The account's own credit limit, `None` for the configured default.
    pub fn credit_limit(&self) -> Option<i64> {
        Some(self.credit_limit.load(Ordering::Relaxed)).filter(|limit| *limit != NO_OWN_LIMIT)
    }
}

/// A signing key and the credential date (YYYY-MM-DD) it was derived for.
type DatedSigningKey = ([u8; 10], crate::tc3::SigningKey);

/// A credential with its SecretKey opened, held only in this process's memory.
pub struct CredentialEntry {
    secret_id: Box<str>,
    account: Arc<AccountEntry>,
    secret_key: Box<str>,
    revoked: AtomicBool,
    version: AtomicI64,
    /// kSigning for the last credential date seen: TC3 derives it from (key, date,
    /// service), so one derivation a day replaces three HMACs per request. Boxed: a
    /// loaded credential that never calls costs 8 bytes here, not 176.
    signing_key: Mutex<Option<Box<DatedSigningKey>>>,
}

impl std::fmt::Debug for CredentialEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialEntry")
            .field("secret_id", &self.secret_id)
            .field("account", &self.account.id())
            .field("revoked", &self.revoked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CredentialEntry {
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    pub fn account(&self) -> &Arc<AccountEntry> {
        &self.account
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// The TC3 signing key for `date` (YYYY-MM-DD) and `service`, cached per date.
    pub fn signing_key(&self, date: &str, service: &str) -> crate::tc3::SigningKey {
        let mut date_key = [0u8; 10];
        if date.len() == 10 {
            date_key.copy_from_slice(date.as_bytes());
            if let Some(cached) = &*self.signing_key.lock().expect("poisoned")
                && let (cached_date, key) = &**cached
                && *cached_date == date_key
                && service == "faceid"
            {
                return key.clone();
            }
        }
        let key = crate::tc3::SigningKey::derive(&self.secret_key, date, service);
        if date.len() == 10 && service == "faceid" {
            *self.signing_key.lock().expect("poisoned") = Some(Box::new((date_key, key.clone())));
        }
        key
    }

    /// For the legacy v1 signature, which signs with the SecretKey itself.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("credential {secret_id}: {source}")]
    Unseal {
        secret_id: String,
        source: crate::crypto::CryptoError,
    },
    #[error("credential {0}: the API key hash is not 64 hex digits")]
    BadHash(String),
}

/// A SecretId as the map's key, its bytes in the map's own bucket when they fit (ours,
/// `AKID` and 32 characters, do): a lookup reads no other allocation. As a `Box<str>`
/// each lookup also missed the cache on the key's own allocation with calls spread over
/// 100,000 accounts (`memcmp` took 1.4% of the gateway's samples, against none with one
/// account), and each credential paid for that allocation.
#[derive(Debug, Clone)]
enum SecretIdKey {
    Inline { len: u8, bytes: [u8; INLINE_SECRET_ID] },
    Heap(Box<[u8]>),
}

/// The longest SecretId held inline: the key is then 40 bytes, as large as the
/// `Heap` variant's 16 bytes and alignment allow without growing past one 64-byte bucket.
const INLINE_SECRET_ID: usize = 38;

impl SecretIdKey {
    fn new(secret_id: &str) -> Self {
        let id = secret_id.as_bytes();
        if id.len() <= INLINE_SECRET_ID {
            let mut bytes = [0; INLINE_SECRET_ID];
            bytes[..id.len()].copy_from_slice(id);
            SecretIdKey::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            SecretIdKey::Heap(id.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            SecretIdKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SecretIdKey::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for SecretIdKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SecretIdKey {}

/// As the bytes hash, so that a lookup by `&[u8]` finds the key (`Borrow`'s contract).
impl std::hash::Hash for SecretIdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for SecretIdKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// aHash instead of SipHash: a lookup per request at a million keys; the keys are
/// random SecretIds and SHA-256 hashes that no caller chooses, and aHash is seeded anyway.
type Map<K, V> = DashMap<K, V, ahash::RandomState>;

pub struct StateMirror {
    accounts: Map<Box<str>, Arc<AccountEntry>>,
    by_secret_id: Map<SecretIdKey, Arc<CredentialEntry>>,
    by_api_key: Map<[u8; 32], Arc<CredentialEntry>>,
    master_key: Arc<MasterKey>,
    next_index: AtomicU32,
    by_index: Map<u32, Arc<AccountEntry>>,
    /// Bumped after a credential entry is added or replaced: a copy of an entry held
    /// outside the maps (`proxy::auth::CallerCache`) is good while this is unchanged.
    credential_generation: AtomicU64,
    /// Accounts with a credit limit of their own (kept by `apply_account`): with none,
    /// and no default limit, the credit check has nothing to walk.
    accounts_with_credit_limit: AtomicUsize,
    /// Whether a credit check may have left some account's headroom below `i64::MAX`
    /// since `lift_credit_headrooms` last put them all back.
    headroom_lowered: AtomicBool,
}

impl StateMirror {
    pub fn new(master_key: Arc<MasterKey>) -> Self {
        Self {
            accounts: Map::default(),
            by_secret_id: Map::default(),
            by_api_key: Map::default(),
            master_key,
            next_index: AtomicU32::new(0),
            accounts_with_credit_limit: AtomicUsize::new(0),
            headroom_lowered: AtomicBool::new(false),
            by_index: Map::default(),
            credential_generation: AtomicU64::new(0),
        }
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    fn account_entry(&self, id: &str) -> Arc<AccountEntry> {
        if let Some(entry) = self.accounts.get(id) {
            return entry.clone();
        }
        let entry = self
            .accounts
            .entry(id.into())
            .or_insert_with(|| {
                Arc::new(AccountEntry::placeholder(
                    id,
                    self.next_index.fetch_add(1, Ordering::Relaxed),
                ))
            })
            .clone();
        self.by_index.entry(entry.index()).or_insert_with(|| entry.clone());
        entry
    }

    /// Applies an account copy if it is newer than the one held.
    pub fn apply_account(&self, record: &AccountRecord) {
        let entry = self.account_entry(&record.id);
        if record.version < entry.version() {
            return;
        }
        let mut flags = 0;
        if record.activated {
            flags |= ACTIVATED;
        }
        if record.manual.is_some() {
            flags |= MANUAL;
        }
        if record.arrears.is_some() {
            flags |= ARREARS;
        }
        entry
            .rate_limit_qps
            .store(record.rate_limit_qps.unwrap_or(0), Ordering::Relaxed);
        let own_limit = record.credit_limit.unwrap_or(NO_OWN_LIMIT);
        let before = entry.credit_limit.swap(own_limit, Ordering::Relaxed);
        match (before == NO_OWN_LIMIT, own_limit == NO_OWN_LIMIT) {
            (true, false) => {
                self.accounts_with_credit_limit.fetch_add(1, Ordering::Relaxed);
            }
            (false, true) => {
                self.accounts_with_credit_limit.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        entry.flags.store(flags, Ordering::Release);
        entry.version.store(record.version, Ordering::Release);
    }

    /// Applies a credential copy if it is newer than the one held, opening its
    /// SecretKey with the master key.
    pub fn apply_credential(&self, record: &CredentialRecord) -> Result<(), MirrorError> {
        if let Some(existing) = self.by_secret_id.get(record.secret_id.as_bytes()) {
            if record.version < existing.version.load(Ordering::Acquire) {
                return Ok(());
            }
            if existing.account.id() == record.account_id {
                existing
                    .revoked
                    .store(record.status == CredentialStatus::Revoked, Ordering::Release);
                existing.version.store(record.version, Ordering::Release);
                return Ok(());
            }
        }
        let secret_key = self
            .master_key
            .open(&record.secret_key_sealed, &record.account_id)
            .map_err(|source| MirrorError::Unseal {
                secret_id: record.secret_id.clone(),
                source,
            })?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&record.api_key_hash, &mut hash)
            .map_err(|_| MirrorError::BadHash(record.secret_id.clone()))?;
        let entry = Arc::new(CredentialEntry {
            secret_id: record.secret_id.as_str().into(),
            account: self.account_entry(&record.account_id),
            secret_key: secret_key.into(),
            revoked: AtomicBool::new(record.status == CredentialStatus::Revoked),
            version: AtomicI64::new(record.version),
            signing_key: Mutex::new(None),
        });
        self.by_api_key.insert(hash, entry.clone());
        self.by_secret_id.insert(SecretIdKey::new(&record.secret_id), entry);
        self.credential_generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Applies a full snapshot; returns how many credentials could not be opened.
    pub fn apply_snapshot(&self, accounts: &[AccountRecord], credentials: &[CredentialRecord]) -> usize {
        for account in accounts {
            self.apply_account(account);
        }
        let mut failed = 0;
        for credential in credentials {
            if let Err(e) = self.apply_credential(credential) {
                tracing::error!(error = %e, "credential skipped");
                failed += 1;
            }
        }
        failed
    }

    /// Read it before a lookup whose result is kept (see the field).
    pub fn credential_generation(&self) -> u64 {
        self.credential_generation.load(Ordering::Acquire)
    }

    pub fn by_secret_id(&self, secret_id: &str) -> Option<Arc<CredentialEntry>> {
        self.by_secret_id.get(secret_id.as_bytes()).map(|e| e.clone())
    }

    pub fn by_api_key_hash(&self, hash: &[u8; 32]) -> Option<Arc<CredentialEntry>> {
        self.by_api_key.get(hash).map(|e| e.clone())
    }

    pub fn account(&self, id: &str) -> Option<Arc<AccountEntry>> {
        self.accounts.get(id).map(|e| e.clone())
    }

    /// The account with this process-local index (see `AccountEntry::index`).
    pub fn account_by_index(&self, index: u32) -> Option<Arc<AccountEntry>> {
        self.by_index.get(&index).map(|e| e.clone())
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn accounts_with_credit_limit(&self) -> usize {
        self.accounts_with_credit_limit.load(Ordering::Relaxed)
    }

    /// Before a credit check that applies limits: it may lower headrooms.
    pub fn mark_headrooms_lowered(&self) {
        self.headroom_lowered.store(true, Ordering::Release);
    }

    /// Puts every account's headroom back to unlimited, walking the map only when a
    /// check lowered some since the last time (new entries start unlimited).
    pub fn lift_credit_headrooms(&self) {
        if self.headroom_lowered.swap(false, Ordering::AcqRel) {
            self.for_each_account(|account| account.set_credit_headroom(i64::MAX));
        }
    }

    /// Calls `f` on every account held, in place: no snapshot, no reference counts
    /// written (a sweep every few seconds over a million entries). Each map shard is
    /// read-locked while it is walked, so `f` must not block or touch the mirror.
    pub fn for_each_account(&self, mut f: impl FnMut(&AccountEntry)) {
        self.accounts.iter().for_each(|entry| f(entry.value()));
    }

    pub fn credential_count(&self) -> usize {
        self.by_secret_id.len()
    }

    /// Accounts suspended manually, and for arrears (one may be both): a walk of the
    /// map, for a scrape.
    pub fn suspended_counts(&self) -> (usize, usize) {
        self.accounts.iter().fold((0, 0), |(manual, arrears), entry| {
            let flags = entry.value().flags.load(Ordering::Relaxed);
            (
                manual + usize::from(flags & MANUAL != 0),
                arrears + usize::from(flags & ARREARS != 0),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Suspension;

    fn mirror() -> StateMirror {
        StateMirror::new(Arc::new(MasterKey::parse(&"42".repeat(32)).unwrap()))
    }

    fn credential(m: &StateMirror, account: &str, version: i64, status: CredentialStatus) -> CredentialRecord {
        CredentialRecord {
            secret_id: "AKIDx".into(),
            account_id: account.into(),
            secret_key_sealed: m.master_key().seal("key", account),
            api_key_hash: hex::encode(crate::crypto::api_key_hash("ak")),
            status,
            created_at: 0,
            revoked_at: None,
            version,
        }
    }

    #[test]
    fn standing_follows_flags_with_manual_first() {
        let m = mirror();
        let mut a = AccountRecord::new("acme", "Acme", 0);
        m.apply_account(&a);
        assert_eq!(m.account("acme").unwrap().standing(), AccountStanding::NotActivated);
        a.activated = true;
        a.version = 2;
        m.apply_account(&a);
        assert_eq!(m.account("acme").unwrap().standing(), AccountStanding::Enabled);
        a.arrears = Some(Suspension {
            reason: "bill".into(),
            since: 1,
        });
        a.version = 3;
        m.apply_account(&a);
        assert_eq!(m.account("acme").unwrap().standing(), AccountStanding::Arrears);
        a.manual = Some(Suspension {
            reason: "fraud".into(),
            since: 1,
        });
        a.version = 4;
        m.apply_account(&a);
        assert_eq!(
            m.account("acme").unwrap().standing(),
            AccountStanding::ManuallySuspended
        );
    }

    #[test]
    fn secret_ids_of_any_length_are_found_and_ours_are_held_inline() {
        assert_eq!(std::mem::size_of::<SecretIdKey>(), 40);
        let m = mirror();
        let ids = [
            crate::crypto::new_secret_id(),
            "A".repeat(INLINE_SECRET_ID),
            "B".repeat(INLINE_SECRET_ID + 1),
            "C".repeat(200),
            String::new(),
        ];
        assert!(matches!(SecretIdKey::new(&ids[0]), SecretIdKey::Inline { .. }));
        assert!(matches!(SecretIdKey::new(&ids[2]), SecretIdKey::Heap(_)));
        for (i, id) in ids.iter().enumerate() {
            let mut record = credential(&m, &format!("acct-{i}"), 1, CredentialStatus::Active);
            record.secret_id = id.clone();
            m.apply_credential(&record).unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.by_secret_id(id).unwrap().account().id(), format!("acct-{i}"));
        }
        assert!(m.by_secret_id(&"A".repeat(INLINE_SECRET_ID - 1)).is_none());
        assert!(m.by_secret_id(&"B".repeat(INLINE_SECRET_ID)).is_none());
        assert_eq!(m.credential_count(), ids.len());
    }

    #[test]
    fn a_walk_visits_every_account_once_and_headroom_is_written_only_when_it_moves() {
        let m = mirror();
        for i in 0..100 {
            m.apply_account(&AccountRecord::new(&format!("acct-{i}"), "A", 0));
        }
        let mut seen = std::collections::HashSet::new();
        m.for_each_account(|account| assert!(seen.insert(account.id().to_string())));
        assert_eq!(seen.len(), 100);
        let account = m.account("acct-7").unwrap();
        account.set_credit_headroom(5);
        account.set_credit_headroom(5);
        assert_eq!(account.credit_headroom(), 5);
        m.for_each_account(|account| account.set_credit_headroom(i64::MAX));
        assert_eq!(account.credit_headroom(), i64::MAX);
    }

    #[test]
    fn own_credit_limits_are_counted_and_lowered_headrooms_lifted_once() {
        let m = mirror();
        let mut a = AccountRecord::new("a", "A", 0);
        let mut b = AccountRecord::new("b", "B", 0);
        m.apply_account(&a);
        m.apply_account(&b);
        assert_eq!(m.accounts_with_credit_limit(), 0);
        (a.credit_limit, a.version) = (Some(100), 2);
        m.apply_account(&a);
        m.apply_account(&a);
        (b.credit_limit, b.version) = (Some(5), 2);
        m.apply_account(&b);
        assert_eq!(m.accounts_with_credit_limit(), 2);
        (b.credit_limit, b.version) = (Some(7), 3);
        m.apply_account(&b);
        assert_eq!(m.accounts_with_credit_limit(), 2, "a new limit is not a new account");
        (a.credit_limit, a.version) = (None, 3);
        m.apply_account(&a);
        (b.credit_limit, b.version) = (None, 4);
        m.apply_account(&b);
        assert_eq!(m.accounts_with_credit_limit(), 0);

        let account = m.account("a").unwrap();
        account.set_credit_headroom(3);
        m.lift_credit_headrooms();
        assert_eq!(account.credit_headroom(), 3, "no check marked a lowering: no walk");
        m.mark_headrooms_lowered();
        m.lift_credit_headrooms();
        assert_eq!(account.credit_headroom(), i64::MAX);
    }

    #[test]
    fn older_copies_never_undo_newer_ones() {
        let m = mirror();
        let mut a = AccountRecord::new("acme", "Acme", 0);
        a.activated = true;
        a.version = 5;
        m.apply_account(&a);
        let mut stale = a.clone();
        stale.activated = false;
        stale.version = 4;
        m.apply_account(&stale);
        assert_eq!(m.account("acme").unwrap().standing(), AccountStanding::Enabled);

        m.apply_credential(&credential(&m, "acme", 2, CredentialStatus::Revoked))
            .unwrap();
        m.apply_credential(&credential(&m, "acme", 1, CredentialStatus::Active))
            .unwrap();
        assert!(m.by_secret_id("AKIDx").unwrap().is_revoked());
    }

    #[test]
    fn credentials_share_their_account_entry_and_open_their_key() {
        let m = mirror();
        m.apply_credential(&credential(&m, "acme", 1, CredentialStatus::Active))
            .unwrap();
        let mut a = AccountRecord::new("acme", "Acme", 0);
        a.activated = true;
        m.apply_account(&a);
        let c = m.by_secret_id("AKIDx").unwrap();
        assert_eq!(c.account().standing(), AccountStanding::Enabled);
        assert_eq!(c.secret_key(), "key");
        let by_key = m.by_api_key_hash(&crate::crypto::api_key_hash("ak")).unwrap();
        assert_eq!(by_key.secret_id(), "AKIDx");
        // The cached key signs like a freshly derived one, and follows the date.
        for date in ["2026-11-26", "2026-11-27", "2026-11-27"] {
            let fresh = crate::tc3::SigningKey::derive("key", date, "faceid");
            assert_eq!(c.signing_key(date, "faceid").sign(b"x"), fresh.sign(b"x"));
        }
    }

    #[test]
    fn a_key_sealed_for_another_account_is_refused() {
        let m = mirror();
        let mut record = credential(&m, "acme", 1, CredentialStatus::Active);
        record.account_id = "evil".into();
        assert!(m.apply_credential(&record).is_err());
        assert!(m.by_secret_id("AKIDx").is_none());
    }
}
