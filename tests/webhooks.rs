//! Webhooks end to end with a real HTTP receiver on a free port: the events billing
//! causes (bills issued, paid, overdue; suspensions set and lifted; a late run) reach
//! it after it was down for a while, each signed as docs/WEBHOOKS.md says a receiver
//! checks it; retries back off exponentially on the injected clock, stop as failed
//! after the retry window and start again on an operator's retry; a lease keeps two
//! workers from sending one event together; the delivery metrics count what was
//! delivered, refused and given up on; and an event committed by a gateway process
//! killed before it could deliver is delivered by the next process. On SQLite and
//! PostgreSQL.

mod common;

use bytes::Bytes;
use common::*;
use ekyc_gateway::clock::{Clock, ManualClock, rfc3339};
use ekyc_gateway::store::{Store, UsageBatch, UsageRow};
use ekyc_gateway::webhooks::events::NewEvent;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const SECRET: &str = "whsec_test_0123456789abcdef";
/// 2026-10-15 00:00 and 2026-11-01 00:30 in UTC+8.
const MID_OCTOBER: i64 = 1_791_993_600;
const FIRST_OF_NOVEMBER: i64 = 1_793_462_400 + 1800;

/// One request the receiver accepted.
#[derive(Debug, Clone)]
struct Received {
    id_header: String,
    signature: String,
    body: Bytes,
}

