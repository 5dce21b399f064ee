//! Credit control end to end on an injected clock: a prepaid account (limit 0) is
//! refused with `InvalidAccount.InsufficientBalance` once its balance is spent, never
//! forwarded, and served again after a top-up; an account's own postpaid limit is set
//! through the admin API (on SQLite and PostgreSQL); the overshoot is the calls made
//! between two checks, no more; two gateways on one store see each other's calls once
//! flushed; and the background check refuses by itself.

mod common;

use common::*;
use ekyc_gateway::billing::credit;
use ekyc_gateway::clock::{Clock, ManualClock};
use ekyc_gateway::tc3::Signer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// 2026-10-15 00:00 in UTC+8.
const MID_OCTOBER: i64 = 1_791_993_600;

/// DetectAuth costs 0.10 a call; GetFaceIdTokenIntl is not billable.
const PRICES: &str = r#"
[actions.DetectAuth]
[[actions.DetectAuth.prices]]
unit = "0.10"
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

/// A gateway whose background check never comes during the test: each check is
/// run by the test (`credit::refresh`), so every figure is exact.
async fn start(extra: &str, store_url: Option<String>) -> (SimHandle, GatewayHandle, ManualClock) {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let toml = format!("{PRICES}\n[billing]\ncredit_check_interval_ms = 3600000\n{extra}\n");
    let mut config = gateway_config(&format!("http://{}", sim.addr), &toml);
    if let Some(url) = store_url {
        config.store_url = url;
    }
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    (sim, gateway, clock)
}

async fn check(gateway: &GatewayHandle) -> credit::CreditSweep {
    credit::refresh(&gateway.app).await.unwrap()
}

#[tokio::test]
async fn a_prepaid_account_is_refused_once_its_balance_is_spent_and_served_after_a_top_up() {
    let (sim, gateway, clock) = start("credit_limit = \"0\"", None).await;
    let prepaid = tenant(&gateway, "prepaid").await;
    check(&gateway).await;

    // Nothing paid in: refused before forwarding, whatever the balance of other accounts.
    let refused = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
    assert_eq!(
        error_code(&refused),
        Some("InvalidAccount.InsufficientBalance"),
        "{refused}"
    );
    assert!(refused["RequestId"].is_string());
    assert_eq!(sim.seen().await, 0, "a refused call is never forwarded");
    // A call that costs nothing and the tenant's own actions still go through.
    let free = call_as(&gateway, &clock, &prepaid, "GetFaceIdTokenIntl").await;
    assert_eq!(error_code(&free), None, "{free}");
    let status = call_as(&gateway, &clock, &prepaid, "DescribeServiceStatus").await;
    assert_eq!(status["CreditLimit"], "0.00", "{status}");

    // 0.30 pays for three calls at 0.10; the counts not yet flushed are included.
    topup(&gateway, "prepaid", "0.30", "t1").await;
    // The seeded test tenant, prepaid with nothing paid in, is the other account.
    let sweep = check(&gateway).await;
    assert_eq!(
        sweep,
        credit::CreditSweep {
            limited: 2,
            exhausted: 1
        }
    );
    for _ in 0..3 {
        let ok = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
        assert_eq!(error_code(&ok), None, "{ok}");
    }
    assert!(gateway.app.plane.counters.pending() >= 3, "not flushed yet");
    check(&gateway).await;
    let spent = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
    assert_eq!(
        error_code(&spent),
        Some("InvalidAccount.InsufficientBalance"),
        "{spent}"
    );
    // The same after the counts reach the store.
    gateway.app.flush_usage().await.unwrap();
    check(&gateway).await;
    let spent = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
    assert_eq!(
        error_code(&spent),
        Some("InvalidAccount.InsufficientBalance"),
        "{spent}"
    );
    assert_eq!(sim.successes("DetectAuth").await, 3);

    // A top-up is honoured at the next check.
    topup(&gateway, "prepaid", "0.10", "t2").await;
    check(&gateway).await;
    let again = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
    assert_eq!(error_code(&again), None, "{again}");
    // The figures lag by one check: the calls made between two checks are the overshoot.
    for _ in 0..2 {
        let over = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
        assert_eq!(error_code(&over), None, "{over}");
    }
    let account = gateway.app.mirror.account("prepaid").unwrap();
    check(&gateway).await;
    assert_eq!(account.credit_headroom(), -200_000, "0.40 paid, 0.60 spent");
    let refused = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
    assert_eq!(error_code(&refused), Some("InvalidAccount.InsufficientBalance"));
    assert_eq!(sim.successes("DetectAuth").await, 6);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("ekyc_gateway_credit_exhausted_accounts 2"),
        "{metrics}"
    );
}

