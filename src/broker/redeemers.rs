//! Which programs may redeem a token: the `secretbox` the daemon serves, pinned by digest at
//! start, and the programs a task lists under `redeemers:` (tools that speak the protocol
//! themselves), pinned the same way.
//!
//! A peer's program is read through `/proc/PID/exe` of the pid the kernel vouched for: opening
//! that link opens the very file the process runs, even if its path has since been renamed
//! over or deleted, so swapping the file on disk after the process started does not help. The
//! file is hashed once per identity (device, inode, size, modification and change times):
//! a running executable cannot be written to (`ETXTBSY`), and any other write changes its
//! change time, which nobody but root can set back, so an unchanged identity is unchanged
//! content. A cache hit costs one `open` and one `fstat`.
//!
//! A `secretbox` that only root can change (root's file in root's directories, as
//! `/usr/bin/secretbox` from a package) is read again when a peer presents other bytes: a
//! package upgrade replaces it under a running daemon, and the daemon's user could not have
//! written it. One the daemon's user can write (`~/.cargo/bin`) stays pinned at its digest at
//! start until the daemon restarts.
//!
//! What this does not cover: a peer that is the genuine `secretbox`, started by a program
//! that keeps its output (a swapped `secretbox` that runs the real one). Against a same-user
//! attacker who can write your programs, pinning the task's own programs (`pin_binaries:`)
//! narrows that, and a second uid (system mode) closes it; docs/security.md says so.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A digest, SHA-256 of a program's bytes.
pub type Digest = [u8; 32];

/// The allowed redeemers and what the daemon has learnt of peers' programs.
#[derive(Debug, Default)]
pub struct Redeemers {
    /// The `secretbox` every task may use, when one was found at start, and its digests so
    /// far (more than one only after upgrades of a root-managed file).
    secretbox: Option<(PathBuf, Mutex<Vec<Digest>>)>,
    /// Per task: the digests of its `redeemers:`.
    by_task: HashMap<Arc<str>, Vec<Digest>>,
    /// The digest of each program file seen, by identity.
    seen: Mutex<HashMap<Identity, Digest>>,
    /// The key in the daemon's sealed `secretbox` image, when there is one: a peer that
    /// proves it ([`crate::protocol::image`]) runs that image.
    image_key: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// Set once the image was found changed (its key may be known): proofs no longer count.
    key_revoked: std::sync::atomic::AtomicBool,
}

/// What identifies a file's content without reading it (see the module's paragraph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Most program identities remembered; past that the cache starts over (a peer that keeps
/// presenting new programs only costs itself the hashing, slowed by the failure penalty).
const MAX_SEEN: usize = 256;

/// Why a peer's program is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its executable cannot be opened or read.
    Unreadable,
    /// The daemon ran out of file descriptors opening it: no verdict about the peer.
    OutOfFds,
    /// Neither the pinned `secretbox` nor any task's redeemer.
    Unknown,
}

impl Refused {
    pub fn why(self) -> &'static str {
        match self {
            Refused::Unreadable => "a process whose executable cannot be read",
            Refused::OutOfFds => super::peer::OUT_OF_FDS,
            Refused::Unknown => {
                "an executable that is neither the secretbox pinned at start nor a listed redeemer"
            }
        }
    }
}

/// What a peer's program was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Secretbox,
    /// A redeemer of some task, by digest; [`Redeemers::allows`] says whether of the one.
    Redeemer(Digest),
}

