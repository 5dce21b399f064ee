//! Phase 2 of the pipeline: who is calling. Three ways in: TC3-HMAC-SHA256 (the
//! SDKs), `Authorization: Bearer <API key>` (plain HTTP clients), and the legacy v1
//! form signature. Split in two so that a caller with no valid credential is refused
//! before its body is read: `identify` looks at the headers only, `verify` checks the
//! signature over the body. Credentials come from the in-memory mirror only, through
//! the connection's `CallerCache`. Must not decide anything about the account's state
//! or the action.

use crate::proxy::body::ReceivedBody;
use crate::proxy::fields::{Known, RequestFields, visible_ascii};
use crate::sigv1::{self, Params};
use crate::state::mirror::{CredentialEntry, StateMirror};
use crate::tc3::{self, SignedRequest, SigningKey, Tc3Error};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidAuthorization(&'static str),
    #[error("the SecretId or API key is not known")]
    SecretIdNotFound,
    #[error("the credential is disabled or revoked")]
    InvalidSecretId,
    #[error("the request signature does not match")]
    SignatureFailure,
    #[error("the request timestamp is more than 300 s away from the server time")]
    SignatureExpire,
}

impl From<Tc3Error> for AuthError {
    fn from(e: Tc3Error) -> Self {
        match e {
            Tc3Error::InvalidAuthorization(why) => AuthError::InvalidAuthorization(why),
            Tc3Error::SignatureFailure => AuthError::SignatureFailure,
            Tc3Error::SignatureExpire => AuthError::SignatureExpire,
        }
    }
}

const MAX_API_KEY_LEN: usize = 256;

/// The credential a connection called with last. SDKs keep their connections alive
/// and sign every call on one with the same SecretId, so the next call finds it here
/// instead of in the mirror: no map shard lock, no reference count and no signing-key
/// lock, each a write to a cache line that every data-plane thread writes when one
/// tenant is busy. It holds while the mirror's credential generation is unchanged
/// (an entry replaced in the mirror bumps it); revocation and the account's state are
/// read from the shared entry on every call, so they still take effect at once.
#[derive(Default)]
pub struct CallerCache {
    credential: Option<Arc<CredentialEntry>>,
    generation: u64,
    /// The API key hash `credential` was found by, if it was.
    api_key_hash: Option<[u8; 32]>,
    /// `credential`'s TC3 signing key for faceid on this credential date.
    signing_key: Option<([u8; 10], SigningKey)>,
}

impl CallerCache {
    fn hold(&mut self, found: Option<Arc<CredentialEntry>>, generation: u64) {
        let same = match (&self.credential, &found) {
            (Some(held), Some(found)) => Arc::ptr_eq(held, found),
            _ => false,
        };
        if !same {
            self.signing_key = None;
            self.api_key_hash = None;
        }
        self.credential = found;
        self.generation = generation;
    }

    fn find_by_secret_id(&mut self, mirror: &StateMirror, secret_id: &str) -> Result<&CredentialEntry, AuthError> {
        // Read before the lookup: an entry replaced in between then fails the next check.
        let generation = mirror.credential_generation();
        let held = generation == self.generation
            && self
                .credential
                .as_ref()
                .is_some_and(|held| held.secret_id() == secret_id);
        if !held {
            self.hold(mirror.by_secret_id(secret_id), generation);
        }
        usable(self.credential.as_deref())
    }

    fn find_by_api_key_hash(&mut self, mirror: &StateMirror, hash: [u8; 32]) -> Result<&CredentialEntry, AuthError> {
        let generation = mirror.credential_generation();
        let held = generation == self.generation && self.credential.is_some() && self.api_key_hash == Some(hash);
        if !held {
            self.hold(mirror.by_api_key_hash(&hash), generation);
            self.api_key_hash = Some(hash);
        }
        usable(self.credential.as_deref())
    }

    /// The credential found last (by `identify` or `verify`).
    fn held(&self) -> &CredentialEntry {
        self.credential.as_deref().expect("found before it is used")
    }

    /// The held credential's signing key for `date` and `service`; derived once a day
    /// per credential (in the mirror's entry) and once a day per connection here.
    fn signing_key(&mut self, date: &str, service: &str) -> Cow<'_, SigningKey> {
        let credential = self.credential.as_deref().expect("found before it is used");
        match <[u8; 10]>::try_from(date.as_bytes()) {
            Ok(date_key) if service == "faceid" => {
                if self
                    .signing_key
                    .as_ref()
                    .is_none_or(|(held_date, _)| *held_date != date_key)
                {
                    self.signing_key = Some((date_key, credential.signing_key(date, service)));
                }
                Cow::Borrowed(&self.signing_key.as_ref().expect("set above").1)
            }
            // Not what the SDKs send for eKYC: left to the entry, which derives it.
            _ => Cow::Owned(credential.signing_key(date, service)),
        }
    }
}

/// The caller as known from the headers alone (borrowing them: nothing is copied). Its
/// credential, if the headers name one, is held in the connection's `CallerCache`.
pub enum Identified<'h> {
    Tc3 {
        auth: tc3::Authorization<'h>,
        timestamp: i64,
    },
    ApiKey,
    /// No `Authorization` header: maybe a v1 call; its credential is in the body.
    V1,
}

