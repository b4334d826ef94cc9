//! The daemon's socket server: HTTP/1.1 (hyper) over the Unix socket [`super::socket`]
//! prepared.
//!
//! [`serve`] accepts connections: the peer's uid must be ours, or the peer a member of the
//! `control_group:` (checked by the kernel's credentials, before any byte is parsed), who
//! may use the control routes only; redemptions go to [`super::redeem`], and control
//! requests (status, trigger, runs) become messages to the daemon's state owner through a
//! [`Control`] handle. Limits bound connections, header size and time, body size and request
//! time. On shutdown the listener closes, open connections finish their current response
//! (briefly), and every connection task has ended before `serve` returns, so nothing it held
//! (the broker, and through it the secrets) outlives the server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::Broker;
use super::admission::{over_limit, release};
use super::control::{Control, HISTORY_STREAMS, HistoryError};
use super::peer::{Ancestry, Peer};
use super::redeemers::Verified;
use super::reply::{Resp, error, fire_error, json, not_allowed, query_number, query_value};
use crate::protocol::Rejection;
use crate::protocol::{self, ErrorBody, PROTOCOL_HEADER, PROTOCOL_VERSION};

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
    /// Whether each process's open connections are counted and capped (at 64). Always on
    /// in the daemon; the benchmark turns it off to measure what it costs.
    pub per_process: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 2048,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(120),
            max_head_bytes: 8192,
            per_process: true,
        }
    }
}

/// How long open connections get to finish their current response at shutdown.
const DRAIN: Duration = Duration::from_secs(1);
/// Least time between two log lines about connections refused by the same limit.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a connection's handlers share: the broker, and the daemon's control handle (absent
/// when the broker is served alone, as in the broker tests and the fuzz target).
struct Shared {
    broker: Arc<Broker>,
    control: Option<Control>,
}

/// Serves the broker alone (no task control: the control routes answer 503) until
/// `shutdown` is cancelled; returns once the listener is closed and every connection task
/// has ended.
pub async fn serve(
    listener: tokio::net::UnixListener,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    serve_with(listener, broker, None, shutdown).await;
}

