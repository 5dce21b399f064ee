//! Billing end to end on an injected clock, on PostgreSQL and on SQLite: usage through
//! the gateway in October, the run on 1 November, a paid account keeps working, an
//! account without balance goes overdue and is refused with
//! `UnauthorizedOperation.Arrears`, a top-up brings it back, a re-run changes nothing,
//! late usage lands on the next bill, and bills and the ledger cannot be edited.

mod common;

use common::*;
use ekyc_gateway::clock::{Clock, ManualClock};
use ekyc_gateway::store::{UsageBatch, UsageRow};
use ekyc_gateway::tc3::Signer;
use serde_json::{Value, json};
use std::sync::Arc;

/// 2026-10-15 00:00, 2026-11-01 00:30 and 2026-12-01 00:30 in UTC+8.
const MID_OCTOBER: i64 = 1_791_993_600;
const FIRST_OF_NOVEMBER: i64 = 1_793_462_400 + 1800;
const FIRST_OF_DECEMBER: i64 = 1_796_054_400 + 1800;

const PRICES: &str = r#"
[billing]
currency = "USD"
total_rounding = "0.01"
[actions.LivenessCompare]
[[actions.LivenessCompare.prices]]
from = "2026-01"
mode = "graduated"
tiers = [ { up_to = 2, unit = "1.00" }, { unit = "0.50" } ]
[actions.DetectAuth]
[[actions.DetectAuth.prices]]
unit = "0.25"
[actions.GetFaceIdTokenIntl]
billable = false
"#;

async fn call_as(gateway: &GatewayHandle, clock: &ManualClock, signer: &Signer, action: &str) -> Value {
    let request = signed_call_at(
        &gateway.url(),
        &gateway.data.to_string(),
        action,
        b"{}",
        signer,
        clock.now_unix(),
    );
    send(&http1_client(), request).await
}

