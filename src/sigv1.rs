//! The legacy v1 signature (`SignatureMethod` HmacSHA1 or HmacSHA256), which some old
//! clients still send: every parameter, `Action` and `SecretId` included, in a form body
//! (POST) or the query string (GET), no `Authorization` header. Signed string:
//! `METHOD + Host + Path + "?" + k=v&…` over the decoded parameters sorted by name,
//! `Signature` excluded; the signature is base64(HMAC(SecretKey, string)).
//! Pure functions; must not look up credentials or read the clock.

use crate::tc3::{MAX_SKEW_SECONDS, Tc3Error};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};

/// The decoded parameters of a v1 request, in the order they came.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

const MAX_PARAMS: usize = 1000;

impl Params {
    pub fn parse(form: &[u8]) -> Result<Self, Tc3Error> {
        let mut params = Vec::new();
        for (k, v) in form_urlencoded::parse(form) {
            if params.len() == MAX_PARAMS {
                return Err(Tc3Error::InvalidAuthorization("too many parameters"));
            }
            params.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self(params))
    }

    /// The single value of `name`; a repeated name is refused (it would sign ambiguously).
    pub fn get(&self, name: &str) -> Result<Option<&str>, Tc3Error> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == name {
                if found.is_some() {
                    return Err(Tc3Error::InvalidAuthorization("a parameter is repeated"));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    pub fn require(&self, name: &str) -> Result<&str, Tc3Error> {
        self.get(name)?
            .ok_or(Tc3Error::InvalidAuthorization("a v1 signature parameter is missing"))
    }

    fn set(&mut self, name: &str, value: String) {
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.to_string(), value));
    }

    pub fn to_form(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.0 {
            form.append_pair(k, v);
        }
        form.finish()
    }
}

/// Where a v1 call is sent: part of what it signs.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
}

/// Whether a request without an `Authorization` header looks like a v1 call.
pub fn looks_like_v1(params: &Params) -> bool {
    params.0.iter().any(|(k, _)| k == "Signature") && params.0.iter().any(|(k, _)| k == "SecretId")
}

fn string_to_sign(target: Target<'_>, params: &Params) -> String {
    let Target { method, host, path } = target;
    let mut sorted: Vec<&(String, String)> = params.0.iter().filter(|(k, _)| k != "Signature").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::with_capacity(256);
    s.push_str(method);
    s.push_str(host);
    s.push_str(path);
    s.push('?');
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

fn mac(method: &str, key: &str, data: &str) -> Result<Vec<u8>, Tc3Error> {
    match method {
        "HmacSHA256" => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
            m.update(data.as_bytes());
            Ok(m.finalize().into_bytes().to_vec())
        }
        "HmacSHA1" => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
            m.update(data.as_bytes());
            Ok(m.finalize().into_bytes().to_vec())
        }
        _ => Err(Tc3Error::InvalidAuthorization(
            "SignatureMethod must be HmacSHA1 or HmacSHA256",
        )),
    }
}

/// The request's timestamp, checked against now; the caller then verifies.
pub fn check_time(params: &Params, now: i64) -> Result<(), Tc3Error> {
    let timestamp: i64 = params
        .require("Timestamp")?
        .parse()
        .map_err(|_| Tc3Error::InvalidAuthorization("Timestamp is not a number"))?;
    // `abs_diff`: `now - timestamp` overflows for a timestamp near i64::MIN, and the
    // wrapped difference would pass.
    if now.abs_diff(timestamp) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(Tc3Error::SignatureExpire);
    }
    Ok(())
}

/// Verifies the v1 signature in constant time.
pub fn verify(target: Target<'_>, params: &Params, secret_key: &str) -> Result<(), Tc3Error> {
    let signature_method = params.get("SignatureMethod")?.unwrap_or("HmacSHA1");
    let given = STANDARD
        .decode(params.require("Signature")?)
        .map_err(|_| Tc3Error::SignatureFailure)?;
    let expected = mac(signature_method, secret_key, &string_to_sign(target, params))?;
    if expected.len() == given.len() && subtle::ConstantTimeEq::ct_eq(&expected[..], &given[..]).into() {
        Ok(())
    } else {
        Err(Tc3Error::SignatureFailure)
    }
}

