//! The socket client used by `secretbox` and by `backupnizza status` / `trigger`: one HTTP
//! request over one connection to the daemon's Unix socket (hyper's HTTP/1 client
//! connection, no pool: `secretbox` makes exactly one request), bounded by a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use crate::protocol::ErrorBody;

/// Largest response body we read, unless [`Client::with_max_response`] says otherwise.
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
    /// The process serving the socket is not the daemon we were told about: nothing was sent.
    #[error("the process serving {} is not the daemon that started this process ({found}); nothing was sent to it", socket.display())]
    NotTheDaemon { socket: PathBuf, found: String },
}

/// The daemon a client expects on the other end: its pid and when that process started
/// (`SECRETBOX_DAEMON=PID:START`, START in clock ticks since boot as in `/proc/PID/stat`), so
/// a socket renamed away and replaced by another process is noticed before a token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerId {
    pub pid: u32,
    pub started: u64,
}

impl ServerId {
    /// This process, for the environment of the processes it starts.
    pub fn this_process() -> Option<ServerId> {
        let pid = std::process::id();
        crate::broker::peer::start_time(pid).map(|started| ServerId { pid, started })
    }

    /// Parses `PID:START`.
    pub fn parse(text: &str) -> Option<ServerId> {
        let (pid, started) = text.split_once(':')?;
        Some(ServerId { pid: pid.parse().ok()?, started: started.parse().ok()? })
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.started)
    }
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
    server: Option<ServerId>,
    max_response: usize,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client { socket: socket.to_path_buf(), timeout, server: None, max_response: MAX_RESPONSE }
    }

    /// Reads response bodies of up to `bytes` (the run history is larger than any other
    /// answer).
    #[must_use]
    pub fn with_max_response(mut self, bytes: usize) -> Client {
        self.max_response = bytes;
        self
    }

    /// Sends nothing unless the socket is served by `server` (checked with `SO_PEERCRED` on
    /// the connected socket, and the start time of the pid it names).
    #[must_use]
    pub fn expect_server(mut self, server: Option<ServerId>) -> Client {
        self.server = server;
        self
    }

    fn check_server(&self, stream: &tokio::net::UnixStream) -> Result<(), ClientError> {
        let Some(expected) = self.server else { return Ok(()) };
        let not_the_daemon =
            |found: String| ClientError::NotTheDaemon { socket: self.socket.clone(), found };
        let cred = stream
            .peer_cred()
            .map_err(|e| not_the_daemon(format!("its credentials cannot be read: {e}")))?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
        if pid != Some(expected.pid) {
            let found = pid.map_or("no pid".to_string(), |p| format!("pid {p}"));
            return Err(not_the_daemon(format!("expected pid {}, found {found}", expected.pid)));
        }
        if crate::broker::peer::start_time(expected.pid) != Some(expected.started) {
            return Err(not_the_daemon(format!(
                "pid {} is another process than the daemon that started this one",
                expected.pid
            )));
        }
        Ok(())
    }

    /// Sends one request. `token`, if given, goes in the `Authorization` header.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        match tokio::time::timeout(self.timeout, self.request_inner(method, path, token, body))
            .await
        {
            Ok(result) => result,
            Err(_) => {
                Err(ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout })
            }
        }
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        // One connection per request, handshaken directly: no pool to set up, and a connect
        // error that says exactly why (no socket, refused, permission denied).
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            ClientError::Unreachable { socket: self.socket.clone(), reason: e.to_string() }
        })?;
        self.check_server(&stream)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(format!("handshake failed: {e}")))?;
        // Drive the connection on this task while the request is in flight (no spawn).
        let mut connection = std::pin::pin!(connection);
        let mut builder =
            Request::builder().method(method).uri(path).header(hyper::header::HOST, "backupnizza");
        let auth;
        if let Some(token) = token {
            auth = Zeroizing::new(format!("Bearer {token}"));
            builder = builder.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ClientError::Protocol(format!("{e}")))?;
            let status = response.status();
            let collected =
                Limited::new(response.into_body(), self.max_response).collect().await.map_err(
                    |e| ClientError::Protocol(format!("reading the response failed: {e}")),
                )?;
            Ok::<_, ClientError>(Response {
                status,
                body: Zeroizing::new(collected.to_bytes().to_vec()),
            })
        };
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            biased;
            response = &mut exchange => response,
            ended = &mut connection => match ended {
                // The daemon may close right after answering (it does for other users):
                // the answer is already in the body channel.
                Ok(()) => exchange.await,
                Err(e) => Err(ClientError::Protocol(format!("{e}"))),
            },
        }
    }
}
