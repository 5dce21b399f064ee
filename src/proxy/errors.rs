//! The one place where typed errors from every pipeline phase become Tencent API 3.0
//! error codes, and where the gateway's own error responses are built. Phases return
//! their own error types; they must not pick codes or write error bodies themselves.

use crate::proxy::auth::AuthError;
use crate::proxy::body::{BodyError, ProxyBody};
use crate::proxy::forward::ForwardError;
use crate::proxy::ratelimit::RateLimited;
use crate::state::mirror::AccountStanding;
use crate::tencent;
use http::Response;

/// Every code the gateway itself answers with. The order is the metrics label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidAuthorization,
    SecretIdNotFound,
    InvalidSecretId,
    SignatureFailure,
    SignatureExpire,
    Nonactivated,
    Arrears,
    OperationDenied,
    InvalidAction,
    MissingParameter,
    InvalidParameter,
    RequestLimitExceeded,
    RequestSizeLimitExceeded,
    ResponseSizeLimitExceeded,
    InvalidRequest,
    InternalError,
    ServiceUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::InvalidAuthorization,
        ErrorCode::SecretIdNotFound,
        ErrorCode::InvalidSecretId,
        ErrorCode::SignatureFailure,
        ErrorCode::SignatureExpire,
        ErrorCode::Nonactivated,
        ErrorCode::Arrears,
        ErrorCode::OperationDenied,
        ErrorCode::InvalidAction,
        ErrorCode::MissingParameter,
        ErrorCode::InvalidParameter,
        ErrorCode::RequestLimitExceeded,
        ErrorCode::RequestSizeLimitExceeded,
        ErrorCode::ResponseSizeLimitExceeded,
        ErrorCode::InvalidRequest,
        ErrorCode::InternalError,
        ErrorCode::ServiceUnavailable,
    ];

    /// The code exactly as Tencent spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidAuthorization => "AuthFailure.InvalidAuthorization",
            ErrorCode::SecretIdNotFound => "AuthFailure.SecretIdNotFound",
            ErrorCode::InvalidSecretId => "AuthFailure.InvalidSecretId",
            ErrorCode::SignatureFailure => "AuthFailure.SignatureFailure",
            ErrorCode::SignatureExpire => "AuthFailure.SignatureExpire",
            ErrorCode::Nonactivated => "UnauthorizedOperation.Nonactivated",
            ErrorCode::Arrears => "UnauthorizedOperation.Arrears",
            ErrorCode::OperationDenied => "OperationDenied",
            ErrorCode::InvalidAction => "InvalidAction",
            ErrorCode::MissingParameter => "MissingParameter",
            ErrorCode::InvalidParameter => "InvalidParameter",
            ErrorCode::RequestLimitExceeded => "RequestLimitExceeded",
            ErrorCode::RequestSizeLimitExceeded => "RequestSizeLimitExceeded",
            ErrorCode::ResponseSizeLimitExceeded => "ResponseSizeLimitExceeded",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why the gateway answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{}", standing_message(*.0))]
    Account(AccountStanding),
    #[error("the billing store could not answer: {0}")]
    Store(String),
    #[error("calls cannot be counted right now (usage counters are full); try again later")]
    MeterFull,
    #[error("account state is unavailable (the state cache has been unreachable for too long)")]
    StateStale,
    #[error("{0}")]
    InvalidParameter(&'static str),
    #[error("the X-TC-Action header is missing")]
    MissingAction,
    #[error("the action is not offered by this gateway")]
    UnknownAction,
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl GatewayError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::Body(BodyError::TooLarge { .. }) => ErrorCode::RequestSizeLimitExceeded,
            GatewayError::Body(BodyError::Timeout | BodyError::Read(_)) => ErrorCode::InvalidRequest,
            GatewayError::Auth(AuthError::InvalidAuthorization(_)) => ErrorCode::InvalidAuthorization,
            GatewayError::Auth(AuthError::SecretIdNotFound) => ErrorCode::SecretIdNotFound,
            GatewayError::Auth(AuthError::InvalidSecretId) => ErrorCode::InvalidSecretId,
            GatewayError::Auth(AuthError::SignatureFailure) => ErrorCode::SignatureFailure,
            GatewayError::Auth(AuthError::SignatureExpire) => ErrorCode::SignatureExpire,
            GatewayError::Account(AccountStanding::NotActivated) => ErrorCode::Nonactivated,
            GatewayError::Account(AccountStanding::Arrears) => ErrorCode::Arrears,
            // An enabled account never becomes an error; the arm keeps the match total.
            GatewayError::Account(AccountStanding::ManuallySuspended | AccountStanding::Enabled) => {
                ErrorCode::OperationDenied
            }
            GatewayError::StateStale | GatewayError::MeterFull => ErrorCode::ServiceUnavailable,
            GatewayError::Store(_) => ErrorCode::InternalError,
            GatewayError::RateLimited(_) => ErrorCode::RequestLimitExceeded,
            GatewayError::MissingAction => ErrorCode::MissingParameter,
            GatewayError::InvalidParameter(_) => ErrorCode::InvalidParameter,
            GatewayError::UnknownAction => ErrorCode::InvalidAction,
            GatewayError::Forward(ForwardError::ResponseTooLarge { .. }) => ErrorCode::ResponseSizeLimitExceeded,
            GatewayError::Forward(ForwardError::Connect(_) | ForwardError::Timeout(_) | ForwardError::Protocol(_)) => {
                ErrorCode::InternalError
            }
        }
    }

    /// The HTTP 200 Tencent-format answer for this error, with a fresh RequestId.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = tencent::error_body(self.code().as_str(), &self.to_string(), &tencent::new_request_id());
        tencent::json_response(body)
    }
}

