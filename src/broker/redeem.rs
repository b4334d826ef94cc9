//! Redeeming a token for a secret: the token must be alive and in scope, and the caller must
//! be the token's process or one of its descendants, still the process that connected (pids
//! are reused). Failures are counted per peer process (and its parent) for a progressive
//! delay: a legitimate task fails once and gives up; something probing tokens is slowed down.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use secrecy::ExposeSecret;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::Broker;
use super::peer::{self, Peer};
use super::server::{Resp, error, respond};
use super::vault::Rejection;
use crate::protocol;

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
        Rejection::Forbidden => {
            (StatusCode::FORBIDDEN, "only the task's own processes may redeem its token")
        }
    };
    error(status, r.as_str(), message)
}

pub(super) async fn redeem(name: &str, token: Option<&str>, broker: &Broker, peer: Peer) -> Resp {
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
    let outcome = async {
        let mut pending = broker.lock().vault.check(token, name, now).map_err(|r| (r, None))?;
        // The daemon records a token's process right after spawning it; a very quick first
        // redemption may arrive in between.
        let wait_until = now + UNBOUND_WAIT;
        while pending.pid.is_none() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
            pending =
                broker.lock().vault.check(token, name, Instant::now()).map_err(|r| (r, None))?;
        }
        // Outside the lock: the caller must be the token's process or one of its
        // descendants, and still the process that connected (pids are reused).
        let allowed = match (pending.pid, peer.pid) {
            (Some(owner), Some(caller)) => {
                peer.still_running() && peer::descends_from(caller, owner)
            }
            _ => false,
        };
        if !allowed {
            broker.count_rejection(Rejection::Forbidden);
            return Err((Rejection::Forbidden, Some(pending.task)));
        }
        match broker.lock().vault.consume(&pending, name, Instant::now()) {
            Ok(()) => Ok(pending.task),
            Err(r) => Err((r, Some(pending.task))),
        }
    }
    .await;
    let pid = peer.pid.unwrap_or_default();
    let task = match outcome {
        Ok(task) => {
            broker.lock().failures.clear(pid);
            task
        }
        Err((r, task)) => {
            // Counted for the process and for its parent, so a loop that starts a new
            // `secretbox` for every attempt is slowed down too.
            let parent = peer::parent_of(pid).filter(|p| *p > 1);
            let count = {
                let mut tokens = broker.lock();
                let failures = &mut tokens.failures;
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
    let Some(secret) = broker.secrets().get(name) else {
        // validate guarantees scoped secrets are declared, and all declared ones are loaded.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            protocol::errors::UNAVAILABLE,
            "secret not loaded",
        );
    };
    info!(
        token = %fingerprint, secret = name, task = %task, peer_pid = pid, peer_uid = peer.uid,
        exe = %peer.exe(), "secret redeemed"
    );
    // The response owns a zeroizing copy, wiped when hyper drops the body after writing it.
    let body = Bytes::from_owner(Zeroizing::new(secret.expose_secret().as_bytes().to_vec()));
    respond(StatusCode::OK, body, "application/octet-stream")
}
