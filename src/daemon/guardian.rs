//! The guardian: a small process the daemon starts before anything else, which stops the
//! task processes if the daemon dies without stopping them (SIGKILL, a crash, the OOM
//! killer), so no task process outlives it.
//!
//! The guardian's stdin is a Unix socket pair (sequenced packets) with the daemon, which
//! tells it, one message per change, which step process groups are live:
//! `+ PGID RUN_ID CGROUP` (`-` for no cgroup), carrying copies of the step's stdout and
//! stderr pipes (`SCM_RIGHTS`), and `- PGID`. Each message is one `sendmsg`, so it needs no
//! lock; sends never block, so a stuck guardian can never stall a run (a message that does
//! not fit is dropped and logged). End of file means the daemon is gone, however it ended
//! (the kernel closes its descriptors): with nothing live the guardian just exits;
//! otherwise it stops every listed run as a timeout does — SIGINT (on which restic removes
//! its repository lock), SIGTERM, then SIGKILL, 10 s apart — finding their processes by
//! group, cgroup and run id ([`contain`](super::contain)), and exits.
//!
//! It holds the pipes so that the task processes' output still has a reader once the
//! daemon is gone: without one, restic's "cleaning up" line on stderr raises SIGPIPE, and
//! restic dies before it removes its lock. The guardian reads and discards that output (it
//! has no redactor; nothing of it reaches a log).
//!
//! It is an exec of the daemon's own binary (`backupnizza guard`) with an empty environment,
//! started before any secret is read, so it holds no copy of the daemon's memory. It
//! ignores SIGINT, SIGTERM and SIGHUP: only the daemon's end sets it off, not a Ctrl-C or a
//! unit stop aimed at the daemon (which stops its runs itself, then closes the pipe).
//! On macOS, the same guardian is the only protection (there is no parent-death signal and
//! no cgroup): process groups and run ids are what it can find.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::Pid;

use super::contain::{RunProcs, Search, timeout_plan};

/// Grace between the signals the guardian sends when the daemon did not say (it always
/// says: the task's `kill_grace`).
const GRACE: Duration = Duration::from_secs(10);
/// Longest message: `+ PGID RUN_ID CGROUP GRACE_MS`.
const MAX_MESSAGE: usize = 4096;
/// How long the guardian goes on draining output once the processes are stopped.
const DRAIN_AFTER: Duration = Duration::from_secs(2);

/// What the guardian knows of one live step.
struct Watched {
    run_id: String,
    cgroup: Option<PathBuf>,
    grace: Duration,
    pipes: Vec<OwnedFd>,
}

/// The daemon's end of the socket pair.
#[derive(Debug)]
pub(crate) struct Guardian {
    socket: OwnedFd,
}

impl Guardian {
    /// Starts `exe guard`. Must run before the async runtime (the child is an exec, so
    /// threads would not matter, but before any secret is loaded).
    pub(crate) fn spawn(exe: &Path) -> std::io::Result<Guardian> {
        let (ours, theirs) = channel()?;
        let child = Command::new(exe)
            .arg("guard")
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        // The child is reaped by the daemon's orphan reaper once it exits (it is not a step
        // leader), so its handle is not kept.
        drop(child);
        Ok(Guardian { socket: ours })
    }

    /// A step's process group is live; `pipes` are its stdout and stderr; `grace` is the
    /// task's `kill_grace`, used between the guardian's signals too (restic, interrupted,
    /// finishes the packs it is uploading before it removes its lock: on a slow link that
    /// takes a while, and SIGTERM earlier would leave the lock behind).
    pub(crate) fn watch(&self, pgid: u32, procs: &RunProcs, pipes: &[RawFd], grace: Duration) {
        let cgroup = procs.cgroup.as_ref().and_then(|c| c.to_str()).unwrap_or("-");
        let grace = grace.as_millis();
        self.send(&format!("+ {pgid} {} {cgroup} {grace}", procs.run_id), pipes);
    }

    /// A step's process group is gone.
    pub(crate) fn release(&self, pgid: u32) {
        self.send(&format!("- {pgid}"), &[]);
    }

    fn send(&self, message: &str, fds: &[RawFd]) {
        let iov = [IoSlice::new(message.as_bytes())];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
        if let Err(e) =
            sendmsg::<()>(self.socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, None)
        {
            tracing::warn!(error = %e, "cannot tell the guardian process about a task process group; if the daemon dies now, that group may outlive it");
        }
    }
}

/// The daemon's socket pair with the guardian, close-on-exec on both ends (the guardian's
/// end becomes its stdin, which the exec keeps).
#[cfg(not(target_os = "macos"))]
fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

