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
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer { pid: cred.pid().and_then(|p| u32::try_from(p).ok()), uid: cred.uid(), gid: cred.gid() })
    }

    /// The peer's executable, for logs ("?" when it cannot be read).
    pub fn exe(&self) -> Exe {
        Exe(self.pid.and_then(executable))
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

/// Whether `pid` is `ancestor` or one of its descendants.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..MAX_DEPTH {
        if current == ancestor {
            return true;
        }
        match parent_of(current) {
            Some(parent) if parent != current && parent != 0 => current = parent,
            _ => return false,
        }
    }
    false
}

/// The parent of a process, if it exists and we may look.
#[cfg(target_os = "linux")]
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat)
}

/// `/proc/PID/stat` is `pid (comm) state ppid ...`; `comm` may contain spaces and `)`, so we
/// split after the last `)`.
#[cfg(any(target_os = "linux", test))]
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(target_os = "macos")]
pub fn parent_of(pid: u32) -> Option<u32> {
    let mut info: libc::proc_bsdinfo = unsafe_zeroed_bsdinfo();
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is a properly sized, writable proc_bsdinfo; the kernel fills at most `size` bytes.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then_some(info.pbi_ppid)
}

#[cfg(target_os = "macos")]
fn unsafe_zeroed_bsdinfo() -> libc::proc_bsdinfo {
    // SAFETY: proc_bsdinfo is a plain C struct of integers and byte arrays; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn parent_of(_pid: u32) -> Option<u32> {
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
    let n = unsafe { libc::proc_pidpath(pid as libc::c_int, buf.as_mut_ptr().cast(), buf.len() as u32) };
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
    fn stat_parsing_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("123 (restic) S 45 123 123 0"), Some(45));
        assert_eq!(parse_stat_ppid("123 (a) b) (c) R 7 1 1"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
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
