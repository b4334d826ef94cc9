//! The daemon's socket: HTTP/1.1 (hyper) over a Unix socket in a private directory.
//!
//! [`bind`] prepares the socket the way ssh-agent and gpg-agent do: a directory of mode 0700
//! that we own (refused if it is a symlink, someone else's, or looser), a lock so a second
//! daemon refuses to start, a stale socket removed only if nothing answers on it, and a bind
//! under `umask 0177` so the socket is 0600 from its first instant. [`serve`] accepts
//! connections: the peer's uid must be ours (checked by the kernel's credentials, before any
//! byte is parsed), and redemptions must come from the token's process or a descendant.
//! Limits bound connections, header size and time, body size and request time.

use std::convert::Infallible;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::peer::{self, Peer};
use crate::protocol::{self, ErrorBody, PROTOCOL_HEADER, PROTOCOL_VERSION};
use crate::secrets::Secrets;
use crate::vault::{Rejection, Vault};

/// Bounds on what one client may cost the daemon.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time to receive a request's headers (also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Time to handle one request once its headers are in.
    pub request_timeout: Duration,
    /// Longest a connection may live, however busy.
    pub connection_lifetime: Duration,
    /// Bytes of buffered request head (request line plus headers).
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 2048,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(120),
            max_head_bytes: 8192,
        }
    }
}

/// What the daemon adds to the broker: status, trigger and runs. Control routes are refused
/// for callers inside a task's process tree, so a backup job cannot trigger other tasks.
pub trait Control: Send + Sync + 'static {
    /// Whether `pid` is a task process or descends from one.
    fn is_task_process(&self, pid: u32) -> bool;
    /// The `GET /v1/status` body.
    fn status(&self) -> protocol::StatusBody;
    /// Starts a task now; the run id, or why not.
    fn trigger(self: Arc<Self>, task: &str) -> Result<protocol::RunRef, (StatusCode, String)>;
    /// A run, waiting up to `wait` for it to end.
    fn run(&self, id: &str, wait: Duration) -> BoxFuture<Option<protocol::RunBody>>;
}

/// A boxed, sendable future (what [`Control::run`] returns).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Consecutive failed redemptions per peer process, for a progressive delay: a legitimate
/// task fails once and gives up; something probing tokens is slowed down.
#[derive(Debug, Default)]
pub struct Failures {
    by_pid: std::collections::HashMap<u32, (u32, Instant)>,
}

/// Failures before the first delay, and after which the answer is `429 slow_down`.
const FREE_FAILURES: u32 = 3;
const SLOW_DOWN_AFTER: u32 = 8;
const MAX_PENALTY: Duration = Duration::from_secs(5);
const FORGET_FAILURES: Duration = Duration::from_secs(600);
/// Longest a redemption waits for its token's process to be recorded.
const UNBOUND_WAIT: Duration = Duration::from_secs(2);

