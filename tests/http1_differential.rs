//! Differential test of the hand-written HTTP/1.1 code against hyper's, on generated
//! byte streams (a fixed seed: every run sees the same streams).
//!
//! Requests: the same client bytes go through our server's request reading
//! (`server::http1::fuzzing`, the real `Connection` code over an in-memory stream) and
//! through hyper's HTTP/1 server; both must serve the same requests (method, target,
//! version, header fields, body) in the same order and stop at the same point. Answers:
//! the same upstream bytes come to our upstream client (`proxy::pool` over a real socket)
//! and to hyper's client; both must give the same status and body, and reuse the
//! connection for the next call alike. Where ours is stricter than hyper it must be
//! listed in `STRICTER_REQUESTS` or `STRICTER_ANSWERS`, with why; any other
//! disagreement fails the test (docs/RELIABILITY.md lists what was found). A third test
//! checks that the entry compared is the running server's request reading: the same
//! streams over TCP to a gateway get one answer per request the entry frames.
//! Must not sleep: everything that waits has a deadline and ends by itself.

mod common;

use bytes::Bytes;
use common::{GatewayHandle, SimHandle};
use ekyc_gateway::config::{Limits, Upstream, UpstreamCredentials};
use ekyc_gateway::proxy::h1;
use ekyc_gateway::proxy::pool::UpstreamPool;
use ekyc_gateway::server::http1::fuzzing::{self, Body, End};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request classes where ours refuses what hyper serves, and why that is wanted.
const STRICTER_REQUESTS: &[(&str, &str)] = &[
    (
        "transfer-encoding",
        "a request with Transfer-Encoding is refused (400) and its connection closed: the SDKs \
         always send Content-Length, and refusing closes every CL/TE smuggling vector",
    ),
    (
        "huge head",
        "a head over limits.max_header_bytes is refused (431); hyper's max_buf_size is checked \
         only between reads, so a head that arrives in large reads can pass it",
    ),
    (
        "huge content-length",
        "a declared body over limits.max_body_bytes is refused before it is read (413); hyper \
         waits for it",
    ),
];

/// Request classes where ours serves what hyper's server refuses, and why that is
/// wanted. Ours reads requests and answers with one rule (`proxy::h1::parse_content_length`),
/// and hyper's own client accepts the same lists in answers.
const LENIENT_REQUESTS: &[(&str, &str)] = &[(
    "content-length list",
    "`Content-Length: n, n` is the length n (RFC 9110 §8.6 lets a recipient take a list of \
     equal values as one); different values are refused, and the body goes upstream with the \
     gateway's own Content-Length, never the client's",
)];

/// Answer classes where ours fails a call or drops a connection hyper would not.
const STRICTER_ANSWERS: &[(&str, &str)] = &[
    (
        "101",
        "an upstream answering 101 Switching Protocols is an error: the gateway never asks to upgrade",
    ),
    (
        "huge head",
        "an answer head over 64 KiB is refused (hyper's client allows ~400 KiB)",
    ),
    (
        "length and chunked",
        "an answer with both Content-Length and Transfer-Encoding is read as chunked, then its \
         connection closed (RFC 9112 §6.3: a smuggling or splitting attempt); hyper reuses it",
    ),
    (
        "late bytes",
        "bytes after a complete answer end the connection instead of being read as the next \
         call's answer",
    ),
];

/// xorshift64*: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| {
                if self.chance(90) {
                    b' ' + self.below(95) as u8
                } else {
                    self.next() as u8
                }
            })
            .collect()
    }

    /// `name` in a random letter case.
    fn case(&mut self, name: &str) -> String {
        name.chars()
            .map(|c| if self.chance(30) { c.to_ascii_uppercase() } else { c })
            .collect()
    }
}

// ---------------------------------------------------------------- requests

const REQUEST_CLASSES: &[&str] = &[
    "plain",
    "plain",
    "plain",
    "no body",
    "http/1.0",
    "connection tokens",
    "equal content-lengths",
    "content-length list",
    "different content-lengths",
    "odd content-length",
    "huge content-length",
    "transfer-encoding",
    "obs-fold",
    "bare lf",
    "bare cr",
    "space before colon",
    "no colon",
    "control byte in value",
    "obs-text in value",
    "odd request line",
    "odd version",
    "leading empty line",
    "many headers",
    "huge head",
    "expect 100-continue",
    "absolute target",
];

