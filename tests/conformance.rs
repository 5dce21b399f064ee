//! The gateway is exactly as permissive as Tencent Cloud's API 3.0, over real sockets:
//! what the official SDKs sign is accepted (the Node SDKs' host without its port and
//! their scope named after the endpoint's first label; tenant actions over GET and the
//! v1 form), and what Tencent refuses is refused with Tencent's code, never forwarded
//! and never billed: other methods than POST and GET, signatures that leave out
//! `content-type` or `host` or name another product's scope, v1 timestamps far off, a
//! missing, repeated or malformed `Host`, a `Connection` header naming an end-to-end
//! header, routing headers beside a v1 form. Internal details never reach the client;
//! the `Bearer` scheme is matched without case. Must not test the SDKs themselves
//! (tests/sdk.rs does).

mod common;

use common::*;
use ekyc_gateway::clock::{Clock, SystemClock};
use ekyc_gateway::sigv1::{self, Params};
use ekyc_gateway::tc3::{SigningKey, sha256_hex};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An answer read off the wire: status, header block and body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice::<Value>(&self.body).map_or(Value::Null, |v| v["Response"].clone())
    }

    fn code(&self) -> Option<String> {
        error_code(&self.json()).map(str::to_string)
    }
}

/// Writes `raw` (which asks to close), reads the whole answer.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let end = text.find("\r\n\r\n").map_or(text.len(), |at| at + 4);
    Answer {
        status: text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: text[..end].to_ascii_lowercase(),
        body: bytes[end.min(bytes.len())..].to_vec(),
    }
}

/// A request as raw HTTP/1.1 bytes; `Content-Length` and `Connection: close` added.
fn raw(method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A TC3 call signed the way a client may sign it: `signed` lists the signed headers'
/// names and the values the client signed (which may differ from those sent, as the
/// Node SDKs' host does); `service` is the credential scope's.
struct Tc3Call<'a> {
    method: &'a str,
    query: &'a str,
    action: &'a str,
    service: &'a str,
    host_sent: String,
    signed: Vec<(&'a str, String)>,
    body: &'a [u8],
}

impl Tc3Call<'_> {
    fn post(gateway: &GatewayHandle, action: &'static str, body: &'static [u8]) -> Tc3Call<'static> {
        let host = gateway.data.to_string();
        Tc3Call {
            method: "POST",
            query: "",
            action,
            service: "faceid",
            host_sent: host.clone(),
            signed: vec![("content-type", "application/json".into()), ("host", host)],
            body,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let timestamp = SystemClock.now_unix();
        let date = time::OffsetDateTime::from_unix_timestamp(timestamp).unwrap().date();
        let date = format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day());
        let names: Vec<&str> = self.signed.iter().map(|(name, _)| *name).collect();
        let names = names.join(";");
        let canonical_headers: String = self.signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let canonical = format!(
            "{}\n/\n{}\n{canonical_headers}\n{names}\n{}",
            self.method,
            self.query,
            sha256_hex(self.body)
        );
        let string_to_sign = format!(
            "TC3-HMAC-SHA256\n{timestamp}\n{date}/{}/tc3_request\n{}",
            self.service,
            sha256_hex(canonical.as_bytes())
        );
        let signature =
            hex::encode(SigningKey::derive(CLIENT_SECRET_KEY, &date, self.service).sign(string_to_sign.as_bytes()));
        let content_type = self
            .signed
            .iter()
            .find(|(name, _)| *name == "content-type")
            .map_or("application/json".to_string(), |(_, v)| v.clone());
        vec![
            ("Host", self.host_sent.clone()),
            ("Content-Type", content_type),
            ("X-TC-Action", self.action.to_string()),
            ("X-TC-Version", "2018-03-01".into()),
            ("X-TC-Region", "ap-singapore".into()),
            ("X-TC-Timestamp", timestamp.to_string()),
            (
                "Authorization",
                format!(
                    "TC3-HMAC-SHA256 Credential={CLIENT_SECRET_ID}/{date}/{}/tc3_request, SignedHeaders={names}, Signature={signature}",
                    self.service
                ),
            ),
        ]
    }

    fn bytes(&self) -> Vec<u8> {
        let target = if self.query.is_empty() {
            "/".to_string()
        } else {
            format!("/?{}", self.query)
        };
        raw(self.method, &target, &self.headers(), self.body)
    }
}

