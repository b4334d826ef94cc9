//! One-time tokens: mint, redeem, expire, revoke. Pure logic; the caller supplies the clock
//! and does the IO (the process-ancestry check happens between [`Vault::check`] and
//! [`Vault::consume`], outside the lock).
//!
//! A token is 256 bits from the OS random generator, handed to exactly one process in its
//! environment, and stored here only as its SHA-256 hash. It is scoped to its task's
//! `secrets:` list; each secret in scope can be redeemed `redeem_limit` times (default once).
//! It dies at the first of: its TTL, its process exiting ([`Vault::revoke`]), every secret in
//! scope used up. Expired tokens leave the table through a heap ordered by expiry, so
//! collection never scans the whole table; a bounded set of tombstones remembers why recent
//! tokens died, so `secretbox` can say "expired" rather than "unknown".
//!
//! Why a token was refused is told only to its own process tree: [`Vault::check`] is given
//! the caller's lineage, and a live or dead token whose process is not in it (or a
//! well-formed token nobody issued) is `Forbidden`, whatever its state, so a process that
//! stole a token learns nothing about it and cannot use it up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::protocol::{Rejection, TOKEN_PREFIX};

const TOKEN_BYTES: usize = 32;
/// How many dead tokens we remember, and for how long.
const MAX_TOMBSTONES: usize = 10_000;
const TOMBSTONE_AGE: Duration = Duration::from_secs(3600);

type Hash = [u8; 32];

/// A token as handed to a child process. Never logged; wiped on drop.
pub struct Token(Zeroizing<String>);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Identifies a minted token without revealing it (its hash). Safe to keep and log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(Hash);

impl Handle {
    /// A short, non-reversible name for logs: the first 8 hex digits of the token's hash.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]))
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.fingerprint())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u32);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tok:{:08x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct Entry {
    task: Arc<str>,
    /// Secrets in scope and how many redemptions each has left.
    scope: Vec<(Arc<str>, u32)>,
    /// The process the token was handed to, once spawned.
    pid: Option<u32>,
    /// When that process started (as `sys::proc::start_time`): with the pid, who it is. A
    /// pid alone may name another process once its own was reaped.
    started: Option<u64>,
    expires: Instant,
}

/// What a successful [`Vault::check`] found: enough for the caller's ancestry check.
#[derive(Debug, Clone)]
pub struct Pending {
    pub handle: Handle,
    pub task: Arc<str>,
    /// The token's process; `None` for the instant between spawning it and recording it.
    pub pid: Option<u32>,
    /// When the token's process started, when that could be read at spawn.
    pub started: Option<u64>,
}

/// Counters for `status` and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub minted: u64,
    pub redeemed: u64,
    pub rejected: [u64; 6],
}

impl Stats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

/// Why a recent token died, and the process it was handed to while that process is not
/// reaped (after that its pid may be reused, so nobody can show the token was theirs).
struct Tombstone {
    why: Rejection,
    /// Its task, for the log line of a refusal its own process is shown.
    task: Arc<str>,
    at: Instant,
    owner: Option<u32>,
}

pub struct Vault {
    ttl: Duration,
    live: HashMap<Hash, Entry>,
    expiries: BinaryHeap<Reverse<(Instant, Hash)>>,
    tombstones: HashMap<Hash, Tombstone>,
    tomb_order: VecDeque<(Instant, Hash)>,
    stats: Stats,
}

fn hash(token: &str) -> Hash {
    crate::digest::sha256(token.as_bytes())
}

/// The log fingerprint of whatever a caller presented as a token (one-way, like [`Handle`]).
pub fn fingerprint_of(token: &str) -> Fingerprint {
    Handle(hash(token)).fingerprint()
}

