//! The server's request reading (`server::http1`, through its `fuzzing` entry) on
//! arbitrary client byte streams: head limits, Content-Length framing, the
//! Transfer-Encoding refusal, pipelined requests. The first byte picks the read size.
//! Must never panic, and must hold: the outcome does not depend on how the stream is cut
//! into reads; each body is the bytes right after its head, exactly its Content-Length
//! long; nothing after a request with Transfer-Encoding, a refused head or a request
//! that closes the connection is read as a request. Must not frame requests itself.
#![no_main]

use ekyc_gateway::config::Limits;
use ekyc_gateway::server::http1::fuzzing::{Body, End, Outcome, SMALLEST_LIMITS, read_requests};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const LIMITS: Limits = SMALLEST_LIMITS;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
});

fn field<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

fn check(stream: &[u8], outcome: &Outcome) {
    let mut offset = 0;
    for (i, request) in outcome.requests.iter().enumerate() {
        let last = i + 1 == outcome.requests.len();
        let head = &stream[offset..offset + request.head_length];
        assert!(request.head_length <= LIMITS.max_header_bytes, "head over the limit");
        assert!(
            head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n"),
            "head not ended by an empty line"
        );
        assert!(
            request.headers.len() <= LIMITS.max_headers,
            "more headers than the limit"
        );
        // Every Content-Length the server let through names one length.
        let mut declared: Option<u64> = None;
        for value in field(&request.headers, "content-length") {
            for item in items(value) {
                let length: u64 = std::str::from_utf8(item).unwrap().parse().unwrap();
                assert!(declared.is_none_or(|d| d == length), "conflicting lengths let through");
                declared = Some(length);
            }
        }
        let declared = declared.unwrap_or(0);
        let chunked = field(&request.headers, "transfer-encoding").next().is_some();
        let closes = field(&request.headers, "connection")
            .flat_map(items)
            .any(|t| t.eq_ignore_ascii_case(b"close"));
        let body_start = offset + request.head_length;
        match &request.body {
            Body::NotRead => {
                assert!(chunked);
                assert!(
                    !request.keep_alive,
                    "a request with Transfer-Encoding kept its connection"
                );
                assert_eq!(request.consumed, request.head_length, "a chunked body was read");
            }
            Body::Read(body) => {
                assert!(!chunked);
                assert_eq!(body.len() as u64, declared, "the body is not its Content-Length long");
                assert_eq!(body[..], stream[body_start..body_start + body.len()]);
                assert_eq!(request.consumed, request.head_length + body.len());
            }
            Body::TooLarge => {
                assert!(declared > LIMITS.max_body_bytes as u64);
                assert!(request.consumed as u64 <= request.head_length as u64 + declared);
                if request.keep_alive {
                    assert_eq!(request.consumed as u64, request.head_length as u64 + declared);
                }
            }
            Body::Cut => {
                assert!(
                    body_start as u64 + declared > stream.len() as u64,
                    "a whole body read as cut"
                );
                assert!(!request.keep_alive);
            }
        }
        assert!(!closes || !request.keep_alive, "`Connection: close` did not close");
        assert!(
            request.keep_alive || last,
            "a request read after the connection was done"
        );
        offset += request.consumed;
    }
    assert!(offset <= stream.len());
    if let End::Closed { unread } = outcome.end {
        assert_eq!(unread, stream.len() - offset);
    }
    if !matches!(outcome.end, End::Closed { .. }) {
        assert!(outcome.requests.last().is_none_or(|r| r.keep_alive));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, stream)) = data.split_first() else {
        return;
    };
    let whole = RUNTIME.block_on(read_requests(stream, stream.len(), &LIMITS));
    check(stream, &whole);
    let cut = RUNTIME.block_on(read_requests(stream, usize::from(read_size), &LIMITS));
    assert_eq!(
        whole.requests, cut.requests,
        "the requests depend on how the stream is cut into reads"
    );
    match (whole.end, cut.end) {
        // A head still incomplete at the byte limit is refused there (431) when it
        // comes in small reads, and may be found malformed further on (400) when it
        // comes whole: refused either way.
        (End::Refused(_), End::Refused(_)) => {}
        (whole, cut) => assert_eq!(whole, cut, "the end depends on how the stream is cut into reads"),
    }
});
