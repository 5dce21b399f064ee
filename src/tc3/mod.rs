//! TC3-HMAC-SHA256, Tencent Cloud API 3.0's request signature: parsing the
//! `Authorization` header, building the canonical request, deriving the signing key,
//! signing and verifying. Pure functions over bytes and strings; used by the proxy to
//! verify clients and re-sign to the upstream, and by the simulator to verify the
//! gateway. Must not look up credentials, read the clock or do I/O: callers pass
//! "now" and the key in.
//!
//! | file               | what it holds |
//! |--------------------|---------------|
//! | `authorization.rs` | the `Authorization` header, parsed and bounded |
//! | `canonical.rs`     | the canonical request and its hash, the headers it reads |
//! | `sign.rs`          | signing keys, the StringToSign, checks, verification, `Signer` |
//! | `hash.rs`          | SHA-256 (the engine per CPU), hex, the payload hash |
//!
//! This file only declares the modules, the error and the re-exports: every path
//! callers use is `crate::tc3::X`. It must not hold logic.

mod authorization;
mod canonical;
mod hash;
mod sign;

pub use authorization::{ALGORITHM, Authorization, parse_authorization};
pub use canonical::{SignedHeaders, SignedRequest, X_TC_ACTION};
pub(crate) use hash::Sha256;
pub use hash::{Engine, HexDigest, UNSIGNED_PAYLOAD, is_unsigned_payload, payload_hash, payload_hash_of, sha256_hex};
pub use sign::{
    MAX_SKEW_SECONDS, OutgoingCall, Signer, SigningKey, check_service, check_signed_headers, check_time,
    host_without_port, request_timestamp, signing_key, utc_date_bytes, verify_signature,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tc3Error {
    #[error("malformed Authorization: {0}")]
    InvalidAuthorization(&'static str),
    #[error("the request signature does not match")]
    SignatureFailure,
    #[error("the request timestamp is more than 300 s away from the server time")]
    SignatureExpire,
}

/// The SDKs' requests in `tests/vectors/tc3/`, shared by the tests of every file here.
#[cfg(test)]
mod vectors {
    use http::HeaderMap;

    /// A raw request from `tests/vectors/tc3/`.
    #[derive(Clone)]
    pub(super) struct Vector {
        pub method: String,
        pub query: String,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
    }

    pub(super) fn load_vector(name: &str) -> Vector {
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

    /// The vectors that verify as recorded.
    pub(super) const VALID: [&str; 5] = [
        "01-intl-post-sts-token.http",
        "02-intl-post-unsigned-payload.http",
        "03-intl-post-json.http",
        "04-intl-get-query.http",
        "05-cn-post-json-detectauth.http",
    ];

    pub(super) fn timestamp_of(v: &Vector) -> i64 {
        super::request_timestamp(&v.headers).unwrap()
    }
}
