//! Who is on the other end of a socket connection, and whether a process descends from
//! another.
//!
//! The kernel vouches for the peer's uid and pid (`SO_PEERCRED` on Linux; `getpeereid` and
//! `LOCAL_PEERPID` on macOS, both through tokio's `peer_cred`). Ancestry is read from the
//! process table: `/proc/PID/stat` on Linux, `proc_pidinfo` on macOS. A process the daemon
//! spawned cannot be reaped, and its pid reused, while the daemon has not waited for it; the
//! daemon revokes a token as soon as it reaps the token's process.

use std::fmt;
use std::path::PathBuf;

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
        match parent_of(current) {
            Some(0) => return Ancestry::Unrelated,
            Some(parent) if parent != current => current = parent,
            _ => return Ancestry::Unknown,
        }
    }
    Ancestry::Unknown
}

/// `chain` (nearest first, never empty) extended with the ancestors of its last pid, up to
/// `stop` (included) or init; `None` when the chain breaks (a process exited under us, or we
/// may not look) or runs deeper than real trees do. A redemption asks for the chain up to
/// the daemon only: above it nothing can be a task, and each step is a read of `/proc` on
/// the hot path (walking on to init tripled its cost).
fn extend_lineage(mut chain: Vec<u32>, stop: u32) -> Option<Vec<u32>> {
    let mut current = *chain.last()?;
    while current > 1 && current != stop {
        if chain.len() > MAX_DEPTH {
            return None;
        }
        match parent_of(current)? {
            0 => break,
            parent if parent == current => return None,
            parent => {
                chain.push(parent);
                current = parent;
            }
        }
    }
    Some(chain)
}

/// The lineage of a connected peer up to `stop` ([`extend_lineage`]), and proof that it is
/// the lineage of the process that connected: its start time must still be `started`, the
/// one read at accept. On Linux the peer's parent and start time come from one read of its
/// stat line (one `/proc` open fewer per redemption than reading them apart); elsewhere the
/// start time is read after the chain.
pub fn peer_lineage(pid: u32, started: Option<u64>, stop: u32) -> Result<Vec<u32>, &'static str> {
    const EXITED: &str = "a process that has exited";
    const UNREADABLE: &str = "a process whose ancestry cannot be read";
    let started = started.ok_or(EXITED)?;
    #[cfg(target_os = "linux")]
    {
        let (parent, start) =
            read_stat(pid, |s| Some((stat_field::<u32>(s, 4)?, stat_field::<u64>(s, 22)?)))
                .ok_or(EXITED)?;
        if start != started {
            return Err(EXITED);
        }
        if pid == stop || parent == 0 {
            return Ok(vec![pid]);
        }
        if parent == pid {
            return Err(UNREADABLE);
        }
        extend_lineage(vec![pid, parent], stop).ok_or(UNREADABLE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let chain = extend_lineage(vec![pid], stop).ok_or(UNREADABLE)?;
        if start_time(pid) == Some(started) { Ok(chain) } else { Err(EXITED) }
    }
}

/// Whether `pid` certainly is `ancestor` or one of its descendants.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    ancestry(pid, ancestor) == Ancestry::Descends
}

/// The parent of a process, if it exists and we may look.
#[cfg(target_os = "linux")]
pub fn parent_of(pid: u32) -> Option<u32> {
    read_stat(pid, parse_stat_ppid)
}

/// Reads `/proc/PID/stat` with one `read` into a stack buffer and hands the line to `parse`.
/// The kernel returns the whole line at once; `read_to_string` would add a `statx` and a
/// second `read` for its end, on the redemption path that reads several of these per request.
#[cfg(target_os = "linux")]
fn read_stat<T>(pid: u32, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    use std::io::Read;
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 1024];
    let n = file.read(&mut buf).ok()?;
    if n == buf.len() {
        // Longer than any stat line seen; read it whole rather than cut it.
        let mut all = buf.to_vec();
        file.read_to_end(&mut all).ok()?;
        return parse(&String::from_utf8_lossy(&all));
    }
    // Lossy: `comm` is any bytes the process chose; the fields after it are ASCII.
    parse(&String::from_utf8_lossy(&buf[..n]))
}

