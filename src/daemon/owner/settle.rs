//! Settling, at start, the runs a previous daemon began and never ended (it was killed or
//! crashed): their leftover processes are stopped, each gets an End record with status
//! `interrupted`, and the state owner decides whether the occurrence runs once again.
//!
//! A run is unended when the history holds its Start record and no End record. Its
//! processes are found by its cgroup (named in the Start record) and by its run id in the
//! environment of every process of the daemon's uid ([`contain`](crate::daemon::step::contain)); they
//! are stopped as a timeout stops a run — SIGINT first, on which restic removes its
//! repository lock. Then the `{secret_file:}` directories they left are removed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::signal::Signal;

use tracing::{error, info, warn};

use super::State;
use crate::daemon::step::contain::{RunProcs, Search, Target};
use crate::daemon::step::secret_files;
use crate::history::{DaemonEvent, Record, RunEnd};
use crate::protocol::{RunBody, RunStatus};
use crate::schedule::clock::Stamp;
use crate::schedule::timetable::Trigger;

/// A run with a Start record and no End record.
#[derive(Debug, Clone)]
struct Unended {
    run_id: String,
    task: String,
    started: Option<Timestamp>,
    occurrence: Option<Timestamp>,
    trigger: Trigger,
    cgroup: Option<PathBuf>,
    /// The daemon that ran it (its last start record before the run), when known.
    daemon_pid: Option<u32>,
}

/// The unended runs in `past`, oldest first.
fn unended(past: &[Record]) -> Vec<Unended> {
    let ended: HashSet<&str> = past
        .iter()
        .filter_map(|r| match r {
            Record::End(end) => Some(end.run_id.as_str()),
            _ => None,
        })
        .collect();
    let mut daemon_pid = None;
    let mut out = Vec::new();
    for record in past {
        match record {
            Record::Daemon { event: DaemonEvent::Start, pid, .. } => daemon_pid = Some(*pid),
            Record::Start { run_id, task, at, scheduled, trigger, cgroup, .. }
                if !ended.contains(run_id.as_str()) =>
            {
                out.push(Unended {
                    run_id: run_id.clone(),
                    task: task.clone(),
                    started: at.parse().ok(),
                    occurrence: scheduled.as_deref().and_then(|s| s.parse().ok()),
                    trigger: *trigger,
                    cgroup: cgroup.as_ref().map(PathBuf::from),
                    daemon_pid,
                });
            }
            _ => {}
        }
    }
    out
}

/// Stops whatever is left of `run`. Returns how many processes were found and how they
/// were stopped, or `None` when nothing was left.
async fn stop_leftovers(run: &Unended, grace: Duration) -> Option<(String, usize)> {
    let procs = RunProcs::known(&run.run_id, run.cgroup.clone());
    // The main process is not known any more: the whole run at once.
    let plan = [
        (Target::All, Signal::SIGINT, grace),
        (Target::All, Signal::SIGTERM, grace),
        (Target::All, Signal::SIGKILL, grace),
    ];
    let stopped = procs.stop(None, Search::Everywhere, &plan).await;
    procs.remove();
    stopped
}

/// The reason an interrupted run's End record gives.
fn reason(run: &Unended, leftovers: Option<&(String, usize)>) -> String {
    let daemon = run
        .daemon_pid
        .map_or_else(|| "the daemon".to_string(), |p| format!("the daemon (pid {p})"));
    let left = match leftovers {
        None => "no process of it was left".to_string(),
        Some((how, 1)) => format!("1 leftover process was stopped ({how})"),
        Some((how, n)) => format!("{n} leftover processes were stopped ({how})"),
    };
    format!(
        "interrupted: {daemon} stopped without ending this run (a crash or SIGKILL); settled when the daemon started again: {left}; its true end is unknown"
    )
}

impl State {
    /// Settles every unended run in `past`: stops its leftovers, records it as
    /// `interrupted`, and runs its occurrence once again when that is still within the
    /// task's `max_lateness` and no later occurrence is due (the downtime catch-up covers
    /// that one). Awaited before the first run starts, so no two copies of a task run.
    pub(super) async fn settle_unended(&mut self, past: &[Record]) {
        let runs = unended(past);
        if !runs.is_empty() {
            self.settle_runs(runs).await;
        }
        // Once their processes are stopped: the `{secret_file:}` directories those runs
        // left (a step removes its own when it ends, a dead daemon's steps could not).
        let root = self.ctx.runner.secret_files.clone();
        match tokio::task::spawn_blocking(move || secret_files::sweep(&root)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => warn!(
                "removed {n} step director{} of secret files left by runs of a daemon that stopped without ending them",
                if n == 1 { "y" } else { "ies" }
            ),
            Ok(Err(e)) => {
                error!(dir = %self.ctx.runner.secret_files.display(), error = %e, "cannot remove the secret files left by an earlier daemon");
            }
            Err(e) => error!(error = %e, "removing leftover secret files failed"),
        }
        self.sweep_verifications().await;
    }