/// [`serve`], with control requests passed to the daemon through `control`.
pub(crate) async fn serve_with(
    listener: tokio::net::UnixListener,
    broker: Arc<Broker>,
    control: Option<Control>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared { broker, control });
    let mut connections: JoinSet<(Option<u32>, u32)> = JoinSet::new();
    // Open connections by peer pid, and by uid for members (uids other than the daemon's);
    // owned by this loop alone.
    let mut per_process: HashMap<Option<u32>, usize> = HashMap::new();
    let mut per_member: HashMap<u32, usize> = HashMap::new();
    let mut refused: u64 = 0;
    // When each limit was last logged: each has its own rate, so a flood that runs into one
    // limit does not hide that another was reached too.
    let mut last_refusal_log: HashMap<&'static str, Instant> = HashMap::new();
    loop {
        // Finished connections leave the set here, so it holds only live ones.
        while let Some(done) = connections.try_join_next() {
            if let Ok((pid, uid)) = done {
                release(&mut per_process, &pid);
                release(&mut per_member, &uid);
            }
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
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
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                warn!(error = %e, "cannot read the credentials of a connecting peer; closing");
                continue;
            }
        };
        let counted = shared.broker.limits().per_process;
        let mine = if counted { per_process.get(&peer.pid).copied().unwrap_or(0) } else { 0 };
        let member = shared.broker.member(&peer);
        let members = member.map(|uid| per_member.get(&uid).copied().unwrap_or(0));
        if let Some(limit) =
            over_limit(&shared.broker, connections.len(), (mine, members), peer.pid)
        {
            refused += 1;
            if last_refusal_log.get(limit).is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                warn!(
                    peer_pid = peer.pid.unwrap_or_default(),
                    open = connections.len(),
                    refused,
                    "closed a new connection: {limit} is reached (one line per limit per {}s at most; `refused` counts them all)",
                    REFUSAL_LOG_EVERY.as_secs()
                );
                last_refusal_log.insert(limit, Instant::now());
            }
            continue;
        }
        if counted {
            *per_process.entry(peer.pid).or_default() += 1;
        }
        if let Some(uid) = member {
            *per_member.entry(uid).or_default() += 1;
        }
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        connections.spawn(async move {
            let (pid, uid) = (peer.pid, peer.uid);
            serve_connection(stream, peer, shared, shutdown).await;
            (pid, uid)
        });
    }
    drop(listener);
    // Each connection saw the cancellation and is finishing its response; whatever is
    // still there after the drain time is aborted, and awaited either way.
    let drained = tokio::time::timeout(DRAIN + Duration::from_millis(500), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(
    mut stream: tokio::net::UnixStream,
    peer: Peer,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    if peer.uid != shared.broker.uid && !shared.broker.may_control(&peer) {
        // Another user outside the `control_group:` (or the socket was loosened): answer
        // without parsing a byte. The executable is the caller's choice: a digest (see
        // `redact::digest`). A member gets HTTP, but a redemption still fails the lineage
        // check (our uid only) in `redeem`.
        warn!(peer_pid = peer.pid.unwrap_or_default(), peer_uid = peer.uid, exe = %peer.exe_digest(), "refused a connection from another user");
        shared.broker.count_rejection(Rejection::Forbidden);
        refuse_foreign(&mut stream).await;
        return;
    }
    serve_peer(stream, shared, peer, shutdown).await;
}

/// Answers 403 to a connection from another user, reading no more than the request head.
async fn refuse_foreign(stream: &mut tokio::net::UnixStream) {
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
}

/// Serves HTTP on one connection of an already-checked peer, with no task control (the
/// control routes answer 503). Generic over the transport so the fuzz target can drive it
/// through an in-memory pipe.
#[doc(hidden)]
pub async fn serve_http<I>(io: I, broker: Arc<Broker>, peer: Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_peer(io, Arc::new(Shared { broker, control: None }), peer, CancellationToken::new())
        .await;
}

async fn serve_peer<I>(io: I, shared: Arc<Shared>, peer: Peer, shutdown: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.broker.limits().clone();
    // What the peer's program was verified to be, once a redemption on this connection
    // was granted: SO_PEERCRED names one process for the connection's life, so later
    // requests skip the `/proc/PID/exe` check (the lineage check still runs on each).
    // See "Verifying the redeemer" in docs/security.md for what that assumes.
    let program = Arc::new(OnceLock::new());
    let service = hyper::service::service_fn(move |req| {
        let (shared, program) = (shared.clone(), program.clone());
        async move { Ok::<_, Infallible>(handle(req, &shared, peer, &program).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .writev(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let pid = peer.pid.unwrap_or_default();
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                debug!(error = %e, peer_pid = pid, "connection ended with an error");
            }
        }
        () = tokio::time::sleep(limits.connection_lifetime) => {
            debug!(peer_pid = pid, "connection closed after its maximum lifetime");
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, connection).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    peer: Peer,
    program: &OnceLock<Verified>,
) -> Resp {
    // Redemptions are bounded by construction (a body read with its own timeout, a wait for
    // a just-spawned process of at most 2 s, a penalty of at most 5 s) and are the hot path:
    // no per-request timer for them. Everything else gets an overall deadline.
    if req.uri().path().starts_with(protocol::ROUTE_SECRETS) {
        return route(req, shared, peer, program).await;
    }
    let deadline =
        shared.broker.limits().request_timeout + Duration::from_secs(protocol::MAX_WAIT_SECS);
    match tokio::time::timeout(deadline, route(req, shared, peer, program)).await {
        Ok(resp) => resp,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            protocol::errors::TIMEOUT,
            "the request took too long",
        ),
    }
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    peer: Peer,
    program: &OnceLock<Verified>,
) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = match read_body(req, shared.broker.limits().request_timeout).await {
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
        return super::redeem::redeem(
            name,
            (body.auth.as_deref().map(String::as_str), body.proof.as_ref()),
            &shared.broker,
            peer,
            program,
        )
        .await;
    }
    let is_control = path == protocol::ROUTE_STATUS
        || path == protocol::ROUTE_HISTORY
        || path == protocol::ROUTE_EVENTS
        || path == protocol::ROUTE_PAUSE
        || path == protocol::ROUTE_RESUME
        || path.starts_with(protocol::ROUTE_TASKS)
        || path.starts_with(protocol::ROUTE_RUNS);
    if !is_control {
        return error(
            StatusCode::NOT_FOUND,
            protocol::errors::NOT_FOUND,
            format!("no route {path:?} (protocol v{PROTOCOL_VERSION})"),
        );
    }
    let Some(control) = &shared.control else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            protocol::errors::UNAVAILABLE,
            "this server has no task control",
        );
    };
    let ancestry = peer.pid.map_or(Ancestry::Unknown, |pid| shared.broker.task_ancestry(pid));
    if ancestry == Ancestry::OutOfFds {
        tracing::error!(
            peer_pid = peer.pid.unwrap_or_default(),
            "cannot check a control request: the daemon is out of file descriptors; raise its open-file limit (LimitNOFILE=)"
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            protocol::errors::UNAVAILABLE,
            "the daemon is out of file descriptors; try again, and raise its open-file limit",
        );
    }
    if ancestry != Ancestry::Unrelated {
        // The path and the executable are the task's choice: not written out (see
        // `redact::digest`); the route's kind is enough to tell what was tried.
        let kind = path.trim_start_matches("/v1/").split('/').next().unwrap_or("?");
        warn!(peer_pid = peer.pid.unwrap_or_default(), exe = %peer.exe_digest(), route = kind, "refused a control request from inside a task");
        return error(
            StatusCode::FORBIDDEN,
            Rejection::Forbidden.as_str(),
            "tasks may not control the daemon",
        );
    }
    let member = shared.broker.member(&peer);
    control_route(&path, &method, body.query.as_deref(), control, (peer, member)).await
}

