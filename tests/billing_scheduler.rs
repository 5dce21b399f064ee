//! The billing scheduler, on PostgreSQL and SQLite, with every clock pinned: three
//! gateways crossing a month end bill it once; a leader SIGKILLed mid-run (a real
//! process under libfaketime) is finished by another gateway with no bill twice; months
//! missed while every gateway was down are billed oldest first; a month not billed by
//! the end of the 3rd raises the late gauge while readiness stays green.

mod common;

use common::*;
use ekyc_gateway::clock::{Clock, ManualClock};
use ekyc_gateway::config::Config;
use ekyc_gateway::store::{Store, UsageBatch, UsageRow};
use std::sync::Arc;
use std::time::Duration;

/// 2026-11-01 00:00 in UTC+8 (the default billing time zone).
const NOVEMBER: i64 = 1_793_462_400;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
const DEADLINE: Duration = Duration::from_secs(60);

const SCHEDULED: &str = r#"
[billing]
currency = "USD"
default_unit = "0.10"
run_at = "02:00"
scheduler_interval_ms = 20
[actions.DetectAuth]
[[actions.DetectAuth.prices]]
unit = "0.25"
"#;

fn scheduled_config(upstream: &str, store_url: &str) -> Config {
    let mut config = gateway_config(upstream, SCHEDULED);
    config.store_url = store_url.to_string();
    config.scheduler.enabled = true;
    config
}

/// The sample `series` (a name, with its labels if it has any) in /metrics text; 0 when
/// absent.
fn metric(text: &str, series: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as i64)
}

const RUNS_OK: &str = "ekyc_gateway_billing_scheduled_runs_total{kind=\"ok\"}";
const RUNS_FAILED: &str = "ekyc_gateway_billing_scheduled_runs_total{kind=\"failed\"}";

/// Waits until `gateway` reports `month` (YYYYMM) as the last month billed, then sums
/// the runs it finished.
async fn runs_once_billed(gateway: &GatewayHandle, month: i64) -> i64 {
    let text = poll_until("the gateway to see the month billed", DEADLINE, || async {
        let text = gateway.metrics().await;
        (metric(&text, "ekyc_gateway_billing_last_month_billed") == month).then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "ekyc_gateway_billing_month_late"), 0);
    assert_eq!(metric(&text, RUNS_FAILED), 0);
    metric(&text, RUNS_OK)
}

fn usage(rows: &[(&str, &str, u64)]) -> Vec<UsageRow> {
    rows.iter()
        .map(|(account, month, calls)| UsageRow {
            account_id: account.to_string(),
            action: "DetectAuth".into(),
            month: month.to_string(),
            calls: *calls,
        })
        .collect()
}

async fn write_usage(store: &Store, seq: u64, rows: Vec<UsageRow>, now: i64) {
    let batch = UsageBatch {
        instance_id: "test-writer".into(),
        seq,
        rows,
    };
    assert!(apply_usage_batch(store, &batch, now).await.unwrap());
}

async fn run_recorded(store: &Store, month: &str) -> Option<ekyc_gateway::store::billing::BillingRun> {
    store
        .billing_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.month == month)
}

