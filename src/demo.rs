//! `ekyc-gateway demo`: the whole system on one machine with nothing installed but the
//! binary. Starts the upstream simulator in process, then the gateway on embedded
//! defaults (`config/demo.toml`), with a demo account whose credentials are fixed and
//! documented. Must not be used in production: its secrets are public.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::{self, MasterKey};
use crate::server::{self, Listeners};
use crate::sim::{self, SimConfig};
use crate::store::Store;
use crate::store::records::{AccountRecord, CredentialRecord, CredentialStatus};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEMO_ACCOUNT: &str = "demo";
pub const DEMO_SECRET_ID: &str = "AKIDDEMO00000000000000000000000000000";
pub const DEMO_SECRET_KEY: &str = "demo-secret-key-do-not-use-in-prod";
pub const DEMO_API_KEY: &str = "demo-api-key";
pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";
/// A second demo tenant with no balance and last month's calls: `billing run` puts it
/// in arrears, `admin topup` brings it back.
pub const DEMO_DEBTOR: &str = "demo-nobalance";
pub const DEMO_DEBTOR_SECRET_ID: &str = "AKIDDEMONOBALANCE00000000000000000000";
pub const DEMO_DEBTOR_API_KEY: &str = "demo-nobalance-api-key";
/// Seals the demo's SecretKeys in its SQLite file; public like the rest of the demo.
pub const DEMO_MASTER_KEY: &str = "64656d6f2d6d61737465722d6b65792d646f2d6e6f742d7573652d696e2d7072";

/// Creates the account (activated or not) and a credential with the given fixed values,
/// unless they exist already. For the demo's public account and for tests.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_account_with_credential(
    store: &Store,
    master_key: &MasterKey,
    account_id: &str,
    name: &str,
    activated: bool,
    secret_id: &str,
    secret_key: &str,
    api_key: &str,
    now: i64,
) -> anyhow::Result<()> {
    if store.get_account(account_id).await?.is_none() {
        let mut account = AccountRecord::new(account_id, name, now);
        if activated {
            account.activated = true;
            account.activated_at = Some(now);
        }
        store.create_account(&account, "seed", now).await?;
    }
    if store.get_credential(secret_id).await?.is_none() {
        let credential = CredentialRecord {
            secret_id: secret_id.to_string(),
            account_id: account_id.to_string(),
            secret_key_sealed: master_key.seal(secret_key, account_id),
            api_key_hash: hex::encode(crypto::api_key_hash(api_key)),
            status: CredentialStatus::Active,
            created_at: now,
            revoked_at: None,
            version: 1,
        };
        store.create_credential(&credential, "seed", now).await?;
    }
    Ok(())
}

pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
}

