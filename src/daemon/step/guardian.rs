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
//! otherwise it stops every process of every listed run within the task's `kill_grace` —
//! SIGINT (on which restic removes its repository lock), SIGTERM half of it later, then
//! SIGKILL — finding them by group, cgroup and run id ([`contain`](super::contain)), and
//! exits.
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
//!
//! The daemon watches its guardian ([`Guardian::check`], at each SIGCHLD; twice a second where
//! it polls): one that died (killed, out of memory) is said at ERROR and replaced at once, and
//! the new one is told every live group, with copies of their pipes the daemon keeps for that.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use tracing::{error, warn};

use super::contain::{RunProcs, Search, Stage, Target};
use crate::daemon::host::children::{self, Owned};
use crate::sys::fd_passing;

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

/// The daemon's side of the guardian: the socket pair, the process, and what it has been
/// told, so that a new guardian can be told the same should this one die.
#[derive(Debug)]
pub(crate) struct Guardian {
    exe: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: OwnedFd,
    child: Child,
    /// Registered as the daemon's to reap, so the orphan reaper leaves it to [`Guardian::check`].
    _owned: Owned,
    /// Each live group's message and copies of its pipes.
    live: HashMap<u32, (String, Vec<OwnedFd>)>,
}

impl Guardian {
    /// Starts `exe guard`, before any secret is loaded (it is an exec with an empty
    /// environment: it never holds a copy of the daemon's memory either way).
    pub(crate) fn spawn(exe: &Path) -> std::io::Result<Guardian> {
        let (socket, child, owned) = start(exe)?;
        let inner = Inner { socket, child, _owned: owned, live: HashMap::new() };
        Ok(Guardian { exe: exe.to_path_buf(), inner: Mutex::new(inner) })
    }

    /// A step's process group is live; `pipes` are its stdout and stderr; `grace` is the
    /// task's `kill_grace`, which bounds how long the guardian takes to stop the group.
    pub(crate) fn watch(
        &self,
        pgid: u32,
        procs: &RunProcs,
        pipes: &[BorrowedFd<'_>],
        grace: Duration,
    ) {
        let cgroup = procs.cgroup.as_ref().and_then(|c| c.to_str()).unwrap_or("-");
        let message = format!("+ {pgid} {} {cgroup} {}", procs.run_id, grace.as_millis());
        let copies: Vec<OwnedFd> =
            pipes.iter().filter_map(|fd| fd.try_clone_to_owned().ok()).collect();
        let mut inner = self.lock();
        send(&inner.socket, &message, pipes);
        inner.live.insert(pgid, (message, copies));
    }

    /// A step's process group is gone.
    pub(crate) fn release(&self, pgid: u32) {
        let mut inner = self.lock();
        inner.live.remove(&pgid);
        send(&inner.socket, &format!("- {pgid}"), &[]);
    }

    /// Whether the guardian still runs; a dead one is said at ERROR and replaced by a new one,
    /// which is told every live group. Called by the state owner when a child ended.
    pub(crate) fn check(&self) {
        let mut inner = self.lock();
        let ended = match inner.child.try_wait() {
            Ok(None) => return,
            Ok(Some(status)) => crate::daemon::step::describe_exit(status),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        let pid = inner.child.id();
        match start(&self.exe) {
            Ok((socket, child, owned)) => {
                error!(
                    pid,
                    new_pid = child.id(),
                    "the guardian process ended ({ended}); started a new one"
                );
                let live = std::mem::take(&mut inner.live);
                *inner = Inner { socket, child, _owned: owned, live };
                for (message, pipes) in inner.live.values() {
                    let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(AsFd::as_fd).collect();
                    send(&inner.socket, message, &fds);
                }
            }
            Err(e) => error!(
                pid,
                "the guardian process ended ({ended}), and a new one cannot be started: {e}; if the daemon dies, task processes other than each step's main process may outlive it"
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Sends and a map: a panic elsewhere cannot leave them torn.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts a guardian: `exe guard` with the other end of a new socket pair as its stdin.
fn start(exe: &Path) -> std::io::Result<(OwnedFd, Child, Owned)> {
    let (ours, theirs) = fd_passing::channel()?;
    let spawning = children::spawning();
    let child = Command::new(exe)
        .arg("guard")
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let owned = spawning.started(child.id());
    Ok((ours, child, owned))
}

/// Tells the guardian; never blocks (a message that does not fit is dropped and logged).
fn send(socket: &OwnedFd, message: &str, fds: &[BorrowedFd<'_>]) {
    if let Err(e) = fd_passing::send(socket.as_fd(), message, fds) {
        warn!(error = %e, "cannot tell the guardian process about a task process group; if the daemon dies now, that group may outlive it");
    }
}

/// `backupnizza guard`: the guardian's body. Returns when the daemon is gone and every
/// run it left is stopped.
pub fn main() -> anyhow::Result<()> {
    crate::sys::signals::ignore_stop_signals();
    let mut live: HashMap<i32, Watched> = HashMap::new();
    // It waits for most of its life: it weighs no more than it must meanwhile (what start-up
    // touched of the daemon's binary is given back, as the idle daemon does).
    crate::sys::footprint::shed();
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
                if live.is_empty() {
                    crate::sys::footprint::shed();
                }
            }
            _ => {}
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    eprintln!(
        "backupnizza guard: the daemon ended without stopping {} task process group(s); stopping them (SIGINT, SIGTERM, then SIGKILL, within the task's kill_grace)",
        live.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut drains = tokio::task::JoinSet::new();
        let mut stops = tokio::task::JoinSet::new();
        for (pgid, Watched { run_id, cgroup, grace, pipes }) in live {
            let plan = orphan_plan(grace);
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

/// How the guardian stops a group the daemon left: every process at once, as the daemon is
/// gone (the kernel sent the main process SIGINT already, `PR_SET_PDEATHSIG` on Linux), so
/// that all of it is gone within `grace`: SIGINT (on which restic removes its lock), half of
/// it later SIGTERM (a shell's background jobs ignore SIGINT), then SIGKILL.
fn orphan_plan(grace: Duration) -> [Stage; 3] {
    [
        (Target::All, Signal::SIGINT, grace / 2),
        (Target::All, Signal::SIGTERM, grace / 2),
        (Target::All, Signal::SIGKILL, grace),
    ]
}

/// Reads a task pipe to its end, discarding what it says.
async fn drain(mut pipe: tokio::net::unix::pipe::Receiver) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
}
