//! The request pipeline of the data listener. Every request passes these phases in this
//! order; each may end it early with a Tencent-format error (see `errors`):
//!
//! 1. **bound**: header size and count caps and the header-read deadline (enforced by
//!    the HTTP server), then the body's size cap and read deadline (`body`).
//! 2. **authenticate** (`auth`): TC3-HMAC-SHA256, API key, or legacy v1. Split around
//!    the body read: the credential is looked up from the headers first, so an unknown
//!    or revoked caller is refused without reading its upload; the signature is checked
//!    once the body is in. Before anything that reveals whether an account or action
//!    exists.
//! 3. **account state**: activated, not suspended, and the mirror fresh enough to
//!    trust. After authentication: the account is only known once the caller is.
//! 4. **action**: must be in the catalog; unknown actions are refused, never forwarded.
//! 5. **rate limit** (`ratelimit`): per account and per action. Last of the checks, so refused
//!    calls do not consume the caller's quota.
//! 6. **forward**: re-signed with the platform's credentials (`forward`).
//! 7. **meter**: a call whose upstream answer is HTTP 200 with no `Error` gets a
//!    `respond::MeterTicket`. Only after the answer: Tencent bills no failed call.
//! 8. **respond** (`respond`): the last phase, run by every transport on the `Answer`
//!    `handle` returns, whatever the outcome: the ticket is counted (`meter`), the
//!    call's metrics recorded, and the answer handed over to be sent unchanged. A
//!    billable call is counted there and nowhere else.
//!
//! Before phase 1, a `GET /console/...` is answered with the tenants' console pages
//! (`crate::console`): static files, no state read.
//!
//! This module sequences the phases; it must not implement one itself.

pub mod access_log;
pub mod auth;
pub mod body;
pub mod errors;
pub mod fields;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod plane;
pub mod pool;
pub mod ratelimit;
pub mod respond;
pub mod tenant;

use crate::meter::{CounterKey, Month};
use crate::metrics::{CallAction, Outcome};
use crate::state::StalePolicy;
use crate::state::mirror::AccountStanding;
use auth::AuthMethod;
use body::{ProxyBody, RequestBody};
use errors::{GatewayError, Refusal};
use fields::{Known, RequestFields};
use forward::Resign;
use http::Response;
use plane::DataPlane;
use respond::{Answer, MeterTicket};
use std::time::Instant;
use tenant::TenantAction;

/// Headers that decide what the call is, and so where it is routed and how it is billed.
fn repeats_a_routing_header(fields: &RequestFields) -> bool {
    [
        Known::XTcAction,
        Known::XTcVersion,
        Known::XTcRegion,
        Known::ContentType,
    ]
    .into_iter()
    .any(|known| fields.is_repeated(known))
}

/// Whether the request's `Connection` header names a header that must reach the
/// upstream as the gateway saw it: a known end-to-end one (`Host`, `Content-Type`,
/// `X-TC-*`, `Authorization`, ...), any `X-TC-*`, or one the TC3 signature covers.
/// Only requests that name anything besides `keep-alive`/`close` pay for the check.
fn connection_names_an_end_to_end_header(fields: &RequestFields) -> bool {
    if !fields.contains(Known::Connection) {
        return false;
    }
    let named = headers::connection_named(fields);
    if named.is_empty() {
        return false;
    }
    let signed: Vec<&[u8]> = fields
        .get(Known::Authorization)
        .and_then(|value| {
            let at = value.windows(14).position(|w| w == b"SignedHeaders=")?;
            let list = &value[at + 14..];
            Some(&list[..list.iter().position(|&b| b == b',').unwrap_or(list.len())])
        })
        .map(|list| list.split(|&b| b == b';').map(<[u8]>::trim_ascii).collect())
        .unwrap_or_default();
    named.iter().any(|token| {
        Known::of(token).is_some_and(|known| !known.is_hop_by_hop())
            || token.len() >= 5 && token[..5].eq_ignore_ascii_case(b"x-tc-")
            || signed.iter().any(|name| name.eq_ignore_ascii_case(token))
    })
}

