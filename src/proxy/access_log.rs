//! The access log: one line per API call (JSON or logfmt), written by a thread of its
//! own so a worker only formats a line into a buffer of its own (no system call, no
//! allocation, no lock another thread holds but for a swap every 20 ms). Off, every
//! call, or one successful call in N with every refusal and error kept
//! (`[access_log]`). When the writer falls behind, lines are dropped and counted
//! (`ekyc_gateway_access_log_dropped_total`), never waited for.
//! Must not log a secret, a signature or a body: the fields of `AccessRecord` are all
//! it writes. Every string is escaped for its format and an action name cut to 64
//! bytes, so no value can start a line of its own.

use prometheus_client::metrics::counter::Counter;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which calls get a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogMode {
    Off,
    All,
    /// One successful call in `every` (per worker thread); every refusal and error.
    Sampled {
        every: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Logfmt,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to; rotate it with `copytruncate` (the file is never reopened).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub mode: AccessLogMode,
    pub format: AccessLogFormat,
    pub target: AccessLogTarget,
    /// The most each data-plane thread keeps for the writer before it drops lines.
    pub buffer_bytes: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            mode: AccessLogMode::Off,
            format: AccessLogFormat::Json,
            target: AccessLogTarget::Stdout,
            buffer_bytes: 4 << 20,
        }
    }
}

/// What one line says about a call.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// When the call arrived, Unix milliseconds.
    pub at_ms: i64,
    /// The answer's RequestId (the upstream's, or the gateway's own for a refusal).
    pub request_id: Option<&'a str>,
    /// The calling account, once authenticated.
    pub account: Option<&'a str>,
    pub action: Option<&'a str>,
    pub method: &'a str,
    /// `forwarded`, `answered` (a tenant action) or `refused`.
    pub outcome: &'a str,
    /// The Tencent error code of the answer, if it carries one.
    pub code: Option<&'a str>,
    pub billable: bool,
    /// The upstream's HTTP status, for a forwarded call.
    pub upstream_status: Option<u16>,
    pub latency: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

thread_local! {
    /// Successful calls seen by this worker, for sampling without shared state.
    static SEEN: Cell<u32> = const { Cell::new(0) };
    /// The last second formatted (`YYYY-MM-DDTHH:MM:SS`) and its Unix time: a busy
    /// worker formats a second once, not once per line.
    static SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// An account id copied out of the mirror (ids are at most 64 ASCII bytes), so the log
/// line needs no second look-up and no shared reference count.
#[derive(Debug, Clone, Copy)]
pub struct AccountName {
    len: u8,
    bytes: [u8; 64],
}

impl AccountName {
    pub fn new(id: &str) -> Option<Self> {
        let mut bytes = [0; 64];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(Self {
            len: id.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

/// Lines written by one worker thread and not yet taken by the writer. Only its
/// worker and, every `POLL`, the writer lock it: the lock is almost always free and
/// its cache line stays with the worker.
type Pending = Arc<Mutex<String>>;

/// What the handle and the writer share: every worker's pending lines.
struct Shared {
    /// Unique in the process, unlike an address a later log could reuse.
    id: u64,
    pending: Mutex<Vec<Pending>>,
    /// The most one worker keeps for the writer before it drops lines.
    max_pending_bytes: usize,
}

thread_local! {
    /// This worker's pending lines, with the log they belong to (a test process runs
    /// several gateways).
    static MINE: RefCell<Option<(u64, Pending)>> = const { RefCell::new(None) };
}

static NEXT_LOG_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How often the writer takes the workers' lines.
const POLL: Duration = Duration::from_millis(20);

/// The data plane's handle: decides which calls get a line and formats them into the
/// worker's own buffer, which the writer thread empties.
pub struct AccessLog {
    mode: AccessLogMode,
    format: AccessLogFormat,
    shared: Option<Arc<Shared>>,
    dropped: Counter,
}

impl AccessLog {
    /// Whether any call can get a line (what the pipeline keeps for it is then worth
    /// keeping).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.mode != AccessLogMode::Off
    }

    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            mode: AccessLogMode::Off,
            format: AccessLogFormat::Json,
            shared: None,
            dropped: Counter::default(),
        }
    }

    /// Whether a call that ended this way gets a line: every call, or under sampling
    /// every failed one and one successful one in N.
    #[inline]
    pub fn wants(&self, failed: bool) -> bool {
        match self.mode {
            AccessLogMode::Off => false,
            AccessLogMode::All => true,
            AccessLogMode::Sampled { every } => {
                failed
                    || SEEN.with(|seen| {
                        let n = seen.get().wrapping_add(1);
                        seen.set(if n >= every { 0 } else { n });
                        n >= every
                    })
            }
        }
    }

    /// Formats `record` into this worker's pending lines; drops it (counted) when the
    /// writer is that far behind.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        let id = shared.id;
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let pending = match &*mine {
                Some((owner, pending)) if *owner == id => pending.clone(),
                _ => {
                    let pending: Pending = Arc::new(Mutex::new(String::with_capacity(64 * 1024)));
                    if let Ok(mut all) = shared.pending.lock() {
                        all.push(pending.clone());
                    }
                    *mine = Some((id, pending.clone()));
                    pending
                }
            };
            drop(mine);
            let Ok(mut lines) = pending.lock() else { return };
            if lines.len() >= shared.max_pending_bytes {
                self.dropped.inc();
                return;
            }
            format_into(&mut lines, self.format, record);
        });
    }
}

