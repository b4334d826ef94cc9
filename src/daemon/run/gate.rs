//! What a run waits for before it starts, in order: its random delay (scheduled runs only),
//! the settling after a resume (`resume_settle`), its run conditions ([`super::conditions`]),
//! and its lock. Each wait ends early at shutdown, and a scheduled run waits no later than
//! its occurrence's `max_lateness`.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use tracing::{info, warn};

use super::locks::Taken;
use super::{Outcome, Run};
use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;
use crate::time::Human;

impl Run<'_> {
    /// What a run waits for before it starts, in order: its random delay, the settling
    /// after a resume, its run conditions, its lock.
    pub(super) async fn before_start(&mut self) -> Result<(), Outcome> {
        self.random_delay().await?;
        self.settle().await?;
        self.wait_for_conditions().await?;
        self.take_lock().await
    }

    /// How long until this run's occurrence is `max_lateness` late; `None` for a run that
    /// belongs to no occurrence (triggered by hand), which waits as long as it takes.
    pub(super) fn until_too_late(&self) -> Option<Duration> {
        let occurrence = self.job.occurrence.filter(|_| self.job.trigger != Trigger::Manual)?;
        let late = jiff::SignedDuration::try_from(self.task.max_lateness).unwrap_or_default();
        Some(
            Duration::try_from((occurrence + late).duration_since(Timestamp::now()))
                .unwrap_or_default(),
        )
    }

    /// `random_delay` spreads scheduled runs; manual triggers start at once.
    pub(super) async fn random_delay(&self) -> Result<(), Outcome> {
        let (Some(max), Trigger::Schedule | Trigger::CatchUp) =
            (self.task.random_delay, self.job.trigger)
        else {
            return Ok(());
        };
        let delay = Duration::from_millis(rand::random_range(
            0..=max.as_millis().min(u128::from(u64::MAX)) as u64,
        ));
        info!("waiting {} before starting (random_delay)", Human(delay));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.ctx.cancel.cancelled() => {
                Err(Outcome::early(RunStatus::Cancelled, None, "daemon stopped during random_delay"))
            }
        }
    }

    /// A catch-up run right after a resume waits `resume_settle`, so the network (Wi-Fi,
    /// DNS, a VPN) is back before restic needs it; `when.network` is checked after it.
    pub(super) async fn settle(&self) -> Result<(), Outcome> {
        let Some(wait) = self.job.settle.filter(|w| !w.is_zero()) else { return Ok(()) };
        info!(
            "waiting {} after the resume before catching up (resume_settle {})",
            Human(wait),
            Human(self.task.resume_settle)
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.ctx.cancel.cancelled() => Err(Outcome::early(
                RunStatus::Cancelled,
                None,
                "daemon stopped during resume_settle",
            )),
        }
    }

    /// Takes the task's `lock:`, waiting while another run holds it: at most until the
    /// occurrence is `max_lateness` late (then the run is skipped, as a late occurrence is),
    /// or for the task's `timeout` (then it timed out), or until shutdown.
    pub(super) async fn take_lock(&mut self) -> Result<(), Outcome> {
        let Some(name) = &self.task.lock else { return Ok(()) };
        let (task, run_id) = (&self.task.name, &self.job.run_id);
        let holder = match self.ctx.locks.try_take(name, task, run_id) {
            Some(Taken::At(held)) => {
                self.held = Some(held);
                return Ok(());
            }
            Some(Taken::Busy { holder }) => holder,
            None => return Ok(()),
        };
        let began = Instant::now();
        let held_by = holder.as_ref().map(|(t, _)| t.clone());
        let by = holder.map_or_else(String::new, |(t, r)| format!(", held by task {t} (run {r})"));
        // A scheduled run waits no later than its occurrence's max_lateness.
        let late_at = self.until_too_late();
        let limit = match (late_at, self.task.timeout) {
            (Some(a), Some(b)) => Some((a.min(b), a <= b)),
            (Some(a), None) => Some((a, true)),
            (None, Some(b)) => Some((b, false)),
            (None, None) => None,
        };
        info!(lock = %name, "waiting for the lock{by}");
        let waited = || Human(Duration::from_secs(began.elapsed().as_secs()));
        let gave_up = |late: bool| {
            let bound = if late { "max_lateness" } else { "timeout" };
            let why = format!("gave up waiting for lock {name}{by} after {} ({bound})", waited());
            warn!("{why}");
            let status = if late { RunStatus::Skipped } else { RunStatus::Timeout };
            Outcome::early(status, None, why)
        };
        let sleep = async {
            match limit {
                Some((d, late)) => {
                    tokio::time::sleep(d).await;
                    late
                }
                None => std::future::pending().await,
            }
        };
        let held = tokio::select! {
            held = self.ctx.locks.take(name, task, run_id) => held,
            late = sleep => return Err(gave_up(late)),
            () = self.ctx.cancel.cancelled() => {
                return Err(Outcome::early(RunStatus::Cancelled, None, format!("daemon stopped while waiting for lock {name}")));
            }
        };
        info!(lock = %name, "took the lock after waiting {}", waited());
        self.held = held;
        self.lock_wait = Some(crate::history::LockWait {
            lock: name.clone(),
            held_by,
            waited_ms: began.elapsed().as_millis() as u64,
        });
        Ok(())
    }
}