/// One generated request of `class`, as bytes.
fn request(rng: &mut Rng, class: &str) -> Vec<u8> {
    let method = rng.pick(&["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]);
    let target = rng.pick(&["/", "/a?b=c", "/%20x", "/p/q?x=1&y=%ff"]);
    let mut body = rng.bytes(40);
    let mut version = "HTTP/1.1";
    let mut headers: Vec<String> = vec![format!("{}: x.example", rng.case("host"))];
    for i in 0..rng.below(3) {
        headers.push(format!("{}: v{i}", rng.case(&format!("x-pad-{i}"))));
    }
    let length = |rng: &mut Rng, n: usize| format!("{}: {n}", rng.case("content-length"));
    let mut line = format!("{method} {target} {version}");
    let mut eol = "\r\n";
    let mut chunked = None;
    match class {
        "plain" => headers.push(length(rng, body.len())),
        "no body" => body.clear(),
        "http/1.0" => {
            version = "HTTP/1.0";
            line = format!("{method} {target} {version}");
            headers.push(length(rng, body.len()));
            if rng.chance(50) {
                headers.push(format!(
                    "Connection: {}",
                    rng.pick(&["keep-alive", "Keep-Alive", "close"])
                ));
            }
        }
        "connection tokens" => {
            headers.push(length(rng, body.len()));
            let tokens = rng.pick(&[
                "close",
                "Close",
                "keep-alive",
                "keep-alive, close",
                "foo, CLOSE",
                "upgrade",
                "te",
                "closed",
                " close ",
            ]);
            headers.push(format!("{}: {tokens}", rng.case("connection")));
        }
        "equal content-lengths" => {
            headers.push(length(rng, body.len()));
            headers.push(length(rng, body.len()));
        }
        "content-length list" => {
            let n = body.len();
            headers.push(rng.pick(&[format!("Content-Length: {n}, {n}"), format!("Content-Length: {n},{n}")]));
        }
        "different content-lengths" => {
            headers.push(length(rng, body.len()));
            headers.push(length(rng, body.len() + 1));
        }
        "odd content-length" => {
            let n = body.len();
            let value = rng.pick(&[
                format!("+{n}"),
                format!("-{n}"),
                format!("{n} {n}"),
                format!("0x{n:x}"),
                format!("00{n}"),
                format!("{n} "),
                format!("{n}\t"),
                format!("{n}, "),
                String::new(),
                format!("{n}.0"),
                format!("{n},{}", n + 1),
            ]);
            headers.push(format!("Content-Length: {value}"));
        }
        "huge content-length" => {
            headers.push(format!(
                "Content-Length: {}",
                rng.pick(&[
                    "99999999999",
                    "18446744073709551615",
                    "18446744073709551616",
                    "99999999999999999999"
                ])
            ));
        }
        "transfer-encoding" => {
            let coding = rng.pick(&[
                "chunked",
                "Chunked",
                "gzip, chunked",
                "chunked, gzip",
                "identity",
                "chunked ",
            ]);
            headers.push(format!("{}: {coding}", rng.case("transfer-encoding")));
            if rng.chance(40) {
                headers.push(length(rng, body.len()));
            }
            if rng.chance(20) {
                headers.rotate_right(1);
            }
            let size = rng.pick(&[
                "{:x}",
                "{:X}",
                "+{:x}",
                " {:x}",
                "{:x} ",
                "{:x};ext=1",
                "fffffffffffffffff",
            ]);
            let size = size
                .replace("{:x}", &format!("{:x}", body.len()))
                .replace("{:X}", &format!("{:X}", body.len()));
            let mut wire = format!("{size}\r\n").into_bytes();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(b"\r\n0\r\n\r\n");
            chunked = Some(wire);
        }
        "obs-fold" => {
            headers.push("X-Folded: a".into());
            headers.push(format!("{} b", rng.pick(&[" ", "\t"])));
            headers.push(length(rng, body.len()));
        }
        "bare lf" => {
            eol = "\n";
            headers.push(length(rng, body.len()));
        }
        "bare cr" => {
            headers.push(format!("X-A: a{}b", rng.pick(&["\r", "\r "])));
            headers.push(length(rng, body.len()));
        }
        "space before colon" => {
            headers.push(format!(
                "{} : {}",
                rng.pick(&["Content-Length", "X-A", "Transfer-Encoding"]),
                body.len()
            ));
            headers.push(length(rng, body.len()));
        }
        "no colon" => {
            headers.push("X-No-Colon".into());
            headers.push(length(rng, body.len()));
        }
        "control byte in value" => {
            headers.push(format!("X-A: a{}b", rng.pick(&["\0", "\u{1}", "\u{7f}", "\u{b}"])));
            headers.push(length(rng, body.len()));
        }
        "obs-text in value" => {
            headers.push("X-A: caf\u{e9}".into());
            headers.push(length(rng, body.len()));
        }
        "odd request line" => {
            line = rng.pick(&[
                format!("{method}  {target} {version}"),
                format!("{method} {target}  {version}"),
                format!("{method}\t{target} {version}"),
                format!("G(T {target} {version}"),
                format!("get {target} {version}"),
                format!("{method} {version}"),
                format!("{method} {target}"),
                format!("{method} {target} {version} "),
                format!("{method} /a b {version}"),
                format!("OPTIONS * {version}"),
                format!("{method} a/b {version}"),
            ]);
            headers.push(length(rng, body.len()));
        }
        "odd version" => {
            let odd = rng.pick(&[
                "HTTP/1.2",
                "HTTP/2.0",
                "http/1.1",
                "HTTP/1",
                "HTTP/1.10",
                "HTTP/0.9",
                "HTTP/11",
            ]);
            line = format!("{method} {target} {odd}");
            headers.push(length(rng, body.len()));
        }
        "leading empty line" => {
            line = format!("{}{line}", rng.pick(&["\r\n", "\n", "\r\n\r\n"]));
            headers.push(length(rng, body.len()));
        }
        "many headers" => {
            for i in 0..rng.pick(&[90usize, 120, 300]) {
                headers.push(format!("X-M-{i}: v"));
            }
            headers.push(length(rng, body.len()));
        }
        "huge head" => {
            headers.push(format!("X-Big: {}", "b".repeat(rng.pick(&[30_000usize, 70_000]))));
            headers.push(length(rng, body.len()));
        }
        "expect 100-continue" => {
            headers.push(format!(
                "Expect: {}",
                rng.pick(&["100-continue", "100-Continue", "nothing"])
            ));
            headers.push(length(rng, body.len()));
        }
        "absolute target" => {
            line = format!(
                "{method} {} {version}",
                rng.pick(&["http://other.example/p", "https://x.example:8443/?q"])
            );
            headers.push(length(rng, body.len()));
        }
        other => unreachable!("{other}"),
    }
    let mut wire = line.into_bytes();
    wire.extend_from_slice(eol.as_bytes());
    for header in headers {
        wire.extend_from_slice(header.as_bytes());
        wire.extend_from_slice(eol.as_bytes());
    }
    wire.extend_from_slice(eol.as_bytes());
    wire.extend_from_slice(chunked.as_deref().unwrap_or(&body));
    wire
}

/// What a server did with one request of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Served(Seen),
    /// Refused (ours says why; hyper's reason is not compared).
    Refused(&'static str),
    /// The stream ended inside a request.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    version: Version,
    /// Lowercase names, in a fixed order: hyper's map groups fields by name.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The fields in a fixed order, without Content-Length: hyper keeps one of several
/// equal ones, and the length is compared as the body's.
fn sorted(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers.retain(|(name, _)| name != "content-length");
    headers.sort();
    headers
}

const LIMITS: Limits = Limits {
    max_connections: 1,
    max_body_bytes: 1 << 20,
    max_header_bytes: 64 * 1024,
    max_headers: 100,
    header_read_timeout: Duration::from_secs(5),
    body_read_timeout: Duration::from_secs(5),
};

async fn ours(stream: &[u8], read_size: usize) -> Vec<Step> {
    let outcome = fuzzing::read_requests(stream, read_size, &LIMITS).await;
    let mut steps = Vec::new();
    let mut kept = true;
    for request in outcome.requests {
        kept = request.keep_alive;
        let step = match request.body {
            Body::Read(body) => Step::Served(Seen {
                method: request.method.to_string(),
                target: request.target,
                version: request.version,
                headers: sorted(
                    request
                        .headers
                        .into_iter()
                        .map(|(name, value)| (String::from_utf8(name).unwrap().to_ascii_lowercase(), value))
                        .collect(),
                ),
                body,
            }),
            Body::NotRead => Step::Refused("transfer-encoding"),
            Body::TooLarge => Step::Refused("huge content-length"),
            Body::Cut => Step::Incomplete,
        };
        let stop = !matches!(step, Step::Served(_));
        steps.push(step);
        if stop {
            return steps;
        }
    }
    match outcome.end {
        End::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) => steps.push(Step::Refused("head 431")),
        End::Refused(_) | End::Http2 => steps.push(Step::Refused("head")),
        End::Closed { unread } if kept && unread > 0 => steps.push(Step::Incomplete),
        End::Closed { .. } => {}
    }
    steps
}

async fn hyper_server(stream: &[u8]) -> Vec<Step> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen: Arc<Mutex<Vec<Step>>> = Arc::default();
    let record = seen.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            let step = match body.collect().await {
                Ok(body) => Step::Served(Seen {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    version: parts.version,
                    headers: sorted(
                        parts
                            .headers
                            .iter()
                            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                            .collect(),
                    ),
                    body: body.to_bytes().to_vec(),
                }),
                Err(_) => Step::Incomplete,
            };
            // As our pipeline answers CONNECT: not a tunnel.
            let status = if parts.method == Method::CONNECT {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::OK
            };
            record.lock().unwrap().push(step);
            Ok::<_, Infallible>(Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap())
        }
    });
    client.write_all(stream).await.unwrap();
    client.shutdown().await.unwrap();
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .max_buf_size(LIMITS.max_header_bytes)
        .max_headers(LIMITS.max_headers)
        .serve_connection(TokioIo::new(server), service);
    let result = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("hyper's server never finished");
    let mut steps = seen.lock().unwrap().clone();
    if let Some(at) = steps.iter().position(|s| !matches!(s, Step::Served(_))) {
        steps.truncate(at + 1);
    } else if let Err(e) = result {
        steps.push(if e.is_incomplete_message() {
            Step::Incomplete
        } else {
            Step::Refused("hyper")
        });
    }
    drop(client);
    steps
}