/// The same call signed by someone else (the platform, towards the upstream): new
/// SecretId, Timestamp and Nonce, no client `Token`, a fresh HmacSHA256 signature.
pub fn resign(target: Target<'_>, params: &Params, secret_id: &str, secret_key: &str, now: i64, nonce: u32) -> Params {
    let mut signed = params.clone();
    signed.0.retain(|(k, _)| k != "Token" && k != "Signature");
    signed.set("SecretId", secret_id.to_string());
    signed.set("Timestamp", now.to_string());
    signed.set("Nonce", nonce.to_string());
    signed.set("SignatureMethod", "HmacSHA256".to_string());
    let signature = mac("HmacSHA256", secret_key, &string_to_sign(target, &signed)).expect("known method");
    signed.set("Signature", STANDARD.encode(signature));
    signed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(method: &'a str, host: &'a str) -> Target<'a> {
        Target {
            method,
            host,
            path: "/",
        }
    }

    fn vector() -> (Params, String) {
        let path = format!(
            "{}/tests/vectors/tc3/06-v1-hmacsha256-form.http",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read(path).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (Params::parse(&raw[split + 4..]).unwrap(), "127.0.0.1:45957".into())
    }

    #[test]
    fn the_sdk_v1_vector_verifies() {
        let (params, host) = vector();
        assert!(looks_like_v1(&params));
        check_time(&params, 1795667473).unwrap();
        verify(t("POST", &host), &params, "testSecretKey").unwrap();
        assert_eq!(params.require("Action").unwrap(), "ApplyWebVerificationBizTokenIntl");
    }

    #[test]
    fn any_change_fails() {
        let (params, host) = vector();
        assert_eq!(
            verify(t("POST", "127.0.0.1:1"), &params, "testSecretKey"),
            Err(Tc3Error::SignatureFailure)
        );
        assert_eq!(
            verify(t("POST", &host), &params, "wrong"),
            Err(Tc3Error::SignatureFailure)
        );
        for i in 0..params.0.len() {
            if params.0[i].0 == "Signature" {
                continue;
            }
            let mut changed = params.clone();
            changed.0[i].1.push('x');
            assert!(
                verify(t("POST", &host), &changed, "testSecretKey").is_err(),
                "{}",
                params.0[i].0
            );
        }
        assert_eq!(check_time(&params, 1795667473 + 301), Err(Tc3Error::SignatureExpire));
        // Timestamps whose distance to now overflows an i64 are expired, not wrapped.
        for timestamp in [i64::MIN, i64::MIN + 1_795_667_473, i64::MAX] {
            let far = Params::parse(format!("Timestamp={timestamp}").as_bytes()).unwrap();
            assert_eq!(
                check_time(&far, 1_795_667_473),
                Err(Tc3Error::SignatureExpire),
                "{timestamp}"
            );
        }
    }

    #[test]
    fn resigned_calls_verify_with_the_new_key_and_keep_the_parameters() {
        let (params, _) = vector();
        let signed = resign(
            t("POST", "up:1"),
            &params,
            "AKIDplatform",
            "platform-key",
            1795667500,
            42,
        );
        verify(t("POST", "up:1"), &signed, "platform-key").unwrap();
        assert_eq!(signed.require("SecretId").unwrap(), "AKIDplatform");
        assert_eq!(signed.require("Extra").unwrap(), "ü");
        let reparsed = Params::parse(signed.to_form().as_bytes()).unwrap();
        verify(t("POST", "up:1"), &reparsed, "platform-key").unwrap();
    }

    #[test]
    fn sha1_is_supported_and_unknown_methods_refused() {
        let mut p = Params::default();
        p.set("SecretId", "AKID".into());
        p.set("SignatureMethod", "HmacSHA1".into());
        let s = string_to_sign(t("POST", "h"), &p);
        let sig = STANDARD.encode(mac("HmacSHA1", "k", &s).unwrap());
        p.set("Signature", sig);
        verify(t("POST", "h"), &p, "k").unwrap();
        p.set("SignatureMethod", "MD5".into());
        assert!(matches!(
            verify(t("POST", "h"), &p, "k"),
            Err(Tc3Error::InvalidAuthorization(_))
        ));
    }
}
