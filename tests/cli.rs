//! The operators' command line (`ekyc-gateway admin …`) against a running gateway:
//! tables by default, JSON with `--json`, every change visible to the gateway.

mod common;

use common::*;
use std::process::Command;

async fn cli(gateway: &GatewayHandle, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"));
    command
        .arg("admin")
        .args(args)
        .env("EKYC_ADMIN_URL", format!("http://{}", gateway.admin))
        .env("EKYC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EKYC_LOG", "warn");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operators_manage_accounts_and_credentials_from_the_command_line() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;

    let (ok, out, err) = cli(&gateway, &["accounts", "create", "acme", "Acme Ltd"]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ID") && out.contains("acme") && out.contains("Acme Ltd"),
        "{out}"
    );
    let (ok, out, _) = cli(&gateway, &["accounts", "activate", "acme"]).await;
    assert!(ok && out.contains("yes"), "{out}");

    let (ok, out, err) = cli(&gateway, &["--json", "credentials", "create", "acme"]).await;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let signer = ekyc_gateway::tc3::Signer::new(
        created["secret_id"].as_str().unwrap(),
        created["secret_key"].as_str().unwrap(),
        "faceid",
    );
    let call = || signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", &signer);
    assert!(send(&http1_client(), call()).await["BizToken"].is_string());

    let (ok, out, _) = cli(
        &gateway,
        &["accounts", "suspend", "acme", "--reason", "unpaid invoice 42"],
    )
    .await;
    assert!(ok && out.contains("manual: unpaid invoice 42"), "{out}");
    assert_eq!(
        error_code(&send(&http1_client(), call()).await),
        Some("OperationDenied")
    );
    let (ok, _, _) = cli(&gateway, &["accounts", "resume", "acme"]).await;
    assert!(ok);
    assert!(send(&http1_client(), call()).await["BizToken"].is_string());

    let (ok, out, _) = cli(&gateway, &["accounts", "list", "--search", "acm"]).await;
    assert!(ok && out.lines().count() == 2 && out.contains("acme"), "{out}");
    let (ok, out, _) = cli(&gateway, &["credentials", "list", "acme"]).await;
    assert!(
        ok && out.contains(created["secret_id"].as_str().unwrap()) && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(created["secret_key"].as_str().unwrap()));
    let (ok, out, _) = cli(
        &gateway,
        &["credentials", "revoke", created["secret_id"].as_str().unwrap()],
    )
    .await;
    assert!(ok && out.contains("revoked"), "{out}");
    assert_eq!(
        error_code(&send(&http1_client(), call()).await),
        Some("AuthFailure.InvalidSecretId")
    );

    gateway.app.flush_usage().await.unwrap();
    let (ok, out, err) = cli(&gateway, &["usage", "acme"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("DetectAuth") && out.lines().any(|l| l.starts_with("TOTAL") && l.ends_with('2')),
        "{out}"
    );

    let (ok, out, err) = cli(&gateway, &["topup", "acme", "12.50", "--idempotency-key", "wire-0042"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("12.50"), "{out}");

    let (ok, out, _) = cli(&gateway, &["audit", "--account", "acme"]).await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("ledger.topup") && l.contains("12.50 (key wire-0042)")),
        "the top-up with its amount:\n{out}"
    );
    for action in [
        "account.create",
        "account.activate",
        "account.suspend",
        "account.resume",
        "credential.create",
        "credential.revoke",
    ] {
        assert!(out.contains(action), "{action} missing:\n{out}");
    }

    let (ok, _, err) = cli(&gateway, &["accounts", "show", "nobody"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"));
    command
        .args(["admin", "accounts", "list"])
        .env("EKYC_ADMIN_URL", format!("http://{}", gateway.admin))
        .env("EKYC_ADMIN_TOKEN", "wrong-token-0000000000");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
