//! Migration 0010's running sums (`usage.billed`, `usage_late`, `account_balances`)
//! filled from a store that already has history: a database at migration 0009 with
//! bills, billed usage, late usage and ledger entries is migrated, and the sums must
//! then say what the history says, on both backends. The triggers that keep them after
//! that are checked at the end of the billing tests (`assert_sums_match_history`).

mod common;

use common::*;
use sqlx::Connection as _;

/// A copy of migrations 0001-0009 of `backend`: the schema before the sums.
fn migrations_before_the_sums(backend: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0010" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 9, "migrations 0001-0009 of {backend}");
    dir
}

/// Three accounts' history at 0009: `paid` billed for September in full; `late` billed
/// for September, then one more September call flushed after the bill, and October not
/// billed yet; `fresh` never billed and never funded.
const HISTORY: &[&str] = &[
    "INSERT INTO usage (account_id, action, month, calls, updated_at) VALUES \
     ('paid', 'LivenessCompare', '2026-09', 4, 1), ('late', 'LivenessCompare', '2026-09', 3, 1), \
     ('late', 'DetectAuth', '2026-09', 2, 1), ('late', 'LivenessCompare', '2026-10', 5, 1), \
     ('fresh', 'DetectAuth', '2026-10', 7, 1)",
    "INSERT INTO bills (id, account_id, month, currency, subtotal, total, lines, issued_at, due_at) VALUES \
     ('b-paid', 'paid', '2026-09', 'CNY', 4000000, 4000000, '[]', 100, 100), \
     ('b-late', 'late', '2026-09', 'CNY', 3000000, 3000000, '[]', 100, 100)",
    "INSERT INTO billed_usage (bill_id, account_id, month, action, calls) VALUES \
     ('b-paid', 'paid', '2026-09', 'LivenessCompare', 4), ('b-late', 'late', '2026-09', 'LivenessCompare', 2), \
     ('b-late', 'late', '2026-09', 'DetectAuth', 2)",
    "INSERT INTO ledger (account_id, at, kind, amount, bill_id, idempotency_key, actor) VALUES \
     ('paid', 50, 'topup', 10000000, NULL, 'k1', 'op'), ('paid', 100, 'charge', -4000000, 'b-paid', 'k2', 'job'), \
     ('late', 60, 'topup', 1000000, NULL, 'k3', 'op'), ('late', 100, 'charge', -3000000, 'b-late', 'k4', 'job'), \
     ('late', 120, 'credit', 500000, NULL, 'k5', 'op')",
];

async fn migrate_a_store_with_history(url: &str, backend: &str) {
    sqlx::any::install_default_drivers();
    let before = migrations_before_the_sums(backend);
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run_direct(&mut connection)
        .await
        .unwrap();
    for statement in HISTORY {
        sqlx::query(statement).execute(&mut connection).await.unwrap();
    }
    connection.close().await.unwrap();

    let store = ekyc_gateway::store::Store::connect(url)
        .await
        .expect("migration 0010 applies");
    assert_sums_match_history(url).await;
    let unbilled = unbilled_rows(&store, "2026-10").await;
    let row = |account: &str, month: &str, action: &str, calls, billed| {
        (
            account.to_string(),
            month.to_string(),
            action.to_string(),
            calls,
            billed,
        )
    };
    assert_eq!(
        unbilled,
        vec![
            row("fresh", "2026-10", "DetectAuth", 7, 0),
            row("late", "2026-09", "LivenessCompare", 3, 2),
            row("late", "2026-10", "LivenessCompare", 5, 0),
        ]
    );
    assert_eq!(
        store.unbilled_through("2026-09").await.unwrap().len(),
        1,
        "only the late September row"
    );
    let balances = store.balances().await.unwrap();
    assert_eq!(
        (balances.get("paid"), balances.get("late"), balances.get("fresh")),
        (Some(&6_000_000), Some(&-1_500_000), None)
    );
    assert_eq!(store.balance("fresh").await.unwrap(), 0);
}

#[tokio::test]
async fn the_sums_are_filled_from_history_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db?mode=rwc", dir.path().display());
    migrate_a_store_with_history(&url, "sqlite").await;
}

#[tokio::test]
async fn the_sums_are_filled_from_history_on_postgres() {
    let db = PgDatabase::create().await;
    migrate_a_store_with_history(&db.url(), "postgres").await;
}