/// Whether `text` has the shape of a token; anything else is refused before hashing.
fn well_formed(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == TOKEN_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

impl Vault {
    pub fn new(ttl: Duration) -> Vault {
        Vault {
            ttl,
            live: HashMap::new(),
            expiries: BinaryHeap::new(),
            tombstones: HashMap::new(),
            tomb_order: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Live (unexpired, unrevoked, not used up) tokens.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Mints a token for one process of `task`, valid for `scope`, each secret `limit` times.
    pub fn mint(
        &mut self,
        task: &Arc<str>,
        scope: &[Arc<str>],
        limit: u32,
        now: Instant,
    ) -> std::io::Result<(Token, Handle)> {
        self.collect(now);
        let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut raw[..])
            .map_err(|e| std::io::Error::other(format!("the OS random generator failed: {e}")))?;
        let mut text = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + TOKEN_BYTES * 2));
        text.push_str(TOKEN_PREFIX);
        for b in raw.iter() {
            text.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
            text.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
        }
        let h = hash(&text);
        let expires = now + self.ttl;
        self.live.insert(
            h,
            Entry {
                task: task.clone(),
                scope: scope.iter().map(|s| (s.clone(), limit)).collect(),
                pid: None,
                started: None,
                expires,
            },
        );
        self.expiries.push(Reverse((expires, h)));
        self.stats.minted += 1;
        Ok((Token(text), Handle(h)))
    }

    /// Records the process a token was handed to, and when it started. Until then the
    /// token cannot be redeemed.
    pub fn bind(&mut self, handle: Handle, pid: u32, started: Option<u64>) {
        if let Some(entry) = self.live.get_mut(&handle.0) {
            entry.pid = Some(pid);
            entry.started = started;
        }
    }

    /// Kills a token because its process exited (or was never started). A token that had
    /// died already forgets its process: the pid may be reused from now on.
    pub fn revoke(&mut self, handle: Handle, now: Instant) {
        if let Some(entry) = self.live.remove(&handle.0) {
            self.bury(handle.0, Rejection::Revoked, now, None, entry.task);
        } else if let Some(tomb) = self.tombstones.get_mut(&handle.0) {
            tomb.owner = None;
        }
    }

    /// Phase one of a redemption: is this token alive, the caller's, and may it fetch
    /// `secret`? `lineage` holds the caller's pid and its ancestors; unless the token's
    /// process is among them, the answer is `Forbidden` before anything about the token is
    /// looked at. An unbound token (its process not recorded yet) is returned with no pid
    /// and nothing checked: the caller waits and asks again.
    pub fn check(
        &mut self,
        token: &str,
        secret: &str,
        now: Instant,
        lineage: &[u32],
    ) -> Result<Pending, Rejection> {
        self.collect(now);
        let result = self.check_inner(token, secret, now, lineage);
        if let Err(r) = result {
            self.count_rejection(r);
        }
        result
    }

    fn check_inner(
        &mut self,
        token: &str,
        secret: &str,
        now: Instant,
        lineage: &[u32],
    ) -> Result<Pending, Rejection> {
        if !well_formed(token) {
            return Err(Rejection::Unknown);
        }
        let h = hash(token);
        let Some(entry) = self.live.get(&h) else {
            return Err(match self.tombstones.get(&h) {
                Some(tomb) if tomb.owner.is_some_and(|o| lineage.contains(&o)) => tomb.why,
                _ => Rejection::Forbidden,
            });
        };
        match entry.pid {
            None => {
                return Ok(Pending {
                    handle: Handle(h),
                    task: entry.task.clone(),
                    pid: None,
                    started: None,
                });
            }
            Some(owner) if !lineage.contains(&owner) => return Err(Rejection::Forbidden),
            Some(_) => {}
        }
        if entry.expires <= now {
            return Err(Rejection::Expired);
        }
        match entry.scope.iter().find(|(name, _)| &**name == secret) {
            None => return Err(Rejection::NotInScope),
            Some((_, 0)) => return Err(Rejection::Used),
            Some(_) => {}
        }
        Ok(Pending {
            handle: Handle(h),
            task: entry.task.clone(),
            pid: entry.pid,
            started: entry.started,
        })
    }

    /// The task of `token`, for the log of a refusal: only when the caller's `lineage`
    /// holds the token's process (an outsider learns nothing, not even whose it is).
    pub fn task_for(&self, token: &str, lineage: &[u32]) -> Option<Arc<str>> {
        if !well_formed(token) {
            return None;
        }
        let h = hash(token);
        match (self.live.get(&h), self.tombstones.get(&h)) {
            (Some(entry), _) if entry.pid.is_some_and(|p| lineage.contains(&p)) => {
                Some(entry.task.clone())
            }
            (None, Some(tomb)) if tomb.owner.is_some_and(|o| lineage.contains(&o)) => {
                Some(tomb.task.clone())
            }
            _ => None,
        }
    }

    /// Phase two: atomically takes one redemption of `secret`, re-checking everything that
    /// may have changed since [`Vault::check`] (another caller may have won the race).
    pub fn consume(
        &mut self,
        pending: &Pending,
        secret: &str,
        now: Instant,
    ) -> Result<(), Rejection> {
        let h = pending.handle.0;
        // The caller's lineage was checked in phase one, and a token's process never changes.
        let result = match self.live.get_mut(&h) {
            None => Err(self.tombstones.get(&h).map_or(Rejection::Forbidden, |t| t.why)),
            Some(entry) if entry.expires <= now => Err(Rejection::Expired),
            Some(entry) => match entry.scope.iter_mut().find(|(name, _)| &**name == secret) {
                None => Err(Rejection::NotInScope),
                Some((_, 0)) => Err(Rejection::Used),
                Some((_, left)) => {
                    *left -= 1;
                    if entry.scope.iter().all(|(_, left)| *left == 0) {
                        let (owner, task) = (entry.pid, entry.task.clone());
                        self.live.remove(&h);
                        self.bury(h, Rejection::Used, now, owner, task);
                    }
                    Ok(())
                }
            },
        };
        match result {
            Ok(()) => self.stats.redeemed += 1,
            Err(r) => self.count_rejection(r),
        }
        result
    }

    /// Counts a rejection decided outside the vault (peer checks).
    pub fn count_rejection(&mut self, why: Rejection) {
        let i = Rejection::ALL.iter().position(|r| *r == why).expect("listed");
        self.stats.rejected[i] += 1;
    }

    /// Drops tokens whose TTL has passed, oldest first; stops at the first live one.
    pub fn collect(&mut self, now: Instant) {
        while let Some(Reverse((expires, h))) = self.expiries.peek().copied() {
            if expires > now {
                break;
            }
            self.expiries.pop();
            // The entry may be gone already (used up, revoked); only bury it if it is still
            // the one this heap record was pushed for.
            if self.live.get(&h).is_some_and(|e| e.expires == expires)
                && let Some(entry) = self.live.remove(&h)
            {
                self.bury(h, Rejection::Expired, now, entry.pid, entry.task);
            }
        }
        while let Some((at, h)) = self.tomb_order.front().copied() {
            if self.tomb_order.len() <= MAX_TOMBSTONES && now.duration_since(at) < TOMBSTONE_AGE {
                break;
            }
            self.tomb_order.pop_front();
            if self.tombstones.get(&h).is_some_and(|t| t.at == at) {
                self.tombstones.remove(&h);
            }
        }
    }

    fn bury(&mut self, h: Hash, why: Rejection, now: Instant, owner: Option<u32>, task: Arc<str>) {
        self.tombstones.insert(h, Tombstone { why, task, at: now, owner });
        self.tomb_order.push_back((now, h));
    }

    /// How many heap records are waiting; bounded by the tokens minted within one TTL
    /// (plus those used up or revoked early, which leave with the next collection).
    pub fn pending_expiries(&self) -> usize {
        self.expiries.len()
    }
}

