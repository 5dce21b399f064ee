//! Metering: the count of billable calls per (account, action, billing month), kept in
//! memory on the hot path and flushed to the billing store in batches.
//!
//! - `billable`: the streaming check of an upstream answer.
//! - `Counters`: a concurrent map from small integers (account index, action id, month
//!   number) to a slot of the `journal`, a memory-mapped file whose atomics are the
//!   counts, so counting a call allocates nothing (once the key is known), takes no
//!   lock the flusher holds for long, and survives the process being killed. Each
//!   data-plane worker keeps its own copy of the entries it used (`WorkerSlots`), so a
//!   count writes no cache line that another worker writes, but the journal slot
//!   itself. A key idle for `KEEP_IDLE_FREEZES` flushes gives its slot back, at
//!   once when half of `max_keys` is taken.
//! - `Month`: the calendar month of a call's arrival in the billing time zone.
//!
//! Must not do I/O on the hot path; the flusher (`flush`) does that.

pub mod billable;
pub mod flush;
pub mod journal;

use crate::store::UsageRow;
use dashmap::DashMap;
use journal::Journal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// A calendar month, numbered `year * 12 + (month - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month(pub u32);

impl Month {
    /// The month of `unix` seconds in a zone `offset_seconds` east of UTC.
    pub fn of(unix: i64, offset_seconds: i32) -> Option<Month> {
        let date = crate::tc3::utc_date_bytes(unix + i64::from(offset_seconds))?;
        let digits = |range: std::ops::Range<usize>| date[range].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Some(Month(digits(0..4) * 12 + digits(5..7) - 1))
    }

    /// The day ("YYYY-MM-DD") of `unix` seconds in the same zone.
    pub fn day_of(unix: i64, offset_seconds: i32) -> Option<String> {
        let date = crate::tc3::utc_date_bytes(unix + i64::from(offset_seconds))?;
        Some(String::from_utf8_lossy(&date).into_owned())
    }

    pub fn parse(text: &str) -> Option<Month> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let (year, month): (u32, u32) = (year.parse().ok()?, month.parse().ok()?);
        (1..=12).contains(&month).then_some(Month(year * 12 + month - 1))
    }

    pub fn year(self) -> u32 {
        self.0 / 12
    }

    pub fn number(self) -> u32 {
        self.0 % 12 + 1
    }

    /// The first second of the month (the 1st, 00:00) in a zone `offset_seconds` east of
    /// UTC, as Unix seconds.
    pub fn start_unix(self, offset_seconds: i32) -> i64 {
        days_from_civil(i64::from(self.year()), self.number(), 1) * 86_400 - i64::from(offset_seconds)
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.number())
    }
}

/// What a billable call is counted under, on the hot path. Account indexes are this
/// process's (see `StateMirror`); the journal slot a key maps to holds the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub account: u32,
    pub action: u16,
    pub month: Month,
}

/// Journal slots beyond `max_keys`: calls admitted while the last free key was being
/// taken still find a slot. More than this many new keys in flight at once would be
/// needed to reach the in-memory overflow.
pub const SLOT_HEADROOM: u32 = 65_536;

/// Flushes a key stays linked without a call before its slot is released (checked in
/// sweeps this many flushes apart, so a key goes after one to two such periods). With
/// calls spread over 100,000 accounts most keys see a call every few seconds: released
/// after each idle flush, nearly every call took a new slot (names looked up and
/// allocated, the journal written, the index's write lock) and every freeze emptied the
/// workers' copies, so the next call under each key went to the shared index.
pub const KEEP_IDLE_FREEZES: u32 = 60;

/// A key's journal slot in the index, and the freezes in a row that found it idle.
#[derive(Debug, Clone, Copy)]
struct Linked {
    slot: u32,
    idle_freezes: u32,
}

/// A batch cut from the counters: what the store must apply under `(instance_id, seq)`.
#[derive(Debug, Clone)]
pub struct FrozenBatch {
    pub seq: u64,
    pub rows: Vec<UsageRow>,
}

