//! The gateway's own HTTP/1.1 client towards the upstream (`proxy::pool`, `proxy::h1`),
//! against a scripted upstream speaking raw bytes: keep-alive reuse, chunked answers,
//! `Connection: close`, an idle connection the upstream closed, interim 100 answers,
//! answers cut short or over the cap, no answer on a reused connection, the answer's
//! headers (hop-by-hop ones dropped, the upstream's Date once) and a 204. Each checks
//! what the tenant got and what was counted; bytes an upstream sends after a complete
//! answer, once its connection is idle, never reach the next call.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BILLABLE: &str = r#"{"Response":{"Result":"0","RequestId":"wire-1"}}"#;

/// What the scripted upstream does with the n-th request (0-based, over all connections).
#[derive(Clone)]
enum Reply {
    /// These bytes, then keep the connection.
    Keep(Vec<u8>),
    /// These bytes, then close the connection.
    Close(Vec<u8>),
    /// No answer: the connection stays open until the gateway closes it.
    Silence,
    /// These bytes; then, once `go` is notified, `late` bytes on the same connection,
    /// and `written` is notified once they wait unread in the gateway's socket
    /// (`observed` counts those rounds) or after 10 s without seeing them there.
    ThenLate {
        answer: Vec<u8>,
        late: Vec<u8>,
        go: Arc<tokio::sync::Notify>,
        written: Arc<tokio::sync::Notify>,
        observed: Arc<AtomicUsize>,
    },
}

struct ScriptedUpstream {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// One message per connection the upstream closed.
    closed: mpsc::UnboundedReceiver<()>,
}

