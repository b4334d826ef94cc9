//! Whether each task's backups are current, and which tasks are paused.
//!
//! **Overdue.** A task is overdue when its last success is too old: when the second of its
//! occurrences after its last successful run ended (with none, after the daemon's start) has
//! passed, plus [`SLACK`], without a newer success. Two missed runs, in the schedule's own
//! rhythm: an `@every 5s` task is overdue 20 s after its last success, a daily one two days
//! after, a weekdays-only one from Tuesday if Friday's was the last. A task that an audit
//! watches with `max_age` is overdue when its last success is older than that (the smallest,
//! if several audits do): the audit's own measure of "current". A manual task is never
//! overdue, and a task with a run in progress is not declared overdue until the run ends (it
//! may yet succeed; a run longer than the schedule's period would otherwise be overdue at
//! every run). The deadline is kept per task, recomputed when a run ends, at start and after
//! a clock change; the owner's loop wakes at the earliest one, so a task becomes overdue when
//! it does, and says so once (a WARN line and a notification), and once more when a new
//! success clears it (only a success does: a clock change that moves the deadline does not).
//!
//! **Paused.** `backupnizza pause` stops a task's (or every task's) occurrences from running,
//! for a while or until `resume`: each occurrence during the pause is recorded as skipped
//! with the reason `paused` (it is not made up afterwards: the next occurrence after the
//! pause runs as usual). `trigger` still runs a paused task. A pause with an end lifts
//! itself then; the loop wakes for it, to log it and rewrite the metrics. Pauses outlive a
//! restart: each change is written to `state_dir/pauses.json` before the request is
//! answered (in place, on the loop: a small file, rarely), and read back at start, before
//! the downtime's catch-up, which a pause holds like any other occurrence.

use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, warn};

use super::State;
use crate::broker::control::{FireError, PauseRequest};
use crate::daemon::notify::RunFacts;
use crate::daemon::records::pauses::{self, SavedPause};
use crate::history::SkipReason;
use crate::protocol::PausedBody;
use crate::schedule::timetable;

/// Beyond the second missed occurrence: a run's own start-up and a loaded machine.
pub(crate) const SLACK: Duration = Duration::from_secs(10);

/// A task's pause: since when, and until when (`None`: until `resume`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    pub(crate) since: Timestamp,
    pub(crate) until: Option<Timestamp>,
}

impl State {
    /// The instant after which task `idx` is overdue, from its last success (or the
    /// daemon's start); `None` for a task that never is.
    fn overdue_deadline(&self, idx: usize) -> Option<Timestamp> {
        let task = &self.ctx.config.tasks[idx];
        if task.schedule.is_manual() {
            return None;
        }
        let reading = self.clock.read();
        let since = self.tasks[idx].last_success_at(&reading).unwrap_or(self.started);
        let max_age = self
            .ctx
            .config
            .tasks
            .iter()
            .filter_map(|t| t.audit.as_ref())
            .filter(|a| a.tasks.contains(&task.name))
            .filter_map(|a| a.max_age)
            .min();
        deadline(&task.schedule, &task.zone.tz, self.started, since, max_age)
    }

    /// Recomputes every task's overdue deadline (at start, after a clock change).
    pub(super) fn refresh_deadlines(&mut self) {
        for idx in 0..self.tasks.len() {
            self.tasks[idx].deadline = self.overdue_deadline(idx);
        }
    }

    /// Task `idx` ended a run: its deadline moves if it succeeded.
    pub(super) fn refresh_deadline(&mut self, idx: usize) {
        self.tasks[idx].deadline = self.overdue_deadline(idx);
    }

