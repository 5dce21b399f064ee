//! Gateways on a Redis Sentinel set (a master, two replicas, three sentinels, all real
//! processes): the master is SIGKILLed under load; a replica is promoted, every gateway
//! follows it, a suspension made while no master was reachable reaches every gateway,
//! changes keep flowing through the new master, and the calls under load are served
//! from the mirror meanwhile, none refused.

mod common;

use common::redis_ha::{SentinelSet, active_account, code_of, gateway_on, toml_list, until_code};
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test]
async fn gateways_follow_a_sentinel_failover_without_losing_a_change() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let mut set = SentinelSet::start(1000).await;
    let state = format!(
        "sentinel_master = \"{}\"\nsentinels = {}",
        set.master_name,
        toml_list(&set.sentinel_urls())
    );
    let a = Arc::new(gateway_on(&sim, &db, &state).await);
    let b = Arc::new(gateway_on(&sim, &db, &state).await);

    let busy = active_account(&a, "busy").await;
    let other = active_account(&a, "other").await;
    for g in [&a, &b] {
        until_code(g, &busy, None, Duration::from_secs(5)).await;
        until_code(g, &other, None, Duration::from_secs(5)).await;
    }

    // Calls on both gateways for the whole failover, one after another.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (a, b, busy, stop, served) = (a.clone(), b.clone(), busy.clone(), stop.clone(), served.clone());
        tokio::spawn(async move {
            let mut refused = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for g in [&a, &b] {
                    match code_of(g, &busy).await {
                        None => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(code) => refused.push(code),
                    }
                }
            }
            refused
        })
    };
    poll_until("calls under load", Duration::from_secs(5), || async {
        (served.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;

    let old_master = set.servers[0].port;
    let killed = Instant::now();
    set.servers[0].kill();
    // Taken while no master answers: committed to PostgreSQL, enforced by A at once,
    // published once a replica is promoted.
    let (status, body) = admin(
        &a,
        "POST",
        "/v1/accounts/other/suspend",
        Some(json!({"reason": "failover"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code_of(&a, &other).await.as_deref(), Some("OperationDenied"));

    let promoted = async {
        let new_master = poll_until(
            "the sentinels to agree on a new master",
            Duration::from_secs(30),
            || async { set.agreed_master().await.filter(|m| set.servers[*m].port != old_master) },
        )
        .await;
        (new_master, killed.elapsed())
    };
    let followed = async {
        until_code(&b, &other, Some("OperationDenied"), Duration::from_secs(30)).await;
        killed.elapsed()
    };
    let ((new_master, promoted_after), followed_after) = tokio::join!(promoted, followed);
    assert_ne!(set.servers[new_master].port, old_master);

    // Changes keep flowing, now through the promoted master, from either gateway.
    let resumed = Instant::now();
    let (status, body) = admin(&b, "POST", "/v1/accounts/other/resume", None).await;
    assert_eq!(status, 200, "{body}");
    until_code(&a, &other, None, Duration::from_secs(5)).await;
    let resume_seen_after = resumed.elapsed();
    let stored: String = set.servers[new_master]
        .query(&["HGET", "ekyc:accounts", "other"])
        .await
        .expect("the promoted master holds the account");
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["manual"], serde_json::Value::Null, "{stored}");

    stop.store(true, Ordering::Relaxed);
    let refused = load.await.unwrap();
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "sentinel failover: sentinels agreed {promoted_after:?} after the kill; gateway B enforced the \
         suspension made during the failover {followed_after:?} after the kill; a change after it reached \
         gateway A in {resume_seen_after:?}; {served} calls served under load, {} refused",
        refused.len()
    );
    let mut by_code = std::collections::BTreeMap::new();
    for code in &refused {
        *by_code.entry(code.as_str()).or_insert(0u64) += 1;
    }
    assert!(by_code.is_empty(), "calls refused during the failover: {by_code:?}");
    assert!(served >= 40, "too few calls under load: {served}");
}
