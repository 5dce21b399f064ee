//! The data listener's own HTTP/1.1 server (`server::http1`), on raw sockets: pipelined
//! calls, `Expect: 100-continue`, HTTP/1.0 keep-alive, a refused call's unread body,
//! malformed framing and oversized heads, an oversized upload, a refusal before a
//! large or held-back body, the answer's framing headers, the header deadline, and
//! graceful shutdown of idle keep-alive connections, a large body hashed as it arrives.
//! Each test checks
//! what reached the upstream and what was counted.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off a connection.
struct Answer {
    status: u16,
    /// The head, lowercased, for `contains` checks on header lines.
    head: String,
    body: String,
}

/// Reads one answer (head, then `content-length` bytes of body) from `stream`,
/// keeping what follows in `pending` for the next call.
async fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Answer> {
    let deadline = Duration::from_secs(10);
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(deadline, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while pending.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(deadline, stream.read(&mut chunk))
            .await
            .expect("the body in time")
            .unwrap();
        assert!(n > 0, "the connection closed inside a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&pending[head_end..head_end + length]).into_owned();
    pending.drain(..head_end + length);
    Some(Answer { status, head, body })
}

/// Whether the server closes `stream` (EOF or reset) within a few seconds.
async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

/// A signed call as raw HTTP/1.x bytes: `version` is `1.0` or `1.1`, `extra` more
/// header lines (each ending in CRLF), then the JSON body.
fn raw_call(gateway: &GatewayHandle, version: &str, extra: &str, body: &str) -> Vec<u8> {
    let request = call(gateway, "IdCardVerification", body);
    let mut raw = format!("POST / HTTP/{version}\r\n");
    for (name, value) in request.headers() {
        raw.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    raw.push_str(extra);
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw.into_bytes()
}

async fn billed(gateway: &GatewayHandle) -> u64 {
    let metrics = gateway.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ekyc_gateway_billable_calls_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn pipelined_calls_are_answered_in_order_on_one_connection_and_each_counted() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    // Three calls in one write, then a tenant action that is answered by the gateway.
    let mut raw = Vec::new();
    for _ in 0..3 {
        raw.extend(raw_call(&gateway, "1.1", "", "{}"));
    }
    let status_call = call(&gateway, "DescribeServiceStatus", "{}");
    raw.extend(b"POST / HTTP/1.1\r\n");
    for (name, value) in status_call.headers() {
        raw.extend(format!("{name}: {}\r\n", value.to_str().unwrap()).as_bytes());
    }
    raw.extend(b"Content-Length: 2\r\n\r\n{}");
    stream.write_all(&raw).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..3 {
        let answer = read_answer(&mut stream, &mut pending).await.expect("an answer");
        assert_eq!(answer.status, 200, "call {i}: {}", answer.body);
        assert!(answer.body.contains("\"Result\""), "call {i}: {}", answer.body);
        assert!(answer.head.contains("\r\ndate: "), "{}", answer.head);
        assert!(!answer.head.contains("connection: close"), "{}", answer.head);
    }
    let answer = read_answer(&mut stream, &mut pending).await.expect("the fourth answer");
    assert!(answer.body.contains("\"Activated\":true"), "{}", answer.body);
    assert_eq!(sim.successes("IdCardVerification").await, 3);
    poll_until("three calls counted", Duration::from_secs(5), || async {
        (billed(&gateway).await == 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn expect_100_continue_gets_the_go_ahead_before_the_body_is_sent() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let raw = raw_call(&gateway, "1.1", "Expect: 100-continue\r\n", "{}");
    let (head, body) = raw.split_at(raw.len() - 2);
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut pending = Vec::new();
    let interim = read_answer(&mut stream, &mut pending).await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    stream.write_all(body).await.unwrap();
    let answer = read_answer(&mut stream, &mut pending).await.expect("the answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"Result\""), "{}", answer.body);
    assert_eq!(sim.successes("IdCardVerification").await, 1);
}

#[tokio::test]
async fn http_1_0_keeps_the_connection_only_when_it_asks() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..2 {
        stream
            .write_all(&raw_call(&gateway, "1.0", "Connection: keep-alive\r\n", "{}"))
            .await
            .unwrap();
        let answer = read_answer(&mut stream, &mut pending).await.expect("an answer");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.head.contains("connection: keep-alive"), "{}", answer.head);
    }
    stream.write_all(&raw_call(&gateway, "1.0", "", "{}")).await.unwrap();
    let answer = read_answer(&mut stream, &mut pending).await.expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.head.starts_with("http/1.0 200"), "{}", answer.head);
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    assert!(
        closes(&mut stream).await,
        "HTTP/1.0 without keep-alive: closed after the answer"
    );

    // HTTP/1.1 with `Connection: close` too.
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    stream
        .write_all(&raw_call(&gateway, "1.1", "Connection: close\r\n", "{}"))
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new()).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert!(closes(&mut stream).await);
    assert_eq!(sim.successes("IdCardVerification").await, 4);
}

#[tokio::test]
async fn a_refused_call_with_an_unread_body_leaves_the_connection_usable() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    // An unknown caller is refused from its headers, before its upload is read.
    let body = format!("{{\"Pad\":\"{}\"}}", "x".repeat(20_000));
    let mut raw = unknown_caller_head("", body.len()).into_bytes();
    raw.extend(body.as_bytes());
    raw.extend(raw_call(&gateway, "1.1", "", "{}"));
    stream.write_all(&raw).await.unwrap();
    let mut pending = Vec::new();
    let refused = read_answer(&mut stream, &mut pending).await.expect("the refusal");
    assert!(refused.body.contains("AuthFailure"), "{}", refused.body);
    let served = read_answer(&mut stream, &mut pending)
        .await
        .expect("the next call's answer");
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(served.body.contains("\"Result\""), "{}", served.body);
    assert_eq!(sim.successes("IdCardVerification").await, 1);
}

