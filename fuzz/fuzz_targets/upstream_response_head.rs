//! The upstream answer-head parser (`proxy::h1::parse_response_head`) on arbitrary
//! bytes; the first byte's low bit makes the request a HEAD. Must never panic, and must
//! hold: an incomplete head consumes nothing; a complete one consumes exactly its head,
//! whatever follows it; the framing and the reuse decision follow RFC 9112 §6.3 as read
//! from the head's fields (by `httparse` here, the parser `h1` also uses, so only the
//! decisions are checked, not the tokenizing). Must not reimplement the decisions' code.
#![no_main]

use bytes::BytesMut;
use ekyc_gateway::proxy::h1::{Framing, MAX_RESPONSE_HEAD_BYTES, parse_response_head};
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;

fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let method = if flags & 1 == 1 { Method::HEAD } else { Method::POST };
    let mut buffer = BytesMut::from(wire);
    let Ok(parsed) = parse_response_head(&mut buffer, &method) else {
        return;
    };
    let Some(head) = parsed else {
        assert_eq!(buffer.len(), wire.len(), "an incomplete head consumed bytes");
        assert!(wire.len() < MAX_RESPONSE_HEAD_BYTES);
        return;
    };
    let head_length = wire.len() - buffer.len();
    let head_bytes = &wire[..head_length];
    assert!(head_bytes.ends_with(b"\n\r\n") || head_bytes.ends_with(b"\n\n"));
    // One byte short of its end: incomplete, not another answer.
    if head_length <= MAX_RESPONSE_HEAD_BYTES {
        let mut short = BytesMut::from(&head_bytes[..head_length - 1]);
        assert!(matches!(parse_response_head(&mut short, &method), Ok(None)));
    }
    // What follows the head changes nothing.
    let mut followed = BytesMut::from(head_bytes);
    followed.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let again = parse_response_head(&mut followed, &method).unwrap().unwrap();
    assert_eq!(
        (again.status, again.framing, again.reusable),
        (head.status, head.framing, head.reusable)
    );
    assert_eq!(&followed[..], b"HTTP/1.1 200 OK\r\n");

    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut slots);
    assert!(matches!(response.parse(head_bytes), Ok(httparse::Status::Complete(n)) if n == head_length));
    let field = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let lengths: Vec<u64> = field("content-length")
        .into_iter()
        .flat_map(items)
        .map(|item| std::str::from_utf8(item).unwrap().parse().unwrap())
        .collect();
    assert!(
        lengths.windows(2).all(|w| w[0] == w[1]),
        "conflicting lengths let through"
    );
    let codings = field("transfer-encoding");
    let close = field("connection")
        .into_iter()
        .flat_map(items)
        .any(|t| t.eq_ignore_ascii_case(b"close"));
    let http_1_0 = response.version == Some(0);
    assert_eq!(head.status.as_u16(), response.code.unwrap());
    let bodiless = head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD;
    assert!(
        !close || !head.reusable,
        "a connection kept against `Connection: close`"
    );
    if !bodiless && !codings.is_empty() {
        // Only a bodiless answer's framing is clear whatever its length fields say.
        assert!(!http_1_0, "transfer codings in HTTP/1.0 let through");
        assert!(
            lengths.is_empty() || !head.reusable,
            "reused after Content-Length and Transfer-Encoding"
        );
    }
    match head.framing {
        Framing::Empty => assert!(bodiless),
        Framing::Length(n) => {
            assert!(!bodiless && codings.is_empty());
            assert_eq!(lengths.first(), Some(&n));
        }
        Framing::Chunked => {
            let last = codings.last().unwrap().rsplit(|b| *b == b',').next().unwrap();
            assert!(!bodiless && last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        Framing::UntilClose => {
            assert!(!bodiless && !head.reusable);
            assert!(lengths.is_empty() || !codings.is_empty(), "a length ignored");
        }
    }
});
