//! The state owner's tables: per task (running, queued, deferred, last result, next fire
//! time, metrics) and per run it knows (live ones, and the last [`KEEP_RUNS`] finished).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;
use tracing::warn;

use crate::broker::feed::Feed;
use crate::daemon::records::metrics::{self, TaskMetrics};
use crate::daemon::run::{Job, RunContext};
use crate::history::{Record, RunEnd};
use crate::protocol::{RunBody, RunStatus};
use crate::schedule::clock::{Reading, Stamp};

/// Finished runs kept in memory for `trigger --wait`.
pub(super) const KEEP_RUNS: usize = 256;
/// Finished runs whose output is kept for `trigger --follow` (the newest ones).
pub(super) const FEEDS_KEPT: usize = 16;

/// Per-task state.
#[derive(Default)]
pub(super) struct TaskState {
    pub(super) running: bool,
    /// Why the current run waits to start (`when:`, `blackout:`), and since when.
    pub(super) deferred: Option<String>,
    /// A firing waiting for the current run (`on_overlap: queue`).
    pub(super) queued: Option<Job>,
    pub(super) last: Option<RunBody>,
    pub(super) next: Option<Timestamp>,
    pub(super) metrics: TaskMetrics,
    /// When a verifier's run last proved this task's snapshot restorable (RFC 3339).
    pub(super) verified: Option<String>,
    /// After this instant without a newer success the task is overdue (see `vigil`).
    pub(super) deadline: Option<Timestamp>,
    /// Since when the task is overdue, if it is, and how many successes it had then (only a
    /// new one clears it).
    pub(super) overdue: Option<(Timestamp, u64)>,
    /// Successful runs seen (from the history too).
    pub(super) successes: u64,
    /// `backupnizza pause`: its occurrences are skipped.
    pub(super) paused: Option<super::vigil::Pause>,
    /// The metrics' `last_*` instants with the elapsed-time clock at each, so a clock change
    /// can re-read them on the new clock (see [`TaskState::reread`]).
    stamps: Stamps,
}

#[derive(Default)]
struct Stamps {
    start: Option<Stamp>,
    end: Option<Stamp>,
    success: Option<Stamp>,
}

impl TaskState {
    pub(super) fn started_at(&mut self, at: Stamp) {
        self.stamps.start = Some(at);
        self.metrics.last_start = Some(at.wall());
    }

    pub(super) fn ended_at(&mut self, at: Stamp, success: bool) {
        self.stamps.end = Some(at);
        self.metrics.last_end = Some(at.wall());
        if success {
            self.successes += 1;
            self.stamps.success = Some(at);
            self.metrics.last_success = Some(at.wall());
        }
    }

    /// When the task last succeeded, on the current wall clock.
    pub(super) fn last_success_at(&self, now: &Reading) -> Option<Timestamp> {
        self.stamps.success.map(|s| s.reread(now))
    }

    /// After a clock change: each instant becomes *now minus its age*, so none lies in the
    /// future of the new clock and the staleness alert keeps measuring real time.
    pub(super) fn reread(&mut self, now: &Reading) {
        let m = &mut self.metrics;
        for (stamp, field) in [
            (&self.stamps.start, &mut m.last_start),
            (&self.stamps.end, &mut m.last_end),
            (&self.stamps.success, &mut m.last_success),
        ] {
            if let Some(stamp) = stamp {
                *field = Some(stamp.reread(now));
            }
        }
    }
}

/// Runs the daemon knows by id: live ones, and the last [`KEEP_RUNS`] finished ones.
#[derive(Default)]
pub(super) struct Runs {
    pub(super) by_id: HashMap<String, Known>,
    pub(super) finished: VecDeque<String>,
}

/// What the daemon keeps of one run it knows.
pub(super) struct Known {
    /// Its state, for `trigger --wait` and `status`.
    pub(super) state: watch::Sender<RunBody>,
    /// Its output, for `trigger --follow`.
    pub(super) feed: Arc<Feed>,
}

