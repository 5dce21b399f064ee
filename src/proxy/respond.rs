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
use crate::proxy::body::ProxyBody;
use crate::proxy::plane::DataPlane;
use http::Response;
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
        }
    }

    /// A page that is not an API call: neither counted nor recorded.
    pub(super) fn page(response: Response<ProxyBody>, started: Instant) -> Self {
        Answer {
            response,
            ticket: None,
            action: CallAction::Unknown,
            outcome: None,
            started,
        }
    }

    /// The last phase: counts the call if it is billable, records its outcome and
    /// latency, and gives the response to send.
    pub fn respond(self, plane: &DataPlane) -> Response<ProxyBody> {
        if let Some(ticket) = self.ticket {
            ticket.count(plane);
        }
        if let Some(outcome) = self.outcome {
            plane
                .metrics
                .record_request(self.action, outcome, self.started.elapsed().as_secs_f64());
        }
        self.response
    }
}