async fn an_accounts_own_limit(store_url: Option<String>) {
    let (sim, gateway, clock) = start("", store_url).await;
    let postpaid = tenant(&gateway, "postpaid").await;
    // No default limit: calls are never refused for credit.
    check(&gateway).await;
    for _ in 0..3 {
        assert_eq!(
            error_code(&call_as(&gateway, &clock, &postpaid, "DetectAuth").await),
            None
        );
    }
    // Its own limit of 0.50: it owes 0.30, so two more calls fit.
    let (status, view) = admin(
        &gateway,
        "PUT",
        "/v1/accounts/postpaid/credit-limit",
        Some(json!({"credit_limit": "0.50"})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["credit_limit"], "0.50");
    let (status, _) = admin(
        &gateway,
        "PUT",
        "/v1/accounts/postpaid/credit-limit",
        Some(json!({"credit_limit": "-1.00"})),
    )
    .await;
    assert_eq!(status, 400, "a limit is never negative");
    check(&gateway).await;
    assert_eq!(
        gateway.app.mirror.account("postpaid").unwrap().credit_headroom(),
        200_000
    );
    for _ in 0..2 {
        assert_eq!(
            error_code(&call_as(&gateway, &clock, &postpaid, "DetectAuth").await),
            None
        );
    }
    check(&gateway).await;
    let refused = call_as(&gateway, &clock, &postpaid, "DetectAuth").await;
    assert_eq!(error_code(&refused), Some("InvalidAccount.InsufficientBalance"));
    let status = call_as(&gateway, &clock, &postpaid, "DescribeServiceStatus").await;
    assert_eq!(status["CreditLimit"], "0.50");
    // Back to the default (none): served again.
    let (status, view) = admin(
        &gateway,
        "PUT",
        "/v1/accounts/postpaid/credit-limit",
        Some(json!({"credit_limit": null})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["credit_limit"], Value::Null);
    check(&gateway).await;
    assert_eq!(
        error_code(&call_as(&gateway, &clock, &postpaid, "DetectAuth").await),
        None
    );
    assert_eq!(sim.successes("DetectAuth").await, 6);
    // The change is audited.
    let (_, audit) = admin(&gateway, "GET", "/v1/audit?account=postpaid", None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"account.credit_limit"), "{audit}");
}

#[tokio::test]
async fn an_accounts_own_credit_limit_is_set_through_the_admin_api_on_sqlite() {
    an_accounts_own_limit(None).await;
}

#[tokio::test]
async fn an_accounts_own_credit_limit_is_set_through_the_admin_api_on_postgresql() {
    let db = PgDatabase::create().await;
    an_accounts_own_limit(Some(db.url())).await;
}

#[tokio::test]
async fn the_background_check_refuses_a_spent_account_by_itself() {
    let clock = ManualClock::new(MID_OCTOBER);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let toml = format!(
        "{PRICES}\n[billing]\ncredit_limit = \"0\"\ncredit_check_interval_ms = 50\n[meter]\nflush_interval_ms = 50\n"
    );
    let config = gateway_config(&format!("http://{}", sim.addr), &toml);
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    let prepaid = tenant(&gateway, "prepaid").await;
    topup(&gateway, "prepaid", "0.20", "t1").await;
    poll_until("the top-up is seen", Duration::from_secs(10), || async {
        (gateway.app.mirror.account("prepaid").unwrap().credit_headroom() == 200_000).then_some(())
    })
    .await;
    let served = AtomicU64::new(0);
    let refused_with = poll_until("the spent account is refused", Duration::from_secs(10), || async {
        let answer = call_as(&gateway, &clock, &prepaid, "DetectAuth").await;
        match error_code(&answer) {
            None => {
                served.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(code) => Some(code.to_string()),
        }
    })
    .await;
    assert_eq!(refused_with, "InvalidAccount.InsufficientBalance");
    let served = served.into_inner();
    assert!(served >= 2, "0.20 pays for two calls; {served} served");
    assert_eq!(sim.successes("DetectAuth").await, served);
}

/// Two gateways on one store: each sees the other's calls once they are flushed, and
/// its own at once; the gap is the documented bound.
#[tokio::test]
async fn each_gateway_counts_the_others_flushed_calls() {
    let db = PgDatabase::create().await;
    let clock = ManualClock::new(MID_OCTOBER);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let toml = format!(
        "{PRICES}\n[billing]\ncredit_limit = \"0\"\ncredit_check_interval_ms = 3600000\n\
         [meter]\nflush_interval_ms = 3600000\n[state]\nresync_interval_ms = 100\n"
    );
    let journals = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let gateway = |journal: &tempfile::TempDir| {
        let mut config = gateway_config(&format!("http://{}", sim.addr), &toml);
        config.store_url = db.url();
        config.meter.journal_path = journal.path().join("meter.journal");
        GatewayHandle::start_with(config, Arc::new(clock.clone()))
    };
    let a = gateway(&journals[0]).await;
    let b = gateway(&journals[1]).await;
    let signer = tenant(&a, "shared").await;
    topup(&a, "shared", "0.30", "t1").await;
    poll_until("gateway b loads the account", Duration::from_secs(10), || async {
        b.app.mirror.account("shared").map(|_| ())
    })
    .await;
    let headroom = |g: &GatewayHandle| g.app.mirror.account("shared").unwrap().credit_headroom();

    for _ in 0..2 {
        assert_eq!(error_code(&call_as(&a, &clock, &signer, "DetectAuth").await), None);
    }
    check(&b).await;
    assert_eq!(headroom(&b), 300_000, "a's calls are not in the store yet");
    a.app.flush_usage().await.unwrap();
    check(&b).await;
    assert_eq!(headroom(&b), 100_000, "a's flushed calls count on b");
    assert_eq!(error_code(&call_as(&b, &clock, &signer, "DetectAuth").await), None);
    check(&b).await;
    assert_eq!(headroom(&b), 0, "b's own call counts at once");
    let refused = call_as(&b, &clock, &signer, "DetectAuth").await;
    assert_eq!(error_code(&refused), Some("InvalidAccount.InsufficientBalance"));
    check(&a).await;
    assert_eq!(headroom(&a), 100_000, "b's call reaches a with b's flush");
    b.app.flush_usage().await.unwrap();
    check(&a).await;
    assert_eq!(headroom(&a), 0);
    assert_eq!(sim.successes("DetectAuth").await, 3);
}
