//! Forwarding over real sockets: HTTP/1.1, h2c, TLS (h2 and http/1.1 by ALPN), an
//! https upstream, 5 MiB bodies both ways, hop-by-hop headers, re-signing, and the
//! gateway's own errors (body over the limit, upstream down or slow, unknown action).

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn forwards_over_http1_and_counts_in_the_simulator() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();
    for _ in 0..3 {
        let answer = send(
            &client,
            call(&gateway, "IdCardVerification", r#"{"IdCard":"1","Name":"A"}"#),
        )
        .await;
        assert_eq!(answer["Result"], "0", "{answer}");
        assert!(answer["RequestId"].is_string());
    }
    assert_eq!(sim.successes("IdCardVerification").await, 3);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="forwarded"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn forwards_over_h2c_prior_knowledge() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = h2c_client();
    let response = client.request(call(&gateway, "DetectAuth", "{}")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["Response"]["BizToken"].is_string(), "{v}");
    assert_eq!(sim.successes("DetectAuth").await, 1);
    // Counted by the gateway as well: HTTP/2 answers are taken by hyper, not by our
    // HTTP/1.1 server.
    let metrics = gateway.metrics().await;
    assert!(metrics.contains("ekyc_gateway_billable_calls_total 1"), "{metrics}");
}

fn tls_client(
    ca: &TestCa,
    alpn_h2: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let config = ekyc_gateway::tls::client_config(Some(&ca.cert_path)).unwrap();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if alpn_h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    if alpn_h2 {
        client.http2_only(true);
    }
    client.build(connector)
}

#[tokio::test]
async fn serves_tls_with_h2_and_http1_by_alpn() {
    let ca = test_certificate();
    let sim = SimHandle::start(|_| {}).await;
    let extra = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.cert_path.display(),
        ca.key_path.display()
    );
    let gateway = GatewayHandle::start(&sim, &extra).await;
    let url = format!("https://localhost:{}/", gateway.data.port());
    for (h2, version) in [(true, http::Version::HTTP_2), (false, http::Version::HTTP_11)] {
        let client = tls_client(&ca, h2);
        let request = signed_call(&url, "localhost", "PhoneVerification", b"{}", &client_signer());
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), version);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Response"]["Isp"], "移动", "{v}");
    }
    assert_eq!(sim.successes("PhoneVerification").await, 2);
}