/// Every charge in the ledger, as (account, bill id).
async fn charges(db: &PgDatabase) -> Vec<(String, String)> {
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query(
            "SELECT account_id, bill_id FROM ledger WHERE kind = 'charge' ORDER BY account_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn three_gateways_crossing_a_month_end_bill_it_once() {
    let db = PgDatabase::create().await;
    let before_midnight = NOVEMBER - 10 * 60;
    let sim_clock = ManualClock::new(before_midnight);
    let sim_side = sim_clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_side)).await;
    let upstream = format!("http://{}", sim.addr);
    let clocks: Vec<ManualClock> = (0..3).map(|_| ManualClock::new(before_midnight)).collect();
    let mut gateways = Vec::new();
    for clock in &clocks {
        let config = scheduled_config(&upstream, &db.url());
        gateways.push(GatewayHandle::start_with(config, Arc::new(clock.clone())).await);
    }
    // A new installation runs the month before its first (September, empty) at once:
    // one of the three does.
    let mut ran = 0;
    for gateway in &gateways {
        ran += runs_once_billed(gateway, 202609).await;
    }
    assert_eq!(ran, 1, "exactly one gateway ran September");

    // October's last minutes: the tenant calls each gateway (1, 2 and 3 times), and 30
    // more accounts' calls reach the store from elsewhere.
    let signer = client_signer();
    for (i, gateway) in gateways.iter().enumerate() {
        for _ in 0..=i {
            let request = signed_call_at(
                &gateway.url(),
                &gateway.data.to_string(),
                "DetectAuth",
                b"{}",
                &signer,
                clocks[i].now_unix(),
            );
            let answer = send(&http1_client(), request).await;
            assert!(answer.get("Error").is_none(), "{answer}");
        }
        gateway.app.flush_usage().await.unwrap();
    }
    let store = &gateways[0].app.store;
    let others: Vec<(String, &str, u64)> = (0..30).map(|i| (format!("other-{i:02}"), "2026-10", 4)).collect();
    let others: Vec<(&str, &str, u64)> = others.iter().map(|(a, m, c)| (a.as_str(), *m, *c)).collect();
    write_usage(store, 1, usage(&others), before_midnight).await;

    // Across midnight and up to run_at, each gateway on its own clock.
    let run_at = NOVEMBER + 2 * HOUR;
    for clock in clocks.iter().chain([&sim_clock]) {
        clock.set(run_at - 60);
    }
    for (i, clock) in clocks.iter().enumerate() {
        clock.set(run_at + 5 + i as i64);
    }
    let run = poll_until("a gateway to bill October", DEADLINE, || async {
        run_recorded(store, "2026-10").await
    })
    .await;
    assert!(run.actor.starts_with("billing-scheduler@"), "{run:?}");
    assert_eq!(run.bills_created, 31);

    // Every gateway sees October billed; one of them ran it.
    let mut ran = 0;
    for gateway in &gateways {
        ran += runs_once_billed(gateway, 202610).await;
    }
    assert_eq!(ran, 2, "exactly one gateway ran October (and one September)");

    let bills = store.bills_of_month("2026-10").await.unwrap();
    assert_eq!(bills.len(), 31, "one bill per account with October calls");
    let tenant = bills.iter().find(|b| b.account_id == CLIENT_ACCOUNT).unwrap();
    assert_eq!(tenant.total, 6 * 250_000, "6 calls at 0.25");
    let charged = charges(&db).await;
    assert_eq!(charged.len(), 31, "one charge per bill: {charged:?}");
    let bill_ids: std::collections::HashSet<_> = charged.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(bill_ids.len(), 31, "no bill charged twice");
    assert!(
        store.bills_of_month("2026-11").await.unwrap().is_empty(),
        "November is open"
    );
    for gateway in gateways {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn months_missed_while_every_gateway_was_down_are_billed_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/billing.db", dir.path().display());
    // Every gateway was down from September to 5 December: the calls of September,
    // October and November reached the store, no run did.
    let december_5th = NOVEMBER + 30 * DAY + 4 * DAY + 10 * HOUR;
    let store = Store::connect(&store_url).await.unwrap();
    write_usage(
        &store,
        1,
        usage(&[
            ("alice", "2026-09", 2),
            ("bob", "2026-09", 1),
            ("alice", "2026-10", 3),
            ("alice", "2026-11", 1),
            ("alice", "2026-12", 5),
        ]),
        december_5th,
    )
    .await;
    let config = scheduled_config("http://127.0.0.1:9", &store_url);
    let gateway = GatewayHandle::start_with(config, Arc::new(ManualClock::new(december_5th))).await;
    poll_until("November to be billed", DEADLINE, || async {
        run_recorded(&store, "2026-11").await
    })
    .await;

    let runs: Vec<String> = store
        .billing_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.month)
        .collect();
    assert_eq!(runs, ["2026-09", "2026-10", "2026-11"]);
    // Oldest first: each month's calls are on that month's bill, as usage, not as a
    // late line of a later month.
    let alice = store.bills("alice").await.unwrap();
    let months: Vec<&str> = alice.iter().map(|b| b.month.as_str()).collect();
    assert_eq!(months, ["2026-09", "2026-10", "2026-11"], "December is open");
    for bill in &alice {
        let lines: serde_json::Value = serde_json::from_str(&bill.lines).unwrap();
        let lines = lines.as_array().unwrap();
        assert_eq!(lines.len(), 1, "{}", bill.lines);
        assert_eq!(lines[0]["kind"], "usage", "{}", bill.lines);
        assert_eq!(lines[0]["month"], bill.month.as_str());
    }
    assert_eq!(
        alice.iter().map(|b| b.total).collect::<Vec<_>>(),
        [500_000, 750_000, 250_000]
    );
    let bob = store.bills("bob").await.unwrap();
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].month, "2026-09");

    assert_eq!(runs_once_billed(&gateway, 202611).await, 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_month_not_billed_by_the_end_of_the_3rd_is_late_and_readiness_stays_green() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/billing.db", dir.path().display());
    let third_before_midnight = NOVEMBER + 3 * DAY - 60;
    let store = Store::connect(&store_url).await.unwrap();
    write_usage(&store, 1, usage(&[("alice", "2026-10", 2)]), third_before_midnight).await;
    // A run that never ends (its holder hung, renewing) keeps every scheduler out.
    assert!(
        store
            .try_lock_billing("hung-run", third_before_midnight, 30 * DAY)
            .await
            .unwrap()
    );
    let clock = ManualClock::new(third_before_midnight);
    let sim = SimHandle::start(|_| {}).await;
    let config = scheduled_config(&format!("http://{}", sim.addr), &store_url);
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    let metrics_at = |late: i64, billed: i64| {
        let gateway = &gateway;
        async move {
            let text = gateway.metrics().await;
            (metric(&text, "ekyc_gateway_billing_month_late") == late
                && metric(&text, "ekyc_gateway_billing_last_month_billed") == billed)
                .then_some(())
        }
    };
    clock.set(NOVEMBER + 3 * DAY);
    poll_until("October to be reported late", DEADLINE, || metrics_at(1, 0)).await;
    let (status, body) = get(&format!("http://{}/readyz", gateway.admin)).await;
    assert_eq!(status, 200, "serving matters more: {body:?}");
    // The billing.run_late webhook reaches the outbox just after the gauge is set; it is
    // there once for the month.
    let late_events = || async {
        let (_, events) = admin(&gateway, "GET", "/v1/webhooks/events", None).await;
        let ids: Vec<String> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "billing.run_late")
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        (!ids.is_empty()).then_some(ids)
    };
    let late = poll_until("the billing.run_late event", DEADLINE, late_events).await;
    assert_eq!(late.len(), 1, "{late:?}");
    let (_, event) = admin(&gateway, "GET", &format!("/v1/webhooks/events/{}", late[0]), None).await;
    assert_eq!(event["payload"]["data"]["month"], "2026-10", "{event}");

    // The hung run is gone: the next check bills October and the alarm clears.
    store.unlock_billing("hung-run").await.unwrap();
    poll_until("October to be billed and the alarm cleared", DEADLINE, || {
        metrics_at(0, 202610)
    })
    .await;
    assert_eq!(store.bills("alice").await.unwrap().len(), 1);
    gateway.shutdown().await;
}

