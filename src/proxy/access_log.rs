//! The access log: one line per API call (JSON or logfmt), written by a thread of its
//! own so a worker only formats a line and hands it over (a lock-free channel push; no
//! system call, no lock, no waiting). Off, every call, or one successful call in N with
//! every refusal and error kept (`[access_log]`). When the writer falls behind, lines
//! are dropped and counted (`ekyc_gateway_access_log_dropped_total`), never waited for.
//! Must not log a secret, a signature or a body: the fields of `AccessRecord` are all
//! it writes, and the one field a client chooses freely (an unknown action's name) is
//! escaped and cut to 64 bytes.

use prometheus_client::metrics::counter::Counter;
use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
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
    /// Lines waiting for the writer before new ones are dropped.
    pub queue_lines: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            mode: AccessLogMode::Off,
            format: AccessLogFormat::Json,
            target: AccessLogTarget::Stdout,
            queue_lines: 65_536,
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
}

/// The data plane's handle: decides which calls get a line and hands lines over.
pub struct AccessLog {
    mode: AccessLogMode,
    format: AccessLogFormat,
    sender: Option<SyncSender<String>>,
    dropped: Counter,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            mode: AccessLogMode::Off,
            format: AccessLogFormat::Json,
            sender: None,
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

    /// Formats `record` and hands the line to the writer; drops it (counted) if the
    /// writer is that far behind.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(sender) = &self.sender else { return };
        let line = format_line(self.format, record);
        match sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The writer thread; `finish` drains what is queued and stops it.
pub struct AccessLogWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AccessLogWriter {
    /// Writes what is still queued, then ends the thread.
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
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_lines.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("access-log".into()).spawn({
        let stop = stop.clone();
        move || write_lines(receiver, out, &stop)
    })?;
    Ok((
        AccessLog {
            mode: config.mode,
            format: config.format,
            sender: Some(sender),
            dropped,
        },
        Some(AccessLogWriter {
            stop,
            thread: Some(thread),
        }),
    ))
}

/// The writer's loop. It polls rather than blocks on the channel: a receiver that
/// never waits is one the workers never have to wake, so a push stays a push.
fn write_lines(receiver: Receiver<String>, out: Box<dyn std::io::Write + Send>, stop: &AtomicBool) {
    const POLL: Duration = Duration::from_millis(20);
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut wrote = false;
        loop {
            match receiver.try_recv() {
                Ok(line) => {
                    if out.write_all(line.as_bytes()).is_err() {
                        // A full disk or a closed pipe: the lines are lost, the calls
                        // are not held up for them.
                        continue;
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
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
    let time = rfc3339_millis(r.at_ms);
    let latency_ms = r.latency.as_secs_f64() * 1000.0;
    let action = r.action.map(|a| cut(a, 64));
    match format {
        AccessLogFormat::Json => {
            line.push('{');
            json_field(&mut line, "time", Some(&time));
            json_field(&mut line, "request_id", r.request_id);
            json_field(&mut line, "account", r.account);
            json_field(&mut line, "action", action);
            json_field(&mut line, "method", Some(r.method));
            json_field(&mut line, "outcome", Some(r.outcome));
            json_field(&mut line, "code", r.code);
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
            logfmt_field(&mut line, "time", Some(&time));
            logfmt_field(&mut line, "request_id", r.request_id);
            logfmt_field(&mut line, "account", r.account);
            logfmt_field(&mut line, "action", action);
            logfmt_field(&mut line, "method", Some(r.method));
            logfmt_field(&mut line, "outcome", Some(r.outcome));
            logfmt_field(&mut line, "code", r.code);
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
    line
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
    let _ = write!(line, "\"{key}\":");
    match value {
        // serde_json's string escaping: quotes, backslashes and control characters.
        Some(value) => line.push_str(&serde_json::Value::from(value).to_string()),
        None => line.push_str("null"),
    }
    line.push(',');
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

/// `2026-12-05T08:30:00.123Z`: RFC 3339 in UTC, as every interface shows time, with
/// milliseconds.
fn rfc3339_millis(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::from("invalid-time"),
    }
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
            sender: None,
            dropped: Counter::default(),
        };
        let kept = (0..40).filter(|_| log.wants(false)).count();
        assert_eq!(kept, 10);
        assert!((0..10).all(|_| log.wants(true)));
        assert!(!AccessLog::off().wants(true));
    }
}