#[tokio::test]
async fn forwards_to_an_https_upstream_trusting_the_extra_ca() {
    let ca = test_certificate();
    let tls = ca.server_config.clone();
    let sim = SimHandle::start(|c| c.tls = Some(tls)).await;
    let extra = format!("extra_ca_file = \"{}\"\n", ca.cert_path.display());
    // The extra key belongs to [upstream], which gateway_config opens first.
    let config = gateway_config(&format!("https://localhost:{}", sim.addr.port()), &extra);
    let gateway = GatewayHandle::start_with(config, std::sync::Arc::new(ekyc_gateway::clock::SystemClock)).await;
    let answer = send(&http1_client(), call(&gateway, "GetFaceIdTokenIntl", "{}")).await;
    assert!(answer["SdkToken"].is_string(), "{answer}");

    // Without the CA the upstream's certificate is refused: InternalError, not forwarded.
    let config = gateway_config(&format!("https://localhost:{}", sim.addr.port()), "");
    let untrusting = GatewayHandle::start_with(config, std::sync::Arc::new(ekyc_gateway::clock::SystemClock)).await;
    let answer = send(&http1_client(), call(&untrusting, "GetFaceIdTokenIntl", "{}")).await;
    assert_eq!(error_code(&answer), Some("InternalError"), "{answer}");
    assert!(
        untrusting
            .metrics()
            .await
            .contains(r#"ekyc_gateway_upstream_errors_total{kind="connect"} 1"#)
    );
}

#[tokio::test]
async fn a_5_mib_image_passes_both_ways() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let image: String = std::iter::repeat_n("QUJDRA==", 5 * 1024 * 1024 / 8).collect();
    let body = format!(r#"{{"ImageBase64":"{image}","VideoBase64":"AAAA"}}"#);
    assert!(body.len() > 5 * 1024 * 1024);
    for client in [http1_client(), h2c_client()] {
        let answer = send(&client, call(&gateway, "LivenessCompare", &body)).await;
        assert_eq!(answer["Result"], "Success");
        assert_eq!(answer["BestFrameBase64"].as_str().unwrap().len(), image.len());
    }
    let last = sim.last_request().await;
    assert_eq!(last["body_len"], body.len());
    assert_eq!(last["body_sha256"], ekyc_gateway::tc3::sha256_hex(body.as_bytes()));
}

/// The upstream request is one buffer up to 16 KiB of body and a head-and-body writev
/// above: on both sides of that line, for a body whose buffer is not kept (over 4 KiB)
/// and for small ones one after another, the upstream gets the body byte for byte.
/// The calls go one after another on one pooled upstream connection: without the
/// buffer's clearing between calls this fails.
#[tokio::test]
async fn bodies_either_side_of_the_copy_threshold_reach_the_upstream_whole() {
    let sim = SimHandle::start(|c| c.record_last_request = true).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();
    let wrapper = large_body(0).len();
    let lengths = [16 * 1024 + 1, 16 * 1024, 16 * 1024 - 1, 8000, 64, 64, 16 * 1024 + 1];
    for length in lengths {
        let body = large_body(length - wrapper);
        assert_eq!(body.len(), length);
        let answer = send(&client, call(&gateway, "IdCardVerification", &body)).await;
        assert_eq!(answer["Result"], "0", "{length}: {answer}");
        let last = sim.last_request().await;
        assert_eq!(last["body_len"], length);
        assert_eq!(last["body_sha256"], ekyc_gateway::tc3::sha256_hex(body.as_bytes()));
    }
    assert_eq!(sim.successes("IdCardVerification").await, lengths.len() as u64);
}

/// Over HTTP/2 a large body comes in DATA frames of 16 KiB, each hashed as it comes:
/// the upstream gets the frames joined in order, and a body changed after signing is
/// refused.
#[tokio::test]
async fn a_large_body_in_many_http2_frames_is_verified_and_forwarded_whole() {
    let sim = SimHandle::start(|c| c.record_last_request = true).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let body = large_body(3 << 20);
    let client = h2c_client();
    let answer = send(&client, call(&gateway, "IdCardVerification", &body)).await;
    assert_eq!(answer["Result"], "0", "{answer}");
    let last = sim.last_request().await;
    assert_eq!(last["body_len"], body.len());
    assert_eq!(last["body_sha256"], ekyc_gateway::tc3::sha256_hex(body.as_bytes()));

    let (parts, _) = call(&gateway, "IdCardVerification", &body).into_parts();
    let mut changed = body.into_bytes();
    let end = changed.len() - 3;
    changed[end] ^= 1;
    let answer = send(
        &client,
        http::Request::from_parts(parts, Full::new(Bytes::from(changed))),
    )
    .await;
    assert_eq!(answer["Error"]["Code"], "AuthFailure.SignatureFailure", "{answer}");
    assert_eq!(sim.successes("IdCardVerification").await, 1);
}

#[tokio::test]
async fn re_signs_and_drops_hop_by_hop_and_client_credentials() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let body = r#"{"Name":"A"}"#;
    let mut stream = tokio::net::TcpStream::connect(gateway.data).await.unwrap();
    let head = format!(
        "POST /?Probe=1 HTTP/1.1\r\nHost: gateway.example\r\nContent-Type: application/json\r\n\
         X-TC-Action: IdCardVerification\r\nX-TC-Version: 2018-03-01\r\nX-TC-Region: ap-singapore\r\n\
         X-TC-Language: en-US\r\nX-TC-Timestamp: 1\r\nX-TC-Token: STSTOKEN123\r\n\
         Authorization: Bearer {CLIENT_API_KEY}\r\n\
         Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic eDp5\r\nTE: trailers\r\nX-End-To-End: kept\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""Result":"0""#), "{answer}");

    let seen = sim.last_request().await;
    let headers = &seen["headers"];
    for gone in ["x-hop-secret", "keep-alive", "proxy-authorization", "te", "x-tc-token"] {
        assert!(headers.get(gone).is_none(), "{gone} was forwarded: {headers}");
    }
    assert_eq!(headers["host"], sim.addr.to_string());
    assert!(headers["authorization"].as_str().unwrap().contains(PLATFORM_SECRET_ID));
    assert_ne!(headers["x-tc-timestamp"], "1");
    for (name, value) in [
        ("x-tc-action", "IdCardVerification"),
        ("x-tc-version", "2018-03-01"),
        ("x-tc-region", "ap-singapore"),
        ("x-tc-language", "en-US"),
        ("x-end-to-end", "kept"),
    ] {
        assert_eq!(headers[name], value);
    }
    assert_eq!(seen["uri"].as_str().unwrap(), "/?Probe=1");
    assert_eq!(sim.stats().await["token_headers_seen"], 0);
}

#[tokio::test]
async fn body_over_the_limit_is_refused_and_not_forwarded() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nmax_body_bytes = 65536\n").await;
    let big = format!(r#"{{"ImageBase64":"{}"}}"#, "A".repeat(100 * 1024));
    let answer = send(&http1_client(), call(&gateway, "LivenessCompare", &big)).await;
    assert_eq!(error_code(&answer), Some("RequestSizeLimitExceeded"), "{answer}");

    // Chunked: refused before anything is read (the SDKs always send Content-Length;
    // see tests/hostile.rs), never forwarded.
    let mut stream = tokio::net::TcpStream::connect(gateway.data).await.unwrap();
    let mut raw =
        b"POST / HTTP/1.1\r\nHost: x\r\nX-TC-Action: LivenessCompare\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        raw.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, "A".repeat(8192)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&raw).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("RequestId") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("chunked"),
        "{answer}"
    );
    assert_eq!(sim.successes("LivenessCompare").await, 0);
}

