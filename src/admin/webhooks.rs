//! The operators' view of the webhook outbox under `/v1/webhooks/`: the events with
//! their delivery state (`GET events`, `GET events/{id}` with the body sent), and a
//! retry of one (`POST events/{id}/retry`). Must not send anything itself: the delivery
//! workers pick a retried event up.

use super::api::{Reply, query_param, rfc3339};
use super::{ApiError, json};
use crate::app::App;
use crate::store::StoreError;
use crate::store::outbox::EventRecord;
use http::{Method, StatusCode};
use serde_json::{Value, json as j};
use std::sync::Arc;

fn event_view(event: &EventRecord, with_payload: bool) -> Value {
    let mut view = j!({
        "id": event.id,
        "type": event.kind,
        "status": event.status,
        "attempts": event.attempts,
        // A worker holds it for an attempt right now.
        "in_flight": event.locked_until != 0,
        "created": rfc3339(event.created_at),
        "next_attempt": match event.status.as_str() {
            "pending" => rfc3339(event.next_attempt_at),
            _ => Value::Null,
        },
        "last_attempt": event.last_attempt_at.map_or(Value::Null, rfc3339),
        "last_error": event.last_error,
        "delivered": event.delivered_at.map_or(Value::Null, rfc3339),
        "delivered_to": event.delivered_to,
    });
    if with_payload {
        view["payload"] = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    }
    view
}

pub async fn route(app: &Arc<App>, method: &Method, segments: &[&str], query: &str) -> Reply {
    match (method, segments) {
        (&Method::GET, ["events"]) => {
            let status = query_param(query, "status");
            if let Some(status) = &status
                && !matches!(status.as_str(), "pending" | "delivered" | "failed")
            {
                return Err(ApiError::bad_request("status must be pending, delivered or failed"));
            }
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100i64)
                .clamp(1, 1000);
            let events = app.store.list_events(status.as_deref(), limit).await?;
            let views: Vec<Value> = events.iter().map(|e| event_view(e, false)).collect();
            Ok(json(
                StatusCode::OK,
                j!({"endpoints": app.config.webhooks.urls, "events": views}),
            ))
        }
        (&Method::GET, ["events", id]) => {
            let event = app
                .store
                .event(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("event {id}")))?;
            Ok(json(StatusCode::OK, event_view(&event, true)))
        }
        (&Method::POST, ["events", id, "retry"]) => {
            let event = app
                .store
                .retry_event(id, app.clock.now_unix())
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("event {id}")))?;
            Ok(json(StatusCode::OK, event_view(&event, true)))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        )),
    }
}
