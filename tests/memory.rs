//! Resident memory per loaded account: a gateway process started on a PostgreSQL store
//! holding 1,000,000 activated accounts with one credential each, against the same
//! gateway on an empty store. Ignored by default (it writes 2 M rows);
//! run it with `cargo nextest run --release --test memory --run-ignored only`.

mod common;

use common::*;
use ekyc_gateway::crypto::MasterKey;
use std::time::{Duration, Instant};

/// Accounts `acct-N` and credentials `AKID{N:032}`, inserted as one text parameter per
/// 50,000 rows (the same trick as the usage flush).
async fn fill(db: &PgDatabase, accounts: usize) {
    let master = MasterKey::parse(MASTER_KEY).unwrap();
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for start in (0..accounts).step_by(50_000) {
        let end = (start + 50_000).min(accounts);
        let mut account_lines = String::new();
        let mut credential_lines = String::new();
        for i in start..end {
            let id = format!("acct-{i}");
            account_lines.push_str(&format!("{id}\n"));
            let sealed = master.seal(&format!("key-{i}"), &id);
            let api_key_hash = hex::encode(ekyc_gateway::crypto::api_key_hash(&format!("ak-{i}")));
            credential_lines.push_str(&format!("AKID{i:032}\t{id}\t{sealed}\t{api_key_hash}\n"));
        }
        account_lines.pop();
        credential_lines.pop();
        client
            .execute(
                "INSERT INTO accounts (id, name, activated, activated_at, created_at) \
                 SELECT line, line, 1, 0, 0 FROM unnest(string_to_array($1, E'\\n')) AS line",
                &[&account_lines],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO credentials (secret_id, account_id, secret_key_sealed, api_key_hash, status, created_at) \
                 SELECT f[1], f[2], f[3], f[4], 'active', 0 \
                 FROM (SELECT string_to_array(line, E'\\t') AS f FROM unnest(string_to_array($1, E'\\n')) AS line) AS p",
                &[&credential_lines],
            )
            .await
            .unwrap();
    }
}

/// Starts a gateway on `db`, waits until it holds `accounts`, and returns its RSS.
async fn gateway_rss(sim: &SimHandle, db: &PgDatabase, accounts: usize) -> (u64, Duration) {
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"{}\"\n",
        sim.addr,
        db.url()
    );
    let started = Instant::now();
    let gateway = GatewayProcess::start(&config, &process_env()).await;
    let expected = format!("ekyc_gateway_accounts_loaded {accounts}\n");
    poll_until("the accounts to be loaded", Duration::from_secs(120), || async {
        let (_, body) = get(&format!("http://{}/metrics", gateway.admin)).await;
        String::from_utf8_lossy(&body).contains(&expected).then_some(())
    })
    .await;
    let loaded_in = started.elapsed();
    // One call, so the data plane's lazily built parts exist in both processes.
    let request = signed_call(
        &gateway.url(),
        &gateway.data.to_string(),
        "DescribeServiceStatus",
        b"{}",
        &ekyc_gateway::tc3::Signer::new(format!("AKID{:032}", 0), "key-0", "faceid"),
    );
    let _ = send(&http1_client(), request).await;
    (resident_kib(gateway.child.id()), loaded_in)
}

#[tokio::test]
#[ignore]
async fn resident_memory_per_loaded_account() {
    let accounts: usize = std::env::var("MEMORY_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sim = SimHandle::start(|_| {}).await;
    let empty = PgDatabase::create().await;
    let full = PgDatabase::create().await;
    // Migrations first: the store creates its tables on connect.
    drop(ekyc_gateway::store::Store::connect(&empty.url()).await.unwrap());
    drop(ekyc_gateway::store::Store::connect(&full.url()).await.unwrap());
    let filled = Instant::now();
    fill(&full, accounts).await;
    eprintln!("inserted {accounts} accounts and credentials in {:?}", filled.elapsed());

    let (baseline, _) = gateway_rss(&sim, &empty, 0).await;
    let (loaded, loaded_in) = gateway_rss(&sim, &full, accounts).await;
    let per_account = (loaded.saturating_sub(baseline) * 1024) as f64 / accounts as f64;
    eprintln!(
        "gateway RSS: {baseline} KiB empty, {loaded} KiB with {accounts} accounts (loaded in {loaded_in:?}): {per_account:.0} bytes per account and credential"
    );
    assert!(per_account <= 1024.0, "{per_account:.0} bytes per loaded account");
}
