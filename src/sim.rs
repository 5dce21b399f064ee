//! `upstream-sim`: a stand-in for Tencent Cloud's eKYC API (faceid, 2018-03-01) for
//! tests, benchmarks and the demo. It verifies the TC3 signature it receives (so the
//! gateway's re-signing is tested for real), answers in Tencent's documented response
//! shapes, can add latency and API-level errors, and tallies what it served at
//! `GET /sim/stats`: the oracle billing is reconciled against. Must not depend on any
//! gateway state: it is the other side of the wire.

use crate::config::Limits;
use crate::tc3;
use crate::tencent;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use rand::RngExt;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Actions the simulator answers; anything else is `InvalidAction`, as Tencent does.
pub const SIM_ACTIONS: &[&str] = &[
    "ApplyWebVerificationBizTokenIntl",
    "DetectAuth",
    "GetFaceIdResultIntl",
    "GetFaceIdTokenIntl",
    "GetWebVerificationResultIntl",
    "IdCardOCRVerification",
    "IdCardVerification",
    "LivenessCompare",
    "PhoneVerification",
];

/// The API-level error the simulator injects; Tencent does not bill it.
pub const INJECTED_ERROR: &str = "FailedOperation.ImageDecodeFailed";

const MAX_BODY: usize = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    None,
    Fixed(Duration),
    Uniform(Duration, Duration),
}

impl std::str::FromStr for Latency {
    type Err = String;
    /// `0`, `20` (ms) or `5..50` (uniform, ms).
    fn from_str(s: &str) -> Result<Self, String> {
        let ms = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{v:?} is not a number of milliseconds"))
        };
        match s.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (ms(lo)?, ms(hi)?);
                if lo > hi {
                    return Err("the range must be low..high".into());
                }
                Ok(Latency::Uniform(Duration::from_millis(lo), Duration::from_millis(hi)))
            }
            None => match ms(s)? {
                0 => Ok(Latency::None),
                v => Ok(Latency::Fixed(Duration::from_millis(v))),
            },
        }
    }
}

#[derive(Clone)]
pub struct SimConfig {
    pub secret_id: String,
    pub secret_key: String,
    pub service: String,
    pub latency: Latency,
    /// Share of calls answered with `INJECTED_ERROR`, 0.0..=1.0.
    pub error_rate: f64,
    /// Keep the headers of the last request for `GET /sim/last-request` (tests).
    pub record_last_request: bool,
    /// Serve HTTPS with this certificate (tests of an https upstream).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// "Now" for the signature skew check (tests move it with the gateway's clock).
    pub clock: crate::clock::SharedClock,
}

impl SimConfig {
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            secret_key: secret_key.into(),
            service: "faceid".into(),
            latency: Latency::None,
            error_rate: 0.0,
            record_last_request: false,
            tls: None,
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
}

#[derive(Default)]
struct Tally {
    success: AtomicU64,
    api_error: AtomicU64,
}

struct Simulator {
    config: SimConfig,
    tallies: HashMap<&'static str, Tally>,
    auth_failures: AtomicU64,
    invalid_action: AtomicU64,
    token_headers_seen: AtomicU64,
    in_flight: AtomicU64,
    last_request: Mutex<Option<Value>>,
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let sim = Arc::new(Simulator {
        tallies: SIM_ACTIONS.iter().map(|a| (*a, Tally::default())).collect(),
        config,
        auth_failures: AtomicU64::new(0),
        invalid_action: AtomicU64::new(0),
        token_headers_seen: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_request: Mutex::new(None),
    });
    let limits = Limits {
        max_connections: 100_000,
        max_body_bytes: MAX_BODY,
        max_header_bytes: 64 * 1024,
        max_headers: 200,
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
    };
    let builder = Arc::new(crate::server::http_builder(&limits));
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tracing::info!(listen = %listener.local_addr()?, "upstream simulator serving");
    let accept = tokio::spawn(crate::server::accept_loop(
        listener,
        None,
        None,
        tls,
        graceful.clone(),
        Gauge::default(),
        limits.header_read_timeout,
        stop_rx,
        crate::server::HyperServer {
            builder,
            handler: move |request| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(sim.handle(request).await) }
            },
        },
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = accept.await;
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    }
    Ok(())
}

