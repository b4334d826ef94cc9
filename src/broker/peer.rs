//! Who is on the other end of a socket connection, and whether a process descends from
//! another.
//!
//! The kernel vouches for the peer's uid and pid (`SO_PEERCRED` on Linux; `getpeereid` and
//! `LOCAL_PEERPID` on macOS, both through tokio's `peer_cred`). Ancestry is read from the
//! process table ([`crate::sys::proc`]). A process the daemon
//! spawned cannot be reaped, and its pid reused, while the daemon has not waited for it; the
//! daemon revokes a token as soon as it reaps the token's process.

use std::fmt;
use std::path::PathBuf;

use crate::sys::proc::{executable, parent_and_start, start_time};

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// When the process with that pid started, read at accept: a connection outlives its
    /// process, and a pid can be reused, so later checks make sure it is still the same one.
    pub started: Option<u64>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        Ok(Peer { pid, uid: cred.uid(), gid: cred.gid(), started: pid.and_then(start_time) })
    }

    /// Whether the process that connected still runs under its pid (not exited, pid not
    /// reused). False when we cannot tell.
    pub fn still_running(&self) -> bool {
        match (self.pid, self.started) {
            (Some(pid), Some(started)) => start_time(pid) == Some(started),
            _ => false,
        }
    }

    /// The peer's executable, for logs ("?" when it cannot be read).
    pub fn exe(&self) -> Exe {
        Exe(self.pid.and_then(executable))
    }

    /// The peer's executable as a digest, for the log of a refusal: the path is the
    /// caller's choice, and written out it would pass through the redactor, which would
    /// tell whoever reads the log whether it equals a secret.
    pub(crate) fn exe_digest(&self) -> String {
        use std::os::unix::ffi::OsStrExt;
        match self.pid.and_then(executable) {
            Some(path) => crate::redact::digest(path.as_os_str().as_bytes()),
            None => "?".into(),
        }
    }
}

/// Displays an executable path, or `?`.
pub struct Exe(Option<PathBuf>);

impl fmt::Display for Exe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("?"),
        }
    }
}

/// How far up the process tree we look before giving up (real trees are a handful deep).
const MAX_DEPTH: usize = 64;

/// How a process relates to a would-be ancestor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancestry {
    Descends,
    Unrelated,
    /// The chain broke (a process exited under us, or we may not look): callers that guard
    /// something must treat this as "maybe", not as "no".
    Unknown,
    /// The daemon ran out of file descriptors reading it: as [`Ancestry::Unknown`] for what
    /// it guards, but said as what it is.
    OutOfFds,
}

/// Whether `pid` is `ancestor` or one of its descendants.
pub fn ancestry(pid: u32, ancestor: u32) -> Ancestry {
    let mut current = pid;
    for _ in 0..MAX_DEPTH {
        if current == ancestor {
            return Ancestry::Descends;
        }
        if current <= 1 {
            return Ancestry::Unrelated;
        }
        match crate::sys::proc::read_stat(current) {
            Ok(Some(stat)) if stat.ppid == 0 => return Ancestry::Unrelated,
            Ok(Some(stat)) if stat.ppid != current => current = stat.ppid,
            Err(e) if crate::sys::proc::out_of_fds(&e) => return Ancestry::OutOfFds,
            _ => return Ancestry::Unknown,
        }
    }
    Ancestry::Unknown
}

/// A process and its ancestors, nearest first, each with when it started as read with the
/// chain (`None` for the one the walk stopped at, which it does not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub pids: Vec<u32>,
    starts: Vec<Option<u64>>,
}

impl Lineage {
    /// When `pid` started, as read with the chain; `None` when it is not in it, or was not
    /// read.
    pub fn start_of(&self, pid: u32) -> Option<u64> {
        let i = self.pids.iter().position(|p| *p == pid)?;
        self.starts[i]
    }
}

/// `chain` (nearest first, never empty) extended with the ancestors of its last pid, up to
/// `stop` (included) or init; `None` when the chain breaks (a process exited under us, or we
/// may not look) or runs deeper than real trees do. A redemption asks for the chain up to
/// the daemon only: above it nothing can be a task, and each step is a read of `/proc` on
/// the hot path (walking on to init tripled its cost).
///
/// `started`, if known, is a start time no process of the chain from its last on may be
/// younger than (the start of the last one's child, or of the last one itself). A parent
/// never starts after its child: an ancestor that did is another process that got the pid
/// of one that exited while the chain was read, and the chain is broken there. Each start
/// time read is kept with its pid.
fn extend_lineage(chain: Vec<u32>, stop: u32, mut started: Option<u64>) -> Option<Lineage> {
    let mut starts = vec![None; chain.len()];
    let mut pids = chain;
    let mut current = *pids.last()?;
    while current > 1 && current != stop {
        if pids.len() > MAX_DEPTH {
            return None;
        }
        let (parent, start) = parent_and_start(current)?;
        if started.is_some_and(|child| start > child) {
            return None;
        }
        started = Some(start);
        *starts.last_mut()? = Some(start);
        match parent {
            0 => break,
            parent if parent == current => return None,
            parent => {
                pids.push(parent);
                starts.push(None);
                current = parent;
            }
        }
    }
    // The stop (the daemon) is not compared: its pid cannot be reused while it runs.
    Some(Lineage { pids, starts })
}