/// A v1 (form-signed) call of the test tenant: `params` plus the signature fields.
fn v1_form(gateway: &GatewayHandle, method: &str, params: &[(&str, &str)], timestamp: i64) -> String {
    let mut unsigned = Params(params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    unsigned.0.push(("Version".into(), "2018-03-01".into()));
    unsigned.0.push(("Region".into(), "ap-singapore".into()));
    let host = gateway.data.to_string();
    let target = sigv1::Target {
        method,
        host: &host,
        path: "/",
    };
    sigv1::resign(target, &unsigned, CLIENT_SECRET_ID, CLIENT_SECRET_KEY, timestamp, 7).to_form()
}

fn form_post(gateway: &GatewayHandle, form: &str, extra: &[(&str, String)], target: &str) -> Vec<u8> {
    let mut headers = vec![
        ("Host", gateway.data.to_string()),
        ("Content-Type", "application/x-www-form-urlencoded".into()),
    ];
    headers.extend(extra.iter().cloned());
    raw("POST", target, &headers, form.as_bytes())
}

async fn billable_calls(gateway: &GatewayHandle) -> String {
    let metrics = gateway.metrics().await;
    metrics
        .lines()
        .find(|line| line.starts_with("ekyc_gateway_billable_calls_total "))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn only_post_and_get_are_api_calls() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let before = sim.seen().await;
    let billed_before = billable_calls(&gateway).await;
    for (method, target) in [
        ("PUT", "/"),
        ("DELETE", "/"),
        ("OPTIONS", "*"),
        ("PATCH", "/"),
        ("FOO", "/"),
        ("HEAD", "/"),
    ] {
        let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
        call.method = method;
        let headers = call.headers();
        let answer = exchange(gateway.data, &raw(method, target, &headers, b"{}")).await;
        assert_eq!(answer.status, 405, "{method}: {}", answer.head);
        assert!(answer.head.contains("allow: get, post"), "{method}: {}", answer.head);
        if method != "HEAD" {
            assert_eq!(answer.code().as_deref(), Some("UnsupportedProtocol"), "{method}");
            assert!(answer.json()["RequestId"].is_string(), "{method}");
        } else {
            assert!(answer.body.is_empty(), "a HEAD answer has no body");
        }
    }
    assert_eq!(sim.seen().await, before, "nothing was forwarded");
    assert_eq!(billable_calls(&gateway).await, billed_before, "nothing was billed");
    // POST and GET still are.
    let answer = exchange(
        gateway.data,
        &Tc3Call::post(&gateway, "IdCardVerification", b"{}").bytes(),
    )
    .await;
    assert_eq!((answer.status, answer.code()), (200, None), "{:?}", answer.json());
}

#[tokio::test]
async fn the_node_sdks_signatures_are_accepted() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let port = gateway.data.port();
    // `127.0.0.1:PORT` and `localhost:PORT` as the Node SDKs sign them: `host` without
    // the port, the scope's service the endpoint's first label.
    for (host, service) in [
        ("127.0.0.1", "127"),
        ("localhost", "localhost"),
        ("127.0.0.1", "faceid"),
    ] {
        let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
        call.host_sent = format!("{host}:{port}");
        call.service = service;
        call.signed[1].1 = host.to_string();
        let answer = exchange(gateway.data, &call.bytes()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (200, None),
            "{host} {service}: {:?}",
            answer.json()
        );
    }
    assert_eq!(sim.successes("IdCardVerification").await, 3);
    // A scope named after a label the Host does not start with is another product's.
    let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
    call.host_sent = format!("localhost:{port}");
    call.service = "127";
    call.signed[1].1 = "localhost".into();
    let answer = exchange(gateway.data, &call.bytes()).await;
    assert_eq!(answer.code().as_deref(), Some("AuthFailure.InvalidAuthorization"));
}

