//! One run of a task, in named phases: what it waits for before it starts ([`gate`]: the
//! random delay, the settling after a resume, its run conditions ([`conditions`]), its lock
//! ([`locks`])), the Start record and start notification, the sleep inhibitor and
//! `unlock_stale`, the `before` hook ([`hooks`]), the steps and their retries ([`retry`]),
//! the snapshot ledger and audit ([`audit`]), the result hooks, and the end ([`end`]: log
//! line, End record, end notification, and the [`Event::Ended`] that tells the state owner).
//!
//! A run holds the daemon's immutable context ([`RunContext`]) and talks back only by
//! sending events; it never touches the task or run tables, which belong to the state owner.

mod audit;
mod conditions;
mod end;
mod gate;
mod hooks;
pub(crate) mod locks;
mod retry;
pub(crate) mod verify;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::host::changes::Changes;
use super::host::inhibit::Inhibitor;
use super::notify::{self, RunFacts, Sent};
use super::output::Sinks;
use super::output::files::{OutputWriter, RunOutput};
use super::records::writers::{HistoryWriter, LedgerWriter};
pub(crate) use super::step::Outcome;
use super::step::Runner;
use super::step::contain::RunProcs;
use crate::broker::feed::Feed;
use crate::config::{Config, Task};
use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;
use crate::trust::Pinned;
use locks::{Held, Locks};

/// What every run shares, immutable for the daemon's life.
pub(crate) struct RunContext {
    pub(crate) config: Config,
    /// The tasks' `lock:`s.
    pub(crate) locks: Locks,
    /// For each task, each step's pinned program (if pinned).
    pub(crate) pins: Vec<Vec<Option<Pinned>>>,
    pub(crate) runner: Runner,
    pub(crate) history: HistoryWriter,
    /// Appends to the snapshot ledger, and hands an audit the ledger.
    pub(crate) ledger: LedgerWriter,
    /// Writes tasks' `output_file`s; `None` when no task has one.
    pub(crate) outputs: Option<OutputWriter>,
    /// The daemon's zone, for timestamps in records.
    pub(crate) zone: TimeZone,
    /// Cancelled when the daemon begins to stop.
    pub(crate) cancel: CancellationToken,
    /// Back to the state owner.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Notifications in flight, delivered off the runtime; awaited (bounded) at shutdown.
    pub(crate) outbox: notify::Outbox,
    /// How many suspends the state owner has seen: a run that sees it change slept.
    pub(crate) suspends: tokio::sync::watch::Sender<u64>,
    /// UPower's and NetworkManager's change signals, when some task's `when:` needs them.
    pub(crate) changes: Option<Changes>,
    /// What happened to the tasks (`GET /v1/events`, for `backupnizza watch`).
    pub(crate) announcements: Arc<crate::broker::feed::Feed>,
}

impl RunContext {
    pub(crate) fn rfc3339(&self, at: Timestamp) -> String {
        crate::time::rfc3339(at, &self.zone)
    }

    /// Sends a run's notifications; `after` orders them behind an earlier event's.
    pub(crate) fn notify(&self, task: &Task, facts: RunFacts, after: Option<Sent>) -> Option<Sent> {
        let notify = task.notify.as_ref().or(self.config.notify.as_ref())?;
        let local = (self.runner.base_env.as_slice(), self.runner.home.as_deref());
        notify::send(notify, self.runner.broker.secrets(), facts, after, &self.outbox, local)
    }
}

/// What a run tells the state owner.
pub(crate) enum Event {
    /// The run got past its random delay and recorded its start.
    Started { idx: usize, at: Timestamp },
    /// The run waits for its conditions (why, and since when), or no longer does (`None`).
    Deferred { idx: usize, why: Option<String> },
    /// The run is over and its End record is on disk.
    Ended { idx: usize, run_id: String, outcome: Box<Outcome>, ended: Timestamp },
}

