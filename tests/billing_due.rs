//! Due dates, grace, reminders and low balances end to end, on the injected clock, on
//! SQLite and PostgreSQL: with no grace a bill is overdue at issue as it always was;
//! with a grace period it is open at issue, the account keeps working, reminders come
//! on their days, and once the due date passes unpaid the gateway's own due sweep
//! suspends the account with no request and tells `bill.overdue`; a bill paid before its
//! due date is never overdue. Two gateways sweeping one store raise each reminder once.
//! `balance.low` comes once per crossing of the threshold and again only after a
//! top-up. Nothing here waits on the calendar: every clock is pinned and moved.

mod common;

use common::*;
use ekyc_gateway::billing::due::DueSweep;
use ekyc_gateway::clock::{Clock, ManualClock, rfc3339};
use ekyc_gateway::store::outbox::EventRecord;
use ekyc_gateway::store::{UsageBatch, UsageRow};
use ekyc_gateway::tc3::Signer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// 2026-10-15 00:00 and 2026-11-01 00:30 in UTC+8 (the default billing time zone).
const MID_OCTOBER: i64 = 1_791_993_600;
const FIRST_OF_NOVEMBER: i64 = 1_793_462_400 + 1800;
const DAY: i64 = 86_400;

fn toml(billing: &str) -> String {
    format!(
        r#"
[billing]
currency = "USD"
due_check_interval_ms = 20
{billing}
[actions.LivenessCompare]
[[actions.LivenessCompare.prices]]
unit = "1.00"
"#
    )
}

async fn gateway(sim: &SimHandle, billing: &str, store_url: Option<String>, clock: &ManualClock) -> GatewayHandle {
    let mut config = gateway_config(&format!("http://{}", sim.addr), &toml(billing));
    if let Some(url) = store_url {
        config.store_url = url;
    }
    GatewayHandle::start_with(config, Arc::new(clock.clone())).await
}

/// `calls` of LivenessCompare in `month` for each account, flushed as batch `seq`.
async fn usage(gateway: &GatewayHandle, accounts: &[&str], month: &str, calls: u64, seq: u64, now: i64) {
    let batch = UsageBatch {
        instance_id: "test".into(),
        seq,
        rows: accounts
            .iter()
            .map(|id| UsageRow {
                account_id: id.to_string(),
                action: "LivenessCompare".into(),
                month: month.into(),
                calls,
            })
            .collect(),
    };
    assert!(apply_usage_batch(&gateway.app.store, &batch, now).await.unwrap());
}