/// Same step, whatever the reasons given for refusing.
fn same(a: &Step, b: &Step) -> bool {
    match (a, b) {
        (Step::Refused(_), Step::Refused(_)) => true,
        _ => a == b,
    }
}

#[tokio::test]
async fn requests_are_framed_as_hyper_frames_them_or_refused_where_listed() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut disagreements = Vec::new();
    let mut stricter = std::collections::BTreeMap::<&str, usize>::new();
    let mut lenient = std::collections::BTreeMap::<&str, usize>::new();
    let mut served_alike = 0;
    for case in 0..600 {
        let mut stream = Vec::new();
        let mut classes = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let class = rng.pick(REQUEST_CLASSES);
            classes.push(class);
            stream.extend_from_slice(&request(&mut rng, class));
        }
        // A last plain request shows whether the connection was kept after the others.
        classes.push("probe");
        stream.extend_from_slice(b"GET /probe HTTP/1.1\r\nHost: p\r\n\r\n");
        if rng.chance(10) {
            // The stream ends inside a request.
            let cut = rng.below(stream.len());
            stream.truncate(cut);
        }
        // Small reads only for small streams: each read parses the head again from its
        // start, which for a 70 KiB head byte by byte is minutes in a debug build.
        let read_size = if stream.len() < 4096 {
            rng.pick(&[1, 7, 64, 1 << 20])
        } else {
            rng.pick(&[4096, 1 << 20])
        };
        let ours = ours(&stream, read_size).await;
        let hyper = hyper_server(&stream).await;
        let at = ours.iter().zip(&hyper).position(|(a, b)| !same(a, b));
        let at = match at {
            Some(at) => at,
            None if ours.len() == hyper.len() => {
                served_alike += usize::from(ours.iter().any(|step| matches!(step, Step::Served(_))));
                continue;
            }
            None => ours.len().min(hyper.len()),
        };
        // Ours stricter: it refused where hyper served (or waited for a body).
        let class = classes[at.min(classes.len() - 1)];
        if let Some(Step::Refused(_)) = ours.get(at)
            && STRICTER_REQUESTS.iter().any(|(listed, _)| *listed == class)
        {
            *stricter.entry(class).or_default() += 1;
            continue;
        }
        if let (Some(Step::Served(_)), Some(Step::Refused(_))) = (ours.get(at), hyper.get(at))
            && LENIENT_REQUESTS.iter().any(|(listed, _)| *listed == class)
        {
            *lenient.entry(class).or_default() += 1;
            continue;
        }
        disagreements.push(format!(
            "case {case} ({classes:?}), request {at}:\n  stream ({} bytes): {:?}\n  ours:  {:?}\n  hyper: {:?}",
            stream.len(),
            String::from_utf8_lossy(&stream[..stream.len().min(600)]),
            ours.get(at),
            hyper.get(at)
        ));
    }
    eprintln!("ours stricter than hyper, as listed: {stricter:?}; more lenient, as listed: {lenient:?}");
    assert!(
        served_alike > 200,
        "too few streams served alike ({served_alike}): the generator drifted"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// The answers in `bytes` (final ones: 1xx are skipped), read by their Content-Length
/// as the server writes them.
fn count_answers(mut bytes: &[u8]) -> usize {
    let mut answers = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(head)) = answer.parse(bytes) else {
            return answers;
        };
        let length: usize = answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
        answers += usize::from(answer.code.is_some_and(|code| code >= 200));
        bytes = &bytes[(head + length).min(bytes.len())..];
    }
}

