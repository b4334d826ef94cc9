//! The process table, as the kernel shows it: `/proc` on Linux, `proc_pidinfo` and
//! `proc_pidpath` on macOS. Every read of `/proc` in the crate is here, with one parser of
//! `/proc/PID/stat`.
//!
//! Reads race with the processes they describe: a process may exit (and its pid be reused)
//! between two reads. Callers that must know it is the same process compare start times
//! ([`start_time`]) before and after.

use std::fs::File;
use std::path::PathBuf;

/// The fields of `/proc/PID/stat` the crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub(crate) state: char,
    pub(crate) ppid: u32,
    pub(crate) pgrp: i32,
    /// When the process started, in clock ticks since boot.
    pub(crate) start_time: u64,
}

impl Stat {
    /// Whether the process has ended (a zombie not yet reaped, or dead).
    pub(crate) fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses a `/proc/PID/stat` line: `pid (comm) state ppid pgrp ...`. `comm` may hold spaces
/// and `)`, so the fields are read after the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let after = &line[line.rfind(')')? + 1..];
    // Fields 3 (state) to 22 (starttime), numbered as in proc(5).
    let fields: Vec<&str> = after.split_whitespace().take(20).collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of a live (or zombie) process.
///
/// One `read` into a stack buffer: the kernel returns the whole line at once, and
/// `read_to_string` would add a `statx` and a second `read` for its end, on the redemption
/// path that reads several of these per request. `None` where there is no `/proc` (macOS).
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    read_stat(pid).ok().flatten()
}

/// [`stat`], telling a process that is gone (`Ok(None)`) from a read that failed for another
/// reason, such as this process being out of file descriptors ([`out_of_fds`]).
pub(crate) fn read_stat(pid: u32) -> std::io::Result<Option<Stat>> {
    use std::io::Read;
    let gone = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => Ok(None),
        _ => Err(e),
    };
    let mut file = match File::open(format!("/proc/{pid}/stat")) {
        Ok(file) => file,
        Err(e) => return gone(e),
    };
    let mut buf = [0u8; 1024];
    let n = match file.read(&mut buf) {
        Ok(n) => n,
        Err(e) => return gone(e),
    };
    if n == buf.len() {
        // Longer than any stat line seen; read it whole rather than cut it.
        let mut all = buf.to_vec();
        if let Err(e) = file.read_to_end(&mut all) {
            return gone(e);
        }
        return Ok(parse_stat(&String::from_utf8_lossy(&all)));
    }
    // Lossy: `comm` is any bytes the process chose; the fields after it are ASCII.
    Ok(parse_stat(&String::from_utf8_lossy(&buf[..n])))
}

/// Whether an error means this process (EMFILE) or the system (ENFILE) has run out of file
/// descriptors: a resource failure, never a verdict about whoever asked.
pub(crate) fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// When a process started: clock ticks since boot on Linux, microseconds since the epoch on
/// macOS. Only ever compared with another reading for the same pid.
#[cfg(target_os = "linux")]
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

#[cfg(target_os = "macos")]
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let info = bsdinfo(pid)?;
    Some(info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn start_time(_pid: u32) -> Option<u64> {
    None
}

/// The parent of a process and when the process started (as [`start_time`]), from one
/// reading: a lineage compares them, since a parent never starts after its child.
#[cfg(target_os = "linux")]
pub(crate) fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    stat(pid).map(|s| (s.ppid, s.start_time))
}

#[cfg(target_os = "macos")]
pub(crate) fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    let info = bsdinfo(pid)?;
    Some((info.pbi_ppid, info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn parent_and_start(_pid: u32) -> Option<(u32, u64)> {
    None
}

/// The parent of a process, if it exists and we may look.
#[cfg(target_os = "linux")]
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    stat(pid).map(|s| s.ppid)
}

#[cfg(target_os = "macos")]
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    Some(bsdinfo(pid)?.pbi_ppid)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn parent_of(_pid: u32) -> Option<u32> {
    None
}

/// The supplementary groups of process `pid`: on Linux the kernel's own list (`Groups:` in
/// `/proc/PID/status`, what file access is decided by).
#[cfg(target_os = "linux")]
pub(crate) fn supplementary_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Not read elsewhere yet: only the peer's primary group counts for `control_group:`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn supplementary_groups(_pid: u32) -> Option<Vec<u32>> {
    None
}