impl Redeemers {
    /// Pins `secretbox` (when given) and each task's redeemers by hashing them now.
    /// `tasks` lists each task's name with its `redeemers:`. The error names the file.
    pub fn pin<'a>(
        secretbox: Option<&Path>,
        tasks: impl IntoIterator<Item = (&'a str, &'a [PathBuf])>,
    ) -> Result<Redeemers, String> {
        let hash = |path: &Path| {
            File::open(path)
                .and_then(|mut f| crate::digest::sha256_file(&mut f))
                .map_err(|e| format!("cannot read {} to pin it: {e}", path.display()))
        };
        let secretbox = match secretbox {
            Some(path) => Some((path.to_path_buf(), Mutex::new(vec![hash(path)?]))),
            None => None,
        };
        let mut by_task = HashMap::new();
        for (task, paths) in tasks {
            if paths.is_empty() {
                continue;
            }
            let digests = paths.iter().map(|p| hash(p)).collect::<Result<Vec<_>, _>>()?;
            by_task.insert(Arc::from(task), digests);
        }
        Ok(Redeemers {
            secretbox,
            by_task,
            seen: Mutex::default(),
            image_key: None,
            key_revoked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The pinned `secretbox`'s path.
    pub(crate) fn pinned_secretbox(&self) -> Option<&Path> {
        self.secretbox.as_ref().map(|(path, _)| path.as_path())
    }

    /// Makes a fresh key for the sealed `secretbox` image and remembers it; returns it for
    /// the image (see [`crate::protocol::image`]).
    #[cfg(target_os = "linux")]
    pub(crate) fn new_image_key(&mut self) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
        use rand::TryRngCore as _;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(key.as_mut_slice())
            .map_err(|e| format!("cannot read random bytes for the secretbox image: {e}"))?;
        self.image_key = Some(key.clone());
        Ok(key)
    }

    /// From now on no proof counts: the image's key may be known to someone else.
    pub(crate) fn revoke_image_key(&self) {
        self.key_revoked.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `proof` shows that the peer `pid`, started at `started`, runs the sealed
    /// `secretbox` image. Compared in constant time.
    pub(crate) fn proves_image(&self, pid: u32, started: Option<u64>, proof: &[u8; 32]) -> bool {
        if self.key_revoked.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let (Some(key), Some(started)) = (&self.image_key, started) else { return false };
        let expected = crate::protocol::image::proof(key, pid, started);
        expected.iter().zip(proof).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Checks the program of process `pid`, before any token is looked at: it must be the
    /// pinned `secretbox` or a redeemer of some task. Blocking on a cache miss (the file is
    /// hashed): call it where blocking is allowed.
    pub fn verify(&self, pid: u32) -> Result<Verified, Refused> {
        let digest = self.digest_of(pid)?;
        if let Some(verified) = self.classify(digest) {
            return verified;
        }
        // Perhaps a package upgrade replaced a root-managed `secretbox`: read it again.
        match &self.secretbox {
            Some((path, digests)) if root_managed(path) => {
                let now = File::open(path).and_then(|mut f| crate::digest::sha256_file(&mut f));
                if now.is_ok_and(|d| d == digest) {
                    let mut digests = lock(digests);
                    if digests.len() >= MAX_VERSIONS {
                        digests.remove(0);
                    }
                    digests.push(digest);
                    tracing::info!(secretbox = %path.display(), "secretbox was replaced by root (an upgrade?); its new digest is pinned");
                    return Ok(Verified::Secretbox);
                }
                Err(Refused::Unknown)
            }
            _ => Err(Refused::Unknown),
        }
    }

    /// [`Redeemers::verify`] when the peer's program file was seen before (no hashing);
    /// `None` when it would have to be hashed.
    pub fn verify_cached(&self, pid: u32) -> Option<Result<Verified, Refused>> {
        let meta = match crate::sys::proc::executable_metadata(pid) {
            Ok(meta) => meta,
            Err(e) => return Some(Err(unreadable(&e))),
        };
        let digest = *lock(&self.seen).get(&Identity::of(&meta))?;
        self.classify(digest)
    }

    /// What a digest is, or `None` when it is no known one (then the blocking path decides).
    fn classify(&self, digest: Digest) -> Option<Result<Verified, Refused>> {
        if self.secretbox.as_ref().is_some_and(|(_, d)| lock(d).contains(&digest)) {
            return Some(Ok(Verified::Secretbox));
        }
        if self.by_task.values().any(|d| d.contains(&digest)) {
            return Some(Ok(Verified::Redeemer(digest)));
        }
        None
    }

    /// Whether a verified program may redeem tokens of `task`.
    pub fn allows(&self, verified: Verified, task: &str) -> bool {
        match verified {
            Verified::Secretbox => true,
            Verified::Redeemer(d) => self.by_task.get(task).is_some_and(|v| v.contains(&d)),
        }
    }

    fn digest_of(&self, pid: u32) -> Result<Digest, Refused> {
        let mut file = crate::sys::proc::open_executable(pid).map_err(|e| unreadable(&e))?;
        let before = file.metadata().map_err(|_| Refused::Unreadable)?;
        let id = Identity::of(&before);
        if let Some(d) = lock(&self.seen).get(&id) {
            return Ok(*d);
        }
        let digest = crate::digest::sha256_file(&mut file).map_err(|_| Refused::Unreadable)?;
        // Remembered only if the file did not change while it was read.
        if file.metadata().is_ok_and(|after| Identity::of(&after) == id) {
            let mut seen = lock(&self.seen);
            if seen.len() >= MAX_SEEN {
                seen.clear();
            }
            seen.insert(id, digest);
        }
        Ok(digest)
    }
}

/// Why an executable could not be read: the daemon's own lack of descriptors, or the file.
fn unreadable(e: &std::io::Error) -> Refused {
    if crate::sys::proc::out_of_fds(e) { Refused::OutOfFds } else { Refused::Unreadable }
}

/// Locks, ignoring poisoning: only inserts, removes and clears happen under these locks, so a
/// panic elsewhere leaves them consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Versions of a root-managed `secretbox` remembered (processes of an old version may still
/// be redeeming while the new one is in place).
const MAX_VERSIONS: usize = 4;

/// Whether only root can have changed `path`: the file and every directory above it are
/// root's and writable by nobody else (sticky directories do not count).
fn root_managed(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else { return false };
    real.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_program_is_verified_and_a_changed_copy_is_not() {
        let me = std::env::current_exe().unwrap();
        let pid = std::process::id();
        let pinned = Redeemers::pin(Some(&me), []).unwrap();
        assert_eq!(pinned.verify(pid), Ok(Verified::Secretbox));
        // A second time from the cache, same answer.
        assert_eq!(pinned.verify(pid), Ok(Verified::Secretbox));

        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"not this program").unwrap();
        let elsewhere = Redeemers::pin(Some(&other), []).unwrap();
        assert_eq!(elsewhere.verify(pid), Err(Refused::Unknown));

        let listed: Vec<PathBuf> = vec![me.clone()];
        let for_task = Redeemers::pin(Some(&other), [("t", listed.as_slice())]).unwrap();
        let verified = for_task.verify(pid).unwrap();
        assert!(matches!(verified, Verified::Redeemer(_)));
        assert!(for_task.allows(verified, "t"));
        assert!(!for_task.allows(verified, "u"));
        assert_eq!(Redeemers::default().verify(u32::MAX), Err(Refused::Unreadable));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_revoked_image_key_proves_nothing() {
        let mut redeemers = Redeemers::default();
        assert!(!redeemers.proves_image(7, Some(9), &[0u8; 32]));
        let key = redeemers.new_image_key().unwrap();
        let proof = crate::protocol::image::proof(&key, 7, 9);
        assert!(redeemers.proves_image(7, Some(9), &proof));
        assert!(!redeemers.proves_image(7, Some(10), &proof), "another start time");
        redeemers.revoke_image_key();
        assert!(!redeemers.proves_image(7, Some(9), &proof));
    }
}
