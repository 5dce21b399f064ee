//! SHA-256 and hex for the signature: the engine chosen once per process from the
//! CPU's features, a hash fed piece by piece, digests in hex on the stack, and the
//! payload hash a request is signed with. The lowest layer of `tc3`: the other files
//! hash through it, and it reads one header (`X-TC-Content-SHA256`, through
//! `SignedHeaders`). Must not know about keys, HMACs or the canonical request.

use super::canonical::SignedHeaders;
use ring::digest::{self, SHA256};
use sha2::Digest as _;
use std::sync::OnceLock;

/// The `X-TC-Content-SHA256` value that opts out of hashing the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Each byte's value as a hex digit (either case), or 0xFF.
static HEX_DIGIT_VALUES: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = match c as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => 0xFF,
        };
        c += 1;
    }
    table
};

/// Each byte in lower-case hex.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [DIGITS[byte >> 4], DIGITS[byte & 15]];
        byte += 1;
    }
    table
};

/// 64 hex digits (either case) into 32 bytes. By table, with one validity check at
/// the end: a branch per digit cost three times as much (every request decodes one).
pub(super) fn decode_hex_32(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (HEX_DIGIT_VALUES[pair[0] as usize], HEX_DIGIT_VALUES[pair[1] as usize]);
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0F);
    }
    (invalid & 0xF0 == 0).then_some(out)
}

/// 32 bytes into 64 lower-case hex digits, a table entry per byte.
pub(super) fn encode_hex_32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*byte as usize]);
    }
    out
}

/// A SHA-256 digest in lower-case hex, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 64]);

impl HexDigest {
    pub fn of(data: &[u8]) -> Self {
        Self::from_digest(&sha256(Engine::current(), data))
    }

    pub fn from_digest(digest: &[u8; 32]) -> Self {
        Self(encode_hex_32(digest))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: both constructors fill it with `encode_hex_32`'s ASCII digits.
        // Checked with `from_utf8`, a call costs about 320 instructions more (0.6%,
        // `scripts/bench-proxy --instructions`): the digest is read twice a call.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    HexDigest::of(data).as_str().to_string()
}

/// A SHA-256 output (always 32 bytes) as an array.
pub(super) fn digest_bytes(output: &[u8]) -> [u8; 32] {
    output.try_into().expect("SHA-256 is 32 bytes")
}

/// Which code computes SHA-256, chosen once per process. A call hashes about twenty
/// SHA-256 blocks in a handful of messages (verification, then re-signing), so both
/// the speed per block and the cost per message count:
/// - without SHA extensions, ring's assembly (AVX2 or SSSE3) hashed 1.7-1.85x faster
///   than the `sha2` crate's portable code (64 B to 1 MiB, side by side, on a Xeon without SHA extensions);
/// - with them, both use the SHA instructions and `sha2` costs less per message
///   (64 B: 134 vs 205 ns; 1 KiB: 0.94 vs 1.01 us; 1 MiB the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Ring,
    Sha2,
}

impl Engine {
    pub fn current() -> Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        *ENGINE.get_or_init(|| {
            if cpu_has_sha_extensions() {
                Engine::Sha2
            } else {
                Engine::Ring
            }
        })
    }
}

fn cpu_has_sha_extensions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("sha2")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A SHA-256 computation fed piece by piece, with this process's engine by default.
#[derive(Clone)]
pub(crate) enum Sha256 {
    Ring(digest::Context),
    Sha2(sha2::Sha256),
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new(Engine::current())
    }
}

