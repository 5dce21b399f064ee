//! The request pipeline of the data listener. Every request passes these phases in this
//! order; each may end it early with a Tencent-format error (see `errors`):
//!
//! 1. **bound**: size caps and read deadline on the body (`body`). First, so nothing
//!    later works on unbounded input.
//! 2. **authenticate**: TC3-HMAC-SHA256 or API key (issue 3). Before anything that
//!    reveals whether an account or action exists.
//! 3. **account state**: activated, not suspended (issue 4). After authentication: the
//!    account is only known once the caller is.
//! 4. **action**: must be in the catalog; unknown actions are refused, never forwarded.
//! 5. **rate limit**: per account and action (issue 4). Last of the checks, so refused
//!    calls do not consume the caller's quota.
//! 6. **forward**: re-signed with the platform's credentials (`forward`).
//! 7. **meter**: count the call when the upstream answered HTTP 200 with no `Error`
//!    (issue 5). Only after the answer: Tencent bills no failed call.
//! 8. **respond**: the upstream's answer passes through unchanged.
//!
//! This module sequences the phases; it must not implement one itself.

pub mod body;
pub mod errors;
pub mod forward;
pub mod headers;

use crate::app::App;
use crate::catalog::ActionId;
use crate::metrics::Outcome;
use body::ProxyBody;
use errors::GatewayError;
use forward::ForwardError;
use http::{Request, Response};
use hyper::body::Incoming;
use std::time::Instant;

/// Runs one request through the pipeline. Never fails: errors become Tencent answers.
pub async fn handle(app: &App, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let action = parts
        .headers
        .get("x-tc-action")
        .and_then(|v| v.to_str().ok())
        .and_then(|name| app.catalog.lookup(name));
    let result = pipeline(app, &parts, body, action).await;
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(response) => {
            app.metrics.record_request(action, Outcome::Forwarded, seconds);
            response
        }
        Err(error) => {
            let code = error.code();
            if let GatewayError::Forward(e) = &error {
                app.metrics.record_upstream_error(match e {
                    ForwardError::Connect(_) => "connect",
                    ForwardError::Timeout(_) => "timeout",
                    ForwardError::Protocol(_) => "protocol",
                    ForwardError::ResponseTooLarge { .. } => "too_large",
                });
                tracing::warn!(error = %error, "upstream call failed");
            } else {
                tracing::debug!(error = %error, code = code.as_str(), "request refused");
            }
            app.metrics.record_request(action, Outcome::Refused(code), seconds);
            error.to_response()
        }
    }
}

async fn pipeline(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
    action: Option<ActionId>,
) -> Result<Response<ProxyBody>, GatewayError> {
    let limits = &app.config.limits;
    // 1. bound
    let body = body::read_bounded(&parts.headers, body, limits.max_body_bytes, limits.body_read_timeout).await?;
    // 2. authenticate, 3. account state: issues 3 and 4.
    // 4. action
    if action.is_none() {
        return Err(if parts.headers.contains_key("x-tc-action") {
            GatewayError::UnknownAction
        } else {
            GatewayError::MissingAction
        });
    }
    // 5. rate limit: issue 4.
    // 6. forward
    let payload_hash = crate::tc3::payload_hash(&parts.headers, &body);
    let upstream_started = Instant::now();
    let response = app
        .upstream
        .forward(parts, body, &payload_hash, app.clock.now_unix())
        .await?;
    app.metrics.record_upstream(upstream_started.elapsed().as_secs_f64());
    // 7. meter: issue 5.
    // 8. respond
    Ok(response)
}