async fn control_route(
    path: &str,
    method: &Method,
    query: Option<&str>,
    control: &Control,
    (peer, member): (Peer, Option<u32>),
) -> Resp {
    if path == protocol::ROUTE_STATUS {
        if method != Method::GET {
            return not_allowed("GET");
        }
        return match control.status().await {
            Ok(status) => json(StatusCode::OK, &status),
            Err(e) => fire_error(&e),
        };
    }
    if path == protocol::ROUTE_HISTORY {
        if method != Method::GET {
            return not_allowed("GET");
        }
        return history_route(query, control, member).await;
    }
    if path == protocol::ROUTE_EVENTS {
        return super::events::route(method, query, control, member).await;
    }
    if path == protocol::ROUTE_PAUSE || path == protocol::ROUTE_RESUME {
        return super::pausing::route(path, method, query, control, (peer, member)).await;
    }
    if let Some(rest) = path.strip_prefix(protocol::ROUTE_TASKS) {
        return trigger_route(path, rest, method, control, (peer, member)).await;
    }
    if let Some(id) = path.strip_prefix(protocol::ROUTE_RUNS) {
        if method != Method::GET {
            return not_allowed("GET");
        }
        let number = |key: &str| query_number(query, key);
        let wait = number("wait=").min(protocol::MAX_WAIT_SECS);
        let run_id = id.strip_suffix(protocol::OUTPUT_SUFFIX).unwrap_or(id);
        if member.is_some()
            && let Ok(Some(run)) = control.run(run_id, Duration::ZERO).await
            && let Some(refused) = not_for_member(control, &run.task, member)
        {
            return refused;
        }
        if let Some(id) = id.strip_suffix(protocol::OUTPUT_SUFFIX) {
            return match control.output(id, number("after="), Duration::from_secs(wait)).await {
                Ok(Some(body)) => json(StatusCode::OK, &body),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    protocol::errors::NOT_FOUND,
                    format!("no run {id:?}"),
                ),
                Err(e) => fire_error(&e),
            };
        }
        return match control.run(id, Duration::from_secs(wait)).await {
            Ok(Some(run)) => json(StatusCode::OK, &run),
            Ok(None) => {
                error(StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND, format!("no run {id:?}"))
            }
            Err(e) => fire_error(&e),
        };
    }
    error(StatusCode::NOT_FOUND, protocol::errors::NOT_FOUND, format!("no route {path:?}"))
}

