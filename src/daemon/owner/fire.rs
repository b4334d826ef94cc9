//! Starting runs: a firing runs now, queues behind the running run, or is skipped (per
//! `on_overlap`); a run's end updates the tables and starts the queued run; a queued run
//! the daemon stops before it starts ends as cancelled, with records saying so.

use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;
use tracing::{Instrument, info, warn};

use super::State;
use super::tables::{FEEDS_KEPT, KEEP_RUNS, Known};
use crate::broker::control::FireError;
use crate::broker::feed::Feed;
use crate::config::Overlap;
use crate::daemon::records::metrics;
use crate::daemon::run::{Job, Outcome};
use crate::history::{Record, RunEnd, SkipReason};
use crate::protocol::{RunBody, RunRef, RunStatus};
use crate::schedule::clock::Stamp;
use crate::schedule::timetable::Trigger;

/// A run id: the UTC start time and 32 random bits (`20261122T053704Z-0dd8a1f3`).
fn new_run_id(now: Timestamp) -> String {
    let mut suffix = [0u8; 4];
    let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    format!("{}-{:08x}", now.strftime("%Y%m%dT%H%M%SZ"), u32::from_be_bytes(suffix))
}

impl State {
    pub(super) fn skip(
        &mut self,
        idx: usize,
        scheduled: Timestamp,
        count: u64,
        reason: SkipReason,
        detail: String,
    ) {
        self.tasks[idx].metrics.skips += count;
        self.ctx.history.append(Record::Skip {
            task: self.ctx.config.tasks[idx].name.clone(),
            at: self.rfc3339(self.now()),
            scheduled: self.rfc3339(scheduled),
            count,
            reason,
            detail,
        });
    }

    /// Fires task `idx` now (or queues it, or skips it, per `on_overlap`).
    pub(super) fn fire(
        &mut self,
        idx: usize,
        trigger: Trigger,
        occurrence: Option<Timestamp>,
    ) -> Result<RunRef, FireError> {
        let ctx = self.ctx.clone();
        let task = &ctx.config.tasks[idx];
        if ctx.cancel.is_cancelled() {
            return Err(FireError::Stopping);
        }
        let now = self.now();
        let run_id = loop {
            let id = new_run_id(now);
            if !self.runs.by_id.contains_key(&id) {
                break id;
            }
        };
        let job = Job {
            idx,
            run_id: run_id.clone(),
            trigger,
            occurrence,
            after_stop: None,
            last_success: None,
            settle: None,
        };
        let state = &mut self.tasks[idx];
        if state.running {
            let why = match (task.on_overlap, &state.queued) {
                (Overlap::Skip, _) => "the previous run is still going (on_overlap: skip)",
                (Overlap::Queue, Some(_)) => {
                    "one run is already queued behind the current one (on_overlap: queue)"
                }
                (Overlap::Queue, None) => {
                    info!(task = %task.name, run_id, "queued behind the running run (on_overlap: queue)");
                    state.queued = Some(job);
                    self.register_run(&run_id, &task.name, RunStatus::Queued, now);
                    return Ok(RunRef { run_id, task: task.name.clone() });
                }
            };
            // An occurrence that will not run is recorded; a refused manual trigger is only
            // answered (it is not an occurrence of the schedule).
            if let Some(at) = occurrence {
                warn!(task = %task.name, occurrence = %self.rfc3339(at), "not running: {why}");
                self.skip(idx, at, 1, SkipReason::Overlap, why.to_string());
                self.write_metrics();
            } else {
                info!(task = %task.name, "manual trigger refused: {why}");
            }
            return Err(FireError::Busy { task: task.name.clone(), why });
        }
        state.running = true;
        self.register_run(&run_id, &task.name, RunStatus::Running, now);
        self.spawn_run(job);
        Ok(RunRef { run_id, task: task.name.clone() })
    }

    pub(super) fn spawn_run(&mut self, mut job: Job) {
        if job.trigger == Trigger::CatchUp
            && let Some(resumed) = self.resumed
        {
            let settle = self.ctx.config.tasks[job.idx].resume_settle;
            job.settle = settle.checked_sub(resumed.elapsed());
        }
        job.last_success = self.tasks[job.idx].metrics.last_success;
        job.after_stop = self.tasks[job.idx].last.as_ref().and_then(stopped_from_outside);
        // Every run is registered before it is spawned.
        let feed = self.runs.by_id.get(&job.run_id).map(|k| k.feed.clone());
        let feed = feed.unwrap_or_else(|| Arc::new(Feed::new()));
        let span = tracing::info_span!("run", task = %self.ctx.config.tasks[job.idx].name, run_id = %job.run_id);
        self.tracker.spawn((self.launch)(job, feed).instrument(span));
    }

    fn register_run(&mut self, run_id: &str, task: &str, status: RunStatus, now: Timestamp) {
        let body = RunBody {
            run_id: run_id.to_string(),
            task: task.to_string(),
            status,
            started: self.rfc3339(now),
            ended: None,
            exit_code: None,
            duration_ms: None,
            reason: String::new(),
        };
        let known = Known { state: watch::channel(body).0, feed: Arc::new(Feed::new()) };
        self.runs.by_id.insert(run_id.to_string(), known);
    }

