//! The HTTP responses the socket server sends: every one carries the protocol version and
//! `Cache-Control: no-store`; errors are an [`ErrorBody`] with a machine-readable code.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::protocol::{self, ErrorBody, PROTOCOL_HEADER, PROTOCOL_VERSION};

/// A response: its body whole in memory, or (the run history) chunks as they are made.
pub(super) type Resp = Response<Body>;

/// A response's body.
pub(super) enum Body {
    Whole(Full<Bytes>),
    /// Chunks from a writer ([`ChunkWriter`]): the channel is bounded, so a client that does
    /// not read holds up the writer instead of the daemon's memory filling.
    Chunks(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Whole(full) => std::pin::Pin::new(full).poll_frame(cx),
            Body::Chunks(rx) => {
                rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(full) => full.is_end_stream(),
            Body::Chunks(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Whole(full) => full.size_hint(),
            Body::Chunks(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// The writing end of a [`Body::Chunks`]: buffers up to [`CHUNK`] bytes, then waits for
/// room in the channel. A gone client makes writes fail with `BrokenPipe`. For a blocking
/// thread only.
pub(crate) struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
}

/// Bytes per chunk of a streamed body.
const CHUNK: usize = 64 * 1024;
/// Chunks that may wait in the channel: with hyper's own buffer and the socket's, what an
/// unread streamed answer costs is a few hundred KiB.
const CHUNKS_WAITING: usize = 2;

impl ChunkWriter {
    pub(crate) fn channel() -> (ChunkWriter, tokio::sync::mpsc::Receiver<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_WAITING);
        (ChunkWriter { buf: Vec::with_capacity(CHUNK), tx }, rx)
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client is gone"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A response with `body` of `content_type`.
pub(super) fn respond(status: StatusCode, body: Bytes, content_type: &'static str) -> Resp {
    with_headers(Response::new(Body::Whole(Full::new(body))), status, content_type)
}

/// A `200 OK` JSON response whose body comes in chunks from `rx`.
pub(super) fn json_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Resp {
    with_headers(Response::new(Body::Chunks(rx)), StatusCode::OK, "application/json")
}

fn with_headers(mut r: Resp, status: StatusCode, content_type: &'static str) -> Resp {
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

/// The HTTP answer for a control request the daemon could not carry out.
pub(super) fn fire_error(e: &super::control::FireError) -> Resp {
    let (status, code) = match e {
        super::control::FireError::NoSuchTask { .. } => {
            (StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND)
        }
        super::control::FireError::Busy { .. } => {
            (StatusCode::CONFLICT, protocol::errors::CONFLICT)
        }
        super::control::FireError::Stopping => {
            (StatusCode::SERVICE_UNAVAILABLE, protocol::errors::UNAVAILABLE)
        }
    };
    error(status, code, e.to_string())
}

/// The value of `key` (written with its `=`, as `"wait="`) in a request's query string.
pub(super) fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)))
}

/// The number `key` holds in the query string; 0 when absent or not a number.
pub(super) fn query_number(query: Option<&str>, key: &str) -> u64 {
    query_value(query, key).and_then(|s| s.parse().ok()).unwrap_or(0)
}