    /// At each wake: tasks whose deadline passed become overdue, those with a newer success
    /// recover (each said once), and pauses whose end came lift. Rewrites the metrics when
    /// anything changed.
    pub(super) fn keep_vigil(&mut self, now: Timestamp) {
        let mut changed = false;
        let mut lifted = false;
        for idx in 0..self.tasks.len() {
            let state = &mut self.tasks[idx];
            if let Some(pause) = state.paused
                && pause.until.is_some_and(|until| until <= now)
            {
                state.paused = None;
                state.metrics.paused = false;
                (changed, lifted) = (true, true);
                info!(task = %self.ctx.config.tasks[idx].name, "the pause ended; occurrences run again");
            }
            let state = &mut self.tasks[idx];
            let due = state.deadline.is_some_and(|d| d <= now);
            match state.overdue {
                None if due && !state.running => {
                    let since = state.deadline.unwrap_or(now);
                    state.overdue = Some((since, state.successes));
                    state.metrics.overdue = true;
                    changed = true;
                    self.overdue_changed(idx, true);
                }
                Some((_, successes)) if state.successes > successes && !due => {
                    state.overdue = None;
                    state.metrics.overdue = false;
                    changed = true;
                    self.overdue_changed(idx, false);
                }
                _ => {}
            }
        }
        if lifted {
            self.save_pauses();
        }
        if changed {
            self.write_metrics();
        }
    }

    /// The next instant [`keep_vigil`](Self::keep_vigil) has something to do: a deadline
    /// of a task neither overdue nor running (a run's end wakes the loop anyway; its passed
    /// deadline would otherwise wake it at once, again and again), or a pause's end.
    pub(super) fn next_vigil(&self) -> Option<Timestamp> {
        self.tasks
            .iter()
            .flat_map(|s| {
                let deadline = s.deadline.filter(|_| s.overdue.is_none() && !s.running);
                [deadline, s.paused.and_then(|p| p.until)]
            })
            .flatten()
            .min()
    }

    /// Logs and notifies a task becoming overdue (`true`) or recovering.
    fn overdue_changed(&self, idx: usize, overdue: bool) {
        let task = &self.ctx.config.tasks[idx];
        let state = &self.tasks[idx];
        let last = state.metrics.last_success.map(|t| self.rfc3339(t));
        let reason = match (&last, overdue) {
            (Some(at), true) => format!("no success since {at}: backups are not current"),
            (None, true) => format!(
                "no success since the daemon started at {}: backups are not current",
                self.rfc3339(self.started)
            ),
            (_, false) => format!("succeeded again at {}", last.unwrap_or_default()),
        };
        if overdue {
            warn!(task = %task.name, "overdue: {reason}");
        } else {
            info!(task = %task.name, "no longer overdue: {reason}");
        }
        let now = self.now();
        self.announce(&crate::protocol::EventBody {
            event: if overdue { "overdue" } else { "recovered" }.into(),
            task: task.name.clone(),
            run_id: String::new(),
            status: if overdue { "overdue" } else { "recovered" }.into(),
            exit_code: None,
            reason: reason.clone(),
            at: self.rfc3339(now),
        });
        let facts = RunFacts {
            event: if overdue { "overdue" } else { "recovered" },
            task: task.name.clone(),
            run_id: String::new(),
            status: if overdue { "overdue" } else { "recovered" }.into(),
            exit_code: None,
            duration_ms: None,
            started: state.overdue.map_or_else(|| self.rfc3339(now), |(t, _)| self.rfc3339(t)),
            ended: None,
            reason,
            stderr_tail: None,
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rid: crate::daemon::notify::new_rid(),
            snapshot_id: None,
            data_added: None,
            backups: Vec::new(),
            audit_findings: Vec::new(),
        };
        self.ctx.notify(task, facts, None);
    }

    /// `pause`: the named tasks (every task for none), until `until` or `resume`.
    pub(super) fn pause(&mut self, request: &PauseRequest) -> Result<PausedBody, FireError> {
        let now = self.now();
        let until = request.seconds.and_then(|s| now.checked_add(Duration::from_secs(s)).ok());
        let chosen = self.chosen(&request.tasks)?;
        for &idx in &chosen {
            let since = self.tasks[idx].paused.map_or(now, |p| p.since);
            self.tasks[idx].paused = Some(Pause { since, until });
            self.tasks[idx].metrics.paused = true;
        }
        let names = self.names(&chosen);
        info!(tasks = %names.join(","), "paused {}", self.pause_end(until));
        self.save_pauses();
        self.write_metrics();
        Ok(PausedBody { tasks: names, until: until.map(|u| self.rfc3339(u)) })
    }