/// `POST /v1/tasks/{name}/trigger`.
async fn trigger_route(
    path: &str,
    rest: &str,
    method: &Method,
    control: &Control,
    (peer, member): (Peer, Option<u32>),
) -> Resp {
    let Some(task) = rest.strip_suffix("/trigger") else {
        return error(
            StatusCode::NOT_FOUND,
            protocol::errors::NOT_FOUND,
            format!("no route {path:?}"),
        );
    };
    if method != Method::POST {
        return not_allowed("POST");
    }
    if let Some(refused) = not_for_member(control, task, member) {
        return refused;
    }
    match control.trigger(task).await {
        Ok(run) => {
            info!(task, run_id = %run.run_id, peer_pid = peer.pid.unwrap_or_default(), peer_uid = peer.uid, exe = %peer.exe(), "run triggered through the socket");
            json(StatusCode::ACCEPTED, &run)
        }
        Err(e) => fire_error(&e),
    }
}

/// `GET /v1/history`: the daemon's user and members (`member`, their uid) are served apart.
async fn history_route(query: Option<&str>, control: &Control, member: Option<u32>) -> Resp {
    let task = query_value(query, "task=");
    match control.history(task, member).await {
        Ok(chunks) => super::reply::json_stream(chunks),
        Err(HistoryError::Busy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            protocol::errors::UNAVAILABLE,
            format!(
                "the daemon is sending its run history to {HISTORY_STREAMS} other clients of your kind (its own user, or members); try again"
            ),
        ),
        Err(HistoryError::Unreadable(e)) => {
            warn!(error = %e, "cannot read the run history for a client");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                protocol::errors::UNAVAILABLE,
                format!("the daemon cannot read its run history: {e}"),
            )
        }
    }
}

/// `403` when the peer is a member (`member`, its uid) whom `task`'s `members:` leaves out.
fn not_for_member(control: &Control, task: &str, member: Option<u32>) -> Option<Resp> {
    let uid = member?;
    if control.member_may(task, uid) {
        return None;
    }
    info!(task, peer_uid = uid, "a member was refused a task its `members:` leaves them out of");
    Some(error(
        StatusCode::FORBIDDEN,
        Rejection::Forbidden.as_str(),
        format!(
            "task {task:?} does not let you (uid {uid}) trigger it or read its output: its `members:` in the task file says who may"
        ),
    ))
}

/// The parts of a request the routes use, with the body read (and bounded).
struct Parts {
    auth: Option<Zeroizing<String>>,
    /// A sealed `secretbox`'s proof ([`protocol::image`]).
    proof: Option<[u8; 32]>,
    query: Option<String>,
}

async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Parts, Resp> {
    use hyper::body::Body as _;
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let proof = req
        .headers()
        .get(protocol::image::PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(protocol::image::parse_proof);
    let query = req.uri().query().map(str::to_string);
    let too_large = || {
        error(StatusCode::PAYLOAD_TOO_LARGE, protocol::errors::TOO_LARGE, "request body too large")
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > protocol::MAX_REQUEST_BODY as u64
    {
        return Err(too_large());
    }
    // Most requests have no body at all: skip the timer then (redemptions are the hot path).
    if req.body().is_end_stream() {
        return Ok(Parts { auth, proof, query });
    }
    match tokio::time::timeout(
        timeout,
        Limited::new(req.into_body(), protocol::MAX_REQUEST_BODY).collect(),
    )
    .await
    {
        Ok(Ok(_)) => Ok(Parts { auth, proof, query }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            protocol::errors::BAD_REQUEST,
            "malformed request body",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            protocol::errors::TIMEOUT,
            "the request body took too long",
        )),
    }
}
