//! The admin listener (operators and monitoring; loopback by default): `/healthz`
//! (process up), `/readyz` (upstream, billing store and state cache reachable),
//! `/metrics` (OpenMetrics text), and the operators' API under `/v1/` (`api`), which
//! requires `Authorization: Bearer <admin token>`. Must not serve tenant traffic: that
//! is the data listener's job.

pub mod api;
pub mod webhooks;

use crate::app::App;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// An error answer of the admin API: `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        json(
            self.status,
            serde_json::json!({"error": {"code": self.code, "message": self.message}}),
        )
    }
}

pub async fn handle(app: &Arc<App>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => return readiness(app).await,
        (method, path) if path.starts_with("/ui") || path == "/favicon.ico" => {
            if let Some(page) = crate::console::serve(crate::console::Console::Operator, method, path) {
                return page;
            }
        }
        (&Method::GET, "/metrics") => {
            let metrics = &app.plane.metrics;
            let age = app.freshness.age(app.clock.now_unix()).unwrap_or(-1);
            metrics.state_age_seconds.set(age);
            metrics.accounts_loaded.set(app.mirror.account_count() as i64);
            metrics.credentials_loaded.set(app.mirror.credential_count() as i64);
            let (manual, arrears) = app.mirror.suspended_counts();
            metrics.accounts_suspended_manual.set(manual as i64);
            metrics.accounts_suspended_arrears.set(arrears as i64);
            let pending = app.plane.counters.pending();
            metrics.usage_pending_calls.set(pending as i64);
            let oldest = [app.plane.counters.oldest_pending(), app.flusher.frozen_since().await]
                .into_iter()
                .flatten()
                .min();
            let now = app.clock.now_unix();
            metrics
                .usage_oldest_pending_seconds
                .set(oldest.map_or(0, |t| (now - t).max(0)));
            let mut response = Response::new(Full::new(Bytes::from(app.plane.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            return response;
        }
        _ => {}
    }
    let Some(rest) = request.uri().path().strip_prefix("/v1/") else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint").into_response();
    };
    let actor = match authorize(app, request.headers()) {
        Ok(actor) => actor,
        Err(e) => return e.into_response(),
    };
    let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or("").to_string();
    let body = match Limited::new(request.into_body(), MAX_ADMIN_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return ApiError::bad_request("the body is larger than 64 KiB").into_response(),
    };
    match api::route(app, &actor, &method, &segments, &query, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The name of the admin token presented, compared in constant time.
fn authorize(app: &App, headers: &http::HeaderMap) -> Result<String, ApiError> {
    if app.config.admin_tokens.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API is disabled: set EKYC_ADMIN_TOKEN",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::proxy::auth::strip_bearer)
        .unwrap_or("");
    let mut found = None;
    for token in &app.config.admin_tokens {
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            presented.as_bytes(),
            token.token.as_bytes(),
        )) {
            found = Some(token.name.clone());
        }
    }
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        )
    })
}

async fn readiness(app: &App) -> Response<Full<Bytes>> {
    let upstream = app.plane.upstream.authority();
    let port = upstream
        .port_u16()
        .unwrap_or(match app.config.upstream.scheme.as_str() {
            "https" => 443,
            _ => 80,
        });
    let upstream_status = match tokio::time::timeout(
        READY_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((upstream.host(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("unreachable: {e}")),
        Err(_) => Err("unreachable: connect timed out".to_string()),
    };
    let store_status = match tokio::time::timeout(READY_CHECK_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".to_string()),
    };
    let now = app.clock.now_unix();
    let max = app.config.state.max_staleness.as_secs() as i64;
    let state_status = match (app.config.state.redis.is_some(), app.freshness.age(now)) {
        (false, _) => Ok(()),
        (true, None) => Err("never synced with Redis".to_string()),
        (true, Some(age)) if age > max => Err(format!("stale: last synced {age} s ago (limit {max} s)")),
        (true, Some(_)) => Ok(()),
    };
    let ok = upstream_status.is_ok() && store_status.is_ok() && state_status.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        serde_json::json!({
            "ready": ok,
            "checks": {
                "upstream": show(&upstream_status),
                "store": show(&store_status),
                "state": show(&state_status),
            },
            "state_age_seconds": app.freshness.age(now),
        }),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, crate::tencent::JSON_CONTENT_TYPE);
    response
}
