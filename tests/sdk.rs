//! The official Tencent Cloud SDKs talking to the gateway with only the endpoint
//! changed. The client matrix: for each SDK (Python `tencentcloud-sdk-python-intl-en`
//! and the mainland SDK's faceid + common modules, Node `tencentcloud-sdk-nodejs-intl-en`
//! and `tencentcloud-sdk-nodejs`), every signature (the SDK's default, TC3-HMAC-SHA256,
//! HmacSHA256, HmacSHA1) × method (POST, GET) × endpoint (`127.0.0.1:PORT`,
//! `localhost:PORT`, `localhost:PORT` over TLS with a private CA) × call (a data action,
//! the four tenant actions, six refusals), all in one script process per SDK
//! (tests/sdk/call.py, tests/sdk/call.js). Each matrix writes its table to
//! `target/sdk-matrix/` (docs/CLIENTS.md is copied from there). `scripts/test` installs
//! the SDKs: venvs exported as EKYC_TEST_PYTHON_INTL and EKYC_TEST_PYTHON_CN, the Node
//! packages (tests/sdk/node/) as EKYC_TEST_NODE_SDK_DIR. Never skips: a missing SDK
//! fails with what to run.

mod common;
#[path = "sdk/matrix.rs"]
mod matrix;

use common::*;
use std::path::PathBuf;

#[tokio::test]
async fn matrix_python_intl() {
    matrix::run(matrix::python_sdk(
        "tencentcloud-sdk-python-intl-en",
        "EKYC_TEST_PYTHON_INTL",
        "py-sdk-intl",
    ))
    .await;
}

#[tokio::test]
async fn matrix_python_mainland() {
    matrix::run(matrix::python_sdk(
        "tencentcloud-sdk-python",
        "EKYC_TEST_PYTHON_CN",
        "py-sdk-cn",
    ))
    .await;
}

#[tokio::test]
async fn matrix_node_intl() {
    matrix::run(matrix::node_sdk(
        "tencentcloud-sdk-nodejs-intl-en",
        "intl",
        "HmacSHA256",
        false,
    ))
    .await;
}

#[tokio::test]
async fn matrix_node_mainland() {
    matrix::run(matrix::node_sdk(
        "tencentcloud-sdk-nodejs",
        "cn",
        "TC3-HMAC-SHA256",
        true,
    ))
    .await;
}

/// Runs tests/sdk/call.py and returns its JSON outcome.
async fn sdk_call(python: PathBuf, endpoint: String, action: &str, params: &str, extra: &[&str]) -> serde_json::Value {
    sdk_call_as(
        python,
        endpoint,
        (CLIENT_SECRET_ID, CLIENT_SECRET_KEY),
        action,
        params,
        extra,
    )
    .await
}

#[tokio::test]
async fn both_sdks_call_through_the_gateway() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let endpoint = gateway.data.to_string();
    let intl = sdk_python("EKYC_TEST_PYTHON_INTL", "py-sdk-intl");
    let cn = sdk_python("EKYC_TEST_PYTHON_CN", "py-sdk-cn");

    let out = sdk_call(
        intl.clone(),
        endpoint.clone(),
        "ApplyWebVerificationBizTokenIntl",
        r#"{"RedirectURL":"https://example.com/cb","CompareImageBase64":"aGVsbG8="}"#,
        &[],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert!(out["response"]["BizToken"].as_str().unwrap().len() > 10, "{out}");

    let out = sdk_call(
        intl.clone(),
        endpoint.clone(),
        "GetFaceIdTokenIntl",
        r#"{"CheckMode":"liveness"}"#,
        &[],
    )
    .await;
    assert!(out["response"]["SdkToken"].is_string(), "{out}");

    let out = sdk_call(
        cn.clone(),
        endpoint.clone(),
        "DetectAuth",
        r#"{"RuleId":"1","Name":"张三"}"#,
        &[],
    )
    .await;
    assert!(
        out["response"]["Url"].as_str().unwrap().starts_with("https://"),
        "{out}"
    );

    let out = sdk_call(
        cn,
        endpoint.clone(),
        "IdCardVerification",
        r#"{"IdCard":"11204416541220243X","Name":"张三"}"#,
        &[],
    )
    .await;
    assert_eq!(out["response"]["Result"], "0", "{out}");

    assert_eq!(sim.successes("ApplyWebVerificationBizTokenIntl").await, 1);
    assert_eq!(sim.successes("DetectAuth").await, 1);
    assert_eq!(sim.successes("IdCardVerification").await, 1);

    // The gateway's own errors reach the application as SDK exceptions with their code.
    let out = sdk_call(intl, endpoint, "NoSuchAction", "{}", &["--common"]).await;
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], "InvalidAction", "{out}");
    assert!(out["request_id"].as_str().unwrap().len() == 36, "{out}");
}

