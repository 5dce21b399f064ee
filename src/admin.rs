//! The admin listener (operators and monitoring; loopback by default): `/healthz`
//! (process up), `/readyz` (upstream and stores reachable), `/metrics` (Prometheus
//! text). Later issues add the operator API here. Must not serve tenant traffic: that
//! is the data listener's job.

use crate::app::App;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use std::time::Duration;

const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn handle(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(app).await,
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(app.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"code": "not_found", "message": "no such admin endpoint"}}),
        ),
    }
}

async fn readiness(app: &App) -> Response<Full<Bytes>> {
    let upstream = app.upstream.authority();
    let port = upstream
        .port_u16()
        .unwrap_or(match app.config.upstream.scheme.as_str() {
            "https" => 443,
            _ => 80,
        });
    let reachable = tokio::time::timeout(
        READY_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((upstream.host(), port)),
    )
    .await;
    let (ok, upstream_status) = match reachable {
        Ok(Ok(_)) => (true, "ok".to_string()),
        Ok(Err(e)) => (false, format!("unreachable: {e}")),
        Err(_) => (false, "unreachable: connect timed out".to_string()),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({"ready": ok, "checks": {"upstream": upstream_status}}),
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
