//! The billing scale figure: 100,000 accounts x 5 actions billed in one run against
//! PostgreSQL, one account in ten without enough balance (so the run also sets 10,000
//! arrears flags through the audited write path). Slow in a debug build, so run it on
//! demand: `scripts/bench-billing` (release build).

mod common;

use common::*;
use ekyc_gateway::billing::job::{self, RunRequest};
use ekyc_gateway::billing::pricing::{Price, PriceBook, Tier, TierMode};
use ekyc_gateway::meter::Month;
use ekyc_gateway::state::StoreOnlyPublisher;
use std::collections::BTreeMap;

const ACCOUNTS: i64 = 100_000;

#[tokio::test]
#[ignore]
async fn billing_100k_accounts_by_5_actions() {
    let db = PgDatabase::create().await;
    let store = ekyc_gateway::store::Store::connect(&db.url()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let actions = [
        "DetectAuth",
        "IdCardVerification",
        "LivenessCompare",
        "GetFaceIdTokenIntl",
        "DetectAIFakeFaces",
    ];
    client
        .batch_execute(&format!(
            "INSERT INTO accounts (id, name, activated, activated_at, created_at, version) \
             SELECT 'acct-' || i, 'Account ' || i, 1, 0, 0, 1 FROM generate_series(1, {ACCOUNTS}) i;
             INSERT INTO usage (account_id, action, month, calls, updated_at) \
             SELECT 'acct-' || i, a, '2026-10', 1 + (i % 5000), 0 \
             FROM generate_series(1, {ACCOUNTS}) i, unnest(ARRAY['{}']) a;
             INSERT INTO ledger (account_id, at, kind, amount, bill_id, idempotency_key, actor) \
             SELECT 'acct-' || i, 0, 'topup', 10000000000, NULL, 'seed-' || i, 'bench' \
             FROM generate_series(1, {ACCOUNTS}) i WHERE i % 10 <> 0;",
            actions.join("','")
        ))
        .await
        .unwrap();
    let mut prices = PriceBook {
        currency: "USD".into(),
        default: Some(Price::Flat { unit: 100_000 }),
        actions: BTreeMap::new(),
        total_rounding: 10_000,
    };
    prices.actions.insert(
        "LivenessCompare".into(),
        BTreeMap::from([(
            "2026-01".to_string(),
            Price::Tiered {
                mode: TierMode::Graduated,
                tiers: vec![
                    Tier {
                        up_to: Some(1000),
                        unit: 50_000,
                    },
                    Tier {
                        up_to: None,
                        unit: 30_000,
                    },
                ],
            },
        )]),
    );
    let request = RunRequest {
        month: Month::parse("2026-10").unwrap(),
        now: 1_793_462_400 + 3600,
        dry_run: false,
        actor: "bench".into(),
        grace_seconds: 0,
    };
    let started = std::time::Instant::now();
    let summary = job::run(&store, &prices, &StoreOnlyPublisher, 8 * 3600, request, &mut |_, _| {})
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!("billed {ACCOUNTS} accounts x 5 actions in {elapsed:?}: {summary}");
    assert_eq!(summary.bills_created, ACCOUNTS as u64);
    assert_eq!(summary.overdue, (ACCOUNTS / 10) as u64);
    assert_eq!(summary.arrears_set, (ACCOUNTS / 10) as u64);
    let bills: i64 = client
        .query_one("SELECT COUNT(*) FROM bills", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bills, ACCOUNTS);
}