impl Failures {
    /// Records a failure; returns the peer's consecutive failure count.
    fn record(&mut self, pid: u32, now: Instant) -> u32 {
        if self.by_pid.len() >= 4096 {
            self.by_pid.retain(|_, (_, at)| now.duration_since(*at) < FORGET_FAILURES);
            if self.by_pid.len() >= 4096 {
                self.by_pid.clear();
            }
        }
        let entry = self.by_pid.entry(pid).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_FAILURES {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    fn clear(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

/// How long to hold back the answer to a peer's `count`-th consecutive failure.
pub fn penalty(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    (Duration::from_millis(100) * (1 << doublings)).min(MAX_PENALTY)
}

/// Everything a request handler needs.
pub struct Broker {
    pub vault: Mutex<Vault>,
    pub failures: Mutex<Failures>,
    pub secrets: Arc<Secrets>,
    pub uid: u32,
    pub limits: Limits,
    /// Set once the daemon exists (it needs the broker first); absent in broker-only use.
    pub control: std::sync::OnceLock<Arc<dyn Control>>,
}

/// Why the socket could not be prepared. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket directory {}: {problem}; {fix}", dir.display())]
    UnsafeDir { dir: PathBuf, problem: String, fix: String },
    #[error("another backupnizza daemon is running on {} (it holds {}); stop it first, or give this one another `socket:`", socket.display(), lock.display())]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error("{} exists and is not a socket; remove it or choose another `socket:`", path.display())]
    NotASocket { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io { path: path.to_path_buf(), source }
}

/// The bound socket; removes the socket file when dropped (if it is still ours).
pub struct BoundSocket {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
    /// Device and inode of the socket we bound, to notice if the path is taken over.
    pub identity: (u64, u64),
    _lock: nix::fcntl::Flock<File>,
}

impl BoundSocket {
    /// Whether the path still names the socket we bound (gpg-agent's check for a stolen socket).
    pub fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates or checks the private directory, takes the single-instance lock, clears a stale
/// socket, and binds.
///
/// The process umask is 0177 for the duration of bind(2) (umask is process-wide): call this
/// while no other thread creates files, as the daemon does at start.
pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_dir(dir, uid)?;

    let lock_path = lock_path(path);
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let lock =
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                SocketError::AlreadyRunning { socket: path.to_path_buf(), lock: lock_path.clone() }
            } else {
                SocketError::Io { path: lock_path.clone(), source: errno.into() }
            }
        })?;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Remove it only if nothing answers: a daemon without our lock (an older
            // version, another host's mount) may still be serving on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::AlreadyRunning { socket: path.to_path_buf(), lock: lock_path });
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
            info!(socket = %path.display(), "removed a stale socket left by a previous daemon");
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }

    // Bind under umask 0177 so the socket is 0600 from its first instant (no chmod window).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err(path))?;
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    listener.set_nonblocking(true).map_err(io_err(path))?;
    Ok(BoundSocket { listener, path: path.to_path_buf(), identity: (meta.dev(), meta.ino()), _lock: lock })
}

/// `secretbox.sock` → `secretbox.sock.lock` beside it.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

fn prepare_dir(dir: &Path, uid: u32) -> Result<(), SocketError> {
    let unsafe_dir = |problem: String, fix: String| SocketError::UnsafeDir { dir: dir.to_path_buf(), problem, fix };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Someone else created it in between: check it like any existing directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return prepare_dir(dir, uid),
                Err(e) => return Err(io_err(dir)(e)),
            }
            // The umask may have taken bits away, never added any; make sure it is exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
            Ok(())
        }
        Err(e) => Err(io_err(dir)(e)),
        Ok(meta) if meta.file_type().is_symlink() => Err(unsafe_dir(
            "is a symbolic link, which another user could redirect".into(),
            "use a real directory for `socket:`".into(),
        )),
        Ok(meta) if !meta.is_dir() => Err(unsafe_dir("is not a directory".into(), "choose another `socket:`".into())),
        Ok(meta) if meta.uid() != uid => Err(unsafe_dir(
            format!("is owned by uid {}, not by this user (uid {uid})", meta.uid()),
            "use a directory you own for `socket:`".into(),
        )),
        Ok(meta) if meta.mode() & 0o077 != 0 => Err(unsafe_dir(
            format!("has mode {:03o}, so other users can reach the socket", meta.mode() & 0o777),
            format!("run `chmod 700 {}` or choose another `socket:`", dir.display()),
        )),
        Ok(_) => Ok(()),
    }
}

/// Serves until `shutdown` turns true; returns once the listener is closed (in-flight
/// requests finish on their own tasks, bounded by the request timeout).
pub async fn serve(listener: tokio::net::UnixListener, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(broker.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(limit = broker.limits.max_connections, "too many connections; closing a new one");
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, broker).await;
        });
    }
}

async fn serve_connection(mut stream: tokio::net::UnixStream, broker: Arc<Broker>) {
    let peer = match Peer::of(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(error = %e, "cannot read the credentials of a connecting peer; closing");
            return;
        }
    };
    if peer.uid != broker.uid {
        // Another user (the socket must have been loosened): answer without parsing a byte.
        warn!(peer_pid = peer.pid.unwrap_or_default(), peer_uid = peer.uid, exe = %peer.exe(), "refused a connection from another user");
        lock(&broker.vault).count_rejection(Rejection::Forbidden);
        let body = serde_json::to_string(&ErrorBody {
            error: Rejection::Forbidden.as_str().into(),
            message: "this daemon serves only its own user".into(),
        })
        .unwrap_or_default();
        let response = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // Wait for the end of the request head (unparsed: we only look for the blank line),
        // answer, and close. A response sent before the request arrives confuses clients, and
        // closing with unread data resets the connection, so the client would see an error.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut seen = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while seen.len() < 16 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await? {
                    0 => break,
                    n => seen.extend_from_slice(&chunk[..n]),
                }
            }
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            while stream.read(&mut chunk).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        return;
    }
    serve_http(stream, broker, peer).await;
}

