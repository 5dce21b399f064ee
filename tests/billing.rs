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
    call_as_with(gateway, clock, signer, action, "{}").await
}

async fn call_as_with(
    gateway: &GatewayHandle,
    clock: &ManualClock,
    signer: &Signer,
    action: &str,
    body: &str,
) -> Value {
    let request = signed_call_at(
        &gateway.url(),
        &gateway.data.to_string(),
        action,
        body.as_bytes(),
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

/// `store_url`: the gateway's store (default SQLite); `owner_url`: the schema owner's,
/// where the gateway runs as a role of its own.
async fn lifecycle(store_url: Option<String>, owner_url: Option<String>) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let mut config = gateway_config(&format!("http://{}", sim.addr), PRICES);
    if let Some(url) = store_url {
        config.store_url = url;
    }
    config.store_migrate_url = owner_url.clone();
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
    // The price list, before the flush: were it billed, the bills below would say so.
    let list = call_as(&gateway, &clock, &payer, "DescribePriceList").await;
    assert_eq!(
        (&list["Month"], &list["Currency"]),
        (&json!("2026-10"), &json!("USD")),
        "{list}"
    );
    assert_eq!(
        list["PriceList"],
        json!([
            {"Action": "DetectAuth", "Billable": true, "PricingMode": "Flat", "EffectiveFrom": null,
             "Tiers": [{"FromCall": 1, "ToCall": null, "UnitPrice": "0.25"}]},
            {"Action": "GetFaceIdTokenIntl", "Billable": false, "PricingMode": "Free", "EffectiveFrom": null, "Tiers": []},
            {"Action": "LivenessCompare", "Billable": true, "PricingMode": "Graduated", "EffectiveFrom": "2026-01",
             "Tiers": [{"FromCall": 1, "ToCall": 2, "UnitPrice": "1.00"}, {"FromCall": 3, "ToCall": null, "UnitPrice": "0.50"}]},
        ]),
        "{list}"
    );
    let before = call_as_with(&gateway, &clock, &payer, "DescribePriceList", r#"{"Month":"2025-12"}"#).await;
    assert_eq!(
        before["PriceList"][2]["PricingMode"],
        Value::Null,
        "no LivenessCompare price yet: {before}"
    );
    let bad = call_as_with(&gateway, &clock, &payer, "DescribePriceList", r#"{"Month":"Dec"}"#).await;
    assert_eq!(error_code(&bad), Some("InvalidParameter"), "{bad}");
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
    assert_eq!(summary["total"], json!("4.00"));

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
    assert_eq!(liveness["amount"], "2.50");
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
    // Each line: calls, the price (mode, tiers, unit prices) and the amount.
    let own = call_as(&gateway, &clock, &payer, "DescribeBills").await;
    let bill = &own["Bills"][0];
    assert_eq!(
        (&bill["Subtotal"], &bill["Total"]),
        (&json!("3.00"), &json!("3.00")),
        "{bill}"
    );
    assert_eq!(
        bill["Lines"],
        json!([
            {"Action": "DetectAuth", "Month": "2026-10", "Kind": "Usage", "Calls": 2, "PreviouslyBilledCalls": 0,
             "PricingMode": "Flat", "EffectiveFrom": null, "UnitPrice": "0.25",
             "Tiers": [{"FromCall": 1, "ToCall": 2, "Calls": 2, "UnitPrice": "0.25", "Amount": "0.50"}], "Amount": "0.50"},
            {"Action": "LivenessCompare", "Month": "2026-10", "Kind": "Usage", "Calls": 3, "PreviouslyBilledCalls": 0,
             "PricingMode": "Graduated", "EffectiveFrom": "2026-01", "UnitPrice": null,
             "Tiers": [{"FromCall": 1, "ToCall": 2, "Calls": 2, "UnitPrice": "1.00", "Amount": "2.00"},
                       {"FromCall": 3, "ToCall": 3, "Calls": 1, "UnitPrice": "0.50", "Amount": "0.50"}],
             "Amount": "2.50"},
        ]),
        "{bill}"
    );

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
    assert_eq!(
        part["state"]["suspensions"][0]["reason"], "overdue bills: 0.60 owed",
        "the reason follows the amount owed: {part}"
    );
    let own = call_as(&gateway, &clock, &debtor, "DescribeServiceStatus").await;
    assert!(own.to_string().contains("overdue bills: 0.60 owed"), "{own}");
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
            &late_line["amount"]
        ),
        (&json!("2026-10"), &json!(2), &json!(3), &json!("1.00"))
    );
    assert_eq!(november["total"], "1.25", "late 1.00 + one DetectAuth 0.25");
    // The tenant's line: the late calls, the ones billed before, October's tiers.
    let own = call_as(&gateway, &clock, &payer, "DescribeBills").await;
    let late = own["Bills"][0]["Lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["Kind"] == "LateUsage")
        .unwrap_or_else(|| panic!("no late line: {own}"))
        .clone();
    assert_eq!(
        (
            &late["Month"],
            &late["Calls"],
            &late["PreviouslyBilledCalls"],
            &late["UnitPrice"],
            &late["Amount"]
        ),
        (&json!("2026-10"), &json!(2), &json!(3), &Value::Null, &json!("1.00")),
        "{late}"
    );
    assert_eq!(
        late["Tiers"][1]["ToCall"], 5,
        "the month's tiers, every call so far: {late}"
    );
    let (_, again) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-11"}))).await;
    assert_eq!(again["bills_created"], 0, "late usage is billed once");

    // Credits: positive, with a reason, recorded once per key. Nothing moves money out.
    for (amount, why) in [("-0.25", "a refund"), ("0", "zero"), ("0.00", "zero")] {
        let body = json!({"amount": amount, "reason": "refund of unused prepayment", "idempotency_key": why});
        let (status, refused) = admin(&gateway, "POST", "/v1/accounts/payer/credits", Some(body)).await;
        assert_eq!(status, 400, "{amount}: {refused}");
        assert!(refused.to_string().contains("positive"), "{refused}");
    }
    let old_path = json!({"amount": "-50.00", "reason": "refund", "idempotency_key": "r"});
    let (status, _) = admin(&gateway, "POST", "/v1/accounts/payer/adjustments", Some(old_path)).await;
    assert_eq!(status, 404, "no endpoint takes a debit");
    let credit = json!({"amount": "0.25", "reason": "goodwill", "idempotency_key": "c-1"});
    let (status, credited) = admin(&gateway, "POST", "/v1/accounts/payer/credits", Some(credit.clone())).await;
    assert_eq!((status, &credited["balance"]), (201, &json!("6.00")), "{credited}");
    let (status, again) = admin(&gateway, "POST", "/v1/accounts/payer/credits", Some(credit)).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "same key: recorded once"
    );
    let (_, balance) = admin(&gateway, "GET", "/v1/accounts/payer/balance", None).await;
    assert_eq!(balance["balance"], "6.00", "{balance}");
    assert_eq!(
        (&balance["ledger"][0]["kind"], &balance["ledger"][0]["note"]),
        (&json!("credit"), &json!("goodwill"))
    );

    // Every charge equals its bill's total, as a debit.
    for account in ["payer", "debtor"] {
        let (_, bills) = admin(&gateway, "GET", &format!("/v1/accounts/{account}/bills"), None).await;
        let (_, balance) = admin(&gateway, "GET", &format!("/v1/accounts/{account}/balance"), None).await;
        for bill in bills["bills"].as_array().unwrap() {
            let charges: Vec<&Value> = balance["ledger"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["bill_id"] == bill["id"])
                .collect();
            assert_eq!(charges.len(), 1, "{bill}");
            assert_eq!(charges[0]["kind"], "charge");
            assert_eq!(
                charges[0]["amount"],
                json!(format!("-{}", bill["total"].as_str().unwrap()))
            );
        }
    }

    // Every money movement is in the audit log with who made it.
    let (_, created) = admin(&gateway, "GET", "/v1/audit?account=payer&limit=1000", None).await;
    let entries = created["entries"].as_array().unwrap();
    let operator = entries
        .iter()
        .find(|e| e["action"] == "account.create")
        .map(|e| e["actor"].clone())
        .unwrap();
    let money: Vec<(&str, &Value, &Value)> = entries
        .iter()
        .rev()
        .filter(|e| e["action"].as_str().unwrap().starts_with("ledger."))
        .map(|e| (e["action"].as_str().unwrap(), &e["actor"], &e["after"]["amount"]))
        .collect();
    assert_eq!(
        money,
        [
            ("ledger.topup", &operator, &json!("10.00")),
            ("ledger.charge", &operator, &json!("-3.00")),
            ("ledger.charge", &operator, &json!("-1.25")),
            ("ledger.credit", &operator, &json!("0.25")),
        ],
        "{entries:?}"
    );
    let ledger = gateway.app.store.ledger("payer").await.unwrap();
    assert_eq!(ledger.len(), money.len(), "one audit entry per ledger entry");

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
    // Nor can a writer insert money moving out, an `adjustment`, or a negative bill.
    for sql in [
        "INSERT INTO ledger (account_id, at, kind, amount, idempotency_key, actor) VALUES ('payer', 0, 'credit', -1, 'x1', 't')",
        "INSERT INTO ledger (account_id, at, kind, amount, idempotency_key, actor) VALUES ('payer', 0, 'topup', -1, 'x2', 't')",
        "INSERT INTO ledger (account_id, at, kind, amount, idempotency_key, actor) VALUES ('payer', 0, 'charge', 1, 'x3', 't')",
        "INSERT INTO ledger (account_id, at, kind, amount, idempotency_key, actor) VALUES ('payer', 0, 'adjustment', -1, 'x4', 't')",
        "INSERT INTO bills (id, account_id, month, currency, subtotal, total, lines, issued_at) \
         VALUES ('bx', 'payer', '2027-01', 'USD', -70000, -70000, '[]', 0)",
    ] {
        assert!(execute_raw(&gateway.app, sql).await.is_err(), "{sql} must be refused");
    }
    if let Some(owner_url) = owner_url {
        // The gateway's own role cannot lift the guards: only the owner may, and does.
        for sql in [
            "DROP TRIGGER ledger_append_only ON ledger",
            "ALTER TABLE bills DISABLE TRIGGER ALL",
            "ALTER TABLE ledger DROP CONSTRAINT ledger_money_only_in",
            "TRUNCATE audit_log",
            "CREATE TABLE scratch (x BIGINT)",
            "DELETE FROM _sqlx_migrations",
        ] {
            let refused = execute_raw(&gateway.app, sql).await.unwrap_err();
            assert!(
                refused.to_string().contains("must be owner") || refused.to_string().contains("permission denied"),
                "{sql}: {refused}"
            );
        }
        use sqlx::Connection;
        let mut owner = sqlx::AnyConnection::connect(&owner_url).await.unwrap();
        let mut tx = owner.begin().await.unwrap();
        sqlx::Executor::execute(&mut *tx, "DROP TRIGGER ledger_append_only ON ledger")
            .await
            .expect("the owner may");
        tx.rollback().await.unwrap();
    }
    assert_sums_match_history(&gateway.app.config.store_url).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn billing_lifecycle_on_sqlite() {
    lifecycle(None, None).await;
}

#[tokio::test]
async fn billing_lifecycle_on_postgres() {
    let db = PgDatabase::create().await;
    lifecycle(Some(db.url()), None).await;
}

/// Production's shape: migrations as the schema owner (`store.migrate_url`), the gateway
/// as a role that may append bills and ledger entries but not edit them or drop the
/// triggers that refuse edits.
#[tokio::test]
async fn billing_lifecycle_on_postgres_with_an_owner_and_a_gateway_role() {
    let (_db, roles) = PgDatabase::create_with_roles().await;
    lifecycle(Some(roles.gateway_url), Some(roles.owner_url)).await;
}

/// The gateway's role alone cannot migrate a fresh schema: it says what to set. `migrate`
/// with the owner's URL does it, after which the gateway's role serves on its own.
#[tokio::test]
async fn a_gateway_role_without_the_owner_url_is_told_to_migrate_and_migrate_fixes_it() {
    let (_db, roles) = PgDatabase::create_with_roles().await;
    let refused = ekyc_gateway::store::Store::connect(&roles.gateway_url)
        .await
        .err()
        .expect("a fresh schema and a role that may not create tables");
    assert!(refused.to_string().contains("migrate_url"), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[store]\nurl = \"postgres://ignored@127.0.0.1/x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"))
        .args(["migrate", "--config", config.to_str().unwrap()])
        .env("EKYC_STORE_URL", &roles.gateway_url)
        .env("EKYC_STORE_MIGRATE_URL", &roles.owner_url)
        .env_remove("EKYC_UPSTREAM_SECRET_ID")
        .env_remove("EKYC_MASTER_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(&format!("role {} granted", roles.gateway_role)),
        "{stdout}"
    );
    let store = ekyc_gateway::store::Store::connect(&roles.gateway_url).await.unwrap();
    store.ping().await.unwrap();
    assert!(store.all_accounts().await.unwrap().is_empty());
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
    // Times in the CSV as in every JSON interface: RFC 3339, UTC.
    assert!(
        csv.starts_with("bill_id,") && csv.lines().next().unwrap().ends_with(",issued_at,due_at"),
        "{csv}"
    );
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    for time in &row[row.len() - 2..] {
        unix_of(&serde_json::json!(time));
    }
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
        grace_seconds: 0,
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

/// Volume tiers: LivenessCompare costs 1.00 a call up to 2 calls in a month, and every
/// call 0.50 beyond.
const VOLUME_PRICES: &str = r#"
[billing]
currency = "USD"
total_rounding = "0.01"
[actions.LivenessCompare]
[[actions.LivenessCompare.prices]]
from = "2026-01"
mode = "volume"
tiers = [ { up_to = 2, unit = "1.00" }, { unit = "0.50" } ]
[actions.DetectAuth]
[[actions.DetectAuth.prices]]
unit = "0.25"
"#;

/// A late call that takes October past a volume tier would price October's calls below
/// what October's bill charged: the late line is 0, the bill total is never negative,
/// and the ledger's charge is the bill's total as a debit.
async fn late_volume_line(store_url: Option<String>) {
    let clock = ManualClock::new(FIRST_OF_NOVEMBER);
    let mut config = gateway_config("http://127.0.0.1:9", VOLUME_PRICES);
    if let Some(url) = store_url {
        config.store_url = url;
    }
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    admin(
        &gateway,
        "POST",
        "/v1/accounts",
        Some(json!({"id": "vol", "name": "vol"})),
    )
    .await;
    assert_eq!(topup(&gateway, "vol", "5.00", "v1").await.0, 201);
    let usage = |seq: u64, action: &str, month: &str, calls: u64| UsageBatch {
        instance_id: "volume-test".into(),
        seq,
        rows: vec![UsageRow {
            account_id: "vol".into(),
            action: action.into(),
            month: month.into(),
            calls,
        }],
    };
    let store = &gateway.app.store;
    apply_usage_batch(store, &usage(1, "LivenessCompare", "2026-10", 2), clock.now_unix())
        .await
        .unwrap();
    let (status, october) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-10"}))).await;
    assert_eq!((status, &october["total"]), (200, &json!("2.00")), "{october}");

    // One more October call arrives late (3 calls: all at 0.50 = 1.50 < 2.00 charged),
    // and one November call.
    apply_usage_batch(store, &usage(2, "LivenessCompare", "2026-10", 1), clock.now_unix())
        .await
        .unwrap();
    apply_usage_batch(store, &usage(3, "DetectAuth", "2026-11", 1), clock.now_unix())
        .await
        .unwrap();
    clock.set(FIRST_OF_DECEMBER);
    let (status, november) = admin(&gateway, "POST", "/v1/billing/run", Some(json!({"month": "2026-11"}))).await;
    assert_eq!(status, 200, "{november}");
    let (_, bills) = admin(&gateway, "GET", "/v1/accounts/vol/bills", None).await;
    let bill = &bills["bills"][1];
    let late = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "late_usage")
        .unwrap_or_else(|| panic!("no late line: {bill}"));
    assert_eq!(
        (&late["calls"], &late["previously_billed"], &late["amount"]),
        (&json!(1), &json!(2), &json!("0.00")),
        "a late line never lowers what was charged: {late}"
    );
    assert_eq!(
        (&bill["total"], &bill["status"]),
        (&json!("0.25"), &json!("paid")),
        "{bill}"
    );
    assert_eq!(bills["balance"], "2.75", "5.00 - 2.00 - 0.25");
    for bill in store.bills("vol").await.unwrap() {
        assert!(bill.total >= 0 && bill.subtotal >= 0, "{bill:?}");
        let charged: i64 = store
            .ledger("vol")
            .await
            .unwrap()
            .iter()
            .filter(|e| e.bill_id.as_deref() == Some(&bill.id))
            .map(|e| e.amount)
            .sum();
        assert_eq!(charged, -bill.total, "{bill:?}");
    }
    assert_sums_match_history(&gateway.app.config.store_url).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn late_line_under_volume_tiers_never_lowers_the_charge_on_sqlite() {
    late_volume_line(None).await;
}

#[tokio::test]
async fn late_line_under_volume_tiers_never_lowers_the_charge_on_postgres() {
    let db = PgDatabase::create().await;
    late_volume_line(Some(db.url())).await;
}

/// A top-up committed while the run is under way (after it listed what to bill, before
/// it wrote the bill) counts: the account's bill is paid and it is not suspended.
async fn topup_during_the_run(store_url: String) {
    use ekyc_gateway::billing::job::{self, RunRequest};
    use ekyc_gateway::state::StoreOnlyPublisher;
    let store = Arc::new(ekyc_gateway::store::Store::connect(&store_url).await.unwrap());
    let now = FIRST_OF_NOVEMBER;
    for account in ["racer", "owing"] {
        store
            .create_account(
                &ekyc_gateway::store::records::AccountRecord::new(account, account, 0),
                "test",
                0,
            )
            .await
            .unwrap();
    }
    let rows = ["racer", "owing"]
        .map(|account| UsageRow {
            account_id: account.into(),
            action: "DetectAuth".into(),
            month: "2026-10".into(),
            calls: 4,
        })
        .to_vec();
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
        actor: "billing".into(),
        grace_seconds: 0,
    };
    let run_store = store.clone();
    let summary = tokio::spawn(async move {
        let topup_store = run_store.clone();
        let mut paid_during_run = false;
        let mut progress = move |done: u64, _total: u64| {
            if done == 0 && !paid_during_run {
                paid_during_run = true;
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current()
                        .block_on(topup_store.record_topup("racer", 1_000_000, "mid-run", "ops", now))
                        .unwrap();
                });
            }
        };
        job::run(
            &run_store,
            &config.prices,
            &StoreOnlyPublisher,
            8 * 3600,
            request,
            &mut progress,
        )
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (summary.paid, summary.overdue, summary.arrears_set),
        (1, 1, 1),
        "{summary:?}"
    );
    let racer = store.get_account("racer").await.unwrap().unwrap();
    assert_eq!(racer.arrears, None, "paid during the run: not suspended");
    assert_eq!(store.balance("racer").await.unwrap(), 0);
    let owing = store.get_account("owing").await.unwrap().unwrap();
    assert_eq!(
        owing.arrears.map(|a| a.reason).as_deref(),
        Some("overdue bills: 1.00 owed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_during_the_run_counts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    topup_during_the_run(format!("sqlite://{}", dir.path().join("store.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_during_the_run_counts_on_postgres() {
    let db = PgDatabase::create().await;
    topup_during_the_run(db.url()).await;
}