/// A webhook endpoint: answers 503 while down, 200 while up, and keeps what it
/// accepted.
struct Receiver {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(listener: TcpListener, up: bool) -> Self {
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let refused = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (state_up, state_refused, state_received) = (up.clone(), refused.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (up, refused, received) = (state_up.clone(), state_refused.clone(), state_received.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let (up, refused, received) = (up.clone(), refused.clone(), received.clone());
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (id_header, signature) = (header("ekyc-event-id"), header("ekyc-signature"));
                            let body = request.into_body().collect().await?.to_bytes();
                            let status = if up.load(Ordering::SeqCst) {
                                received.lock().unwrap().push(Received {
                                    id_header,
                                    signature,
                                    body,
                                });
                                200
                            } else {
                                refused.fetch_add(1, Ordering::SeqCst);
                                503
                            };
                            let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            up,
            refused,
            received,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/ekyc", self.addr)
    }

    /// The distinct events accepted, by id, each checked against its signature.
    fn events(&self, now: i64) -> BTreeMap<String, Value> {
        let mut events = BTreeMap::new();
        for r in self.received.lock().unwrap().iter() {
            assert!(
                verify(SECRET, &r.signature, &r.body, now, 300),
                "bad signature {:?}",
                r.signature
            );
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["id"], r.id_header.as_str(), "the id header names the body's event");
            events.insert(r.id_header.clone(), body);
        }
        events
    }
}

impl Receiver {
    fn ids(&self) -> BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.id_header.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The receiver's check, as docs/WEBHOOKS.md gives it: HMAC-SHA256 under the secret of
/// "<t>.<body>", hex, compared in constant time, `t` within the tolerance.
fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let fields: BTreeMap<&str, &str> = header.split(',').filter_map(|kv| kv.split_once('=')).collect();
    let (Some(t), Some(v1)) = (fields.get("t"), fields.get("v1")) else {
        return false;
    };
    let Ok(t) = t.parse::<i64>() else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    (now - t).abs() <= tolerance && hex::decode(v1).is_ok_and(|v1| mac.verify_slice(&v1).is_ok())
}

fn webhooks_toml(url: &str) -> String {
    format!(
        r#"
[billing]
currency = "USD"
[actions.LivenessCompare]
[[actions.LivenessCompare.prices]]
unit = "1.00"
[webhooks]
urls = ["{url}"]
poll_interval_ms = 20
initial_backoff_seconds = 10
max_backoff_seconds = 60
retry_for_hours = 24
timeout_ms = 2000
lease_seconds = 5
"#
    )
}

async fn outbox(gateway: &GatewayHandle, query: &str) -> Vec<Value> {
    let (status, body) = admin(gateway, "GET", &format!("/v1/webhooks/events{query}"), None).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// Waits until every event in the outbox has had at least `attempts` attempts.
async fn until_attempted(gateway: &GatewayHandle, attempts: i64) -> Vec<Value> {
    poll_until("every event attempted", Duration::from_secs(20), || async {
        let events = outbox(gateway, "").await;
        events
            .iter()
            .all(|e| e["attempts"].as_i64().unwrap() >= attempts && e["in_flight"] == false)
            .then_some(events)
    })
    .await
}

fn types(events: &BTreeMap<String, Value>) -> Vec<String> {
    let mut kinds: Vec<String> = events
        .values()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

async fn receiver_down_then_back(store_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim = SimHandle::start(|_| {}).await;
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), false).await;
    let text = format!(
        "[upstream]\nurl = \"http://{}\"\n{}",
        sim.addr,
        webhooks_toml(&receiver.url())
    );
    let mut config = ekyc_gateway::config::Config::from_toml(
        &text,
        &[
            ("EKYC_UPSTREAM_SECRET_ID", PLATFORM_SECRET_ID),
            ("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY),
            ("EKYC_MASTER_KEY", MASTER_KEY),
            ("EKYC_ADMIN_TOKEN", ADMIN_TOKEN),
            ("EKYC_WEBHOOK_SECRET", SECRET),
            // Billed by hand below; a scheduler on this clock would report September
            // late (a billing.run_late the test does not expect).
            ("EKYC_BILLING_SCHEDULER", "off"),
        ],
    )
    .unwrap();
    if let Some(url) = store_url {
        config.store_url = url;
    }
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;

    // October: the payer's bill is covered by its balance, the debtor's is not.
    account(&gateway, "payer").await;
    account(&gateway, "debtor").await;
    topup(&gateway, "payer", "5.00", "p1").await;
    let rows = ["payer", "debtor"]
        .iter()
        .map(|id| UsageRow {
            account_id: id.to_string(),
            action: "LivenessCompare".into(),
            month: "2026-10".into(),
            calls: 2,
        })
        .collect();
    let batch = UsageBatch {
        instance_id: "test".into(),
        seq: 1,
        rows,
    };
    assert!(
        apply_usage_batch(&gateway.app.store, &batch, clock.now_unix())
            .await
            .unwrap()
    );
    clock.set(FIRST_OF_NOVEMBER);
    let (status, summary) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({}))).await;
    assert_eq!((status, &summary["overdue"]), (200, &json!(1)), "{summary}");
    // An operator suspends and resumes the payer; the debtor pays.
    let reason = json!({"reason": "KYC review"});
    assert_eq!(
        admin(&gateway, "POST", "/v1/accounts/payer/suspend", Some(reason))
            .await
            .0,
        200
    );
    assert_eq!(admin(&gateway, "POST", "/v1/accounts/payer/resume", None).await.0, 200);
    topup(&gateway, "debtor", "2.00", "d1").await;
    let late = ekyc_gateway::webhooks::billing_run_late(&gateway.app.store, "2026-10", clock.now_unix(), "test")
        .await
        .unwrap();
    assert!(late);
    let again = ekyc_gateway::webhooks::billing_run_late(&gateway.app.store, "2026-10", clock.now_unix(), "test")
        .await
        .unwrap();
    assert!(!again, "one billing.run_late per month");

    // Down: every event is attempted once, refused, and waits its first backoff.
    let events = until_attempted(&gateway, 1).await;
    let mut expected = vec![
        "account.reactivated", // debtor, arrears lifted by the top-up
        "account.reactivated", // payer, resumed
        "account.suspended",   // debtor, arrears
        "account.suspended",   // payer, manual
        "bill.issued",
        "bill.issued",
        "bill.overdue", // debtor's, at issue
        "bill.paid",    // payer's, at issue
        "bill.paid",    // debtor's, by the top-up
        "billing.run_late",
    ];
    let mut kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    kinds.sort();
    expected.sort();
    assert_eq!(kinds, expected, "{events:?}");
    for event in &events {
        assert_eq!(event["status"], "pending");
        assert!(event["last_error"].as_str().unwrap().contains("503"), "{event}");
        assert_eq!(
            unix_of(&event["next_attempt"]) - unix_of(&event["last_attempt"]),
            10,
            "first backoff: {event}"
        );
    }
    assert!(receiver.refused.load(Ordering::SeqCst) >= events.len() as u64);

    // Still down at the second attempt: the wait doubles.
    clock.advance(10);
    for event in until_attempted(&gateway, 2).await {
        assert_eq!(
            unix_of(&event["next_attempt"]) - unix_of(&event["last_attempt"]),
            20,
            "second backoff: {event}"
        );
    }

