//! The TC3 `Authorization` parser and the canonical-request builder behind
//! verification, on arbitrary input: line 1 is the Authorization value, line 2 the
//! query string, the rest `name: value` headers. Must never panic.
#![no_main]

use ekyc_gateway::tc3::{SignedRequest, SigningKey, parse_authorization, verify_signature};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let authorization = lines.next().unwrap_or("");
    let query = lines.next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
        {
            headers.append(name, value);
        }
    }
    if let Ok(auth) = parse_authorization(authorization) {
        let key = SigningKey::derive("fuzz-secret-key", auth.date, auth.service);
        let request = SignedRequest {
            method: "POST",
            query,
            headers: &headers,
            payload_hash_hex: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            timestamp: 1_700_000_000,
        };
        let _ = verify_signature(&auth, &request, &key);
    }
});