#[tokio::test]
async fn signatures_that_tencent_refuses_are_refused_before_the_upstream() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let before = sim.seen().await;
    let host = gateway.data.to_string();
    let cases: Vec<(&str, Tc3Call<'_>)> = vec![
        ("SignedHeaders without content-type", {
            let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
            call.signed = vec![("host", host.clone())];
            call
        }),
        ("SignedHeaders without host", {
            let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
            call.signed = vec![("content-type", "application/json".into())];
            call
        }),
        ("another product's scope", {
            let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
            call.service = "cvm";
            call
        }),
    ];
    for (what, call) in cases {
        let answer = exchange(gateway.data, &call.bytes()).await;
        assert_eq!(answer.status, 200, "{what}");
        assert_eq!(
            answer.code().as_deref(),
            Some("AuthFailure.InvalidAuthorization"),
            "{what}: {:?}",
            answer.json()
        );
    }
    // v1: a timestamp whose distance to now overflows is expired, not wrapped.
    let now = SystemClock.now_unix();
    for timestamp in [now.wrapping_add(i64::MIN), i64::MIN, i64::MAX] {
        let form = v1_form(&gateway, "POST", &[("Action", "IdCardVerification")], timestamp);
        let answer = exchange(gateway.data, &form_post(&gateway, &form, &[], "/")).await;
        assert_eq!(
            answer.code().as_deref(),
            Some("AuthFailure.SignatureExpire"),
            "v1 Timestamp {timestamp}: {:?}",
            answer.json()
        );
    }
    assert_eq!(sim.seen().await, before, "nothing was forwarded");
}

#[tokio::test]
async fn http_1_1_needs_exactly_one_valid_host() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let before = sim.seen().await;
    let signed = Tc3Call::post(&gateway, "IdCardVerification", b"{}").headers();
    let without_host: Vec<(&str, String)> = signed.iter().filter(|(n, _)| *n != "Host").cloned().collect();
    let with_hosts = |hosts: &[&str]| {
        let mut headers = without_host.clone();
        headers.extend(hosts.iter().map(|h| ("Host", h.to_string())));
        raw("POST", "/", &headers, b"{}")
    };
    let addr = gateway.data.to_string();
    for (what, request) in [
        ("no Host", with_hosts(&[])),
        ("two Hosts", with_hosts(&[&addr, &addr])),
        ("a Host with a space", with_hosts(&["a b"])),
        ("a Host with user information", with_hosts(&[&format!("user@{addr}")])),
        ("a Host with a path", with_hosts(&[&format!("{addr}/x")])),
        ("an empty Host", with_hosts(&[""])),
    ] {
        let answer = exchange(gateway.data, &request).await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.head);
        assert!(answer.head.contains("connection: close"), "{what}");
    }
    assert_eq!(sim.seen().await, before, "nothing was forwarded");
    // HTTP/1.0 predates Host: without one, the call is judged by its signature.
    let mut request = String::from_utf8(with_hosts(&[])).unwrap();
    request = request.replacen("HTTP/1.1", "HTTP/1.0", 1);
    let answer = exchange(gateway.data, request.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.code().as_deref(), Some("AuthFailure.SignatureFailure"));
}

