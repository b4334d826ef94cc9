//! A run's start and end as others see them: its Start record, the state owner told and
//! the start notification; the sleep inhibitor held while it lasts; and its end (the log
//! line, the End record on disk before anyone hears of the end, the end notification, and
//! the event for the state owner).

use std::time::Duration;

use jiff::Timestamp;
use tracing::{error, info, warn};

use super::{Event, Outcome, Run};
use crate::daemon::notify::RunFacts;
use crate::history::{Record, RunEnd};
use crate::protocol::RunStatus;
use crate::time::Human;

impl Run<'_> {
    /// The run starts: its Start record, the state owner told, the start notification.
    pub(super) fn record_start(&mut self) {
        let ctx = self.ctx;
        self.started = Timestamp::now();
        info!(trigger = self.job.trigger.as_str(), "run started");
        self.write_start();
        let _ = ctx.events.send(Event::Started { idx: self.job.idx, at: self.started });
        self.start_sent = ctx.notify(self.task, self.facts("start", None, None), None);
    }

    /// The Start record (also for a run that ends before it starts, so the occurrence and its
    /// early End pair up in `history` and `explain`).
    pub(super) fn write_start(&self) {
        let ctx = self.ctx;
        ctx.history.append(Record::Start {
            run_id: self.job.run_id.clone(),
            task: self.task.name.clone(),
            at: ctx.rfc3339(self.started),
            scheduled: self.job.occurrence.map(|o| ctx.rfc3339(o)),
            trigger: self.job.trigger,
            cgroup: self.procs.cgroup.as_ref().map(|c| c.display().to_string()),
            lock_wait: self.lock_wait.clone(),
            deferred: self.deferred.clone(),
        });
    }

    /// Takes a sleep inhibitor for the run (unless `inhibit_sleep: false`).
    pub(super) async fn inhibit_sleep(&mut self) {
        if !self.task.inhibit_sleep {
            return;
        }
        let task = self.task.name.clone();
        match tokio::task::spawn_blocking(move || crate::daemon::host::inhibit::take(&task)).await {
            Ok(Ok(inhibitor)) => {
                info!(mode = inhibitor.mode, "holding a sleep inhibitor while the run lasts");
                self.inhibitor = Some(inhibitor);
            }
            Ok(Err(why)) => tracing::debug!("no sleep inhibitor: {why}"),
            Err(e) => tracing::debug!("no sleep inhibitor: {e}"),
        }
    }

    /// The log line, the End record (on disk before anyone hears of the end), the end
    /// notification, and the event for the state owner.
    pub(super) async fn finish(mut self, outcome: Outcome) {
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
            Human(Duration::from_millis(duration_ms))
        );
        match outcome.status {
            RunStatus::Success | RunStatus::Skipped => info!("{message}"),
            RunStatus::Warning | RunStatus::Cancelled => warn!("{message}"),
            _ => error!("{message}"),
        }
        ctx.history
            .append_and_wait(Record::End(self.end_record(ctx.rfc3339(ended), &outcome)))
            .await;
        if outcome.status != RunStatus::Cancelled {
            let mut facts = self.facts("end", Some(ended), Some(&outcome));
            facts.duration_ms = Some(duration_ms);
            ctx.notify(self.task, facts, self.start_sent);
        }
        // The End record is on disk: the next run on this lock may start, and followers
        // have everything.
        drop(self.held.take());
        if self.inhibitor.take().is_some() {
            info!("released the sleep inhibitor");
        }
        self.feed.end();
        let _ = ctx.events.send(Event::Ended {
            idx: self.job.idx,
            run_id: self.job.run_id,
            outcome: Box::new(outcome),
            ended,
        });
    }

    /// The End record of this run.
    fn end_record(&self, at: String, outcome: &Outcome) -> RunEnd {
        RunEnd {
            run_id: self.job.run_id.clone(),
            task: self.task.name.clone(),
            at,
            status: outcome.status,
            exit_code: outcome.exit_code,
            duration_ms: outcome.duration.as_millis() as u64,
            reason: outcome.reason.clone(),
            stderr_tail: outcome.stderr_tail.clone(),
            backups: outcome.backups.clone(),
            attempts: outcome.attempts.clone(),
            findings: outcome.findings.clone(),
            verify: outcome.verification.clone(),
        }
    }

    /// The run's facts for its notifications.
    pub(super) fn facts(
        &self,
        event: &'static str,
        ended: Option<Timestamp>,
        outcome: Option<&Outcome>,
    ) -> RunFacts {
        let total = outcome.and_then(|o| crate::restic::total(&o.backups));
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
            snapshot_id: total.as_ref().map(|t| t.snapshot_id.clone()),
            data_added: total.as_ref().map(|t| t.data_added),
            backups: outcome.map(|o| o.backups.clone()).unwrap_or_default(),
            audit_findings: outcome.map(|o| o.findings.clone()).unwrap_or_default(),
        }
    }
}
