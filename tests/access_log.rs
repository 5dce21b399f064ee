//! The access log end to end: a gateway writing JSON or logfmt lines to a file for
//! real calls (forwarded and billable, refused, answered by the gateway, refused by the
//! upstream), each line's fields checked against the answer the client got, no secret
//! or body in the file, sampling that keeps every failure, and every line on disk once
//! the gateway has shut down.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const ID_CARD_BODY: &str = r#"{"IdCard":"11204416541220243X","Name":"Zhang San"}"#;

/// The raw answer: its body bytes and the parsed `Response`.
async fn exchange(request: http::Request<http_body_util::Full<Bytes>>) -> (Bytes, Value) {
    let response = http1_client().request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: Value = serde_json::from_slice(&body).unwrap();
    (body, value["Response"].clone())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
    poll_until("the access log lines", Duration::from_secs(10), || async {
        let lines = lines(path);
        (lines.len() >= count).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn each_call_gets_one_json_line_that_matches_its_answer_and_holds_no_secret() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gateway = GatewayHandle::start(
        &sim,
        &format!("[access_log]\nmode = \"all\"\npath = \"{}\"\n", path.display()),
    )
    .await;

    let (billed_body, billed) = exchange(call(&gateway, "IdCardVerification", ID_CARD_BODY)).await;
    assert_eq!(billed["Result"], "0", "{billed}");
    let wrong = ekyc_gateway::tc3::Signer::new(CLIENT_SECRET_ID, "not-the-key", "faceid");
    let (_, refused) = exchange(signed_call(
        &gateway.url(),
        &gateway.data.to_string(),
        "IdCardVerification",
        ID_CARD_BODY.as_bytes(),
        &wrong,
    ))
    .await;
    assert_eq!(error_code(&refused), Some("AuthFailure.SignatureFailure"));
    let (_, answered) = exchange(call(&gateway, "DescribeServiceStatus", "{}")).await;
    assert!(answered["Enabled"].is_boolean(), "{answered}");
    let (_, unknown) = exchange(call(&gateway, "NoSuchAction", "{}")).await;
    assert_eq!(error_code(&unknown), Some("InvalidAction"));

    let lines = wait_for_lines(&path, 4).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let records: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Lines of different data-plane threads can come out of order: find each by the
    // RequestId its answer carried.
    let line_of = |answer: &Value| -> &Value {
        records
            .iter()
            .find(|r| r["request_id"] == answer["RequestId"])
            .unwrap_or_else(|| panic!("no line for {answer}: {lines:#?}"))
    };

    let billed_line = line_of(&billed);
    assert_eq!(billed_line["request_id"], billed["RequestId"]);
    assert_eq!(billed_line["account"], CLIENT_ACCOUNT);
    assert_eq!(billed_line["action"], "IdCardVerification");
    assert_eq!(billed_line["method"], "POST");
    assert_eq!(billed_line["outcome"], "forwarded");
    assert_eq!(billed_line["code"], Value::Null);
    assert_eq!(billed_line["billable"], true);
    assert_eq!(billed_line["upstream_status"], 200);
    assert_eq!(billed_line["bytes_in"], ID_CARD_BODY.len());
    assert_eq!(billed_line["bytes_out"], billed_body.len());
    assert!(billed_line["latency_ms"].as_f64().unwrap() > 0.0);
    let logged_at = unix_of(&billed_line["time"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 60..=now).contains(&logged_at), "{billed_line}");

    let refused_line = line_of(&refused);
    assert_eq!(
        (
            &refused_line["outcome"],
            &refused_line["code"],
            &refused_line["billable"],
            &refused_line["account"],
            &refused_line["upstream_status"],
            &refused_line["request_id"],
        ),
        (
            &Value::from("refused"),
            &Value::from("AuthFailure.SignatureFailure"),
            &Value::from(false),
            &Value::Null,
            &Value::Null,
            &refused["RequestId"],
        ),
        "a caller whose signature fails is nobody's account"
    );
    let answered_line = line_of(&answered);
    assert_eq!(
        (
            &answered_line["outcome"],
            &answered_line["action"],
            &answered_line["account"]
        ),
        (
            &Value::from("answered"),
            &Value::from("DescribeServiceStatus"),
            &Value::from(CLIENT_ACCOUNT)
        )
    );
    let unknown_line = line_of(&unknown);
    assert_eq!(
        (&unknown_line["code"], &unknown_line["action"]),
        (&Value::from("InvalidAction"), &Value::Null)
    );

    let text = lines.join("\n");
    for secret in [
        CLIENT_SECRET_KEY,
        CLIENT_API_KEY,
        PLATFORM_SECRET_KEY,
        "11204416541220243X",
        "TC3-HMAC-SHA256",
    ] {
        assert!(!text.contains(secret), "{secret} in the access log:\n{text}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn sampling_keeps_every_failure_and_shutdown_writes_every_line() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    // One worker: the one-in-N count is per worker thread.
    let gateway = GatewayHandle::start(
        &sim,
        &format!(
            "[runtime]\nworker_threads = 1\n[access_log]\nmode = \"sampled\"\nsample_every = 5\nformat = \"logfmt\"\npath = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    for _ in 0..10 {
        let (_, answer) = exchange(call(&gateway, "IdCardVerification", ID_CARD_BODY)).await;
        assert_eq!(answer["Result"], "0");
    }
    for _ in 0..3 {
        let (_, answer) = exchange(call(&gateway, "NoSuchAction", "{}")).await;
        assert_eq!(error_code(&answer), Some("InvalidAction"));
    }
    // No waiting: shutting down writes what is queued before it returns.
    gateway.shutdown().await;
    let lines = lines(&path);
    assert_eq!(lines.len(), 2 + 3, "two of ten successes, every failure:\n{lines:#?}");
    assert_eq!(lines.iter().filter(|l| l.contains(" outcome=forwarded ")).count(), 2);
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(" code=InvalidAction "))
            .all(|l| l.starts_with("time=") && l.contains(" outcome=refused ") && l.contains(" billable=false ")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn an_upstream_error_is_logged_with_its_code_and_not_billed() {
    let sim = SimHandle::start(|c| c.error_rate = 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gateway = GatewayHandle::start(
        &sim,
        &format!(
            "[access_log]\nmode = \"sampled\"\nsample_every = 1000\npath = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    let (_, answer) = exchange(call(&gateway, "IdCardVerification", ID_CARD_BODY)).await;
    let code = error_code(&answer).unwrap().to_string();
    let lines = wait_for_lines(&path, 1).await;
    let record: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (
            &record["outcome"],
            &record["code"],
            &record["billable"],
            &record["upstream_status"]
        ),
        (
            &Value::from("forwarded"),
            &Value::from(code),
            &Value::from(false),
            &Value::from(200)
        ),
        "a failed call is kept by sampling: {record}"
    );
    gateway.shutdown().await;
}
