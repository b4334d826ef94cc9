//! Where a run's processes are, and how to stop every one of them.
//!
//! A run's processes are found three ways, and each stop or "is it over?" question asks all
//! three:
//!
//! - **the process group** of each step (its leader is made a group leader at spawn): covers
//!   children and backgrounded jobs, on every Unix;
//! - **the run's cgroup** (Linux, cgroup v2, when the daemon may create cgroups under its own:
//!   as root, or as a systemd service with `Delegate=yes`): each step's leader moves itself
//!   into `<daemon's cgroup>/backupnizza-runs/<run id>` before it execs, so everything it
//!   starts — `setsid` escapes included — stays there;
//! - **the run id in the environment** (`BACKUPNIZZA_RUN_ID`, which every task process
//!   inherits): without a cgroup, a `setsid` escape whose parent has exited is adopted by the
//!   daemon (its child subreaper) and recognised by it; after a crash, leftovers are found by
//!   it across the whole process table. A process that clears its environment and leaves its
//!   session escapes this last net; the cgroup is the answer where it can be had, and
//!   `docs/operations.md` says so.
//!
//! Setting `BACKUPNIZZA_CGROUP=off` in the daemon's environment turns cgroups off.

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::sys::proc;

/// Who a stage of stopping a run signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The step's main process (its group leader) and every restic process of the run:
    /// restic, given SIGINT alone, removes its lock through its `rclone:` or `sftp:` backend,
    /// which a SIGINT to the whole group would have killed at the same moment; restic inside
    /// a shell (`sh -c 'dump | restic backup --stdin'`) gets its SIGINT alone too.
    MainAndRestic,
    /// Every process of the run.
    All,
}

/// One stage of stopping a run: whom to signal, with what, and how long to wait for the run
/// to be gone before the next stage.
pub(crate) type Stage = (Target, Signal, Duration);

/// The stages of stopping a run at its timeout, `grace` apart: SIGINT to the main process
/// and every restic process, then SIGINT, SIGTERM and SIGKILL to every process.
pub(crate) fn timeout_plan(grace: Duration) -> [Stage; 4] {
    [
        (Target::MainAndRestic, Signal::SIGINT, grace),
        (Target::All, Signal::SIGINT, grace),
        (Target::All, Signal::SIGTERM, grace),
        (Target::All, Signal::SIGKILL, grace),
    ]
}

/// The folder, in the daemon's own cgroup, that holds one cgroup per run.
#[cfg(target_os = "linux")]
const RUNS_DIR: &str = "backupnizza-runs";

/// How the daemon contains runs, decided once at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Containment {
    /// `<cgroup2 mount>/<daemon's cgroup>/backupnizza-runs`, when cgroups can be used.
    runs: Option<PathBuf>,
}

impl Containment {
    /// Finds out whether runs get a cgroup each. The text says what was decided, for the log.
    pub(crate) fn detect(disabled: bool) -> (Containment, String) {
        if disabled {
            return (
                Containment::default(),
                "cgroups turned off (BACKUPNIZZA_CGROUP=off): runs are tracked by process group and run id".into(),
            );
        }
        match cgroup_runs_dir() {
            Ok(dir) => {
                let text = format!("each run gets a cgroup of its own under {}", dir.display());
                (Containment { runs: Some(dir) }, text)
            }
            Err(why) => (
                Containment::default(),
                format!(
                    "runs are tracked by process group and run id, without a cgroup ({why}); a process that leaves its session and clears its environment is not tracked"
                ),
            ),
        }
    }

    /// The processes of a new run. Creating its cgroup may fail (the run then goes on
    /// without one, as if cgroups were off).
    pub(crate) fn for_run(&self, run_id: &str) -> RunProcs {
        let cgroup = self.runs.as_ref().and_then(|runs| {
            let dir = runs.join(run_id);
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot create the run's cgroup; tracking it by process group and run id");
                    None
                }
            }
        });
        RunProcs { run_id: run_id.to_string(), cgroup }
    }
}

/// The cgroup folder for runs, created if needed, or why there is none.
#[cfg(target_os = "linux")]
fn cgroup_runs_dir() -> Result<PathBuf, String> {
    let mountinfo = crate::sys::proc::own_mountinfo()
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    // "36 35 0:30 / /sys/fs/cgroup rw,... - cgroup2 cgroup2 rw": the mount point is the 5th
    // field, the type follows the " - " separator.
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or("no cgroup v2 hierarchy is mounted")?;
    let own = crate::sys::proc::own_cgroup()
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the daemon is in no cgroup v2 group")?;
    let own_dir = mount.join(own.trim_start_matches('/'));
    let runs = own_dir.join(RUNS_DIR);
    std::fs::create_dir_all(&runs).map_err(|e| {
        format!(
            "cannot create {}: {e}; as a systemd service, Delegate=yes allows it",
            runs.display()
        )
    })?;
    // Moving a process between two cgroups needs write access to the common ancestor's
    // cgroup.procs: here, the daemon's own.
    for procs in [own_dir.join("cgroup.procs"), runs.join("cgroup.procs")] {
        nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("cannot write {}: {e}", procs.display()))?;
    }
    Ok(runs)
}