impl ScriptedUpstream {
    async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let script = Arc::new(script);
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (script, r, closed_tx) = (script.clone(), r.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    while read_request(&mut stream).await {
                        let n = r.fetch_add(1, Ordering::SeqCst);
                        match script(n) {
                            Reply::Keep(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    break;
                                }
                            }
                            Reply::Close(bytes) => {
                                let _ = stream.write_all(&bytes).await;
                                break;
                            }
                            Reply::Silence => {}
                            Reply::ThenLate {
                                answer,
                                late,
                                go,
                                written,
                                observed,
                            } => {
                                if stream.write_all(&answer).await.is_err() {
                                    break;
                                }
                                go.notified().await;
                                let gateway_end = stream.peer_addr().unwrap();
                                let upstream_end = stream.local_addr().unwrap();
                                let _ = stream.write_all(&late).await;
                                // Sent is not yet received: under load the kernel can
                                // deliver loopback bytes later, and bytes that arrive
                                // after the next call took the connection are its answer
                                // to any client. Waited for until they wait unread.
                                // A round whose bytes never show (the machine far too
                                // busy) is still checked, and counted as not exercised.
                                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                                loop {
                                    if unread_bytes(gateway_end, upstream_end).is_some_and(|n| n > 0) {
                                        observed.fetch_add(1, Ordering::SeqCst);
                                        break;
                                    }
                                    if tokio::time::Instant::now() >= deadline {
                                        eprintln!("late bytes not seen in the gateway's socket within 10 s");
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                written.notify_one();
                            }
                        }
                    }
                    drop(stream);
                    let _ = closed_tx.send(());
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Bytes received and not yet read on the IPv4 TCP socket from `local` to `remote`
/// (Linux's `/proc/net/tcp`).
fn unread_bytes(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<u64> {
    let hex = |address: std::net::SocketAddr| match address {
        std::net::SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        std::net::SocketAddr::V6(_) => None,
    };
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // Both ends: an ephemeral port is shared by connections to other destinations.
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (_, receive_queue) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(receive_queue, 16).ok()
    })
}

/// Reads one request (head and Content-Length body); false at end of stream.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

fn answer(extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes()
}

/// One keep-alive client connection to the gateway, so every call lands on the same
/// data-plane thread and so on the same idle list.
async fn client(gateway: &GatewayHandle) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(gateway.data).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn call_on(
    sender: &mut SendRequest<Full<Bytes>>,
    gateway: &GatewayHandle,
) -> (http::HeaderMap, serde_json::Value) {
    sender.ready().await.unwrap();
    let response = sender
        .send_request(call(gateway, "IdCardVerification", r#"{"IdCard":"1","Name":"A"}"#))
        .await
        .unwrap();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{body:?}"));
    (headers, json["Response"].clone())
}

async fn billed(gateway: &GatewayHandle) -> u64 {
    let metrics = gateway.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ekyc_gateway_billable_calls_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

async fn gateway_before(upstream: &ScriptedUpstream, extra_toml: &str) -> GatewayHandle {
    let config = gateway_config(&format!("http://{}", upstream.addr), extra_toml);
    GatewayHandle::start_with(config, Arc::new(ekyc_gateway::clock::SystemClock)).await
}

#[tokio::test]
async fn keep_alive_answers_reuse_one_upstream_connection() {
    let upstream = ScriptedUpstream::start(|_| Reply::Keep(answer("", BILLABLE))).await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for _ in 0..5 {
        let (headers, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(answer["RequestId"], "wire-1", "{answer}");
        assert_eq!(headers["content-length"], BILLABLE.len().to_string());
    }
    assert_eq!(upstream.requests(), 5);
    assert_eq!(upstream.connections(), 1, "one keep-alive connection for five calls");
    assert_eq!(billed(&gateway).await, 5);
}

#[tokio::test]
async fn chunked_answer_is_passed_on_whole_and_counted() {
    let upstream = ScriptedUpstream::start(|_| Reply::Keep(chunked(BILLABLE))).await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for _ in 0..2 {
        let (headers, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(answer["RequestId"], "wire-1", "{answer}");
        assert!(headers.get("transfer-encoding").is_none(), "{headers:?}");
        assert_eq!(headers["content-length"], BILLABLE.len().to_string());
        assert!(headers.get("x-trailer").is_none());
    }
    assert_eq!(
        upstream.connections(),
        1,
        "a chunked answer read to its end leaves the connection reusable"
    );
    assert_eq!(billed(&gateway).await, 2);
}

#[tokio::test]
async fn connection_close_and_unframed_answers_are_never_reused() {
    // Odd requests: `Connection: close`; even: no length, so the body ends with the
    // connection.
    let upstream = ScriptedUpstream::start(|n| {
        if n % 2 == 0 {
            Reply::Close(answer("Connection: close\r\n", BILLABLE))
        } else {
            Reply::Close(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{BILLABLE}").into_bytes())
        }
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for _ in 0..4 {
        let (_, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(answer["RequestId"], "wire-1", "{answer}");
    }
    assert_eq!(upstream.connections(), 4);
    assert_eq!(billed(&gateway).await, 4);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    // The upstream answers as keep-alive, then closes at once: the gateway must notice
    // before the next call rather than send it into a closed socket.
    let mut upstream = ScriptedUpstream::start(|_| Reply::Close(answer("", BILLABLE))).await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for round in 1..=3 {
        let (_, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(answer["RequestId"], "wire-1", "round {round}: {answer}");
        tokio::time::timeout(Duration::from_secs(10), upstream.closed.recv())
            .await
            .expect("the upstream closes its side")
            .unwrap();
    }
    assert_eq!(upstream.connections(), 3);
    assert_eq!(billed(&gateway).await, 3);
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    let upstream = ScriptedUpstream::start(|_| {
        let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        bytes.extend(answer("", BILLABLE));
        Reply::Keep(bytes)
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    let (_, answer) = call_on(&mut sender, &gateway).await;
    assert_eq!(answer["RequestId"], "wire-1", "{answer}");
    assert_eq!(billed(&gateway).await, 1);
}

#[tokio::test]
async fn an_answer_cut_short_is_an_error_and_not_counted() {
    let upstream = ScriptedUpstream::start(|n| {
        if n == 0 {
            let mut bytes = answer("", BILLABLE);
            bytes.truncate(bytes.len() - 10);
            Reply::Close(bytes)
        } else {
            Reply::Keep(answer("", BILLABLE))
        }
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    let (_, answer) = call_on(&mut sender, &gateway).await;
    assert_eq!(answer["Error"]["Code"], "InternalError", "{answer}");
    assert_eq!(billed(&gateway).await, 0);
    let (_, answer) = call_on(&mut sender, &gateway).await;
    assert_eq!(
        answer["RequestId"], "wire-1",
        "the next call gets a new connection: {answer}"
    );
    assert_eq!(billed(&gateway).await, 1);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_upstream_errors_total{kind="protocol"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn answers_over_the_cap_are_refused_and_not_counted_whatever_their_framing() {
    let big = format!(
        r#"{{"Response":{{"RequestId":"wire-1","Pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    let upstream = ScriptedUpstream::start(move |n| match n {
        0 => Reply::Keep(answer("", &big)),
        1 => Reply::Keep(chunked(&big)),
        _ => Reply::Close(format!("HTTP/1.1 200 OK\r\n\r\n{big}").into_bytes()),
    })
    .await;
    let gateway = gateway_before(&upstream, "[limits]\nmax_body_bytes = 2048\n").await;
    let mut sender = client(&gateway).await;
    for framing in ["length", "chunked", "until close"] {
        let (_, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(
            answer["Error"]["Code"], "ResponseSizeLimitExceeded",
            "{framing}: {answer}"
        );
    }
    assert_eq!(
        upstream.connections(),
        3,
        "a connection with an unread answer is closed"
    );
    assert_eq!(billed(&gateway).await, 0);
}

#[tokio::test]
async fn malformed_answers_are_errors_and_not_counted() {
    let upstream = ScriptedUpstream::start(|n| match n {
        0 => Reply::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec()),
        1 => Reply::Close(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        _ => Reply::Close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec()),
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for case in ["conflicting lengths", "not HTTP", "bad chunk size"] {
        let (_, answer) = call_on(&mut sender, &gateway).await;
        assert_eq!(answer["Error"]["Code"], "InternalError", "{case}: {answer}");
    }
    assert_eq!(billed(&gateway).await, 0);
}

#[tokio::test]
async fn platform_credentials_that_would_break_the_request_head_are_refused_at_start() {
    for secret_id in ["AKID with space", "AKID\r\nX-Injected: 1"] {
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
        let env = [
            ("EKYC_UPSTREAM_SECRET_ID", secret_id),
            ("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY),
            ("EKYC_MASTER_KEY", MASTER_KEY),
            ("EKYC_ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        let mut config = ekyc_gateway::config::Config::from_toml(text, &env).unwrap();
        let dir = tempfile::tempdir().unwrap();
        config.store_url = format!("sqlite://{}/billing.db", dir.path().display());
        config.meter.journal_path = dir.path().join("meter.journal");
        let started = ekyc_gateway::app::App::new(config, Arc::new(ekyc_gateway::clock::SystemClock)).await;
        let error = format!("{:#}", started.err().expect("must be refused"));
        assert!(
            error.contains("SecretId must be visible ASCII"),
            "{secret_id:?}: {error}"
        );
    }
}

#[tokio::test]
async fn a_repeated_action_header_is_refused_before_it_can_be_billed_as_another_action() {
    let upstream = ScriptedUpstream::start(|_| Reply::Keep(answer("", BILLABLE))).await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    let mut request = call(&gateway, "IdCardVerification", r#"{"IdCard":"1","Name":"A"}"#);
    request
        .headers_mut()
        .append("x-tc-action", http::HeaderValue::from_static("DetectAuth"));
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["Response"]["Error"]["Code"], "InvalidParameter", "{json}");
    assert_eq!(upstream.requests(), 0);
    assert_eq!(billed(&gateway).await, 0);
}

#[tokio::test]
async fn a_reused_connection_that_never_answers_times_out_on_the_calls_own_deadline() {
    let upstream = ScriptedUpstream::start(|n| match n {
        0 => Reply::Keep(answer("", BILLABLE)),
        _ => Reply::Silence,
    })
    .await;
    let gateway = gateway_before(&upstream, "timeout_ms = 400\n").await;
    let mut sender = client(&gateway).await;
    let (_, first) = call_on(&mut sender, &gateway).await;
    assert_eq!(first["RequestId"], "wire-1", "{first}");
    // The connection keeps the timer set for the first call (its deadline falls
    // during the second): it must not cut the second call short.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = std::time::Instant::now();
    let (_, second) = call_on(&mut sender, &gateway).await;
    let elapsed = started.elapsed();
    assert_eq!(second["Error"]["Code"], "InternalError", "{second}");
    assert!(elapsed >= Duration::from_millis(400), "cut short after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "answered after {elapsed:?}");
    assert_eq!(upstream.connections(), 1, "the second call went on the kept connection");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"ekyc_gateway_upstream_errors_total{kind="timeout"} 1"#),
        "{metrics}"
    );
    assert_eq!(billed(&gateway).await, 1);
}

#[tokio::test]
async fn answer_headers_pass_on_once_without_hop_by_hop_ones_and_bodiless_answers_stay_bodiless() {
    let upstream = ScriptedUpstream::start(|n| match n {
        0 => Reply::Keep(answer(
            "Date: Thu, 26 Nov 2026 16:00:00 GMT\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nX-TC-RequestId: up-1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
            BILLABLE,
        )),
        1 => Reply::Keep(b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n".to_vec()),
        _ => Reply::Keep(answer("", BILLABLE)),
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    let (headers, answer) = call_on(&mut sender, &gateway).await;
    assert_eq!(answer["RequestId"], "wire-1", "{answer}");
    let dates: Vec<_> = headers.get_all("date").iter().collect();
    assert_eq!(dates, ["Thu, 26 Nov 2026 16:00:00 GMT"], "the upstream's Date, once");
    for gone in ["x-secret-hop", "keep-alive", "connection"] {
        assert!(headers.get(gone).is_none(), "{gone} must not pass: {headers:?}");
    }
    assert_eq!(headers["x-tc-requestid"], "up-1");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(headers.get_all("content-length").iter().count(), 1);

    // A 204: no body and no length on the way out either; the connection stays usable.
    sender.ready().await.unwrap();
    let response = sender
        .send_request(call(&gateway, "IdCardVerification", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-empty"], "yes");
    assert!(
        response.headers().get("content-length").is_none(),
        "{:?}",
        response.headers()
    );
    assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
    let (_, again) = call_on(&mut sender, &gateway).await;
    assert_eq!(again["RequestId"], "wire-1", "the connection carries on: {again}");
    assert_eq!(upstream.connections(), 1);
    assert_eq!(billed(&gateway).await, 2, "the 204 is not billable");
}

#[tokio::test]
async fn bytes_after_a_complete_answer_never_reach_the_next_call() {
    // The upstream answers, and once the connection is idle in the pool sends more: a
    // whole second answer, or garbage. The next call must not read them as its answer:
    // `still_open` sees them at checkout and the connection is dropped.
    let (go, written) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let late_answer = r#"{"Response":{"Result":"0","RequestId":"late-1"}}"#;
    let lates = [answer("", late_answer), b"garbage\r\n".to_vec()];
    let script_lates = lates.clone();
    let observed = Arc::new(AtomicUsize::new(0));
    let (script_go, script_written, script_observed) = (go.clone(), written.clone(), observed.clone());
    // Even requests: answered, then followed by late bytes; odd ones (the next call,
    // on a fresh connection): answered.
    let upstream = ScriptedUpstream::start(move |n| {
        if n % 2 == 0 {
            Reply::ThenLate {
                answer: answer("", BILLABLE),
                late: script_lates[(n / 2) % 2].clone(),
                go: script_go.clone(),
                written: script_written.clone(),
                observed: script_observed.clone(),
            }
        } else {
            Reply::Keep(answer("", BILLABLE))
        }
    })
    .await;
    let gateway = gateway_before(&upstream, "").await;
    let mut sender = client(&gateway).await;
    for (round, late) in lates.iter().enumerate() {
        let (_, first) = call_on(&mut sender, &gateway).await;
        assert_eq!(first["RequestId"], "wire-1", "round {round}: {first}");
        // The answer has reached the client, so its connection is back in the pool.
        go.notify_one();
        tokio::time::timeout(Duration::from_secs(20), written.notified())
            .await
            .expect("the upstream sends its late bytes");
        let (_, next) = call_on(&mut sender, &gateway).await;
        assert_eq!(
            next["RequestId"],
            "wire-1",
            "round {round}: the next call got {next} after late bytes {:?}",
            String::from_utf8_lossy(late)
        );
    }
    assert_eq!(upstream.requests(), 4);
    assert_eq!(
        upstream.connections(),
        3,
        "each connection that sent late bytes is dropped, never reused"
    );
    assert_eq!(billed(&gateway).await, 4, "the late answer is not counted");
    assert!(
        observed.load(Ordering::SeqCst) >= 1,
        "no round had its late bytes waiting in the gateway's socket: the check was not exercised"
    );
}
