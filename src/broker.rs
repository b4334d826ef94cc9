//! The secret broker: the loaded secrets, the one-time tokens that unlock them, and the Unix
//! socket that serves both to task processes and the user's control commands.
//!
//! [`Broker`] is what the socket server and the task runner share: the locked secret store
//! ([`secrets`]), the token table ([`vault`]) with the failure counts that slow down token
//! guessing, and the pids of running task processes. Its submodules: [`socket`] prepares
//! and binds the socket, [`server`] speaks HTTP on it, [`redeem`] trades a token for a
//! secret after [`peer`] has checked who is asking, and [`control`] is the message
//! contract through which the server asks the daemon's state owner for status and
//! triggers (the broker never holds the daemon, so nothing refers back in a cycle).

mod admission;
pub(crate) mod control;
mod events;
pub(crate) mod feed;
pub(crate) mod keyring;
mod pausing;
pub mod peer;
mod redeem;
pub mod redeemers;
mod reply;
pub mod secrets;
pub mod server;
pub(crate) mod socket;
pub(crate) mod sources;
pub mod vault;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use peer::Peer;
pub use redeemers::Redeemers;
pub use secrets::Secrets;
pub use server::{Limits, serve, serve_http};
pub use vault::{Handle, Token};

use crate::protocol::Rejection;
use vault::{Stats, Vault};

/// Everything a request handler and the task runner share.
///
/// The mutable part sits behind one `Mutex` on purpose: a redemption is the hot path
/// (thousands a second in the benchmark), each critical section is a few hash-map operations
/// with no IO and no await, and a message round trip to an owning task would cost more than
/// the lock. The process-ancestry check, which reads `/proc`, happens between two short
/// sections, never under the lock.
pub struct Broker {
    tokens: Mutex<Tokens>,
    secrets: Arc<Secrets>,
    uid: u32,
    /// This process: read once (`getpid` is a system call each time, on the hot path).
    pid: u32,
    limits: Limits,
    /// The programs that may redeem; `None` (only through [`Broker::new`] without
    /// [`Broker::with_redeemers`]) checks no program. The daemon always sets it.
    redeemers: Option<Arc<Redeemers>>,
    /// `control_group:`: peers of other uids in this group may use the control routes.
    control_gid: Option<u32>,
}

/// The broker's mutable state.
struct Tokens {
    vault: Vault,
    failures: redeem::Failures,
    /// Pids of running task processes (steps and hooks), between spawn and reap.
    active: HashSet<u32>,
}

/// Token counters and the number of live tokens, for `status` and the metrics file.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenStats {
    pub(crate) stats: Stats,
    pub(crate) live: usize,
}

impl TokenStats {
    /// Rejections by reason, in [`Rejection::ALL`] order.
    pub(crate) fn rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Rejection::ALL.iter().zip(self.stats.rejected).map(|(r, n)| (r.as_str(), n))
    }
}

impl Broker {
    /// A broker serving `secrets` to the daemon's own user, with tokens that live `token_ttl`.
    pub fn new(secrets: Arc<Secrets>, token_ttl: Duration, limits: Limits) -> Broker {
        Broker {
            tokens: Mutex::new(Tokens {
                vault: Vault::new(token_ttl),
                failures: redeem::Failures::default(),
                active: HashSet::new(),
            }),
            secrets,
            uid: nix::unistd::getuid().as_raw(),
            pid: std::process::id(),
            limits,
            redeemers: None,
            control_gid: None,
        }
    }

    /// Lets members of group `gid` (of any uid) use the control routes; `None` keeps them
    /// to the daemon's own user.
    #[must_use]
    pub fn with_control_group(mut self, gid: Option<u32>) -> Broker {
        self.control_gid = gid;
        self
    }

