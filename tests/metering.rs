//! Metering end to end: every successful call is counted once and reaches the billing
//! store (SQLite and PostgreSQL), API-level errors, refused calls and tenant actions are
//! not counted, a retried batch is applied once, months follow the billing time zone,
//! and tenants and operators read the counts.

mod common;

use common::*;
use ekyc_gateway::clock::ManualClock;
use ekyc_gateway::store::{UsageBatch, UsageRow};
use ekyc_gateway::tc3::Signer;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const ACTIONS: [&str; 4] = [
    "LivenessCompare",
    "IdCardVerification",
    "DetectAuth",
    "GetFaceIdTokenIntl",
];

async fn reconcile(store_url: String) {
    let started = ekyc_gateway::clock::Clock::now_unix(&ekyc_gateway::clock::SystemClock);
    let sim = SimHandle::start(|c| c.error_rate = 0.25).await;
    let mut config = gateway_config(
        &format!("http://{}", sim.addr),
        "[meter]\nflush_interval_ms = 200\n[rate_limit]\ndefault_qps = 0\n",
    );
    config.store_url = store_url;
    let gateway = GatewayHandle::start_with(config, Arc::new(ekyc_gateway::clock::SystemClock)).await;
    let mut signers = vec![(CLIENT_ACCOUNT.to_string(), client_signer())];
    for id in ["acme", "globex"] {
        admin(&gateway, "POST", "/v1/accounts", Some(json!({"id": id, "name": id}))).await;
        admin(&gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
        let (_, c) = admin(&gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
        signers.push((
            id.to_string(),
            Signer::new(
                c["secret_id"].as_str().unwrap(),
                c["secret_key"].as_str().unwrap(),
                "faceid",
            ),
        ));
    }
    let client = http1_client();
    let mut tally: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..240 {
        let (account, signer) = &signers[i % signers.len()];
        let action = ACTIONS[i % ACTIONS.len()];
        let request = signed_call(&gateway.url(), &gateway.data.to_string(), action, b"{}", signer);
        let answer = send(&client, request).await;
        if answer.get("Error").is_none() {
            *tally.entry((account.clone(), action.to_string())).or_default() += 1;
        }
    }
    // Never counted: refused calls, unknown actions, tenant actions.
    let wrong_key = Signer::new(CLIENT_SECRET_ID, "wrong", "faceid");
    for (action, signer) in [
        ("DetectAuth", &wrong_key),
        ("NoSuchAction", &client_signer()),
        ("DescribeServiceStatus", &client_signer()),
    ] {
        let request = signed_call(&gateway.url(), &gateway.data.to_string(), action, b"{}", signer);
        send(&client, request).await;
    }

    let store = gateway.app.store.clone();
    let months = common::faults::billing_months_since(started);
    gateway.shutdown().await; // the final flush runs after in-flight requests

    let mut billed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (account, _) in &signers {
        for month in &months {
            for (action, calls) in store.usage(account, month).await.unwrap() {
                *billed.entry((account.clone(), action)).or_default() += calls;
            }
        }
    }
    assert_eq!(
        billed, tally,
        "billed per (account, action) must equal the clients' successes"
    );
    // The per-day counts (the operators' chart) hold the same calls, in the same
    // transactions.
    for (account, _) in &signers {
        let daily: u64 = store
            .daily_usage(account, "0000-01-01", "9999-12-31")
            .await
            .unwrap()
            .iter()
            .map(|(_, calls)| calls)
            .sum();
        let monthly: u64 = billed.iter().filter(|((a, _), _)| a == account).map(|(_, n)| n).sum();
        assert_eq!(daily, monthly, "{account}: calls per day must add up to the month's");
    }
    let stats = sim.stats().await;
    for action in ACTIONS {
        let served = stats["actions"][action]["success"].as_u64().unwrap();
        let billed_action: u64 = billed.iter().filter(|((_, a), _)| a == action).map(|(_, n)| n).sum();
        assert_eq!(
            billed_action, served,
            "{action}: billed must equal what the simulator served"
        );
        assert!(
            stats["actions"][action]["api_error"].as_u64().unwrap() > 0,
            "the load must include API errors"
        );
    }
    eprintln!(
        "reconciled {} calls over {} (account, action) pairs",
        tally.values().sum::<u64>(),
        tally.len()
    );
}

#[tokio::test]
async fn billed_equals_served_on_sqlite() {
    // A store that outlives the gateway, to be read after its shutdown.
    let dir = tempfile::tempdir().unwrap();
    reconcile(format!("sqlite://{}/billing.db", dir.path().display())).await;
}

#[tokio::test]
async fn billed_equals_served_on_postgres() {
    let db = PgDatabase::create().await;
    reconcile(db.url()).await;
}

#[tokio::test]
async fn a_retried_batch_is_applied_once() {
    let db = PgDatabase::create().await;
    let store = ekyc_gateway::store::Store::connect(&db.url()).await.unwrap();
    let batch = UsageBatch {
        instance_id: "gw-test".into(),
        seq: 7,
        rows: vec![
            UsageRow {
                account_id: "a".into(),
                action: "DetectAuth".into(),
                month: "2026-11".into(),
                calls: 5,
            },
            UsageRow {
                account_id: "a".into(),
                action: "LivenessCompare".into(),
                month: "2026-11".into(),
                calls: 2,
            },
        ],
    };
    assert!(apply_usage_batch(&store, &batch, 0).await.unwrap());
    assert!(
        !apply_usage_batch(&store, &batch, 1).await.unwrap(),
        "the same batch id twice"
    );
    let next = UsageBatch {
        seq: 8,
        ..batch.clone()
    };
    assert!(apply_usage_batch(&store, &next, 2).await.unwrap());
    let usage = store.usage("a", "2026-11").await.unwrap();
    assert_eq!(
        usage,
        vec![("DetectAuth".to_string(), 10), ("LivenessCompare".to_string(), 4)]
    );
}

#[tokio::test]
async fn calls_count_in_the_month_of_their_arrival_in_the_billing_time_zone() {
    // 2026-11-30 23:59:59 in UTC+8 (the default billing zone).
    let last_second_of_november = 1_796_054_399;
    let clock = ManualClock::new(last_second_of_november);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let gateway = GatewayHandle::start_with_clock(&sim, "", clock.clone()).await;
    let client = http1_client();
    let call_at = |timestamp: i64| {
        signed_call_at(
            &gateway.url(),
            &gateway.data.to_string(),
            "DetectAuth",
            b"{}",
            &client_signer(),
            timestamp,
        )
    };
    assert!(
        send(&client, call_at(last_second_of_november))
            .await
            .get("Error")
            .is_none()
    );
    clock.advance(1);
    assert!(
        send(&client, call_at(last_second_of_november + 1))
            .await
            .get("Error")
            .is_none()
    );
    assert!(
        send(&client, call_at(last_second_of_november + 1))
            .await
            .get("Error")
            .is_none()
    );
    clock.advance(30);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("ekyc_gateway_usage_oldest_pending_seconds 31"),
        "{metrics}"
    );
    assert!(metrics.contains("ekyc_gateway_usage_pending_calls 3"), "{metrics}");
    gateway.app.flush_usage().await.unwrap();
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("ekyc_gateway_usage_oldest_pending_seconds 0"),
        "{metrics}"
    );
    let store = &gateway.app.store;
    assert_eq!(
        store.usage(CLIENT_ACCOUNT, "2026-11").await.unwrap(),
        vec![("DetectAuth".to_string(), 1)]
    );
    assert_eq!(
        store.usage(CLIENT_ACCOUNT, "2026-12").await.unwrap(),
        vec![("DetectAuth".to_string(), 2)]
    );

    // Operators and the tenant read the same numbers.
    let (status, usage) = admin(
        &gateway,
        "GET",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/usage?month=2026-11"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage,
        json!({"account": CLIENT_ACCOUNT, "month": "2026-11", "actions": {"DetectAuth": 1}, "total": 1,
               "current_month": "2026-12", "months_with_calls": ["2026-12", "2026-11"]})
    );
    let (_, current) = admin(&gateway, "GET", &format!("/v1/accounts/{CLIENT_ACCOUNT}/usage"), None).await;
    assert_eq!(current["month"], "2026-12");
    assert_eq!(current["total"], 2);
    let (status, _) = admin(
        &gateway,
        "GET",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/usage?month=11-2026"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let now = last_second_of_november + 1;
    let tenant = |body: &'static [u8]| {
        signed_call_at(
            &gateway.url(),
            &gateway.data.to_string(),
            "DescribeCallUsage",
            body,
            &client_signer(),
            now,
        )
    };
    let answer = send(&client, tenant(br#"{"Month":"2026-11"}"#)).await;
    assert_eq!(answer["Month"], "2026-11", "{answer}");
    assert_eq!(answer["TotalCalls"], 1);
    assert_eq!(
        answer["Usage"],
        json!([{"Action": "DetectAuth", "Calls": 1, "Amount": "0.10"}])
    );
    assert_eq!(answer["EstimatedAmount"], "0.10", "at the default unit price");
    let answer = send(&client, tenant(b"{}")).await;
    assert_eq!(
        (answer["Month"].as_str(), answer["TotalCalls"].as_u64()),
        (Some("2026-12"), Some(2)),
        "{answer}"
    );
    let answer = send(&client, tenant(br#"{"Month":"December"}"#)).await;
    assert_eq!(error_code(&answer), Some("InvalidParameter"), "{answer}");
}

#[tokio::test]
async fn usage_reaches_the_store_within_a_flush_interval_and_the_metrics_show_it() {
    let sim = SimHandle::start(|_| {}).await;
    // A clock stopped at the start keeps every call and the usage query in one month,
    // whenever the test runs.
    let clock = ManualClock::new(ekyc_gateway::clock::Clock::now_unix(&ekyc_gateway::clock::SystemClock));
    let gateway = GatewayHandle::start_with_clock(&sim, "[meter]\nflush_interval_ms = 100\n", clock).await;
    let client = http1_client();
    for _ in 0..3 {
        assert!(
            send(&client, call(&gateway, "PhoneVerification", "{}"))
                .await
                .get("Error")
                .is_none()
        );
    }
    let (_, usage) = poll_until("the periodic flush", Duration::from_secs(5), || async {
        let got = admin(&gateway, "GET", &format!("/v1/accounts/{CLIENT_ACCOUNT}/usage"), None).await;
        (got.1["total"] == 3).then_some(got)
    })
    .await;
    assert_eq!(usage["actions"]["PhoneVerification"], 3);
    let metrics = gateway.metrics().await;
    assert!(metrics.contains("ekyc_gateway_billable_calls_total 3"), "{metrics}");
    assert!(metrics.contains("ekyc_gateway_usage_pending_calls 0"), "{metrics}");
    assert!(
        metrics.contains(r#"ekyc_gateway_flush_batches_total{kind="ok"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_the_store_down_the_gateway_serves_keeps_counts_and_bounds_memory() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let mut config = gateway_config(
        &format!("http://{}", sim.addr),
        "[meter]\nflush_interval_ms = 100\nmax_pending_keys = 2\n",
    );
    config.store_url = db.url();
    // Stopped at the start: the three keys below stay in one month whenever it runs.
    let clock = ManualClock::new(ekyc_gateway::clock::Clock::now_unix(&ekyc_gateway::clock::SystemClock));
    let gateway = GatewayHandle::start_with(config, Arc::new(clock)).await;
    let client = http1_client();
    db.cut().await;
    for _ in 0..10 {
        assert!(
            send(&client, call(&gateway, "DetectAuth", "{}"))
                .await
                .get("Error")
                .is_none()
        );
    }
    assert!(
        send(&client, call(&gateway, "PhoneVerification", "{}"))
            .await
            .get("Error")
            .is_none()
    );
    // Flushes fail meanwhile; the counts wait in memory (frozen batch + counters).
    poll_until("a failed flush", Duration::from_secs(5), || async {
        gateway
            .metrics()
            .await
            .contains(r#"ekyc_gateway_flush_batches_total{kind="failed"}"#)
            .then_some(())
    })
    .await;
    // A third distinct key would exceed max_pending_keys: refused before forwarding.
    let answer = send(&client, call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(error_code(&answer), Some("ServiceUnavailable"), "{answer}");
    assert_eq!(sim.successes("IdCardVerification").await, 0);

    db.restore().await;
    let (_, usage) = poll_until("the retried flush", Duration::from_secs(40), || async {
        let got = admin(&gateway, "GET", &format!("/v1/accounts/{CLIENT_ACCOUNT}/usage"), None).await;
        (got.1["total"] == 11).then_some(got)
    })
    .await;
    assert_eq!(usage["actions"], json!({"DetectAuth": 10, "PhoneVerification": 1}));
    assert_eq!(sim.successes("DetectAuth").await, 10);
}

/// The flush-size figure of the metering issue: 1 M distinct rows in one batch to
/// PostgreSQL. Slow in a debug build, so run it on demand:
/// `cargo nextest run --release --run-ignored only flush_of_a_million_rows`.
#[tokio::test]
#[ignore]
async fn flush_of_a_million_rows() {
    let db = PgDatabase::create().await;
    let store = ekyc_gateway::store::Store::connect(&db.url()).await.unwrap();
    let rows: Vec<UsageRow> = (0..1_000_000)
        .map(|i| UsageRow {
            account_id: format!("acct-{}", i / 5),
            action: ACTIONS[i % 4].to_string(),
            month: if i % 5 == 4 { "2026-10".into() } else { "2026-11".into() },
            calls: 1 + (i as u64 % 3),
        })
        .collect();
    let expected: u64 = rows.iter().map(|r| r.calls).sum();
    let batch = UsageBatch {
        instance_id: "gw-bench".into(),
        seq: 1,
        rows,
    };
    let started = std::time::Instant::now();
    assert!(apply_usage_batch(&store, &batch, 0).await.unwrap());
    let elapsed = started.elapsed();
    eprintln!("flushed 1,000,000 rows to PostgreSQL in {elapsed:?}");
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let total: i64 = client
        .query_one("SELECT SUM(calls)::BIGINT FROM usage", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total as u64, expected);
}
