//! Which runs come due: the timetable's occurrences as they fall due (on time, caught up
//! once after a suspend or downtime, or skipped past `max_lateness`), and the occurrences
//! that fell while the daemon was not running.

use std::time::Duration;

use jiff::Timestamp;
use tracing::warn;

use super::State;
use crate::history::{Record, SkipReason};
use crate::schedule::timetable::{self, Decision, Trigger};

impl State {
    /// Fires every occurrence due by `now` and puts each task's next one in the timetable.
    pub(super) fn fire_due(&mut self, now: Timestamp) {
        while let Some((due, idx)) = self.table.pop_due(now) {
            self.handle_due(idx, due, now);
            let task = &self.ctx.config.tasks[idx];
            let next =
                timetable::next_fire(&task.schedule, &task.zone.tz, self.started, now.max(due));
            self.tasks[idx].next = next;
            if let Some(next) = next {
                self.table.push(next, idx);
            }
        }
    }

    /// An occurrence came due: run it (on time or caught up) or log why not.
    pub(super) fn handle_due(&mut self, idx: usize, due: Timestamp, now: Timestamp) {
        let ctx = self.ctx.clone();
        let task = &ctx.config.tasks[idx];
        let human = crate::time::Human;
        match timetable::decide(&task.schedule, &task.zone.tz, due, now, task.max_lateness) {
            Decision::Run { superseded, first_missed, .. }
                if self.is_paused(idx, now).is_some() =>
            {
                self.skip_paused(idx, first_missed, superseded + 1, now);
            }
            Decision::Run { trigger, occurrence, superseded, first_missed } => {
                if trigger == Trigger::CatchUp {
                    let late =
                        Duration::try_from(now.duration_since(occurrence)).unwrap_or_default();
                    warn!(
                        task = %task.name,
                        "missed {} occurrence{} from {} (machine asleep, daemon stopped or starting, or clock changed); running once now, {} late",
                        superseded + 1,
                        if superseded == 0 { "" } else { "s" },
                        self.rfc3339(first_missed),
                        human(Duration::from_secs(late.as_secs()))
                    );
                    if superseded > 0 {
                        let detail =
                            format!("folded into the catch-up run of {}", self.rfc3339(occurrence));
                        self.skip(idx, first_missed, superseded, SkipReason::Superseded, detail);
                    }
                }
                let _ = self.fire(idx, trigger, Some(occurrence));
            }
            Decision::TooLate { count, first, last } => {
                let which = if count == 1 {
                    format!("the missed occurrence of {}", self.rfc3339(first))
                } else {
                    format!(
                        "{count} missed occurrences from {} to {}",
                        self.rfc3339(first),
                        self.rfc3339(last)
                    )
                };
                let limit = human(task.max_lateness);
                warn!(task = %task.name, "skipping {which}: the latest is more than max_lateness ({limit}) late");
                self.skip(
                    idx,
                    first,
                    count,
                    SkipReason::TooLate,
                    format!("more than max_lateness ({limit}) late"),
                );
                self.write_metrics();
            }
        }
    }

    /// Occurrences that fell while the daemon was not running (after the last history
    /// record) or was still starting (after its process started, when there is no history)
    /// are handled like those missed during a suspend. The last record means the latest one
    /// not dated in the future: a record written before the clock was set back would
    /// otherwise say the daemon was alive until then, and nothing would be caught up.
    pub(super) fn catch_up_downtime(&mut self, past: &[Record], now: Timestamp) {
        let last_alive = past
            .iter()
            .filter_map(|r| r.at().parse::<Timestamp>().ok())
            .filter(|at| *at <= now)
            .max()
            .unwrap_or(self.launched);
        let ctx = self.ctx.clone();
        for (idx, task) in ctx.config.tasks.iter().enumerate() {
            if task.schedule.interval().is_some() {
                continue; // `@every` counts from the daemon's start.
            }
            if let Some(first) =
                task.schedule.next_after(last_alive, &task.zone.tz).filter(|o| *o <= now)
            {
                self.handle_due(idx, first, now);
            }
        }
    }
}