impl Identified<'_> {
    /// Whether the call's body will be hashed: to check a TC3 signature, or to sign
    /// an API-key call for the upstream; not when the client signed `UNSIGNED-PAYLOAD`.
    pub fn hashes_body(&self, fields: &RequestFields) -> bool {
        matches!(self, Identified::Tc3 { .. } | Identified::ApiKey) && !tc3::is_unsigned_payload(fields)
    }
}

/// A caller whose signature (or key) has been checked.
pub struct Authenticated<'c> {
    pub credential: &'c CredentialEntry,
    pub method: AuthMethod,
}

pub enum AuthMethod {
    /// The payload hash the client signed, reused when re-signing to the upstream.
    Tc3 {
        payload_hash: tc3::HexDigest,
    },
    ApiKey,
    /// The call's parameters; `Action` among them.
    V1 {
        params: Params,
    },
}

fn single_authorization(fields: &RequestFields) -> Result<Option<&str>, AuthError> {
    let Some(first) = fields.get(Known::Authorization) else {
        return Ok(None);
    };
    if fields.is_repeated(Known::Authorization) {
        return Err(AuthError::InvalidAuthorization("more than one Authorization header"));
    }
    visible_ascii(first).map(Some).ok_or(AuthError::InvalidAuthorization(
        "the Authorization header is not visible ASCII",
    ))
}

fn usable(credential: Option<&CredentialEntry>) -> Result<&CredentialEntry, AuthError> {
    let credential = credential.ok_or(AuthError::SecretIdNotFound)?;
    if credential.is_revoked() {
        return Err(AuthError::InvalidSecretId);
    }
    Ok(credential)
}

/// Phase 2a: parse the credential out of the headers and find it. `service` is the
/// one this endpoint serves (the upstream's), which a TC3 credential scope must name
/// (or the `Host`'s first label: see `tc3::check_service`).
pub fn identify<'h>(
    fields: &'h RequestFields,
    mirror: &StateMirror,
    callers: &mut CallerCache,
    now: i64,
    service: &str,
) -> Result<Identified<'h>, AuthError> {
    let Some(value) = single_authorization(fields)? else {
        return Ok(Identified::V1);
    };
    if value.starts_with(tc3::ALGORITHM) {
        let auth = tc3::parse_authorization(value)?;
        tc3::check_signed_headers(&auth)?;
        tc3::check_service(&auth, service, fields.get_str(Known::Host))?;
        callers.find_by_secret_id(mirror, auth.secret_id)?;
        let timestamp = tc3::request_timestamp(fields)?;
        tc3::check_time(&auth, timestamp, now)?;
        return Ok(Identified::Tc3 { auth, timestamp });
    }
    if let Some(key) = strip_bearer(value) {
        if key.is_empty() || key.len() > MAX_API_KEY_LEN {
            return Err(AuthError::InvalidAuthorization("the API key is empty or too long"));
        }
        callers.find_by_api_key_hash(mirror, crate::crypto::api_key_hash(key))?;
        return Ok(Identified::ApiKey);
    }
    Err(AuthError::InvalidAuthorization(
        "Authorization must be TC3-HMAC-SHA256 or Bearer <API key>",
    ))
}

/// The credential of `Bearer <credential>`, trimmed; the scheme's name is matched
/// without regard to case (RFC 9110 §11.1).
pub fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| credential.trim())
}

