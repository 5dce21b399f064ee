//! Authentication end to end: the SDKs' own requests (tests/vectors/tc3) through the
//! gateway to the simulator, API keys, the legacy v1 signature, credentials created and
//! revoked through the admin API, and hostile Authorization headers. Nothing that fails
//! authentication may reach the upstream.

mod common;

use common::*;
use ekyc_gateway::clock::ManualClock;
use std::sync::Arc;

const VECTOR_SECRET_ID: &str = "AKIDtestSecretId";
const VECTOR_SECRET_KEY: &str = "testSecretKey";

/// A gateway and simulator on a manual clock, knowing the vectors' credential.
async fn vector_gateway(clock: &ManualClock) -> (SimHandle, GatewayHandle, tempfile::TempDir) {
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = Arc::new(sim_clock)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&format!("http://{}", sim.addr), "");
    config.store_url = format!("sqlite://{}/billing.db", dir.path().display());
    let store = ekyc_gateway::store::Store::connect(&config.store_url).await.unwrap();
    ekyc_gateway::demo::ensure_account_with_credential(
        &store,
        &config.master_key,
        "vectors",
        "SDK vectors",
        true,
        VECTOR_SECRET_ID,
        VECTOR_SECRET_KEY,
        "vector-api-key-0000",
        0,
    )
    .await
    .unwrap();
    let gateway = GatewayHandle::start_with(config, Arc::new(clock.clone())).await;
    (sim, gateway, dir)
}

#[tokio::test]
async fn every_sdk_vector_is_accepted_and_re_signed_for_the_upstream() {
    let clock = ManualClock::new(0);
    let (sim, gateway, _dir) = vector_gateway(&clock).await;
    let client = http1_client();
    let vectors = [
        ("01-intl-post-sts-token.http", "ApplyWebVerificationBizTokenIntl"),
        ("02-intl-post-unsigned-payload.http", "ApplyWebVerificationBizTokenIntl"),
        ("03-intl-post-json.http", "ApplyWebVerificationBizTokenIntl"),
        ("04-intl-get-query.http", "GetWebVerificationResultIntl"),
        ("05-cn-post-json-detectauth.http", "DetectAuth"),
        ("06-v1-hmacsha256-form.http", "ApplyWebVerificationBizTokenIntl"),
    ];
    for (name, action) in vectors {
        clock.set(vector_timestamp(name));
        let before = sim.successes(action).await;
        let answer = send(&client, vector_request(name, gateway.data)).await;
        assert!(answer.get("Error").is_none(), "{name}: {answer}");
        assert_eq!(sim.successes(action).await, before + 1, "{name}");
        let seen = sim.last_request().await;
        if name.starts_with("06") {
            assert!(seen["headers"].get("authorization").is_none());
        } else {
            let authorization = seen["headers"]["authorization"].as_str().unwrap();
            assert!(authorization.contains(PLATFORM_SECRET_ID), "{name}: {authorization}");
        }
    }
    let stats = sim.stats().await;
    assert_eq!(stats["token_headers_seen"], 0, "X-TC-Token reached the upstream");
    assert_eq!(stats["auth_failures"], 0);
}

#[tokio::test]
async fn tampered_or_expired_vectors_are_refused_before_the_upstream() {
    let clock = ManualClock::new(0);
    let (sim, gateway, _dir) = vector_gateway(&clock).await;
    let client = http1_client();
    let name = "03-intl-post-json.http";
    let timestamp = vector_timestamp(name);

    clock.set(timestamp + 301);
    let answer = send(&client, vector_request(name, gateway.data)).await;
    assert_eq!(error_code(&answer), Some("AuthFailure.SignatureExpire"), "{answer}");

    clock.set(timestamp);
    let mut request = vector_request(name, gateway.data);
    *request.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"RedirectURL\": \"https://evil\"}"));
    let answer = send(&client, request).await;
    assert_eq!(error_code(&answer), Some("AuthFailure.SignatureFailure"), "{answer}");

    for (header, value) in [
        ("host", "127.0.0.1:1"),
        ("content-type", "text/plain"),
        ("x-tc-timestamp", "1795667477"),
    ] {
        let mut request = vector_request(name, gateway.data);
        request.headers_mut().insert(header, value.parse().unwrap());
        let answer = send(&client, request).await;
        assert_eq!(
            error_code(&answer),
            Some("AuthFailure.SignatureFailure"),
            "{header}: {answer}"
        );
    }
    let stats = sim.stats().await;
    assert_eq!(stats["actions"]["ApplyWebVerificationBizTokenIntl"]["success"], 0);
}

