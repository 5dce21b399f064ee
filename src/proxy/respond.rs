//! The pipeline's last phase, run by every transport once per request: count a
//! billable call and record the call's metrics, then hand the answer over to be sent.
//! Like pingora's logging phase it always runs, whatever the transport and whatever
//! the outcome: `proxy::handle` returns an `Answer` whose response can only be taken
//! through `Answer::respond`, so a server cannot send an answer without counting it.
//! Must not decide whether a call is billable (the pipeline's meter step does) or
//! touch the answer's bytes.

use crate::catalog::ActionId;
use crate::meter::CounterKey;
use crate::meter::billable::BillableScanner;
use crate::metrics::{CallAction, Outcome};
use crate::proxy::Seen;
use crate::proxy::access_log::AccessRecord;
use crate::proxy::body::ProxyBody;
use crate::proxy::plane::DataPlane;
use http::{Method, Response};
use std::time::Instant;

/// One billable call, to be counted when its answer is handed over. Issued only for an
/// upstream answer that is HTTP 200 with no `Error` (`for_answer`): Tencent bills no
/// failed call. Counted whether or not the client then reads the answer: the upstream
/// has made (and billed) the call by then.
///
/// It holds no `Arc<DataPlane>`: cloning one on every call passed its reference count's
/// cache line between the workers. `Answer::respond` is given the server's own.
#[derive(Debug)]
pub struct MeterTicket {
    key: CounterKey,
    /// The call's arrival (Unix seconds).
    at: i64,
}

impl MeterTicket {
    /// The ticket for `key` if `answer` is billable: a `Response` with no `Error`
    /// (the caller has checked the HTTP status).
    pub fn for_answer(key: CounterKey, at: i64, answer: &ProxyBody) -> Option<Self> {
        let mut scanner = BillableScanner::new();
        scanner.feed(answer.bytes());
        scanner.is_billable().then_some(MeterTicket { key, at })
    }

    fn count(self, plane: &DataPlane) {
        let key = self.key;
        plane.counters.add(key, self.at, || {
            let account = plane.mirror.account_by_index(key.account).map(|a| a.id().to_string());
            (
                account.unwrap_or_else(|| format!("unknown-account-{}", key.account)),
                plane.catalog.name(ActionId(key.action)).to_string(),
            )
        });
        plane.metrics.record_billable(ActionId(key.action));
    }
}

/// What the pipeline answered, waiting for the last phase.
#[must_use = "an answer is sent through `Answer::respond`, the phase that counts billable calls"]
pub struct Answer {
    response: Response<ProxyBody>,
    ticket: Option<MeterTicket>,
    /// For the metrics: what the call asked for.
    action: CallAction,
    /// `None` for what is not an API call (the tenants' console pages): not recorded.
    outcome: Option<Outcome>,
    started: Instant,
    /// For the access log: the request's method and what the pipeline learned.
    method: Method,
    seen: Seen,
}

impl Answer {
    pub(super) fn new(
        response: Response<ProxyBody>,
        ticket: Option<MeterTicket>,
        action: CallAction,
        outcome: Outcome,
        started: Instant,
    ) -> Self {
        Answer {
            response,
            ticket,
            action,
            outcome: Some(outcome),
            started,
            method: Method::POST,
            seen: Seen::default(),
        }
    }

    /// The request's method and what the pipeline saw of the call, for the access log.
    pub(super) fn with(mut self, method: &Method, seen: Seen) -> Self {
        self.method = method.clone();
        self.seen = seen;
        self
    }

    /// A page that is not an API call: neither counted nor recorded.
    pub(super) fn page(response: Response<ProxyBody>, started: Instant) -> Self {
        Answer {
            response,
            ticket: None,
            action: CallAction::Unknown,
            outcome: None,
            started,
            method: Method::GET,
            seen: Seen::default(),
        }
    }

    /// The last phase: counts the call if it is billable, records its outcome and
    /// latency, and gives the response to send.
    pub fn respond(self, plane: &DataPlane) -> Response<ProxyBody> {
        let billable = self.ticket.is_some();
        if let Some(ticket) = self.ticket {
            ticket.count(plane);
        }
        if let Some(outcome) = self.outcome {
            let elapsed = self.started.elapsed();
            plane
                .metrics
                .record_request(self.action, outcome, elapsed.as_secs_f64());
            let failed = match outcome {
                Outcome::Refused(_) => true,
                // An answer with an `Error` is what is left of a billable action's
                // answers without a ticket.
                _ => {
                    self.response.status() != http::StatusCode::OK
                        || (!billable
                            && matches!(self.action, CallAction::Catalog(id) if plane.billable[id.0 as usize]))
                }
            };
            if plane.access_log.wants(failed) {
                log_call(
                    plane,
                    &self.response,
                    self.action,
                    outcome,
                    billable,
                    &self.method,
                    &self.seen,
                    elapsed,
                );
            }
        }
        self.response
    }
}

/// Writes the call's access log line. Reads the RequestId (and an error's code) back
/// from the answer's bytes: only for the calls that get a line.
#[allow(clippy::too_many_arguments)]
fn log_call(
    plane: &DataPlane,
    response: &Response<ProxyBody>,
    action: CallAction,
    outcome: Outcome,
    billable: bool,
    method: &Method,
    seen: &Seen,
    latency: std::time::Duration,
) {
    let body = response.body().bytes();
    let (outcome_name, code) = match outcome {
        // A billable answer carries no error; any other may (`Code` inside `Error`).
        Outcome::Forwarded if billable => ("forwarded", None),
        Outcome::Forwarded => ("forwarded", json_string_after(body, b"\"Error\":{\"Code\":\"")),
        Outcome::Answered => ("answered", None),
        Outcome::Refused(code) => ("refused", Some(code.as_str())),
    };
    let now_ms = plane.clock.now_unix_ms();
    let record = AccessRecord {
        at_ms: now_ms - latency.as_millis() as i64,
        request_id: json_string_after(body, b"\"RequestId\":\""),
        account: seen.account.as_ref().map(|a| a.as_str()),
        action: match action {
            CallAction::Catalog(id) => Some(plane.catalog.name(id)),
            CallAction::Tenant(tenant) => Some(tenant.name()),
            CallAction::Unknown => None,
        },
        method: method.as_str(),
        outcome: outcome_name,
        code,
        billable,
        upstream_status: matches!(outcome, Outcome::Forwarded).then(|| response.status().as_u16()),
        latency,
        bytes_in: seen.bytes_in,
        bytes_out: body.len() as u64,
    };
    plane.access_log.write(&record);
}

/// The JSON string value that follows `key` (`"Name":"`) in `body`, when it has no
/// escapes: RequestIds and error codes never do. The last occurrence, since Tencent's
/// envelope puts `RequestId` last, after any field a caller's data could fill.
fn json_string_after<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = memchr::memmem::rfind(body, key)? + key.len();
    let len = memchr::memchr2(b'"', b'\\', &body[start..])?;
    if body.get(start + len) != Some(&b'"') || len > 128 {
        return None;
    }
    std::str::from_utf8(&body[start..start + len]).ok()
}