impl Simulator {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if request.method() == Method::GET && path == "/sim/stats" {
            return crate::admin::json(StatusCode::OK, self.stats());
        }
        if request.method() == Method::GET && path == "/sim/last-request" {
            let last = self.last_request.lock().expect("poisoned").clone();
            return crate::admin::json(StatusCode::OK, last.unwrap_or(Value::Null));
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error("RequestSizeLimitExceeded", "the body is too large"),
        };
        if parts.headers.contains_key("x-tc-token") {
            self.token_headers_seen.fetch_add(1, Ordering::Relaxed);
        }
        if self.config.record_last_request {
            let headers: Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    )
                })
                .collect();
            *self.last_request.lock().expect("poisoned") = Some(json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers,
                "body_len": body.len(),
                "body_sha256": tc3::sha256_hex(&body),
            }));
        }
        if let Err((code, message)) = self.authenticate(&parts, &body) {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            return error(code, message);
        }
        let v1_params = if parts.headers.contains_key(http::header::AUTHORIZATION) {
            None
        } else {
            let source = if parts.method == Method::GET {
                parts.uri.query().unwrap_or("").as_bytes()
            } else {
                &body[..]
            };
            crate::sigv1::Params::parse(source).ok()
        };
        let action = match &v1_params {
            Some(params) => params.get("Action").ok().flatten().unwrap_or(""),
            None => parts
                .headers
                .get("x-tc-action")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        };
        let Some((name, tally)) = self.tallies.get_key_value(action) else {
            self.invalid_action.fetch_add(1, Ordering::Relaxed);
            return error("InvalidAction", "the action does not exist");
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&self.in_flight);
        match self.config.latency {
            Latency::None => {}
            Latency::Fixed(d) => tokio::time::sleep(d).await,
            Latency::Uniform(lo, hi) => {
                let ms = rand::rng().random_range(lo.as_millis() as u64..=hi.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(ms)).await
            }
        }
        if self.config.error_rate > 0.0 && rand::rng().random_bool(self.config.error_rate.min(1.0)) {
            tally.api_error.fetch_add(1, Ordering::Relaxed);
            return error(INJECTED_ERROR, "the image could not be decoded");
        }
        let request_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        tally.success.fetch_add(1, Ordering::Relaxed);
        tencent::json_response(tencent::success_body(
            answer(name, &request_body),
            &tencent::new_request_id(),
        ))
    }

    fn authenticate(&self, parts: &http::request::Parts, body: &[u8]) -> Result<(), (&'static str, &'static str)> {
        let invalid = (
            "AuthFailure.InvalidAuthorization",
            "the Authorization header is missing or malformed",
        );
        let signature_failure = ("AuthFailure.SignatureFailure", "the signature does not match");
        let now = self.config.clock.now_unix();
        let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
            return self.authenticate_v1(parts, body, now);
        };
        let value = value.to_str().map_err(|_| invalid)?;
        let auth = tc3::parse_authorization(value).map_err(|_| invalid)?;
        // As Tencent: a signature must cover both, so the gateway's re-signing is held
        // to what the real API accepts.
        tc3::check_signed_headers(&auth).map_err(|_| invalid)?;
        if auth.secret_id != self.config.secret_id {
            return Err(("AuthFailure.SecretIdNotFound", "the SecretId is not known"));
        }
        let timestamp = tc3::request_timestamp(&parts.headers).map_err(|_| invalid)?;
        tc3::check_time(&auth, timestamp, now).map_err(|e| match e {
            tc3::Tc3Error::SignatureExpire => ("AuthFailure.SignatureExpire", "the signature has expired"),
            _ => signature_failure,
        })?;
        if auth.service != self.config.service {
            return Err(signature_failure);
        }
        let key = tc3::SigningKey::derive(&self.config.secret_key, auth.date, auth.service);
        let hash = tc3::payload_hash(&parts.headers, body);
        let query = parts.uri.query().unwrap_or("");
        let signed = tc3::SignedRequest {
            method: parts.method.as_str(),
            query,
            headers: &parts.headers,
            payload_hash_hex: hash.as_str(),
            timestamp,
        };
        tc3::verify_signature(&auth, &signed, &key).map_err(|_| signature_failure)
    }

    /// The legacy v1 form signature, as Tencent still accepts it.
    fn authenticate_v1(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        now: i64,
    ) -> Result<(), (&'static str, &'static str)> {
        let invalid = ("AuthFailure.InvalidAuthorization", "the request carries no signature");
        let source = if parts.method == Method::GET {
            parts.uri.query().unwrap_or("").as_bytes()
        } else {
            body
        };
        let params = crate::sigv1::Params::parse(source).map_err(|_| invalid)?;
        if !crate::sigv1::looks_like_v1(&params) {
            return Err(invalid);
        }
        if params.get("SecretId").ok().flatten() != Some(self.config.secret_id.as_str()) {
            return Err(("AuthFailure.SecretIdNotFound", "the SecretId is not known"));
        }
        crate::sigv1::check_time(&params, now)
            .map_err(|_| ("AuthFailure.SignatureExpire", "the signature has expired"))?;
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let target = crate::sigv1::Target {
            method: parts.method.as_str(),
            host,
            path: parts.uri.path(),
        };
        crate::sigv1::verify(target, &params, &self.config.secret_key)
            .map_err(|_| ("AuthFailure.SignatureFailure", "the signature does not match"))
    }

    fn stats(&self) -> Value {
        let actions: Map<String, Value> = self
            .tallies
            .iter()
            .map(|(name, t)| {
                (
                    name.to_string(),
                    json!({"success": t.success.load(Ordering::Relaxed), "api_error": t.api_error.load(Ordering::Relaxed)}),
                )
            })
            .collect();
        json!({
            "actions": actions,
            "auth_failures": self.auth_failures.load(Ordering::Relaxed),
            "invalid_action": self.invalid_action.load(Ordering::Relaxed),
            "token_headers_seen": self.token_headers_seen.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::SeqCst),
        })
    }
}