    /// Whether a peer of another uid may use the control routes: it is in the
    /// `control_group:`, by the primary gid the kernel vouched for or by the supplementary
    /// groups of the very process that connected. Redemptions never get this far: the
    /// lineage check ([`Broker::task_lineage`]) keeps them to the daemon's uid.
    pub(crate) fn may_control(&self, peer: &Peer) -> bool {
        let Some(gid) = self.control_gid else { return false };
        if peer.gid == gid {
            return true;
        }
        let member = peer
            .pid
            .and_then(crate::sys::proc::supplementary_groups)
            .is_some_and(|g| g.contains(&gid));
        // Read after the groups, so they are those of the process that connected.
        member && peer.still_running()
    }

    /// Grants redemptions only to the programs `redeemers` pinned (see [`redeemers`]).
    #[must_use]
    pub fn with_redeemers(mut self, redeemers: Redeemers) -> Broker {
        self.redeemers = Some(Arc::new(redeemers));
        self
    }

    /// What the peer's program is, or why it may not redeem: from the cache when its file
    /// was seen before, else hashed on a blocking thread.
    ///
    /// Also says whether it had to wait (hash the executable on a blocking thread): the peer
    /// may have exited meanwhile and its pid been reused, so the caller checks it again.
    ///
    /// A peer that sent a `proof` is the sealed `secretbox` image when the proof holds for
    /// its pid and start time (no file to read: the kernel denies a non-dumpable process's
    /// `exe` to its own uid); one whose proof does not hold is checked by its `exe`.
    pub(crate) async fn verify_redeemer(
        &self,
        peer: &Peer,
        proof: Option<&[u8; 32]>,
    ) -> Result<(Option<redeemers::Verified>, bool), &'static str> {
        let Some(redeemers) = &self.redeemers else { return Ok((None, false)) };
        let pid = peer.pid.ok_or("a peer without a pid")?;
        if proof.is_some_and(|p| redeemers.proves_image(pid, peer.started, p)) {
            return Ok((Some(redeemers::Verified::Secretbox), false));
        }
        let (verified, waited) = if let Some(result) = redeemers.verify_cached(pid) {
            (result, false)
        } else {
            let redeemers = redeemers.clone();
            let verified = tokio::task::spawn_blocking(move || redeemers.verify(pid))
                .await
                .unwrap_or(Err(redeemers::Refused::Unreadable));
            (verified, true)
        };
        verified.map(|v| (Some(v), waited)).map_err(redeemers::Refused::why)
    }

    /// The sealed `secretbox` image was found changed: its proofs no longer count (a
    /// `secretbox` run from disk is still checked by its program file).
    pub(crate) fn revoke_image_key(&self) {
        if let Some(redeemers) = &self.redeemers {
            redeemers.revoke_image_key();
        }
    }

    /// Whether a verified program may redeem tokens of `task` (a task's `redeemers:` are its
    /// own).
    pub(crate) fn redeemer_allows(
        &self,
        verified: Option<redeemers::Verified>,
        task: &str,
    ) -> bool {
        match (&self.redeemers, verified) {
            (Some(r), Some(v)) => r.allows(v, task),
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// Locks, ignoring poisoning: every mutation under this lock is a single insert, remove
    /// or counter update, so a panic elsewhere leaves the state consistent; keep serving
    /// rather than failing every later request.
    fn lock(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The uid of `peer` when it is not the daemon's own: a `control_group` member (the
    /// only other uid that gets this far), served apart and capped apart.
    pub(crate) fn member(&self, peer: &Peer) -> Option<u32> {
        (peer.uid != self.uid).then_some(peer.uid)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Mints a token for one process of `task`, valid for `scope`, each secret `limit` times.
    pub fn mint(
        &self,
        task: &Arc<str>,
        scope: &[Arc<str>],
        limit: u32,
    ) -> std::io::Result<(Token, Handle)> {
        self.lock().vault.mint(task, scope, limit, Instant::now())
    }

    /// Records that the token's process started as `pid`: from now on it may redeem, and it
    /// counts as a task process for the control routes.
    pub fn started(&self, handle: Handle, pid: u32) {
        // Read before the lock; the process cannot be reaped (nor its pid reused) until the
        // daemon waits for it, which it does after this.
        let started = crate::sys::proc::start_time(pid);
        let mut tokens = self.lock();
        tokens.vault.bind(handle, pid, started);
        tokens.active.insert(pid);
    }

    /// Records that the token's process was reaped (or never started): its token dies now,
    /// before the pid can be reused.
    pub fn reaped(&self, handle: Handle, pid: Option<u32>) {
        let mut tokens = self.lock();
        tokens.vault.revoke(handle, Instant::now());
        if let Some(pid) = pid {
            tokens.active.remove(&pid);
        }
    }

    /// Records a task process that holds no token (a plain hook): it counts as a task
    /// process for the control routes and for the run's containment all the same.
    pub(crate) fn started_without_token(&self, pid: u32) {
        self.lock().active.insert(pid);
    }

    /// Records that a process without a token was reaped.
    pub(crate) fn reaped_without_token(&self, pid: u32) {
        self.lock().active.remove(&pid);
    }

    /// Pids of running task processes.
    pub(crate) fn active(&self) -> HashSet<u32> {
        self.lock().active.clone()
    }

    /// The token counters (minted, redeemed, rejected by reason).
    pub fn stats(&self) -> Stats {
        self.lock().vault.stats().clone()
    }

    pub(crate) fn token_stats(&self) -> TokenStats {
        let tokens = self.lock();
        TokenStats { stats: tokens.vault.stats().clone(), live: tokens.vault.live() }
    }

    pub(crate) fn count_rejection(&self, rejection: Rejection) {
        self.lock().vault.count_rejection(rejection);
    }

    /// The lineage (the peer and its ancestors) of a peer that may redeem tokens at all, or
    /// why it may not. Decided from the peer alone, before any token is looked at: our uid,
    /// a pid the kernel vouched for and that is still the process that connected, and a
    /// certain place in some task's process tree. As child subreaper (Linux) everything a
    /// task starts stays below the daemon; elsewhere the chain must reach a running task
    /// process. The daemon itself never redeems.
    pub(crate) fn task_lineage(&self, peer: &Peer) -> Result<peer::Lineage, &'static str> {
        let me = self.pid;
        let pid = match peer.pid {
            Some(pid) if peer.uid == self.uid && pid != me => pid,
            Some(_) if peer.uid == self.uid => return Err("the daemon itself"),
            Some(_) => return Err("another user"),
            None => return Err("a peer without a pid"),
        };
        // On Linux every task process is below the daemon (it is their subreaper), so the
        // chain is needed only up to the daemon; elsewhere a task's pid may be anywhere in it.
        let stop = if cfg!(target_os = "linux") { me } else { 1 };
        let lineage = peer::peer_lineage(pid, peer.started, stop)?;
        let in_a_task = if cfg!(target_os = "linux") {
            lineage.pids.contains(&me)
        } else {
            let active = self.active();
            lineage.pids.iter().any(|p| active.contains(p))
        };
        if in_a_task { Ok(lineage) } else { Err("not a task process") }
    }

    /// Whether `pid` is a task process or descends from one (the control routes refuse them,
    /// so a backup job cannot trigger other tasks).
    pub(crate) fn is_task_process(&self, pid: u32) -> bool {
        self.task_ancestry(pid) != peer::Ancestry::Unrelated
    }

    /// How `pid` relates to the task processes: below one of them (or the daemon), not, or
    /// unknown (a broken chain counts as "maybe" and is refused).
    pub(crate) fn task_ancestry(&self, pid: u32) -> peer::Ancestry {
        use peer::{Ancestry, ancestry};
        // As child subreaper (Linux), everything a task starts stays below the daemon, even
        // after its parent exits.
        let me = std::process::id();
        if cfg!(target_os = "linux") {
            return if pid == me { Ancestry::Descends } else { ancestry(pid, me) };
        }
        let mut verdict = Ancestry::Unrelated;
        for a in self.active() {
            match ancestry(pid, a) {
                Ancestry::Unrelated => {}
                Ancestry::Descends => return Ancestry::Descends,
                other => verdict = other,
            }
        }
        verdict
    }
}
