//! The one place where typed errors from every pipeline phase become Tencent API 3.0
//! error codes, and where every answer the gateway makes itself is built: pipeline
//! errors (HTTP 200, Tencent JSON), early refusals (`Refusal`: 400 or 405 with their
//! close flag) and unreadable requests (`unreadable_request`: 400 or 431). Phases and
//! servers return or pass their own error types; they must not pick codes or write
//! error bodies themselves.

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
    UnsupportedProtocol,
    InsufficientBalance,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
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
        ErrorCode::UnsupportedProtocol,
        ErrorCode::InsufficientBalance,
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
            ErrorCode::UnsupportedProtocol => "UnsupportedProtocol",
            ErrorCode::InsufficientBalance => "InvalidAccount.InsufficientBalance",
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
    #[error("the clock is outside the years 0-9999")]
    ClockOutOfRange,
    #[error(
        "the account's balance and credit limit do not cover this call: top up, and calls are accepted again within seconds"
    )]
    CreditExhausted,
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
            GatewayError::Store(_) | GatewayError::ClockOutOfRange => ErrorCode::InternalError,
            GatewayError::RateLimited(_) => ErrorCode::RequestLimitExceeded,
            GatewayError::CreditExhausted => ErrorCode::InsufficientBalance,
            GatewayError::MissingAction => ErrorCode::MissingParameter,
            GatewayError::InvalidParameter(_) => ErrorCode::InvalidParameter,
            GatewayError::UnknownAction => ErrorCode::InvalidAction,
            GatewayError::Forward(ForwardError::ResponseTooLarge { .. }) => ErrorCode::ResponseSizeLimitExceeded,
            GatewayError::Forward(ForwardError::Connect(_) | ForwardError::Timeout(_) | ForwardError::Protocol(_)) => {
                ErrorCode::InternalError
            }
        }
    }

    /// What the client is told: the error itself, or for a failure inside the
    /// platform (the store, the upstream, the connection) a plain sentence, since its
    /// detail names internals. The detail goes to the log under the answer's RequestId.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        let plain = match self {
            GatewayError::Store(_) | GatewayError::ClockOutOfRange => {
                "an internal error occurred; the operator can trace it by this RequestId"
            }
            GatewayError::Forward(ForwardError::Connect(_)) => "the eKYC service could not be reached; try again later",
            GatewayError::Forward(ForwardError::Timeout(_)) => {
                "the eKYC service did not answer in time; try again later"
            }
            GatewayError::Forward(ForwardError::Protocol(_)) => {
                "the eKYC service's answer could not be read; try again later"
            }
            GatewayError::Body(BodyError::Read(_)) => "the request body could not be read",
            other => return other.to_string().into(),
        };
        plain.into()
    }

    /// Whether the client's message hides a detail that the log must keep.
    fn is_internal(&self) -> bool {
        matches!(
            self,
            GatewayError::Store(_)
                | GatewayError::ClockOutOfRange
                | GatewayError::Forward(
                    ForwardError::Connect(_) | ForwardError::Timeout(_) | ForwardError::Protocol(_)
                )
                | GatewayError::Body(BodyError::Read(_))
        )
    }

    /// The `reason` label of `ekyc_gateway_upstream_errors_total` for a failed
    /// upstream call; `None` for any other error.
    pub fn upstream_label(&self) -> Option<&'static str> {
        let GatewayError::Forward(error) = self else {
            return None;
        };
        Some(match error {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Protocol(_) => "protocol",
            ForwardError::ResponseTooLarge { .. } => "too_large",
        })
    }

    /// The HTTP 200 Tencent-format answer for this error, with a fresh RequestId; the
    /// detail of an internal failure is logged under that RequestId.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let request_id = tencent::new_request_id();
        let code = self.code().as_str();
        if self.is_internal() {
            tracing::warn!(request_id = %request_id, code, error = %self, "call failed inside the platform");
        } else {
            tracing::debug!(request_id = %request_id, code, error = %self, "request refused");
        }
        tencent::json_response(tencent::error_body(code, &self.public_message(), &request_id))
    }
}