/// Counts a call as in flight until dropped, even if the client goes away mid-call.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error(code: &str, message: &str) -> Response<Full<Bytes>> {
    tencent::json_response(tencent::error_body(code, message, &tencent::new_request_id()))
}

/// A successful answer in the shape Tencent documents for each action.
fn answer(action: &str, request: &Value) -> Map<String, Value> {
    let token = uuid::Uuid::new_v4().to_string().to_uppercase();
    let value = match action {
        "LivenessCompare" => json!({
            "Result": "Success",
            "Description": "成功",
            "Sim": "94.46",
            // Tencent returns the best video frame; echoing the compared image keeps
            // the answer as large as the question, which is what tests need.
            "BestFrameBase64": request.get("ImageBase64").cloned().unwrap_or(Value::from("")),
            "BestFrameList": [],
        }),
        "IdCardOCRVerification" => json!({
            "Result": "0",
            "Description": "姓名和身份证号一致",
            "Name": request.get("Name").cloned().unwrap_or(Value::from("张三")),
            "IdCard": request.get("IdCard").cloned().unwrap_or(Value::from("11204416541220243X")),
            "Sex": "男",
            "Nation": "汉",
            "Birth": "1990/1/1",
            "Address": "广东省深圳市南山区",
        }),
        "IdCardVerification" => json!({"Result": "0", "Description": "姓名和身份证号一致"}),
        "PhoneVerification" => json!({"Result": "0", "Description": "认证通过", "Isp": "移动"}),
        "ApplyWebVerificationBizTokenIntl" => json!({
            "VerificationURL": format!("https://intl.faceid.qq.com/reflect/?token={token}"),
            "BizToken": token,
        }),
        "DetectAuth" => json!({
            "Url": format!("https://faceid.qq.com/api/v1/detect?token={token}"),
            "BizToken": token,
        }),
        "GetFaceIdTokenIntl" => json!({"SdkToken": token}),
        "GetWebVerificationResultIntl" => json!({
            "ErrorCode": 0,
            "ErrorMsg": "Success",
            "VerificationDetailList": [{
                "ErrorCode": 0,
                "ErrorMsg": "Success",
                "LivenessErrorCode": 0,
                "LivenessErrorMsg": "Success",
                "CompareErrorCode": 0,
                "CompareErrorMsg": "Success",
                "ReqTimestamp": 1795667480000u64,
                "Similarity": 94.46,
                "Seq": token,
            }],
            "VideoBestFrameBase64": null,
            "BestFrameBase64": null,
            "OCRResult": null,
        }),
        "GetFaceIdResultIntl" => json!({
            "Result": "Success",
            "Description": "Success",
            "BestFrame": "",
            "Video": "",
            "Similarity": 94.46,
            "Extra": "",
            "LivenessDetail": [],
        }),
        _ => json!({}),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses() {
        assert_eq!("0".parse::<Latency>(), Ok(Latency::None));
        assert_eq!("20".parse::<Latency>(), Ok(Latency::Fixed(Duration::from_millis(20))));
        assert_eq!(
            "5..50".parse::<Latency>(),
            Ok(Latency::Uniform(Duration::from_millis(5), Duration::from_millis(50)))
        );
        assert!("50..5".parse::<Latency>().is_err());
        assert!("x".parse::<Latency>().is_err());
    }

    #[test]
    fn every_action_has_a_documented_answer() {
        for action in SIM_ACTIONS {
            assert!(!answer(action, &Value::Null).is_empty(), "{action}");
        }
    }
}