async fn bill_october(gateway: &GatewayHandle) -> Value {
    let (status, summary) = admin(gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-10"}))).await;
    assert_eq!(status, 200, "{summary}");
    summary
}

async fn bills(gateway: &GatewayHandle, id: &str) -> Vec<Value> {
    let (status, body) = admin(gateway, "GET", &format!("/v1/accounts/{id}/bills"), None).await;
    assert_eq!(status, 200, "{body}");
    body["bills"].as_array().unwrap().clone()
}

async fn events(gateway: &GatewayHandle, kind: &str) -> Vec<(EventRecord, Value)> {
    let mut found: Vec<(EventRecord, Value)> = gateway
        .app
        .store
        .list_events(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| {
            let body: Value = serde_json::from_str(&e.payload).unwrap();
            (e, body)
        })
        .collect();
    found.sort_by_key(|(e, _)| (e.created_at, e.id.clone()));
    found
}

async fn arrears(gateway: &GatewayHandle, id: &str) -> Option<String> {
    let account = gateway.app.store.get_account(id).await.unwrap().unwrap();
    account.arrears.map(|a| a.reason)
}

async fn sweep(gateway: &GatewayHandle) {
    DueSweep::new(gateway.app.clone()).sweep().await.unwrap();
}

/// An activated account with a credential of its own, made on the gateway's clock.
async fn tenant(gateway: &GatewayHandle, id: &str) -> Signer {
    account(gateway, id).await;
    let (status, c) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    assert_eq!(status, 201, "{c}");
    Signer::new(
        c["secret_id"].as_str().unwrap(),
        c["secret_key"].as_str().unwrap(),
        "faceid",
    )
}

/// A call signed by `signer` at the gateway's time.
async fn call_as(gateway: &GatewayHandle, signer: &Signer, now: i64) -> Value {
    let request = signed_call_at(
        &gateway.url(),
        &gateway.data.to_string(),
        "LivenessCompare",
        b"{}",
        signer,
        now,
    );
    send(&http1_client(), request).await
}

/// No grace: an unpaid bill is due when issued, overdue and suspended at once.
async fn without_grace(store_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim = SimHandle::start(|_| {}).await;
    let gateway = gateway(&sim, "", store_url, &clock).await;
    usage(&gateway, &[CLIENT_ACCOUNT], "2026-10", 2, 1, clock.now_unix()).await;
    clock.set(FIRST_OF_NOVEMBER);
    let summary = bill_october(&gateway).await;
    assert_eq!(
        (&summary["overdue"], &summary["open"], &summary["arrears_set"]),
        (&json!(1), &json!(0), &json!(1)),
        "{summary}"
    );
    let bill = &bills(&gateway, CLIENT_ACCOUNT).await[0];
    assert_eq!(
        (&bill["status"], &bill["due_at"]),
        (&json!("overdue"), &bill["issued_at"])
    );
    assert_eq!(
        arrears(&gateway, CLIENT_ACCOUNT).await.as_deref(),
        Some("overdue bills: 2.00 owed")
    );
    let overdue = events(&gateway, "bill.overdue").await;
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].0.created_at, FIRST_OF_NOVEMBER, "told at issue");
    gateway.shutdown().await;
}

#[tokio::test]
async fn without_grace_a_bill_is_overdue_at_issue_on_sqlite() {
    without_grace(None).await;
}

#[tokio::test]
async fn without_grace_a_bill_is_overdue_at_issue_on_postgres() {
    let db = PgDatabase::create().await;
    without_grace(Some(db.url())).await;
}

