//! Time source for everything that depends on "now": signature skew windows, billing
//! months, staleness. Injectable so tests can cross month ends and skew windows without
//! sleeping. Must not be bypassed by calling `SystemTime::now()` elsewhere in request logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as Tencent's `X-TC-Timestamp` counts them.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> i64;

    /// Milliseconds since the Unix epoch, for timestamps finer than a second (the
    /// access log); a clock that keeps seconds only gives whole seconds.
    fn now_unix_ms(&self) -> i64 {
        self.now_unix() * 1000
    }
}

/// The wall clock of the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn now_unix_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_unix: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_unix)))
    }
    pub fn set(&self, now_unix: i64) {
        self.0.store(now_unix, Ordering::SeqCst);
    }
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A time as every JSON and CSV interface shows it: RFC 3339 in UTC
/// (`2026-11-01T00:00:00Z`); `null` outside the years the format can hold.
pub fn rfc3339(unix: i64) -> serde_json::Value {
    rfc3339_text(unix).map_or(serde_json::Value::Null, serde_json::Value::from)
}

/// `rfc3339` as text, for CSV.
pub fn rfc3339_text(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
}
