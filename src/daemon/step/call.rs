//! A restic command the daemon runs on a task's behalf (a verifier's listings, restores and
//! checks), run as a step of the task is: the task's environment and `PATH`, a fresh token
//! scoped to its secrets, sealing, the run's cgroup, its timeout and shutdown, its output
//! redacted into the log and the output file under a label of its own. What the command
//! printed for the daemon (a snapshot list, a spot check's sample of `restic ls --json`)
//! comes back in its [`Called`], with how it ended.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::contain::RunProcs;
use super::{Budgets, Found, Listings, Runner, StepCall, StepEnd, Tail};
use crate::config::{Step, Task};
use crate::daemon::output::Sinks;
use crate::restic::Snapshot;
use crate::restic::ls::Sampler;

/// What every command of one run shares.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) task: &'a Task,
    pub(crate) run_id: &'a str,
    pub(crate) procs: &'a RunProcs,
    /// The run's timeout.
    pub(crate) deadline: Option<Instant>,
    /// Cancelled at daemon shutdown.
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) output: Sinks<'a>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallEnd {
    /// It exited with this code (`None`: killed by a signal, said in the text).
    Exited(Option<i32>, String),
    /// The run's timeout stopped it.
    TimedOut(String),
    /// The daemon is stopping.
    Cancelled,
    /// It did not start (why).
    NotStarted(String),
}

impl CallEnd {
    pub(crate) fn success(&self) -> bool {
        matches!(self, CallEnd::Exited(Some(0), _))
    }
}

/// A command's end and what it printed for the daemon.
pub(crate) struct Called {
    pub(crate) end: CallEnd,
    /// Its last stderr lines, redacted.
    pub(crate) tail: Vec<String>,
    /// The snapshot list it printed (`restic snapshots --json`).
    pub(crate) listed: Option<Vec<Snapshot>>,
    /// The sampler given, having read what it listed (`restic ls --json`).
    pub(crate) nodes: Option<Sampler>,
    /// What it printed as `restic stats --json`.
    pub(crate) stats: Option<crate::restic::Stats>,
}

impl Runner {
    /// Runs `restic ARGS...` (the `restic` the task's `PATH` finds) as `label` (its lines in
    /// the output file are `LABEL.stdout`); `nodes` reads its `ls --json` lines.
    pub(crate) async fn restic(
        &self,
        call: Call<'_>,
        label: &str,
        args: Vec<String>,
        nodes: Option<Sampler>,
    ) -> Called {
        let step = Step {
            command: std::iter::once("restic".to_string()).chain(args).collect(),
            pipe_into: Vec::new(),
            env: Vec::new(),
            continue_on_error: false,
            sha256: None,
            read_all: None,
        };
        let step_call = StepCall {
            task: call.task,
            step: &step,
            pin: None,
            run_id: call.run_id,
            procs: call.procs,
            facts: &[],
            index: 0,
            deadline: call.deadline,
            cancel: call.cancel,
            output: call.output,
            hook: Some(label),
            scope: Some(&call.task.secrets),
            hook_scoped: false,
        };
        let mut listings = Listings { nodes, ..Listings::default() };
        let mut backups = Vec::new();
        let mut tail = Tail::new();
        let mut budgets = Budgets::default();
        let found = Found { backups: &mut backups, listings: &mut listings };
        let end = self.run_step(step_call, &mut tail, &mut budgets, Some(found)).await;
        budgets.finish(&call.task.name);
        let end = match end {
            StepEnd::Exited(status, _, _) => {
                CallEnd::Exited(status.code(), super::describe_exit(status))
            }
            StepEnd::TimedOut(how) => CallEnd::TimedOut(how),
            StepEnd::Cancelled => CallEnd::Cancelled,
            StepEnd::NotStarted(why) | StepEnd::Refused(why) => {
                CallEnd::NotStarted(why.to_string())
            }
        };
        Called {
            end,
            tail: tail.into(),
            listed: listings.listed,
            nodes: listings.nodes,
            stats: listings.stats,
        }
    }
}
