//! The upstream chunked-body decoder (`proxy::h1::ChunkedDecoder`) on arbitrary bytes
//! fed in pieces (the first byte picks the piece size). Must never panic, and must hold:
//! the result does not depend on the pieces; a finished body leaves exactly what
//! followed it; the decoded body, chunked again at sizes taken from the input and
//! followed by other bytes, decodes to itself and leaves those bytes. Must not decode
//! anything itself.
#![no_main]

use bytes::BytesMut;
use ekyc_gateway::proxy::h1::{ChunkedDecoder, WireError};
use libfuzzer_sys::fuzz_target;

/// Decodes `wire` given `piece` bytes at a time: the result of the last call, the body
/// and what was left unread.
fn decode(wire: &[u8], piece: usize) -> (Result<bool, WireError>, Vec<u8>, Vec<u8>) {
    let mut decoder = ChunkedDecoder::default();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut result = decoder.decode(&mut input, &mut out);
    let mut fed = 0;
    while result == Ok(false) && fed < wire.len() {
        let end = (fed + piece.max(1)).min(wire.len());
        input.extend_from_slice(&wire[fed..end]);
        fed = end;
        result = decoder.decode(&mut input, &mut out);
    }
    // What was not fed is unread too.
    input.extend_from_slice(&wire[fed..]);
    (result, out.to_vec(), input.to_vec())
}

fn encode(body: &[u8], sizes: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = usize::from(*sizes.next().unwrap_or(&7)).max(1).min(rest.len());
        wire.extend_from_slice(format!("{size:X};ext=\"v\"\r\n").as_bytes());
        wire.extend_from_slice(&rest[..size]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[size..];
    }
    wire.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, wire)) = data.split_first() else {
        return;
    };
    let (whole, body, left) = decode(wire, wire.len());
    let (pieces, body_in_pieces, left_in_pieces) = decode(wire, usize::from(piece));
    match (&whole, &pieces) {
        (Err(_), Err(_)) => {}
        _ => {
            assert_eq!(whole, pieces, "the result depends on the pieces");
            assert_eq!((&body, &left), (&body_in_pieces, &left_in_pieces));
        }
    }
    if whole == Ok(true) {
        assert!(wire.ends_with(&left), "what follows the body is not what was left");
        assert!(body.len() < wire.len());
    }
    // Round trip of what was decoded (or of the raw input when nothing was).
    let plain = if body.is_empty() { wire } else { &body[..] };
    let mut again = encode(plain, wire);
    again.extend_from_slice(b"NEXT");
    let (result, decoded, left) = decode(&again, usize::from(piece));
    assert_eq!(result, Ok(true));
    assert_eq!(decoded, plain);
    assert_eq!(left, b"NEXT");
});