#[cfg(not(target_os = "linux"))]
fn cgroup_runs_dir() -> Result<PathBuf, String> {
    Err("cgroups exist only on Linux".into())
}

/// Where to look for processes that carry a run id in their environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// Only the daemon's own children (orphans it adopted), skipping those listed: cheap,
    /// for the end of every step.
    Adopted,
    /// Every process of the daemon's uid: for leftovers of a daemon that died.
    Everywhere,
}

/// The processes of one run.
#[derive(Debug)]
pub(crate) struct RunProcs {
    pub(crate) run_id: String,
    pub(crate) cgroup: Option<PathBuf>,
}

impl RunProcs {
    /// A run known from its Start record (after a crash).
    pub(crate) fn known(run_id: &str, cgroup: Option<PathBuf>) -> RunProcs {
        RunProcs { run_id: run_id.to_string(), cgroup: cgroup.filter(|c| c.is_dir()) }
    }

    /// The file a step's leader writes "0" to, before exec, to move itself into the run's
    /// cgroup.
    pub(crate) fn join_file(&self) -> Option<CString> {
        let file = self.cgroup.as_ref()?.join("cgroup.procs");
        CString::new(std::os::unix::ffi::OsStrExt::as_bytes(file.as_os_str())).ok()
    }

    /// Whether no process of the run is left, besides those the caller still waits for:
    /// the group `pgid` is empty (its ended members reaped), the cgroup is unpopulated, and
    /// no adopted child carries the run id. `skip` gives the pids that are known step
    /// leaders; it is asked for only without a cgroup (the cgroup needs no such list).
    pub(crate) fn all_gone(&self, pgid: Option<Pid>, skip: impl FnOnce() -> HashSet<u32>) -> bool {
        if let Some(pgid) = pgid
            && !group_empty(pgid)
        {
            return false;
        }
        if let Some(cg) = &self.cgroup {
            return !cgroup_populated(cg);
        }
        with_run_id(&self.run_id, Search::Adopted, &skip()).is_empty()
    }

    /// The live processes of the run (for counting and signalling).
    pub(crate) fn members(
        &self,
        pgid: Option<Pid>,
        search: Search,
        skip: &HashSet<u32>,
    ) -> Vec<Pid> {
        let mut found = BTreeSet::new();
        if let Some(cg) = &self.cgroup {
            found.extend(cgroup_members(cg));
        }
        if let Some(pgid) = pgid
            && !group_empty(pgid)
        {
            found.extend(group_members(pgid));
        }
        if self.cgroup.is_none() || search == Search::Everywhere {
            found.extend(with_run_id(&self.run_id, search, skip));
        }
        found.retain(|p| !skip.contains(&(p.as_raw() as u32)) && !is_zombie(*p));
        found.into_iter().collect()
    }

