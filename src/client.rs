//! The socket client used by `secretbox` and by `backupnizza status` / `trigger`: one HTTP
//! request over the daemon's Unix socket (hyper + hyperlocal), bounded by a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri};
use zeroize::Zeroizing;

use crate::protocol::ErrorBody;

/// Largest response body we read.
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing to talk to: no socket, nobody listening, permission denied.
    #[error("cannot reach the daemon at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the daemon at {} did not answer within {}", socket.display(), crate::duration::Human(*timeout))]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

/// A response: status and body (wiped on drop: it may hold a secret).
pub struct Response {
    pub status: StatusCode,
    pub body: Zeroizing<Vec<u8>>,
}

impl Response {
    /// The error body of a non-2xx response, if it has one.
    pub fn error(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client { socket: socket.to_path_buf(), timeout }
    }

    /// Sends one request. `token`, if given, goes in the `Authorization` header.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        match tokio::time::timeout(self.timeout, self.request_inner(method, path, token, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout }),
        }
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        // Connect errors from hyper's pool are opaque; a plain connect first says exactly why.
        if let Err(e) = tokio::net::UnixStream::connect(&self.socket).await {
            return Err(ClientError::Unreachable { socket: self.socket.clone(), reason: e.to_string() });
        }
        let client: HyperClient<UnixConnector, Full<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(UnixConnector);
        let mut builder = Request::builder().method(method).uri(Uri::new(&self.socket, path));
        let auth;
        if let Some(token) = token {
            auth = Zeroizing::new(format!("Bearer {token}"));
            builder = builder.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable { socket: self.socket.clone(), reason: e.to_string() }
            } else {
                ClientError::Protocol(format!("{e}"))
            }
        })?;
        let status = response.status();
        let collected = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading the response failed: {e}")))?;
        let bytes = collected.to_bytes();
        Ok(Response { status, body: Zeroizing::new(bytes.to_vec()) })
    }
}