    /// Wipes what verifications of a daemon that died restored (see `run::verify::scratch`).
    async fn sweep_verifications(&self) {
        use crate::daemon::run::verify::scratch;
        let config = &self.ctx.config;
        let mut roots = vec![scratch::runtime_root(&self.ctx.runner.secret_files)];
        for spec in config.tasks.iter().filter_map(|t| t.verify.as_ref()) {
            let root = scratch::disk_root(&config.state_dir, spec.scratch.as_deref());
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        for root in roots {
            let shown = root.display().to_string();
            match tokio::task::spawn_blocking(move || scratch::sweep(&root)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    warn!(dir = %shown, "wiped {n} restore director{} left by verifications of a daemon that stopped without ending them", if n == 1 { "y" } else { "ies" });
                }
                Ok(Err(e)) => {
                    error!(dir = %shown, error = %e, "cannot wipe what an earlier daemon's verification restored");
                }
                Err(e) => error!(error = %e, "wiping leftover restores failed"),
            }
        }
    }

    async fn settle_runs(&mut self, runs: Vec<Unended>) {
        warn!(
            runs = runs.len(),
            "the previous daemon stopped without ending some runs; settling them"
        );
        for run in runs {
            let leftovers = stop_leftovers(&run, self.ctx.runner.kill_grace).await;
            let now = self.now();
            let reason = reason(&run, leftovers.as_ref());
            warn!(task = %run.task, run_id = %run.run_id, "{reason}");
            self.ctx.history.append(Record::End(RunEnd::without_steps(
                run.run_id.clone(),
                run.task.clone(),
                self.rfc3339(now),
                RunStatus::Interrupted,
                reason.clone(),
            )));
            let Some(idx) = self.ctx.config.tasks.iter().position(|t| t.name == run.task) else {
                continue;
            };
            let body = RunBody {
                run_id: run.run_id.clone(),
                task: run.task.clone(),
                status: RunStatus::Interrupted,
                started: run.started.map(|s| self.rfc3339(s)).unwrap_or_default(),
                ended: Some(self.rfc3339(now)),
                exit_code: None,
                duration_ms: Some(0),
                reason,
            };
            let state = &mut self.tasks[idx];
            state.metrics.runs += 1;
            state.metrics.failures += 1;
            state.ended_at(Stamp::before(&self.clock.read(), now), false);
            state.metrics.last_exit_code = None;
            state.last = Some(body);
            if let Some(occurrence) = self.rerun_of(idx, &run, now) {
                info!(task = %run.task, occurrence = %self.rfc3339(occurrence), "running the interrupted occurrence once again (within max_lateness)");
                let _ = self.fire(idx, Trigger::CatchUp, Some(occurrence));
            }
        }
    }

    /// The occurrence to run again for an interrupted run, if any.
    fn rerun_of(&self, idx: usize, run: &Unended, now: Timestamp) -> Option<Timestamp> {
        let task = &self.ctx.config.tasks[idx];
        let occurrence = run.occurrence.filter(|_| run.trigger != Trigger::Manual)?;
        let late = Duration::try_from(now.duration_since(occurrence)).ok()?;
        if late > task.max_lateness {
            return None;
        }
        let next = match task.schedule.interval() {
            Some(interval) => occurrence.checked_add(interval).ok(),
            None => task.schedule.next_after(occurrence, &task.zone.tz),
        };
        next.is_none_or(|next| next > now).then_some(occurrence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str, task: &str) -> Record {
        Record::Start {
            run_id: id.into(),
            task: task.into(),
            at: "2026-01-01T03:00:01Z".into(),
            scheduled: Some("2026-01-01T03:00:00Z".into()),
            trigger: Trigger::Schedule,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        }
    }

    #[test]
    fn only_runs_without_an_end_are_unended() {
        let past = vec![
            Record::Daemon {
                event: DaemonEvent::Start,
                at: "2026-01-01T00:00:00Z".into(),
                pid: 41,
            },
            start("a", "t"),
            Record::End(RunEnd {
                exit_code: Some(0),
                duration_ms: 1000,
                ..RunEnd::without_steps(
                    "a".into(),
                    "t".into(),
                    "2026-01-01T03:00:02Z".into(),
                    RunStatus::Success,
                    String::new(),
                )
            }),
            start("b", "t"),
        ];
        let found = unended(&past);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].run_id, "b");
        assert_eq!(found[0].daemon_pid, Some(41));
        assert_eq!(found[0].occurrence, Some("2026-01-01T03:00:00Z".parse().unwrap()));
        assert!(reason(&found[0], None).contains("pid 41"));
    }
}
