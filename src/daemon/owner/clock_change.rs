//! What the state owner does when the clocks disagree: a suspend, a change of the wall
//! clock, or both (see [`crate::schedule::clock`]).
//!
//! A suspend needs nothing here: the timetable's entries came due while the machine slept,
//! and the loop catches each task up once (within `max_lateness`). A clock change rebuilds
//! the timetable from the new wall clock with [`timetable::replan`] (cronie's 3-hour rule,
//! in both directions), records what a correction forward skipped, and re-reads every
//! instant the metrics hold as *now minus its age*, so that neither the next runs nor
//! `last_success` stay where the old clock put them. It logs one WARN line saying what
//! happened and what was done, then one INFO line per task whose next run moved.

use std::time::Duration;

use jiff::SignedDuration;
use tracing::{info, warn};

use super::State;
use crate::history::SkipReason;
use crate::schedule::clock::{CORRECTION, Jump, Reading};
use crate::schedule::timetable::{self, Timetable};
use crate::time::Human;

impl State {
    pub(super) fn on_clock_jump(&mut self, jump: Jump, now: &Reading) {
        // Catch-up runs after a resume (or a forward jump caught up like one) settle first.
        if !jump.suspended.is_zero() || jump.changed > SignedDuration::ZERO {
            self.resumed = Some(tokio::time::Instant::now());
            // Running runs note it in their record (and `retry` applies to a failure).
            self.ctx.suspends.send_modify(|n| *n += 1);
        }
        warn!(
            direction = if jump.changed.is_negative() { "back" } else { "forward" },
            suspended = %Human(jump.suspended),
            changed = %Human(magnitude(jump.changed)),
            "{}",
            describe(&jump)
        );
        if !jump.is_clock_change() {
            return;
        }
        self.started = self.started_stamp.reread(now);
        for task in &mut self.tasks {
            task.reread(now);
        }
        let ctx = self.ctx.clone();
        self.table = Timetable::default();
        for (idx, task) in ctx.config.tasks.iter().enumerate() {
            let pending = self.tasks[idx].next;
            let tz = &task.zone.tz;
            let plan = timetable::replan(&task.schedule, tz, pending, jump.changed, now.wall);
            if let Some(due) = plan.missed {
                self.handle_due(idx, due, plan.as_of);
            }
            if let Some((count, first, last)) = plan.skipped {
                let (first_text, last_text) = (self.rfc3339(first), self.rfc3339(last));
                let which = if count == 1 {
                    format!("the occurrence of {first_text}")
                } else {
                    format!("{count} occurrences from {first_text} to {last_text}")
                };
                info!(task = %task.name, "not catching up {which}: the clock was corrected forward past it");
                let detail = format!(
                    "the wall clock was corrected forward by {}, past this occurrence{}",
                    Human(magnitude(jump.changed)),
                    if count == 1 {
                        String::new()
                    } else {
                        format!(" and {} more up to {last_text}", count - 1)
                    }
                );
                self.skip(idx, first, count, SkipReason::ClockChange, detail);
            }
            self.tasks[idx].next = plan.next;
            match plan.next {
                Some(next) => {
                    self.table.push(next, idx);
                    if Some(next) != pending {
                        info!(task = %task.name, next = %crate::time::rfc3339(next, tz), "rescheduled after the clock change");
                    }
                }
                // A manual task never fires by design: nothing to warn about.
                None if task.schedule.is_manual() => {}
                None => {
                    warn!(task = %task.name, schedule = %task.schedule, "will not fire in the next 30 years");
                }
            }
        }
        // Where "overdue" counts from was re-read on the new clock; pauses keep their length.
        self.shift_pauses(jump.changed);
        self.refresh_deadlines();
        self.write_metrics();
    }
}

fn magnitude(d: SignedDuration) -> Duration {
    // To the nearest second: the readings' sub-second noise says nothing.
    Duration::from_secs(((d.unsigned_abs().as_millis() + 500) / 1000) as u64)
}

/// The one WARN line's sentence: what the clocks did and what the daemon does about it.
fn describe(jump: &Jump) -> String {
    let suspended = Human(Duration::from_secs(jump.suspended.as_secs()));
    let caught_up = "missed occurrences are caught up once (within max_lateness)";
    if !jump.is_clock_change() {
        return if jump.told_apart {
            format!("the machine was suspended for {suspended}; {caught_up}")
        } else {
            format!(
                "the wall clock moved forward by {suspended} more than the monotonic clock (a suspend, or a clock change: this system cannot tell them apart); {caught_up}"
            )
        };
    }
    let mut out = String::new();
    if !jump.suspended.is_zero() {
        out.push_str(&format!("the machine was suspended for {suspended}, and "));
    }
    let size = Human(magnitude(jump.changed));
    let limit = Human(CORRECTION);
    let (direction, rule) = match (jump.changed.is_positive(), jump.is_correction()) {
        (true, false) => {
            ("forward", format!("at most {limit}, handled like a suspend: {caught_up}"))
        }
        (true, true) => (
            "forward",
            format!(
                "more than {limit}, a correction: occurrences in the skipped time are not caught up"
            ),
        ),
        (false, false) => (
            "back",
            format!(
                "at most {limit}: wildcard schedules follow the new clock, fixed-time occurrences that already ran are not repeated"
            ),
        ),
        (false, true) => {
            ("back", format!("more than {limit}, a correction: tasks run at the new clock's times"))
        }
    };
    out.push_str(&format!(
        "the wall clock moved {direction} by {size} ({rule}); the timetable was rebuilt from the new clock, @every tasks keep their rhythm, and the metrics' timestamps keep their age"
    ));
    out
}