/// Phase 2b: check the signature over the whole request. `callers` is the one
/// `identify` was given.
pub fn verify<'c>(
    identified: Identified<'_>,
    parts: &http::request::Parts,
    fields: &RequestFields,
    body: &ReceivedBody,
    mirror: &StateMirror,
    callers: &'c mut CallerCache,
    now: i64,
) -> Result<Authenticated<'c>, AuthError> {
    match identified {
        Identified::ApiKey => Ok(Authenticated {
            credential: callers.held(),
            method: AuthMethod::ApiKey,
        }),
        Identified::Tc3 { auth, timestamp } => {
            let payload_hash = tc3::payload_hash_of(fields, &body.bytes, body.sha256.as_ref());
            let request = SignedRequest {
                method: parts.method.as_str(),
                query: parts.uri.query().unwrap_or(""),
                headers: fields,
                payload_hash_hex: payload_hash.as_str(),
                timestamp,
            };
            tc3::verify_signature(&auth, &request, &callers.signing_key(auth.date, auth.service))?;
            Ok(Authenticated {
                credential: callers.held(),
                method: AuthMethod::Tc3 { payload_hash },
            })
        }
        Identified::V1 => {
            let source = if parts.method == http::Method::GET {
                parts.uri.query().unwrap_or("").as_bytes()
            } else {
                &body.bytes
            };
            let params = Params::parse(source)?;
            if !sigv1::looks_like_v1(&params) {
                return Err(AuthError::InvalidAuthorization("the Authorization header is missing"));
            }
            let credential = callers.find_by_secret_id(mirror, params.require("SecretId")?)?;
            sigv1::check_time(&params, now)?;
            let host = fields
                .get_str(Known::Host)
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            let target = sigv1::Target {
                method: parts.method.as_str(),
                host,
                path: parts.uri.path(),
            };
            sigv1::verify(target, &params, credential.secret_key())?;
            Ok(Authenticated {
                credential,
                method: AuthMethod::V1 { params },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::store::records::{CredentialRecord, CredentialStatus};

    fn mirror() -> StateMirror {
        StateMirror::new(Arc::new(MasterKey::parse(&"42".repeat(32)).unwrap()))
    }

    fn credential(
        m: &StateMirror,
        account: &str,
        secret_key: &str,
        version: i64,
        status: CredentialStatus,
    ) -> CredentialRecord {
        CredentialRecord {
            secret_id: "AKIDa".into(),
            account_id: account.into(),
            secret_key_sealed: m.master_key().seal(secret_key, account),
            api_key_hash: hex::encode(crate::crypto::api_key_hash("ak-a")),
            status,
            created_at: 0,
            revoked_at: None,
            version,
        }
    }

    fn signs_like(callers: &mut CallerCache, secret_key: &str, date: &str) -> bool {
        callers.signing_key(date, "faceid").sign(b"x") == SigningKey::derive(secret_key, date, "faceid").sign(b"x")
    }

    #[test]
    fn a_held_credential_follows_revocation_replacement_and_the_date() {
        let m = mirror();
        m.apply_credential(&credential(&m, "acme", "key-1", 1, CredentialStatus::Active))
            .unwrap();
        let mut callers = CallerCache::default();
        assert_eq!(callers.find_by_secret_id(&m, "AKIDa").unwrap().account().id(), "acme");
        assert!(signs_like(&mut callers, "key-1", "2026-11-26"));
        assert!(signs_like(&mut callers, "key-1", "2026-11-27"));

        // Revoked in place: the next call on the connection is refused.
        m.apply_credential(&credential(&m, "acme", "key-1", 2, CredentialStatus::Revoked))
            .unwrap();
        assert_eq!(
            callers.find_by_secret_id(&m, "AKIDa").err(),
            Some(AuthError::InvalidSecretId)
        );

        // Replaced in the mirror (a new entry under the same SecretId): the held one
        // and its signing key are let go.
        m.apply_credential(&credential(&m, "other", "key-2", 3, CredentialStatus::Active))
            .unwrap();
        assert_eq!(callers.find_by_secret_id(&m, "AKIDa").unwrap().account().id(), "other");
        assert!(signs_like(&mut callers, "key-2", "2026-11-27"));

        // Another SecretId on the same connection is looked up, not taken for the held one.
        assert_eq!(
            callers.find_by_secret_id(&m, "AKIDb").err(),
            Some(AuthError::SecretIdNotFound)
        );
        assert_eq!(callers.find_by_secret_id(&m, "AKIDa").unwrap().account().id(), "other");
    }

    #[test]
    fn the_body_is_hashed_for_tc3_and_api_keys_unless_the_payload_is_unsigned() {
        let value = format!(
            "TC3-HMAC-SHA256 Credential=AKIDa/2026-11-27/faceid/tc3_request, SignedHeaders=content-type;host, Signature={}",
            "0".repeat(64)
        );
        let auth = tc3::parse_authorization(&value).unwrap();
        let signed = RequestFields::default();
        let mut unsigned_headers = http::HeaderMap::new();
        unsigned_headers.insert("x-tc-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        let unsigned = RequestFields::from_header_map(&unsigned_headers);
        let tc3 = Identified::Tc3 { auth, timestamp: 1 };
        assert!(tc3.hashes_body(&signed));
        assert!(!tc3.hashes_body(&unsigned));
        assert!(Identified::ApiKey.hashes_body(&signed));
        assert!(!Identified::ApiKey.hashes_body(&unsigned));
        assert!(!Identified::V1.hashes_body(&signed));
    }

    #[test]
    fn a_held_api_key_credential_answers_only_its_own_key() {
        let m = mirror();
        m.apply_credential(&credential(&m, "acme", "key-1", 1, CredentialStatus::Active))
            .unwrap();
        let mut callers = CallerCache::default();
        let a = crate::crypto::api_key_hash("ak-a");
        assert_eq!(callers.find_by_api_key_hash(&m, a).unwrap().secret_id(), "AKIDa");
        assert_eq!(callers.find_by_api_key_hash(&m, a).unwrap().secret_id(), "AKIDa");
        assert_eq!(
            callers
                .find_by_api_key_hash(&m, crate::crypto::api_key_hash("ak-b"))
                .err(),
            Some(AuthError::SecretIdNotFound)
        );
        // Found by SecretId, the entry does not answer for an API key it was not found by.
        assert!(callers.find_by_secret_id(&m, "AKIDa").is_ok());
        assert_eq!(
            callers
                .find_by_api_key_hash(&m, crate::crypto::api_key_hash("ak-b"))
                .err(),
            Some(AuthError::SecretIdNotFound)
        );
        assert!(callers.find_by_api_key_hash(&m, a).is_ok());
    }
}
