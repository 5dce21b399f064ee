//! Accounts through the admin API and the tenant actions on the data listener:
//! activation ("Activate Now"), suspension and its reasons, rate limits, the admin API's
//! validation, and that refused calls are never forwarded.

mod common;

use common::*;
use ekyc_gateway::tc3::Signer;
use serde_json::json;

async fn new_account(gateway: &GatewayHandle, id: &str) -> Signer {
    let (status, body) = admin(
        gateway,
        "POST",
        "/v1/accounts",
        Some(json!({"id": id, "name": format!("{id} Ltd")})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, created) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    assert_eq!(status, 201, "{created}");
    Signer::new(
        created["secret_id"].as_str().unwrap(),
        created["secret_key"].as_str().unwrap(),
        "faceid",
    )
}

async fn call_as(gateway: &GatewayHandle, signer: &Signer, action: &str) -> serde_json::Value {
    let request = signed_call(&gateway.url(), &gateway.data.to_string(), action, b"{}", signer);
    send(&http1_client(), request).await
}

#[tokio::test]
async fn a_tenant_activates_the_service_itself_then_its_calls_go_through() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let newco = new_account(&gateway, "newco").await;

    let answer = call_as(&gateway, &newco, "DetectAuth").await;
    assert_eq!(
        error_code(&answer),
        Some("UnauthorizedOperation.Nonactivated"),
        "{answer}"
    );
    let status = call_as(&gateway, &newco, "DescribeServiceStatus").await;
    assert_eq!(
        (status["Activated"].as_bool(), status["Enabled"].as_bool()),
        (Some(false), Some(false)),
        "{status}"
    );

    let activated = call_as(&gateway, &newco, "ActivateService").await;
    assert_eq!(activated["Activated"], true, "{activated}");
    assert!(activated["ActivatedAt"].is_string());
    let answer = call_as(&gateway, &newco, "DetectAuth").await;
    assert!(answer["BizToken"].is_string(), "{answer}");
    // Activating twice changes nothing and writes no second audit entry.
    call_as(&gateway, &newco, "ActivateService").await;
    let (_, audit) = admin(&gateway, "GET", "/v1/audit?account=newco", None).await;
    let activations: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "account.activate")
        .collect();
    assert_eq!(activations.len(), 1, "{audit}");
    assert_eq!(activations[0]["actor"], "tenant:newco");
    // Tenant actions are never forwarded.
    assert_eq!(sim.stats().await["invalid_action"], 0);
    assert_eq!(sim.successes("DetectAuth").await, 1);
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_but_can_read_why() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let tenant = client_signer();
    let (status, body) = admin(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/suspend"),
        Some(json!({"reason": "chargeback under review"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], false);

    let answer = call_as(&gateway, &tenant, "LivenessCompare").await;
    assert_eq!(error_code(&answer), Some("OperationDenied"), "{answer}");
    let status = call_as(&gateway, &tenant, "DescribeServiceStatus").await;
    assert_eq!(status["Suspensions"][0]["Flag"], "Manual", "{status}");
    assert_eq!(status["Suspensions"][0]["Reason"], "chargeback under review");
    // ActivateService does not lift a suspension.
    call_as(&gateway, &tenant, "ActivateService").await;
    let answer = call_as(&gateway, &tenant, "LivenessCompare").await;
    assert_eq!(error_code(&answer), Some("OperationDenied"));

    let (status, body) = admin(&gateway, "POST", &format!("/v1/accounts/{CLIENT_ACCOUNT}/resume"), None).await;
    assert_eq!((status, body["enabled"].as_bool()), (200, Some(true)), "{body}");
    let answer = call_as(&gateway, &tenant, "LivenessCompare").await;
    assert_eq!(answer["Result"], "Success", "{answer}");
    assert_eq!(sim.successes("LivenessCompare").await, 1);
}

#[tokio::test]
async fn rate_limits_refuse_calls_over_the_burst() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(
        &sim,
        "[rate_limit]\ndefault_qps = 5\n[actions.DetectAuth]\n[actions.GetFaceIdTokenIntl]\nrate_limit_qps = 2\n",
    )
    .await;
    let tenant = client_signer();
    for i in 0..5 {
        let answer = call_as(&gateway, &tenant, "DetectAuth").await;
        assert!(answer.get("Error").is_none(), "call {i}: {answer}");
    }
    let answer = call_as(&gateway, &tenant, "DetectAuth").await;
    assert_eq!(error_code(&answer), Some("RequestLimitExceeded"), "{answer}");
    assert_eq!(sim.successes("DetectAuth").await, 5);

    // An operator's override applies on the next call, with a fresh bucket.
    let (status, body) = admin(
        &gateway,
        "PUT",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/rate-limit"),
        Some(json!({"qps": 1000})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..20 {
        assert!(call_as(&gateway, &tenant, "DetectAuth").await.get("Error").is_none());
    }
    // The per-action limit still holds.
    assert!(
        call_as(&gateway, &tenant, "GetFaceIdTokenIntl")
            .await
            .get("Error")
            .is_none()
    );
    assert!(
        call_as(&gateway, &tenant, "GetFaceIdTokenIntl")
            .await
            .get("Error")
            .is_none()
    );
    let answer = call_as(&gateway, &tenant, "GetFaceIdTokenIntl").await;
    assert_eq!(error_code(&answer), Some("RequestLimitExceeded"), "{answer}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_requests_total{action="DetectAuth",outcome="RequestLimitExceeded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_admin_api_validates_and_lists() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let cases = [
        ("POST", "/v1/accounts", Some(json!({"id": "Bad Id", "name": "x"})), 400),
        ("POST", "/v1/accounts", Some(json!({"id": "ok"})), 400),
        ("POST", "/v1/accounts", None, 400),
        ("GET", "/v1/accounts/nobody", None, 404),
        ("POST", "/v1/accounts/nobody/activate", None, 404),
        ("POST", "/v1/accounts/nobody/suspend", Some(json!({"reason": "x"})), 404),
        (
            "POST",
            &format!("/v1/accounts/{CLIENT_ACCOUNT}/suspend"),
            Some(json!({"reason": ""})),
            400,
        ),
        (
            "PUT",
            &format!("/v1/accounts/{CLIENT_ACCOUNT}/rate-limit"),
            Some(json!({"qps": 0})),
            400,
        ),
        ("DELETE", "/v1/credentials/AKIDnobody", None, 404),
        ("GET", "/v1/nothing-here", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = admin(&gateway, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
        assert!(
            answer["error"]["code"].is_string() && answer["error"]["message"].is_string(),
            "{answer}"
        );
    }
    for id in ["alpha", "beta", "gamma"] {
        admin(
            &gateway,
            "POST",
            "/v1/accounts",
            Some(json!({"id": id, "name": format!("{id} GmbH")})),
        )
        .await;
    }
    let (_, all) = admin(&gateway, "GET", "/v1/accounts", None).await;
    let ids: Vec<&str> = all["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta", "gamma", CLIENT_ACCOUNT]);
    let (_, found) = admin(&gateway, "GET", "/v1/accounts?search=GAM", None).await;
    assert_eq!(found["accounts"][0]["id"], "gamma");
    assert_eq!(found["accounts"].as_array().unwrap().len(), 1);
    let (_, page) = admin(&gateway, "GET", "/v1/accounts?limit=2&offset=1", None).await;
    let ids: Vec<&str> = page["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["beta", "gamma"]);
}
