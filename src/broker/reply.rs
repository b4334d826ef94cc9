//! The HTTP responses the socket server sends: every one carries the protocol version and
//! `Cache-Control: no-store`; errors are an [`ErrorBody`] with a machine-readable code.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::protocol::{self, ErrorBody, PROTOCOL_HEADER, PROTOCOL_VERSION};

/// A response, its body whole in memory.
pub(super) type Resp = Response<Full<Bytes>>;

/// A response with `body` of `content_type`.
pub(super) fn respond(status: StatusCode, body: Bytes, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON response.
pub(super) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    respond(status, Bytes::from(bytes), "application/json")
}

/// An error response: `code` for programs, `message` for people.
pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Resp {
    json(status, &ErrorBody { error: code.to_string(), message: message.into() })
}

/// 405, naming the method that is allowed.
pub(super) fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        protocol::errors::METHOD_NOT_ALLOWED,
        format!("use {allow}"),
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