async fn tenant(gateway: &GatewayHandle, id: &str) -> Signer {
    admin(gateway, "POST", "/v1/accounts", Some(json!({"id": id, "name": id}))).await;
    admin(gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
    let (_, c) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    Signer::new(
        c["secret_id"].as_str().unwrap(),
        c["secret_key"].as_str().unwrap(),
        "faceid",
    )
}

async fn topup(gateway: &GatewayHandle, id: &str, amount: &str, key: &str) -> (u16, Value) {
    admin(
        gateway,
        "POST",
        &format!("/v1/accounts/{id}/topups"),
        Some(json!({"amount": amount, "idempotency_key": key})),
    )
    .await
}

async fn lifecycle(store_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let mut config = gateway_config(&format!("http://{}", sim.addr), PRICES);
    if let Some(url) = store_url {
        config.store_url = url;
    }
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    let payer = tenant(&gateway, "payer").await;
    let debtor = tenant(&gateway, "debtor").await;
    assert_eq!(topup(&gateway, "payer", "10.00", "p1").await.0, 201);

    // October: payer 3 LivenessCompare (1.00 + 1.00 + 0.50) and 2 DetectAuth (0.50);
    // debtor 1 LivenessCompare (1.00). A free action costs nothing.
    for action in [
        "LivenessCompare",
        "LivenessCompare",
        "LivenessCompare",
        "DetectAuth",
        "DetectAuth",
        "GetFaceIdTokenIntl",
    ] {
        let answer = call_as(&gateway, &clock, &payer, action).await;
        assert!(answer.get("Error").is_none(), "{action}: {answer}");
    }
    assert!(
        call_as(&gateway, &clock, &debtor, "LivenessCompare")
            .await
            .get("Error")
            .is_none()
    );
    gateway.app.flush_usage().await.unwrap();

    let (status, refused) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-10"}))).await;
    assert_eq!(status, 400, "October is not over: {refused}");

    clock.set(FIRST_OF_NOVEMBER);
    let (status, summary) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({}))).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["month"], "2026-10", "default: the previous month");
    assert_eq!(
        (
            &summary["bills_created"],
            &summary["paid"],
            &summary["overdue"],
            &summary["arrears_set"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(1)),
        "{summary}"
    );
    assert_eq!(summary["total"], json!(4_000_000));

    let (_, bills) = admin(&gateway, "GET", "/v1/accounts/payer/bills", None).await;
    let bill = &bills["bills"][0];
    assert_eq!(
        (&bill["total"], &bill["status"]),
        (&json!("3.00"), &json!("paid")),
        "{bill}"
    );
    let liveness = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["action"] == "LivenessCompare")
        .unwrap();
    assert_eq!(liveness["tiers"].as_array().unwrap().len(), 2, "graduated: two tiers");
    assert_eq!(liveness["amount_text"], "2.50");
    assert_eq!(bills["balance"], "7.00");

    // The payer keeps working; the debtor is refused, but can read its bills.
    assert!(
        call_as(&gateway, &clock, &payer, "DetectAuth")
            .await
            .get("Error")
            .is_none()
    );
    let refused = call_as(&gateway, &clock, &debtor, "DetectAuth").await;
    assert_eq!(error_code(&refused), Some("UnauthorizedOperation.Arrears"), "{refused}");
    let own = call_as(&gateway, &clock, &debtor, "DescribeBills").await;
    assert_eq!(own["Bills"][0]["Status"], "Overdue", "{own}");
    assert_eq!(own["Balance"], "-1.00");

    // A second run changes nothing.
    let (_, again) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-10"}))).await;
    assert_eq!(
        (&again["bills_created"], &again["already_billed"]),
        (&json!(0), &json!(2)),
        "{again}"
    );
    let (_, balance) = admin(&gateway, "GET", "/v1/accounts/payer/balance", None).await;
    assert_eq!(balance["balance"], "7.00", "no second deduction");

    // Top-ups: part of the debt keeps the flag; the rest lifts it; a repeated key is one payment.
    let (_, part) = topup(&gateway, "debtor", "0.40", "d1").await;
    assert_eq!(part["state"]["enabled"], false, "{part}");
    let (status, rest) = topup(&gateway, "debtor", "0.60", "d2").await;
    assert_eq!((status, &rest["balance"]), (201, &json!("0.00")), "{rest}");
    assert_eq!(rest["state"]["enabled"], true, "{rest}");
    let (status, repeated) = topup(&gateway, "debtor", "0.60", "d2").await;
    assert_eq!(
        (status, &repeated["duplicate"], &repeated["balance"]),
        (200, &json!(true), &json!("0.00"))
    );
    let (status, _) = topup(&gateway, "debtor", "9.99", "d2").await;
    assert_eq!(status, 409, "same key, another amount");
    assert!(
        call_as(&gateway, &clock, &debtor, "DetectAuth")
            .await
            .get("Error")
            .is_none()
    );
    let own = call_as(&gateway, &clock, &debtor, "DescribeBills").await;
    assert_eq!(own["Bills"][0]["Status"], "Paid", "{own}");

    // Late usage: 2 more October calls reach the store after October was billed. They
    // continue October's tiers (0.50 each) on the December run's November bill.
    let late = UsageBatch {
        instance_id: "late-gateway".into(),
        seq: 1,
        rows: vec![UsageRow {
            account_id: "payer".into(),
            action: "LivenessCompare".into(),
            month: "2026-10".into(),
            calls: 2,
        }],
    };
    assert!(
        apply_usage_batch(&gateway.app.store, &late, clock.now_unix())
            .await
            .unwrap()
    );
    gateway.app.flush_usage().await.unwrap(); // November's DetectAuth call
    clock.set(FIRST_OF_DECEMBER);
    let (_, december) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({}))).await;
    assert_eq!(december["month"], "2026-11");
    let (_, bills) = admin(&gateway, "GET", "/v1/accounts/payer/bills", None).await;
    let november = &bills["bills"][1];
    assert_eq!(november["month"], "2026-11");
    let late_line = november["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "late_usage")
        .unwrap_or_else(|| panic!("no late line: {november}"));
    assert_eq!(
        (
            &late_line["month"],
            &late_line["calls"],
            &late_line["previously_billed"],
            &late_line["amount_text"]
        ),
        (&json!("2026-10"), &json!(2), &json!(3), &json!("1.00"))
    );
    assert_eq!(november["total"], "1.25", "late 1.00 + one DetectAuth 0.25");
    let (_, again) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-11"}))).await;
    assert_eq!(again["bills_created"], 0, "late usage is billed once");

    // Corrections are new ledger entries.
    let adjust = json!({"amount": "-0.25", "reason": "manual correction", "idempotency_key": "adj-1"});
    let (status, adjusted) = admin(&gateway, "POST", "/v1/accounts/payer/adjustments", Some(adjust.clone())).await;
    assert_eq!((status, &adjusted["balance"]), (201, &json!("5.50")), "{adjusted}");
    let (status, _) = admin(&gateway, "POST", "/v1/accounts/payer/adjustments", Some(adjust)).await;
    assert_eq!(status, 200, "same key: recorded once");
    let (_, balance) = admin(&gateway, "GET", "/v1/accounts/payer/balance", None).await;
    assert_eq!(balance["ledger"][0]["kind"], "adjustment");

    // No refunds: the store refuses edits and deletions.
    for sql in [
        "UPDATE bills SET total = 0",
        "DELETE FROM bills",
        "UPDATE ledger SET amount = 0",
        "DELETE FROM ledger",
        "DELETE FROM billed_usage",
    ] {
        assert!(execute_raw(&gateway.app, sql).await.is_err(), "{sql} must be refused");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn billing_lifecycle_on_sqlite() {
    lifecycle(None).await;
}

#[tokio::test]
async fn billing_lifecycle_on_postgres() {
    let db = PgDatabase::create().await;
    lifecycle(Some(db.url())).await;
}

/// The demo walkthrough of docs/BILLING.md, as a user types it: `demo`, `billing run`
/// (embedded store under ./data), the second demo account refused for arrears, `admin
/// topup`, served again.
#[tokio::test]
async fn demo_walkthrough_bill_suspend_topup_reactivate() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let (data, admin_addr) = (closed_port().await, closed_port().await);
    let binary = env!("CARGO_BIN_EXE_ekyc-gateway");
    let mut demo = Command::new(binary)
        .args([
            "demo",
            "--listen",
            &data.to_string(),
            "--admin-listen",
            &admin_addr.to_string(),
        ])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ChildLogs::capture(&mut demo).wait_for("ekyc-gateway serving").await;
    let call = || async move {
        let request = http::Request::post(format!("http://{data}/"))
            .header(
                "authorization",
                format!("Bearer {}", ekyc_gateway::demo::DEMO_DEBTOR_API_KEY),
            )
            .header("x-tc-action", "IdCardVerification")
            .header("x-tc-version", "2018-03-01")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        error_code(&send(&http1_client(), request).await).map(str::to_string)
    };
    assert_eq!(call().await, None, "served before the bill");

    let run = Command::new(binary)
        .args(["billing", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        stdout.contains("1 bills created") && stdout.contains("1 overdue"),
        "{stdout}"
    );
    poll_until(
        "the arrears to reach the gateway",
        std::time::Duration::from_secs(10),
        || async { (call().await.as_deref() == Some("UnauthorizedOperation.Arrears")).then_some(()) },
    )
    .await;

    let again = Command::new(binary)
        .args(["billing", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 bills created"));

    let topup = Command::new(binary)
        .args(["admin", "topup", ekyc_gateway::demo::DEMO_DEBTOR, "4.20"])
        .env("EKYC_ADMIN_URL", format!("http://{admin_addr}"))
        .env("EKYC_ADMIN_TOKEN", ekyc_gateway::demo::DEMO_ADMIN_TOKEN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&topup.stdout);
    assert!(
        topup.status.success() && out.contains("enabled"),
        "{out}{}",
        String::from_utf8_lossy(&topup.stderr)
    );
    poll_until(
        "the account to be served again",
        std::time::Duration::from_secs(10),
        || async { call().await.is_none().then_some(()) },
    )
    .await;

    let export = Command::new(binary)
        .args(["billing", "export", "--month"])
        .arg(stdout.split_whitespace().nth(1).unwrap().trim_end_matches(':'))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&export.stdout);
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.contains("demo-nobalance") && l.contains(",42,4.20,4.20,")),
        "{csv}"
    );
    let _ = demo.kill();
    let _ = demo.wait();
}

/// Two runs at once bill once; a held lease refuses a run; a lease left by a dead run
/// (expired) is taken over.
#[tokio::test]
async fn concurrent_runs_bill_once_and_the_lock_holds() {
    use ekyc_gateway::billing::job::{self, BillingError, RunRequest};
    use ekyc_gateway::state::StoreOnlyPublisher;
    let db = PgDatabase::create().await;
    let store = ekyc_gateway::store::Store::connect(&db.url()).await.unwrap();
    let now = FIRST_OF_NOVEMBER;
    let mut rows = Vec::new();
    for i in 0..300 {
        let account = format!("acct-{i:03}");
        store
            .create_account(
                &ekyc_gateway::store::records::AccountRecord::new(&account, &account, 0),
                "test",
                0,
            )
            .await
            .unwrap();
        rows.push(UsageRow {
            account_id: account,
            action: "DetectAuth".into(),
            month: "2026-10".into(),
            calls: 3,
        });
    }
    apply_usage_batch(
        &store,
        &UsageBatch {
            instance_id: "t".into(),
            seq: 1,
            rows,
        },
        now,
    )
    .await
    .unwrap();
    let config = gateway_config("http://127.0.0.1:9", PRICES);
    let request = RunRequest {
        month: ekyc_gateway::meter::Month::parse("2026-10").unwrap(),
        now,
        dry_run: false,
        actor: "test".into(),
    };
    assert!(store.try_lock_billing("someone-else", now, 3600).await.unwrap());
    let locked = job::run(
        &store,
        &config.prices,
        &StoreOnlyPublisher,
        8 * 3600,
        request.clone(),
        &mut |_, _| {},
    )
    .await;
    assert!(matches!(locked, Err(BillingError::Locked)), "{locked:?}");
    store.unlock_billing("someone-else").await.unwrap();
    assert!(store.try_lock_billing("dead-run", now - 7200, 3600).await.unwrap());

    let store = Arc::new(store);
    let run = |store: Arc<ekyc_gateway::store::Store>| {
        let (prices, request) = (config.prices.clone(), request.clone());
        tokio::spawn(
            async move { job::run(&store, &prices, &StoreOnlyPublisher, 8 * 3600, request, &mut |_, _| {}).await },
        )
    };
    let (a, b) = (run(store.clone()), run(store.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let created: u64 = [&a, &b]
        .iter()
        .map(|r| match r {
            Ok(summary) => summary.bills_created,
            Err(BillingError::Locked) => 0,
            Err(e) => panic!("{e}"),
        })
        .sum();
    assert_eq!(created, 300, "each account billed exactly once: {a:?} {b:?}");
    let mut charged = 0;
    for i in 0..300 {
        let ledger = store.ledger(&format!("acct-{i:03}")).await.unwrap();
        assert_eq!(ledger.len(), 1, "one charge");
        charged += ledger[0].amount;
    }
    assert_eq!(charged, -300 * 750_000, "3 DetectAuth at 0.25 each");
}
