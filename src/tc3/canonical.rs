//! The canonical request of TC3: method, path, query, the signed headers and the
//! payload hash, hashed as it is produced (gathered on the stack, its first block's
//! SHA-256 state remembered per thread), and the headers it reads through
//! `SignedHeaders`. Used by verification and by `Signer`. Must not sign, compare or
//! decide anything: it turns a request into a digest.

use super::Tc3Error;
use super::authorization::split_ascii;
use super::hash::{Engine, Sha256};
use http::HeaderMap;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// The header naming the API action; the proxy routes and bills by it too.
pub static X_TC_ACTION: http::HeaderName = http::HeaderName::from_static("x-tc-action");

/// Where a signature's headers are read from: hyper's `HeaderMap`, or the pipeline's
/// `proxy::fields::RequestFields`.
pub trait SignedHeaders {
    /// The first value of the header `name` (lower-case, as `SignedHeaders` lists it).
    fn signed_value(&self, name: &str) -> Option<&[u8]>;
}

impl SignedHeaders for HeaderMap {
    /// The names the SDKs sign are looked up as constants: a lookup by string parses
    /// the name first.
    fn signed_value(&self, name: &str) -> Option<&[u8]> {
        match name {
            "content-type" => self.get(http::header::CONTENT_TYPE),
            "host" => self.get(http::header::HOST),
            "x-tc-action" => self.get(&X_TC_ACTION),
            _ => self.get(name),
        }
        .map(http::HeaderValue::as_bytes)
    }
}

/// A signed header's value as text: visible ASCII, as `HeaderValue::to_str` has it.
pub(super) fn signed_text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value)
        .ok()
        .filter(|text| text.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
}

/// What a signature covers, independent of how the request arrived.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The raw query string (without '?'), empty for POST.
    pub query: &'a str,
    pub headers: &'a dyn SignedHeaders,
    pub payload_hash_hex: &'a str,
    pub timestamp: i64,
}

#[derive(Clone, Copy)]
pub(super) enum HeaderCase {
    AsSent,
    Lower,
}

/// sha256 of the canonical request, hashed as it is produced: no buffer is built.
/// `host`, when given, stands for the `Host` header's value (the port left out, as the
/// Node SDKs sign it: see `sign::verify_signature`).
pub(super) fn canonical_request_hash(
    request: &SignedRequest<'_>,
    signed_headers: &str,
    case: HeaderCase,
    host: Option<&str>,
) -> Result<[u8; 32], Tc3Error> {
    let mut hash = Gathered::new(Sha256::new(Engine::current()));
    hash.push(request.method.as_bytes());
    hash.push(b"\n/\n");
    hash.push(request.query.as_bytes());
    hash.push(b"\n");
    for name in split_ascii(signed_headers, b';') {
        let value = match host {
            Some(host) if name == "host" => host,
            _ => request
                .headers
                .signed_value(name)
                .and_then(signed_text)
                .ok_or(Tc3Error::SignatureFailure)?
                .trim(),
        };
        hash.push(name.as_bytes());
        hash.push(b":");
        match case {
            HeaderCase::AsSent => hash.push(value.as_bytes()),
            HeaderCase::Lower => {
                let mut chunk = [0u8; 64];
                for part in value.as_bytes().chunks(64) {
                    for (out, c) in chunk.iter_mut().zip(part) {
                        *out = c.to_ascii_lowercase();
                    }
                    hash.push(&chunk[..part.len()]);
                }
            }
        }
        hash.push(b"\n");
    }
    hash.push(b"\n");
    hash.push(signed_headers.as_bytes());
    hash.push(b"\n");
    hash.push(request.payload_hash_hex.as_bytes());
    Ok(hash.finish_canonical())
}

/// A message gathered on the stack and handed to SHA-256 in one piece: a canonical
/// request comes in 10 to 20 pieces of a few bytes, and the hash's own buffering costs
/// more per piece than this copy. The buffer is left uninitialised: it is only read up
/// to what was written.
pub(super) struct Gathered {
    inner: Sha256,
    buffer: [MaybeUninit<u8>; GATHERED_BYTES],
    length: usize,
    /// Part of the message went to `inner` already.
    spilled: bool,
}

const GATHERED_BYTES: usize = 512;

impl Gathered {
    pub(super) fn new(inner: Sha256) -> Self {
        Gathered {
            inner,
            buffer: [const { MaybeUninit::uninit() }; GATHERED_BYTES],
            length: 0,
            spilled: false,
        }
    }

    #[inline]
    pub(super) fn push(&mut self, data: &[u8]) {
        let end = self.length + data.len();
        if end <= GATHERED_BYTES {
            self.buffer[self.length..end].write_copy_of_slice(data);
            self.length = end;
        } else {
            self.spill(data);
        }
    }

