//! A scheduled run waits for its run conditions: until the task's `when:` holds and no
//! `blackout:` window is on (see [`crate::daemon::host::conditions`]), at most until the
//! occurrence is `max_lateness` late (then it is skipped), or until shutdown. `force_after`
//! lets a run start anyway once the last success is that old. A run triggered by hand does
//! not wait.
//!
//! A change signal (UPower, NetworkManager) wakes the wait at once; without one, the
//! conditions are polled.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use tracing::{info, warn};

use super::{Event, Outcome, Run};
use crate::daemon::host::changes::{Changes, Source};
use crate::daemon::host::conditions::{self, Unmet};
use crate::history::Deferred;
use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;
use crate::time::Human;

/// Why a run still waits, and since when.
struct Waiting {
    why: String,
    /// The service that will signal a change, if one will.
    signalled: Option<Source>,
    /// `HH:MM` in the task's zone, when the wait began.
    since: String,
    began: Instant,
}

impl Run<'_> {
    /// Waits for the run conditions (see the module comment); records how long it waited.
    pub(super) async fn wait_for_conditions(&mut self) -> Result<(), Outcome> {
        let task = self.task;
        if (task.when.is_empty() && task.blackout.is_empty()) || self.job.trigger == Trigger::Manual
        {
            return Ok(());
        }
        // Marked seen before each check, so a signal that comes during one is not lost.
        let mut changes = self.ctx.changes.clone();
        mark_seen(&mut changes);
        let Some(unmet) = self.unmet_conditions().await else { return Ok(()) };
        if self.forced(&unmet.why) {
            return Ok(());
        }
        let since = Timestamp::now().to_zoned(task.zone.tz.clone()).strftime("%H:%M").to_string();
        let waiting =
            Waiting { why: unmet.why, signalled: unmet.signalled, since, began: Instant::now() };
        warn!("deferred: {}; waiting for the run conditions", waiting.why);
        self.tell_deferred(Some(format!("{} since {}", waiting.why, waiting.since)));
        let waiting = self.wait_until_met(waiting, changes).await?;
        let waited = waiting.began.elapsed();
        info!(
            "the run conditions hold after {}: starting",
            Human(Duration::from_secs(waited.as_secs()))
        );
        self.deferred = Some(Deferred { why: waiting.why, waited_ms: waited.as_millis() as u64 });
        Ok(())
    }

    /// Checks the conditions until they hold (or `force_after` applies), a change signal or
    /// the poll waking each check; gives up at `max_lateness` or shutdown.
    async fn wait_until_met(
        &self,
        mut waiting: Waiting,
        mut changes: Option<Changes>,
    ) -> Result<Waiting, Outcome> {
        let late_at = self.until_too_late();
        let late = async {
            match late_at {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(late);
        loop {
            let listening = waiting.signalled.is_some()
                && changes.as_ref().is_some_and(|c| c.has_changed().is_ok());
            let poll = if listening { conditions::BACKSTOP } else { conditions::POLL };
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                Some(source) = next_signal(changes.as_mut(), listening) => {
                    info!("{} signalled a change: checking the run conditions again", source.service());
                }
                () = &mut late => return Err(self.too_late(&waiting)),
                () = self.ctx.cancel.cancelled() => {
                    let why = format!("daemon stopped while deferred ({})", waiting.why);
                    return Err(Outcome::early(RunStatus::Cancelled, None, why));
                }
            }
            mark_seen(&mut changes);
            match self.unmet_conditions().await {
                None => return Ok(waiting),
                Some(now) if now.why != waiting.why => {
                    info!("still deferred: {}", now.why);
                    self.tell_deferred(Some(format!("{} since {}", now.why, waiting.since)));
                    (waiting.why, waiting.signalled) = (now.why, now.signalled);
                }
                Some(now) => waiting.signalled = now.signalled,
            }
            if self.forced(&waiting.why) {
                return Ok(waiting);
            }
        }
    }

    /// The skip of a run deferred past its occurrence's `max_lateness`.
    fn too_late(&self, waiting: &Waiting) -> Outcome {
        let waited = Human(Duration::from_secs(waiting.began.elapsed().as_secs()));
        let reason = format!(
            "deferred past max_lateness ({} since {}, {waited})",
            waiting.why, waiting.since
        );
        warn!("{reason}: skipped");
        self.tell_deferred(None);
        Outcome::early(RunStatus::Skipped, None, reason)
    }

    /// Tells the state owner why the run waits (or that it no longer does).
    fn tell_deferred(&self, why: Option<String>) {
        let _ = self.ctx.events.send(Event::Deferred { idx: self.job.idx, why });
    }

    /// What keeps the run from starting now, if anything (checked on a blocking thread: it
    /// may ask D-Bus or try a TCP connection).
    async fn unmet_conditions(&self) -> Option<Unmet> {
        let task = self.task;
        let (when, blackout) = (task.when.clone(), task.blackout.clone());
        let zone = task.zone.tz.clone();
        tokio::task::spawn_blocking(move || {
            conditions::unmet(&when, &blackout, &Timestamp::now().to_zoned(zone))
        })
        .await
        .unwrap_or(None)
    }

    /// Whether `force_after` lets the run start although `why` holds: the last success is at
    /// least that old (or there was none).
    fn forced(&self, why: &str) -> bool {
        let Some(after) = self.task.force_after else { return false };
        let limit = jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX);
        let old = self.job.last_success.is_none_or(|t| Timestamp::now().duration_since(t) >= limit);
        if old {
            warn!(
                "{why}, but the last success is older than force_after {}: running anyway",
                Human(after)
            );
        }
        old
    }
}

/// Marks the change signals seen so far as seen.
fn mark_seen(changes: &mut Option<Changes>) {
    if let Some(c) = changes {
        c.borrow_and_update();
    }
}

/// The next change signal, when the run listens for one; never, otherwise (and never once
/// the listener is gone: the run polls from then on).
async fn next_signal(changes: Option<&mut Changes>, listening: bool) -> Option<Source> {
    match changes {
        Some(c) if listening => match c.changed().await {
            Ok(()) => *c.borrow(),
            Err(_) => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}