#[tokio::test]
async fn connection_cannot_drop_a_header_the_gateway_routed_or_verified_by() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let before = sim.seen().await;
    for named in [
        "x-tc-action",
        "X-TC-Version",
        "content-type",
        "host",
        "authorization",
        "x-tc-anything",
    ] {
        let mut headers = Tc3Call::post(&gateway, "IdCardVerification", b"{}").headers();
        headers.push(("Connection", format!("keep-alive, {named}")));
        let answer = exchange(gateway.data, &raw("POST", "/", &headers, b"{}")).await;
        assert_eq!(answer.status, 400, "Connection: {named}: {}", answer.head);
        assert_eq!(answer.code().as_deref(), Some("InvalidParameter"), "{named}");
    }
    // A signed header outside the usual ones is protected too.
    let mut call = Tc3Call::post(&gateway, "IdCardVerification", b"{}");
    call.signed.push(("x-custom-signed", "1".into()));
    let mut headers = call.headers();
    headers.push(("X-Custom-Signed", "1".into()));
    headers.push(("Connection", "X-Custom-Signed".into()));
    let answer = exchange(gateway.data, &raw("POST", "/", &headers, b"{}")).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(sim.seen().await, before, "nothing was forwarded");
    // Naming a header nobody routes or signs by is the client's business.
    let mut headers = Tc3Call::post(&gateway, "IdCardVerification", b"{}").headers();
    headers.push(("X-Trace", "1".into()));
    headers.push(("Connection", "keep-alive, X-Trace".into()));
    let answer = exchange(gateway.data, &raw("POST", "/", &headers, b"{}")).await;
    assert_eq!((answer.status, answer.code()), (200, None), "{:?}", answer.json());
    let forwarded = sim.last_request().await;
    assert!(forwarded["headers"].get("x-trace").is_none(), "{forwarded}");
}

#[tokio::test]
async fn a_v1_call_forwards_only_the_action_it_was_authorized_for() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let form = v1_form(
        &gateway,
        "POST",
        &[
            ("Action", "IdCardVerification"),
            ("IdCard", "11204416541220243X"),
            ("Name", "Zhang San"),
        ],
        SystemClock.now_unix(),
    );
    let routing = [
        ("X-TC-Action", "LivenessCompare".to_string()),
        ("X-TC-Version", "2017-01-01".to_string()),
        ("X-TC-Region", "ap-beijing".to_string()),
    ];
    let answer = exchange(
        gateway.data,
        &form_post(&gateway, &form, &routing, "/?Action=LivenessCompare"),
    )
    .await;
    assert_eq!((answer.status, answer.code()), (200, None), "{:?}", answer.json());
    let forwarded = sim.last_request().await;
    for header in ["x-tc-action", "x-tc-version", "x-tc-region"] {
        assert!(forwarded["headers"].get(header).is_none(), "{header}: {forwarded}");
    }
    assert_eq!(forwarded["uri"], "/", "{forwarded}");
    assert_eq!(sim.successes("IdCardVerification").await, 1);
    assert_eq!(sim.successes("LivenessCompare").await, 0);
}