use rand::TryRngCore as _;

#[cfg(test)]
mod tests {
    use super::*;

    /// The lineage of a caller in the tokens' process trees (they are bound to 1, 7 or 42).
    const MINE: &[u32] = &[42, 7, 1];

    fn vault() -> (Vault, Instant, Arc<str>) {
        (Vault::new(Duration::from_secs(30)), Instant::now(), Arc::from("docs"))
    }

    fn scope(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn tokens_are_random_well_formed_and_stored_hashed() {
        let (mut v, now, task) = vault();
        let (a, ha) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        let (b, _) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(well_formed(a.expose()), "{}", a.expose());
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
        assert!(v.live.contains_key(&hash(a.expose())));
        assert!(!format!("{a:?}{ha:?}").contains(&a.expose()[5..]));
    }

    #[test]
    fn a_token_redeems_each_secret_in_scope_once() {
        let (mut v, now, task) = vault();
        let (t, h) = v.mint(&task, &scope(&["repo", "cloud"]), 1, now).unwrap();
        v.bind(h, 42, None);
        let p = v.check(t.expose(), "repo", now, MINE).unwrap();
        assert_eq!(p.pid, Some(42));
        v.consume(&p, "repo", now).unwrap();
        assert_eq!(v.check(t.expose(), "repo", now, MINE).unwrap_err(), Rejection::Used);
        assert_eq!(v.check(t.expose(), "other", now, MINE).unwrap_err(), Rejection::NotInScope);
        let p = v.check(t.expose(), "cloud", now, MINE).unwrap();
        v.consume(&p, "cloud", now).unwrap();
        // Used up entirely: gone from the table, remembered as used.
        assert_eq!(v.live(), 0);
        assert_eq!(v.check(t.expose(), "cloud", now, MINE).unwrap_err(), Rejection::Used);
        assert_eq!(v.stats().redeemed, 2);
    }

    #[test]
    fn redeem_limit_allows_several_uses() {
        let (mut v, now, task) = vault();
        let (t, h) = v.mint(&task, &scope(&["repo"]), 3, now).unwrap();
        v.bind(h, 1, None);
        for _ in 0..3 {
            let p = v.check(t.expose(), "repo", now, MINE).unwrap();
            v.consume(&p, "repo", now).unwrap();
        }
        assert_eq!(v.check(t.expose(), "repo", now, MINE).unwrap_err(), Rejection::Used);
    }

    #[test]
    fn consume_is_atomic_after_a_shared_check() {
        let (mut v, now, task) = vault();
        let (t, h) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        v.bind(h, 1, None);
        let p1 = v.check(t.expose(), "repo", now, MINE).unwrap();
        let p2 = v.check(t.expose(), "repo", now, MINE).unwrap();
        assert!(v.consume(&p1, "repo", now).is_ok());
        assert_eq!(v.consume(&p2, "repo", now).unwrap_err(), Rejection::Used);
    }

    #[test]
    fn expiry_revocation_and_garbage_are_distinguished() {
        let (mut v, now, task) = vault();
        let (t, h) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        v.bind(h, 1, None);
        let later = now + Duration::from_secs(31);
        assert_eq!(v.check(t.expose(), "repo", later, MINE).unwrap_err(), Rejection::Expired);
        assert_eq!(v.live(), 0, "collected on the way");
        let (t2, h2) = v.mint(&task, &scope(&["repo"]), 1, later).unwrap();
        v.bind(h2, 1, None);
        v.revoke(h2, later);
        // Its process is reaped, so its pid may be reused: nobody can show it was theirs.
        assert_eq!(v.check(t2.expose(), "repo", later, MINE).unwrap_err(), Rejection::Forbidden);
        for garbage in ["", "x", "bnz1_zz"] {
            assert_eq!(v.check(garbage, "repo", later, MINE).unwrap_err(), Rejection::Unknown);
        }
        let nobodys = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
        assert_eq!(v.check(&nobodys, "repo", later, MINE).unwrap_err(), Rejection::Forbidden);
        assert_eq!(v.stats().rejected_total(), 6);
    }

    #[test]
    fn a_stranger_hears_forbidden_whatever_the_state_and_changes_nothing() {
        let (mut v, now, task) = vault();
        let stranger: &[u32] = &[99, 1000];
        let (t, h) = v.mint(&task, &scope(&["repo", "cloud"]), 1, now).unwrap();
        v.bind(h, 42, None);
        let p = v.check(t.expose(), "cloud", now, MINE).unwrap();
        v.consume(&p, "cloud", now).unwrap();
        let (used, hu) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        v.bind(hu, 42, None);
        let p = v.check(used.expose(), "repo", now, MINE).unwrap();
        v.consume(&p, "repo", now).unwrap();
        let nobodys = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
        for (token, name) in [
            (t.expose(), "repo"),
            (t.expose(), "cloud"),
            (t.expose(), "other"),
            (used.expose(), "repo"),
            (&nobodys, "repo"),
        ] {
            assert_eq!(
                v.check(token, name, now, stranger).unwrap_err(),
                Rejection::Forbidden,
                "{name}"
            );
        }
        // The owner's view is untouched: the same answers as before the stranger came.
        assert_eq!(v.check(t.expose(), "cloud", now, MINE).unwrap_err(), Rejection::Used);
        assert_eq!(v.check(used.expose(), "repo", now, MINE).unwrap_err(), Rejection::Used);
        let p = v.check(t.expose(), "repo", now, MINE).unwrap();
        v.consume(&p, "repo", now).unwrap();
        // Once the owner is reaped, a dead token's reason is nobody's to hear.
        v.revoke(hu, now);
        assert_eq!(v.check(used.expose(), "repo", now, MINE).unwrap_err(), Rejection::Forbidden);
    }

    #[test]
    fn unbound_tokens_have_no_process_yet() {
        let (mut v, now, task) = vault();
        let (t, h) = v.mint(&task, &scope(&["repo"]), 1, now).unwrap();
        assert_eq!(v.check(t.expose(), "repo", now, MINE).unwrap().pid, None);
        v.bind(h, 7, Some(123_456));
        let bound = v.check(t.expose(), "repo", now, MINE).unwrap();
        // The start time travels with the pid, for the redemption to compare.
        assert_eq!((bound.pid, bound.started), (Some(7), Some(123_456)));
    }

    #[test]
    fn collection_leaves_no_unbounded_state() {
        let (mut v, now, task) = vault();
        for i in 0..20_000u64 {
            let at = now + Duration::from_millis(i);
            let (_, h) = v.mint(&task, &scope(&["repo"]), 1, at).unwrap();
            if i % 2 == 0 {
                v.revoke(h, at);
            }
        }
        let end = now + Duration::from_secs(3600 * 2);
        v.collect(end);
        assert_eq!(v.live(), 0);
        assert_eq!(v.pending_expiries(), 0);
        assert!(v.tombstones.len() <= MAX_TOMBSTONES);
        assert_eq!(v.tombstones.len(), v.tomb_order.len().min(v.tombstones.len()));
    }
}