/// A run to start.
pub(crate) struct Job {
    pub(crate) idx: usize,
    pub(crate) run_id: String,
    pub(crate) trigger: Trigger,
    pub(crate) occurrence: Option<Timestamp>,
    /// How the task's previous run ended when the daemon stopped it (timeout, shutdown, the
    /// daemon's death): `unlock_stale` then runs `restic unlock` first.
    pub(crate) after_stop: Option<RunStatus>,
    /// When the task last succeeded, for `force_after`.
    pub(crate) last_success: Option<Timestamp>,
    /// A catch-up run right after a resume waits this long first (`resume_settle`).
    pub(crate) settle: Option<Duration>,
}

/// A run in progress.
struct Run<'a> {
    ctx: &'a RunContext,
    task: &'a Task,
    job: Job,
    /// Where the run's processes are.
    procs: RunProcs,
    /// Pairs the start and end notifications.
    rid: String,
    started: Timestamp,
    start_sent: Option<Sent>,
    /// The task's output file for this run (steps and hooks alike).
    output: Option<RunOutput>,
    /// What `trigger --follow` reads.
    feed: Arc<Feed>,
    /// The task's lock, held from before the start to the End record.
    held: Option<Held>,
    /// logind's sleep inhibitor, held from the start to the end of the run.
    inhibitor: Option<Inhibitor>,
    /// How long the run waited for it.
    lock_wait: Option<crate::history::LockWait>,
    /// How long the run waited for its conditions.
    deferred: Option<crate::history::Deferred>,
}

/// Runs `job` to its end. Every path ends with an End record and [`Event::Ended`].
pub(crate) async fn execute(ctx: Arc<RunContext>, job: Job, feed: Arc<Feed>) {
    let task = &ctx.config.tasks[job.idx];
    let procs = ctx.runner.containment.for_run(&job.run_id);
    let output = match (&ctx.outputs, &task.output_file) {
        (Some(writer), Some(file)) => Some(writer.run(file, &task.name, &job.run_id)),
        _ => None,
    };
    let mut run = Run {
        ctx: &ctx,
        task,
        procs,
        job,
        rid: notify::new_rid(),
        started: Timestamp::now(),
        start_sent: None,
        output,
        feed,
        held: None,
        inhibitor: None,
        lock_wait: None,
        deferred: None,
    };
    let outcome = run.phases().await;
    run.result_hooks(&outcome).await;
    run.finish(outcome).await;
}

impl Run<'_> {
    /// The run's phases, to the outcome its End record will hold.
    async fn phases(&mut self) -> Outcome {
        let suspends = *self.ctx.suspends.borrow();
        let mut outcome = self.phases_inner().await;
        let slept = self.ctx.suspends.borrow().saturating_sub(suspends);
        if slept > 0 && outcome.status != RunStatus::Skipped {
            let times = if slept == 1 { String::new() } else { format!(" {slept} times") };
            warn!("the machine was suspended{times} while this run lasted");
            outcome.reason =
                format!("{}; the machine was suspended{times} during the run", outcome.reason);
        }
        outcome
    }

    async fn phases_inner(&mut self) -> Outcome {
        if let Err(early) = self.before_start().await {
            // Still a Start record, so the occurrence and its early End pair up in
            // `history` and `explain`.
            self.started = Timestamp::now();
            self.write_start();
            return early;
        }
        self.record_start();
        self.inhibit_sleep().await;
        let unlocked = self.unlock_stale().await;
        if let Err(early) = self.before_hook().await {
            return early;
        }
        let mut outcome = self.attempts().await;
        self.ledger(&mut outcome).await;
        if let Some(unlocked) = unlocked {
            outcome.reason = format!("{unlocked}; {}", outcome.reason);
        }
        outcome
    }

    fn sinks(&self) -> Sinks<'_> {
        Sinks { file: self.output.as_ref(), feed: Some(&self.feed), task: Some(&self.task.name) }
    }
}