/// Shards of `WorkerSlots`: data-plane worker i uses shard i % this, other threads shard
/// 0 (as the metrics' shards). Workers beyond 16 share a shard, and its lock.
const WORKER_SLOT_SHARDS: usize = 16;

/// Index entries one worker used since the freeze that last unlinked a key, behind a
/// lock that only that worker takes on the hot path (uncontended with up to 16
/// workers, in a line of its own) and the freeze takes once to empty it: what lets the
/// freeze release a slot knowing no worker will add to it afterwards. Each worker's
/// copy holds at most the keys it counted under since then (about 24 bytes a key).
#[derive(Default)]
#[repr(align(128))]
struct WorkerSlots(Mutex<HashMap<CounterKey, u32, ahash::RandomState>>);

pub struct Counters {
    /// Index: key → journal slot. `admits` reads it, and `add` only for a worker's first
    /// count under a key after a freeze that unlinked keys; `worker_slots` serve the rest.
    index: DashMap<CounterKey, Linked, ahash::RandomState>,
    worker_slots: Box<[WorkerSlots]>,
    journal: Journal,
    /// Live slots not in `index`: left in the journal by an earlier process, or unlinked
    /// by a freeze while a worker may have added to them. Nothing is added to them once
    /// here; they go once flushed.
    orphans: Mutex<Vec<u32>>,
    /// Calls that found every journal slot taken (see `SLOT_HEADROOM`): kept in memory
    /// only, flushed with the next batch, lost on a crash. Logged loudly.
    overflow: Mutex<HashMap<(String, String, Month), u64>>,
    /// When the oldest count not yet frozen was made (Unix seconds; 0: none).
    oldest: AtomicI64,
    /// Most distinct keys held at once; a call that would need one more is refused
    /// before it is forwarded (it could not be counted), never counted and dropped.
    max_keys: usize,
    /// See `KEEP_IDLE_FREEZES`; 1 releases a key after one idle flush.
    keep_idle_freezes: u32,
    /// Freezes since idle keys were last swept out of the index.
    freezes_since_sweep: AtomicU32,
}

impl Counters {
    /// Counters over `journal`; live slots found in it are carried over.
    pub fn new(journal: Journal, max_keys: usize) -> Self {
        let orphans: Vec<u32> = (0..journal.high_water()).filter(|s| journal.is_live(*s)).collect();
        Self {
            index: DashMap::default(),
            worker_slots: (0..WORKER_SLOT_SHARDS).map(|_| WorkerSlots::default()).collect(),
            journal,
            orphans: Mutex::new(orphans),
            overflow: Mutex::new(HashMap::new()),
            oldest: AtomicI64::new(0),
            max_keys,
            keep_idle_freezes: KEEP_IDLE_FREEZES,
            freezes_since_sweep: AtomicU32::new(0),
        }
    }

    /// The same counters releasing a key after `freezes` idle flushes instead of
    /// `KEEP_IDLE_FREEZES` (at least 1).
    pub fn keeping_idle_keys_for(mut self, freezes: u32) -> Self {
        self.keep_idle_freezes = freezes.max(1);
        self
    }

