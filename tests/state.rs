//! Account state shared by several gateways through Redis and PostgreSQL: operators'
//! changes reach every gateway within the propagation bound, revoked credentials stop
//! everywhere, Redis can die, restart empty or be flushed without losing a change, and
//! a gateway cut off for too long applies its staleness policy.

mod common;

use common::*;
use ekyc_gateway::clock::ManualClock;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway in front of `sim` using the shared PostgreSQL database and Redis.
async fn shared_gateway(sim: &SimHandle, db: &PgDatabase, redis: &RedisServer, extra: &str) -> GatewayHandle {
    gateway_on(sim, &db.url(), redis, 500, extra).await
}

/// A gateway in front of `sim` with the store at `store_url`, re-syncing from `redis`
/// every `resync_ms`.
async fn gateway_on(
    sim: &SimHandle,
    store_url: &str,
    redis: &RedisServer,
    resync_ms: u64,
    extra: &str,
) -> GatewayHandle {
    let mut config = gateway_config(
        &format!("http://{}", sim.addr),
        &format!(
            "[state]\nredis_url = \"{}\"\nresync_interval_ms = {resync_ms}\n{extra}",
            redis.url()
        ),
    );
    config.store_url = store_url.to_string();
    GatewayHandle::start_with(config, Arc::new(ekyc_gateway::clock::SystemClock)).await
}

async fn code_of(gateway: &GatewayHandle, signer: &ekyc_gateway::tc3::Signer) -> Option<String> {
    let request = signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", signer);
    let answer = send(&http1_client(), request).await;
    error_code(&answer).map(str::to_string)
}