/// Three days' grace, reminders two days and one day before: the tenant does not pay,
/// `early` pays before the due date.
async fn with_grace(store_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    // The simulator checks the forwarded signature on the same clock.
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let gateway = gateway(&sim, "grace_days = 3\nreminder_days = [1, 2]", store_url, &clock).await;
    let late = tenant(&gateway, "late").await;
    account(&gateway, "early").await;
    usage(&gateway, &["late", "early"], "2026-10", 2, 1, clock.now_unix()).await;
    clock.set(FIRST_OF_NOVEMBER);
    let summary = bill_october(&gateway).await;
    assert_eq!(
        (&summary["overdue"], &summary["open"], &summary["arrears_set"]),
        (&json!(0), &json!(2), &json!(0)),
        "{summary}"
    );
    let bill = bills(&gateway, "late").await[0].clone();
    let due_at = FIRST_OF_NOVEMBER + 3 * DAY;
    assert_eq!((&bill["status"], &bill["due_at"]), (&json!("open"), &rfc3339(due_at)));
    assert_eq!(
        arrears(&gateway, "late").await,
        None,
        "not suspended before the due date"
    );
    let answer = call_as(&gateway, &late, clock.now_unix()).await;
    assert_eq!(error_code(&answer), None, "the tenant still calls: {answer}");
    let issued = events(&gateway, "bill.issued").await;
    assert!(
        issued.iter().all(|(_, body)| body["data"]["status"] == "open"),
        "{issued:?}"
    );
    assert!(events(&gateway, "bill.overdue").await.is_empty());

    // `early` pays on the 1st: paid, never overdue.
    topup(&gateway, "early", "2.00", "e1").await;
    assert_eq!(bills(&gateway, "early").await[0]["status"], "paid");

    // Two days before the due date, then one: a reminder each, for the unpaid bill only.
    clock.set(due_at - 2 * DAY + 60);
    let first = poll_until("the 2-day reminder", Duration::from_secs(20), || async {
        let reminders = events(&gateway, "bill.reminder").await;
        (!reminders.is_empty()).then_some(reminders)
    })
    .await;
    sweep(&gateway).await;
    assert_eq!(
        events(&gateway, "bill.reminder").await.len(),
        1,
        "once per bill and day"
    );
    let body = &first[0].1;
    assert_eq!(
        (
            &body["data"]["account"],
            &body["data"]["days_before"],
            &body["data"]["amount_due"],
            &body["data"]["due_at"]
        ),
        (&json!("late"), &json!(2), &json!("2.00"), &rfc3339(due_at))
    );
    clock.set(due_at - DAY + 60);
    poll_until("the 1-day reminder", Duration::from_secs(20), || async {
        (events(&gateway, "bill.reminder").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(arrears(&gateway, "late").await, None);

    // The due date passes unpaid: the sweep suspends, with no request, and tells it.
    clock.set(due_at + 60);
    let reason = poll_until("the sweep suspends the tenant", Duration::from_secs(20), || async {
        arrears(&gateway, "late").await
    })
    .await;
    assert_eq!(reason, "overdue bills: 2.00 owed");
    let overdue = events(&gateway, "bill.overdue").await;
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    assert_eq!(
        (&overdue[0].1["data"]["account"], &overdue[0].1["data"]["amount_due"]),
        (&json!("late"), &json!("2.00"))
    );
    let suspended = events(&gateway, "account.suspended").await;
    assert_eq!(suspended.len(), 1);
    assert_eq!(bills(&gateway, "late").await[0]["status"], "overdue");
    poll_until("the gateway refuses the tenant", Duration::from_secs(20), || async {
        let answer = call_as(&gateway, &late, clock.now_unix()).await;
        (error_code(&answer) == Some("UnauthorizedOperation.Arrears")).then_some(())
    })
    .await;
    // Every reminder and the overdue notice once, whatever the sweeps that follow.
    sweep(&gateway).await;
    assert_eq!(events(&gateway, "bill.reminder").await.len(), 2);
    assert_eq!(events(&gateway, "bill.overdue").await.len(), 1);
    assert_eq!(arrears(&gateway, "early").await, None, "paid before the due date");

    // Paying lifts it at once.
    let paid = topup(&gateway, "late", "2.00", "t1").await;
    assert_eq!(paid["state"]["enabled"], true, "{paid}");
    assert_eq!(bills(&gateway, "late").await[0]["status"], "paid");
    gateway.shutdown().await;
}

#[tokio::test]
async fn with_grace_the_sweep_suspends_at_the_due_date_on_sqlite() {
    with_grace(None).await;
}

#[tokio::test]
async fn with_grace_the_sweep_suspends_at_the_due_date_on_postgres() {
    let db = PgDatabase::create().await;
    with_grace(Some(db.url())).await;
}

/// Two gateways, each on its own clock, sweep one store: one reminder per bill and day,
/// one `bill.overdue`, one suspension.
async fn two_gateways(store_url: String) {
    let (clock_a, clock_b) = (ManualClock::new(MID_OCTOBER), ManualClock::new(MID_OCTOBER));
    let sim = SimHandle::start(|_| {}).await;
    let billing = "grace_days = 5\nreminder_days = [3, 1]";
    let a = gateway(&sim, billing, Some(store_url.clone()), &clock_a).await;
    let b = gateway(&sim, billing, Some(store_url), &clock_b).await;
    usage(&a, &[CLIENT_ACCOUNT], "2026-10", 3, 1, MID_OCTOBER).await;
    clock_a.set(FIRST_OF_NOVEMBER);
    clock_b.set(FIRST_OF_NOVEMBER);
    bill_october(&a).await;
    let due_at = FIRST_OF_NOVEMBER + 5 * DAY;
    for (at, reminders) in [(due_at - 3 * DAY, 1), (due_at - DAY, 2)] {
        clock_a.set(at);
        clock_b.set(at);
        for _ in 0..3 {
            tokio::join!(sweep(&a), sweep(&b));
        }
        let found = events(&a, "bill.reminder").await;
        assert_eq!(found.len(), reminders, "{found:?}");
    }
    clock_a.set(due_at);
    clock_b.set(due_at);
    for _ in 0..3 {
        tokio::join!(sweep(&a), sweep(&b));
    }
    assert_eq!(events(&a, "bill.overdue").await.len(), 1);
    assert_eq!(events(&a, "account.suspended").await.len(), 1);
    assert_eq!(
        arrears(&b, CLIENT_ACCOUNT).await.as_deref(),
        Some("overdue bills: 3.00 owed")
    );
    let days: Vec<Value> = events(&a, "bill.reminder")
        .await
        .iter()
        .map(|(_, body)| body["data"]["days_before"].clone())
        .collect();
    assert_eq!(days, [json!(3), json!(1)]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn two_gateways_remind_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    two_gateways(format!("sqlite://{}/billing.db", dir.path().display())).await;
}

#[tokio::test]
async fn two_gateways_remind_once_on_postgres() {
    let db = PgDatabase::create().await;
    two_gateways(db.url()).await;
}

/// `balance.low` once per crossing, re-armed by a top-up; the outbox gauges count them.
async fn balance_low(store_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim = SimHandle::start(|_| {}).await;
    let gateway = gateway(&sim, "balance_low_threshold = \"5.00\"", store_url, &clock).await;
    account(&gateway, "never-funded").await;
    let first = topup(&gateway, CLIENT_ACCOUNT, "10.00", "t1").await;
    sweep(&gateway).await;
    assert!(events(&gateway, "balance.low").await.is_empty(), "10.00 available");
    // 6 calls at 1.00 not yet billed: 4.00 available, below 5.00.
    usage(&gateway, &[CLIENT_ACCOUNT], "2026-10", 6, 1, clock.now_unix()).await;
    let low = poll_until("balance.low", Duration::from_secs(20), || async {
        let low = events(&gateway, "balance.low").await;
        (!low.is_empty()).then_some(low)
    })
    .await;
    assert_eq!(
        (
            &low[0].1["data"]["account"],
            &low[0].1["data"]["available"],
            &low[0].1["data"]["unbilled"],
            &low[0].1["data"]["funded_by"]
        ),
        (
            &json!(CLIENT_ACCOUNT),
            &json!("4.00"),
            &json!("6.00"),
            &first["ledger_id"]
        )
    );
    usage(&gateway, &[CLIENT_ACCOUNT], "2026-10", 1, 2, clock.now_unix()).await;
    sweep(&gateway).await;
    assert_eq!(events(&gateway, "balance.low").await.len(), 1, "once per crossing");
    // A top-up lifts it above the threshold: nothing new; falling again: a new notice.
    let second = topup(&gateway, CLIENT_ACCOUNT, "10.00", "t2").await;
    sweep(&gateway).await;
    assert_eq!(events(&gateway, "balance.low").await.len(), 1, "13.00 available");
    usage(&gateway, &[CLIENT_ACCOUNT], "2026-10", 10, 3, clock.now_unix()).await;
    sweep(&gateway).await;
    let low = events(&gateway, "balance.low").await;
    assert_eq!(low.len(), 2, "re-armed by the top-up: {low:?}");
    assert_eq!(
        (&low[1].1["data"]["available"], &low[1].1["data"]["funded_by"]),
        (&json!("3.00"), &second["ledger_id"])
    );
    assert!(
        low.iter().all(|(_, body)| body["data"]["account"] == CLIENT_ACCOUNT),
        "an account never funded gets none"
    );
    // No endpoint configured: the events wait in the outbox, and the gauge says so.
    let pending = gateway.app.store.pending_events().await.unwrap().0;
    assert!(pending >= 2);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!("ekyc_gateway_webhook_events_pending {pending}")),
        "{metrics}"
    );
    assert!(metrics.contains("ekyc_gateway_webhook_oldest_pending_seconds "));
    gateway.shutdown().await;
}

#[tokio::test]
async fn balance_low_once_per_crossing_on_sqlite() {
    balance_low(None).await;
}

#[tokio::test]
async fn balance_low_once_per_crossing_on_postgres() {
    let db = PgDatabase::create().await;
    balance_low(Some(db.url())).await;
}