#[tokio::test]
async fn upstream_down_answers_internal_error() {
    let down = closed_port().await;
    let config = gateway_config(&format!("http://{down}"), "");
    let gateway = GatewayHandle::start_with(config, std::sync::Arc::new(ekyc_gateway::clock::SystemClock)).await;
    let answer = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(error_code(&answer), Some("InternalError"), "{answer}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_upstream_errors_total{kind="connect"} 1"#),
        "{metrics}"
    );
    let (status, body) = get(&format!("http://{}/readyz", gateway.admin)).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn slow_upstream_answers_internal_error_within_the_timeout() {
    let sim = SimHandle::start(|c| c.latency = ekyc_gateway::sim::Latency::Fixed(Duration::from_secs(5))).await;
    let gateway = GatewayHandle::start(&sim, "timeout_ms = 300\n").await;
    let started = Instant::now();
    let answer = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    let elapsed = started.elapsed();
    assert_eq!(error_code(&answer), Some("InternalError"), "{answer}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2000), "answered after {elapsed:?}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_upstream_errors_total{kind="timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_or_missing_action_is_refused_and_never_forwarded() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[actions.IdCardVerification]\n").await;
    let client = http1_client();
    let answer = send(&client, call(&gateway, "DetectAuth", "{}")).await;
    assert_eq!(error_code(&answer), Some("InvalidAction"), "{answer}");
    let mut request = call(&gateway, "DetectAuth", "{}");
    request.headers_mut().remove("x-tc-action");
    let answer = send(&client, request).await;
    assert_eq!(error_code(&answer), Some("MissingParameter"), "{answer}");
    // Refused before the pipeline reaches its action (here, at the signature): counted
    // under the action the call names.
    let mut request = call(&gateway, "IdCardVerification", "{}");
    request
        .headers_mut()
        .insert("x-tc-timestamp", http::HeaderValue::from_static("1"));
    let answer = send(&client, request).await;
    assert_eq!(error_code(&answer), Some("AuthFailure.SignatureExpire"), "{answer}");
    let metrics = gateway.metrics().await;
    for line in [
        r#"ekyc_gateway_requests_total{action="unknown",outcome="InvalidAction"} 1"#,
        r#"ekyc_gateway_requests_total{action="unknown",outcome="MissingParameter"} 1"#,
        r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="AuthFailure.SignatureExpire"} 1"#,
        r#"ekyc_gateway_requests_total{action="unknown",outcome="AuthFailure.SignatureExpire"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    let stats = sim.stats().await;
    assert_eq!(stats["invalid_action"], 0);
    assert_eq!(stats["auth_failures"], 0);
    assert_eq!(stats["actions"]["DetectAuth"]["success"], 0);
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x00\xff\xfe\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(gateway.data).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{garbage:?} -> {answer}");
    }
    let answer = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(answer["Result"], "0");
}

#[tokio::test]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let (status, body) = get(&format!("http://{}/healthz", gateway.admin)).await;
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    let ready = get_json(&format!("http://{}/readyz", gateway.admin)).await;
    assert_eq!(ready["ready"], true);
    let _ = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    let metrics = gateway.metrics().await;
    for needle in [
        "ekyc_gateway_request_duration_seconds_bucket",
        r#"ekyc_gateway_upstream_duration_seconds_count{action="IdCardVerification"} 1"#,
        r#"ekyc_gateway_open_connections{listener="data"}"#,
        "ekyc_gateway_state_age_seconds 0",
        "ekyc_gateway_accounts_loaded 1",
        "ekyc_gateway_credentials_loaded 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let (status, _) = get(&format!("http://{}/nope", gateway.admin)).await;
    assert_eq!(status, 404);
}