    /// `resume`: the named tasks (every task for none) run their occurrences again.
    pub(super) fn resume(&mut self, tasks: &[String]) -> Result<PausedBody, FireError> {
        let chosen = self.chosen(tasks)?;
        let chosen: Vec<usize> =
            chosen.into_iter().filter(|&i| self.tasks[i].paused.is_some()).collect();
        for &idx in &chosen {
            self.tasks[idx].paused = None;
            self.tasks[idx].metrics.paused = false;
        }
        let names = self.names(&chosen);
        if !names.is_empty() {
            info!(tasks = %names.join(","), "resumed");
            self.save_pauses();
            self.write_metrics();
        }
        Ok(PausedBody { tasks: names, until: None })
    }

    /// Occurrences of a paused task came due: `count` from `first`, recorded as skipped.
    pub(super) fn skip_paused(&mut self, idx: usize, first: Timestamp, count: u64, now: Timestamp) {
        let until = self.pause_end(self.is_paused(idx, now).and_then(|p| p.until));
        let name = &self.ctx.config.tasks[idx].name;
        info!(task = %name, "skipping the occurrence of {}: paused {until}", self.rfc3339(first));
        self.skip(idx, first, count, SkipReason::Paused, format!("paused {until}"));
        self.write_metrics();
    }

    /// The wall clock was set by `by`: each pause keeps its real length (a pause for an hour
    /// set back a day still ends in an hour), and "overdue since" moves with the clock.
    pub(super) fn shift_pauses(&mut self, by: jiff::SignedDuration) {
        let shift = |t: Timestamp| t.checked_add(by).unwrap_or(t);
        for state in &mut self.tasks {
            if let Some(pause) = state.paused.as_mut() {
                pause.since = shift(pause.since);
                pause.until = pause.until.map(shift);
            }
            if let Some((since, _)) = state.overdue.as_mut() {
                *since = shift(*since);
            }
        }
        if self.tasks.iter().any(|s| s.paused.is_some()) {
            self.save_pauses();
        }
    }

    /// At start, before the downtime's catch-up: the pauses in effect when the daemon last
    /// ran, for the tasks still in the file and not yet over. A file that cannot be read
    /// pauses nothing (backups running is the safer way to be wrong) and is said in a WARN.
    pub(super) fn restore_pauses(&mut self, now: Timestamp) {
        let path = pauses::file(&self.ctx.config.state_dir);
        let saved = match pauses::load(&path) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(error = %e, "starting with no task paused");
                return;
            }
        };
        let mut dropped = false;
        for pause in saved {
            let task = &pause.task;
            let Some(idx) = self.ctx.config.tasks.iter().position(|t| &t.name == task) else {
                info!(%task, "forgetting the pause of a task no longer in the task file");
                dropped = true;
                continue;
            };
            if pause.until.is_some_and(|until| until <= now) {
                info!(%task, "the pause ended while the daemon was not running");
                dropped = true;
                continue;
            }
            self.tasks[idx].paused = Some(Pause { since: pause.since, until: pause.until });
            self.tasks[idx].metrics.paused = true;
            info!(%task, "still paused {}, as before the restart", self.pause_end(pause.until));
        }
        if dropped {
            self.save_pauses();
        }
    }

    /// Writes the pauses in effect to `state_dir/pauses.json`, for the next start.
    fn save_pauses(&self) {
        let now = self.now();
        let saved = (self.tasks.iter().zip(&self.ctx.config.tasks))
            .filter_map(|(state, task)| {
                let pause = paused_at(state, now)?;
                Some(SavedPause { task: task.name.clone(), since: pause.since, until: pause.until })
            })
            .collect();
        let path = pauses::file(&self.ctx.config.state_dir);
        if let Err(e) = pauses::save(&path, saved) {
            warn!(file = %path.display(), error = %e, "cannot record the pauses: a restart of the daemon will lift them");
        }
    }

    /// `until 2026-12-08T09:00:00+01:00`, or `until resumed`: a pause's end, for the log and
    /// the skip records.
    fn pause_end(&self, until: Option<Timestamp>) -> String {
        until.map_or_else(|| "until resumed".to_string(), |u| format!("until {}", self.rfc3339(u)))
    }

    /// Task indices by name (all for none); an unknown name is refused whole.
    fn chosen(&self, names: &[String]) -> Result<Vec<usize>, FireError> {
        let tasks = &self.ctx.config.tasks;
        if names.is_empty() {
            return Ok((0..tasks.len()).collect());
        }
        names
            .iter()
            .map(|name| {
                tasks.iter().position(|t| &t.name == name).ok_or_else(|| FireError::NoSuchTask {
                    hint: crate::config::did_you_mean(name, tasks.iter().map(|t| t.name.as_str()))
                        .map(str::to_string),
                    name: name.clone(),
                })
            })
            .collect()
    }

    fn names(&self, chosen: &[usize]) -> Vec<String> {
        chosen.iter().map(|&i| self.ctx.config.tasks[i].name.clone()).collect()
    }

    /// Whether task `idx` is paused at `now` (a pause whose end came is not).
    pub(super) fn is_paused(&self, idx: usize, now: Timestamp) -> Option<Pause> {
        paused_at(&self.tasks[idx], now)
    }
}