/// `/proc/PID/stat` is `pid (comm) state ppid ...`; `comm` may contain spaces and `)`, so we
/// split after the last `)`.
#[cfg(any(target_os = "linux", test))]
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    stat_field(stat, 4)
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line, for fields after `comm`.
#[cfg(any(target_os = "linux", test))]
fn stat_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// When a process started (clock ticks since boot, field 22 of `/proc/PID/stat`).
#[cfg(target_os = "linux")]
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid, |stat| stat_field(stat, 22))
}

#[cfg(target_os = "macos")]
pub fn start_time(pid: u32) -> Option<u64> {
    let info = bsdinfo(pid)?;
    Some(info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn start_time(_pid: u32) -> Option<u64> {
    None
}

#[cfg(target_os = "macos")]
pub fn parent_of(pid: u32) -> Option<u32> {
    Some(bsdinfo(pid)?.pbi_ppid)
}

/// The kernel's BSD view of a process (`proc_pidinfo(PROC_PIDTBSDINFO)`).
#[cfg(target_os = "macos")]
fn bsdinfo(pid: u32) -> Option<libc::proc_bsdinfo> {
    // SAFETY: PROC_PIDTBSDINFO fills a proc_bsdinfo.
    unsafe { pidinfo(pid, libc::PROC_PIDTBSDINFO) }
}

/// One `proc_pidinfo` record of process `pid`.
///
/// # Safety
/// `T` must be the plain C struct (integers and byte arrays) that `flavor` fills.
#[cfg(target_os = "macos")]
pub(crate) unsafe fn pidinfo<T>(pid: u32, flavor: libc::c_int) -> Option<T> {
    let mut info = std::mem::MaybeUninit::<T>::zeroed();
    let size = std::mem::size_of::<T>() as libc::c_int;
    // SAFETY: `info` is writable for `size` bytes; the kernel fills at most that many.
    let n = unsafe {
        libc::proc_pidinfo(pid as libc::c_int, flavor, 0, info.as_mut_ptr().cast(), size)
    };
    // SAFETY: zero is a valid `T` (the caller's promise), and the kernel filled it whole.
    (n == size).then(|| unsafe { info.assume_init() })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn parent_of(_pid: u32) -> Option<u32> {
    None
}

/// The supplementary groups of process `pid`: on Linux the kernel's own list
/// (`Groups:` in `/proc/PID/status`, what file access is decided by, so the same list that
/// let it through the socket directory).
#[cfg(target_os = "linux")]
pub fn supplementary_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Not read elsewhere yet: only the peer's primary group counts for `control_group:`.
#[cfg(not(target_os = "linux"))]
pub fn supplementary_groups(_pid: u32) -> Option<Vec<u32>> {
    None
}

/// The executable of a process, for logs.
#[cfg(target_os = "linux")]
pub fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(target_os = "macos")]
pub fn executable(pid: u32) -> Option<PathBuf> {
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: `buf` is writable for the size we pass.
    let n = unsafe {
        libc::proc_pidpath(pid as libc::c_int, buf.as_mut_ptr().cast(), buf.len() as u32)
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn executable(_pid: u32) -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_by_number() {
        let stat = "7 (a b) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 50";
        assert_eq!(stat_field::<u64>(stat, 22), Some(12345));
        assert_eq!(stat_field::<u32>(stat, 4), Some(1));
    }

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

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("123 (restic) S 45 123 123 0"), Some(45));
        assert_eq!(parse_stat_ppid("123 (a) b) (c) R 7 1 1"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lineage_runs_from_the_process_to_init() {
        let me = std::process::id();
        let chain = extend_lineage(vec![me], 1).unwrap();
        assert_eq!(chain[0], me);
        assert_eq!(chain[1], parent_of(me).unwrap());
        assert_eq!(extend_lineage(vec![u32::MAX - 1], 1), None);
        // Cut at a process on the way, or run on to init when the chain does not meet it.
        let parent = parent_of(me).unwrap();
        assert_eq!(extend_lineage(vec![me], parent).unwrap(), [me, parent]);
        assert_eq!(extend_lineage(vec![me], me).unwrap(), [me]);
        assert_eq!(extend_lineage(vec![me], u32::MAX - 1).unwrap(), chain);
        assert!(start_time(me).is_some_and(|t| t > 0));
        // A peer's lineage holds only while its start time is the one seen at accept.
        assert_eq!(peer_lineage(me, start_time(me), parent).unwrap(), [me, parent]);
        assert_eq!(peer_lineage(me, start_time(me), 1).unwrap(), chain);
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