impl Sha256 {
    pub(super) fn new(engine: Engine) -> Self {
        match engine {
            Engine::Ring => Sha256::Ring(digest::Context::new(&SHA256)),
            Engine::Sha2 => Sha256::Sha2(sha2::Sha256::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Sha256::Ring(context) => context.update(data),
            Sha256::Sha2(context) => context.update(data),
        }
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        match self {
            Sha256::Ring(context) => digest_bytes(context.finish().as_ref()),
            Sha256::Sha2(context) => context.finalize().into(),
        }
    }
}

pub(super) fn sha256(engine: Engine, data: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new(engine);
    hash.update(data);
    hash.finish()
}

/// The payload hash a request is signed with: sha256 of the body, or of the literal
/// `UNSIGNED-PAYLOAD` when the client sent `X-TC-Content-SHA256: UNSIGNED-PAYLOAD`.
pub fn payload_hash(headers: &(impl SignedHeaders + ?Sized), body: &[u8]) -> HexDigest {
    payload_hash_of(headers, body, None)
}

/// As `payload_hash`, with the body's SHA-256 when it was taken as the body arrived
/// (`Sha256`, fed by the server as the pieces come), so it is not hashed a second time.
pub fn payload_hash_of(
    headers: &(impl SignedHeaders + ?Sized),
    body: &[u8],
    body_sha256: Option<&[u8; 32]>,
) -> HexDigest {
    if is_unsigned_payload(headers) {
        HexDigest::of(UNSIGNED_PAYLOAD.as_bytes())
    } else if let Some(digest) = body_sha256 {
        HexDigest::from_digest(digest)
    } else {
        HexDigest::of(body)
    }
}

pub fn is_unsigned_payload(headers: &(impl SignedHeaders + ?Sized)) -> bool {
    headers
        .signed_value("x-tc-content-sha256")
        .is_some_and(|v| v.eq_ignore_ascii_case(UNSIGNED_PAYLOAD.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn a_body_hashed_in_pieces_has_the_hash_of_the_whole() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let whole = HexDigest::of(&body);
        for piece in [1, 63, 64, 65, 4096, 100_000, body.len()] {
            let mut hasher = Sha256::default();
            for chunk in body.chunks(piece) {
                hasher.update(chunk);
            }
            let digest = hasher.finish();
            assert_eq!(HexDigest::from_digest(&digest), whole, "pieces of {piece}");
            let headers = HeaderMap::new();
            assert_eq!(payload_hash_of(&headers, &body, Some(&digest)), whole);
        }
        // The client's UNSIGNED-PAYLOAD wins over a hash taken as the body arrived.
        let mut headers = HeaderMap::new();
        headers.insert("x-tc-content-sha256", UNSIGNED_PAYLOAD.parse().unwrap());
        assert_eq!(
            payload_hash_of(&headers, &body, Some(&[0; 32])),
            HexDigest::of(UNSIGNED_PAYLOAD.as_bytes())
        );
    }

    #[test]
    fn both_sha256_engines_agree() {
        // One engine runs in production on a given CPU; the other must give the same
        // digests wherever it would be the one chosen.
        for size in [0usize, 1, 55, 56, 63, 64, 65, 300, 1024, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let ring = sha256(Engine::Ring, &data);
            assert_eq!(ring, sha256(Engine::Sha2, &data), "{size} bytes");
            assert_eq!(hex::encode(ring), HexDigest::of(&data).as_str());
        }
        assert_eq!(
            hex::encode(sha256(Engine::Sha2, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_decoding_and_encoding_agree_with_the_hex_crate() {
        let digest = [0xa5u8, 0x0f, 0xf0, 0x00, 0xff, 0x12, 0x34, 0x56].repeat(4);
        let lower = hex::encode(&digest);
        assert_eq!(decode_hex_32(lower.as_bytes()).unwrap().to_vec(), digest);
        assert_eq!(decode_hex_32(lower.to_uppercase().as_bytes()).unwrap().to_vec(), digest);
        assert!(decode_hex_32(&lower.as_bytes()[..62]).is_none());
        let mut bad = lower.into_bytes();
        bad[63] = b'g';
        assert!(decode_hex_32(&bad).is_none());
        // Every byte value, in both directions and in every position of a pair.
        for chunk in (0..=255u8).collect::<Vec<_>>().chunks(32) {
            let bytes: [u8; 32] = chunk.try_into().unwrap();
            let encoded = encode_hex_32(&bytes);
            assert_eq!(encoded.as_slice(), hex::encode(bytes).as_bytes());
            assert_eq!(decode_hex_32(&encoded), Some(bytes));
        }
        let valid = hex::encode([0x5au8; 32]).into_bytes();
        for c in 0..=255u8 {
            for position in [0, 1, 62, 63] {
                let mut text = valid.clone();
                text[position] = c;
                assert_eq!(
                    decode_hex_32(&text).is_some(),
                    c.is_ascii_hexdigit(),
                    "{c:#x} at {position}"
                );
            }
        }
    }
}