    #[cold]
    fn spill(&mut self, data: &[u8]) {
        self.flush();
        if data.len() > GATHERED_BYTES {
            self.inner.update(data);
        } else {
            self.buffer[..data.len()].write_copy_of_slice(data);
            self.length = data.len();
        }
    }

    fn flush(&mut self) {
        // SAFETY: `push` and `spill` wrote the first `length` bytes.
        let gathered = unsafe { self.buffer[..self.length].assume_init_ref() };
        self.inner.update(gathered);
        self.spilled = true;
        self.length = 0;
    }

    fn gathered(&self) -> &[u8] {
        // SAFETY: as in `flush`.
        unsafe { self.buffer[..self.length].assume_init_ref() }
    }

    fn into_inner(mut self) -> Sha256 {
        self.flush();
        self.inner
    }
}

/// Canonical requests' first SHA-256 blocks, hashed, per thread. The first 64 bytes
/// of a canonical request (method, query, then the first signed headers: for the
/// SDKs `content-type` and `host`) are the same for almost every call a gateway sees,
/// and always for its own re-signed calls: their block is hashed once and its state
/// reused, one block of the three or four each canonical request takes.
const FIRST_BLOCKS_PER_THREAD: usize = 4;

/// First blocks and the state after each; the slot replaced next when full.
struct FirstBlocks {
    entries: Vec<([u8; 64], Sha256)>,
    next: usize,
}

thread_local! {
    static FIRST_BLOCKS: RefCell<FirstBlocks> = const {
        RefCell::new(FirstBlocks {
            entries: Vec::new(),
            next: 0,
        })
    };
}

impl Gathered {
    /// The digest of a canonical request gathered whole, its first block's state taken
    /// from `FIRST_BLOCKS` when that block was seen before.
    pub(super) fn finish_canonical(self) -> [u8; 32] {
        let text = self.gathered();
        if self.spilled || text.len() < 64 {
            return self.into_inner().finish();
        }
        let (first, rest) = text.split_at(64);
        let first: &[u8; 64] = first.try_into().expect("split at 64");
        let mut hash = FIRST_BLOCKS.with(|cache| {
            let cache = &mut *cache.borrow_mut();
            if let Some((_, state)) = cache.entries.iter().find(|(block, _)| block == first) {
                return state.clone();
            }
            let mut state = Sha256::new(Engine::current());
            state.update(first);
            if cache.entries.len() < FIRST_BLOCKS_PER_THREAD {
                cache.entries.push((*first, state.clone()));
            } else {
                cache.entries[cache.next] = (*first, state.clone());
                cache.next = (cache.next + 1) % FIRST_BLOCKS_PER_THREAD;
            }
            state
        });
        hash.update(rest);
        hash.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tc3::hash::sha256;

    #[test]
    fn a_gathered_message_hashes_as_the_whole_does_whatever_its_pieces() {
        // Pieces that fit, one that fills the buffer exactly, one that spills it, and one
        // larger than the buffer on its own.
        let pieces: Vec<Vec<u8>> = [3usize, 500, 9, 512, 1, 700, 0, 64, 511]
            .iter()
            .enumerate()
            .map(|(i, len)| vec![b'a' + i as u8; *len])
            .collect();
        for engine in [Engine::Ring, Engine::Sha2] {
            let mut gathered = Gathered::new(Sha256::new(engine));
            pieces.iter().for_each(|piece| gathered.push(piece));
            assert_eq!(
                gathered.into_inner().finish(),
                sha256(engine, &pieces.concat()),
                "{engine:?}"
            );
        }
    }

    #[test]
    fn canonical_hashes_with_a_remembered_first_block_are_the_plain_hashes() {
        // Six different first blocks (more than the cache holds), each with several
        // tails, in an order that hits, misses and evicts; and messages of 63 and 64
        // bytes and one that spills the buffer.
        let mut messages: Vec<Vec<u8>> = Vec::new();
        for round in 0..3 {
            for first in 0..6u8 {
                let mut text = vec![b'A' + first; 64];
                text.extend(std::iter::repeat_n(b'a' + round, 10 + 50 * round as usize));
                messages.push(text);
            }
        }
        messages.push(vec![b'x'; 63]);
        messages.push(vec![b'y'; 64]);
        messages.push(vec![b'z'; 900]);
        for text in &messages {
            let mut gathered = Gathered::new(Sha256::new(Engine::current()));
            for piece in text.chunks(37) {
                gathered.push(piece);
            }
            assert_eq!(
                gathered.finish_canonical(),
                sha256(Engine::current(), text),
                "{} bytes",
                text.len()
            );
        }
        // A remembered block with a different tail still gives that message's hash.
        let mut changed = messages[0].clone();
        *changed.last_mut().unwrap() ^= 1;
        let mut gathered = Gathered::new(Sha256::new(Engine::current()));
        gathered.push(&changed);
        assert_eq!(gathered.finish_canonical(), sha256(Engine::current(), &changed));
    }
}