#[tokio::test]
async fn upstream_api_errors_pass_through_to_the_sdk() {
    let sim = SimHandle::start(|c| c.error_rate = 1.0).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let intl = sdk_python("EKYC_TEST_PYTHON_INTL", "py-sdk-intl");
    let out = sdk_call(
        intl,
        gateway.data.to_string(),
        "LivenessCompare",
        r#"{"ImageBase64":"aGVsbG8=","VideoBase64":"aGVsbG8="}"#,
        &[],
    )
    .await;
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], ekyc_gateway::sim::INJECTED_ERROR, "{out}");
    let stats = sim.stats().await;
    assert_eq!(stats["actions"]["LivenessCompare"]["api_error"], 1);
}

#[tokio::test]
async fn sdk_authentication_failures_carry_their_codes() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let endpoint = gateway.data.to_string();
    let intl = sdk_python("EKYC_TEST_PYTHON_INTL", "py-sdk-intl");
    let cases: [((&str, &str), &[&str], &str); 3] = [
        (
            (CLIENT_SECRET_ID, "wrong-secret-key"),
            &[],
            "AuthFailure.SignatureFailure",
        ),
        (
            ("AKIDnobodyHere", CLIENT_SECRET_KEY),
            &[],
            "AuthFailure.SecretIdNotFound",
        ),
        (
            (CLIENT_SECRET_ID, CLIENT_SECRET_KEY),
            &["--clock-offset", "600"],
            "AuthFailure.SignatureExpire",
        ),
    ];
    for (credential, extra, code) in cases {
        let out = sdk_call_as(
            intl.clone(),
            endpoint.clone(),
            credential,
            "GetFaceIdTokenIntl",
            "{}",
            extra,
        )
        .await;
        assert_eq!(out["ok"], false, "{out}");
        assert_eq!(out["code"], code, "{out}");
    }
    assert_eq!(sim.successes("GetFaceIdTokenIntl").await, 0);
}

#[tokio::test]
async fn the_legacy_v1_signature_of_the_sdk_is_accepted_and_re_signed() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let intl = sdk_python("EKYC_TEST_PYTHON_INTL", "py-sdk-intl");
    let out = sdk_call(
        intl.clone(),
        gateway.data.to_string(),
        "GetFaceIdTokenIntl",
        r#"{"CheckMode":"liveness"}"#,
        &["--sign-method", "HmacSHA256"],
    )
    .await;
    assert!(out["response"]["SdkToken"].is_string(), "{out}");
    let out = sdk_call_as(
        intl,
        gateway.data.to_string(),
        (CLIENT_SECRET_ID, "wrong-secret-key"),
        "GetFaceIdTokenIntl",
        "{}",
        &["--sign-method", "HmacSHA256"],
    )
    .await;
    assert_eq!(out["code"], "AuthFailure.SignatureFailure", "{out}");
    assert_eq!(sim.successes("GetFaceIdTokenIntl").await, 1);
}
