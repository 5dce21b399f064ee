//! The billing scale figures: 100,000 accounts x 5 actions billed in one run against
//! PostgreSQL, one account in ten without enough balance (so the run also sets 10,000
//! arrears flags through the audited write path); and what a credit check reads after
//! a year of 100,000 accounts. Slow in a debug build, so run them on demand:
//! `scripts/bench-billing [NAME]` (release build).

mod common;

use common::*;
use ekyc_gateway::billing::job::{self, RunRequest};
use ekyc_gateway::billing::pricing::{Price, PriceBook, Tier, TierMode};
use ekyc_gateway::meter::Month;
use ekyc_gateway::state::StoreOnlyPublisher;
use std::collections::BTreeMap;

const ACCOUNTS: i64 = 100_000;

/// A fresh PostgreSQL database migrated by the store, and a plain client on it for the
/// bulk writes (the database is dropped when the first value goes).
async fn fresh_store() -> (PgDatabase, ekyc_gateway::store::Store, tokio_postgres::Client) {
    let db = PgDatabase::create().await;
    let store = ekyc_gateway::store::Store::connect(&db.url()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    (db, store, client)
}

#[tokio::test]
#[ignore]
async fn billing_100k_accounts_by_5_actions() {
    let (_db, store, client) = fresh_store().await;
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

/// What each credit check (every 2 s per gateway with a limit set) and each due sweep
/// read from the store after a year of 100,000 accounts x 2 actions: 11 months billed
/// and paid, the 12th still to bill. The history's rows are written with their sums
/// (as migration 0010 would fill them), the triggers off for the load. Prints the
/// median of 5 reads through the store against the same reads as whole-history sums
/// (the queries before migration 0010), and checks that both give the same figures.
#[tokio::test]
#[ignore]
async fn credit_check_reads_after_a_year_of_100k_accounts() {
    let (_db, store, client) = fresh_store().await;
    let started = std::time::Instant::now();
    client
        .batch_execute(&format!(
            "ALTER TABLE usage DISABLE TRIGGER USER;
             ALTER TABLE billed_usage DISABLE TRIGGER USER;
             ALTER TABLE ledger DISABLE TRIGGER USER;
             INSERT INTO usage (account_id, action, month, calls, updated_at, billed) \
             SELECT 'acct-' || i, a, '2026-' || lpad(m::text, 2, '0'), 100, 0, CASE WHEN m < 12 THEN 100 ELSE 0 END \
             FROM generate_series(1, {ACCOUNTS}) i, unnest(ARRAY['LivenessCompare', 'DetectAuth']) a, \
                  generate_series(1, 12) m;
             INSERT INTO billed_usage (bill_id, account_id, month, action, calls) \
             SELECT 'b-' || i || '-' || m, 'acct-' || i, '2026-' || lpad(m::text, 2, '0'), a, 100 \
             FROM generate_series(1, {ACCOUNTS}) i, unnest(ARRAY['LivenessCompare', 'DetectAuth']) a, \
                  generate_series(1, 11) m;
             INSERT INTO ledger (account_id, at, kind, amount, bill_id, idempotency_key, actor) \
             SELECT 'acct-' || i, m, k, CASE WHEN k = 'topup' THEN 2000000 ELSE -1000000 END, NULL, \
                    k || '-' || i || '-' || m, 'bench' \
             FROM generate_series(1, {ACCOUNTS}) i, generate_series(1, 11) m, unnest(ARRAY['topup', 'charge']) k;
             INSERT INTO account_balances \
             SELECT account_id, SUM(amount), SUM(CASE WHEN kind = 'charge' THEN 0 ELSE amount END), \
                    MAX(CASE WHEN kind = 'topup' THEN id END) FROM ledger GROUP BY account_id;
             ALTER TABLE usage ENABLE TRIGGER USER;
             ALTER TABLE billed_usage ENABLE TRIGGER USER;
             ALTER TABLE ledger ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
    // Apart: VACUUM cannot run in the batch's implicit transaction.
    client
        .batch_execute("VACUUM ANALYZE usage, billed_usage, ledger, account_balances")
        .await
        .unwrap();
    eprintln!("a year of history written in {:.1?}", started.elapsed());

    let mut now_reads = Vec::new();
    let (mut unbilled, mut balances) = (Vec::new(), std::collections::HashMap::new());
    for _ in 0..5 {
        let started = std::time::Instant::now();
        unbilled = store.unbilled_through("2026-12").await.unwrap();
        balances = store.balances().await.unwrap();
        now_reads.push(started.elapsed());
    }
    let mut history_reads = Vec::new();
    let (mut history_unbilled, mut history_balances) = (0, 0);
    for _ in 0..5 {
        let started = std::time::Instant::now();
        history_unbilled = client
            .query(
                "SELECT u.account_id, u.month, u.action, u.calls, COALESCE(b.calls, 0) AS billed \
                 FROM usage u LEFT JOIN ( \
                     SELECT account_id, month, action, CAST(SUM(calls) AS BIGINT) AS calls FROM billed_usage \
                     WHERE month <= $1 GROUP BY account_id, month, action \
                 ) b ON b.account_id = u.account_id AND b.month = u.month AND b.action = u.action \
                 WHERE u.month <= $1 AND u.calls > COALESCE(b.calls, 0) \
                 ORDER BY u.account_id, u.month, u.action",
                &[&"2026-12"],
            )
            .await
            .unwrap()
            .len();
        history_balances = client
            .query(
                "SELECT account_id, CAST(SUM(amount) AS BIGINT) AS balance FROM ledger GROUP BY account_id",
                &[],
            )
            .await
            .unwrap()
            .len();
        history_reads.push(started.elapsed());
    }
    now_reads.sort();
    history_reads.sort();
    eprintln!(
        "credit check's reads, {} rows still to bill and {} balances: {:.1?} (median of 5; \
         summing the whole history: {:.1?})",
        unbilled.len(),
        balances.len(),
        now_reads[2],
        history_reads[2]
    );
    assert_eq!((unbilled.len(), balances.len()), (history_unbilled, history_balances));
    assert_eq!(unbilled.len(), 2 * ACCOUNTS as usize);
    assert!(balances.values().all(|b| *b == 11 * 1_000_000));
}
