//! Hostile input on the data listener: request smuggling (Content-Length with
//! Transfer-Encoding), absolute-form targets and CONNECT (no open proxy: only the
//! configured upstream is ever contacted), invalid UTF-8, a body shorter than it says,
//! slowloris, a flood of headers, malformed JSON to tenant actions. Each gets an error
//! or a closed connection, nothing is forwarded that should not be, and other clients
//! keep being served meanwhile.

mod common;

use common::faults;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Writes `raw`, then reads until the server closes or `wait` passes.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A correctly signed call, as raw HTTP/1.1 bytes with `target` as the request target.
fn signed_raw(gateway: &GatewayHandle, target: &str, extra_headers: &str) -> Vec<u8> {
    let request = call(gateway, "IdCardVerification", "{}");
    let mut raw = format!("POST {target} HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        raw.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    raw.push_str(extra_headers);
    raw.push_str("Content-Length: 2\r\nConnection: close\r\n\r\n{}");
    raw.into_bytes()
}

#[tokio::test]
async fn smuggling_and_proxy_abuse_are_refused_and_never_forwarded() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    // A server the attacker would like the gateway to reach: it must never see a connection.
    let bait = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_addr = bait.local_addr().unwrap();

    let baseline = sim.seen().await;
    let answer = exchange(
        gateway.data,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "CL + TE: {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request after it must get no answer: {answer}"
    );

    let answer = exchange(
        gateway.data,
        format!("CONNECT {bait_addr} HTTP/1.1\r\nHost: {bait_addr}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 405"),
        "CONNECT must not open a tunnel: {answer}"
    );
    assert_eq!(sim.seen().await, baseline, "nothing forwarded");

    // An absolute-form target naming another host: the call goes to the configured
    // upstream (and only there), signed for the Host it carries.
    let answer = exchange(
        gateway.data,
        &signed_raw(&gateway, &format!("http://{bait_addr}/"), ""),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(sim.seen().await, baseline + 1, "the configured upstream served it");
    let contacted = tokio::time::timeout(Duration::from_millis(200), bait.accept()).await;
    assert!(
        contacted.is_err(),
        "the gateway must never connect anywhere but its upstream"
    );
}

#[tokio::test]
async fn malformed_values_get_clear_errors_and_nothing_panics() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nbody_read_timeout_ms = 300\n").await;
    let baseline = sim.seen().await;

    // Invalid UTF-8 in the action and in the Authorization header.
    for header in [
        &b"X-TC-Action: \xff\xfe\r\n"[..],
        b"Authorization: TC3-HMAC-SHA256 \xc3\x28\r\n",
    ] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".to_vec();
        raw.extend_from_slice(header);
        raw.extend_from_slice(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}");
        let answer = exchange(gateway.data, &raw, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 4") || answer.contains("\"Error\""),
            "{header:?}: {answer}"
        );
    }

    // A body shorter than its Content-Length: the body timeout ends it; nothing forwarded.
    let mut raw = signed_raw(&gateway, "/", "");
    let cut = raw.len() - 2;
    raw.truncate(cut);
    let text = String::from_utf8(raw)
        .unwrap()
        .replace("Content-Length: 2", "Content-Length: 2000");
    let started = Instant::now();
    let answer = exchange(gateway.data, text.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the body timeout must end it"
    );
    assert!(!answer.contains("\"Result\""), "never served: {answer}");

    // Malformed JSON to tenant actions.
    for action in [
        "DescribeCallUsage",
        "DescribeBills",
        "DescribeServiceStatus",
        "DescribePriceList",
    ] {
        let answer = send(&http1_client(), call(&gateway, action, "{not json")).await;
        assert!(
            error_code(&answer).is_none_or(|code| code == "InvalidParameter"),
            "{action}: {answer}"
        );
    }
    assert_eq!(sim.seen().await, baseline, "none of it reached the upstream");

    // The gateway is still healthy.
    let answer = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(answer["Result"], "0");
}

