//! Phase 2 of the pipeline: who is calling. Three ways in: TC3-HMAC-SHA256 (the
//! SDKs), `Authorization: Bearer <API key>` (plain HTTP clients), and the legacy v1
//! form signature. Split in two so that a caller with no valid credential is refused
//! before its body is read: `identify` looks at the headers only, `verify` checks the
//! signature over the body. Credentials come from the in-memory mirror only. Must not
//! decide anything about the account's state or the action.

use crate::proxy::fields::{Known, RequestFields, visible_ascii};
use crate::sigv1::{self, Params};
use crate::state::mirror::{CredentialEntry, StateMirror};
use crate::tc3::{self, SignedRequest, Tc3Error};
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

/// The caller as known from the headers alone (borrowing them: nothing is copied).
pub enum Identified<'h> {
    Tc3 {
        credential: Arc<CredentialEntry>,
        auth: tc3::Authorization<'h>,
        timestamp: i64,
    },
    ApiKey(Arc<CredentialEntry>),
    /// No `Authorization` header: maybe a v1 call; its credential is in the body.
    V1,
}

/// A caller whose signature (or key) has been checked.
pub struct Authenticated {
    pub credential: Arc<CredentialEntry>,
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

fn usable(credential: Option<Arc<CredentialEntry>>) -> Result<Arc<CredentialEntry>, AuthError> {
    let credential = credential.ok_or(AuthError::SecretIdNotFound)?;
    if credential.is_revoked() {
        return Err(AuthError::InvalidSecretId);
    }
    Ok(credential)
}

/// Phase 2a: parse the credential out of the headers and find it.
pub fn identify<'h>(fields: &'h RequestFields, mirror: &StateMirror, now: i64) -> Result<Identified<'h>, AuthError> {
    let Some(value) = single_authorization(fields)? else {
        return Ok(Identified::V1);
    };
    if value.starts_with(tc3::ALGORITHM) {
        let auth = tc3::parse_authorization(value)?;
        let credential = usable(mirror.by_secret_id(auth.secret_id))?;
        let timestamp = tc3::request_timestamp(fields)?;
        tc3::check_time(&auth, timestamp, now)?;
        return Ok(Identified::Tc3 {
            credential,
            auth,
            timestamp,
        });
    }
    if let Some(key) = value.strip_prefix("Bearer ") {
        let key = key.trim();
        if key.is_empty() || key.len() > MAX_API_KEY_LEN {
            return Err(AuthError::InvalidAuthorization("the API key is empty or too long"));
        }
        let credential = usable(mirror.by_api_key_hash(&crate::crypto::api_key_hash(key)))?;
        return Ok(Identified::ApiKey(credential));
    }
    Err(AuthError::InvalidAuthorization(
        "Authorization must be TC3-HMAC-SHA256 or Bearer <API key>",
    ))
}

/// Phase 2b: check the signature over the whole request.
pub fn verify(
    identified: Identified<'_>,
    parts: &http::request::Parts,
    fields: &RequestFields,
    body: &[u8],
    mirror: &StateMirror,
    now: i64,
) -> Result<Authenticated, AuthError> {
    match identified {
        Identified::ApiKey(credential) => Ok(Authenticated {
            credential,
            method: AuthMethod::ApiKey,
        }),
        Identified::Tc3 {
            credential,
            auth,
            timestamp,
        } => {
            let payload_hash = tc3::payload_hash(fields, body);
            let request = SignedRequest {
                method: parts.method.as_str(),
                query: parts.uri.query().unwrap_or(""),
                headers: fields,
                payload_hash_hex: payload_hash.as_str(),
                timestamp,
            };
            let key = credential.signing_key(auth.date, auth.service);
            tc3::verify_signature(&auth, &request, &key)?;
            Ok(Authenticated {
                credential,
                method: AuthMethod::Tc3 { payload_hash },
            })
        }
        Identified::V1 => {
            let source = if parts.method == http::Method::GET {
                parts.uri.query().unwrap_or("").as_bytes()
            } else {
                body
            };
            let params = Params::parse(source)?;
            if !sigv1::looks_like_v1(&params) {
                return Err(AuthError::InvalidAuthorization("the Authorization header is missing"));
            }
            let credential = usable(mirror.by_secret_id(params.require("SecretId")?))?;
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
