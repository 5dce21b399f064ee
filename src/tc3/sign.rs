//! Signing and verifying: the signing key (kSigning, its HMAC pads absorbed), the
//! StringToSign's MAC, the checks Tencent makes (time window and credential date,
//! required signed headers, the scope's service), the constant-time verification of
//! a client's signature as each SDK can have built it, and `Signer`, which re-signs
//! calls towards the upstream. Must not parse the `Authorization` header or build the
//! canonical request itself (`authorization.rs`, `canonical.rs`), look up
//! credentials or read the clock.

use super::Tc3Error;
use super::authorization::{ALGORITHM, Authorization, split_ascii};
use super::canonical::{Gathered, HeaderCase, SignedHeaders, SignedRequest, canonical_request_hash, signed_text};
use super::hash::{Engine, Sha256, digest_bytes, encode_hex_32};
use hmac::{Hmac, KeyInit, Mac as _};
use ring::hmac::{self as ring_hmac, HMAC_SHA256};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

/// Allowed distance between `X-TC-Timestamp` and now, as Tencent enforces it.
pub const MAX_SKEW_SECONDS: i64 = 300;

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

    pub(super) fn derive_for(engine: Engine, secret_key: &str, date: &str, service: &str) -> Self {
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
    // The Node SDKs cut the endpoint at its first dot, port and all: a dotless host
    // with a port (`localhost:8080`, a container's name) keeps the port in the scope.
    fn first_label(name: &str) -> &str {
        name.split('.').next().unwrap_or_default()
    }
    let labels = [first_label(bare), first_label(host)];
    if labels.iter().any(|label| !label.is_empty() && auth.service == *label) {
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
        out.extend_from_slice(&encode_hex_32(&mac));
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
    use crate::tc3::hash::{HexDigest, payload_hash, sha256};
    use crate::tc3::parse_authorization;
    use crate::tc3::vectors::{VALID, Vector, load_vector, timestamp_of};

    fn utc_date(timestamp: i64) -> Option<String> {
        utc_date_bytes(timestamp).map(|d| String::from_utf8_lossy(&d).into_owned())
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

    /// Vector 03 re-signed as a Node SDK signs it: `host` without the port, and the
    /// scope's service `service`; the request still carries `Host: 127.0.0.1:45957`.
    fn signed_like_node(service: &str) -> Vector {
        let mut v = load_vector("03-intl-post-json.http");
        let now = timestamp_of(&v);
        let hash = payload_hash(&v.headers, &v.body);
        let mut as_signed = v.headers.clone();
        as_signed.insert("host", "127.0.0.1".parse().unwrap());
        let authorization = Signer::new("AKIDtestSecretId", "testSecretKey", service).authorization(&SignedRequest {
            method: "POST",
            query: "",
            headers: &as_signed,
            payload_hash_hex: hash.as_str(),
            timestamp: now,
        });
        v.headers.insert("authorization", authorization.parse().unwrap());
        v
    }

    fn verify_with_service(v: &Vector, service: &str) -> Result<(), Tc3Error> {
        let value = v.headers.get("authorization").unwrap().to_str().unwrap();
        let auth = parse_authorization(value)?;
        let hash = payload_hash(&v.headers, &v.body);
        let request = SignedRequest {
            method: "POST",
            query: "",
            headers: &v.headers,
            payload_hash_hex: hash.as_str(),
            timestamp: timestamp_of(v),
        };
        verify_signature(
            &auth,
            &request,
            &SigningKey::derive("testSecretKey", auth.date, service),
        )
    }

    #[test]
    fn a_host_signed_without_its_port_verifies() {
        let v = signed_like_node("faceid");
        assert_eq!(verify_with_service(&v, "faceid"), Ok(()));
        // Only the port may be left out: another host name still fails.
        let mut other = v.clone();
        other.headers.insert("host", "127.0.0.2:45957".parse().unwrap());
        assert_eq!(verify_with_service(&other, "faceid"), Err(Tc3Error::SignatureFailure));
        // Sent without a port, the host is the signed one: verified as sent.
        let mut bare = v.clone();
        bare.headers.insert("host", "127.0.0.1".parse().unwrap());
        assert_eq!(verify_with_service(&bare, "faceid"), Ok(()));
        // And the exact form still verifies (the Python SDKs sign host:port).
        let exact = load_vector("03-intl-post-json.http");
        assert_eq!(verify_with_service(&exact, "faceid"), Ok(()));
    }

    #[test]
    fn a_scope_named_after_the_hosts_first_label_verifies() {
        // Node takes the service from the endpoint's first label: `127` here.
        let v = signed_like_node("127");
        assert_eq!(verify_with_service(&v, "127"), Ok(()));
        let value = v.headers.get("authorization").unwrap().to_str().unwrap().to_string();
        let auth = parse_authorization(&value).unwrap();
        assert_eq!(check_service(&auth, "faceid", Some("127.0.0.1:45957")), Ok(()));
        assert_eq!(check_service(&auth, "faceid", Some("127.0.0.1")), Ok(()));
        assert!(check_service(&auth, "faceid", Some("localhost:45957")).is_err());
        assert!(check_service(&auth, "faceid", None).is_err());
    }

    #[test]
    fn the_scope_must_name_this_endpoints_service() {
        let judge = |service: &str, host: Option<&str>| {
            let value = format!(
                "TC3-HMAC-SHA256 Credential=AKIDa/2026-11-26/{service}/tc3_request, SignedHeaders=content-type;host, Signature={}",
                "0".repeat(64)
            );
            let auth = parse_authorization(&value).unwrap();
            check_service(&auth, "faceid", host).is_ok()
        };
        assert!(judge("faceid", None));
        assert!(judge("faceid", Some("anything.example:1")));
        assert!(judge("localhost", Some("localhost:8080")));
        // Cut at the first dot as the Node SDKs cut the endpoint: a dotless host keeps
        // its port.
        assert!(judge("localhost:8080", Some("localhost:8080")));
        assert!(judge("ekyc-gateway:8080", Some("ekyc-gateway:8080")));
        assert!(!judge("localhost:8081", Some("localhost:8080")));
        assert!(judge("ekyc", Some("ekyc.example.com")));
        assert!(judge("ekyc", Some("ekyc.example.com:443")));
        assert!(!judge("cvm", Some("127.0.0.1:8080")));
        assert!(!judge("cvm", None));
        assert!(!judge("example", Some("ekyc.example.com")));
    }

    #[test]
    fn signed_headers_must_hold_content_type_and_host() {
        let with = |list: &str| {
            let value = format!(
                "TC3-HMAC-SHA256 Credential=AKIDa/2026-11-26/faceid/tc3_request, SignedHeaders={list}, Signature={}",
                "0".repeat(64)
            );
            check_signed_headers(&parse_authorization(&value).unwrap()).is_ok()
        };
        assert!(with("content-type;host"));
        assert!(with("content-type;host;x-tc-action"));
        assert!(with("host;x-tc-action;content-type"));
        assert!(!with("host"));
        assert!(!with("content-type"));
        assert!(!with("host;x-tc-action"));
        assert!(!with("content-typex;host"));
    }

    #[test]
    fn a_port_is_split_off_hosts_only() {
        assert_eq!(host_without_port("127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(host_without_port("localhost:1"), Some("localhost"));
        assert_eq!(host_without_port("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_without_port("faceid.tencentcloudapi.com"), None);
        assert_eq!(host_without_port("[::1]"), None);
        assert_eq!(host_without_port("::1"), None);
        assert_eq!(host_without_port("host:port"), None);
        assert_eq!(host_without_port("host:"), None);
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
    fn both_engines_sign_alike() {
        // As `hash.rs` checks the digests: the MACs of both engines, whole and streamed.
        for size in [0usize, 1, 55, 56, 63, 64, 65, 300, 1024, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
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
    }
}
