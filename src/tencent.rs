//! Tencent Cloud API 3.0 wire shapes that every part of the gateway speaks: the error
//! body and the RequestId. The SDKs read an error only from HTTP 200 with
//! `Content-Type: application/json` exactly (a charset suffix makes them treat it as a
//! success), so nothing here may add one. Knows nothing about why an error happened.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The content type the SDKs require, byte for byte.
pub const JSON_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/json");

/// A fresh RequestId in the format Tencent uses (a v4 UUID).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `{"Response":{"Error":{"Code","Message"},"RequestId"}}` as bytes.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "Response": {
            "Error": { "Code": code, "Message": message },
            "RequestId": request_id,
        }
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises"))
}

/// `{"Response":{...fields,"RequestId"}}` for a successful answer produced locally.
pub fn success_body(mut fields: serde_json::Map<String, serde_json::Value>, request_id: &str) -> Bytes {
    fields.insert("RequestId".into(), request_id.into());
    let body = serde_json::json!({ "Response": fields });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises"))
}

/// An HTTP 200 JSON response carrying `body`, as the SDKs expect for answers and errors.
pub fn json_response<B: From<Bytes>>(body: Bytes) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON_CONTENT_TYPE);
    response
}