/// Polls until `gateway` answers `want` (None = success) for calls signed by `signer`.
async fn until_code(
    gateway: &GatewayHandle,
    signer: &ekyc_gateway::tc3::Signer,
    want: Option<&str>,
    deadline: Duration,
) -> Duration {
    let started = Instant::now();
    poll_until(&format!("{} to answer {want:?}", gateway.data), deadline, || async {
        (code_of(gateway, signer).await.as_deref() == want).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn operator_changes_reach_every_gateway_within_100_ms() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let redis = RedisServer::start().await;
    let a = shared_gateway(&sim, &db, &redis, "").await;
    let b = shared_gateway(&sim, &db, &redis, "").await;
    let c = shared_gateway(&sim, &db, &redis, "").await;

    let (status, account) = admin(
        &a,
        "POST",
        "/v1/accounts",
        Some(json!({"id": "acme", "name": "Acme Ltd"})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["activated"], false);
    let (status, _) = admin(&a, "POST", "/v1/accounts", Some(json!({"id": "acme", "name": "again"}))).await;
    assert_eq!(status, 409);
    let (_, created) = admin(&a, "POST", "/v1/accounts/acme/credentials", None).await;
    let signer = ekyc_gateway::tc3::Signer::new(
        created["secret_id"].as_str().unwrap(),
        created["secret_key"].as_str().unwrap(),
        "faceid",
    );
    for g in [&a, &b, &c] {
        until_code(
            g,
            &signer,
            Some("UnauthorizedOperation.Nonactivated"),
            Duration::from_secs(5),
        )
        .await;
    }
    admin(&a, "POST", "/v1/accounts/acme/activate", None).await;
    for g in [&a, &b, &c] {
        until_code(g, &signer, None, Duration::from_secs(5)).await;
    }

    // Suspend / resume 20 times; each time measure how long B and C take to refuse.
    let mut delays = Vec::new();
    for round in 0..20 {
        let (status, body) = admin(
            &a,
            "POST",
            "/v1/accounts/acme/suspend",
            Some(json!({"reason": format!("round {round}")})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["suspensions"][0]["flag"], "manual");
        let returned = Instant::now();
        assert_eq!(code_of(&a, &signer).await.as_deref(), Some("OperationDenied"));
        for g in [&b, &c] {
            until_code(g, &signer, Some("OperationDenied"), Duration::from_secs(2)).await;
        }
        delays.push(returned.elapsed());
        admin(&a, "POST", "/v1/accounts/acme/resume", None).await;
        for g in [&b, &c] {
            until_code(g, &signer, None, Duration::from_secs(2)).await;
        }
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let p99 = delays[delays.len() - 1];
    eprintln!("propagation suspend -> refused on 2 other gateways: p50 {p50:?}, max (p99 of 20) {p99:?}");
    assert!(p99 <= Duration::from_millis(100), "propagation took {p99:?}");

    // Revocation reaches every gateway too.
    admin(
        &b,
        "DELETE",
        &format!("/v1/credentials/{}", created["secret_id"].as_str().unwrap()),
        None,
    )
    .await;
    for g in [&a, &b, &c] {
        until_code(g, &signer, Some("AuthFailure.InvalidSecretId"), Duration::from_secs(1)).await;
    }

    // Rate-limit override and audit entries with before/after.
    let (status, body) = admin(&c, "PUT", "/v1/accounts/acme/rate-limit", Some(json!({"qps": 7}))).await;
    assert_eq!((status, body["rate_limit_qps"].as_u64()), (200, Some(7)), "{body}");
    let (_, audit) = admin(&a, "GET", "/v1/audit?account=acme&limit=1000", None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.len() >= 2 + 40 + 2, "{}", entries.len());
    let last = &entries[0];
    assert_eq!(last["action"], "account.rate_limit");
    assert_eq!(last["actor"], "admin");
    assert_eq!(last["before"]["rate_limit_qps"], serde_json::Value::Null);
    assert_eq!(last["after"]["rate_limit_qps"], 7);
    // The audit log is append-only in PostgreSQL itself.
    assert!(execute_raw(&a.app, "DELETE FROM audit_log").await.is_err());
    assert!(execute_raw(&a.app, "UPDATE audit_log SET actor = 'x'").await.is_err());
}

#[tokio::test]
async fn redis_loss_restart_and_flush_lose_no_change() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let mut redis = RedisServer::start().await;
    let a = shared_gateway(&sim, &db, &redis, "").await;
    let b = shared_gateway(&sim, &db, &redis, "").await;
    let tenant = client_signer();
    until_code(&b, &tenant, None, Duration::from_secs(5)).await;

    // Redis dies: both keep serving on the last known state.
    redis.kill();
    for _ in 0..5 {
        assert_eq!(code_of(&a, &tenant).await, None);
        assert_eq!(code_of(&b, &tenant).await, None);
    }
    // An operator suspends while Redis is down: stored, enforced where it was made,
    // and delivered to the others once Redis is back (empty: refilled from SQL).
    let (status, body) = admin(
        &a,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/suspend"),
        Some(json!({"reason": "fraud check"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code_of(&a, &tenant).await.as_deref(), Some("OperationDenied"));
    assert_eq!(code_of(&b, &tenant).await, None, "b cannot know yet");
    let (status, ready) = get(&format!("http://{}/readyz", b.admin)).await;
    assert_eq!(
        status,
        200,
        "within max_staleness the gateway stays ready: {}",
        String::from_utf8_lossy(&ready)
    );
    redis.restart().await;
    until_code(&b, &tenant, Some("OperationDenied"), Duration::from_secs(15)).await;

    // FLUSHALL: the next resync refills Redis from SQL.
    let count_of_writes = || redis.command(&["HGET", "ekyc:accounts", "#generation"]);
    let before_the_wipe = count_of_writes().await;
    redis.command(&["FLUSHALL"]).await;
    poll_until("Redis to be refilled", Duration::from_secs(10), || async {
        (redis.command(&["EXISTS", "ekyc:filled"]).await == redis::Value::Int(1)).then_some(())
    })
    .await;
    // The one account, and the hash's count of writes: refilled with as many writes as
    // before, yet never the count a gateway read before the wipe (it would skip reading).
    let hlen = redis.command(&["HLEN", "ekyc:accounts"]).await;
    assert_eq!(hlen, redis::Value::Int(2));
    let after_the_refill = count_of_writes().await;
    assert!(
        matches!(after_the_refill, redis::Value::BulkString(_)) && after_the_refill != before_the_wipe,
        "{before_the_wipe:?} then {after_the_refill:?}"
    );
    admin(&b, "POST", &format!("/v1/accounts/{CLIENT_ACCOUNT}/resume"), None).await;
    until_code(&a, &tenant, None, Duration::from_secs(2)).await;

    // A change committed to SQL whose publication never happened (its writer died):
    // Redis keeps its data, but any gateway that reconnects copies SQL over it first.
    a.app
        .store
        .update_account(CLIENT_ACCOUNT, "test", "account.suspend", 0, |account| {
            account.manual = Some(ekyc_gateway::store::records::Suspension {
                reason: "written by a process that died".into(),
                since: 0,
            });
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(code_of(&b, &tenant).await, None, "nobody published it");
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    until_code(&b, &tenant, Some("OperationDenied"), Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_gateway_cut_off_too_long_applies_its_staleness_policy() {
    let sim = SimHandle::start(|_| {}).await;
    let mut redis = RedisServer::start().await;
    let tenant = client_signer();
    for (policy, expected) in [("fail_closed", Some("ServiceUnavailable")), ("fail_open", None)] {
        let clock = ManualClock::new(ekyc_gateway::clock::Clock::now_unix(&ekyc_gateway::clock::SystemClock));
        let config = gateway_config(
            &format!("http://{}", sim.addr),
            &format!(
                "[state]\nredis_url = \"{}\"\nmax_staleness_ms = 60000\nstale_policy = \"{policy}\"\n",
                redis.url()
            ),
        );
        let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
        // The sim checks signatures on the real clock; the gateway signs on its own.
        assert_eq!(code_of(&gateway, &tenant).await, None);
        // The cache session's first sync (after the load at start) must be complete
        // before the clock moves, or it would count as a sync made after the jump.
        poll_until("the cache session's first sync", Duration::from_secs(10), || async {
            (gateway.app.freshness.syncs() >= 2).then_some(())
        })
        .await;
        redis.kill();
        clock.advance(30);
        assert_eq!(code_of(&gateway, &tenant).await, None, "{policy}: within max_staleness");
        clock.advance(31);
        let request = signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", &tenant);
        let answer = send(&http1_client(), request).await;
        if expected == Some("ServiceUnavailable") {
            // The client signed on the real clock, 61 s behind the gateway's: still in the window.
            assert_eq!(error_code(&answer), expected, "{policy}: {answer}");
            // Tenant actions too: they answer from the same stale state.
            let request = signed_call(
                &gateway.url(),
                &gateway.data.to_string(),
                "DescribeServiceStatus",
                b"{}",
                &tenant,
            );
            let answer = send(&http1_client(), request).await;
            assert_eq!(error_code(&answer), expected, "{policy}, a tenant action: {answer}");
            let (status, ready) = get(&format!("http://{}/readyz", gateway.admin)).await;
            assert_eq!(status, 503, "{}", String::from_utf8_lossy(&ready));
            assert!(String::from_utf8_lossy(&ready).contains("stale"));
            let metrics = gateway.metrics().await;
            assert!(metrics.contains("ekyc_gateway_state_age_seconds 61"), "{metrics}");
        } else {
            assert!(answer.get("Error").is_none(), "{policy}: {answer}");
        }
        gateway.shutdown().await;
        redis.restart().await;
    }
}

/// The figure the account-state issue asks for: three `serve` processes sharing one
/// Redis and one PostgreSQL; after an operator's suspend returns on one, how long until
/// the other two refuse the account.
#[tokio::test]
async fn propagation_across_three_gateway_processes() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let redis = RedisServer::start().await;
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"{}\"\n[state]\nredis_url = \"{}\"\n",
        sim.addr,
        db.url(),
        redis.url()
    );
    let env = process_env();
    let a = GatewayProcess::start(&config, &env).await;
    let b = GatewayProcess::start(&config, &env).await;
    let c = GatewayProcess::start(&config, &env).await;

    admin_at(
        a.admin,
        "POST",
        "/v1/accounts",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    admin_at(a.admin, "POST", "/v1/accounts/acme/activate", None).await;
    let (_, created) = admin_at(a.admin, "POST", "/v1/accounts/acme/credentials", None).await;
    let signer = ekyc_gateway::tc3::Signer::new(
        created["secret_id"].as_str().unwrap(),
        created["secret_key"].as_str().unwrap(),
        "faceid",
    );
    let code = |url: String, host: String| {
        let request = signed_call(&url, &host, "DetectAuth", b"{}", &signer);
        async move { error_code(&send(&http1_client(), request).await).map(str::to_string) }
    };
    let until = |p: &GatewayProcess, want: Option<&'static str>| {
        let (url, host) = (p.url(), p.data.to_string());
        let code = &code;
        async move {
            poll_until("the gateway process to agree", Duration::from_secs(5), || {
                let (url, host) = (url.clone(), host.clone());
                async move { (code(url, host).await.as_deref() == want).then_some(()) }
            })
            .await
        }
    };
    for p in [&a, &b, &c] {
        until(p, None).await;
    }
    let mut delays = Vec::new();
    for round in 0..50 {
        let (status, _) = admin_at(
            a.admin,
            "POST",
            "/v1/accounts/acme/suspend",
            Some(json!({"reason": format!("r{round}")})),
        )
        .await;
        assert_eq!(status, 200);
        let returned = Instant::now();
        until(&b, Some("OperationDenied")).await;
        until(&c, Some("OperationDenied")).await;
        delays.push(returned.elapsed());
        admin_at(a.admin, "POST", "/v1/accounts/acme/resume", None).await;
        until(&b, None).await;
        until(&c, None).await;
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let p99 = delays[(delays.len() * 99 / 100).min(delays.len() - 1)];
    eprintln!(
        "propagation over 3 processes, 50 suspensions: p50 {p50:?}, p99 {p99:?}, max {:?} (includes the polling calls)",
        delays[delays.len() - 1]
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
}

/// More records than one page of the mirror's read: every one is loaded at start and at
/// a re-sync, whatever the size of the hash; and a re-sync reads the hashes again only
/// when their count of writes has moved (every write made through the script moves it
/// and comes as an event as well).
#[tokio::test]
async fn a_hash_larger_than_a_page_loads_whole_and_again_only_after_a_write() {
    const ACCOUNTS: usize = 4_500;
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let account = |i: usize, suspended: bool, version: i64| ekyc_gateway::store::records::AccountRecord {
        id: format!("acct-{i}"),
        name: format!("account {i}"),
        activated: true,
        activated_at: Some(1),
        manual: suspended.then(|| ekyc_gateway::store::records::Suspension {
            reason: "test".into(),
            since: 1,
        }),
        arrears: None,
        rate_limit_qps: None,
        credit_limit: None,
        created_at: 1,
        version,
    };
    let mut pipe = redis::pipe();
    for i in 0..ACCOUNTS {
        let record = account(i, i % 3 == 0, 1);
        pipe.hset("ekyc:accounts", &record.id, serde_json::to_string(&record).unwrap())
            .ignore();
    }
    pipe.hset("ekyc:accounts", "#generation", 1).ignore();
    pipe.hset("ekyc:credentials", "#generation", 1).ignore();
    pipe.set("ekyc:filled", "1").ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let suspended = |n: usize| format!("ekyc_gateway_accounts_suspended{{flag=\"manual\"}} {n}\n");

    let gateway = shared_gateway(&sim, &db, &redis, "").await;
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!("ekyc_gateway_accounts_loaded {ACCOUNTS}\n")),
        "{metrics}"
    );
    assert!(metrics.contains(&suspended(ACCOUNTS.div_ceil(3))), "{metrics}");
    // The subscription's first sync finds the counts where the initial load read them:
    // the hashes are not read twice at start.
    let resyncs = |metrics: &str, read: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("ekyc_gateway_state_resyncs_total{{read=\"{read}\"}} ")))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("the re-sync counter")
    };
    let metrics = poll_until("the subscription's first sync", Duration::from_secs(10), || async {
        let metrics = gateway.metrics().await;
        (resyncs(&metrics, "skipped") >= 1).then_some(metrics)
    })
    .await;
    assert_eq!(resyncs(&metrics, "whole"), 0, "{metrics}");

    // A record changed with the count moved, and no event: only a re-sync reads it.
    let record = account(3, false, 2);
    let _: () = redis::AsyncCommands::hset(
        &mut conn,
        "ekyc:accounts",
        "acct-3",
        serde_json::to_string(&record).unwrap(),
    )
    .await
    .unwrap();
    let _: () = redis::AsyncCommands::hincr(&mut conn, "ekyc:accounts", "#generation", 1)
        .await
        .unwrap();
    let want = suspended(ACCOUNTS.div_ceil(3) - 1);
    poll_until(
        "a re-sync to read the changed hash",
        Duration::from_secs(10),
        || async { gateway.metrics().await.contains(&want).then_some(()) },
    )
    .await;
    // Once a re-sync has found the count where the last read left it...
    let skipped = |metrics: &str| resyncs(metrics, "skipped");
    let skipped_before = skipped(&gateway.metrics().await);
    poll_until(
        "a re-sync to skip the unchanged hashes",
        Duration::from_secs(10),
        || async { (skipped(&gateway.metrics().await) > skipped_before).then_some(()) },
    )
    .await;
    // ...a record changed with the count left as it was stays unread...
    let record = account(0, false, 2);
    let _: () = redis::AsyncCommands::hset(
        &mut conn,
        "ekyc:accounts",
        "acct-0",
        serde_json::to_string(&record).unwrap(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let metrics = gateway.metrics().await;
        assert!(metrics.contains(&want), "a re-sync read an unchanged hash: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...until the count moves: then the whole hash is read again.
    let _: () = redis::AsyncCommands::hincr(&mut conn, "ekyc:accounts", "#generation", 1)
        .await
        .unwrap();
    let want = suspended(ACCOUNTS.div_ceil(3) - 2);
    poll_until(
        "a re-sync to read the changed hash",
        Duration::from_secs(10),
        || async { gateway.metrics().await.contains(&want).then_some(()) },
    )
    .await;
}

/// A repair of Redis from SQL waits on the billing store; a database that stops
/// answering (held, not refused) holds it for as long. Changes published meanwhile are
/// still applied at once: the subscription is read while the repair waits.
#[tokio::test]
async fn changes_apply_while_a_repair_waits_on_an_unanswering_store() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let redis = RedisServer::start().await;
    let relay = common::faults::TcpRelay::in_front_of(&db).await;
    // Its flush held off: what waits on the held store is the repair.
    let waiting = gateway_on(
        &sim,
        &relay.store_url(&db),
        &redis,
        200,
        "[meter]\nflush_interval_ms = 3600000\n",
    )
    .await;
    // The operator's gateway re-syncs rarely: it leaves the repair to `waiting`.
    let operator = gateway_on(&sim, &db.url(), &redis, 3_600_000, "").await;
    let tenant = client_signer();
    until_code(&waiting, &tenant, None, Duration::from_secs(5)).await;

    relay.hold();
    redis.command(&["FLUSHALL"]).await;
    poll_until("the repair to wait on the store", Duration::from_secs(30), || async {
        (relay.held_bytes() > 0).then_some(())
    })
    .await;
    let (status, body) = admin(
        &operator,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/suspend"),
        Some(json!({"reason": "fraud check"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Held, the repair never ends: any deadline tells the two apart; this one leaves
    // room for a loaded machine.
    let took = until_code(&waiting, &tenant, Some("OperationDenied"), Duration::from_secs(10)).await;
    eprintln!("suspension applied {took:?} after it was made, the store held meanwhile");

    // The store answers again: the repair completes and the suspension stays.
    relay.release();
    poll_until("Redis to be refilled", Duration::from_secs(30), || async {
        (redis.command(&["EXISTS", "ekyc:filled"]).await == redis::Value::Int(1)).then_some(())
    })
    .await;
    assert_eq!(code_of(&waiting, &tenant).await.as_deref(), Some("OperationDenied"));
    admin(
        &operator,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/resume"),
        None,
    )
    .await;
    until_code(&waiting, &tenant, None, Duration::from_secs(10)).await;
}