#[tokio::test]
async fn slowloris_and_header_floods_do_not_starve_other_clients() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nheader_read_timeout_ms = 500\n").await;

    // 200 connections that send a few header bytes and then nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(gateway.data).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        idle.push(stream);
    }
    // Meanwhile honest clients are served, quickly.
    let client = http1_client();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = send(&client, call(&gateway, "IdCardVerification", "{}")).await;
        assert_eq!(answer["Result"], "0");
        assert!(started.elapsed() < Duration::from_secs(1), "served during the attack");
    }
    // The slow ones are cut by the header-read timeout.
    for mut stream in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a slowloris connection must be closed");
    }

    // 100,000 headers: refused (431 or closed), never forwarded, nothing panics.
    let baseline = sim.seen().await;
    let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..100_000 {
        raw.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let _ = stream.write_all(&raw).await; // the server may close while we write
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(sim.seen().await, baseline);
    // A new connection: the client's pooled one has been idle about as long as the
    // header deadline, which closes it; reusing it would race that close.
    let answer = send(&http1_client(), call(&gateway, "IdCardVerification", "{}")).await;
    assert_eq!(answer["Result"], "0");
}

async fn open_connections(admin: std::net::SocketAddr) -> String {
    let (_, body) = get(&format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8(body.to_vec()).unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with(r#"ekyc_gateway_open_connections{listener="data"}"#))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string()
}

/// The gateway runs as its own process, so its memory is measured alone and the
/// 10,000 client sockets do not share its descriptor limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_capped_and_cheap() {
    // This test process holds the client side of every connection.
    ekyc_gateway::server::raise_open_file_limit(0);
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"sqlite://{}/billing.db\"\n[limits]\nmax_connections = 10000\nheader_read_timeout_ms = 30000\n",
        sim.addr,
        dir.path().display()
    );
    let gateway = GatewayProcess::start(&config, &process_env()).await;
    let tenant = faults::create_tenants(gateway.admin, 1).await.remove(0);
    faults::until_known(gateway.data, &tenant).await;
    // The honest client holds one keep-alive connection of the 10,000, its own (not a
    // pool's, which could open another one when it pleases).
    let stream = TcpStream::connect(gateway.data).await.unwrap();
    let (mut honest, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (url, host, signer) = (gateway.url(), gateway.data.to_string(), tenant.signer.clone());
    let mut honest_call = async move || {
        let request = signed_call(&url, &host, "IdCardVerification", b"{}", &signer);
        honest
            .ready()
            .await
            .unwrap_or_else(|e| panic!("the honest connection must stay open: {e:?}"));
        let response = honest
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("the honest connection must stay open: {e:?}"));
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        answer["Response"].clone()
    };
    assert_eq!(honest_call().await["Result"], "0");
    let pid = gateway.child.id();
    let before = resident_kib(pid);

    let mut idle = Vec::new();
    for _ in 0..9_999 {
        idle.push(TcpStream::connect(gateway.data).await.unwrap());
    }
    poll_until(
        "the gateway to hold 10,000 connections",
        Duration::from_secs(30),
        || async { (open_connections(gateway.admin).await == "10000").then_some(()) },
    )
    .await;
    let per_connection = resident_kib(pid).saturating_sub(before) as f64 / 9_999.0;
    // Meanwhile the honest client, on its connection, is served quickly.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(honest_call().await["Result"], "0");
    }
    let twenty_calls = started.elapsed();
    eprintln!(
        "10,000 open connections: {per_connection:.2} KiB resident each in the gateway process; 20 honest calls meanwhile took {twenty_calls:?}"
    );
    assert!(per_connection < 16.0, "{per_connection} KiB per idle connection");
    assert!(twenty_calls < Duration::from_secs(2));

    // One more is closed at once.
    let mut extra = TcpStream::connect(gateway.data).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "over the cap: closed at once");

    // When the idle ones go, new clients are served again.
    drop(idle);
    poll_until("service to resume", Duration::from_secs(10), || async {
        let request = signed_call(
            &gateway.url(),
            &gateway.data.to_string(),
            "IdCardVerification",
            b"{}",
            &tenant.signer,
        );
        match http1_client().request(request).await {
            Ok(response) => (response.status() == 200).then_some(()),
            Err(_) => None,
        }
    })
    .await;
}
