//! One run of a task, in named phases: the random delay, the Start record and start
//! notification, the `before` hook, the steps, the result hooks, and the end (log line, End
//! record, end notification, and the [`Event::Ended`] that tells the state owner).
//!
//! A run holds the daemon's immutable context ([`RunContext`]) and talks back only by
//! sending events; it never touches the task or run tables, which belong to the state owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::contain::RunProcs;
use super::notifications::{self, RunFacts, Sent};
use super::output_file::{OutputWriter, RunOutput};
use super::programs::Pinned;
use super::runner::{HookFailure, Outcome, Runner};
use super::writers::HistoryWriter;
use crate::config::{Config, Task};
use crate::history::Record;
use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;

/// Most of the stderr tail a hook gets in `BACKUPNIZZA_STDERR_TAIL`.
const MAX_TAIL_ENV: usize = 32 * 1024;

/// A `before` hook exiting with this (EX_TEMPFAIL) skips the run, as in borgmatic.
const SKIP_EXIT_CODE: i32 = 75;

/// What every run shares, immutable for the daemon's life.
pub(crate) struct RunContext {
    pub(crate) config: Config,
    /// For each task, each step's pinned program (if pinned).
    pub(crate) pins: Vec<Vec<Option<Pinned>>>,
    pub(crate) runner: Runner,
    pub(crate) history: HistoryWriter,
    /// Writes tasks' `output_file`s; `None` when no task has one.
    pub(crate) outputs: Option<OutputWriter>,
    /// The daemon's zone, for timestamps in records.
    pub(crate) zone: TimeZone,
    /// Cancelled when the daemon begins to stop.
    pub(crate) cancel: CancellationToken,
    /// Back to the state owner.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Notifications in flight, awaited (bounded) at shutdown.
    pub(crate) notifications: tokio_util::task::TaskTracker,
}

impl RunContext {
    pub(crate) fn rfc3339(&self, at: Timestamp) -> String {
        crate::commands::rfc3339(at, &self.zone)
    }

    /// Sends a run's notifications; `after` orders them behind an earlier event's.
    fn notify(&self, task: &Task, facts: RunFacts, after: Option<Sent>) -> Option<Sent> {
        let notify = task.notify.as_ref().or(self.config.notify.as_ref())?;
        notifications::send(notify, self.runner.broker.secrets(), facts, after, &self.notifications)
    }
}

/// What a run tells the state owner.
pub(crate) enum Event {
    /// The run got past its random delay and recorded its start.
    Started { idx: usize, at: Timestamp },
    /// The run is over and its End record is on disk.
    Ended { idx: usize, run_id: String, outcome: Outcome, ended: Timestamp },
}

/// A run to start.
pub(crate) struct Job {
    pub(crate) idx: usize,
    pub(crate) run_id: String,
    pub(crate) trigger: Trigger,
    pub(crate) occurrence: Option<Timestamp>,
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
}

/// Runs `job` to its end. Every path ends with an End record and [`Event::Ended`].
pub(crate) async fn execute(ctx: Arc<RunContext>, job: Job) {
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
        rid: notifications::new_rid(),
        started: Timestamp::now(),
        start_sent: None,
        output,
    };
    let outcome = run.phases().await;
    run.result_hooks(&outcome).await;
    run.finish(outcome).await;
}