/// A request refused for its form, before anything is read or looked up: never
/// forwarded, never billed.
fn early_refusal(parts: &http::request::Parts, fields: &RequestFields) -> Option<Refusal> {
    // Only POST and GET are API calls (Tencent answers UnsupportedProtocol to the
    // rest): a HEAD is not run by the upstream with its answer thrown away. CONNECT:
    // this is not a forward proxy; nothing but the configured upstream is ever
    // contacted.
    if parts.method != http::Method::POST && parts.method != http::Method::GET {
        return Some(Refusal::method_not_allowed(if parts.method == http::Method::CONNECT {
            "CONNECT is not supported: this is not a forward proxy"
        } else {
            "only POST and GET requests are supported"
        }));
    }
    // Transfer-Encoding on a request: the SDKs always send Content-Length (the TC3
    // signature covers the body's hash anyway). The connection is closed (the HTTP/1.1
    // server never reads such a body), which also stops a smuggling attempt (RFC 9112
    // §6.3: both headers).
    if fields.contains(Known::TransferEncoding) {
        return Some(Refusal::invalid_parameter(
            "chunked request bodies are refused: send Content-Length",
        ));
    }
    // The gateway checks and bills the first X-TC-Action; the upstream might act on
    // another copy, and the platform's signature does not cover it.
    if repeats_a_routing_header(fields) {
        return Some(Refusal::invalid_parameter(
            "X-TC-Action, X-TC-Version, X-TC-Region and Content-Type must each be sent once",
        ));
    }
    // Hop-by-hop by the client's say-so, a header would be dropped before the
    // upstream after the gateway routed, authorized or billed by it.
    if connection_names_an_end_to_end_header(fields) {
        return Some(Refusal::invalid_parameter(
            "Connection may name only hop-by-hop headers, never one that routes or is signed",
        ));
    }
    None
}

/// Runs one request through the pipeline. Never fails: errors become Tencent answers.
/// `parts` carries the method, target and version; the header fields are in `fields`.
/// `callers` belongs to the connection (see `auth::CallerCache`).
pub async fn handle<B: RequestBody>(
    plane: &DataPlane,
    parts: http::request::Parts,
    fields: &RequestFields,
    callers: &mut auth::CallerCache,
    body: B,
) -> Answer {
    let started = Instant::now();
    if parts.method != http::Method::POST
        && let Some(page) = crate::console::serve(crate::console::Console::Tenant, &parts.method, parts.uri.path())
    {
        return Answer::page(page, started);
    }
    if let Some(refusal) = early_refusal(&parts, fields) {
        return Answer::new(
            refusal.to_response(),
            None,
            CallAction::Unknown,
            Outcome::Refused(refusal.code),
            started,
        )
        .with(&parts.method, Seen::default());
    }
    // Filled in by the pipeline as it learns what the call asks for (a tenant action,
    // or the catalog lookup of step 4) and who makes it; a call refused before the
    // lookup is looked up below, for its metrics, so a forwarded call takes one lookup.
    let mut seen = Seen::default();
    match pipeline(plane, &parts, fields, callers, body, &mut seen).await {
        Ok((response, ticket)) => {
            let action = seen.action.unwrap_or(CallAction::Unknown);
            let outcome = match action {
                CallAction::Tenant(_) => Outcome::Answered,
                _ => Outcome::Forwarded,
            };
            Answer::new(response, ticket, action, outcome, started).with(&parts.method, seen)
        }
        Err(error) => {
            let action = seen.action.unwrap_or_else(|| match fields.get_str(Known::XTcAction) {
                Some(name) => match (plane.catalog.lookup(name), TenantAction::from_name(name)) {
                    (Some(id), _) => CallAction::Catalog(id),
                    (None, Some(tenant)) => CallAction::Tenant(tenant),
                    (None, None) => CallAction::Unknown,
                },
                None => CallAction::Unknown,
            });
            if let Some(label) = error.upstream_label() {
                plane.metrics.record_upstream_error(label);
            }
            Answer::new(
                error.to_response(),
                None,
                action,
                Outcome::Refused(error.code()),
                started,
            )
            .with(&parts.method, seen)
        }
    }
}

/// What the pipeline learned about a call before it ended, for the last phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub action: Option<CallAction>,
    /// The caller's account, once its signature or key checked out; kept only while
    /// the access log is on.
    pub account: Option<access_log::AccountName>,
    /// The request body's length, once read.
    pub bytes_in: u64,
}

