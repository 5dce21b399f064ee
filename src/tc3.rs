//! TC3-HMAC-SHA256, Tencent Cloud API 3.0's request signature: parsing the
//! `Authorization` header, building the canonical request, deriving the signing key,
//! signing and verifying. Pure functions over bytes and strings; used by the proxy to
//! verify clients and re-sign to the upstream, and by the simulator to verify the
//! gateway. Must not look up credentials, read the clock or do I/O: callers pass
//! "now" and the key in.

use hmac::{Hmac, KeyInit, Mac as _};
use http::HeaderMap;
use ring::digest::{self, SHA256};
use ring::hmac::{self as ring_hmac, HMAC_SHA256};
use sha2::Digest as _;
use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The `X-TC-Content-SHA256` value that opts out of hashing the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Allowed distance between `X-TC-Timestamp` and now, as Tencent enforces it.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// Bounds that keep a hostile header from costing more than a normal one.
const MAX_AUTHORIZATION_LEN: usize = 2048;
const MAX_SIGNED_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tc3Error {
    #[error("malformed Authorization: {0}")]
    InvalidAuthorization(&'static str),
    #[error("the request signature does not match")]
    SignatureFailure,
    #[error("the request timestamp is more than 300 s away from the server time")]
    SignatureExpire,
}

/// The parts of `Authorization: TC3-HMAC-SHA256 Credential=.., SignedHeaders=.., Signature=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub secret_id: &'a str,
    pub date: &'a str,
    pub service: &'a str,
    pub signed_headers: &'a str,
    pub signature: [u8; 32],
}

/// Parses a TC3 `Authorization` value. Strict: exactly the three fields, each once.
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, Tc3Error> {
    use Tc3Error::InvalidAuthorization as Bad;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Bad("too long"));
    }
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(Bad("the algorithm must be TC3-HMAC-SHA256"))?;
    match parse_as_the_sdks_write_it(rest) {
        Some(parsed) => Ok(parsed),
        None => parse_fields(rest),
    }
}

/// The fields after the algorithm, in any order, each once.
fn parse_fields(rest: &str) -> Result<Authorization<'_>, Tc3Error> {
    use Tc3Error::InvalidAuthorization as Bad;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let field = field.trim_ascii();
        let (key, val) = split_once_ascii(field, b'=').ok_or(Bad("a field has no '='"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(Bad("unknown field")),
        };
        if slot.replace(val).is_some() {
            return Err(Bad("a field is repeated"));
        }
    }
    let credential = credential.ok_or(Bad("Credential is missing"))?;
    let signed_headers = signed_headers.ok_or(Bad("SignedHeaders is missing"))?;
    let signature = signature.ok_or(Bad("Signature is missing"))?;

    let (secret_id, date, service) =
        credential_scope(credential).ok_or(Bad("Credential must be SecretId/date/service/tc3_request"))?;
    if secret_id.is_empty() || service.is_empty() || !is_iso_date(date) {
        return Err(Bad("Credential has an empty or invalid part"));
    }
    validate_signed_headers(signed_headers)?;
    let decoded = decode_hex_32(signature.as_bytes()).ok_or(Bad("Signature must be 64 hex digits"))?;
    Ok(Authorization {
        secret_id,
        date,
        service,
        signed_headers,
        signature: decoded,
    })
}

/// The fields as every official SDK writes them (`Credential=.., SignedHeaders=..,
/// Signature=<64 hex>`, this order, ", " between), found from both ends without
/// searching the whole value: three searches for ',' cost about 700 instructions a
/// call. Stricter than the general parser, `parse_fields` (the SecretId and service
/// must be ASCII letters and digits), never looser: `None` sends the value to it,
/// which also gives the error.
fn parse_as_the_sdks_write_it(rest: &str) -> Option<Authorization<'_>> {
    const SIGNATURE: &str = ", Signature=";
    const SIGNED_HEADERS: &str = ", SignedHeaders=";
    let rest = rest.strip_prefix("Credential=")?;
    let front = rest.get(..rest.len().checked_sub(64)?)?;
    let signature = decode_hex_32(&rest.as_bytes()[front.len()..])?;
    let front = front.strip_suffix(SIGNATURE)?;
    // The signed headers are a few names without commas: the last comma is the one
    // before them.
    let comma = front.bytes().rposition(|b| b == b',')?;
    let (credential, signed_headers) = front.split_at(comma);
    let signed_headers = signed_headers.strip_prefix(SIGNED_HEADERS)?;
    let (secret_id, date, service) = credential_scope(credential)?;
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(secret_id) || !plain(service) || !is_iso_date(date) {
        return None;
    }
    validate_signed_headers(signed_headers).ok()?;
    Some(Authorization {
        secret_id,
        date,
        service,
        signed_headers,
        signature,
    })
}

/// `SecretId/date/service/tc3_request` into its first three parts, unchecked.
fn credential_scope(credential: &str) -> Option<(&str, &str, &str)> {
    let mut parts = split_ascii(credential, b'/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(secret_id), Some(date), Some(service), Some("tc3_request"), None) => Some((secret_id, date, service)),
        _ => None,
    }
}

