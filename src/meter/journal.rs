//! The meter journal: the billable-call counters live in a memory-mapped file under
//! the data directory, so a process killed at any instant (SIGKILL, OOM killer, abort)
//! leaves every counted call, and the batch being flushed, in the kernel's page cache.
//! The next start maps the same file and carries on: the frozen batch is re-sent under
//! its original `(instance_id, seq)`, which the store applies at most once.
//!
//! Layout: a 4 KiB header (magic, instance id, next batch seq, frozen batch seq, slots
//! used), then fixed 192-byte slots, one per (account, action, month):
//! `counted` (every call ever counted in the slot), `frozen` (what `counted` was when
//! the pending batch was cut), `flushed` (what the store has acknowledged). A batch is
//! `frozen - flushed` per slot; the next one starts from `counted`.
//!
//! Counting is one atomic add on mapped memory: no system call, no lock. Must not be
//! used to survive a power cut or a kernel crash (nothing is `msync`ed per call): the
//! page cache survives a process, not a machine. Must not be shared by two processes:
//! the file is locked while open.

use super::Month;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"EKYCMTR1";
const HEADER_SIZE: usize = 4096;
const SLOT_SIZE: usize = 192;
const MAX_NAME: usize = 64;
const MAX_INSTANCE_ID: usize = 128;

// Header offsets.
const H_SLOT_SIZE: usize = 8;
const H_CAPACITY: usize = 12;
const H_NEXT_SEQ: usize = 16;
const H_FROZEN_SEQ: usize = 24;
const H_HIGH_WATER: usize = 32;
const H_INSTANCE_LEN: usize = 36;
const H_INSTANCE: usize = 40;

// Slot offsets.
const S_STATE: usize = 0;
const S_MONTH: usize = 4;
const S_COUNTED: usize = 8;
const S_FROZEN: usize = 16;
const S_FLUSHED: usize = 24;
const S_ACCOUNT_LEN: usize = 32;
const S_ACTION_LEN: usize = 36;
const S_ACCOUNT: usize = 40;
const S_ACTION: usize = S_ACCOUNT + MAX_NAME;
const _: () = assert!(S_ACTION + MAX_NAME <= SLOT_SIZE);

const FREE: u32 = 0;
const LIVE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("meter journal {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("meter journal {path} is in use by another gateway process (each instance needs its own data directory)")]
    Locked { path: String },
    #[error("meter journal {path} is not a journal of this gateway version ({what})")]
    Foreign { path: String, what: &'static str },
}

/// One slot's figures, read by the flusher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFigures {
    pub counted: u64,
    pub frozen: u64,
    pub flushed: u64,
}

pub struct Journal {
    map: memmap2::MmapRaw,
    capacity: u32,
    instance_id: String,
    /// Slots below the high-water mark that are free, for reuse.
    free: Mutex<Vec<u32>>,
    live: AtomicU32,
    /// Holds the advisory lock for as long as the journal is open.
    _file: Option<File>,
}

// SAFETY: every shared access to the map goes through atomics, or through bytes written
// before a slot is published (Release) and read after it is seen live (Acquire).
unsafe impl Send for Journal {}
unsafe impl Sync for Journal {}