async fn pipeline<B: RequestBody>(
    plane: &DataPlane,
    parts: &http::request::Parts,
    fields: &RequestFields,
    callers: &mut auth::CallerCache,
    body: B,
    seen: &mut Seen,
) -> Result<(Response<ProxyBody>, Option<MeterTicket>), GatewayError> {
    let settings = &plane.settings;
    let limits = &settings.limits;
    let now = plane.clock.now_unix();
    // 2a. authenticate: who claims to call, from the headers alone
    let identified = auth::identify(fields, &plane.mirror, callers, now, &settings.service)?;
    // 1. bound: the body
    let hash_as_read = || identified.hashes_body(fields);
    let received = body
        .read_bounded(fields, limits.max_body_bytes, limits.body_read_timeout, hash_as_read)
        .await?;
    // 2b. authenticate: the signature over the whole request
    seen.bytes_in = received.bytes.len() as u64;
    let caller = auth::verify(identified, parts, fields, &received, &plane.mirror, callers, now)?;
    if plane.access_log.enabled() {
        seen.account = access_log::AccountName::new(caller.credential.account().id());
    }
    let body::ReceivedBody {
        bytes: body,
        sha256: body_sha256,
    } = received;
    let name = match &caller.method {
        AuthMethod::V1 { params } => params.get("Action").ok().flatten(),
        _ => fields.get_str(Known::XTcAction),
    };
    // 3. account state: first, whether the mirror is fresh enough to trust at all
    if let Some(age) = plane.freshness.age(now)
        && age > settings.max_staleness_seconds
        && settings.stale_policy == StalePolicy::FailClosed
    {
        return Err(GatewayError::StateStale);
    }
    // Tenant actions are answered here, before the account's standing is checked: a
    // tenant must be able to activate, and to see why it is refused, while it is
    // refused. They are rate-limited like every call (each asks the control plane).
    if let Some(tenant_action) = name.and_then(TenantAction::from_name) {
        seen.action = Some(CallAction::Tenant(tenant_action));
        plane.rate_limits.check_account(caller.credential.account())?;
        let params = match &caller.method {
            _ if parts.method == http::Method::GET => tenant::Params::Query(parts.uri.query().unwrap_or("")),
            AuthMethod::V1 { params } => tenant::Params::Form(params),
            _ => tenant::Params::Json(&body),
        };
        // Boxed: a rare path kept out of every request's future (see `body::read_incoming`).
        let answer = Box::pin(tenant::handle(
            plane,
            caller.credential.account().id(),
            tenant_action,
            params,
        ))
        .await?;
        return Ok((answer, None));
    }
    let standing = caller.credential.account().standing();
    if standing != AccountStanding::Enabled {
        return Err(GatewayError::Account(standing));
    }
    // 4. action
    let action = name.and_then(|n| plane.catalog.lookup(n));
    seen.action = Some(action.map_or(CallAction::Unknown, CallAction::Catalog));
    let Some(action_id) = action else {
        return Err(if name.is_some() {
            GatewayError::UnknownAction
        } else {
            GatewayError::MissingAction
        });
    };
    // Credit control: a billable call the account cannot pay for is not made. Before
    // the rate limit, so a refused call does not consume the caller's quota.
    if plane.billable[action_id.0 as usize] && !plane.credit_covers(caller.credential.account(), action_id) {
        return Err(GatewayError::CreditExhausted);
    }
    // 5. rate limit
    plane.rate_limits.check(caller.credential.account(), action_id)?;
    // 6. forward
    let api_key_hash;
    let resign = match &caller.method {
        AuthMethod::Tc3 { payload_hash } => Resign::Tc3 {
            payload_hash: payload_hash.as_str(),
        },
        AuthMethod::ApiKey => {
            // The platform's signature must cover a Content-Type, as Tencent requires:
            // a call without one would only be refused upstream.
            if !fields.contains(Known::ContentType) {
                return Err(GatewayError::InvalidParameter(
                    "Content-Type is required (application/json for API 3.0 calls)",
                ));
            }
            api_key_hash = crate::tc3::payload_hash_of(fields, &body, body_sha256.as_ref());
            Resign::Tc3 {
                payload_hash: api_key_hash.as_str(),
            }
        }
        AuthMethod::V1 { params } => Resign::V1 { params },
    };
    // Before forwarding: a call that could not be counted is not made.
    let meter_key = if plane.billable[action_id.0 as usize] {
        let month = Month::of(now, settings.billing_utc_offset_seconds).ok_or(GatewayError::ClockOutOfRange)?;
        let key = CounterKey {
            account: caller.credential.account().index(),
            action: action_id.0,
            month,
        };
        if !plane.counters.admits(&key) {
            tracing::error!(
                max_keys = plane.counters.max_keys(),
                "usage counters are full (the billing store has not taken counts for a while): refusing new keys"
            );
            return Err(GatewayError::MeterFull);
        }
        Some(key)
    } else {
        None
    };
    let upstream_started = Instant::now();
    let response = plane
        .upstream
        .forward(parts, fields, body, resign, now, upstream_started)
        .await?;
    plane
        .metrics
        .record_upstream(action_id, upstream_started.elapsed().as_secs_f64());
    // 7. meter: a ticket for a billable answer, counted in the last phase (`respond`)
    let ticket = meter_key
        .filter(|_| response.status() == http::StatusCode::OK)
        .and_then(|key| MeterTicket::for_answer(key, now, response.body()));
    Ok((response, ticket))
}