/// Splits `s` at every `separator` (an ASCII byte, so every piece is valid UTF-8) with
/// a plain byte loop: `str::split(char)` searches with memchr, whose setup outweighs
/// the search on the few bytes between TC3's `/` and `;` (3% of the verification's
/// time in a profile). The `Authorization` fields, 40 to 90 bytes between commas, are
/// split with `str::split`, which wins there (500 instructions a call fewer).
fn split_ascii(s: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == separator) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn split_once_ascii(s: &str, separator: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == separator)?;
    Some((&s[..at], &s[at + 1..]))
}

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
fn decode_hex_32(hex: &[u8]) -> Option<[u8; 32]> {
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
fn encode_hex_32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*byte as usize]);
    }
    out
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Which bytes may appear in a signed header's name: lower-case letters, digits, '-'
/// and '_'.
static SIGNED_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = matches!(c as u8, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_');
        c += 1;
    }
    table
};

/// One pass over the list with a table, names counted by their separators: split into
/// names first and each checked with four comparisons a byte, it cost about 330
/// instructions on the SDKs' `content-type;host`.
fn validate_signed_headers(list: &str) -> Result<(), Tc3Error> {
    use Tc3Error::InvalidAuthorization as Bad;
    if list.is_empty() {
        return Err(Bad("SignedHeaders is empty"));
    }
    let mut separators = 0;
    let mut previous = b';';
    for &byte in list.as_bytes() {
        if byte == b';' {
            if previous == b';' {
                return Err(Bad("SignedHeaders must be lower-case header names"));
            }
            separators += 1;
            if separators >= MAX_SIGNED_HEADERS {
                return Err(Bad("SignedHeaders lists too many headers"));
            }
        } else if !SIGNED_NAME_BYTES[byte as usize] {
            return Err(Bad("SignedHeaders must be lower-case header names"));
        }
        previous = byte;
    }
    if previous == b';' {
        return Err(Bad("SignedHeaders must be lower-case header names"));
    }
    Ok(())
}