impl Journal {
    /// Opens (or creates) the journal at `path` with room for at least `capacity` slots.
    /// A new journal gets an instance id `<prefix>-<random>`, so batch ids never repeat
    /// those of an earlier journal, even under the same configured prefix.
    pub fn open(path: &Path, capacity: u32, instance_prefix: &str) -> Result<Journal, JournalError> {
        let name = path.display().to_string();
        let io = |source| JournalError::Io {
            path: name.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { path: name }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let existing = file.metadata().map_err(io)?.len();
        let mut header = [0u8; HEADER_SIZE];
        let fresh = existing < HEADER_SIZE as u64;
        let capacity = if fresh {
            capacity
        } else {
            use std::io::Read;
            (&file).read_exact(&mut header).map_err(io)?;
            if &header[..8] != MAGIC {
                return Err(JournalError::Foreign {
                    path: name,
                    what: "bad magic",
                });
            }
            if u32_at(&header, H_SLOT_SIZE) as usize != SLOT_SIZE {
                return Err(JournalError::Foreign {
                    path: name,
                    what: "slot size differs",
                });
            }
            u32_at(&header, H_CAPACITY).max(capacity)
        };
        file.set_len(file_len(capacity)).map_err(io)?;
        let map = memmap2::MmapOptions::new().map_raw(&file).map_err(io)?;
        let instance_id = if fresh {
            format!("{instance_prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        } else {
            let len = (u32_at(&header, H_INSTANCE_LEN) as usize).min(MAX_INSTANCE_ID);
            String::from_utf8_lossy(&header[H_INSTANCE..H_INSTANCE + len]).into_owned()
        };
        let journal = Self::from_map(map, capacity, instance_id, fresh, Some(file));
        journal.map.flush_async().map_err(io)?;
        Ok(journal)
    }

    /// A journal in anonymous memory: same behaviour, nothing survives the process.
    /// For benchmarks and unit tests.
    pub fn in_memory(capacity: u32) -> Journal {
        let map = memmap2::MmapOptions::new()
            .len(file_len(capacity) as usize)
            .map_anon()
            .expect("anonymous map");
        Self::from_map(map.into(), capacity, "memory".into(), true, None)
    }

    fn from_map(map: memmap2::MmapRaw, capacity: u32, instance_id: String, fresh: bool, file: Option<File>) -> Self {
        let journal = Journal {
            map,
            capacity,
            instance_id,
            free: Mutex::new(Vec::new()),
            live: AtomicU32::new(0),
            _file: file,
        };
        // SAFETY: the map is at least HEADER_SIZE long and nobody else uses it yet.
        unsafe {
            let base = journal.map.as_mut_ptr();
            if fresh {
                std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), base, 8);
                let id = journal.instance_id.as_bytes();
                let len = id.len().min(MAX_INSTANCE_ID);
                std::ptr::copy_nonoverlapping(id.as_ptr(), base.add(H_INSTANCE), len);
                journal
                    .header_u32(H_SLOT_SIZE)
                    .store(SLOT_SIZE as u32, Ordering::Relaxed);
                journal.header_u32(H_INSTANCE_LEN).store(len as u32, Ordering::Relaxed);
                journal.header_u64(H_NEXT_SEQ).store(1, Ordering::Relaxed);
            }
            journal.header_u32(H_CAPACITY).store(capacity, Ordering::Relaxed);
        }
        let high_water = journal.high_water();
        let mut free = Vec::new();
        let mut live = 0;
        for slot in (0..high_water).rev() {
            if journal.slot_u32(slot, S_STATE).load(Ordering::Acquire) == LIVE {
                live += 1;
            } else {
                free.push(slot);
            }
        }
        *journal.free.lock().expect("free list") = free;
        journal.live.store(live, Ordering::Relaxed);
        journal
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots in use.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// Slots ever handed out (every live slot is below this).
    pub fn high_water(&self) -> u32 {
        self.header_u32(H_HIGH_WATER).load(Ordering::Acquire).min(self.capacity)
    }

    /// Takes a free slot for `(account, action, month)`, zeroed; None when full or when a
    /// name is too long to store.
    pub fn allocate(&self, account: &str, action: &str, month: Month) -> Option<u32> {
        if account.len() > MAX_NAME || action.len() > MAX_NAME {
            return None;
        }
        let slot = {
            let mut free = self.free.lock().expect("free list");
            match free.pop() {
                Some(slot) => slot,
                None => {
                    let next = self.header_u32(H_HIGH_WATER).load(Ordering::Relaxed);
                    if next >= self.capacity {
                        return None;
                    }
                    self.header_u32(H_HIGH_WATER).store(next + 1, Ordering::Release);
                    next
                }
            }
        };
        for field in [S_COUNTED, S_FROZEN, S_FLUSHED] {
            self.slot_u64(slot, field).store(0, Ordering::Relaxed);
        }
        self.slot_u32(slot, S_MONTH).store(month.0, Ordering::Relaxed);
        self.slot_u32(slot, S_ACCOUNT_LEN)
            .store(account.len() as u32, Ordering::Relaxed);
        self.slot_u32(slot, S_ACTION_LEN)
            .store(action.len() as u32, Ordering::Relaxed);
        // SAFETY: the slot is free, so only this thread touches it until it is published below.
        unsafe {
            let base = self.slot_ptr(slot);
            std::ptr::copy_nonoverlapping(account.as_ptr(), base.add(S_ACCOUNT), account.len());
            std::ptr::copy_nonoverlapping(action.as_ptr(), base.add(S_ACTION), action.len());
        }
        self.slot_u32(slot, S_STATE).store(LIVE, Ordering::Release);
        self.live.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Gives a slot back. The caller guarantees nobody adds to it any more.
    pub fn release(&self, slot: u32) {
        self.slot_u32(slot, S_STATE).store(FREE, Ordering::Release);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.free.lock().expect("free list").push(slot);
    }

    #[inline]
    pub fn add(&self, slot: u32, calls: u64) {
        self.slot_u64(slot, S_COUNTED).fetch_add(calls, Ordering::Relaxed);
    }

    pub fn is_live(&self, slot: u32) -> bool {
        slot < self.high_water() && self.slot_u32(slot, S_STATE).load(Ordering::Acquire) == LIVE
    }

    pub fn figures(&self, slot: u32) -> SlotFigures {
        SlotFigures {
            counted: self.slot_u64(slot, S_COUNTED).load(Ordering::Acquire),
            frozen: self.slot_u64(slot, S_FROZEN).load(Ordering::Acquire),
            flushed: self.slot_u64(slot, S_FLUSHED).load(Ordering::Acquire),
        }
    }

    pub fn set_frozen(&self, slot: u32, value: u64) {
        self.slot_u64(slot, S_FROZEN).store(value, Ordering::Release);
    }

    pub fn set_flushed(&self, slot: u32, value: u64) {
        self.slot_u64(slot, S_FLUSHED).store(value, Ordering::Release);
    }

    /// The (account, action, month) a live slot counts.
    pub fn key(&self, slot: u32) -> (&str, &str, Month) {
        let len = |field| (self.slot_u32(slot, field).load(Ordering::Relaxed) as usize).min(MAX_NAME);
        let (account_len, action_len) = (len(S_ACCOUNT_LEN), len(S_ACTION_LEN));
        // SAFETY: written before the slot was published and unchanged while it is live;
        // the names were valid UTF-8 when written, checked again here against a torn file.
        unsafe {
            let base = self.slot_ptr(slot);
            let account = std::slice::from_raw_parts(base.add(S_ACCOUNT), account_len);
            let action = std::slice::from_raw_parts(base.add(S_ACTION), action_len);
            (
                std::str::from_utf8(account).unwrap_or(""),
                std::str::from_utf8(action).unwrap_or(""),
                Month(self.slot_u32(slot, S_MONTH).load(Ordering::Relaxed)),
            )
        }
    }

    /// The batch being flushed (its seq), if one is frozen.
    pub fn frozen_seq(&self) -> Option<u64> {
        Some(self.header_u64(H_FROZEN_SEQ).load(Ordering::Acquire)).filter(|s| *s != 0)
    }

    /// Commits a freeze: after the slots' `frozen` values are written, this makes them the
    /// pending batch `seq`. Returns the seq.
    pub fn commit_freeze(&self) -> u64 {
        let seq = self.header_u64(H_NEXT_SEQ).fetch_add(1, Ordering::AcqRel);
        self.header_u64(H_FROZEN_SEQ).store(seq, Ordering::Release);
        seq
    }

    /// The pending batch is in the store: no batch is frozen any more.
    pub fn clear_frozen(&self) {
        self.header_u64(H_FROZEN_SEQ).store(0, Ordering::Release);
    }

    fn header_u32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: in bounds, 4-aligned (the map is page-aligned), only accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(offset) as *const AtomicU32) }
    }

    fn header_u64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: in bounds, 8-aligned, only accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(offset) as *const AtomicU64) }
    }

    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        assert!(slot < self.capacity, "slot out of range");
        // SAFETY: slot < capacity, so the slot lies inside the map.
        unsafe { self.map.as_mut_ptr().add(HEADER_SIZE + slot as usize * SLOT_SIZE) }
    }

    #[inline]
    fn slot_u32(&self, slot: u32, offset: usize) -> &AtomicU32 {
        // SAFETY: in bounds, aligned (slot size and offsets are multiples of 8).
        unsafe { &*(self.slot_ptr(slot).add(offset) as *const AtomicU32) }
    }

    #[inline]
    fn slot_u64(&self, slot: u32, offset: usize) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { &*(self.slot_ptr(slot).add(offset) as *const AtomicU64) }
    }
}