    /// Sends `signal` to the group and every member.
    pub(crate) fn signal(
        &self,
        pgid: Option<Pid>,
        search: Search,
        signal: Signal,
        skip: &HashSet<u32>,
    ) {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, signal);
        }
        for pid in self.members(pgid, search, skip) {
            let _ = kill(pid, signal);
        }
    }

    /// Stops every process of the run: each stage in turn, waiting up to its grace for
    /// them to go. Returns the signals that were needed ("sent SIGINT to the main process,
    /// then SIGINT, then SIGTERM") and how many processes there were, or `None` when none
    /// was left. Stages aimed at the main process are passed over once it is gone.
    pub(crate) async fn stop(
        &self,
        pgid: Option<Pid>,
        search: Search,
        plan: &[Stage],
    ) -> Option<(String, usize)> {
        let none = HashSet::new();
        let count = self.members(pgid, search, &none).len();
        let gone = |procs: &RunProcs| {
            procs.all_gone(pgid, HashSet::new) && procs.members(pgid, search, &none).is_empty()
        };
        if count == 0 && gone(self) {
            return None;
        }
        let mut sent = Vec::new();
        for &(target, signal, grace) in plan {
            if gone(self) {
                break;
            }
            match (target, pgid) {
                (Target::MainAndRestic, _) => {
                    let Some(said) = self.signal_main_and_restic(pgid, search, signal) else {
                        continue; // neither is left: on to the group
                    };
                    sent.push(said);
                }
                (Target::All, _) => {
                    self.signal(pgid, search, signal, &none);
                    sent.push(signal.as_str().to_string());
                }
            }
            let until = Instant::now() + grace;
            while Instant::now() < until && !gone(self) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some((format!("sent {}", sent.join(", then ")), count.max(1)))
    }

    /// Sends `signal` to the main process (while it still leads its group: a reaped
    /// leader's pid may be reused) and to every other restic process of the run. Says whom,
    /// or `None` when there was nobody.
    fn signal_main_and_restic(
        &self,
        pgid: Option<Pid>,
        search: Search,
        signal: Signal,
    ) -> Option<String> {
        let main = pgid.filter(|leader| leads_group(*leader) && kill(*leader, signal).is_ok());
        let restic: Vec<Pid> = self
            .members(pgid, search, &HashSet::new())
            .into_iter()
            .filter(|pid| Some(*pid) != main)
            .filter(|pid| proc::command_name(pid.as_raw()).as_deref() == Some("restic"))
            .filter(|pid| kill(*pid, signal).is_ok())
            .collect();
        let name = signal.as_str();
        match (main.is_some(), restic.len()) {
            (false, 0) => None,
            (true, 0) => Some(format!("{name} to the main process")),
            (true, 1) => Some(format!("{name} to the main process and 1 restic process")),
            (true, n) => Some(format!("{name} to the main process and {n} restic processes")),
            (false, 1) => Some(format!("{name} to 1 restic process")),
            (false, n) => Some(format!("{name} to {n} restic processes")),
        }
    }

    /// How many of the run's processes the kernel's out-of-memory killer has killed, when
    /// its cgroup has the memory controller (`memory.events`); `None` when it cannot tell.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let events = std::fs::read_to_string(self.cgroup.as_ref()?.join("memory.events")).ok()?;
        Some(oom_kills_in(&events))
    }

    /// Removes the run's cgroup (empty by now; the kernel refuses otherwise, and the next
    /// start settles it).
    pub(crate) fn remove(&self) {
        if let Some(cg) = &self.cgroup {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// The `oom_kill` count of a cgroup's `memory.events`.
fn oom_kills_in(events: &str) -> u64 {
    events.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
}

/// Whether no process is left in group `pgid`, after reaping the ones that ended and were
/// adopted by the daemon (a zombie keeps its group "alive").
fn group_empty(pgid: Pid) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
    matches!(killpg(pgid, None), Err(nix::errno::Errno::ESRCH))
}

fn cgroup_populated(cg: &Path) -> bool {
    // `populated 0` once no process (zombies excepted) is in the group or below it.
    std::fs::read_to_string(cg.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

fn cgroup_members(cg: &Path) -> Vec<Pid> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .map(|procs| {
            procs.lines().filter_map(|l| l.trim().parse().ok()).map(Pid::from_raw).collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is alive and the leader of its own process group.
fn leads_group(pid: Pid) -> bool {
    proc::stat(pid.as_raw() as u32).is_some_and(|s| !s.ended() && s.pgrp == pid.as_raw())
}

/// Whether `pid` has ended (a zombie not yet reaped, or gone).
pub(crate) fn is_zombie(pid: Pid) -> bool {
    proc::stat(pid.as_raw() as u32).is_none_or(|s| s.ended())
}

fn group_members(pgid: Pid) -> Vec<Pid> {
    // After the name: state, ppid, pgrp.
    proc::all_pids()
        .into_iter()
        .filter(|&pid| proc::stat(pid as u32).is_some_and(|s| s.pgrp == pgid.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// Processes whose environment holds `BACKUPNIZZA_RUN_ID=<run_id>`.
fn with_run_id(run_id: &str, search: Search, skip: &HashSet<u32>) -> Vec<Pid> {
    let needle = format!("BACKUPNIZZA_RUN_ID={run_id}\0").into_bytes();
    let candidates: Vec<i32> = match search {
        Search::Adopted => proc::own_children(),
        Search::Everywhere => {
            let uid = nix::unistd::getuid().as_raw();
            proc::all_pids().into_iter().filter(|pid| proc::owner(*pid) == Some(uid)).collect()
        }
    };
    let me = std::process::id() as i32;
    candidates
        .into_iter()
        .filter(|&pid| pid != me && !skip.contains(&(pid as u32)))
        .filter(|pid| {
            proc::environ(*pid).is_some_and(|env| {
                env.split_inclusive(|&b| b == 0).any(|var| var == needle.as_slice())
            })
        })
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(events), 1);
        assert_eq!(oom_kills_in("low 0\n"), 0);
    }

    #[test]
    fn a_process_is_found_by_its_run_id_and_its_group() {
        let run_id = format!("test-{}-{}", std::process::id(), rand::random::<u32>());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("BACKUPNIZZA_RUN_ID", &run_id)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let procs = RunProcs::known(&run_id, None);
        let none = HashSet::new();
        // Until the child has exec'd, its environment is still a copy of ours.
        let deadline = Instant::now() + Duration::from_secs(30);
        while with_run_id(&run_id, Search::Everywhere, &none).is_empty() {
            assert!(Instant::now() < deadline, "the child never showed its run id");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(with_run_id(&run_id, Search::Everywhere, &none), [pid]);
        assert!(with_run_id("another-run", Search::Everywhere, &none).is_empty());
        assert_eq!(procs.members(Some(pid), Search::Everywhere, &none), [pid]);
        assert!(!group_empty(pid));
        let skip: HashSet<u32> = [child.id()].into();
        assert!(procs.members(Some(pid), Search::Everywhere, &skip).is_empty());
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
        assert!(group_empty(pid));
        assert!(procs.members(Some(pid), Search::Everywhere, &none).is_empty());
    }
}
