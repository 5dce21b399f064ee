//! Master-key rotation: SecretKeys sealed under the old key keep working while
//! gateways run with the new key plus `EKYC_MASTER_KEY_PREVIOUS`; `rotate-master-key`
//! reseals them all (audited, no secret in the log); afterwards the new key alone
//! opens them, the old key alone opens none, and a second run changes nothing.

mod common;

use common::*;
use ekyc_gateway::clock::SystemClock;
use ekyc_gateway::config::Config;
use ekyc_gateway::tc3::Signer;
use serde_json::json;
use std::process::Command;
use std::sync::Arc;

const OLD_KEY: &str = MASTER_KEY;
const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn config(toml: &str, master: &str, previous: Option<&str>) -> Config {
    let mut env = vec![
        ("EKYC_UPSTREAM_SECRET_ID", PLATFORM_SECRET_ID),
        ("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY),
        ("EKYC_MASTER_KEY", master),
        ("EKYC_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    if let Some(previous) = previous {
        env.push(("EKYC_MASTER_KEY_PREVIOUS", previous));
    }
    Config::from_toml(toml, &env).unwrap()
}

async fn works(gateway: &GatewayHandle, signer: &Signer) -> Option<String> {
    let request = signed_call(
        &gateway.url(),
        &gateway.data.to_string(),
        "IdCardVerification",
        b"{}",
        signer,
    );
    error_code(&send(&http1_client(), request).await).map(str::to_string)
}

fn rotate(file: &std::path::Path, previous: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"));
    command
        .args(["rotate-master-key", "--config"])
        .arg(file)
        .env("EKYC_UPSTREAM_SECRET_ID", PLATFORM_SECRET_ID)
        .env("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY)
        .env("EKYC_MASTER_KEY", NEW_KEY);
    if previous {
        command.env("EKYC_MASTER_KEY_PREVIOUS", OLD_KEY);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn the_master_key_rotates_without_downtime_and_the_old_key_stops_working() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"sqlite://{}/billing.db\"\n[meter]\njournal_path = \"{}/meter.journal\"\n",
        sim.addr,
        dir.path().display(),
        dir.path().display()
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &toml).unwrap();

    // Before: everything sealed under the old key.
    let old = GatewayHandle::start_with(config(&toml, OLD_KEY, None), Arc::new(SystemClock)).await;
    admin(&old, "POST", "/v1/accounts", Some(json!({"id": "rot", "name": "Rot"}))).await;
    admin(&old, "POST", "/v1/accounts/rot/activate", None).await;
    let (_, created) = admin(&old, "POST", "/v1/accounts/rot/credentials", None).await;
    let secret_key = created["secret_key"].as_str().unwrap().to_string();
    let signer = Signer::new(created["secret_id"].as_str().unwrap(), &secret_key, "faceid");
    assert_eq!(works(&old, &signer).await, None);
    old.shutdown().await;

    // Step 1: gateways on the new key with the old one as previous still serve.
    let both = GatewayHandle::start_with(config(&toml, NEW_KEY, Some(OLD_KEY)), Arc::new(SystemClock)).await;
    assert_eq!(
        works(&both, &signer).await,
        None,
        "old seals open with the previous key"
    );
    // Step 2: reseal.
    let first = rotate(&file, true);
    assert!(first.starts_with("resealed 2 credential(s)"), "{first}");
    assert_eq!(works(&both, &signer).await, None);
    let (_, audit) = admin(&both, "GET", "/v1/audit?account=rot", None).await;
    assert!(audit.to_string().contains("credential.reseal"), "{audit}");
    assert!(!audit.to_string().contains(&secret_key), "no secret in the audit log");
    both.shutdown().await;

    // Step 3: the new key alone opens everything; the old key alone opens nothing.
    let new_only = GatewayHandle::start_with(config(&toml, NEW_KEY, None), Arc::new(SystemClock)).await;
    assert_eq!(works(&new_only, &signer).await, None);
    assert_eq!(works(&new_only, &client_signer()).await, None);
    new_only.shutdown().await;
    // A gateway left on the old key refuses to start, loudly, instead of refusing calls.
    let refused = ekyc_gateway::app::App::new(config(&toml, OLD_KEY, None), Arc::new(SystemClock)).await;
    let error = refused
        .err()
        .expect("the old key must not open the resealed credentials")
        .to_string();
    assert!(error.contains("could not be opened with EKYC_MASTER_KEY"), "{error}");

    assert!(
        rotate(&file, false).starts_with("resealed 0 credential(s)"),
        "a second run changes nothing"
    );
}