/// An answer to a request refused for its form before the pipeline runs (a method
/// other than POST and GET, framing or headers that could route it elsewhere than it
/// was checked): a Tencent error body with its own HTTP status, and whether the
/// connection is closed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub status: http::StatusCode,
    pub message: &'static str,
    /// Nothing after this request on its connection can be trusted to be a request.
    pub close: bool,
}

impl Refusal {
    /// 405 with `Allow: GET, POST`, `UnsupportedProtocol`; the connection stays open.
    pub fn method_not_allowed(message: &'static str) -> Self {
        Refusal {
            code: ErrorCode::UnsupportedProtocol,
            status: http::StatusCode::METHOD_NOT_ALLOWED,
            message,
            close: false,
        }
    }

    /// 400, `InvalidParameter`, and the connection closed.
    pub fn invalid_parameter(message: &'static str) -> Self {
        Refusal {
            code: ErrorCode::InvalidParameter,
            status: http::StatusCode::BAD_REQUEST,
            message,
            close: true,
        }
    }

    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = tencent::error_body(self.code.as_str(), self.message, &tencent::new_request_id());
        let mut response: Response<ProxyBody> = tencent::json_response(body);
        *response.status_mut() = self.status;
        if self.status == http::StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, POST"));
        }
        if self.close {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        response
    }
}

/// The answer to bytes that cannot be read as a request (a malformed head: 400; a head
/// over the limits: 431): the status alone, no body, since nothing says the peer speaks
/// the API; the server closes the connection after it.
pub fn unreadable_request(status: http::StatusCode) -> Response<()> {
    let mut answer = Response::new(());
    *answer.status_mut() = status;
    answer
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
    use crate::proxy::pool::PoolError;
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
            (RateLimited::AccountQueries.into(), "RequestLimitExceeded"),
            (GatewayError::CreditExhausted, "InvalidAccount.InsufficientBalance"),
            (GatewayError::MissingAction, "MissingParameter"),
            (GatewayError::InvalidParameter("x"), "InvalidParameter"),
            (GatewayError::UnknownAction, "InvalidAction"),
            (
                ForwardError::Connect(PoolError::Connect("refused".into())).into(),
                "InternalError",
            ),
            (ForwardError::Timeout(Duration::from_secs(1)).into(), "InternalError"),
            (
                ForwardError::Protocol(PoolError::Protocol("bad".into())).into(),
                "InternalError",
            ),
            (GatewayError::ClockOutOfRange, "InternalError"),
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
    async fn internal_details_stay_out_of_the_answer() {
        let cases: Vec<(GatewayError, &str)> = vec![
            (GatewayError::Store("relation \"usage\" does not exist".into()), "usage"),
            (
                ForwardError::Protocol(PoolError::Protocol(
                    "malformed answer head: conflicting content-length".into(),
                ))
                .into(),
                "content-length",
            ),
            (
                ForwardError::Connect(PoolError::Connect("10.0.0.7:443: connection refused".into())).into(),
                "10.0.0.7",
            ),
            (BodyError::Read("connection reset by peer".into()).into(), "reset"),
        ];
        for (error, detail) in cases {
            assert!(error.to_string().contains(detail), "the log keeps the detail: {error}");
            let body = error.to_response().into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let message = v["Response"]["Error"]["Message"].as_str().unwrap();
            assert!(!message.contains(detail), "{message}");
            assert_eq!(v["Response"]["Error"]["Code"], error.code().as_str());
        }
        // A refusal the client can act on keeps its own words.
        let refused: GatewayError =
            AuthError::InvalidAuthorization("SignedHeaders must include content-type and host").into();
        assert!(refused.public_message().contains("SignedHeaders"));
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
