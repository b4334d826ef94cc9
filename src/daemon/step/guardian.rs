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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::Pid;

use crate::sys::fd_passing;

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
        let (ours, theirs) = fd_passing::channel()?;
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
    pub(crate) fn watch(
        &self,
        pgid: u32,
        procs: &RunProcs,
        pipes: &[BorrowedFd<'_>],
        grace: Duration,
    ) {
        let cgroup = procs.cgroup.as_ref().and_then(|c| c.to_str()).unwrap_or("-");
        let grace = grace.as_millis();
        self.send(&format!("+ {pgid} {} {cgroup} {grace}", procs.run_id), pipes);
    }

    /// A step's process group is gone.
    pub(crate) fn release(&self, pgid: u32) {
        self.send(&format!("- {pgid}"), &[]);
    }

    fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) {
        if let Err(e) = fd_passing::send(self.socket.as_fd(), message, fds) {
            tracing::warn!(error = %e, "cannot tell the guardian process about a task process group; if the daemon dies now, that group may outlive it");
        }
    }
}

/// `backupnizza guard`: the guardian's body. Returns when the daemon is gone and every
/// run it left is stopped.
pub fn main() -> anyhow::Result<()> {
    crate::sys::signals::ignore_stop_signals();
    let mut live: HashMap<i32, Watched> = HashMap::new();
    while let Some((message, fds)) = fd_passing::receive(std::io::stdin(), MAX_MESSAGE) {
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
