//! The guardian: a small process the daemon starts before anything else, which stops the
//! task processes if the daemon dies without stopping them (SIGKILL, a crash, the OOM
//! killer), so no task process outlives it.
//!
//! The daemon keeps the write end of a pipe to the guardian's stdin and tells it, one line
//! per change, which step process groups are live: `+ PGID RUN_ID CGROUP` (`-` for no
//! cgroup) and `- PGID`. Lines are shorter than `PIPE_BUF`, so each write is atomic and
//! needs no lock; the pipe is non-blocking, so a stuck guardian can never stall a run (a
//! line that does not fit is dropped and logged). End of file on the pipe means the daemon
//! is gone, however it ended (the kernel closes its descriptors): with nothing live the
//! guardian just exits; otherwise it stops every listed run as a timeout does — SIGINT (on
//! which restic removes its repository lock), SIGTERM, then SIGKILL, 10 s apart — finding
//! their processes by group, cgroup and run id ([`contain`](super::contain)), and exits.
//!
//! It is an exec of the daemon's own binary (`backupnizza guard`) with an empty environment,
//! started before any secret is read, so it holds no copy of the daemon's memory. It
//! ignores SIGINT, SIGTERM and SIGHUP: only the daemon's end sets it off, not a Ctrl-C or a
//! unit stop aimed at the daemon (which stops its runs itself, then closes the pipe).
//! On macOS, the same guardian is the only protection (there is no parent-death signal and
//! no cgroup): process groups and run ids are what it can find.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::contain::{RunProcs, Search};

/// Grace between the signals the guardian sends.
const GRACE: Duration = Duration::from_secs(10);

/// The daemon's end of the pipe.
#[derive(Debug)]
pub(crate) struct Guardian {
    pipe: std::process::ChildStdin,
}

impl Guardian {
    /// Starts `exe guard`. Must run before the async runtime (the child is an exec, so
    /// threads would not matter, but before any secret is loaded).
    pub(crate) fn spawn(exe: &Path) -> std::io::Result<Guardian> {
        let mut child = Command::new(exe)
            .arg("guard")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("no pipe"))?;
        let fd = pipe.as_raw_fd();
        // SAFETY: `fd` is the open pipe we own; F_GETFL/F_SETFL change only its flags.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !set {
            return Err(std::io::Error::last_os_error());
        }
        // The child is reaped by the daemon's orphan reaper once it exits (it is not a step
        // leader), so its handle is not kept.
        drop(child);
        Ok(Guardian { pipe })
    }

    /// A step's process group is live.
    pub(crate) fn watch(&self, pgid: u32, procs: &RunProcs) {
        let cgroup = procs.cgroup.as_ref().and_then(|c| c.to_str()).unwrap_or("-");
        self.send(&format!("+ {pgid} {} {cgroup}\n", procs.run_id));
    }

    /// A step's process group is gone.
    pub(crate) fn release(&self, pgid: u32) {
        self.send(&format!("- {pgid}\n"));
    }

    fn send(&self, line: &str) {
        // Short lines on a pipe are written whole or not at all.
        if let Err(e) = (&self.pipe).write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot tell the guardian process about a task process group; if the daemon dies now, that group may outlive it");
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
    let mut live: HashMap<i32, (String, Option<PathBuf>)> = HashMap::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split(' ');
        match (words.next(), words.next().and_then(|p| p.parse::<i32>().ok())) {
            (Some("+"), Some(pgid)) => {
                let run_id = words.next().unwrap_or_default().to_string();
                let cgroup = words.next().filter(|c| *c != "-").map(PathBuf::from);
                live.insert(pgid, (run_id, cgroup));
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    runtime.block_on(async {
        let plan = [(Signal::SIGINT, GRACE), (Signal::SIGTERM, GRACE), (Signal::SIGKILL, GRACE)];
        let mut stops = tokio::task::JoinSet::new();
        for (pgid, (run_id, cgroup)) in live {
            stops.spawn(async move {
                let procs = RunProcs::known(&run_id, cgroup);
                procs.stop(Some(Pid::from_raw(pgid)), Search::Everywhere, &plan).await;
                procs.remove();
            });
        }
        while stops.join_next().await.is_some() {}
    });
    Ok(())
}