/// The writer thread; `finish` writes what is pending and stops it.
pub struct AccessLogWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AccessLogWriter {
    /// Writes every pending line, then ends the thread.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Opens the target and starts the writer. `dropped` is the metric of lines dropped.
pub fn start(config: &AccessLogConfig, dropped: Counter) -> std::io::Result<(AccessLog, Option<AccessLogWriter>)> {
    if config.mode == AccessLogMode::Off {
        return Ok((AccessLog::off(), None));
    }
    let out: Box<dyn std::io::Write + Send> = match &config.target {
        AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
    };
    let shared = Arc::new(Shared {
        id: NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed),
        pending: Mutex::new(Vec::new()),
        max_pending_bytes: config.buffer_bytes,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("access-log".into()).spawn({
        let (stop, shared) = (stop.clone(), shared.clone());
        move || write_lines(&shared, out, &stop)
    })?;
    Ok((
        AccessLog {
            mode: config.mode,
            format: config.format,
            shared: Some(shared),
            dropped,
        },
        Some(AccessLogWriter {
            stop,
            thread: Some(thread),
        }),
    ))
}

/// The writer's loop: every `POLL`, swaps each worker's pending lines for an empty
/// buffer of the same size and writes them out, so no line costs an allocation.
fn write_lines(shared: &Shared, out: Box<dyn std::io::Write + Send>, stop: &AtomicBool) {
    let mut out = out;
    let mut spare = String::with_capacity(64 * 1024);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let workers: Vec<Pending> = shared.pending.lock().map(|all| all.clone()).unwrap_or_default();
        let mut wrote = false;
        for pending in workers {
            if let Ok(mut lines) = pending.lock() {
                if lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *lines, &mut spare);
            }
            // A full disk or a closed pipe loses the lines; calls are never held up.
            let _ = out.write_all(spare.as_bytes());
            spare.clear();
            wrote = true;
        }
        if wrote {
            let _ = out.flush();
        }
        if stopping {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// One line, newline included.
pub fn format_line(format: AccessLogFormat, r: &AccessRecord<'_>) -> String {
    let mut line = String::with_capacity(320);
    format_into(&mut line, format, r);
    line
}

/// One line, newline included, appended to `line`.
fn format_into(line: &mut String, format: AccessLogFormat, r: &AccessRecord<'_>) {
    let latency_ms = r.latency.as_secs_f64() * 1000.0;
    let action = r.action.map(|a| cut(a, 64));
    match format {
        AccessLogFormat::Json => {
            line.push_str("{\"time\":\"");
            push_rfc3339_millis(line, r.at_ms);
            line.push_str("\",");
            json_field(line, "request_id", r.request_id);
            json_field(line, "account", r.account);
            json_field(line, "action", action);
            json_field(line, "method", Some(r.method));
            json_field(line, "outcome", Some(r.outcome));
            json_field(line, "code", r.code);
            let _ = write!(line, "\"billable\":{},", r.billable);
            match r.upstream_status {
                Some(status) => {
                    let _ = write!(line, "\"upstream_status\":{status},");
                }
                None => line.push_str("\"upstream_status\":null,"),
            }
            let _ = write!(
                line,
                "\"latency_ms\":{latency_ms:.3},\"bytes_in\":{},\"bytes_out\":{}}}",
                r.bytes_in, r.bytes_out
            );
        }
        AccessLogFormat::Logfmt => {
            line.push_str("time=");
            push_rfc3339_millis(line, r.at_ms);
            line.push(' ');
            logfmt_field(line, "request_id", r.request_id);
            logfmt_field(line, "account", r.account);
            logfmt_field(line, "action", action);
            logfmt_field(line, "method", Some(r.method));
            logfmt_field(line, "outcome", Some(r.outcome));
            logfmt_field(line, "code", r.code);
            let _ = write!(line, "billable={} ", r.billable);
            if let Some(status) = r.upstream_status {
                let _ = write!(line, "upstream_status={status} ");
            }
            let _ = write!(
                line,
                "latency_ms={latency_ms:.3} bytes_in={} bytes_out={}",
                r.bytes_in, r.bytes_out
            );
        }
    }
    line.push('\n');
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn json_field(line: &mut String, key: &str, value: Option<&str>) {
    line.push('"');
    line.push_str(key);
    line.push_str("\":");
    match value {
        Some(value) => push_json_string(line, value),
        None => line.push_str("null"),
    }
    line.push(',');
}

/// `value` as a JSON string: quotes, backslashes and control characters escaped; the
/// common case (nothing to escape) is one copy.
fn push_json_string(line: &mut String, value: &str) {
    line.push('"');
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        line.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '"' => line.push_str("\\\""),
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                '\t' => line.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(line, "\\u{:04x}", c as u32);
                }
                c => line.push(c),
            }
        }
    }
    line.push('"');
}