#[tokio::test]
async fn malformed_framing_and_oversized_heads_are_refused_and_closed() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nmax_headers = 16\nmax_header_bytes = 8192\n").await;
    let signed = String::from_utf8(raw_call(&gateway, "1.1", "", "{}")).unwrap();
    let many_headers: String = (0..40).map(|i| format!("X-Pad-{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "a non-numeric length",
            signed.replace("Content-Length: 2", "Content-Length: two"),
            400,
        ),
        (
            "a negative length",
            signed.replace("Content-Length: 2", "Content-Length: -2"),
            400,
        ),
        (
            "two different lengths",
            signed.replace("Content-Length: 2", "Content-Length: 2\r\nContent-Length: 3"),
            400,
        ),
        (
            "a space before the colon",
            signed.replace("Content-Length: 2", "Content-Length : 2"),
            400,
        ),
        (
            "a folded header",
            signed.replace("\r\nContent-Length: 2", " \r\n folded\r\nContent-Length: 2"),
            400,
        ),
        ("garbage", "\u{1}\u{2}\u{3} nonsense\r\n\r\n".to_string(), 400),
        (
            "too many headers",
            signed.replace("Content-Length: 2", &format!("{many_headers}Content-Length: 2")),
            431,
        ),
        (
            "a head over the byte cap",
            signed.replace(
                "Content-Length: 2",
                &format!("X-Big: {}\r\nContent-Length: 2", "b".repeat(9000)),
            ),
            431,
        ),
    ];
    for (what, raw, status) in cases {
        let mut stream = TcpStream::connect(gateway.data).await.unwrap();
        let _ = stream.write_all(raw.as_bytes()).await;
        let answer = read_answer(&mut stream, &mut Vec::new()).await;
        let answer = answer.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(answer.status, status, "{what}: {}", answer.head);
        assert!(answer.head.contains("connection: close"), "{what}: {}", answer.head);
        assert!(closes(&mut stream).await, "{what}: the connection must close");
    }
    // Two equal lengths are one length (RFC 9110 §8.6).
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let raw = signed.replace("Content-Length: 2", "Content-Length: 2\r\nContent-Length: 2");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        sim.successes("IdCardVerification").await,
        1,
        "only the well-framed call"
    );
    assert_eq!(billed(&gateway).await, 1);
}

