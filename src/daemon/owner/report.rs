//! What the state owner reports from its tables: the `status` answer and the metrics file.

use super::State;
use crate::daemon::records::metrics::{self, TaskMetrics, TokenMetrics};
use crate::protocol::{EventBody, PauseBody, StatusBody, TaskStatus, TokenCounts};

impl State {
    pub(super) fn status(&self) -> StatusBody {
        let tokens = self.ctx.runner.broker.token_stats();
        let now = self.now();
        StatusBody {
            daemon: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: self.rfc3339(self.started),
            tasks: self
                .ctx
                .config
                .tasks
                .iter()
                .zip(&self.tasks)
                .map(|(task, state)| TaskStatus {
                    name: task.name.clone(),
                    schedule: task.schedule.to_string(),
                    timezone: task.zone.name.clone(),
                    next: state.next.map(|n| crate::time::rfc3339(n, &task.zone.tz)),
                    running: state.running,
                    deferred: state.deferred.clone(),
                    last: state.last.clone(),
                    verified: state.verified.clone(),
                    overdue: state.overdue.is_some(),
                    overdue_since: state.overdue.map(|(t, _)| self.rfc3339(t)),
                    paused: super::vigil::paused_at(state, now).map(|p| PauseBody {
                        since: self.rfc3339(p.since),
                        until: p.until.map(|u| self.rfc3339(u)),
                    }),
                })
                .collect(),
            history_problem: self.history_health.borrow().clone(),
            tokens: TokenCounts {
                minted: tokens.stats.minted,
                redeemed: tokens.stats.redeemed,
                live: tokens.live as u64,
                rejected: tokens.rejected().map(|(r, n)| (r.to_string(), n)).collect(),
            },
        }
    }

    /// The metrics file's text, if the task file asks for one. No instant of the past in
    /// it lies after now: the loop re-reads them when it sees a clock change, before it
    /// writes, and this is the last guard (an instant the clock has not reached yet is left
    /// out rather than shown as the future).
    pub(super) fn metrics_text(&self) -> Option<String> {
        self.ctx.config.metrics_textfile.as_ref()?;
        let now = self.now();
        let past = |t: Option<jiff::Timestamp>| t.filter(|t| *t <= now);
        let named: Vec<(&str, TaskMetrics)> = self
            .ctx
            .config
            .tasks
            .iter()
            .zip(&self.tasks)
            .map(|(t, s)| {
                let m = &s.metrics;
                let metrics = TaskMetrics {
                    next: s.next,
                    last_start: past(m.last_start),
                    last_end: past(m.last_end),
                    last_success: past(m.last_success),
                    ..m.clone()
                };
                (t.name.as_str(), metrics)
            })
            .collect();
        let stats = self.ctx.runner.broker.token_stats();
        let tokens = TokenMetrics {
            minted: stats.stats.minted,
            redeemed: stats.stats.redeemed,
            rejected: stats.rejected().collect(),
        };
        let refs: Vec<(&str, &TaskMetrics)> = named.iter().map(|(n, m)| (*n, m)).collect();
        Some(metrics::render(&refs, &tokens, self.started.min(now)))
    }

    /// Tells `watch` (`GET /v1/events`) what happened to a task; the reason masked with the
    /// task's secrets, as the history's is.
    pub(super) fn announce(&self, event: &EventBody) {
        let mut event = event.clone();
        event.reason = crate::redact::as_task(Some(&event.task), || {
            crate::redact::redact(&event.reason).into_owned()
        });
        if let Ok(text) = serde_json::to_string(&event) {
            self.ctx.announcements.push(&event.task, &text);
        }
    }

    /// Hands the current metrics to the writer thread (the latest text wins).
    pub(super) fn write_metrics(&mut self) {
        if let Some(text) = self.metrics_text()
            && let Some(writer) = self.metrics.as_mut()
        {
            writer.write(text);
        }
    }
}
