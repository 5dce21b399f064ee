//! Metering under faults, against real PostgreSQL: three gateway processes bill exactly
//! what was served; a gateway killed with SIGKILL during load loses no counted call and
//! counts none twice; the store cut off for 30 s loses nothing; a COMMIT whose answer is
//! lost is not applied twice.

mod common;

use common::faults::*;
use common::*;
use ekyc_gateway::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ACTIONS: [&str; 4] = [
    "LivenessCompare",
    "IdCardVerification",
    "DetectAuth",
    "GetFaceIdTokenIntl",
];

fn sum_by_action(counts: &BTreeMap<(String, String), u64>, action: &str) -> u64 {
    counts.iter().filter(|((_, a), _)| a == action).map(|(_, n)| n).sum()
}

async fn wait_for_progress(progress: &AtomicU64, at_least: u64, what: &str) {
    poll_until(what, Duration::from_secs(120), || async {
        (progress.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_bill_exactly_what_was_served() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|c| c.error_rate = 0.2).await;
    let db = PgDatabase::create().await;
    let redis = RedisServer::start().await;
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"{}\"\n[state]\nredis_url = \"{}\"\n\
         [rate_limit]\ndefault_qps = 0\n[meter]\nflush_interval_ms = 200\n",
        sim.addr,
        db.url(),
        redis.url()
    );
    let env = process_env();
    let gateways = [
        GatewayProcess::start(&config, &env).await,
        GatewayProcess::start(&config, &env).await,
        GatewayProcess::start(&config, &env).await,
    ];
    let tenants = create_tenants(gateways[0].admin, 20).await;
    for gateway in &gateways {
        until_known(gateway.data, tenants.last().unwrap()).await;
    }
    let load = Arc::new(Load {
        targets: gateways.iter().map(|g| g.data).collect(),
        tenants: tenants.clone(),
        actions: ACTIONS.to_vec(),
        concurrency: 24,
    });
    let started = Instant::now();
    let tally = run_load(load, 50_000, Arc::default(), Arc::default()).await;
    let elapsed = started.elapsed();
    assert_eq!(tally.failed, 0, "no call may fail without a fault");
    assert!(tally.refused.is_empty(), "no call may be refused: {:?}", tally.refused);
    assert_eq!(tally.total_ok() + tally.api_errors, 50_000);
    assert!(tally.api_errors > 5_000, "the load must include API errors");
    for gateway in gateways {
        assert!(gateway.terminate().await.success(), "final flush on SIGTERM");
    }

    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    assert_eq!(billed.len(), 20 * ACTIONS.len());
    assert_eq!(
        billed, tally.ok,
        "billed per (account, action) = the clients' successes"
    );
    for action in ACTIONS {
        assert_eq!(
            sum_by_action(&billed, action),
            sim.successes(action).await,
            "{action}: billed = the simulator's successes"
        );
    }
    eprintln!(
        "3 gateways: {} calls ({} billable, {} API errors) in {:.1} s, reconciled exactly",
        50_000,
        tally.total_ok(),
        tally.api_errors,
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_counted_call_and_counts_none_twice() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|c| c.error_rate = 0.2).await;
    let db = PgDatabase::create().await;
    // A short flush interval, so kills land in every phase of a flush.
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"{}\"\n[rate_limit]\ndefault_qps = 0\n\
         [meter]\nflush_interval_ms = 15\n",
        sim.addr,
        db.url()
    );
    let env = process_env();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = GatewayProcess::start_in(dir.path(), &config, &env).await;
    let tenants = create_tenants(gateway.admin, 5).await;
    const CONCURRENCY: usize = 12;
    const KILLS: u64 = 3;
    let mut tally = Tally::default();
    for kill in 1..=KILLS {
        let load = Arc::new(Load {
            targets: vec![gateway.data],
            tenants: tenants.clone(),
            actions: ACTIONS.to_vec(),
            concurrency: CONCURRENCY,
        });
        let (stop, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let running = tokio::spawn(run_load(load, usize::MAX, stop.clone(), progress.clone()));
        wait_for_progress(&progress, 1_500, "calls before the kill").await;
        gateway.kill();
        stop.store(true, Ordering::SeqCst);
        let part = running.await.unwrap();
        eprintln!("kill {kill}: {} ok, {} cut in flight", part.total_ok(), part.failed);
        for (key, n) in part.ok {
            *tally.ok.entry(key).or_default() += n;
        }
        tally.failed += part.failed;
        gateway = GatewayProcess::start_in(dir.path(), &config, &env).await;
    }
    assert!(gateway.terminate().await.success());

    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    let (clients, billed_total) = (tally.total_ok(), billed.values().sum::<u64>());
    let served = sim_successes(&sim, &ACTIONS).await;
    for (key, ok) in &tally.ok {
        assert!(
            billed.get(key).copied().unwrap_or(0) >= *ok,
            "{key:?}: billed below the clients' successes"
        );
    }
    for action in ACTIONS {
        assert!(
            sum_by_action(&billed, action) <= sim.successes(action).await,
            "{action}: billed above what the simulator served (double count)"
        );
    }
    let in_flight_bound = KILLS * CONCURRENCY as u64;
    assert!(clients <= billed_total && billed_total <= served);
    assert!(
        served - clients <= in_flight_bound,
        "gaps bounded by the calls in flight at the kills: clients {clients}, billed {billed_total}, served {served}"
    );
    eprintln!(
        "after {KILLS} SIGKILLs: clients {clients} <= billed {billed_total} <= served {served} (bound {in_flight_bound})"
    );
}

/// A gateway whose store is reached through a relay the test controls.
async fn gateway_behind_relay(sim: &SimHandle, db: &PgDatabase, relay: &TcpRelay) -> GatewayHandle {
    let mut config = gateway_config(
        &format!("http://{}", sim.addr),
        "[rate_limit]\ndefault_qps = 0\n[meter]\nflush_interval_ms = 100\n[store]\ntimeout_ms = 1000\n",
    );
    config.store_url = relay.store_url(db);
    GatewayHandle::start_with(config, Arc::new(SystemClock)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_cut_off_for_30_seconds_loses_nothing() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|c| c.error_rate = 0.2).await;
    let db = PgDatabase::create().await;
    let relay = TcpRelay::in_front_of(&db).await;
    let gateway = gateway_behind_relay(&sim, &db, &relay).await;
    let tenants = create_tenants(gateway.admin, 4).await;
    let load = Arc::new(Load {
        targets: vec![gateway.data],
        tenants: tenants.clone(),
        actions: ACTIONS.to_vec(),
        concurrency: 4,
    });
    let (stop, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let running = tokio::spawn(run_load(load, usize::MAX, stop.clone(), progress.clone()));
    wait_for_progress(&progress, 300, "calls before the cut").await;

    relay.cut();
    let cut_at = Instant::now();
    let failed_before = gateway.app.plane.metrics.flush_batches_failed.get();
    let served_before = progress.load(Ordering::SeqCst);
    poll_until(
        "flushes to fail while the store is away",
        Duration::from_secs(10),
        || async { (gateway.app.plane.metrics.flush_batches_failed.get() > failed_before).then_some(()) },
    )
    .await;
    // The fault itself lasts 30 s; the gateway keeps serving meanwhile.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed())).await;
    let served_during = progress.load(Ordering::SeqCst) - served_before;
    assert!(
        served_during > 100,
        "the gateway must keep serving while the store is away"
    );
    assert!(gateway.app.plane.counters.pending() > 0, "counts are kept meanwhile");
    relay.restore();

    // Back: the backlog drains without a restart, within the capped backoff.
    poll_until("the backlog to reach the store", Duration::from_secs(30), || async {
        (gateway.app.plane.counters.pending() < 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let tally = running.await.unwrap();
    assert_eq!(tally.failed, 0);
    gateway.shutdown().await;

    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    assert_eq!(billed, tally.ok, "nothing lost, nothing doubled");
    assert_eq!(billed.values().sum::<u64>(), sim_successes(&sim, &ACTIONS).await);
    eprintln!(
        "store cut 30 s: {served_during} calls served meanwhile; {} billed = clients = simulator",
        tally.total_ok()
    );
}

/// The store stops answering on the connection a flush has begun its transaction on,
/// without closing it (a primary gone silent after a failover), while other connections
/// work: the flush gives up after `store.timeout_ms` and sends the batch again on
/// another, and closes the silent one rather than returning it to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_stuck_on_a_silent_connection_goes_on_with_a_fresh_one() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let relay = TcpRelay::in_front_of(&db).await;
    let gateway = gateway_behind_relay(&sim, &db, &relay).await;
    let tenants = create_tenants(gateway.admin, 3).await;
    let load = Arc::new(Load {
        targets: vec![gateway.data],
        tenants: tenants.clone(),
        actions: ACTIONS.to_vec(),
        concurrency: 4,
    });
    let mut tally = run_load(load.clone(), 300, Arc::default(), Arc::default()).await;
    poll_until(
        "the first calls to reach the store",
        Duration::from_secs(10),
        || async { (gateway.app.plane.counters.pending() == 0).then_some(()) },
    )
    .await;

    let failed_before = gateway.app.plane.metrics.flush_batches_failed.get();
    relay.strand_next_transaction();
    let stranded_at = Instant::now();
    let more = run_load(load, 300, Arc::default(), Arc::default()).await;
    poll_until(
        "a flush to wait on a silent connection",
        Duration::from_secs(10),
        || async { (relay.held_bytes() > 0).then_some(()) },
    )
    .await;
    poll_until(
        "the calls to reach the store anyway",
        Duration::from_secs(30),
        || async { (gateway.app.plane.counters.pending() == 0).then_some(()) },
    )
    .await;
    let took = stranded_at.elapsed();
    assert!(gateway.app.plane.metrics.flush_batches_failed.get() > failed_before);
    gateway.shutdown().await;

    for (key, calls) in more.ok {
        *tally.ok.entry(key).or_default() += calls;
    }
    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    assert_eq!(billed, tally.ok, "nothing lost, nothing doubled");
    assert_eq!(billed.values().sum::<u64>(), sim_successes(&sim, &ACTIONS).await);
    eprintln!("a flush stranded: every call billed {took:?} later, with store.timeout_ms = 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_not_applied_twice() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|c| c.error_rate = 0.2).await;
    let db = PgDatabase::create().await;
    let relay = TcpRelay::in_front_of(&db).await;
    let gateway = gateway_behind_relay(&sim, &db, &relay).await;
    let tenants = create_tenants(gateway.admin, 3).await;
    // Armed after the set-up's own transactions: the next COMMIT is a flush's.
    relay.swallow_next_commit_reply();
    let load = Arc::new(Load {
        targets: vec![gateway.data],
        tenants: tenants.clone(),
        actions: ACTIONS.to_vec(),
        concurrency: 4,
    });
    let tally = run_load(load, 2_000, Arc::default(), Arc::default()).await;
    poll_until("a COMMIT answer to be swallowed", Duration::from_secs(10), || async {
        (relay.swallowed() == 1).then_some(())
    })
    .await;
    poll_until("the batch to be retried", Duration::from_secs(10), || async {
        (gateway.app.plane.metrics.flush_batches_failed.get() >= 1 && gateway.app.plane.counters.pending() == 0)
            .then_some(())
    })
    .await;
    gateway.shutdown().await;

    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    assert_eq!(billed, tally.ok, "the retried batch must not count twice");
    assert_eq!(billed.values().sum::<u64>(), sim_successes(&sim, &ACTIONS).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_frozen_at_a_kill_is_resent_under_its_id_at_the_next_start() {
    let first_call_at = SystemClock.now_unix();
    let sim = SimHandle::start(|c| c.error_rate = 0.2).await;
    let db = PgDatabase::create().await;
    let relay = TcpRelay::in_front_of(&db).await;
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"{}\"\n[rate_limit]\ndefault_qps = 0\n\
         [meter]\nflush_interval_ms = 50\n",
        sim.addr,
        relay.store_url(&db)
    );
    let env = process_env();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = GatewayProcess::start_in(dir.path(), &config, &env).await;
    let tenants = create_tenants(gateway.admin, 3).await;
    relay.cut();
    let load = Arc::new(Load {
        targets: vec![gateway.data],
        tenants: tenants.clone(),
        actions: ACTIONS.to_vec(),
        concurrency: 4,
    });
    let tally = run_load(load, 600, Arc::default(), Arc::default()).await;
    assert_eq!(tally.failed, 0);
    gateway.logs.wait_for("usage flush failed").await;
    // Killed with a frozen batch that never reached the store, and newer counts behind it.
    gateway.kill();
    relay.restore();
    let gateway = GatewayProcess::start_in(dir.path(), &config, &env).await;
    gateway
        .logs
        .wait_for("resending the usage batch left frozen in the meter journal")
        .await;
    assert!(gateway.terminate().await.success());

    let billed = billed(&db.url(), &tenants, &billing_months_since(first_call_at)).await;
    assert_eq!(billed, tally.ok, "every counted call, once");
    assert_eq!(billed.values().sum::<u64>(), sim_successes(&sim, &ACTIONS).await);
}