#[tokio::test]
async fn an_oversized_upload_is_answered_with_an_error_not_a_reset() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nmax_body_bytes = 4096\n").await;
    let body = format!("{{\"Pad\":\"{}\"}}", "x".repeat(100_000));
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let mut raw = raw_call(&gateway, "1.1", "", &body);
    raw.extend(raw_call(&gateway, "1.1", "", "{}"));
    stream.write_all(&raw).await.unwrap();
    let mut pending = Vec::new();
    let refused = read_answer(&mut stream, &mut pending).await.expect("the refusal");
    assert!(refused.body.contains("RequestSizeLimitExceeded"), "{}", refused.body);
    // Read and dropped within the discard budget: the next call is served.
    let served = read_answer(&mut stream, &mut pending).await.expect("the next answer");
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(sim.successes("IdCardVerification").await, 1);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_finishes() {
    let sim = SimHandle::start(|_| {}).await;
    let mut gateway = GatewayHandle::start(&sim, "").await;
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let mut pending = Vec::new();
    // Several calls, so that the connection waits idle more than once: the server
    // registers for shutdown at the first wait and must still be woken at a later one.
    for _ in 0..3 {
        stream.write_all(&raw_call(&gateway, "1.1", "", "{}")).await.unwrap();
        let answer = read_answer(&mut stream, &mut pending).await.expect("an answer");
        assert_eq!(answer.status, 200);
    }
    gateway.begin_shutdown();
    assert!(closes(&mut stream).await, "an idle keep-alive connection is closed");
    tokio::time::timeout(Duration::from_secs(10), gateway.join())
        .await
        .expect("shutdown does not wait for idle connections");
}

#[tokio::test]
async fn the_header_deadline_runs_from_each_head_and_closes_an_idle_connection() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nheader_read_timeout_ms = 400\n").await;
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(&raw_call(&gateway, "1.1", "", "{}")).await.unwrap();
    assert_eq!(read_answer(&mut stream, &mut pending).await.unwrap().status, 200);
    // Idle for most of the deadline, twice: each head gets its own 400 ms, so the
    // connection's first deadline (set when it opened) must not close it.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(&raw_call(&gateway, "1.1", "", "{}")).await.unwrap();
        let answer = read_answer(&mut stream, &mut pending)
            .await
            .expect("served within its deadline");
        assert_eq!(answer.status, 200);
    }
    // Then nothing: closed once the deadline passes.
    let started = std::time::Instant::now();
    assert!(closes(&mut stream).await, "an idle connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before its deadline"
    );
    assert_eq!(sim.successes("IdCardVerification").await, 3);
}

/// An unknown caller's call with `extra` headers and a declared body of `length` bytes,
/// of which only the head is sent.
fn unknown_caller_head(extra: &str, length: usize) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-TC-Action: IdCardVerification\r\n\
         X-TC-Timestamp: 1\r\nAuthorization: TC3-HMAC-SHA256 Credential=AKIDunknown/2026-01-01/faceid/tc3_request, \
         SignedHeaders=content-type;host, Signature={}\r\n{extra}Content-Length: {length}\r\n\r\n",
        "0".repeat(64),
    )
}

#[tokio::test]
async fn a_refusal_is_answered_before_a_large_unread_body_and_the_connection_closed() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "[limits]\nmax_body_bytes = 4096\nbody_read_timeout_ms = 30000\n").await;
    // 64 MiB declared (past the 16 MiB the gateway reads to drop), 1 KiB sent: the
    // answer must come now, not after the body or the body deadline.
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    stream
        .write_all(unknown_caller_head("", 64 << 20).as_bytes())
        .await
        .unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_answer(&mut stream, &mut Vec::new()).await.expect("the refusal");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(
        answer.body.contains("AuthFailure") || answer.body.contains("RequestSizeLimitExceeded"),
        "{}",
        answer.body
    );
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    drop(stream);

    // A refused caller that waits for `100 Continue` is not told to go on: it gets
    // the refusal and the connection closes.
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    stream
        .write_all(unknown_caller_head("Expect: 100-continue\r\n", 2).as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new()).await.expect("the refusal");
    assert_ne!(answer.status, 100);
    assert!(answer.body.contains("AuthFailure"), "{}", answer.body);
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    assert!(closes(&mut stream).await);
    assert_eq!(sim.successes("IdCardVerification").await, 0);
}