/// When a task whose last good run started at `since` becomes overdue: `max_age` after it,
/// or [`SLACK`] after the second occurrence that follows it (`@every` anchored at `anchor`).
fn deadline(
    schedule: &crate::schedule::Schedule,
    tz: &jiff::tz::TimeZone,
    anchor: Timestamp,
    since: Timestamp,
    max_age: Option<Duration>,
) -> Option<Timestamp> {
    if schedule.is_manual() {
        return None;
    }
    if let Some(max_age) = max_age {
        return since.checked_add(max_age).ok();
    }
    let next = |after| timetable::next_fire(schedule, tz, anchor, after);
    next(next(since)?)?.checked_add(SLACK).ok()
}

/// The pause of a task's state at `now` (a pause whose end came is none).
pub(super) fn paused_at(state: &super::tables::TaskState, now: Timestamp) -> Option<Pause> {
    state.paused.filter(|p| p.until.is_none_or(|u| u > now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn overdue_after(schedule: &str, since: &str, max_age: Option<Duration>) -> Option<Timestamp> {
        let schedule = Schedule::parse(schedule).unwrap();
        deadline(&schedule, &jiff::tz::TimeZone::UTC, at(since), at(since), max_age)
    }

    #[test]
    fn two_missed_occurrences_in_the_schedules_own_rhythm_make_a_task_overdue() {
        // The two examples: 20 s for `@every 5s`, two days for a daily task.
        assert_eq!(
            overdue_after("@every 5s", "2030-06-03T10:00:00Z", None),
            Some(at("2030-06-03T10:00:20Z"))
        );
        assert_eq!(
            overdue_after("0 3 * * *", "2030-06-03T03:00:00Z", None),
            Some(at("2030-06-05T03:00:10Z"))
        );
        // Weekdays only: Friday's good run, then Monday and Tuesday missed.
        assert_eq!(
            overdue_after("0 3 * * 1-5", "2030-06-07T03:00:00Z", None),
            Some(at("2030-06-11T03:00:10Z"))
        );
        // An audit's max_age is the measure where one applies; a manual task is never due.
        assert_eq!(
            overdue_after(
                "0 3 * * *",
                "2030-06-03T03:00:00Z",
                Some(Duration::from_secs(36 * 3600))
            ),
            Some(at("2030-06-04T15:00:00Z"))
        );
        assert_eq!(overdue_after("manual", "2030-06-03T03:00:00Z", None), None);
    }
}