fn standing_message(standing: AccountStanding) -> &'static str {
    match standing {
        AccountStanding::NotActivated => "the service is not activated for this account: call ActivateService first",
        AccountStanding::Arrears => "the account is suspended for arrears: pay the amount due to reactivate it",
        AccountStanding::ManuallySuspended | AccountStanding::Enabled => "the account is suspended by the operator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[test]
    fn each_error_maps_to_its_tencent_code() {
        let cases: Vec<(GatewayError, &str)> = vec![
            (BodyError::TooLarge { limit: 1 }.into(), "RequestSizeLimitExceeded"),
            (BodyError::Timeout.into(), "InvalidRequest"),
            (BodyError::Read("reset".into()).into(), "InvalidRequest"),
            (
                AuthError::InvalidAuthorization("x").into(),
                "AuthFailure.InvalidAuthorization",
            ),
            (AuthError::SecretIdNotFound.into(), "AuthFailure.SecretIdNotFound"),
            (AuthError::InvalidSecretId.into(), "AuthFailure.InvalidSecretId"),
            (AuthError::SignatureFailure.into(), "AuthFailure.SignatureFailure"),
            (AuthError::SignatureExpire.into(), "AuthFailure.SignatureExpire"),
            (
                GatewayError::Account(AccountStanding::NotActivated),
                "UnauthorizedOperation.Nonactivated",
            ),
            (
                GatewayError::Account(AccountStanding::Arrears),
                "UnauthorizedOperation.Arrears",
            ),
            (
                GatewayError::Account(AccountStanding::ManuallySuspended),
                "OperationDenied",
            ),
            (GatewayError::StateStale, "ServiceUnavailable"),
            (GatewayError::MeterFull, "ServiceUnavailable"),
            (GatewayError::Store("down".into()), "InternalError"),
            (RateLimited::Account.into(), "RequestLimitExceeded"),
            (RateLimited::Action.into(), "RequestLimitExceeded"),
            (GatewayError::MissingAction, "MissingParameter"),
            (GatewayError::InvalidParameter("x"), "InvalidParameter"),
            (GatewayError::UnknownAction, "InvalidAction"),
            (ForwardError::Connect("refused".into()).into(), "InternalError"),
            (ForwardError::Timeout(Duration::from_secs(1)).into(), "InternalError"),
            (ForwardError::Protocol("bad".into()).into(), "InternalError"),
            (
                ForwardError::ResponseTooLarge { limit: 1 }.into(),
                "ResponseSizeLimitExceeded",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code().as_str(), code, "{error:?}");
        }
    }

    #[test]
    fn codes_index_their_position() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
    }

    #[tokio::test]
    async fn error_response_has_the_shape_the_sdk_reads() {
        let response = GatewayError::UnknownAction.to_response();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Response"]["Error"]["Code"], "InvalidAction");
        assert!(v["Response"]["Error"]["Message"].as_str().unwrap().len() > 5);
        let id = v["Response"]["RequestId"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok());
    }
}