/// The path of the file a process runs, for logs.
#[cfg(target_os = "linux")]
pub(crate) fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(target_os = "macos")]
pub(crate) fn executable(pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: `buf` is writable for the size passed; the kernel writes at most that many.
    let n = unsafe {
        libc::proc_pidpath(pid as libc::c_int, buf.as_mut_ptr().cast(), buf.len() as u32)
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn executable(_pid: u32) -> Option<PathBuf> {
    None
}

/// The file process `pid` runs. On Linux through `/proc/PID/exe`, which opens that very file
/// whatever happened to its path since; elsewhere by the path the kernel reports, which may
/// have been replaced since the process started (a window the docs state).
#[cfg(target_os = "linux")]
pub(crate) fn open_executable(pid: u32) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/exe"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn open_executable(pid: u32) -> std::io::Result<File> {
    File::open(executable(pid).ok_or(std::io::ErrorKind::NotFound)?)
}

/// The metadata of the file `pid` runs: on Linux one `statx` through the `/proc/PID/exe`
/// link (opening it first costs an `openat` and a `close` more, and the kernel resolves the
/// link the same way, with the same ptrace access check, for both).
#[cfg(target_os = "linux")]
pub(crate) fn executable_metadata(pid: u32) -> std::io::Result<std::fs::Metadata> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn executable_metadata(pid: u32) -> std::io::Result<std::fs::Metadata> {
    open_executable(pid)?.metadata()
}

/// A process's program name: the file name of its `argv[0]`, which is what `comm` holds
/// for a program run by path, but not for one run from a sealed image (`comm` is then the
/// descriptor number of `/proc/self/fd/N`, while the daemon sets `argv[0]` to the program's
/// name). `/proc/PID/cmdline` is readable even for a non-dumpable process. Falls back to
/// `comm` for a process that emptied its arguments.
pub(crate) fn command_name(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    if !name.is_empty() {
        return Some(String::from_utf8_lossy(name).into_owned());
    }
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    Some(String::from_utf8_lossy(comm.strip_suffix(b"\n").unwrap_or(&comm)).into_owned())
}

/// Every pid in `/proc`.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// The uid that owns process `pid` (its `/proc/PID` directory).
pub(crate) fn owner(pid: i32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Process `pid`'s environment block (`NAME=value\0` each), if we may read it.
pub(crate) fn environ(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

/// This process's direct children (from every thread's `children` list).
pub(crate) fn own_children() -> Vec<i32> {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for thread in threads.flatten() {
        if let Ok(children) = std::fs::read_to_string(thread.path().join("children")) {
            out.extend(children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// This process's threads.
#[cfg(target_os = "linux")]
pub(crate) fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(Iterator::count)
}

#[cfg(target_os = "macos")]
pub(crate) fn thread_count() -> Option<usize> {
    // SAFETY: PROC_PIDTASKINFO fills a proc_taskinfo, a plain C struct.
    let info: libc::proc_taskinfo = unsafe { pidinfo(std::process::id(), libc::PROC_PIDTASKINFO) }?;
    Some(usize::try_from(info.pti_threadnum).unwrap_or(0))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn thread_count() -> Option<usize> {
    None
}

/// The descriptors this process has open (including the one the listing itself uses).
pub(crate) fn own_fds() -> Vec<i32> {
    let dir = if cfg!(target_os = "linux") { "/proc/self/fd" } else { "/dev/fd" };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// `/proc/self/mountinfo`.
#[cfg(target_os = "linux")]
pub(crate) fn own_mountinfo() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
}

/// `/proc/self/cgroup`.
#[cfg(target_os = "linux")]
pub(crate) fn own_cgroup() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/self/cgroup")
}

/// `/proc/self/smaps`: this process's mappings with their page counts.
#[cfg(target_os = "linux")]
pub(crate) fn own_smaps() -> Option<String> {
    std::fs::read_to_string("/proc/self/smaps").ok()
}

/// `/proc/self/uid_map`: how this user namespace maps uids.
pub(crate) fn own_uid_map() -> Option<String> {
    std::fs::read_to_string("/proc/self/uid_map").ok()
}

/// The uid unmapped owners show as (`/proc/sys/kernel/overflowuid`, 65534 by default).
pub(crate) fn overflow_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// How many processes the kernel's out-of-memory killer has killed since boot, on the whole
/// machine (`oom_kill` in `/proc/vmstat`, Linux 4.13 and later).
pub(crate) fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The one-minute load average (`/proc/loadavg`'s first field).
pub(crate) fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The kernel's BSD view of a process (`proc_pidinfo(PROC_PIDTBSDINFO)`).
#[cfg(target_os = "macos")]
fn bsdinfo(pid: u32) -> Option<libc::proc_bsdinfo> {
    // SAFETY: PROC_PIDTBSDINFO fills a proc_bsdinfo, a plain C struct.
    unsafe { pidinfo(pid, libc::PROC_PIDTBSDINFO) }
}

/// One `proc_pidinfo` record of process `pid`.
///
/// # Safety
/// `T` must be the plain C struct (integers and byte arrays) that `flavor` fills.
#[cfg(target_os = "macos")]
unsafe fn pidinfo<T>(pid: u32, flavor: libc::c_int) -> Option<T> {
    let mut info = std::mem::MaybeUninit::<T>::zeroed();
    let size = std::mem::size_of::<T>() as libc::c_int;
    // SAFETY: `info` is writable for `size` bytes; the kernel fills at most that many.
    let n = unsafe {
        libc::proc_pidinfo(pid as libc::c_int, flavor, 0, info.as_mut_ptr().cast(), size)
    };
    // SAFETY: zero is a valid `T` (the caller's promise), and the kernel filled it whole.
    (n == size).then(|| unsafe { info.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "7 (a b) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 50";
        assert_eq!(
            parse_stat(stat),
            Some(Stat { state: 'S', ppid: 1, pgrp: 7, start_time: 12345 })
        );
        let odd = "123 (a) b) (c) Z 45 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(parse_stat(odd).map(|s| (s.ppid, s.ended())), Some((45, true)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("123 (restic) S 45 123"), None, "cut short");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert!(!stat.ended() && stat.start_time > 0);
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw() as u32));
        assert_eq!(owner(me as i32), Some(nix::unistd::getuid().as_raw()));
        assert!(thread_count().is_some_and(|n| n >= 1));
        assert!(executable(me).is_some());
        assert!(own_fds().len() >= 3);
    }
}