/// The lineage of a connected peer up to `stop` ([`extend_lineage`]), and proof that it is
/// the lineage of the process that connected: its start time must still be `started`, the
/// one read at accept. On Linux the peer's parent and start time come from one read of its
/// stat line (one `/proc` open fewer per redemption than reading them apart); elsewhere the
/// start time is read after the chain.
pub fn peer_lineage(pid: u32, started: Option<u64>, stop: u32) -> Result<Lineage, &'static str> {
    const EXITED: &str = "a process that has exited";
    const UNREADABLE: &str = "a process whose ancestry cannot be read";
    let Some(started) = started else {
        // Its start time could not be read at accept. Never granted then; said as a lack of
        // descriptors when that is the likely cause (it is alive, or still unreadable).
        return match crate::sys::proc::read_stat(pid) {
            Ok(None) => Err(EXITED),
            Ok(Some(_)) => Err(OUT_OF_FDS),
            Err(e) if crate::sys::proc::out_of_fds(&e) => Err(OUT_OF_FDS),
            Err(_) => Err(EXITED),
        };
    };
    #[cfg(target_os = "linux")]
    {
        let stat = match crate::sys::proc::read_stat(pid) {
            Ok(Some(stat)) => stat,
            Ok(None) => return Err(EXITED),
            Err(e) if crate::sys::proc::out_of_fds(&e) => return Err(OUT_OF_FDS),
            Err(_) => return Err(EXITED),
        };
        let (parent, start) = (stat.ppid, stat.start_time);
        if start != started {
            return Err(EXITED);
        }
        if pid == stop || parent == 0 {
            return Ok(Lineage { pids: vec![pid], starts: vec![Some(started)] });
        }
        if parent == pid {
            return Err(UNREADABLE);
        }
        let mut lineage =
            extend_lineage(vec![pid, parent], stop, Some(started)).ok_or(UNREADABLE)?;
        lineage.starts[0] = Some(started);
        Ok(lineage)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let chain = extend_lineage(vec![pid], stop, Some(started)).ok_or(UNREADABLE)?;
        if start_time(pid) == Some(started) { Ok(chain) } else { Err(EXITED) }
    }
}

/// Why a peer's lineage could not be read when the daemon is out of file descriptors: a
/// resource failure, answered as one, never as a refusal of the peer.
pub(crate) const OUT_OF_FDS: &str = "the daemon is out of file descriptors";

/// Whether `pid` certainly is `ancestor` or one of its descendants.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    ancestry(pid, ancestor) == Ancestry::Descends
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::sys::proc::parent_of;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reaped_process_no_longer_has_its_start_time() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id();
        let started = start_time(pid).unwrap();
        let peer = Peer { pid: Some(pid), uid: 0, gid: 0, started: Some(started) };
        assert!(peer.still_running());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!peer.still_running());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn ancestry_is_unknown_when_the_chain_breaks() {
        assert_eq!(ancestry(u32::MAX - 1, 1), Ancestry::Unknown);
        assert_eq!(ancestry(std::process::id(), 999_999_999), Ancestry::Unrelated);
        assert!(start_time(std::process::id()).is_some());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lineage_runs_from_the_process_to_init() {
        let me = std::process::id();
        let chain = extend_lineage(vec![me], 1, None).unwrap().pids;
        assert_eq!(chain[0], me);
        assert_eq!(chain[1], parent_of(me).unwrap());
        assert_eq!(extend_lineage(vec![u32::MAX - 1], 1, None), None);
        // Cut at a process on the way, or run on to init when the chain does not meet it.
        let parent = parent_of(me).unwrap();
        assert_eq!(extend_lineage(vec![me], parent, None).unwrap().pids, [me, parent]);
        assert_eq!(extend_lineage(vec![me], me, None).unwrap().pids, [me]);
        assert_eq!(extend_lineage(vec![me], u32::MAX - 1, None).unwrap().pids, chain);
        // Started as this process did: the same chain. Said to have started at boot (before
        // any ancestor could have): an ancestor younger than its child is a reused pid, and
        // the chain is broken there.
        let timed = extend_lineage(vec![me], 1, start_time(me)).unwrap();
        assert_eq!((&timed.pids, timed.start_of(me)), (&chain, start_time(me)));
        assert_eq!(timed.start_of(parent), start_time(parent));
        assert_eq!(extend_lineage(vec![me], 1, Some(0)), None);
        assert!(start_time(me).is_some_and(|t| t > 0));
        // A peer's lineage holds only while its start time is the one seen at accept.
        assert_eq!(peer_lineage(me, start_time(me), parent).unwrap().pids, [me, parent]);
        let lineage = peer_lineage(me, start_time(me), 1).unwrap();
        assert_eq!(lineage.pids, chain);
        // Each process's start time comes with the chain, as read.
        assert_eq!(lineage.start_of(me), start_time(me));
        assert_eq!(lineage.start_of(parent), start_time(parent));
        assert!(peer_lineage(me, start_time(me).map(|t| t + 1), parent).is_err());
        assert!(peer_lineage(me, None, parent).is_err());
        assert!(peer_lineage(u32::MAX - 1, Some(1), 1).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_descends_from_its_parent_not_from_a_sibling() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        assert!(descends_from(me, me));
        assert!(descends_from(me, parent));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(descends_from(child.id(), me));
        assert!(!descends_from(me, child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