/// Sends `head`, then `body` in pieces of `piece` bytes, on a new connection; the answer.
async fn send_in_pieces(gateway: &GatewayHandle, head: &[u8], body: &[u8], piece: usize) -> Answer {
    let mut stream = TcpStream::connect(gateway.data).await.unwrap();
    stream.write_all(head).await.unwrap();
    for piece in body.chunks(piece) {
        stream.write_all(piece).await.unwrap();
    }
    read_answer(&mut stream, &mut Vec::new()).await.expect("an answer")
}

/// A body that comes after its head, in pieces, is hashed as it arrives (not once
/// whole): the signature still checks, the upstream gets every byte and a signature
/// over them, a call pipelined behind it is not hashed into it, a body changed after
/// signing is refused, and an API-key call is signed for the upstream with that hash.
#[tokio::test]
async fn a_large_body_sent_after_its_head_is_verified_forwarded_whole_and_ends_where_it_says() {
    let sim = SimHandle::start(|c| c.record_last_request = true).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let body = large_body(3 << 20);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let raw = raw_call(&gateway, "1.1", expect, &body);
        let (head, sent_body) = raw.split_at(raw.len() - body.len());
        let mut stream = TcpStream::connect(gateway.data).await.unwrap();
        stream.write_all(head).await.unwrap();
        let mut pending = Vec::new();
        if !expect.is_empty() {
            let interim = read_answer(&mut stream, &mut pending).await.expect("100 Continue");
            assert_eq!(interim.status, 100);
        }
        // Uneven pieces, the last with the next call behind it.
        let (pieces, last) = sent_body.split_at(sent_body.len() - 1000);
        for piece in pieces.chunks(70_001) {
            stream.write_all(piece).await.unwrap();
        }
        let mut tail = last.to_vec();
        tail.extend(raw_call(&gateway, "1.1", "", "{}"));
        stream.write_all(&tail).await.unwrap();
        let answer = read_answer(&mut stream, &mut pending).await.expect("the answer");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("\"Result\""), "{expect:?}: {}", answer.body);
        let answer = read_answer(&mut stream, &mut pending)
            .await
            .expect("the pipelined answer");
        assert!(answer.body.contains("\"Result\""), "{expect:?}: {}", answer.body);
    }
    assert_eq!(sim.successes("IdCardVerification").await, 4);

    // The upstream got the whole large body (sent alone: the last request recorded
    // above is the small one).
    let raw = raw_call(&gateway, "1.1", "", &body);
    let (head, sent_body) = raw.split_at(raw.len() - body.len());
    let answer = send_in_pieces(&gateway, head, sent_body, 65_536).await;
    assert!(answer.body.contains("\"Result\""), "{}", answer.body);
    let last = sim.last_request().await;
    assert_eq!(last["body_len"], body.len());
    assert_eq!(last["body_sha256"], ekyc_gateway::tc3::sha256_hex(body.as_bytes()));

    // Changed in its third byte from the end after it was signed: refused.
    let mut raw = raw_call(&gateway, "1.1", "", &body);
    let end = raw.len() - 3;
    raw[end] ^= 1;
    let (head, sent_body) = raw.split_at(raw.len() - body.len());
    let answer = send_in_pieces(&gateway, head, sent_body, 65_536).await;
    assert!(answer.body.contains("AuthFailure.SignatureFailure"), "{}", answer.body);
    assert_eq!(sim.successes("IdCardVerification").await, 5);

    // An API-key call is signed for the upstream with the hash taken as it arrived.
    let head = format!(
        "POST / HTTP/1.1\r\nHost: gateway.example\r\nContent-Type: application/json\r\n\
         X-TC-Action: IdCardVerification\r\nAuthorization: Bearer {CLIENT_API_KEY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = send_in_pieces(&gateway, head.as_bytes(), body.as_bytes(), 65_536).await;
    assert!(answer.body.contains("\"Result\""), "{}", answer.body);
    assert_eq!(sim.successes("IdCardVerification").await, 6);
    assert_eq!(
        sim.last_request().await["body_sha256"],
        ekyc_gateway::tc3::sha256_hex(body.as_bytes())
    );
}