/// libfaketime, which `scripts/test` installs (Debian package `faketime`).
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| panic!("libfaketime not found in {candidates:?}: apt-get install faketime"))
        .to_string()
}

/// The leader is a real `serve` process whose clock libfaketime sets to 1 November
/// 02:30 (UTC+8): it takes the lease and bills October. Its second transaction of
/// bills is held up (the test has a row of that chunk locked), so it is SIGKILLed with
/// the first 2,000 bills committed. Two gateways on pinned clocks past the lease's
/// expiry then race to finish: one does, every account has exactly one bill and one
/// charge.
#[tokio::test]
async fn a_leader_killed_mid_run_is_finished_by_another_gateway_without_billing_twice() {
    const ACCOUNTS: usize = 2100;
    let db = PgDatabase::create().await;
    let store = Store::connect(&db.url()).await.unwrap();
    let leader_start = NOVEMBER + 2 * HOUR + 30 * 60;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i:05}")).collect();
    let rows: Vec<(&str, &str, u64)> = accounts.iter().map(|a| (a.as_str(), "2026-10", 2)).collect();
    write_usage(&store, 1, usage(&rows), leader_start - DAY).await;

    // The first account of the run's second transaction (accounts are billed in id
    // order, 2,000 per transaction): a bill row for it, inserted and not committed.
    let (blocker, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    blocker
        .batch_execute(
            "BEGIN; INSERT INTO bills (id, account_id, month, currency, subtotal, total, lines, issued_at) \
             VALUES ('B202610-acct-02000', 'acct-02000', '2026-10', 'USD', 0, 0, '[]', 0)",
        )
        .await
        .unwrap();

    let mut env: Vec<(&str, &str)> = process_env()
        .into_iter()
        .filter(|(k, _)| *k != "EKYC_BILLING_SCHEDULER")
        .collect();
    let preload = libfaketime();
    // 02:30 at UTC+8 is 18:30 UTC the day before.
    env.extend([
        ("EKYC_BILLING_SCHEDULER", "on"),
        ("LD_PRELOAD", preload.as_str()),
        ("FAKETIME", "@2026-10-31 18:30:00"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("TZ", "UTC"),
    ]);
    let upstream = closed_port().await;
    let toml = format!(
        "[upstream]\nurl = \"http://{upstream}\"\n[store]\nurl = \"{}\"\n{SCHEDULED}",
        db.url()
    );
    let mut leader = GatewayProcess::start(&toml, &env).await;

    poll_until("the leader to commit its first 2,000 bills and wait on the next", DEADLINE, || {
        let (store, db) = (&store, &db);
        async move {
            let committed = store.bills_of_month("2026-10").await.unwrap().len();
            let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (committed == 2000 && waiting == 1).then_some(())
        }
    })
    .await;
    let (holder, expires_at) = store.billing_lock().await.unwrap().expect("the leader's lease");
    assert!(holder.starts_with("billing-scheduler@"), "{holder}");
    assert!(
        (leader_start..leader_start + 10 * 60).contains(&(expires_at - 60)),
        "the lease runs on the leader's (faked) clock: {expires_at}"
    );
    leader.kill();
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        run_recorded(&store, "2026-10").await.is_none(),
        "the leader died mid-run"
    );

    let after_the_lease = expires_at + 1;
    let mut survivors = Vec::new();
    for _ in 0..2 {
        let config = scheduled_config(&format!("http://{upstream}"), &db.url());
        survivors.push(GatewayHandle::start_with(config, Arc::new(ManualClock::new(after_the_lease))).await);
    }
    let run = poll_until("a survivor to finish October", DEADLINE, || async {
        run_recorded(&store, "2026-10").await
    })
    .await;
    assert_ne!(
        run.actor,
        holder.rsplit_once(':').unwrap().0,
        "the dead leader did not finish"
    );
    assert_eq!(
        run.bills_created,
        (ACCOUNTS - 2000) as u64,
        "the rest, not the first 2,000 again"
    );

    let bills = store.bills_of_month("2026-10").await.unwrap();
    assert_eq!(bills.len(), ACCOUNTS);
    assert!(bills.iter().all(|b| b.total == 500_000), "2 calls at 0.25 each");
    let charged = charges(&db).await;
    let charged_accounts: Vec<_> = charged.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(charged_accounts, accounts, "every account charged exactly once");
    let mut ran = 0;
    for survivor in &survivors {
        ran += runs_once_billed(survivor, 202610).await;
    }
    assert_eq!(ran, 1, "one survivor ran it");
    for survivor in survivors {
        survivor.shutdown().await;
    }
}