/// `YYYY-MM-DD` of a Unix timestamp in UTC, the date TC3 puts in the credential scope,
/// as bytes on the stack (the hot path compares it on every request, and writes it
/// when re-signing). The last two days' are kept per thread (two: the meter asks for
/// the day at the billing time zone's offset, which can be the next or the previous
/// one): the conversion's divisions cost more than the rest of the date check.
pub fn utc_date_bytes(timestamp: i64) -> Option<[u8; 10]> {
    thread_local! {
        static LAST_DAYS: Cell<[(i64, [u8; 10]); 2]> = const { Cell::new([(i64::MIN, [0; 10]); 2]) };
    }
    let day = timestamp.div_euclid(86_400);
    LAST_DAYS.with(|last| {
        let [latest, earlier] = last.get();
        if latest.0 == day {
            return Some(latest.1);
        }
        if earlier.0 == day {
            last.set([earlier, latest]);
            return Some(earlier.1);
        }
        let date = civil_date_bytes(day)?;
        last.set([(day, date), latest]);
        Some(date)
    })
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (years 0-9999 only).
fn civil_date_bytes(day: i64) -> Option<[u8; 10]> {
    // Howard Hinnant's days-to-civil algorithm.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00";
    for (i, digit) in [year / 1000, year / 100 % 10, year / 10 % 10, year % 10]
        .into_iter()
        .enumerate()
    {
        out[i] = b'0' + digit as u8;
    }
    out[5] = b'0' + (month / 10) as u8;
    out[6] = b'0' + (month % 10) as u8;
    out[8] = b'0' + (day / 10) as u8;
    out[9] = b'0' + (day % 10) as u8;
    Some(out)
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
        // SAFETY: the only constructor fills it with `encode_hex_32`'s ASCII digits.
        // Checked, this was about 180 instructions a call (it is read twice).
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
fn digest_bytes(output: &[u8]) -> [u8; 32] {
    output.try_into().expect("SHA-256 is 32 bytes")
}

/// Which code computes SHA-256, chosen once per process. A call hashes about twenty
/// SHA-256 blocks in a handful of messages (verification, then re-signing), so both
/// the speed per block and the cost per message count:
/// - without SHA extensions, ring's assembly (AVX2 or SSSE3) hashed 1.7-1.85x faster
///   than the `sha2` crate's portable code (64 B to 1 MiB, side by side, session 3);
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
    fn new(engine: Engine) -> Self {
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

fn sha256(engine: Engine, data: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new(engine);
    hash.update(data);
    hash.finish()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    digest_bytes(ring_hmac::sign(&ring_hmac::Key::new(HMAC_SHA256, key), data).as_ref())
}

/// kSigning = HMAC(HMAC(HMAC("TC3" + SecretKey, date), service), "tc3_request").
/// Depends only on (key, date, service), so callers may cache it per day.
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> [u8; 32] {
    let mut seed = Vec::with_capacity(3 + secret_key.len());
    seed.extend_from_slice(b"TC3");
    seed.extend_from_slice(secret_key.as_bytes());
    let k_date = hmac(&seed, date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    hmac(&k_service, b"tc3_request")
}

/// kSigning with the HMAC's inner and outer pads already absorbed, ready to sign a
/// StringToSign: cached per credential and day, it saves two SHA-256 blocks a request.
#[derive(Clone)]
pub enum SigningKey {
    Ring(ring_hmac::Key),
    Sha2(Hmac<sha2::Sha256>),
}

/// An HMAC computation under a `SigningKey`, fed piece by piece.
enum HmacSha256 {
    Ring(ring_hmac::Context),
    Sha2(Hmac<sha2::Sha256>),
}

impl SigningKey {
    pub fn derive(secret_key: &str, date: &str, service: &str) -> Self {
        Self::derive_for(Engine::current(), secret_key, date, service)
    }

    fn derive_for(engine: Engine, secret_key: &str, date: &str, service: &str) -> Self {
        let key = signing_key(secret_key, date, service);
        match engine {
            Engine::Ring => SigningKey::Ring(ring_hmac::Key::new(HMAC_SHA256, &key)),
            Engine::Sha2 => SigningKey::Sha2(Hmac::new_from_slice(&key).expect("HMAC takes any key length")),
        }
    }

    fn start(&self) -> HmacSha256 {
        match self {
            SigningKey::Ring(key) => HmacSha256::Ring(ring_hmac::Context::with_key(key)),
            SigningKey::Sha2(key) => HmacSha256::Sha2(key.clone()),
        }
    }

    /// HMAC(kSigning, data).
    pub fn sign(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.start();
        mac.update(data);
        mac.finish()
    }
}

impl HmacSha256 {
    fn update(&mut self, data: &[u8]) {
        match self {
            HmacSha256::Ring(context) => context.update(data),
            HmacSha256::Sha2(context) => context.update(data),
        }
    }

    fn finish(self) -> [u8; 32] {
        match self {
            HmacSha256::Ring(context) => digest_bytes(context.sign().as_ref()),
            HmacSha256::Sha2(context) => context.finalize().into_bytes().into(),
        }
    }
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
fn signed_text(value: &[u8]) -> Option<&str> {
    let visible = value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    // SAFETY: visible ASCII is UTF-8; `from_utf8` would check every byte a second time.
    visible.then(|| unsafe { std::str::from_utf8_unchecked(value) })
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
enum HeaderCase {
    AsSent,
    Lower,
}

/// sha256 of the canonical request, hashed as it is produced: no buffer is built.
/// `host`, when given, stands for the `Host` header's value (see `HostForm`).
fn canonical_request_hash(
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
struct Gathered {
    inner: Sha256,
    buffer: [MaybeUninit<u8>; GATHERED_BYTES],
    length: usize,
    /// Part of the message went to `inner` already.
    spilled: bool,
}

const GATHERED_BYTES: usize = 512;

impl Gathered {
    fn new(inner: Sha256) -> Self {
        Gathered {
            inner,
            buffer: [const { MaybeUninit::uninit() }; GATHERED_BYTES],
            length: 0,
            spilled: false,
        }
    }

    #[inline]
    fn push(&mut self, data: &[u8]) {
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
    fn finish_canonical(self) -> [u8; 32] {
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

/// The header naming the API action; the proxy routes and bills by it too.
pub static X_TC_ACTION: http::HeaderName = http::HeaderName::from_static("x-tc-action");

/// The StringToSign's fixed end: `{date}/{service}` is followed by this, then the hex
/// canonical hash.
const SCOPE_END: &[u8] = b"/tc3_request\n";
/// StringToSigns up to this length (all but a hostile `service`) are written on the stack.
const STRING_TO_SIGN_ON_STACK: usize = 192;

/// HMAC(kSigning, StringToSign). The message is written in one buffer of its exact
/// length, each piece copied once to its place, and signed in one call: gathered piece
/// by piece it took six variable-length copies and two moves of the HMAC state, more
/// instructions than the HMAC's own bookkeeping.
fn string_to_sign_mac(key: &SigningKey, timestamp: i64, date: &str, service: &str, canonical: &[u8; 32]) -> [u8; 32] {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = timestamp.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &digits[at..];
    let sign: &[u8] = if timestamp < 0 { b"-" } else { b"" };
    let length =
        ALGORITHM.len() + 1 + sign.len() + digits.len() + 1 + date.len() + 1 + service.len() + SCOPE_END.len() + 64;
    let write = |out: &mut [u8]| {
        let mut out = out;
        for piece in [
            ALGORITHM.as_bytes(),
            b"\n",
            sign,
            digits,
            b"\n",
            date.as_bytes(),
            b"/",
            service.as_bytes(),
            SCOPE_END,
        ] {
            let (head, tail) = out.split_at_mut(piece.len());
            head.copy_from_slice(piece);
            out = tail;
        }
        out.copy_from_slice(&encode_hex_32(canonical));
    };
    if length <= STRING_TO_SIGN_ON_STACK {
        let mut message = [0u8; STRING_TO_SIGN_ON_STACK];
        write(&mut message[..length]);
        key.sign(&message[..length])
    } else {
        let mut message = vec![0u8; length];
        write(&mut message);
        key.sign(&message)
    }
}

/// Checks the skew window and the credential date against the request's timestamp.
pub fn check_time(auth: &Authorization<'_>, timestamp: i64, now: i64) -> Result<(), Tc3Error> {
    // `abs_diff`: a difference of two i64s can overflow, and a wrapped one is small.
    if now.abs_diff(timestamp) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(Tc3Error::SignatureExpire);
    }
    match utc_date_bytes(timestamp) {
        Some(date) if date == auth.date.as_bytes() => Ok(()),
        _ => Err(Tc3Error::SignatureFailure),
    }
}

/// Tencent requires both in every signature: without `host` a signature made for one
/// endpoint is good for any other, without `content-type` the body can be re-read as
/// another format.
const REQUIRED_SIGNED_HEADERS: [&str; 2] = ["content-type", "host"];

/// Refuses a `SignedHeaders` list without `content-type` and `host`, as Tencent does.
pub fn check_signed_headers(auth: &Authorization<'_>) -> Result<(), Tc3Error> {
    // The SDKs' list, exactly: one comparison.
    if auth.signed_headers == "content-type;host" {
        return Ok(());
    }
    let signed = |wanted: &str| split_ascii(auth.signed_headers, b';').any(|name| name == wanted);
    if REQUIRED_SIGNED_HEADERS.iter().all(|wanted| signed(wanted)) {
        Ok(())
    } else {
        Err(Tc3Error::InvalidAuthorization(
            "SignedHeaders must include content-type and host",
        ))
    }
}

/// `Host` without its port (`127.0.0.1:8080` → `127.0.0.1`, `[::1]:8080` → `[::1]`),
/// or `None` when it has none.
pub fn host_without_port(host: &str) -> Option<&str> {
    let (bare, port) = host.rsplit_once(':')?;
    let bracketed_or_plain = bare.ends_with(']') || !bare.contains(':');
    (bracketed_or_plain && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(bare)
}

/// The credential scope's service must be the one this endpoint serves (`service`,
/// the upstream's: `faceid`) or, as the Node SDKs take it from the endpoint they are
/// given, the first label of the `Host` the client called (`127` for `127.0.0.1:8080`,
/// `ekyc` for `ekyc.example.com`). Anything else is a signature made for another
/// product (a `cvm` scope), which Tencent refuses.
pub fn check_service(auth: &Authorization<'_>, service: &str, host: Option<&str>) -> Result<(), Tc3Error> {
    if auth.service == service {
        return Ok(());
    }
    let host = host.map(str::trim).unwrap_or_default();
    let bare = host_without_port(host).unwrap_or(host);
    let first_label = bare.split('.').next().unwrap_or_default();
    if !first_label.is_empty() && auth.service == first_label {
        Ok(())
    } else {
        Err(Tc3Error::InvalidAuthorization(
            "the credential scope's service is not this endpoint's",
        ))
    }
}

/// Verifies the signature in constant time. The canonical request is rebuilt as each
/// official SDK can have built it, the exact form first so that the others cost only
/// on the failure path:
/// - header values as sent, then lower-cased (Tencent's spec lower-cases them, the
///   SDKs do not);
/// - `host` as sent, then without its port (the Node SDKs sign the endpoint's host
///   name alone and still send `Host: name:port`).
pub fn verify_signature(
    auth: &Authorization<'_>,
    request: &SignedRequest<'_>,
    signing_key: &SigningKey,
) -> Result<(), Tc3Error> {
    if signature_matches(auth, request, signing_key, None)? {
        return Ok(());
    }
    let bare_host = split_ascii(auth.signed_headers, b';')
        .any(|name| name == "host")
        .then(|| request.headers.signed_value("host").and_then(signed_text))
        .flatten()
        .and_then(|host| host_without_port(host.trim()));
    if let Some(bare) = bare_host
        && signature_matches(auth, request, signing_key, Some(bare))?
    {
        return Ok(());
    }
    Err(Tc3Error::SignatureFailure)
}

/// Whether the signature matches with `host` (when given) standing for the `Host`
/// header, with header values as sent or lower-cased.
fn signature_matches(
    auth: &Authorization<'_>,
    request: &SignedRequest<'_>,
    signing_key: &SigningKey,
    host: Option<&str>,
) -> Result<bool, Tc3Error> {
    for case in [HeaderCase::AsSent, HeaderCase::Lower] {
        let lower = matches!(case, HeaderCase::Lower);
        let canonical = canonical_request_hash(request, auth.signed_headers, case, host)?;
        let mac = string_to_sign_mac(signing_key, request.timestamp, auth.date, auth.service, &canonical);
        if bool::from(mac.as_slice().ct_eq(&auth.signature[..])) {
            return Ok(true);
        }
        let any_upper = split_ascii(auth.signed_headers, b';').any(|name| {
            let value = match host {
                Some(host) if name == "host" => Some(host.as_bytes()),
                _ => request.headers.signed_value(name),
            };
            value.is_some_and(|v| v.iter().any(u8::is_ascii_uppercase))
        });
        if lower || !any_upper {
            break;
        }
    }
    Ok(false)
}

/// Reads and parses `X-TC-Timestamp`.
pub fn request_timestamp(headers: &(impl SignedHeaders + ?Sized)) -> Result<i64, Tc3Error> {
    headers
        .signed_value("x-tc-timestamp")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|t| *t >= 0)
        .ok_or(Tc3Error::InvalidAuthorization(
            "X-TC-Timestamp is missing or not a number",
        ))
}

/// A call as a `Signer` sends it, with the two headers it signs given directly.
pub struct OutgoingCall<'a> {
    pub method: &'a str,
    /// The raw query string (without '?'), empty for POST.
    pub query: &'a str,
    /// `Content-Type` as sent, if any: with one the signature covers `content-type;host`.
    pub content_type: Option<&'a [u8]>,
    pub host: &'a str,
    pub payload_hash_hex: &'a str,
    pub timestamp: i64,
}

static NEXT_SIGNER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The day's signing key per signer, per thread: deriving it costs three HMACs and
    /// it changes once a day; one copy per thread means no lock and no cache line
    /// shared between the data-plane threads. A few entries (tests run many signers).
    static DAY_KEYS: RefCell<Vec<(u64, [u8; 10], SigningKey)>> = const { RefCell::new(Vec::new()) };
}
const DAY_KEYS_PER_THREAD: usize = 8;

/// Signs requests with one SecretId/SecretKey; used to re-sign towards the upstream and
/// by test clients. Signs `content-type;host` (or `host` alone when there is no
/// content type), as the official SDKs do.
#[derive(Clone)]
pub struct Signer {
    /// Shared by clones (same credentials): keys the per-thread signing-key cache.
    id: u64,
    secret_id: String,
    secret_key: String,
    service: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field("service", &self.service)
            .finish()
    }
}

impl Signer {
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            id: NEXT_SIGNER_ID.fetch_add(1, Ordering::Relaxed),
            secret_id: secret_id.into(),
            secret_key: secret_key.into(),
            service: service.into(),
        }
    }

    /// HMAC(kSigning of `date`, StringToSign) with this thread's cached key.
    fn string_to_sign_mac(&self, date: &[u8; 10], timestamp: i64, canonical: &[u8; 32]) -> [u8; 32] {
        let date_text = std::str::from_utf8(date).unwrap_or_default();
        DAY_KEYS.with(|keys| {
            let mut keys = keys.borrow_mut();
            let position = match keys.iter().position(|(id, day, _)| *id == self.id && day == date) {
                Some(position) => position,
                None => {
                    keys.retain(|(id, _, _)| *id != self.id);
                    if keys.len() >= DAY_KEYS_PER_THREAD {
                        keys.remove(0);
                    }
                    keys.push((
                        self.id,
                        *date,
                        SigningKey::derive(&self.secret_key, date_text, &self.service),
                    ));
                    keys.len() - 1
                }
            };
            string_to_sign_mac(&keys[position].2, timestamp, date_text, &self.service, canonical)
        })
    }

    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// Appends the `Authorization` value for `call` to `out`.
    pub fn write_authorization(&self, call: &OutgoingCall<'_>, out: &mut Vec<u8>) {
        let signed_headers = if call.content_type.is_some() {
            "content-type;host"
        } else {
            "host"
        };
        // Dates outside years 0-9999 cannot be written; such a call is refused upstream.
        let date = utc_date_bytes(call.timestamp).unwrap_or(*b"0000-00-00");
        let mut hash = Gathered::new(Sha256::new(Engine::current()));
        hash.push(call.method.as_bytes());
        hash.push(b"\n/\n");
        hash.push(call.query.as_bytes());
        hash.push(b"\n");
        if let Some(content_type) = call.content_type {
            hash.push(b"content-type:");
            hash.push(content_type.trim_ascii());
            hash.push(b"\n");
        }
        hash.push(b"host:");
        hash.push(call.host.trim().as_bytes());
        hash.push(b"\n\n");
        hash.push(signed_headers.as_bytes());
        hash.push(b"\n");
        hash.push(call.payload_hash_hex.as_bytes());
        let canonical = hash.finish_canonical();
        let mac = self.string_to_sign_mac(&date, call.timestamp, &canonical);
        out.extend_from_slice(ALGORITHM.as_bytes());
        out.extend_from_slice(b" Credential=");
        out.extend_from_slice(self.secret_id.as_bytes());
        out.push(b'/');
        out.extend_from_slice(&date);
        out.push(b'/');
        out.extend_from_slice(self.service.as_bytes());
        out.extend_from_slice(b"/tc3_request, SignedHeaders=");
        out.extend_from_slice(signed_headers.as_bytes());
        out.extend_from_slice(b", Signature=");
        out.extend_from_slice(&HexDigest::from_digest(&mac).0);
    }

    /// The `Authorization` value for a request whose `Host` and `Content-Type` headers
    /// are already set in `request.headers`.
    pub fn authorization(&self, request: &SignedRequest<'_>) -> String {
        let call = OutgoingCall {
            method: request.method,
            query: request.query,
            content_type: request.headers.signed_value("content-type"),
            host: request
                .headers
                .signed_value("host")
                .and_then(signed_text)
                .unwrap_or_default(),
            payload_hash_hex: request.payload_hash_hex,
            timestamp: request.timestamp,
        };
        let mut out = Vec::with_capacity(160 + self.secret_id.len());
        self.write_authorization(&call, &mut out);
        String::from_utf8(out).expect("the Authorization value is ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_date(timestamp: i64) -> Option<String> {
        utc_date_bytes(timestamp).map(|d| String::from_utf8_lossy(&d).into_owned())
    }

    /// A raw request from `tests/vectors/tc3/`.
    #[derive(Clone)]
    pub(crate) struct Vector {
        pub method: String,
        pub query: String,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
    }

    pub(crate) fn load_vector(name: &str) -> Vector {
        let path = format!("{}/tests/vectors/tc3/{name}", env!("CARGO_MANIFEST_DIR"));
        let raw = std::fs::read(&path).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap().to_string();
        let target = parts.next().unwrap();
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("").to_string();
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap();
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        Vector {
            method,
            query,
            headers,
            body,
        }
    }

    fn verify_vector(v: &Vector, now: i64) -> Result<(), Tc3Error> {
        let auth_value = v.headers.get("authorization").unwrap().to_str().unwrap();
        let auth = parse_authorization(auth_value)?;
        let timestamp = request_timestamp(&v.headers)?;
        check_time(&auth, timestamp, now)?;
        let hash = payload_hash(&v.headers, &v.body);
        let request = SignedRequest {
            method: &v.method,
            query: &v.query,
            headers: &v.headers,
            payload_hash_hex: hash.as_str(),
            timestamp,
        };
        let key = SigningKey::derive("testSecretKey", auth.date, auth.service);
        verify_signature(&auth, &request, &key)
    }

    const VALID: [&str; 5] = [
        "01-intl-post-sts-token.http",
        "02-intl-post-unsigned-payload.http",
        "03-intl-post-json.http",
        "04-intl-get-query.http",
        "05-cn-post-json-detectauth.http",
    ];

    fn timestamp_of(v: &Vector) -> i64 {
        request_timestamp(&v.headers).unwrap()
    }

    #[test]
    fn every_sdk_vector_verifies() {
        for name in VALID {
            let v = load_vector(name);
            assert_eq!(verify_vector(&v, timestamp_of(&v)), Ok(()), "{name}");
        }
    }

    #[test]
    fn any_changed_body_byte_fails() {
        for name in [
            "01-intl-post-sts-token.http",
            "03-intl-post-json.http",
            "05-cn-post-json-detectauth.http",
        ] {
            let v = load_vector(name);
            for i in 0..v.body.len() {
                let mut changed = v.clone();
                changed.body[i] ^= 0x01;
                assert_eq!(
                    verify_vector(&changed, timestamp_of(&v)),
                    Err(Tc3Error::SignatureFailure),
                    "{name} byte {i}"
                );
            }
        }
    }

    #[test]
    fn unsigned_payload_ignores_the_body() {
        let mut v = load_vector("02-intl-post-unsigned-payload.http");
        let now = timestamp_of(&v);
        v.body.push(b'x');
        assert_eq!(verify_vector(&v, now), Ok(()));
    }

    #[test]
    fn changed_host_content_type_timestamp_or_signature_fails() {
        for name in VALID {
            let v = load_vector(name);
            let now = timestamp_of(&v);
            let edits: [(&str, String); 3] = [
                ("host", "127.0.0.1:45958".into()),
                ("content-type", "application/jsonx".into()),
                ("x-tc-timestamp", (now + 1).to_string()),
            ];
            for (header, value) in edits {
                let mut changed = v.clone();
                changed
                    .headers
                    .insert(http::HeaderName::from_static(header), value.parse().unwrap());
                assert_eq!(
                    verify_vector(&changed, now),
                    Err(Tc3Error::SignatureFailure),
                    "{name} {header}"
                );
            }
            let auth = v.headers.get("authorization").unwrap().to_str().unwrap();
            let last = auth.chars().last().unwrap();
            let flipped = format!("{}{}", &auth[..auth.len() - 1], if last == '0' { '1' } else { '0' });
            let mut changed = v.clone();
            changed.headers.insert("authorization", flipped.parse().unwrap());
            assert_eq!(
                verify_vector(&changed, now),
                Err(Tc3Error::SignatureFailure),
                "{name} signature"
            );
        }
    }

    #[test]
    fn changed_query_fails_for_get() {
        let mut v = load_vector("04-intl-get-query.http");
        let now = timestamp_of(&v);
        v.query = "BizToken=a+b%2Fd".into();
        assert_eq!(verify_vector(&v, now), Err(Tc3Error::SignatureFailure));
    }

    #[test]
    fn skew_beyond_300_seconds_expires() {
        for name in VALID {
            let v = load_vector(name);
            let ts = timestamp_of(&v);
            assert_eq!(verify_vector(&v, ts + 300), Ok(()));
            assert_eq!(verify_vector(&v, ts - 300), Ok(()));
            assert_eq!(verify_vector(&v, ts + 301), Err(Tc3Error::SignatureExpire));
            assert_eq!(verify_vector(&v, ts - 301), Err(Tc3Error::SignatureExpire));
        }
    }

    #[test]
    fn lower_cased_header_values_are_accepted() {
        let mut v = load_vector("03-intl-post-json.http");
        let now = timestamp_of(&v);
        // Re-sign with lower-cased values the way Tencent's spec does, send as-is.
        v.headers.insert("content-type", "Application/JSON".parse().unwrap());
        let hash = payload_hash(&v.headers, &v.body);
        let mut lowered = v.headers.clone();
        lowered.insert("content-type", "application/json".parse().unwrap());
        let signer = Signer::new("AKIDtestSecretId", "testSecretKey", "faceid");
        let authorization = signer.authorization(&SignedRequest {
            method: "POST",
            query: "",
            headers: &lowered,
            payload_hash_hex: hash.as_str(),
            timestamp: now,
        });
        v.headers.insert("authorization", authorization.parse().unwrap());
        assert_eq!(verify_vector(&v, now), Ok(()));
    }

    #[test]
    fn signer_reproduces_the_sdk_signature() {
        let v = load_vector("03-intl-post-json.http");
        let now = timestamp_of(&v);
        let hash = payload_hash(&v.headers, &v.body);
        let signer = Signer::new("AKIDtestSecretId", "testSecretKey", "faceid");
        let authorization = signer.authorization(&SignedRequest {
            method: "POST",
            query: "",
            headers: &v.headers,
            payload_hash_hex: hash.as_str(),
            timestamp: now,
        });
        assert_eq!(authorization, v.headers.get("authorization").unwrap().to_str().unwrap());
    }

    #[test]
    fn malformed_authorization_is_rejected() {
        let sig = "a".repeat(64);
        let bad = [
            String::new(),
            "TC3-HMAC-SHA1 Credential=a/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature=x".into(),
            format!("TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid, SignedHeaders=host, Signature={sig}"),
            format!(
                "TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid/tc3_request/x, SignedHeaders=host, Signature={sig}"
            ),
            format!("TC3-HMAC-SHA256 Credential=a/26-11-26/faceid/tc3_request, SignedHeaders=host, Signature={sig}"),
            format!("TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid/tc3_request, SignedHeaders=Host, Signature={sig}"),
            format!(
                "TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature={sig}, Signature={sig}"
            ),
            "TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature=zz".into(),
            format!(
                "TC3-HMAC-SHA256 Credential=a/2026-11-26/faceid/tc3_request, SignedHeaders={}, Signature={sig}",
                "a;".repeat(5_000_000)
            ),
        ];
        for value in bad {
            assert!(
                matches!(parse_authorization(&value), Err(Tc3Error::InvalidAuthorization(_))),
                "{}",
                &value[..value.len().min(80)]
            );
        }
    }

    #[test]
    fn the_sdks_layout_parses_as_the_general_parser_parses_it_or_goes_to_it() {
        let sig = "0123456789abcdefABCDEF".repeat(3)[..64].to_string();
        let mut values: Vec<String> = [
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2026-11-26/faceid/tc3_request, SignedHeaders=content-type;host",
            "AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host",
            // Each of these must go to the general parser: spacing, order, a comma or
            // '=' hidden in a part, a repeated or smuggled field.
            "AKIDa/2026-11-26/faceid/tc3_request,SignedHeaders=host",
            "AKIDa/2026-11-26/faceid/tc3_request,  SignedHeaders=host ",
            "AKIDa, Signature=x, SignedHeaders=y/2026-11-26/faceid/tc3_request, SignedHeaders=host",
            "AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature=x, SignedHeaders=host",
            "AKIDa/2026-11-26/face,id/tc3_request, SignedHeaders=host",
            "AKID=a/2026-11-26/faceid/tc3_request, SignedHeaders=host",
            "AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host;Host",
            "AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=",
            "/2026-11-26/faceid/tc3_request, SignedHeaders=host",
        ]
        .iter()
        .map(|front| format!("Credential={front}, Signature={sig}"))
        .collect();
        values.push(format!(
            "SignedHeaders=host, Credential=AKIDa/2026-11-26/faceid/tc3_request, Signature={sig}"
        ));
        values.push(format!(
            "Credential=AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature={sig}, Signature={sig}"
        ));
        values.push(format!(
            "Credential=AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature={sig} "
        ));
        values.push(format!(
            "Credential=AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders=host, Signature=é{}",
            &sig[2..]
        ));
        for vector in VALID {
            let vector = load_vector(vector);
            let value = vector.headers["authorization"].to_str().unwrap();
            values.push(value.strip_prefix("TC3-HMAC-SHA256 ").unwrap().to_string());
        }
        let mut fast = 0;
        for rest in &values {
            let general = parse_fields(rest);
            if let Some(parsed) = parse_as_the_sdks_write_it(rest) {
                fast += 1;
                assert_eq!(Ok(parsed), general, "{rest}");
            }
            assert_eq!(
                parse_authorization(&format!("TC3-HMAC-SHA256 {rest}")),
                general,
                "{rest}"
            );
        }
        // The two layouts above and every SDK's.
        assert_eq!(fast, 2 + VALID.len());
    }

    #[test]
    fn signed_header_lists_are_judged_as_split_names_are() {
        // The rule, stated plainly: 1 to 32 names of [a-z0-9_-]+, joined by ';'.
        fn by_names(list: &str) -> bool {
            let names: Vec<&str> = list.split(';').collect();
            !list.is_empty()
                && names.len() <= MAX_SIGNED_HEADERS
                && names.iter().all(|name| {
                    !name.is_empty()
                        && name
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
                })
        }
        let thirty_two = vec!["x"; 32].join(";");
        let thirty_three = vec!["x"; 33].join(";");
        let lists = [
            "",
            ";",
            "host",
            "content-type;host",
            "content-type;host;x-tc-action",
            "a_b;c-d;e0",
            ";host",
            "host;",
            "host;;x",
            "Host",
            "ho st",
            "host\t",
            "hösт",
            "x-tc-action;HOST",
            "-;_",
            &thirty_two,
            &thirty_three,
        ];
        for list in lists {
            assert_eq!(validate_signed_headers(list).is_ok(), by_names(list), "{list:?}");
        }
    }

    #[test]
    fn utc_date_agrees_with_the_time_crate() {
        let mut t = -86_400 * 365 * 2;
        while t < 4_102_444_800 {
            let expected = time::OffsetDateTime::from_unix_timestamp(t).unwrap().date();
            let expected = format!(
                "{:04}-{:02}-{:02}",
                expected.year(),
                expected.month() as u8,
                expected.day()
            );
            assert_eq!(utc_date(t).as_deref(), Some(expected.as_str()), "{t}");
            t += 86_399;
        }
        assert_eq!(utc_date(1_709_164_800).as_deref(), Some("2024-02-29"));
        assert_eq!(utc_date(253_402_300_800), None);
    }

    #[test]
    fn utc_date_crosses_midnight() {
        assert_eq!(utc_date(1795667472).as_deref(), Some("2026-11-26"));
        assert_eq!(utc_date(1795651199).as_deref(), Some("2026-11-25"));
        assert_eq!(utc_date(1795651200).as_deref(), Some("2026-11-26"));
    }

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
    fn the_string_to_sign_is_the_documented_text_on_the_stack_or_not() {
        let canonical = sha256(Engine::Sha2, b"canonical request");
        let long_service = "s".repeat(STRING_TO_SIGN_ON_STACK);
        // Short and long services (the long one past the stack buffer), a timestamp of
        // one digit, the usual ten, and a negative one (refused elsewhere, still written).
        for (timestamp, service) in [
            (1_764_201_600, "faceid"),
            (7, "faceid"),
            (-1_764_201_600, "faceid"),
            (1_764_201_600, long_service.as_str()),
        ] {
            for engine in [Engine::Ring, Engine::Sha2] {
                let key = SigningKey::derive_for(engine, "secret", "2025-11-27", service);
                let text = format!(
                    "TC3-HMAC-SHA256\n{timestamp}\n2025-11-27/{service}/tc3_request\n{}",
                    HexDigest::from_digest(&canonical).as_str()
                );
                assert_eq!(
                    string_to_sign_mac(&key, timestamp, "2025-11-27", service, &canonical),
                    key.sign(text.as_bytes()),
                    "{engine:?} {timestamp} {}",
                    service.len()
                );
            }
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

    #[test]
    fn the_per_thread_date_cache_gives_what_the_conversion_gives() {
        // Two days in turn (as the meter's time zone and UTC ask), then a third, then
        // back: each answer must be that day's, whichever slot held it.
        let days = [20_418i64, 20_419, 20_418, 20_419, 20_420, 20_418, 20_420, -1, 20_419];
        for day in days {
            for second in [0, 43_200, 86_399] {
                assert_eq!(
                    utc_date_bytes(day * 86_400 + second),
                    civil_date_bytes(day),
                    "day {day}"
                );
            }
        }
        assert_eq!(utc_date_bytes(-86_400), Some(*b"1969-12-31"));
        assert_eq!(utc_date_bytes(253_402_300_800), None, "year 10000");
    }

    #[test]
    fn ascii_splits_and_hex_decoding_agree_with_the_standard_ones() {
        for text in ["", ",", "a", "a,b", ",a,,b,", "Credential=x/y, Signature=z", "é,ü,,"] {
            let ours: Vec<&str> = split_ascii(text, b',').collect();
            let std: Vec<&str> = text.split(',').collect();
            assert_eq!(ours, std, "{text:?}");
            assert_eq!(split_once_ascii(text, b','), text.split_once(','), "{text:?}");
        }
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
        // digests and MACs wherever it would be the one chosen.
        for size in [0usize, 1, 55, 56, 63, 64, 65, 300, 1024, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let ring = sha256(Engine::Ring, &data);
            assert_eq!(ring, sha256(Engine::Sha2, &data), "{size} bytes");
            assert_eq!(hex::encode(ring), HexDigest::of(&data).as_str());
            let keys =
                [Engine::Ring, Engine::Sha2].map(|e| SigningKey::derive_for(e, "secret", "2026-11-26", "faceid"));
            let [by_ring, by_sha2] = [keys[0].sign(&data), keys[1].sign(&data)];
            assert_eq!(by_ring, by_sha2, "{size} bytes");
            let mut streamed = keys[1].start();
            for chunk in data.chunks(7) {
                streamed.update(chunk);
            }
            assert_eq!(streamed.finish(), by_ring);
        }
        assert_eq!(
            hex::encode(sha256(Engine::Sha2, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