    /// A run ended: its metrics and state, then the queued run (if any) starts, or is
    /// cancelled when the daemon is stopping.
    pub(super) fn run_ended(
        &mut self,
        idx: usize,
        run_id: &str,
        outcome: &Outcome,
        ended: Timestamp,
    ) {
        self.tasks[idx].deferred = None;
        let ran = outcome.status != RunStatus::Skipped;
        self.tasks[idx]
            .ended_at(Stamp::before(&self.clock.read(), ended), ran && outcome.status.is_ok());
        self.refresh_deadline(idx);
        if let Some(v) = &outcome.verification {
            let at = self.rfc3339(ended);
            super::tables::verified(&mut self.tasks, &self.ctx, v, outcome.status, &at, ended);
        }
        let m = &mut self.tasks[idx].metrics;
        m.ended(&metrics::Ended {
            exit_code: outcome.exit_code,
            seconds: outcome.duration.as_secs_f64(),
            ok: outcome.status.is_ok(),
            backups: &outcome.backups,
            audit: self.ctx.config.tasks[idx].audit.as_ref().map(|_| outcome.findings.len()),
            verify: outcome.verification.as_ref(),
        });

        match outcome.status {
            RunStatus::Skipped => m.skips += 1,
            status => {
                m.runs += 1;
                if !status.is_ok() && status != RunStatus::Cancelled {
                    m.failures += 1;
                }
            }
        }
        let mut body = match self.runs.by_id.get(run_id) {
            Some(known) => known.state.borrow().clone(),
            // Every run is registered when it fires; were one not, its start is its end less
            // its duration.
            None => RunBody {
                run_id: run_id.to_string(),
                task: self.ctx.config.tasks[idx].name.clone(),
                status: outcome.status,
                started: self.rfc3339(
                    ended - jiff::SignedDuration::try_from(outcome.duration).unwrap_or_default(),
                ),
                ended: None,
                exit_code: None,
                duration_ms: None,
                reason: String::new(),
            },
        };
        body.status = outcome.status;
        body.ended = Some(self.rfc3339(ended));
        body.exit_code = outcome.exit_code;
        body.duration_ms = Some(outcome.duration.as_millis() as u64);
        body.reason.clone_from(&outcome.reason);
        self.announce(&crate::protocol::EventBody::ended(&body));
        self.tasks[idx].last = Some(body.clone());
        self.finish_run(run_id, body);
        match self.tasks[idx].queued.take() {
            Some(queued) if !self.ctx.cancel.is_cancelled() => {
                if let Some(known) = self.runs.by_id.get(&queued.run_id) {
                    known.state.send_modify(|b| b.status = RunStatus::Running);
                }
                let trigger = if queued.trigger == Trigger::Manual {
                    Trigger::Manual
                } else {
                    Trigger::Queued
                };
                self.spawn_run(Job { trigger, ..queued });
            }
            Some(queued) => {
                self.tasks[idx].running = false;
                self.cancel_queued(&queued);
            }
            None => self.tasks[idx].running = false,
        }
        self.write_metrics();
    }

    /// A queued run the daemon stopped before it started: it ends as cancelled, with an
    /// End record saying so.
    fn cancel_queued(&mut self, job: &Job) {
        let now = self.now();
        let task = self.ctx.config.tasks[job.idx].name.clone();
        let reason = "the daemon stopped before the queued run started".to_string();
        // A Start and an End, like every run, so `history` and `explain` show it.
        self.ctx.history.append(Record::Start {
            run_id: job.run_id.clone(),
            task: task.clone(),
            at: self.rfc3339(now),
            scheduled: job.occurrence.map(|o| self.rfc3339(o)),
            trigger: job.trigger,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        });
        self.ctx.history.append(Record::End(RunEnd::without_steps(
            job.run_id.clone(),
            task.clone(),
            self.rfc3339(now),
            RunStatus::Cancelled,
            reason.clone(),
        )));
        let body = RunBody {
            run_id: job.run_id.clone(),
            task,
            status: RunStatus::Cancelled,
            started: self.rfc3339(now),
            ended: Some(self.rfc3339(now)),
            exit_code: None,
            duration_ms: Some(0),
            reason,
        };
        self.finish_run(&job.run_id, body);
    }

    fn finish_run(&mut self, run_id: &str, body: RunBody) {
        if let Some(known) = self.runs.by_id.get(run_id) {
            known.state.send_replace(body);
            // A run cancelled before it started has had no execute to end its feed.
            known.feed.end();
        }
        self.runs.finished.push_back(run_id.to_string());
        // Only the last few finished runs keep their output for a late follower: the rest
        // let go of it, so feeds cost at most (live runs + FEEDS_KEPT) × 2 MiB.
        if let Some(older) = self.runs.finished.iter().rev().nth(FEEDS_KEPT)
            && let Some(known) = self.runs.by_id.get(older)
        {
            known.feed.release();
        }
        while self.runs.finished.len() > KEEP_RUNS {
            if let Some(old) = self.runs.finished.pop_front() {
                self.runs.by_id.remove(&old);
            }
        }
    }
}

/// How the last run ended, when it was not by its own processes' choice: at its timeout,
/// by the daemon's shutdown or death, or its deciding process killed by a signal (from
/// outside, or the out-of-memory killer). restic may have left its lock then.
fn stopped_from_outside(last: &RunBody) -> Option<RunStatus> {
    let killed = last.status == RunStatus::Failed
        && last.exit_code.is_none()
        && last.reason.contains("killed by ");
    (matches!(last.status, RunStatus::Timeout | RunStatus::Cancelled | RunStatus::Interrupted)
        || killed)
        .then_some(last.status)
}
