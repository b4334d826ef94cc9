//! Redeeming a token for a secret. The peer is checked first, before the token is looked
//! up: our uid, still the process that connected (pids are reused), inside some task's
//! process tree ([`Broker::task_lineage`]), running the pinned `secretbox` or a listed
//! redeemer ([`super::redeemers`]). Then the token must be the peer's own (its
//! process is the peer or an ancestor), alive and in scope; a peer that fails either
//! check hears `forbidden`, whatever the token's state, and the token is left as it was.
//! Failures are counted per peer process (and its parent) for a progressive delay: a
//! legitimate task fails once and gives up; something probing tokens is slowed down. Refusals
//! are logged with digests of the strings the caller chose (see [`refuse`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::peer::Peer;
use super::redeemers::Verified;
use super::reply::{Resp, error, respond};
use super::{Broker, Secrets};
use crate::protocol;
use crate::protocol::Rejection;

/// Consecutive failed redemptions per peer process, for a progressive delay: a legitimate
/// task fails once and gives up; something probing tokens is slowed down.
#[derive(Debug, Default)]
pub(super) struct Failures {
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
pub(crate) fn penalty(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    (Duration::from_millis(100) * (1 << doublings)).min(MAX_PENALTY)
}

fn rejection(r: Rejection) -> Resp {
    let (status, message) = match r {
        Rejection::Unknown => (StatusCode::UNAUTHORIZED, "this is not a token this daemon issued"),
        Rejection::Expired => (StatusCode::UNAUTHORIZED, "the token has expired (see token_ttl)"),
        Rejection::Used => (
            StatusCode::UNAUTHORIZED,
            "the token was already used for this secret (see redeem_limit)",
        ),
        Rejection::Revoked => {
            (StatusCode::UNAUTHORIZED, "the process the token was issued to has exited")
        }
        Rejection::NotInScope => (
            StatusCode::FORBIDDEN,
            "the token's task may not fetch this secret (see the task's secrets:)",
        ),
        // One sentence for every case: it must not tell an outsider anything about the token.
        Rejection::Forbidden => (
            StatusCode::FORBIDDEN,
            "only the process the token was given to, and its children, may redeem it",
        ),
    };
    error(status, r.as_str(), message)
}

/// Why a redemption was refused, and for the log: the token's task when the caller was
/// shown to be the token's process (never otherwise: that would tell whose token it is), and
/// why a peer was refused before its token was looked at.
struct Refusal {
    reason: Rejection,
    task: Option<Arc<str>>,
    why: &'static str,
}

impl Refusal {
    fn forbidden(why: &'static str) -> Refusal {
        Refusal { reason: Rejection::Forbidden, task: None, why }
    }
}

/// `program` is what this connection's peer was verified to be by an earlier granted
/// redemption on the same connection, if any (set here after a grant).
pub(super) async fn redeem(
    name: &str,
    (token, proof): (Option<&str>, Option<&[u8; 32]>),
    broker: &Broker,
    peer: Peer,
    program: &OnceLock<Verified>,
) -> Resp {
    // The name's syntax is about the caller's own string, never about a token: checked first.
    if !crate::config::valid_name(name) {
        return error(
            StatusCode::BAD_REQUEST,
            protocol::errors::BAD_REQUEST,
            "invalid secret name",
        );
    }
    let token = token.unwrap_or("");
    let fingerprint = super::vault::fingerprint_of(token);
    let now = Instant::now();
    // The peer first: one that may not redeem at all is refused before its token is looked
    // up, so the answer, the delay and the token itself are the same whatever its state.
    let checked = match broker.task_lineage(&peer) {
        Ok(lineage) => match program.get() {
            Some(known) => Ok((lineage, (Some(*known), false))),
            None => broker.verify_redeemer(&peer, proof).await.map(|verified| (lineage, verified)),
        },
        Err(why) => Err(why),
    };
    if checked.as_ref().err() == Some(&super::peer::OUT_OF_FDS) {
        // A resource failure, not a verdict: no penalty, no rejection counted.
        tracing::error!(
            peer_pid = peer.pid.unwrap_or_default(),
            "cannot check a redemption: the daemon is out of file descriptors; raise its open-file limit (LimitNOFILE=)"
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            protocol::errors::UNAVAILABLE,
            "the daemon is out of file descriptors; try again, and raise its open-file limit",
        );
    }
    let verified_program = checked.as_ref().ok().and_then(|(_, (verified, _))| *verified);
    let outcome = match checked {
        Ok((lineage, verified)) => {
            attempt(name, token, broker, &peer, &lineage, verified, now).await
        }
        Err(why) => {
            broker.count_rejection(Rejection::Forbidden);
            Err(Refusal::forbidden(why))
        }
    };
    let pid = peer.pid.unwrap_or_default();
    let task = match outcome {
        Ok(task) => {
            broker.lock().failures.clear(pid);
            // Proven by a grant (including any re-check after hashing): remembered for
            // the connection's later requests.
            if let Some(verified) = verified_program {
                let _ = program.set(verified);
            }
            task
        }
        Err(refusal) => return refuse(refusal, name, fingerprint, broker, &peer, now).await,
    };
    if broker.secrets().get(name).is_none() {
        // validate guarantees scoped secrets are declared, and all declared ones are loaded.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            protocol::errors::UNAVAILABLE,
            "secret not loaded",
        );
    }
    info!(
        token = %fingerprint, secret = name, task = %task, peer_pid = pid, peer_uid = peer.uid,
        exe = %peer.exe(), "secret redeemed"
    );
    // No copy: the body is the value's locked pages themselves (hyper writes it with a
    // vectored write straight from them), kept alive by the store until hyper drops it.
    let body = Bytes::from_owner(LockedBody { secrets: broker.secrets.clone(), name: name.into() });
    respond(StatusCode::OK, body, "application/octet-stream")
}

