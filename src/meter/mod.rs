//! Metering: the count of billable calls per (account, action, billing month), kept in
//! memory on the hot path and flushed to the billing store in batches.
//!
//! - `billable`: the streaming check of an upstream answer.
//! - `Counters`: a concurrent map of atomics keyed by small integers (account index,
//!   action id, month number), so counting a call allocates nothing and takes no lock
//!   the flusher holds for long.
//! - `Month`: the calendar month of a call's arrival in the billing time zone.
//!
//! Must not do I/O on the hot path; the flusher (`flush`) does that.

pub mod billable;
pub mod flush;

use dashmap::DashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.number())
    }
}

/// What a billable call is counted under. Account indexes are this process's (see
/// `StateMirror`); the flusher turns them back into account ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub account: u32,
    pub action: u16,
    pub month: Month,
}

pub struct Counters {
    counts: DashMap<CounterKey, AtomicU64, ahash::RandomState>,
    /// When the oldest count not yet taken was made (Unix seconds; 0: none).
    oldest: AtomicI64,
    /// Most distinct keys held at once; a call that would need one more is refused
    /// before it is forwarded (it could not be counted), never counted and dropped.
    max_keys: usize,
}

impl Default for Counters {
    fn default() -> Self {
        Self::with_capacity_limit(1_000_000)
    }
}

impl Counters {
    pub fn with_capacity_limit(max_keys: usize) -> Self {
        Self {
            counts: DashMap::default(),
            oldest: AtomicI64::new(0),
            max_keys,
        }
    }

    /// Whether a call under `key` can be counted: its key is held already, or there is
    /// room for one more. Checked before forwarding.
    pub fn admits(&self, key: &CounterKey) -> bool {
        self.counts.len() < self.max_keys || self.counts.contains_key(key)
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Counts one call. The common case (a key seen before) is a shared-lock lookup and
    /// an atomic add; only a new key takes the shard's write lock, once.
    pub fn add(&self, key: CounterKey, now: i64) {
        if let Some(count) = self.counts.get(&key) {
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
        }
        if self.oldest.load(Ordering::Relaxed) == 0 {
            let _ = self
                .oldest
                .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Moves every count out (leaving zeros), for one batch. A call counted while this
    /// runs lands either in this batch or in the next one, never in both, never lost.
    /// Keys with no call since the last take are dropped, so memory follows the keys
    /// in use, not every key ever seen.
    /// Also returns when the oldest of the taken counts was made.
    pub fn take(&self) -> (Vec<(CounterKey, u64)>, Option<i64>) {
        // Reset first: a count made meanwhile restarts the clock, and may still land in
        // this batch (its age is then overstated, never understated).
        let oldest = Some(self.oldest.swap(0, Ordering::Relaxed)).filter(|t| *t != 0);
        let mut rows = Vec::new();
        // `retain` holds each shard's write lock while it visits it; `add` holds the
        // read lock while it adds, so no add can land in an entry being removed.
        self.counts.retain(|key, count| {
            let calls = count.swap(0, Ordering::AcqRel);
            if calls > 0 {
                rows.push((*key, calls));
            }
            calls > 0
        });
        (rows, oldest)
    }

    /// When the oldest count not yet taken was made.
    pub fn oldest_pending(&self) -> Option<i64> {
        Some(self.oldest.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// Puts counts back (a batch that could not be built), adding to what came since.
    pub fn give_back(&self, rows: &[(CounterKey, u64)], oldest: i64) {
        for (key, calls) in rows {
            self.counts
                .entry(*key)
                .or_default()
                .fetch_add(*calls, Ordering::Relaxed);
        }
        let _ = self
            .oldest
            .compare_exchange(0, oldest.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Calls counted and not yet taken.
    pub fn pending(&self) -> u64 {
        self.counts.iter().map(|e| e.value().load(Ordering::Relaxed)).sum()
    }

    pub fn distinct_keys(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn idle_keys_are_dropped_and_the_key_cap_holds() {
        let counters = Counters::with_capacity_limit(2);
        let key = |account| CounterKey {
            account,
            action: 0,
            month: Month(1),
        };
        counters.add(key(1), 100);
        counters.add(key(2), 101);
        assert!(counters.admits(&key(1)));
        assert!(!counters.admits(&key(3)), "full: a new key is refused");
        let (rows, oldest) = counters.take();
        assert_eq!((rows.len(), oldest), (2, Some(100)));
        assert_eq!(counters.distinct_keys(), 2, "keys with calls stay for the next take");
        counters.add(key(1), 100);
        assert_eq!(counters.take(), (vec![(key(1), 1)], Some(100)));
        assert_eq!(
            counters.distinct_keys(),
            1,
            "a key without a call since the last take goes"
        );
        assert!(counters.admits(&key(3)));
    }

    #[test]
    fn counts_move_out_exactly_once_under_concurrency() {
        let counters = std::sync::Arc::new(Counters::default());
        let key = |i: u32| CounterKey {
            account: i % 7,
            action: (i % 3) as u16,
            month: Month(24_322),
        };
        let mut taken = 0u64;
        std::thread::scope(|scope| {
            for t in 0..4 {
                let counters = counters.clone();
                scope.spawn(move || {
                    for i in 0..50_000u32 {
                        counters.add(key(i + t), 1);
                    }
                });
            }
            for _ in 0..50 {
                taken += counters.take().0.iter().map(|(_, n)| n).sum::<u64>();
            }
        });
        taken += counters.take().0.iter().map(|(_, n)| n).sum::<u64>();
        assert_eq!(taken, 200_000);
        assert_eq!(counters.pending(), 0);
    }
}