/// Writes `stream` to the running gateway, ends it, and reads what comes back until
/// the gateway closes.
async fn exchange(gateway: std::net::SocketAddr, stream: &[u8]) -> Vec<u8> {
    let connection = TcpStream::connect(gateway).await.unwrap();
    let (mut reader, mut writer) = connection.into_split();
    let stream = stream.to_vec();
    // A refused stream is not read to its end: the write may fail, the answers stand.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&stream).await;
        let _ = writer.shutdown().await;
        writer
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let read = async {
        while let Ok(n) = reader.read(&mut buffer).await
            && n > 0
        {
            received.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the gateway ends the connection");
    drop(write.await);
    received
}

/// The entry the two tests above compare with hyper is the running server's request
/// reading: the same streams, over TCP to a gateway (whose pipeline refuses them all,
/// unsigned), get one answer per request the entry frames, plus one for a refused head.
#[tokio::test]
async fn the_request_reading_compared_is_the_running_servers() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let limits = gateway.app.config.limits.clone();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut mismatches = Vec::new();
    let mut total = 0;
    for case in 0..150 {
        let mut stream = Vec::new();
        let mut classes = Vec::new();
        for _ in 0..1 + rng.below(3) {
            // The pipeline refuses before reading a body; one held back for a
            // `100 Continue` then ends the connection, unlike a body it reads.
            let class = rng.pick(REQUEST_CLASSES);
            if class == "expect 100-continue" {
                continue;
            }
            classes.push(class);
            stream.extend_from_slice(&request(&mut rng, class));
        }
        stream.extend_from_slice(b"GET /probe HTTP/1.1\r\nHost: p\r\n\r\n");
        let outcome = fuzzing::read_requests(&stream, stream.len(), &limits).await;
        let framed = outcome.requests.len() + usize::from(matches!(outcome.end, End::Refused(_)));
        let received = exchange(gateway.data, &stream).await;
        let answered = count_answers(&received);
        total += answered;
        if answered != framed {
            mismatches.push(format!(
                "case {case} ({classes:?}): entry framed {framed}, server answered {answered}\n  stream: {:?}\n  answers: {:?}",
                String::from_utf8_lossy(&stream[..stream.len().min(600)]),
                String::from_utf8_lossy(&received[..received.len().min(600)]),
            ));
        }
    }
    eprintln!("{total} answers");
    assert!(total > 150, "only {total} answers: the streams went unanswered");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

// ---------------------------------------------------------------- answers

const ANSWER_CLASSES: &[&str] = &[
    "length",
    "length",
    "chunked",
    "chunked",
    "connection tokens",
    "http/1.0",
    "until close",
    "length and chunked",
    "other codings",
    "equal content-lengths",
    "different content-lengths",
    "odd content-length",
    "bodiless status",
    "head request",
    "interim",
    "101",
    "odd chunk size",
    "chunk without crlf",
    "late bytes",
    "obs-fold",
    "bare lf",
    "odd status line",
    "many headers",
    "huge head",
    "cut short",
];

struct Answer {
    class: &'static str,
    method: Method,
    wire: Vec<u8>,
    /// The upstream closes the connection after writing `wire` (to end an answer that
    /// runs until close, or one cut short).
    close: bool,
}

fn chunk_body(rng: &mut Rng, body: &[u8], size_format: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = (1 + rng.below(16)).min(rest.len());
        let size = size_format.replace("{}", &format!("{n:x}"));
        wire.extend_from_slice(size.as_bytes());
        if rng.chance(20) {
            wire.extend_from_slice(b";name=\"v\"");
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&rest[..n]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    wire.extend_from_slice(b"0\r\n");
    if rng.chance(30) {
        wire.extend_from_slice(b"X-Trailer: t\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire
}

fn answer(rng: &mut Rng, class: &'static str) -> Answer {
    let body: Vec<u8> = (0..rng.below(60)).map(|i| b'a' + (i % 26) as u8).collect();
    let mut status = "HTTP/1.1 200 OK".to_string();
    let mut headers = vec!["Content-Type: application/json".to_string()];
    let mut payload = body.clone();
    let mut method = Method::POST;
    let mut close = false;
    let mut eol = "\r\n";
    let mut before = Vec::new();
    let mut after = Vec::new();
    let length = |n: usize| format!("Content-Length: {n}");
    match class {
        "length" => headers.push(length(body.len())),
        "chunked" => {
            headers.push("Transfer-Encoding: chunked".into());
            payload = chunk_body(rng, &body, "{}");
        }
        "connection tokens" => {
            headers.push(length(body.len()));
            headers.push(format!(
                "Connection: {}",
                rng.pick(&["close", "keep-alive", "foo, Close", "closed", "keep-alive, close"])
            ));
        }
        "http/1.0" => {
            status = "HTTP/1.0 200 OK".into();
            match rng.below(3) {
                0 => headers.push(length(body.len())),
                1 => {
                    headers.push(length(body.len()));
                    headers.push("Connection: keep-alive".into());
                }
                _ => {
                    headers.push("Transfer-Encoding: chunked".into());
                    payload = chunk_body(rng, &body, "{}");
                    close = true;
                }
            }
        }
        "until close" => close = true,
        "length and chunked" => {
            headers.push(length(body.len() + 3));
            headers.push("Transfer-Encoding: chunked".into());
            if rng.chance(50) {
                headers.rotate_right(1);
            }
            payload = chunk_body(rng, &body, "{}");
        }
        "other codings" => {
            let coding = rng.pick(&["gzip, chunked", "chunked, gzip", "identity", "gzip"]);
            headers.push(format!("Transfer-Encoding: {coding}"));
            if coding.ends_with("chunked") {
                payload = chunk_body(rng, &body, "{}");
            } else {
                close = true;
            }
        }
        "equal content-lengths" => {
            let n = body.len();
            if rng.chance(50) {
                headers.push(length(n));
                headers.push(length(n));
            } else {
                headers.push(format!("Content-Length: {n}, {n}"));
            }
        }
        "different content-lengths" => {
            headers.push(length(body.len()));
            headers.push(length(body.len() + 1));
            close = true;
        }
        "odd content-length" => {
            let n = body.len();
            headers.push(format!(
                "Content-Length: {}",
                rng.pick(&[
                    format!("+{n}"),
                    format!("-{n}"),
                    format!("{n} {n}"),
                    format!("00{n}"),
                    format!("{n} ")
                ])
            ));
            close = true;
        }
        "bodiless status" => {
            status = rng
                .pick(&["HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified"])
                .into();
            if rng.chance(50) {
                headers.push(length(body.len()));
            }
            payload.clear();
        }
        "head request" => {
            method = Method::HEAD;
            headers.push(length(body.len()));
            payload.clear();
        }
        "interim" => {
            before = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if rng.chance(50) {
                before.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
            }
            headers.push(length(body.len()));
        }
        "101" => {
            status = "HTTP/1.1 101 Switching Protocols".into();
            headers.push("Upgrade: websocket".into());
            headers.push("Connection: upgrade".into());
            payload.clear();
            close = true;
        }
        "odd chunk size" => {
            headers.push("Transfer-Encoding: chunked".into());
            let format = rng.pick(&["+{}", " {}", "{} ", "0x{}", "-{}", "{}\t"]);
            payload = chunk_body(rng, &body, format);
            if body.is_empty() {
                payload = format!("{}\r\nab\r\n0\r\n\r\n", format.replace("{}", "2")).into_bytes();
            }
            close = true;
        }
        "chunk without crlf" => {
            headers.push("Transfer-Encoding: chunked".into());
            payload = b"3\r\nabcX0\r\n\r\n".to_vec();
            close = true;
        }
        "late bytes" => {
            headers.push(length(body.len()));
            after = rng
                .pick(&[
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"[..],
                    b"\r\n",
                    b"garbage",
                ])
                .to_vec();
        }
        "obs-fold" => {
            headers.push("X-Folded: a".into());
            headers.push(" b".into());
            headers.push(length(body.len()));
            close = true;
        }
        "bare lf" => {
            eol = "\n";
            headers.push(length(body.len()));
        }
        "odd status line" => {
            status = rng
                .pick(&[
                    "HTTP/1.1 200",
                    "HTTP/1.1 200 ",
                    "HTTP/1.1 299 Whatever",
                    "HTTP/1.1 99 Low",
                    "HTTP/1.1 1000 High",
                    "HTTP/1.1 600 Odd",
                    "HTTP/1.1  200 OK",
                    "HTTP/2 200 OK",
                    "http/1.1 200 OK",
                    "HTTP/1.1 2OO OK",
                ])
                .into();
            headers.push(length(body.len()));
            close = true;
        }
        "many headers" => {
            for i in 0..rng.pick(&[80usize, 101, 200]) {
                headers.push(format!("X-M-{i}: v"));
            }
            headers.push(length(body.len()));
        }
        "huge head" => {
            headers.push(format!("X-Big: {}", "b".repeat(rng.pick(&[30_000usize, 70_000]))));
            headers.push(length(body.len()));
        }
        "cut short" => {
            headers.push(length(body.len() + 5));
            close = true;
        }
        other => unreachable!("{other}"),
    }
    let mut wire = before;
    wire.extend_from_slice(status.as_bytes());
    wire.extend_from_slice(eol.as_bytes());
    for header in headers {
        wire.extend_from_slice(header.as_bytes());
        wire.extend_from_slice(eol.as_bytes());
    }
    wire.extend_from_slice(eol.as_bytes());
    wire.extend_from_slice(&payload);
    wire.extend_from_slice(&after);
    Answer {
        class,
        method,
        wire,
        close,
    }
}

const PROBE_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nprobe";

/// An upstream whose first connection's first request gets `answer` (then the
/// connection closes if `close`); every other request, on any connection, gets
/// `PROBE_ANSWER`.
async fn scripted_upstream(answer: Vec<u8>, close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut scripted = first;
                while read_request(&mut stream).await {
                    if std::mem::take(&mut scripted) {
                        let _ = stream.write_all(&answer).await;
                        if close {
                            return;
                        }
                    } else if stream.write_all(PROBE_ANSWER).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// Reads one request (head, and the Content-Length body both clients send); false at
/// end of stream.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buffer.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What a client made of the scripted answer, and of the call after it.
#[derive(Debug, PartialEq, Eq)]
struct Exchange {
    /// Status and body, or `None` for an error.
    first: Option<(u16, Vec<u8>)>,
    /// The second call went over the first call's connection.
    reused: bool,
    /// The second call got the upstream's answer to it.
    second_ok: bool,
}

/// Long enough never to end a call that can finish; the calls that cannot (none
/// expected) end here on both sides alike.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

async fn ours_upstream(answer: &Answer) -> Exchange {
    let (addr, connections) = scripted_upstream(answer.wire.clone(), answer.close).await;
    let upstream = Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
        service: "faceid".into(),
        timeout: CALL_DEADLINE,
        connect_timeout: CALL_DEADLINE,
        extra_ca_file: None,
        pool_idle_timeout: Duration::from_secs(60),
        pool_max_idle_per_host: 4,
        credentials: UpstreamCredentials {
            secret_id: "id".into(),
            secret_key: "key".into(),
        },
    };
    let pool = UpstreamPool::new(&upstream).unwrap();
    let call = |method: Method| {
        let pool = &pool;
        async move {
            let head = |out: &mut Vec<u8>| {
                h1::write_request_line(out, &method, "/");
                h1::write_header(out, b"host", b"x");
            };
            pool.exchange(&method, head, b"{}", 1 << 20, std::time::Instant::now(), CALL_DEADLINE)
                .await
                .ok()
                .map(|a| (a.status.as_u16(), a.body.to_vec()))
        }
    };
    let first = call(answer.method.clone()).await;
    let second = call(Method::POST).await;
    Exchange {
        first,
        reused: connections.load(Ordering::SeqCst) == 1,
        second_ok: second == Some((200, b"probe".to_vec())),
    }
}

async fn hyper_upstream(answer: &Answer) -> Exchange {
    let (addr, connections) = scripted_upstream(answer.wire.clone(), answer.close).await;
    let connect = || async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    };
    let request = |method: Method| {
        Request::builder()
            .method(method)
            .uri("/")
            .header("host", "x")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let call = |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, method: Method| {
        let sent = sender.send_request(request(method));
        async move {
            let response = sent.await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes().to_vec();
            Some((status, body))
        }
    };
    let mut sender = connect().await;
    let first = tokio::time::timeout(CALL_DEADLINE, call(&mut sender, answer.method.clone()))
        .await
        .ok()
        .flatten();
    let ready = first.is_some()
        && tokio::time::timeout(CALL_DEADLINE, sender.ready())
            .await
            .is_ok_and(|ready| ready.is_ok());
    if !ready {
        sender = connect().await;
    }
    let second = tokio::time::timeout(CALL_DEADLINE, call(&mut sender, Method::POST))
        .await
        .ok()
        .flatten();
    Exchange {
        first,
        reused: connections.load(Ordering::SeqCst) == 1,
        second_ok: second == Some((200, b"probe".to_vec())),
    }
}

#[tokio::test]
async fn answers_are_read_as_hyper_reads_them_or_refused_where_listed() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let answers: Vec<Answer> = (0..250)
        .map(|_| {
            let class = rng.pick(ANSWER_CLASSES);
            answer(&mut rng, class)
        })
        .collect();
    // All at once: each has its own upstream and pool, and none waits on another.
    let results = futures_util::future::join_all(
        answers
            .iter()
            .map(|answer| async move { (ours_upstream(answer).await, hyper_upstream(answer).await) }),
    )
    .await;
    let mut disagreements = Vec::new();
    let mut stricter = std::collections::BTreeMap::<&str, usize>::new();
    for (case, (answer, (ours, hyper))) in answers.iter().zip(results).enumerate() {
        let described = || {
            format!(
                "case {case} ({}, {}):\n  wire:  {:?}\n  ours:  {ours:?}\n  hyper: {hyper:?}",
                answer.class,
                answer.method,
                String::from_utf8_lossy(&answer.wire[..answer.wire.len().min(300)])
            )
        };
        // Whatever the answer, the call after it never reads its bytes.
        if !ours.second_ok {
            disagreements.push(format!("the next call did not get its own answer: {}", described()));
            continue;
        }
        if ours == hyper {
            continue;
        }
        let ours_stricter = (ours.first.is_none() || ours.first == hyper.first) && !ours.reused;
        if ours_stricter && STRICTER_ANSWERS.iter().any(|(class, _)| *class == answer.class) {
            *stricter.entry(answer.class).or_default() += 1;
            continue;
        }
        disagreements.push(described());
    }
    eprintln!("ours stricter than hyper, as listed: {stricter:?}");
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