pub async fn run(options: DemoOptions, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir)?;
    // The simulator plays Tencent; its "platform" credentials are private to this process.
    let platform_id = format!("AKIDSIM{}", hex::encode(rand::random::<[u8; 8]>()));
    let platform_key = hex::encode(rand::random::<[u8; 16]>());
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let (sim_stop, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(sim::run(
        sim_listener,
        SimConfig::new(platform_id.clone(), platform_key.clone()),
        async move {
            let _ = sim_stopped.await;
        },
    ));

    let store_url = format!("sqlite://{}/billing.db", options.data_dir.display());
    let env = [
        ("EKYC_UPSTREAM_SECRET_ID", platform_id.as_str()),
        ("EKYC_UPSTREAM_SECRET_KEY", platform_key.as_str()),
        ("EKYC_MASTER_KEY", DEMO_MASTER_KEY),
        ("EKYC_ADMIN_TOKEN", DEMO_ADMIN_TOKEN),
        ("EKYC_STORE_URL", store_url.as_str()),
    ];
    let mut config = Config::from_toml(DEMO_CONFIG, &env)?;
    let store = Store::connect(&config.store_url).await?;
    ensure_account_with_credential(
        &store,
        &config.master_key,
        DEMO_ACCOUNT,
        "Demo tenant",
        true,
        DEMO_SECRET_ID,
        DEMO_SECRET_KEY,
        DEMO_API_KEY,
        SystemClock.now_unix(),
    )
    .await?;
    let now = SystemClock.now_unix();
    ensure_account_with_credential(
        &store,
        &config.master_key,
        DEMO_DEBTOR,
        "Demo tenant without balance",
        true,
        DEMO_DEBTOR_SECRET_ID,
        "demo-nobalance-secret-key",
        DEMO_DEBTOR_API_KEY,
        now,
    )
    .await?;
    // The first account starts with credit; the second has 42 calls last month and none.
    store
        .record_topup(
            DEMO_ACCOUNT,
            100 * crate::billing::pricing::MICROS,
            "demo-initial-credit",
            "demo",
            now,
        )
        .await?;
    if let Some(this_month) = crate::meter::Month::of(now, config.meter.billing_utc_offset_seconds) {
        use crate::admin::api::previous_month;
        let seed = crate::store::UsageBatch {
            instance_id: "demo-seed".into(),
            seq: 1,
            rows: vec![crate::store::UsageRow {
                account_id: DEMO_DEBTOR.into(),
                action: "IdCardVerification".into(),
                month: previous_month(this_month).to_string(),
                calls: 42,
            }],
        };
        // Dated mid-month, so the operators' calls-per-day chart shows them there.
        let day = format!("{}-15", previous_month(this_month));
        store.apply_usage_batch_on(&seed, now, &day).await?;
    }
    drop(store);
    config.meter.journal_path = options.data_dir.join("meter.journal");
    config.data_listen = options.listen;
    config.admin_listen = options.admin_listen;
    config.upstream.scheme = http::uri::Scheme::HTTP;
    config.upstream.authority = sim_addr.to_string().parse()?;

    let listeners = Listeners::bind(config.data_listen, config.admin_listen).await?;
    println!(
        "{}",
        banner(listeners.data.local_addr()?, listeners.admin.local_addr()?, sim_addr)
    );
    let result = server::run(listeners, config, shutdown).await;
    let _ = sim_stop.send(());
    let _ = sim.await;
    result
}

fn banner(data: SocketAddr, admin: SocketAddr, sim: SocketAddr) -> String {
    format!(
        r#"ekyc-gateway demo is running (Ctrl-C to stop).

  data listener   http://{data}   eKYC API 3.0: point the SDKs and curl here
  admin listener  http://{admin}   /healthz /readyz /metrics
  simulator       http://{sim}   stands in for faceid.tencentcloudapi.com

Demo account "{DEMO_ACCOUNT}" (public credentials, never use them in production):
  SecretId     {DEMO_SECRET_ID}
  SecretKey    {DEMO_SECRET_KEY}
  API key      {DEMO_API_KEY}
  admin token  {DEMO_ADMIN_TOKEN}

curl with the API key:
  curl -s http://{data}/ -H 'Authorization: Bearer {DEMO_API_KEY}' -H 'X-TC-Action: IdCardVerification' -H 'X-TC-Version: 2018-03-01' -H 'Content-Type: application/json' -d '{{"IdCard":"11204416541220243X","Name":"Zhang San"}}'

The official Python SDK (pip install tencentcloud-sdk-python-faceid):
python3 - <<'EOF'
from tencentcloud.common import credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.faceid.v20180301 import faceid_client, models
cred = credential.Credential("{DEMO_SECRET_ID}", "{DEMO_SECRET_KEY}")
profile = ClientProfile(httpProfile=HttpProfile(endpoint="{data}", protocol="http"))
client = faceid_client.FaceidClient(cred, "ap-guangzhou", profile)
req = models.IdCardVerificationRequest()
req.IdCard, req.Name = "11204416541220243X", "Zhang San"
print(client.IdCardVerification(req).to_json_string())
EOF

Second account "{DEMO_DEBTOR}": 42 calls last month, no balance (API key {DEMO_DEBTOR_API_KEY}).
  ekyc-gateway billing run                      # bills last month: it goes into arrears
  curl -s http://{data}/ -H 'Authorization: Bearer {DEMO_DEBTOR_API_KEY}' -H 'X-TC-Action: DescribeBills' -H 'X-TC-Version: 2018-03-01' -d '{{}}'
  EKYC_ADMIN_URL=http://{admin} EKYC_ADMIN_TOKEN={DEMO_ADMIN_TOKEN} ekyc-gateway admin topup {DEMO_DEBTOR} 4.20
"#
    )
}