#[tokio::test]
async fn api_keys_authenticate_plain_http_clients() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();
    let answer = send(
        &client,
        api_key_call(&gateway, CLIENT_API_KEY, "IdCardVerification", "{}"),
    )
    .await;
    assert_eq!(answer["Result"], "0", "{answer}");
    let answer = send(&client, api_key_call(&gateway, "not-a-key", "IdCardVerification", "{}")).await;
    assert_eq!(error_code(&answer), Some("AuthFailure.SecretIdNotFound"), "{answer}");
    assert_eq!(sim.successes("IdCardVerification").await, 1);
}

type HeaderEdit = Box<dyn Fn(&mut http::HeaderMap)>;

#[tokio::test]
async fn hostile_authorization_headers_get_auth_failures_and_never_reach_the_upstream() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();
    let good = call(&gateway, "IdCardVerification", "{}");
    let good_auth = good.headers()["authorization"].to_str().unwrap().to_string();

    let mut cases: Vec<(&str, HeaderEdit, &str)> = Vec::new();
    cases.push((
        "missing",
        Box::new(|h| {
            h.remove("authorization");
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    let dup = good_auth.clone();
    cases.push((
        "duplicated",
        Box::new(move |h| {
            h.append("authorization", dup.parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    cases.push((
        "not UTF-8",
        Box::new(|h| {
            h.insert(
                "authorization",
                http::HeaderValue::from_bytes(b"TC3-HMAC-SHA256 \xff\xfe").unwrap(),
            );
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    let extra = good_auth.replace("/tc3_request", "/tc3_request/extra");
    cases.push((
        "credential with extra part",
        Box::new(move |h| {
            h.insert("authorization", extra.parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    let missing = good_auth.replace("/faceid/tc3_request", "/tc3_request");
    cases.push((
        "credential with missing part",
        Box::new(move |h| {
            h.insert("authorization", missing.parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    let long = good_auth.replace(
        "SignedHeaders=content-type;host",
        &format!("SignedHeaders={}host", "x-a;".repeat(10_000)),
    );
    cases.push((
        "40 kB SignedHeaders",
        Box::new(move |h| {
            h.insert("authorization", long.parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    cases.push((
        "timestamp not a number",
        Box::new(|h| {
            h.insert("x-tc-timestamp", "soon".parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    let unknown = good_auth.replace(CLIENT_SECRET_ID, "AKIDnobody");
    cases.push((
        "unknown SecretId",
        Box::new(move |h| {
            h.insert("authorization", unknown.parse().unwrap());
        }),
        "AuthFailure.SecretIdNotFound",
    ));
    cases.push((
        "basic auth",
        Box::new(|h| {
            h.insert("authorization", "Basic eDp5".parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));
    cases.push((
        "empty bearer",
        Box::new(|h| {
            h.insert("authorization", "Bearer ".parse().unwrap());
        }),
        "AuthFailure.InvalidAuthorization",
    ));

    for (what, edit, code) in cases {
        let mut request = call(&gateway, "IdCardVerification", "{}");
        edit(request.headers_mut());
        let answer = send(&client, request).await;
        assert_eq!(error_code(&answer), Some(code), "{what}: {answer}");
    }

    // A 10 MB header never reaches authentication: the server's header cap answers.
    let mut request = call(&gateway, "IdCardVerification", "{}");
    request.headers_mut().insert(
        "authorization",
        format!("TC3-HMAC-SHA256 Credential={}", "a".repeat(10 << 20))
            .parse()
            .unwrap(),
    );
    // An error instead of a response means it was closed while we still wrote: refused too.
    if let Ok(response) = client.request(request).await {
        assert_eq!(response.status(), 431);
    }
    let stats = sim.stats().await;
    assert_eq!(stats["actions"]["IdCardVerification"]["success"], 0);
    assert_eq!(stats["auth_failures"], 0);
    // Still serving.
    let answer = send(&client, call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(answer["Result"], "0");
}

#[tokio::test]
async fn credentials_created_through_the_admin_api_work_until_revoked() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();

    let (status, body) = admin_with_token(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/credentials"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = admin_with_token(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/credentials"),
        None,
        Some("wrong-token-0123456789"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = admin(&gateway, "POST", "/v1/accounts/nobody/credentials", None).await;
    assert_eq!(status, 404);

    let (status, created) = admin(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/credentials"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret_id = created["secret_id"].as_str().unwrap().to_string();
    let secret_key = created["secret_key"].as_str().unwrap().to_string();
    let api_key = created["api_key"].as_str().unwrap().to_string();
    assert!(secret_id.starts_with("AKID") && secret_key.len() >= 32 && api_key.len() >= 40);

    let signer = ekyc_gateway::tc3::Signer::new(secret_id.clone(), secret_key.clone(), "faceid");
    let answer = send(
        &client,
        signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", &signer),
    )
    .await;
    assert!(answer["BizToken"].is_string(), "{answer}");
    let answer = send(&client, api_key_call(&gateway, &api_key, "DetectAuth", "{}")).await;
    assert!(answer["BizToken"].is_string(), "{answer}");

    let (status, listed) = admin(
        &gateway,
        "GET",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/credentials"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let listed_text = listed.to_string();
    assert!(listed_text.contains(&secret_id));
    assert!(
        !listed_text.contains(&secret_key) && !listed_text.contains(&api_key),
        "{listed}"
    );

    let (status, revoked) = admin(&gateway, "DELETE", &format!("/v1/credentials/{secret_id}"), None).await;
    assert_eq!(
        (status, revoked["status"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let answer = send(
        &client,
        signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", &signer),
    )
    .await;
    assert_eq!(error_code(&answer), Some("AuthFailure.InvalidSecretId"), "{answer}");
    let answer = send(&client, api_key_call(&gateway, &api_key, "DetectAuth", "{}")).await;
    assert_eq!(error_code(&answer), Some("AuthFailure.InvalidSecretId"), "{answer}");
    assert_eq!(sim.successes("DetectAuth").await, 2);

    // The audit log records both, without a secret.
    let (_, audit) = admin(&gateway, "GET", &format!("/v1/audit?account={CLIENT_ACCOUNT}"), None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"credential.create") && actions.contains(&"credential.revoke"),
        "{audit}"
    );
    assert!(!audit.to_string().contains(&secret_key));
    assert!(audit["entries"][0]["actor"] == "admin");
}

#[tokio::test]
async fn secret_keys_are_sealed_in_the_store() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let (_, created) = admin(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/credentials"),
        None,
    )
    .await;
    let secret_key = created["secret_key"].as_str().unwrap();
    let api_key = created["api_key"].as_str().unwrap();
    let stored = gateway
        .app
        .store
        .get_credential(created["secret_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.secret_key_sealed.contains(secret_key));
    assert!(stored.secret_key_sealed.starts_with("v1."));
    assert_ne!(stored.api_key_hash, api_key);
    assert_eq!(
        stored.api_key_hash,
        hex::encode(ekyc_gateway::crypto::api_key_hash(api_key))
    );
}