    // Back up: every event arrives, signed, and is marked delivered.
    receiver.up.store(true, Ordering::SeqCst);
    clock.advance(20);
    let delivered = poll_until("every event delivered", Duration::from_secs(20), || async {
        let events = outbox(&gateway, "?status=delivered").await;
        (events.len() == expected.len()).then_some(events)
    })
    .await;
    let arrived = receiver.events(clock.now_unix());
    let ids: BTreeSet<&str> = delivered.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, arrived.keys().map(String::as_str).collect(), "each event arrived");
    assert_eq!(types(&arrived), expected);
    let debtor_bill = arrived.values().find(|e| e["type"] == "bill.overdue").unwrap();
    assert_eq!(
        (
            &debtor_bill["data"]["account"],
            &debtor_bill["data"]["total"],
            &debtor_bill["created"]
        ),
        (&json!("debtor"), &json!("2.00"), &rfc3339(FIRST_OF_NOVEMBER))
    );
    assert!(outbox(&gateway, "?status=pending").await.is_empty());
    // The delivery metrics: every event delivered once, two refused rounds before.
    let metrics = gateway.metrics().await;
    let value = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        value("ekyc_gateway_webhook_events_delivered_total "),
        expected.len() as u64
    );
    assert!(value("ekyc_gateway_webhook_attempts_failed_total ") >= 2 * expected.len() as u64);
    assert_eq!(value("ekyc_gateway_webhook_events_given_up_total "), 0);
    poll_until("the pending gauge at 0", Duration::from_secs(20), || async {
        gateway
            .metrics()
            .await
            .contains("ekyc_gateway_webhook_events_pending 0\n")
            .then_some(())
    })
    .await;

    // An event whose endpoint stays down past the retry window is marked failed; an
    // operator's retry sends it again.
    receiver.up.store(false, Ordering::SeqCst);
    let reason = json!({"reason": "chargeback"});
    assert_eq!(
        admin(&gateway, "POST", "/v1/accounts/debtor/suspend", Some(reason))
            .await
            .0,
        200
    );
    let failing = poll_until("the new event attempted", Duration::from_secs(20), || async {
        outbox(&gateway, "?status=pending")
            .await
            .into_iter()
            .find(|e| e["attempts"].as_i64().unwrap() >= 1 && e["in_flight"] == false)
    })
    .await;
    clock.advance(24 * 3600);
    let id = failing["id"].as_str().unwrap().to_string();
    let failed = poll_until("the event failed", Duration::from_secs(20), || async {
        outbox(&gateway, "?status=failed").await.into_iter().next()
    })
    .await;
    assert_eq!(failed["id"], id.as_str());
    receiver.up.store(true, Ordering::SeqCst);
    let (status, retried) = admin(&gateway, "POST", &format!("/v1/webhooks/events/{id}/retry"), None).await;
    assert_eq!((status, &retried["status"]), (200, &json!("pending")), "{retried}");
    assert_eq!(retried["payload"]["type"], "account.suspended");
    poll_until("the retried event delivered", Duration::from_secs(20), || async {
        let (_, event) = admin(&gateway, "GET", &format!("/v1/webhooks/events/{id}"), None).await;
        (event["status"] == "delivered").then_some(())
    })
    .await;
    assert!(receiver.ids().contains(&id));
    assert!(
        gateway
            .metrics()
            .await
            .contains("ekyc_gateway_webhook_events_given_up_total 1\n"),
        "the event given up on is counted"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn receiver_down_then_back_gets_every_event_on_sqlite() {
    receiver_down_then_back(None).await;
}

#[tokio::test]
async fn receiver_down_then_back_gets_every_event_on_postgres() {
    let db = PgDatabase::create().await;
    receiver_down_then_back(Some(db.url())).await;
}

async fn lease(store: &Store) {
    let event = ekyc_gateway::webhooks::events::billing_run_late("2026-10", 1000, "lease test");
    assert!(store.emit_event(&event).await.unwrap());
    let first = store.claim_events("worker-a", 1000, 30, 10).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [event.id.as_str()]
    );
    assert!(
        store.claim_events("worker-b", 1010, 30, 10).await.unwrap().is_empty(),
        "leased to worker-a"
    );
    // worker-a died: once its lease is over, worker-b takes the event, and worker-a's
    // late outcome is not recorded.
    let taken = store.claim_events("worker-b", 1030, 30, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    let attempt = |status| ekyc_gateway::store::outbox::Attempt {
        status,
        next_attempt_at: 1031,
        error: None,
        delivered_to: &[],
    };
    assert!(
        !store
            .finish_event(&event.id, "worker-a", 1031, attempt("delivered"))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_event(&event.id, "worker-b", 1031, attempt("delivered"))
            .await
            .unwrap()
    );
    let done = store.event(&event.id).await.unwrap().unwrap();
    assert_eq!((done.status.as_str(), done.attempts), ("delivered", 1));
    assert!(store.claim_events("worker-c", 9999, 30, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn one_worker_at_a_time_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/billing.db", dir.path().display()))
        .await
        .unwrap();
    lease(&store).await;
}

#[tokio::test]
async fn one_worker_at_a_time_on_postgres() {
    let db = PgDatabase::create().await;
    lease(&Store::connect(&db.url()).await.unwrap()).await;
}

/// A gateway commits a suspension, cannot reach the endpoint, and is SIGKILLed; the
/// next process on the same store delivers the event.
#[tokio::test]
async fn event_of_a_killed_gateway_is_delivered_by_the_next() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = closed_port().await;
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n{}",
        sim.addr,
        webhooks_toml(&format!("http://{endpoint}/hooks")).replace(
            "initial_backoff_seconds = 10\nmax_backoff_seconds = 60",
            "initial_backoff_seconds = 1\nmax_backoff_seconds = 1"
        )
    );
    let mut env = process_env();
    env.push(("EKYC_WEBHOOK_SECRET", SECRET));
    let mut first = GatewayProcess::start_in(dir.path(), &config, &env).await;
    let (status, _) = admin_at(
        first.admin,
        "POST",
        "/v1/accounts",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = admin_at(
        first.admin,
        "POST",
        "/v1/accounts/acme/suspend",
        Some(json!({"reason": "fraud"})),
    )
    .await;
    assert_eq!(status, 200, "the suspension and its event are committed");
    poll_until("a failed attempt", Duration::from_secs(20), || async {
        let (_, body) = admin_at(first.admin, "GET", "/v1/webhooks/events", None).await;
        body["events"]
            .as_array()
            .and_then(|events| events.first())
            .filter(|e| e["attempts"].as_i64().unwrap_or(0) >= 1)
            .cloned()
    })
    .await;
    first.kill();

    let receiver = Receiver::start(TcpListener::bind(endpoint).await.unwrap(), true).await;
    let second = GatewayProcess::start_in(dir.path(), &config, &env).await;
    let now = || ekyc_gateway::clock::SystemClock.now_unix();
    let arrived = poll_until("the event at the receiver", Duration::from_secs(30), || async {
        let events = receiver.events(now());
        (!events.is_empty()).then_some(events)
    })
    .await;
    let event = arrived.values().next().unwrap();
    assert_eq!(
        (&event["type"], &event["data"]["account"], &event["data"]["reason"]),
        (&json!("account.suspended"), &json!("acme"), &json!("fraud"))
    );
    poll_until("delivered in the outbox", Duration::from_secs(20), || async {
        let (_, body) = admin_at(second.admin, "GET", "/v1/webhooks/events?status=delivered", None).await;
        (body["events"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    drop(second);
}

/// The Python check in docs/WEBHOOKS.md, run as printed on a signed delivery.
#[tokio::test]
async fn documented_python_recipe_verifies_a_delivery() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/WEBHOOKS.md")).unwrap();
    let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
    let recipe = &doc[start..start + doc[start..].find("```").unwrap()];
    let event = NewEvent {
        id: "evt_test".into(),
        kind: "bill.issued",
        created_at: 1,
        payload: r#"{"id":"evt_test","type":"bill.issued","created":1,"data":{}}"#.into(),
    };
    let now = ekyc_gateway::clock::SystemClock.now_unix();
    let header = ekyc_gateway::webhooks::sign::header_value(SECRET, now, event.payload.as_bytes());
    let script = format!(
        "{recipe}\nimport sys\nok = verify_webhook({SECRET:?}.encode(), {header:?}, {body:?}.encode())\n\
         bad = verify_webhook({SECRET:?}.encode(), {header:?}, {body:?}.encode() + b' ')\n\
         sys.exit(0 if ok and not bad else 1)\n",
        body = event.payload
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