    /// Counters whose journal is anonymous memory (benchmarks, unit tests).
    pub fn in_memory(max_keys: usize) -> Self {
        Self::new(Journal::in_memory(max_keys as u32 + SLOT_HEADROOM), max_keys)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Whether a call under `key` can be counted: its key is held already, or there is
    /// room for one more. Checked before forwarding.
    pub fn admits(&self, key: &CounterKey) -> bool {
        (self.journal.live() as usize) < self.max_keys || self.index.contains_key(key)
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Counts one call. The common case (a key this worker counted before) is a lookup
    /// in the worker's own slots, under its own lock, and an atomic add on the mapped
    /// journal; a key new to the worker is found in the shared index, where a key new to
    /// the process takes a slot, once. `names` gives the key's account id and action
    /// name then.
    #[inline]
    pub fn add(&self, key: CounterKey, now: i64, names: impl FnOnce() -> (String, String)) {
        let shard = &self.worker_slots[crate::workers::current_worker() % WORKER_SLOT_SHARDS];
        // Held until the add is done: the freeze empties this map under the same lock
        // before it releases a slot (see `freeze`). A panic while it was held (in
        // `names`, before anything is inserted) leaves the map as it was: not poisoned.
        let mut known = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = known.get(&key) {
            self.journal.add(*slot, 1);
        } else {
            if let Some(slot) = self.add_via_index(key, names) {
                known.insert(key, slot);
            }
        }
        drop(known);
        if self.oldest.load(Ordering::Relaxed) == 0 {
            let _ = self
                .oldest
                .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Counts a call under a key through the shared index (a worker comes here once per
    /// key between sweeps that unlink keys), taking a slot for a key new to the
    /// process, under the shard's write lock; the slot it went to, or None when it was
    /// counted in memory (`overflow`).
    #[cold]
    fn add_via_index(&self, key: CounterKey, names: impl FnOnce() -> (String, String)) -> Option<u32> {
        use dashmap::mapref::entry::Entry;
        // A key linked already (the common case after a sweep) needs only the read lock.
        // The slot stays valid after the guard goes: only a freeze unlinks it, and it
        // empties this worker's copies under the lock `add` holds before releasing it.
        if let Some(linked) = self.index.get(&key) {
            let slot = linked.slot;
            drop(linked);
            self.journal.add(slot, 1);
            return Some(slot);
        }
        match self.index.entry(key) {
            Entry::Occupied(linked) => {
                let slot = linked.get().slot;
                self.journal.add(slot, 1);
                Some(slot)
            }
            Entry::Vacant(vacant) => {
                let (account, action) = names();
                match self.journal.allocate(&account, &action, key.month) {
                    Some(slot) => {
                        self.journal.add(slot, 1);
                        vacant.insert(Linked { slot, idle_freezes: 0 });
                        Some(slot)
                    }
                    None => {
                        tracing::error!(
                            account = %account, action = %action, capacity = self.journal.capacity(),
                            "meter journal full: counting in memory only (lost if the process is killed)"
                        );
                        *self
                            .overflow
                            .lock()
                            .expect("overflow")
                            .entry((account, action, key.month))
                            .or_default() += 1;
                        None
                    }
                }
            }
        }
    }

    /// Cuts the next batch: every slot's calls since the last acknowledged batch, merged
    /// by (account, action, month). Slots idle for `keep_idle_freezes` flushes (for one,
    /// when half of `max_keys` is taken) are released, so memory and journal follow the
    /// keys in use. A call counted meanwhile lands in this
    /// batch or the next, never both. None: nothing to send. Must only be called when no
    /// batch is frozen.
    pub fn freeze(&self) -> Option<FrozenBatch> {
        debug_assert!(self.journal.frozen_seq().is_none());
        // Reset first: a count made meanwhile restarts the clock (its age may then be
        // overstated, never understated).
        self.oldest.store(0, Ordering::Relaxed);
        let mut parts: Vec<(u32, u64)> = Vec::new();
        // Sweeps are far apart so that the workers' copies, emptied by each, stay warm;
        // under pressure every freeze sweeps, and an idle flush is enough.
        let pressure = (self.journal.live() as usize) >= self.max_keys.div_ceil(2);
        let sweep = pressure || self.freezes_since_sweep.fetch_add(1, Ordering::Relaxed) + 1 >= self.keep_idle_freezes;
        if sweep {
            self.freezes_since_sweep.store(0, Ordering::Relaxed);
        }
        let idle_enough = if pressure { 1 } else { self.keep_idle_freezes };
        // A slot whose key was idle long enough leaves the index, but is not released
        // yet: a worker may still hold it in its own slots, and add to it.
        let mut unlinked: Vec<u32> = Vec::new();
        self.index.retain(|_, linked| {
            let figures = self.journal.figures(linked.slot);
            if figures.counted == figures.flushed {
                linked.idle_freezes = linked.idle_freezes.saturating_add(1);
                if sweep && linked.idle_freezes >= idle_enough {
                    unlinked.push(linked.slot);
                    return false;
                }
                return true;
            }
            linked.idle_freezes = 0;
            // A worker may add to the slot meanwhile: that call is above the frozen
            // figure and goes in the next batch.
            self.journal.set_frozen(linked.slot, figures.counted);
            parts.push((linked.slot, figures.counted - figures.flushed));
            true
        });
        if !unlinked.is_empty() {
            // Once each worker's slots are emptied under its lock, no worker can reach an
            // unlinked slot: its next call under that key finds none in the index and
            // takes a new slot. The unlinked ones are then cut as orphans below: released
            // if still idle, in this batch if a call reached them in between.
            // `clear` keeps the maps' room: the keys come back at the next call.
            for shard in self.worker_slots.iter() {
                shard.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
            }
            self.orphans.lock().expect("orphans").extend(unlinked);
        }
        let mut cut = |slot: u32| {
            let figures = self.journal.figures(slot);
            if figures.counted == figures.flushed {
                self.journal.release(slot);
                return false;
            }
            self.journal.set_frozen(slot, figures.counted);
            parts.push((slot, figures.counted - figures.flushed));
            true
        };
        self.orphans.lock().expect("orphans").retain(|slot| cut(*slot));
        let overflow = std::mem::take(&mut *self.overflow.lock().expect("overflow"));
        if parts.is_empty() && overflow.is_empty() {
            return None;
        }
        let seq = self.journal.commit_freeze();
        let mut rows = self.merge(parts);
        rows.extend(
            overflow
                .into_iter()
                .map(|((account_id, action, month), calls)| UsageRow {
                    account_id,
                    action,
                    month: month.to_string(),
                    calls,
                }),
        );
        Some(FrozenBatch { seq, rows })
    }

    /// The batch frozen in the journal (by this process or one that died), rebuilt from
    /// the slots. After a partial acknowledgement its rows may be fewer; the store
    /// already holds it then, and the seq is what matters.
    pub fn frozen_batch(&self) -> Option<FrozenBatch> {
        let seq = self.journal.frozen_seq()?;
        let parts = self
            .live_slots()
            .filter_map(|slot| {
                let figures = self.journal.figures(slot);
                (figures.frozen > figures.flushed).then(|| (slot, figures.frozen - figures.flushed))
            })
            .collect();
        Some(FrozenBatch {
            seq,
            rows: self.merge(parts),
        })
    }

    /// The frozen batch is in the store.
    pub fn acknowledge(&self) {
        for slot in self.live_slots() {
            let figures = self.journal.figures(slot);
            if figures.frozen > figures.flushed {
                self.journal.set_flushed(slot, figures.frozen);
            }
        }
        self.journal.clear_frozen();
    }

    fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.journal.high_water()).filter(|slot| self.journal.is_live(*slot))
    }

    /// Rows from slot parts; two slots of one key (an orphan and its successor) merge.
    fn merge(&self, parts: Vec<(u32, u64)>) -> Vec<UsageRow> {
        let mut merged: HashMap<(&str, &str, Month), u64, ahash::RandomState> = HashMap::default();
        merged.reserve(parts.len());
        for (slot, calls) in parts {
            *merged.entry(self.journal.key(slot)).or_default() += calls;
        }
        merged
            .into_iter()
            .map(|((account, action, month), calls)| UsageRow {
                account_id: account.to_string(),
                action: action.to_string(),
                month: month.to_string(),
                calls,
            })
            .collect()
    }

    /// When the oldest count not yet frozen was made.
    pub fn oldest_pending(&self) -> Option<i64> {
        Some(self.oldest.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// Calls counted and not yet acknowledged by the store (frozen or not).
    pub fn pending(&self) -> u64 {
        let in_journal: u64 = self
            .live_slots()
            .map(|slot| {
                let figures = self.journal.figures(slot);
                figures.counted.saturating_sub(figures.flushed)
            })
            .sum();
        in_journal + self.overflow.lock().expect("overflow").values().sum::<u64>()
    }

    /// The calls counted and not yet acknowledged by the store (frozen or not), by key:
    /// what credit control adds to the store's counts. A batch being applied right now
    /// may be in both for a moment, which errs toward refusing early.
    pub fn pending_rows(&self) -> Vec<UsageRow> {
        let parts = self
            .live_slots()
            .filter_map(|slot| {
                let figures = self.journal.figures(slot);
                (figures.counted > figures.flushed).then(|| (slot, figures.counted - figures.flushed))
            })
            .collect();
        let mut rows = self.merge(parts);
        let overflow = self.overflow.lock().expect("overflow");
        rows.extend(overflow.iter().map(|((account_id, action, month), calls)| UsageRow {
            account_id: account_id.clone(),
            action: action.clone(),
            month: month.to_string(),
            calls: *calls,
        }));
        rows
    }

    pub fn distinct_keys(&self) -> usize {
        self.journal.live() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_starts_on_its_first_at_midnight_in_the_billing_zone() {
        let november = Month::parse("2026-11").unwrap();
        // 2026-11-01 00:00 at UTC+8 is 2026-10-31 16:00 UTC.
        assert_eq!(november.start_unix(8 * 3600), 1_793_462_400);
        for offset in [-5 * 3600 - 1800, 0, 8 * 3600, 14 * 3600] {
            for text in [
                "1970-02", "2000-02", "2000-03", "2024-02", "2026-12", "2100-03", "9999-12",
            ] {
                let month = Month::parse(text).unwrap();
                let start = month.start_unix(offset);
                assert_eq!(Month::of(start, offset), Some(month), "{text} {offset}");
                assert_eq!(
                    Month::of(start - 1, offset),
                    Some(Month(month.0 - 1)),
                    "{text} {offset}"
                );
            }
        }
    }

    const UTC8: i32 = 8 * 3600;

    #[test]
    fn months_follow_the_billing_time_zone() {
        // 2026-11-30 15:59:59 UTC is 23:59:59 on the 30th in UTC+8; one second later it is December there.
        let last_second = 1_796_054_399;
        assert_eq!(Month::of(last_second, UTC8).unwrap().to_string(), "2026-11");
        assert_eq!(Month::of(last_second + 1, UTC8).unwrap().to_string(), "2026-12");
        assert_eq!(Month::of(last_second + 1, 0).unwrap().to_string(), "2026-11");
        // Leap year: 2028-02-29 23:59:59 in UTC+8, then March.
        let leap_end = 1_835_452_799;
        assert_eq!(Month::of(leap_end, UTC8).unwrap().to_string(), "2028-02");
        assert_eq!(Month::of(leap_end + 1, UTC8).unwrap().to_string(), "2028-03");
        // New year.
        assert_eq!(Month::of(1_798_732_799, UTC8).unwrap().to_string(), "2026-12");
        assert_eq!(Month::of(1_798_732_800, UTC8).unwrap().to_string(), "2027-01");
    }

    #[test]
    fn months_parse_and_print() {
        assert_eq!(Month::parse("2026-11").unwrap().to_string(), "2026-11");
        assert!(Month::parse("2026-13").is_none());
        assert!(Month::parse("2026-1").is_none());
        assert!(Month::parse("26-11").is_none());
        assert!(Month::parse("2026-11").unwrap() < Month::parse("2026-12").unwrap());
    }

    fn key(account: u32) -> CounterKey {
        CounterKey {
            account,
            action: (account % 3) as u16,
            month: Month(24_322),
        }
    }

    fn names(key: CounterKey) -> impl FnOnce() -> (String, String) {
        move || (format!("acct-{}", key.account), format!("Action{}", key.action))
    }

    fn total(batch: &FrozenBatch) -> u64 {
        batch.rows.iter().map(|r| r.calls).sum()
    }

    #[test]
    fn idle_keys_are_dropped_and_the_key_cap_holds() {
        let counters = Counters::in_memory(2);
        counters.add(key(1), 100, names(key(1)));
        counters.add(key(2), 101, names(key(2)));
        assert!(counters.admits(&key(1)));
        assert!(!counters.admits(&key(3)), "full: a new key is refused");
        let batch = counters.freeze().unwrap();
        assert_eq!((batch.seq, batch.rows.len()), (1, 2));
        counters.acknowledge();
        assert_eq!(counters.distinct_keys(), 2, "keys with calls stay for the next batch");
        counters.add(key(1), 100, names(key(1)));
        let batch = counters.freeze().unwrap();
        assert_eq!(
            batch.rows,
            vec![UsageRow {
                account_id: "acct-1".into(),
                action: "Action1".into(),
                month: "2026-11".into(),
                calls: 1
            }]
        );
        assert_eq!(
            counters.distinct_keys(),
            1,
            "a key without a call since the last batch goes"
        );
        assert!(counters.admits(&key(3)));
        counters.acknowledge();
        assert!(counters.freeze().is_none(), "nothing new");
    }

    #[test]
    fn an_idle_key_keeps_its_slot_for_a_while_then_goes() {
        const KEEP: u32 = 5;
        let counters = Counters::in_memory(1000).keeping_idle_keys_for(KEEP);
        let named = std::cell::Cell::new(0);
        let add = |counters: &Counters, k: CounterKey| {
            counters.add(k, 100, || {
                named.set(named.get() + 1);
                names(k)()
            })
        };
        add(&counters, key(1));
        add(&counters, key(2));
        let freeze = |counters: &Counters| {
            if counters.freeze().is_some() {
                counters.acknowledge();
            }
        };
        freeze(&counters);
        let mut freezes = 1;
        // Key 1 is called at every flush, key 2 never again.
        while counters.distinct_keys() == 2 {
            assert!(freezes <= 2 * KEEP + 1, "key 2 still held after {freezes} freezes");
            add(&counters, key(1));
            freeze(&counters);
            freezes += 1;
        }
        assert!(freezes > KEEP, "key 2 went after {freezes} freezes");
        assert_eq!(named.get(), 2, "key 1 kept its slot: named once");
        assert_eq!(counters.pending(), 0);
        // Back after it went: a new slot, counted from there.
        add(&counters, key(2));
        assert_eq!((named.get(), counters.distinct_keys()), (3, 2));
        assert_eq!(total(&counters.freeze().unwrap()), 1);
    }

    #[test]
    fn under_pressure_a_key_goes_after_one_idle_flush() {
        let counters = Counters::in_memory(4);
        counters.add(key(1), 100, names(key(1)));
        counters.add(key(2), 100, names(key(2)));
        counters.freeze().unwrap();
        counters.acknowledge();
        counters.add(key(1), 100, names(key(1)));
        counters.freeze().unwrap();
        counters.acknowledge();
        assert_eq!(counters.distinct_keys(), 1, "half of max_keys taken: idle key 2 went");
    }

    #[test]
    fn a_frozen_batch_stays_until_acknowledged() {
        let counters = Counters::in_memory(10);
        for _ in 0..3 {
            counters.add(key(1), 100, names(key(1)));
        }
        let batch = counters.freeze().unwrap();
        counters.add(key(1), 100, names(key(1)));
        let again = counters.frozen_batch().unwrap();
        assert_eq!((again.seq, total(&again)), (batch.seq, 3), "new calls are not in it");
        assert_eq!(counters.pending(), 4);
        counters.acknowledge();
        assert_eq!(counters.pending(), 1);
        let next = counters.freeze().unwrap();
        assert_eq!((next.seq, total(&next)), (batch.seq + 1, 1));
    }

    #[test]
    fn counts_move_out_exactly_once_under_concurrency() {
        let counters = std::sync::Arc::new(Counters::in_memory(1000));
        let mut taken = 0u64;
        std::thread::scope(|scope| {
            for t in 0..4 {
                let counters = counters.clone();
                scope.spawn(move || {
                    for i in 0..50_000u32 {
                        let k = key((i + t) % 7);
                        counters.add(k, 1, names(k));
                    }
                });
            }
            for _ in 0..50 {
                if let Some(batch) = counters.freeze() {
                    taken += total(&batch);
                    counters.acknowledge();
                }
            }
        });
        if let Some(batch) = counters.freeze() {
            taken += total(&batch);
            counters.acknowledge();
        }
        assert_eq!(taken, 200_000);
        assert_eq!(counters.pending(), 0);
    }

    /// Keys go idle and their slots are released and reused for other keys while
    /// workers still count: every call must land under its own key, once.
    #[test]
    fn released_slots_never_take_a_workers_late_count() {
        use std::sync::atomic::{AtomicBool, AtomicU32};
        // Workers 1 and 17 share a shard, as do worker 0 (any other thread) and 16.
        const WORKERS: [usize; 5] = [1, 2, 17, 0, 16];
        const CALLS: u32 = 60_000;
        // Each worker moves through 60 keys, 200 calls on each, in windows that overlap
        // the other workers' so that keys are shared and go idle at different times.
        let key_of = |worker: usize, call: u32| (call / 200 + worker as u32 * 7) % 60;
        // Released after one idle flush: the races below happen at every freeze.
        let counters = Counters::in_memory(1000).keeping_idle_keys_for(1);
        let done = AtomicBool::new(false);
        let freezes = AtomicU32::new(0);
        let mut taken: HashMap<String, u64> = HashMap::new();
        std::thread::scope(|scope| {
            let adders: Vec<_> = WORKERS
                .into_iter()
                .map(|worker| {
                    let (counters, freezes) = (&counters, &freezes);
                    scope.spawn(move || {
                        crate::workers::act_as_worker(worker);
                        for call in 0..CALLS {
                            let k = key(key_of(worker, call));
                            counters.add(k, 1, names(k));
                            // Every 1,500 calls, halfway through a key, wait for a whole
                            // freeze to pass (at least 40 run during the counting): the
                            // key goes idle, and the next calls under it, from the
                            // worker's own slots, race the freeze that unlinks it.
                            if call % 1500 == 1499 {
                                let seen = freezes.load(Ordering::Acquire);
                                while freezes.load(Ordering::Acquire) < seen + 2 {
                                    std::thread::yield_now();
                                }
                            }
                        }
                    })
                })
                .collect();
            scope.spawn(|| {
                for adder in adders {
                    adder.join().unwrap();
                }
                done.store(true, Ordering::Release);
            });
            while !done.load(Ordering::Acquire) {
                if let Some(batch) = counters.freeze() {
                    for row in batch.rows {
                        *taken.entry(row.account_id).or_default() += row.calls;
                    }
                    counters.acknowledge();
                }
                freezes.fetch_add(1, Ordering::Release);
            }
        });
        if let Some(batch) = counters.freeze() {
            for row in batch.rows {
                *taken.entry(row.account_id).or_default() += row.calls;
            }
            counters.acknowledge();
        }
        let mut expected: HashMap<String, u64> = HashMap::new();
        for worker in WORKERS {
            for call in 0..CALLS {
                *expected.entry(format!("acct-{}", key_of(worker, call))).or_default() += 1;
            }
        }
        assert_eq!(taken, expected);
        assert_eq!(counters.pending(), 0);
    }

    #[test]
    fn a_reopened_journal_resumes_its_frozen_batch_and_merges_old_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meter.journal");
        let open = || Counters::new(Journal::open(&path, 100, "gw").unwrap(), 90).keeping_idle_keys_for(1);
        let seq = {
            let counters = open();
            for _ in 0..5 {
                counters.add(key(1), 100, names(key(1)));
            }
            let batch = counters.freeze().unwrap();
            counters.add(key(1), 100, names(key(1)));
            batch.seq
            // dropped without acknowledgement: as if killed while the store was away
        };
        let counters = open();
        let resumed = counters.frozen_batch().unwrap();
        assert_eq!((resumed.seq, total(&resumed)), (seq, 5), "same id, same calls");
        counters.acknowledge();
        counters.add(key(1), 100, names(key(1)));
        let next = counters.freeze().unwrap();
        assert_eq!(next.rows.len(), 1, "the old slot and the new one are one row");
        assert_eq!((next.seq, total(&next)), (seq + 1, 2));
        counters.acknowledge();
        assert!(counters.freeze().is_none());
        assert_eq!(counters.distinct_keys(), 0, "idle slots, old and new, are released");
    }
}
