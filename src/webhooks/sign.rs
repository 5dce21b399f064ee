//! The webhook signature, Stripe's scheme: `Ekyc-Signature: t=<unix seconds>,v1=<hex>`
//! where the hex is HMAC-SHA256 under the endpoint secret of `"<t>.<body>"`. The
//! timestamp is the attempt's, so a receiver can refuse old replays. Pure: must not do
//! I/O.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const HEADER: &str = "ekyc-signature";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp`.
pub fn header_value(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// A receiver's check: some `v1` matches (constant time) and `t` is within
/// `tolerance_seconds` of `now`. Several `v1` entries are allowed, as during a secret
/// rotation.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_seconds: i64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if (now - timestamp).abs() > tolerance_seconds {
        return false;
    }
    signatures
        .iter()
        .any(|signature| mac(secret, timestamp, body).verify_slice(signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let value = header_value("whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            value,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert!(verify("whsec_test", &value, br#"{"a":1}"#, 1_700_000_100, 300));
        assert!(
            !verify("whsec_test", &value, br#"{"a":2}"#, 1_700_000_100, 300),
            "body changed"
        );
        assert!(
            !verify("other", &value, br#"{"a":1}"#, 1_700_000_100, 300),
            "wrong secret"
        );
        assert!(
            !verify("whsec_test", &value, br#"{"a":1}"#, 1_700_000_301, 300),
            "too old"
        );
        assert!(!verify("whsec_test", "v1=00", br#"{"a":1}"#, 1_700_000_000, 300));
    }
}