/// macOS has no sequenced packets on Unix sockets (`EPROTONOSUPPORT`) and no
/// `SOCK_CLOEXEC`. Datagrams keep each message whole (they are reliable on a local socket
/// pair) but give no end of file when the daemon is gone, so [`receive`] also watches the
/// guardian's parent. The flag is set after the call: the daemon has one thread here, so no
/// fork can come in between. (Compile-checked, not run: see docs/platforms.md.)
#[cfg(target_os = "macos")]
fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::empty())?;
    set_cloexec(&a)?;
    set_cloexec(&b)?;
    Ok((a, b))
}

#[cfg(target_os = "macos")]
fn set_cloexec(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{F_SETFD, FdFlag, fcntl};
    fcntl(fd, F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

/// Linux: the kernel marks received descriptors close-on-exec as they arrive.
#[cfg(not(target_os = "macos"))]
const RECEIVE_FLAGS: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;
/// macOS cannot; the guardian execs nothing, so marking them after is enough.
#[cfg(target_os = "macos")]
const RECEIVE_FLAGS: MsgFlags = MsgFlags::empty();

/// Whether the daemon is gone although the socket cannot say so: on macOS (datagrams) the
/// guardian waits at most a second for a message, then checks that its parent is still the
/// process that started it (an orphan is adopted by launchd).
#[cfg(target_os = "macos")]
fn daemon_gone(socket: RawFd, daemon: nix::unistd::Pid) -> bool {
    loop {
        let mut poll = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&raw mut poll, 1, 1000) } {
            0 if nix::unistd::getppid() != daemon => return true,
            0 => {}
            n if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR => {}
            _ => return false,
        }
    }
}

/// One message from the daemon, with the descriptors it carried; `None` at end of file.
fn receive(socket: RawFd) -> Option<(String, Vec<OwnedFd>)> {
    #[cfg(target_os = "macos")]
    let daemon = nix::unistd::getppid();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        #[cfg(target_os = "macos")]
        if daemon_gone(socket, daemon) {
            return None;
        }
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(socket, &mut iov, Some(&mut space), RECEIVE_FLAGS) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these descriptors for us; nothing
                        // else owns them.
                        fds.extend(
                            received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                        #[cfg(target_os = "macos")]
                        for fd in &fds {
                            let _ = set_cloexec(fd);
                        }
                    }
                }
                let bytes = msg.bytes;
                if bytes == 0 {
                    return None;
                }
                return Some((String::from_utf8_lossy(&buf[..bytes]).into_owned(), fds));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// `backupnizza guard`: the guardian's body. Returns when the daemon is gone and every
/// run it left is stopped.
pub fn main() -> anyhow::Result<()> {
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process handles
        // signals.
        unsafe {
            let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    let mut live: HashMap<i32, Watched> = HashMap::new();
    while let Some((message, fds)) = receive(0) {
        let mut words = message.split(' ');
        match (words.next(), words.next().and_then(|p| p.parse::<i32>().ok())) {
            (Some("+"), Some(pgid)) => {
                let run_id = words.next().unwrap_or_default().to_string();
                let cgroup = words.next().filter(|c| *c != "-").map(PathBuf::from);
                let grace =
                    words.next().and_then(|g| g.parse().ok()).map_or(GRACE, Duration::from_millis);
                live.insert(pgid, Watched { run_id, cgroup, grace, pipes: fds });
            }
            (Some("-"), Some(pgid)) => {
                live.remove(&pgid);
            }
            _ => {}
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    eprintln!(
        "backupnizza guard: the daemon ended without stopping {} task process group(s); stopping them (SIGINT, SIGTERM, then SIGKILL)",
        live.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut drains = tokio::task::JoinSet::new();
        let mut stops = tokio::task::JoinSet::new();
        for (pgid, Watched { run_id, cgroup, grace, pipes }) in live {
            // The kernel sent the main process SIGINT already (PR_SET_PDEATHSIG on Linux):
            // the first stage repeats it and waits, before the rest of the group is signalled.
            let plan = timeout_plan(grace);
            for fd in pipes {
                if let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                    drains.spawn(drain(pipe));
                }
            }
            stops.spawn(async move {
                let procs = RunProcs::known(&run_id, cgroup);
                procs.stop(Some(Pid::from_raw(pgid)), Search::Everywhere, &plan).await;
                procs.remove();
            });
        }
        while stops.join_next().await.is_some() {}
        // Once the processes are gone their pipes end; a pipe that some escaped process still
        // holds is not waited for long.
        let _ = tokio::time::timeout(DRAIN_AFTER, async {
            while drains.join_next().await.is_some() {}
        })
        .await;
    });
    Ok(())
}

/// Reads a task pipe to its end, discarding what it says.
async fn drain(mut pipe: tokio::net::unix::pipe::Receiver) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
}