/// Serves HTTP on one connection of an already-checked peer. Generic over the transport so
/// the fuzz target can drive it through an in-memory pipe.
#[doc(hidden)]
pub async fn serve_http<I>(io: I, broker: Arc<Broker>, peer: Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = broker.limits.clone();
    let service = hyper::service::service_fn(move |req| {
        let broker = broker.clone();
        async move { Ok::<_, Infallible>(handle(req, &broker, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .writev(true)
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(limits.connection_lifetime, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, peer_pid = peer.pid.unwrap_or_default(), "connection ended with an error"),
        Err(_) => debug!(peer_pid = peer.pid.unwrap_or_default(), "connection closed after its maximum lifetime"),
    }
}

/// Locks, ignoring poisoning: every mutation under these locks is a single insert, remove or
/// counter update, so a panic elsewhere leaves the state consistent; keep serving rather than
/// failing every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: Bytes, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    respond(status, Bytes::from(bytes), "application/json")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Resp {
    json(status, &ErrorBody { error: code.to_string(), message: message.into() })
}

fn rejection(r: Rejection) -> Resp {
    let (status, message) = match r {
        Rejection::Unknown => (StatusCode::UNAUTHORIZED, "this is not a token this daemon issued"),
        Rejection::Expired => (StatusCode::UNAUTHORIZED, "the token has expired (see token_ttl)"),
        Rejection::Used => (StatusCode::UNAUTHORIZED, "the token was already used for this secret (see redeem_limit)"),
        Rejection::Revoked => (StatusCode::UNAUTHORIZED, "the process the token was issued to has exited"),
        Rejection::NotInScope => {
            (StatusCode::FORBIDDEN, "the token's task may not fetch this secret (see the task's secrets:)")
        }
        Rejection::Forbidden => (StatusCode::FORBIDDEN, "only the task's own processes may redeem its token"),
    };
    error(status, r.as_str(), message)
}

async fn handle(req: Request<Incoming>, broker: &Broker, peer: Peer) -> Resp {
    // Redemptions are bounded by construction (a body read with its own timeout, a wait for
    // a just-spawned process of at most 2 s, a penalty of at most 5 s) and are the hot path:
    // no per-request timer for them. Everything else gets an overall deadline.
    if req.uri().path().starts_with(protocol::ROUTE_SECRETS) {
        return route(req, broker, peer).await;
    }
    let deadline = broker.limits.request_timeout;
    match tokio::time::timeout(deadline + Duration::from_secs(protocol::MAX_WAIT_SECS), route(req, broker, peer)).await
    {
        Ok(resp) => resp,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, protocol::errors::TIMEOUT, "the request took too long"),
    }
}

async fn route(req: Request<Incoming>, broker: &Broker, peer: Peer) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = match read_body(req, broker.limits.request_timeout).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    if path == protocol::ROUTE_VERSION {
        if method != Method::GET {
            return not_allowed("GET");
        }
        return json(
            StatusCode::OK,
            &protocol::VersionBody {
                protocol: PROTOCOL_VERSION,
                daemon: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            },
        );
    }
    if let Some(name) = path.strip_prefix(protocol::ROUTE_SECRETS) {
        if method != Method::POST {
            return not_allowed("POST");
        }
        return redeem(name, body.auth.as_deref().map(String::as_str), broker, peer).await;
    }
    let is_control = path == protocol::ROUTE_STATUS
        || path.starts_with(protocol::ROUTE_TASKS)
        || path.starts_with(protocol::ROUTE_RUNS);
    if !is_control {
        return error(
            StatusCode::NOT_FOUND,
            protocol::errors::NOT_FOUND,
            format!("no route {path:?} (protocol v{PROTOCOL_VERSION})"),
        );
    }
    let Some(control) = broker.control.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            protocol::errors::UNAVAILABLE,
            "this server has no task control",
        );
    };
    if peer.pid.is_none_or(|pid| control.is_task_process(pid)) {
        warn!(peer_pid = peer.pid.unwrap_or_default(), exe = %peer.exe(), route = %path, "refused a control request from inside a task");
        return error(StatusCode::FORBIDDEN, Rejection::Forbidden.as_str(), "tasks may not control the daemon");
    }
    if path == protocol::ROUTE_STATUS {
        if method != Method::GET {
            return not_allowed("GET");
        }
        return json(StatusCode::OK, &control.status());
    }
    if let Some(rest) = path.strip_prefix(protocol::ROUTE_TASKS) {
        let Some(task) = rest.strip_suffix("/trigger") else {
            return error(StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND, format!("no route {path:?}"));
        };
        if method != Method::POST {
            return not_allowed("POST");
        }
        return match control.clone().trigger(task) {
            Ok(run) => {
                info!(task, run_id = %run.run_id, peer_pid = peer.pid.unwrap_or_default(), exe = %peer.exe(), "run triggered through the socket");
                json(StatusCode::ACCEPTED, &run)
            }
            Err((status, message)) => {
                let code = match status {
                    StatusCode::NOT_FOUND => protocol::errors::NOT_FOUND,
                    StatusCode::CONFLICT => protocol::errors::CONFLICT,
                    _ => protocol::errors::UNAVAILABLE,
                };
                error(status, code, message)
            }
        };
    }
    if let Some(id) = path.strip_prefix(protocol::ROUTE_RUNS) {
        if method != Method::GET {
            return not_allowed("GET");
        }
        let wait = body
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .min(protocol::MAX_WAIT_SECS);
        return match control.run(id, Duration::from_secs(wait)).await {
            Some(run) => json(StatusCode::OK, &run),
            None => error(StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND, format!("no run {id:?}")),
        };
    }
    error(StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND, format!("no route {path:?}"))
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, protocol::errors::METHOD_NOT_ALLOWED, format!("use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The parts of a request the routes use, with the body read (and bounded).
struct Parts {
    auth: Option<Zeroizing<String>>,
    query: Option<String>,
}

async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Parts, Resp> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let query = req.uri().query().map(str::to_string);
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, protocol::errors::TOO_LARGE, "request body too large");
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > protocol::MAX_REQUEST_BODY as u64 {
            return Err(too_large());
        }
    }
    // Most requests have no body at all: skip the timer then (redemptions are the hot path).
    use hyper::body::Body as _;
    if req.body().is_end_stream() {
        return Ok(Parts { auth, query });
    }
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), protocol::MAX_REQUEST_BODY).collect()).await {
        Ok(Ok(_)) => Ok(Parts { auth, query }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, protocol::errors::BAD_REQUEST, "malformed request body")),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, protocol::errors::TIMEOUT, "the request body took too long")),
    }
}