#[tokio::test]
async fn tenant_actions_read_their_parameters_wherever_the_signature_put_them() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let month = "2026-11";
    // v1 POST form and v1 GET query.
    let form = v1_form(
        &gateway,
        "POST",
        &[("Action", "DescribeCallUsage"), ("Month", month)],
        SystemClock.now_unix(),
    );
    let answer = exchange(gateway.data, &form_post(&gateway, &form, &[], "/")).await;
    assert_eq!(answer.json()["Month"], month, "v1 POST: {:?}", answer.json());
    let query = v1_form(
        &gateway,
        "GET",
        &[("Action", "DescribeCallUsage"), ("Month", month)],
        SystemClock.now_unix(),
    );
    let headers = [("Host", gateway.data.to_string())];
    let answer = exchange(gateway.data, &raw("GET", &format!("/?{query}"), &headers, b"")).await;
    assert_eq!(answer.json()["Month"], month, "v1 GET: {:?}", answer.json());
    // TC3 GET: the parameters are the query string.
    let query = format!("Month={month}");
    let mut call = Tc3Call::post(&gateway, "DescribeCallUsage", b"");
    call.method = "GET";
    call.query = &query;
    call.signed[0].1 = "application/x-www-form-urlencoded".into();
    let answer = exchange(gateway.data, &call.bytes()).await;
    assert_eq!(answer.json()["Month"], month, "TC3 GET: {:?}", answer.json());
    // TC3 POST: the JSON body.
    let answer = exchange(
        gateway.data,
        &Tc3Call::post(&gateway, "DescribeCallUsage", br#"{"Month":"2026-11"}"#).bytes(),
    )
    .await;
    assert_eq!(answer.json()["Month"], month, "TC3 POST: {:?}", answer.json());
    // A malformed Month is refused however it comes.
    let form = v1_form(
        &gateway,
        "POST",
        &[("Action", "DescribeCallUsage"), ("Month", "November")],
        SystemClock.now_unix(),
    );
    let answer = exchange(gateway.data, &form_post(&gateway, &form, &[], "/")).await;
    assert_eq!(answer.code().as_deref(), Some("InvalidParameter"));
}

#[tokio::test]
async fn tenant_actions_are_rate_limited_like_every_call() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let (status, _) = admin(
        &gateway,
        "PUT",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/rate-limit"),
        Some(json!({"qps": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let mut codes = Vec::new();
    for _ in 0..10 {
        let answer = exchange(
            gateway.data,
            &Tc3Call::post(&gateway, "DescribeServiceStatus", b"{}").bytes(),
        )
        .await;
        codes.push(answer.code());
    }
    assert_eq!(codes[0], None, "{codes:?}");
    assert!(
        codes.iter().any(|c| c.as_deref() == Some("RequestLimitExceeded")),
        "a burst of 1: {codes:?}"
    );
}

#[tokio::test]
async fn internal_details_stay_in_the_log() {
    // An upstream whose answer is malformed in a way only our client's internals name.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
                    .await;
            });
        }
    });
    let config = gateway_config(&format!("http://{upstream_addr}"), "");
    let gateway = GatewayHandle::start_with(config, std::sync::Arc::new(SystemClock)).await;
    let answer = exchange(
        gateway.data,
        &Tc3Call::post(&gateway, "IdCardVerification", b"{}").bytes(),
    )
    .await;
    assert_eq!(answer.code().as_deref(), Some("InternalError"), "{:?}", answer.json());
    let message = answer.json()["Error"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(!message.contains("content-length"), "{message}");
    assert!(!message.contains("malformed answer"), "{message}");
    assert!(answer.json()["RequestId"].is_string());
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_case() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (status, accounts) = admin_with_token(&gateway, "GET", "/v1/accounts", None, None).await;
        assert_eq!(status, 401, "{accounts}");
        let request = http::Request::get(format!("http://{}/v1/accounts", gateway.admin))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = http1_client().request(request).await.unwrap();
        assert_eq!(response.status(), 200, "admin API with {scheme}");

        let mut request = api_key_call(&gateway, CLIENT_API_KEY, "IdCardVerification", "{}");
        request
            .headers_mut()
            .insert("authorization", format!("{scheme} {CLIENT_API_KEY}").parse().unwrap());
        let answer = send(&http1_client(), request).await;
        assert!(answer.get("Error").is_none(), "data plane with {scheme}: {answer}");
    }
}

#[tokio::test]
async fn an_api_key_call_needs_a_content_type() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let mut request = api_key_call(&gateway, CLIENT_API_KEY, "IdCardVerification", "{}");
    request.headers_mut().remove("content-type");
    let answer = send(&http1_client(), request).await;
    assert_eq!(error_code(&answer), Some("InvalidParameter"), "{answer}");
    assert_eq!(sim.stats().await["auth_failures"], 0, "refused before the upstream");
    assert_eq!(sim.successes("IdCardVerification").await, 0);
}