/// `key=value`, quoted (with `"` and `\` escaped, control characters dropped) when
/// the value has anything but plain characters; absent values are left out.
fn logfmt_field(line: &mut String, key: &str, value: Option<&str>) {
    let Some(value) = value else { return };
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+@".contains(&b));
    if plain {
        let _ = write!(line, "{key}={value} ");
        return;
    }
    let _ = write!(line, "{key}=\"");
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if c.is_control() => {}
            c => line.push(c),
        }
    }
    line.push_str("\" ");
}

/// `2026-12-05T08:30:00.123Z` into `line`: RFC 3339 in UTC, as every interface shows
/// time, with milliseconds.
fn push_rfc3339_millis(line: &mut String, unix_ms: i64) {
    let seconds = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let (cached, text) = SECOND.get();
    let text = if cached == seconds {
        text
    } else {
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
            line.push_str("invalid-time");
            return;
        };
        let mut text = [0u8; 19];
        let formatted = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if formatted.len() != text.len() {
            // A year past 9999: no cache, the text as it is.
            line.push_str(&formatted);
            let _ = write!(line, ".{millis:03}Z");
            return;
        }
        text.copy_from_slice(formatted.as_bytes());
        SECOND.set((seconds, text));
        text
    };
    line.push_str(std::str::from_utf8(&text).unwrap_or_default());
    let _ = write!(line, ".{millis:03}Z");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            at_ms: 1_796_380_200_123,
            request_id: Some("3f9a7c2e-1b4d-4e5f-8a6b-0c1d2e3f4a5b"),
            account: Some("acme"),
            action: Some("IdCardVerification"),
            method: "POST",
            outcome: "forwarded",
            code: None,
            billable: true,
            upstream_status: Some(200),
            latency: Duration::from_micros(1234),
            bytes_in: 120,
            bytes_out: 310,
        }
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let line = format_line(AccessLogFormat::Json, &record());
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-04T10:30:00.123Z");
        assert_eq!(v["account"], "acme");
        assert_eq!(v["code"], serde_json::Value::Null);
        assert_eq!(v["billable"], true);
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["latency_ms"], 1.234);
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(120), Some(310))
        );
    }

    #[test]
    fn a_hostile_action_name_stays_inside_its_field() {
        let hostile = "Evil\"} {\"account\":\"root\n\u{7}".repeat(10);
        let mut r = record();
        r.action = Some(&hostile);
        let json = format_line(AccessLogFormat::Json, &r);
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["account"], "acme");
        assert!(v["action"].as_str().unwrap().len() <= 64);
        let logfmt = format_line(AccessLogFormat::Logfmt, &r);
        assert_eq!(logfmt.matches('\n').count(), 1, "{logfmt}");
        assert!(logfmt.contains("account=acme "), "{logfmt}");
    }

    #[test]
    fn logfmt_leaves_out_what_is_absent() {
        let mut r = record();
        r.upstream_status = None;
        r.code = Some("AuthFailure.SignatureFailure");
        r.outcome = "refused";
        r.account = None;
        let line = format_line(AccessLogFormat::Logfmt, &r);
        assert!(line.starts_with("time=2026-12-04T10:30:00.123Z request_id="), "{line}");
        assert!(line.contains(" code=AuthFailure.SignatureFailure "), "{line}");
        assert!(
            !line.contains("account=") && !line.contains("upstream_status"),
            "{line}"
        );
    }

    #[test]
    fn sampling_keeps_every_failure_and_one_success_in_n() {
        let log = AccessLog {
            mode: AccessLogMode::Sampled { every: 4 },
            format: AccessLogFormat::Json,
            shared: None,
            dropped: Counter::default(),
        };
        let kept = (0..40).filter(|_| log.wants(false)).count();
        assert_eq!(kept, 10);
        assert!((0..10).all(|_| log.wants(true)));
        assert!(!AccessLog::off().wants(true));
    }
}