fn file_len(capacity: u32) -> u64 {
    HEADER_SIZE as u64 + u64::from(capacity) * SLOT_SIZE as u64
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_the_frozen_batch_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/meter.journal");
        let (instance, slot) = {
            let journal = Journal::open(&path, 16, "gw").unwrap();
            let slot = journal.allocate("tenant-1", "LivenessCompare", Month(24_322)).unwrap();
            journal.add(slot, 5);
            journal.set_frozen(slot, 5);
            assert_eq!(journal.commit_freeze(), 1);
            journal.add(slot, 2);
            assert!(
                matches!(Journal::open(&path, 16, "gw"), Err(JournalError::Locked { .. })),
                "a second process must not share the journal"
            );
            (journal.instance_id().to_string(), slot)
        };
        assert!(instance.starts_with("gw-") && instance.len() == 15, "{instance}");
        let journal = Journal::open(&path, 32, "other").unwrap();
        assert_eq!(journal.instance_id(), instance, "the instance id is the journal's");
        assert_eq!(journal.capacity(), 32, "capacity grows");
        assert_eq!(journal.frozen_seq(), Some(1));
        assert_eq!(journal.live(), 1);
        assert_eq!(
            journal.figures(slot),
            SlotFigures {
                counted: 7,
                frozen: 5,
                flushed: 0
            }
        );
        assert_eq!(journal.key(slot), ("tenant-1", "LivenessCompare", Month(24_322)));
        journal.clear_frozen();
        assert_eq!(journal.commit_freeze(), 2, "seqs continue");
    }

    #[test]
    fn freed_slots_are_reused_zeroed_and_the_capacity_holds() {
        let journal = Journal::in_memory(2);
        let a = journal.allocate("a", "X", Month(1)).unwrap();
        let b = journal.allocate("b", "X", Month(1)).unwrap();
        assert!(journal.allocate("c", "X", Month(1)).is_none());
        journal.add(a, 3);
        journal.release(a);
        assert!(!journal.is_live(a) && journal.is_live(b));
        let c = journal.allocate("c", "Y", Month(2)).unwrap();
        assert_eq!(c, a);
        assert_eq!(journal.figures(c).counted, 0);
        assert_eq!(journal.key(c), ("c", "Y", Month(2)));
        assert!(journal.allocate(&"x".repeat(65), "X", Month(1)).is_none());
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meter.journal");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(matches!(
            Journal::open(&path, 4, "gw"),
            Err(JournalError::Foreign { .. })
        ));
    }
}