impl TaskState {
    /// Each task's state at start, from its last End records in the history. Records dated
    /// later than now (written before the clock was set back) are not used: one of them
    /// would put `last_success` in the future, where the staleness alert can never fire.
    pub(super) fn from_history(ctx: &RunContext, past: &[Record], now: &Reading) -> Vec<TaskState> {
        let mut tasks: Vec<TaskState> =
            ctx.config.tasks.iter().map(|_| TaskState::default()).collect();
        warn_of_future(ctx, past, now.wall);
        // Each run's start as its Start record says, for `status`'s last run.
        let mut starts: HashMap<&str, &str> = HashMap::new();
        for record in past {
            let end = match record {
                Record::Start { run_id, at, .. } => {
                    starts.insert(run_id, at);
                    continue;
                }
                Record::End(end) => end,
                _ => continue,
            };
            let Some(i) = ctx.config.tasks.iter().position(|t| t.name == end.task) else {
                continue;
            };
            let Some(at) = end.at.parse::<Timestamp>().ok().filter(|t| *t <= now.wall) else {
                continue;
            };
            let audited = ctx.config.tasks[i].audit.is_some();
            let start =
                at.checked_sub(jiff::SignedDuration::from_millis(end.duration_ms as i64)).ok();
            // The Start record's time; without it (rotated away), the end less the duration
            // (the end itself only for a duration too long to subtract).
            let started = match (starts.get(end.run_id.as_str()), start) {
                (Some(at), _) => at.to_string(),
                (None, Some(start)) => ctx.rfc3339(start),
                (None, None) => end.at.clone(),
            };
            tasks[i].remember(end, (start, started), (at, now), audited);
            if let Some(v) = &end.verify {
                verified(&mut tasks, ctx, v, end.status, &end.at, at);
            }
        }
        tasks
    }

    /// A past run's end, read from the history: `start` for the metrics (the end less the
    /// duration) and `started` as `status` shows it.
    fn remember(
        &mut self,
        end: &RunEnd,
        (start, started): (Option<Timestamp>, String),
        (at, now): (Timestamp, &Reading),
        audited: bool,
    ) {
        if let Some(start) = start {
            self.started_at(Stamp::before(now, start));
        }
        let success = matches!(end.status, RunStatus::Success | RunStatus::Warning);
        self.ended_at(Stamp::before(now, at), success);
        self.metrics.ended(&metrics::Ended {
            exit_code: end.exit_code,
            seconds: end.duration_ms as f64 / 1000.0,
            ok: end.status.is_ok(),
            backups: &end.backups,
            audit: audited.then_some(end.findings.len()),
            verify: end.verify.as_ref(),
        });
        self.last = Some(RunBody {
            run_id: end.run_id.clone(),
            task: end.task.clone(),
            status: end.status,
            started,
            ended: Some(end.at.clone()),
            exit_code: end.exit_code,
            duration_ms: Some(end.duration_ms),
            reason: end.reason.clone(),
        });
    }
}

/// A verifier's run that succeeded: the tasks whose snapshots it verified were restorable
/// at `at` (`TASK:ID` in its record).
pub(super) fn verified(
    tasks: &mut [TaskState],
    ctx: &RunContext,
    v: &crate::history::Verification,
    status: crate::protocol::RunStatus,
    at: &str,
    when: Timestamp,
) {
    if !status.is_ok() {
        return;
    }
    for name in v.snapshots.iter().filter_map(|s| s.split(':').next()) {
        if let Some(j) = ctx.config.tasks.iter().position(|t| t.name == name) {
            tasks[j].verified = Some(at.to_string());
            tasks[j].metrics.last_verified = Some(when);
        }
    }
}

/// Warns once about history records dated later than `now`.
fn warn_of_future(ctx: &RunContext, past: &[Record], now: Timestamp) {
    let future: Vec<Timestamp> = past
        .iter()
        .filter_map(|r| r.at().parse::<Timestamp>().ok())
        .filter(|at| *at > now)
        .collect();
    let count = future.len();
    if count == 0 {
        return;
    }
    warn!(
        ignored = count,
        latest = %future.iter().max().map(|t| ctx.rfc3339(*t)).unwrap_or_default(),
        "{count} history record{} dated later than now (written before the clock was set back) {} not used for metrics or to decide what to catch up",
        if count == 1 { "" } else { "s" },
        if count == 1 { "is" } else { "are" },
    );
}