impl Run<'_> {
    async fn phases(&mut self) -> Outcome {
        if let Err(early) = self.random_delay().await {
            // Still a Start record, so the occurrence and its cancelled End pair up in
            // `history` and `explain`.
            self.started = Timestamp::now();
            self.write_start();
            return early;
        }
        self.record_start();
        if let Err(early) = self.before_hook().await {
            return early;
        }
        self.steps().await
    }

    /// `random_delay` spreads scheduled runs; manual triggers start at once.
    async fn random_delay(&self) -> Result<(), Outcome> {
        let (Some(max), Trigger::Schedule | Trigger::CatchUp) =
            (self.task.random_delay, self.job.trigger)
        else {
            return Ok(());
        };
        let delay = Duration::from_millis(rand::random_range(
            0..=max.as_millis().min(u128::from(u64::MAX)) as u64,
        ));
        info!("waiting {} before starting (random_delay)", crate::duration::Human(delay));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.ctx.cancel.cancelled() => {
                Err(Outcome::early(RunStatus::Cancelled, None, "daemon stopped during random_delay"))
            }
        }
    }

    fn record_start(&mut self) {
        let ctx = self.ctx;
        self.started = Timestamp::now();
        info!(trigger = self.job.trigger.as_str(), "run started");
        self.write_start();
        let _ = ctx.events.send(Event::Started { idx: self.job.idx, at: self.started });
        self.start_sent = ctx.notify(self.task, self.facts("start", None, None), None);
    }

    fn write_start(&self) {
        let ctx = self.ctx;
        ctx.history.append(Record::Start {
            run_id: self.job.run_id.clone(),
            task: self.task.name.clone(),
            at: ctx.rfc3339(self.started),
            scheduled: self.job.occurrence.map(|o| ctx.rfc3339(o)),
            trigger: self.job.trigger,
            cgroup: self.procs.cgroup.as_ref().map(|c| c.display().to_string()),
        });
    }

    async fn before_hook(&self) -> Result<(), Outcome> {
        let Some(before) = &self.task.hooks.before else { return Ok(()) };
        let facts = self.hook_facts("before", self.started, None);
        let ran = self
            .ctx
            .runner
            .run_hook(
                self.task,
                "before",
                before,
                &self.job.run_id,
                &self.procs,
                facts,
                &self.ctx.cancel,
                self.output.as_ref(),
            )
            .await;
        match ran {
            Ok(0) => Ok(()),
            Ok(SKIP_EXIT_CODE) => {
                info!("the before hook exited 75: skipping this run");
                Err(Outcome::early(RunStatus::Skipped, None, "the before hook exited 75 (skip)"))
            }
            Ok(code) => Err(Outcome::early(
                RunStatus::Failed,
                Some(code),
                format!("the before hook failed with exit code {code}; the steps did not run"),
            )),
            Err(HookFailure::Cancelled) => Err(Outcome::early(
                RunStatus::Cancelled,
                None,
                "stopped by daemon shutdown during the before hook",
            )),
            Err(HookFailure::Failed(why)) => Err(Outcome::early(
                RunStatus::Failed,
                None,
                format!("the before hook failed: {why}; the steps did not run"),
            )),
        }
    }

    async fn steps(&self) -> Outcome {
        let deadline = self.task.timeout.map(|t| Instant::now() + t);
        // The occurrence a run belongs to, with milliseconds, for scripts (and for the
        // benchmark that measures how punctually runs start).
        let mut facts = Vec::new();
        if let Some(o) = self.job.occurrence {
            facts.push((
                "BACKUPNIZZA_SCHEDULED".to_string(),
                o.to_zoned(self.ctx.zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            ));
        }
        let pins = &self.ctx.pins[self.job.idx];
        self.ctx
            .runner
            .run(
                self.task,
                pins,
                &self.job.run_id,
                &self.procs,
                &facts,
                deadline,
                &self.ctx.cancel,
                self.output.as_ref(),
            )
            .await
    }

    /// Result hooks, then `after` — also when the `before` hook failed; none for a run the
    /// `before` hook skipped, or once the daemon is stopping.
    async fn result_hooks(&self, outcome: &Outcome) {
        if matches!(outcome.status, RunStatus::Cancelled | RunStatus::Skipped) {
            return;
        }
        let hooks = &self.task.hooks;
        let which = if outcome.status.is_ok() {
            ("on_success", &hooks.on_success)
        } else {
            ("on_failure", &hooks.on_failure)
        };
        let started =
            Timestamp::now() - jiff::SignedDuration::try_from(outcome.duration).unwrap_or_default();
        for (name, hook) in [which, ("after", &hooks.after)] {
            let Some(hook) = hook else { continue };
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            let facts = self.hook_facts(name, started, Some(outcome));
            match self
                .ctx
                .runner
                .run_hook(
                    self.task,
                    name,
                    hook,
                    &self.job.run_id,
                    &self.procs,
                    facts,
                    &self.ctx.cancel,
                    self.output.as_ref(),
                )
                .await
            {
                Ok(0) => {}
                Ok(code) => warn!("the {name} hook exited {code}; the run's result is unchanged"),
                Err(HookFailure::Cancelled) => break,
                Err(HookFailure::Failed(why)) => {
                    warn!("the {name} hook failed: {why}; the run's result is unchanged");
                }
            }
        }
    }

    /// The log line, the End record (on disk before anyone hears of the end), the end
    /// notification, and the event for the state owner.
    async fn finish(mut self, outcome: Outcome) {
        let ctx = self.ctx;
        self.procs.remove();
        if let Some(output) = self.output.take() {
            output.finish();
        }
        let ended = Timestamp::now();
        let duration_ms = outcome.duration.as_millis() as u64;
        let message = format!(
            "run ended: {} ({}) after {}",
            outcome.status,
            outcome.reason,
            crate::duration::Human(Duration::from_millis(duration_ms))
        );
        match outcome.status {
            RunStatus::Success | RunStatus::Skipped => info!("{message}"),
            RunStatus::Warning | RunStatus::Cancelled => warn!("{message}"),
            _ => error!("{message}"),
        }
        ctx.history
            .append_and_wait(Record::End {
                run_id: self.job.run_id.clone(),
                task: self.task.name.clone(),
                at: ctx.rfc3339(ended),
                status: outcome.status,
                exit_code: outcome.exit_code,
                duration_ms,
                reason: outcome.reason.clone(),
                stderr_tail: outcome.stderr_tail.clone(),
            })
            .await;
        if outcome.status != RunStatus::Cancelled {
            let mut facts = self.facts("end", Some(ended), Some(&outcome));
            facts.duration_ms = Some(duration_ms);
            ctx.notify(self.task, facts, self.start_sent);
        }
        let _ = ctx.events.send(Event::Ended {
            idx: self.job.idx,
            run_id: self.job.run_id,
            outcome,
            ended,
        });
    }

    fn facts(
        &self,
        event: &'static str,
        ended: Option<Timestamp>,
        outcome: Option<&Outcome>,
    ) -> RunFacts {
        RunFacts {
            event,
            task: self.task.name.clone(),
            run_id: self.job.run_id.clone(),
            status: outcome.map_or(RunStatus::Running, |o| o.status).as_str().to_string(),
            exit_code: outcome.and_then(|o| o.exit_code),
            duration_ms: None,
            started: self.ctx.rfc3339(self.started),
            ended: ended.map(|t| self.ctx.rfc3339(t)),
            reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            stderr_tail: outcome.map(|o| o.stderr_tail.clone()),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            rid: self.rid.clone(),
        }
    }

    /// The run's facts for a hook's environment.
    fn hook_facts(
        &self,
        hook: &str,
        started: Timestamp,
        outcome: Option<&Outcome>,
    ) -> Vec<(String, String)> {
        let mut facts = vec![
            ("BACKUPNIZZA_HOOK".to_string(), hook.to_string()),
            ("BACKUPNIZZA_STARTED".to_string(), self.ctx.rfc3339(started)),
        ];
        if let Some(o) = outcome {
            facts.push(("BACKUPNIZZA_STATUS".into(), o.status.as_str().into()));
            facts.push((
                "BACKUPNIZZA_EXIT_CODE".into(),
                o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ));
            facts.push(("BACKUPNIZZA_DURATION_MS".into(), o.duration.as_millis().to_string()));
            facts.push(("BACKUPNIZZA_REASON".into(), o.reason.clone()));
            facts.push(("BACKUPNIZZA_STDERR_TAIL".into(), env_tail(&o.stderr_tail)));
        }
        facts
    }
}

/// The stderr tail as one environment value: bounded (an environment string over 128 KiB
/// makes exec fail with E2BIG) and without NULs (which no environment string can hold),
/// keeping the end.
fn env_tail(lines: &[String]) -> String {
    let mut tail = lines.join("\n").replace('\0', "");
    if tail.len() > MAX_TAIL_ENV {
        let mut cut = tail.len() - MAX_TAIL_ENV;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}
