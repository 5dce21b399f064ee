//! Gateways on a Redis Cluster (three masters with a replica each, real processes made
//! a cluster by `redis-cli --cluster create`): state changes reach every gateway; the
//! master holding the accounts is SIGKILLed under load, its replica takes over, changes
//! keep reaching every gateway, and the calls under load are served from the mirror
//! meanwhile, none refused.

mod common;

use common::redis_ha::{RedisCluster, active_account, code_of, gateway_on, toml_list, until_code};
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test]
async fn gateways_on_a_cluster_keep_working_when_a_master_fails() {
    let sim = SimHandle::start(|_| {}).await;
    let db = PgDatabase::create().await;
    let mut cluster = RedisCluster::start(1000).await;
    let state = format!("cluster_nodes = {}", toml_list(&cluster.urls()));
    let a = Arc::new(gateway_on(&sim, &db, &state).await);
    let b = Arc::new(gateway_on(&sim, &db, &state).await);

    let busy = active_account(&a, "busy").await;
    let other = active_account(&a, "other").await;
    for g in [&a, &b] {
        until_code(g, &busy, None, Duration::from_secs(5)).await;
        until_code(g, &other, None, Duration::from_secs(5)).await;
    }
    // Changes reach the other gateway through the Cluster's pub/sub.
    let suspended = Instant::now();
    admin(&a, "POST", "/v1/accounts/other/suspend", Some(json!({"reason": "r1"}))).await;
    until_code(&b, &other, Some("OperationDenied"), Duration::from_secs(2)).await;
    let propagation = suspended.elapsed();
    admin(&a, "POST", "/v1/accounts/other/resume", None).await;
    until_code(&b, &other, None, Duration::from_secs(2)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (a, b, busy, stop, served) = (a.clone(), b.clone(), busy.clone(), stop.clone(), served.clone());
        tokio::spawn(async move {
            let mut refused = std::collections::BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for g in [&a, &b] {
                    match code_of(g, &busy).await {
                        None => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(code) => *refused.entry(code).or_insert(0u64) += 1,
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

    // Kill the master holding the accounts' hash.
    let victim = cluster
        .master_of(0, "ekyc:accounts")
        .await
        .expect("a master serves the slot");
    let survivor = (victim + 1) % cluster.nodes.len();
    let survivor = if cluster.nodes[survivor].is_running() {
        survivor
    } else {
        (victim + 2) % 6
    };
    let killed = Instant::now();
    cluster.nodes[victim].kill();
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
        poll_until("a replica to take the slot over", Duration::from_secs(30), || async {
            cluster
                .master_of(survivor, "ekyc:accounts")
                .await
                .filter(|m| *m != victim)
        })
        .await;
        killed.elapsed()
    };
    let followed = async {
        until_code(&b, &other, Some("OperationDenied"), Duration::from_secs(30)).await;
        killed.elapsed()
    };
    let (promoted_after, followed_after) = tokio::join!(promoted, followed);

    let resumed = Instant::now();
    let (status, body) = admin(&b, "POST", "/v1/accounts/other/resume", None).await;
    assert_eq!(status, 200, "{body}");
    until_code(&a, &other, None, Duration::from_secs(10)).await;
    let resume_seen_after = resumed.elapsed();

    stop.store(true, Ordering::Relaxed);
    let refused = load.await.unwrap();
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "cluster: a change reached the other gateway in {propagation:?}; replica took the slot \
         {promoted_after:?} after the kill; gateway B enforced the suspension made during the failover \
         {followed_after:?} after the kill; a change after it reached gateway A in {resume_seen_after:?}; \
         {served} calls served under load, refused: {refused:?}"
    );
    assert!(refused.is_empty(), "calls refused during the failover: {refused:?}");
    assert!(served >= 40, "too few calls under load: {served}");
}