async fn redeem(name: &str, token: Option<&str>, broker: &Broker, peer: Peer) -> Resp {
    if !crate::config::valid_name(name) {
        return error(StatusCode::BAD_REQUEST, protocol::errors::BAD_REQUEST, "invalid secret name");
    }
    let token = token.unwrap_or("");
    let fingerprint = crate::vault::fingerprint_of(token);
    let now = Instant::now();
    let outcome = async {
        let mut pending = lock(&broker.vault).check(token, name, now).map_err(|r| (r, None))?;
        // The daemon records a token's process right after spawning it; a very quick first
        // redemption may arrive in between.
        let wait_until = now + UNBOUND_WAIT;
        while pending.pid.is_none() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
            pending = lock(&broker.vault).check(token, name, Instant::now()).map_err(|r| (r, None))?;
        }
        // Outside the lock: the caller must be the token's process or one of its
        // descendants, and still the process that connected (pids are reused).
        let allowed = match (pending.pid, peer.pid) {
            (Some(owner), Some(caller)) => peer.still_running() && peer::descends_from(caller, owner),
            _ => false,
        };
        if !allowed {
            lock(&broker.vault).count_rejection(Rejection::Forbidden);
            return Err((Rejection::Forbidden, Some(pending.task)));
        }
        match lock(&broker.vault).consume(&pending, name, Instant::now()) {
            Ok(()) => Ok(pending.task),
            Err(r) => Err((r, Some(pending.task))),
        }
    }
    .await;
    let pid = peer.pid.unwrap_or_default();
    let task = match outcome {
        Ok(task) => {
            lock(&broker.failures).clear(pid);
            task
        }
        Err((r, task)) => {
            // Counted for the process and for its parent, so a loop that starts a new
            // `secretbox` for every attempt is slowed down too.
            let parent = peer::parent_of(pid).filter(|p| *p > 1);
            let count = {
                let mut failures = lock(&broker.failures);
                let own = failures.record(pid, now);
                parent.map_or(own, |p| own.max(failures.record(p, now)))
            };
            let delay = penalty(count);
            warn!(
                token = %fingerprint, secret = name, task = task.as_deref().unwrap_or("?"), peer_pid = pid, peer_uid = peer.uid,
                exe = %peer.exe(), reason = r.as_str(), failures = count, delay_ms = delay.as_millis() as u64,
                "refused a secret redemption"
            );
            tokio::time::sleep(delay).await;
            if count >= SLOW_DOWN_AFTER {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    protocol::errors::SLOW_DOWN,
                    format!("{count} failed redemptions in a row from this process; slow down"),
                );
            }
            return rejection(r);
        }
    };
    let Some(secret) = broker.secrets.get(name) else {
        // validate guarantees scoped secrets are declared, and all declared ones are loaded.
        return error(StatusCode::INTERNAL_SERVER_ERROR, protocol::errors::UNAVAILABLE, "secret not loaded");
    };
    info!(
        token = %fingerprint, secret = name, task = %task, peer_pid = pid, peer_uid = peer.uid,
        exe = %peer.exe(), "secret redeemed"
    );
    // The response owns a zeroizing copy, wiped when hyper drops the body after writing it.
    let body = Bytes::from_owner(Zeroizing::new(secret.expose_secret().as_bytes().to_vec()));
    respond(StatusCode::OK, body, "application/octet-stream")
}