/// A response body that is a secret's value in the locked store, not a copy of it: a copy in
/// the heap would be unlocked (swappable) for as long as the response is in flight.
struct LockedBody {
    secrets: Arc<Secrets>,
    name: Box<str>,
}

impl AsRef<[u8]> for LockedBody {
    fn as_ref(&self) -> &[u8] {
        // The store is immutable and the name was looked up before: always found.
        self.secrets.get(&self.name).map_or(&[], |s| s.expose_secret().as_bytes())
    }
}

/// Phase one and two for a peer inside some task: the vault answers only the token's own
/// process tree with the token's state; everyone else hears `forbidden`.
async fn attempt(
    name: &str,
    token: &str,
    broker: &Broker,
    peer: &Peer,
    lineage: &super::peer::Lineage,
    (verified, mut waited): (Option<super::redeemers::Verified>, bool),
    now: Instant,
) -> Result<Arc<str>, Refusal> {
    let checked = |at: Instant| {
        let mut tokens = broker.lock();
        tokens.vault.check(token, name, at, &lineage.pids).map_err(|reason| Refusal {
            reason,
            // Forbidden tells nothing; the token's own process is told its task's name.
            task: (reason != Rejection::Forbidden)
                .then(|| tokens.vault.task_for(token, &lineage.pids))
                .flatten(),
            why: if reason == Rejection::Forbidden {
                "not the token's process tree, or no such token"
            } else {
                ""
            },
        })
    };
    let mut pending = checked(now)?;
    // The daemon records a token's process right after spawning it; a very quick first
    // redemption may arrive in between.
    let wait_until = now + UNBOUND_WAIT;
    while pending.pid.is_none() && Instant::now() < wait_until {
        waited = true;
        tokio::time::sleep(Duration::from_millis(5)).await;
        pending = checked(Instant::now())?;
    }
    if pending.pid.is_none() {
        broker.count_rejection(Rejection::Forbidden);
        return Err(Refusal::forbidden("the token's process was never recorded"));
    }
    // Another task's `redeemers:` are not this one's: the same answer as for an outsider.
    if !broker.redeemer_allows(verified, &pending.task) {
        broker.count_rejection(Rejection::Forbidden);
        return Err(Refusal::forbidden("a redeemer listed by another task"));
    }
    // The peer may have exited while we waited, and its pid been reused. Without a wait
    // (the common case) the check `task_lineage` made after reading the lineage holds: no
    // await since, so nothing else ran on this task.
    if waited && !peer.still_running() {
        broker.count_rejection(Rejection::Forbidden);
        return Err(Refusal::forbidden("a process that has exited"));
    }
    // The token's process is in the lineage by pid; it must also be the process the token
    // was handed to: a pipeline stage reaped with its group keeps its token until its own
    // wait returns, and its pid may be another process's by then. Its start time was read
    // with the lineage, with its parent link (read again only where the walk did not).
    if let (Some(owner), Some(started)) = (pending.pid, pending.started)
        && lineage.start_of(owner).or_else(|| crate::sys::proc::start_time(owner)) != Some(started)
    {
        broker.count_rejection(Rejection::Forbidden);
        return Err(Refusal::forbidden("the token's process has exited; its pid is another's"));
    }
    match broker.lock().vault.consume(&pending, name, Instant::now()) {
        Ok(()) => Ok(pending.task),
        Err(reason) => Err(Refusal { reason, task: Some(pending.task), why: "" }),
    }
}

/// Logs a refusal, holds the answer back by the peer's penalty, and answers.
///
/// The requested name and the peer's executable are the caller's choice: they are logged
/// as digests, never written out, so the redactor cannot answer "is this a secret?" with a
/// `***` in a log the caller may read.
async fn refuse(
    refusal: Refusal,
    name: &str,
    fingerprint: super::vault::Fingerprint,
    broker: &Broker,
    peer: &Peer,
    now: Instant,
) -> Resp {
    let pid = peer.pid.unwrap_or_default();
    // Counted for the process and for its parent, so a loop that starts a new `secretbox`
    // for every attempt is slowed down too.
    let parent = crate::sys::proc::parent_of(pid).filter(|p| *p > 1);
    let count = {
        let mut tokens = broker.lock();
        let failures = &mut tokens.failures;
        let own = failures.record(pid, now);
        parent.map_or(own, |p| own.max(failures.record(p, now)))
    };
    let delay = penalty(count);
    warn!(
        token = %fingerprint, requested = %crate::redact::digest(name.as_bytes()),
        task = refusal.task.as_deref().unwrap_or("?"), peer_pid = pid, peer_uid = peer.uid,
        exe = %peer.exe_digest(), reason = refusal.reason.as_str(), why = refusal.why,
        failures = count, delay_ms = delay.as_millis() as u64, "refused a secret redemption"
    );
    tokio::time::sleep(delay).await;
    if count >= SLOW_DOWN_AFTER {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            protocol::errors::SLOW_DOWN,
            format!("{count} failed redemptions in a row from this process; slow down"),
        );
    }
    rejection(refusal.reason)
}
