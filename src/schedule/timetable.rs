//! The timetable: one timer over all tasks, and what to do with an occurrence that comes due.
//!
//! Next fire instants sit in one min-heap. Monotonic sleeps stop while a machine is
//! suspended and ignore a change of the wall clock, so the loop sleeps at most a cap: where
//! the kernel reports clock changes and resumes (the daemon's sentinel on Linux) that is a
//! day, elsewhere [`MAX_SLEEP`], after which it re-reads the clocks (see [`super::clock`]) and
//! notices a suspend or a clock change. [`decide`] is
//! pure: given an occurrence and the current time it says whether to run it (on time, or
//! caught up once after a suspend or downtime) or to skip it as too late, and when the task
//! fires next. [`replan`] is pure too: after a change of the wall clock it says where each
//! task's entry moves, following cronie's rules (cron(8)):
//!
//! | change | cron schedules | `@every` |
//! |---|---|---|
//! | forward, at most 3 h | kept: the skipped occurrences are caught up as after a suspend | shifted with the clock (elapsed time did not change) |
//! | forward, more than 3 h (a correction) | the skipped occurrences are not caught up (they are recorded as skipped); next after the new time | shifted |
//! | back, at most 3 h | wildcard jobs follow the new clock; fixed-time jobs resume after the old time, so nothing that ran repeats | shifted |
//! | back, more than 3 h (a correction) | next after the new time | shifted |
//!
//! In every case an occurrence that came due in real (elapsed) time before the change, as
//! during a suspend that ended with the clock being set, is still handled as a missed one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::Schedule;
use super::clock::CORRECTION;

/// Longest single sleep of the loop where nothing reports clock changes and resumes.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(60);
/// An occurrence handled within this long of its instant is on time, not "caught up".
pub(crate) const ON_TIME: Duration = Duration::from_secs(30);

/// Why a run starts. The history file names them `schedule`, `catch_up`, `trigger` and
/// `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Trigger {
    Schedule,
    /// A missed occurrence (suspend, downtime) run once, late.
    CatchUp,
    /// `backupnizza trigger`.
    #[serde(rename = "trigger")]
    Manual,
    /// A firing that waited for the previous run (`on_overlap: queue`).
    Queued,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "trigger",
            Trigger::Queued => "queued",
        }
    }
}

/// What to do with a due occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run now. `occurrence` is the one that runs; `superseded` older missed occurrences are
    /// folded into it (each missed occurrence runs once at most, and only the latest).
    Run { trigger: Trigger, occurrence: Timestamp, superseded: u64, first_missed: Timestamp },
    /// Too late to run: `count` occurrences from `first` to `last` are skipped.
    TooLate { count: u64, first: Timestamp, last: Timestamp },
}

/// The latest occurrence at or before `now`, starting from the due occurrence `due`, and how
/// many occurrences that covers (at least 1).
pub(crate) fn latest_due(
    schedule: &Schedule,
    tz: &TimeZone,
    due: Timestamp,
    now: Timestamp,
) -> (Timestamp, u64) {
    if let Some(interval) = schedule.interval() {
        let step = interval.as_nanos().max(1);
        let behind = now.duration_since(due).as_nanos().max(0) as u128;
        let k = behind / step;
        let latest = due + SignedDuration::from_nanos((k * step).min(i64::MAX as u128) as i64);
        return (latest, (k as u64).saturating_add(1));
    }
    let (mut latest, mut count) = (due, 1u64);
    // Bounded: a minutely job over a year is half a million steps; beyond that we stop
    // counting precisely (the log says "at least").
    for _ in 0..1_000_000 {
        match schedule.next_after(latest, tz) {
            Some(next) if next <= now => {
                latest = next;
                count += 1;
            }
            _ => break,
        }
    }
    (latest, count)
}

/// Decides what happens to the occurrence `due` when it is handled at `now`.
pub(crate) fn decide(
    schedule: &Schedule,
    tz: &TimeZone,
    due: Timestamp,
    now: Timestamp,
    max_lateness: Duration,
) -> Decision {
    let late = now.duration_since(due);
    if late <= SignedDuration::try_from(ON_TIME).unwrap_or(SignedDuration::MAX) {
        return Decision::Run {
            trigger: Trigger::Schedule,
            occurrence: due,
            superseded: 0,
            first_missed: due,
        };
    }
    let (latest, count) = latest_due(schedule, tz, due, now);
    let lateness = now.duration_since(latest);
    if lateness <= SignedDuration::try_from(max_lateness).unwrap_or(SignedDuration::MAX) {
        Decision::Run {
            trigger: Trigger::CatchUp,
            occurrence: latest,
            superseded: count - 1,
            first_missed: due,
        }
    } else {
        Decision::TooLate { count, first: due, last: latest }
    }
}

/// The next instant a task fires after `now`, anchoring `@every` schedules at `anchor` (the
/// daemon's start) so they keep their rhythm.
pub(crate) fn next_fire(
    schedule: &Schedule,
    tz: &TimeZone,
    anchor: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    if let Some(interval) = schedule.interval() {
        let step = interval.as_nanos().max(1);
        let since = now.duration_since(anchor).as_nanos().max(0) as u128;
        let k = since / step + 1;
        return anchor
            .checked_add(SignedDuration::from_nanos((k * step).min(i64::MAX as u128) as i64))
            .ok();
    }
    schedule.next_after(now, tz)
}

/// The heap of next fire instants: `(when, task index)`, earliest first.
#[derive(Debug, Default)]
pub(crate) struct Timetable {
    heap: BinaryHeap<Reverse<(Timestamp, usize)>>,
}

impl Timetable {
    pub(crate) fn push(&mut self, at: Timestamp, task: usize) {
        self.heap.push(Reverse((at, task)));
    }

    pub(crate) fn peek(&self) -> Option<(Timestamp, usize)> {
        self.heap.peek().map(|Reverse(x)| *x)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, usize)> {
        match self.peek() {
            Some((at, _)) if at <= now => self.heap.pop().map(|Reverse(x)| x),
            _ => None,
        }
    }

    /// How long to sleep before the next entry is due, never more than `cap`.
    pub(crate) fn sleep_for(&self, now: Timestamp, cap: Duration) -> Duration {
        match self.peek() {
            Some((at, _)) => {
                let d = at.duration_since(now);
                if d.is_negative() {
                    Duration::ZERO
                } else {
                    Duration::try_from(d).unwrap_or(cap).min(cap)
                }
            }
            None => cap,
        }
    }
}

/// Where one task's entry goes after the wall clock was changed by `changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replan {
    /// An occurrence that came due in real elapsed time before the change (during a
    /// suspend, or in the moment before the change was seen): handle it with [`decide`] as
    /// of `as_of`, the time the clock would show had it not been changed.
    pub(crate) missed: Option<Timestamp>,
    pub(crate) as_of: Timestamp,
    /// Occurrences a forward correction jumped over, not caught up: `(count, first, last)`.
    pub(crate) skipped: Option<(u64, Timestamp, Timestamp)>,
    /// The task's entry from now on.
    pub(crate) next: Option<Timestamp>,
}

/// Replans one task after a change of the wall clock by `changed` (positive: forward),
/// noticed at `now` (on the new clock), given its `pending` entry (made on the old clock).
/// See the table in this module's documentation.
pub(crate) fn replan(
    schedule: &Schedule,
    tz: &TimeZone,
    pending: Option<Timestamp>,
    changed: SignedDuration,
    now: Timestamp,
) -> Replan {
    let as_of = now.checked_sub(changed).unwrap_or(now);
    let keep = |next| Replan { missed: None, as_of, skipped: None, next };
    if schedule.interval().is_some() {
        // `@every` counts elapsed time, which a clock change does not alter: the entry moves
        // with the clock, keeping its rhythm and any occurrence a suspend made due.
        return keep(pending.and_then(|p| p.checked_add(changed).ok()));
    }
    let correction = changed.unsigned_abs() > CORRECTION;
    if changed.is_positive() && !correction {
        // Handled like a suspend: the entry is due, and `decide` catches up what was missed.
        return keep(pending);
    }
    let missed = pending.filter(|p| *p <= as_of);
    let mut skipped = None;
    let next = if changed.is_positive() {
        // A correction forward: what fell in the skipped wall-clock time does not run.
        if let Some(first) = schedule.next_after(as_of, tz).filter(|f| *f <= now) {
            let (last, count) = latest_due(schedule, tz, first, now);
            skipped = Some((count, first, last));
        }
        schedule.next_after(now, tz)
    } else if !correction && schedule.is_fixed_time() {
        // Back by at most 3 h: a fixed-time job already ran (or was handled) at the times
        // the clock now shows again, so it resumes after the old time (cronie).
        schedule.next_after(as_of, tz)
    } else {
        // Wildcard jobs after a small step back, and every job after a correction back,
        // run at the new clock's times.
        schedule.next_after(now, tz)
    };
    Replan { missed, as_of, skipped, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn on_time_occurrences_run() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let d = decide(
            &s,
            &TimeZone::UTC,
            ts("2026-01-01T03:00:00Z"),
            ts("2026-01-01T03:00:00.2Z"),
            Duration::from_secs(3600),
        );
        assert!(matches!(d, Decision::Run { trigger: Trigger::Schedule, superseded: 0, .. }));
    }

    #[test]
    fn a_suspend_catches_up_the_latest_occurrence_once() {
        let s = Schedule::parse("0 * * * *").unwrap();
        // Asleep from before 01:00 until 05:30: 01:00..05:00 were missed, 05:00 runs once.
        let d = decide(
            &s,
            &TimeZone::UTC,
            ts("2026-01-01T01:00:00Z"),
            ts("2026-01-01T05:30:00Z"),
            Duration::from_secs(24 * 3600),
        );
        assert_eq!(
            d,
            Decision::Run {
                trigger: Trigger::CatchUp,
                occurrence: ts("2026-01-01T05:00:00Z"),
                superseded: 4,
                first_missed: ts("2026-01-01T01:00:00Z")
            }
        );
        let next =
            next_fire(&s, &TimeZone::UTC, ts("2026-01-01T00:00:00Z"), ts("2026-01-01T05:30:00Z"));
        assert_eq!(next, Some(ts("2026-01-01T06:00:00Z")));
    }

    #[test]
    fn occurrences_older_than_max_lateness_are_skipped() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let d = decide(
            &s,
            &TimeZone::UTC,
            ts("2026-01-01T03:00:00Z"),
            ts("2026-01-03T12:00:00Z"),
            Duration::from_secs(3600),
        );
        assert_eq!(
            d,
            Decision::TooLate {
                count: 3,
                first: ts("2026-01-01T03:00:00Z"),
                last: ts("2026-01-03T03:00:00Z")
            }
        );
    }

    #[test]
    fn every_keeps_its_rhythm_from_the_anchor() {
        let s = Schedule::parse("@every 90s").unwrap();
        let anchor = ts("2026-01-01T00:00:00Z");
        assert_eq!(next_fire(&s, &TimeZone::UTC, anchor, anchor), Some(ts("2026-01-01T00:01:30Z")));
        assert_eq!(
            next_fire(&s, &TimeZone::UTC, anchor, ts("2026-01-01T00:01:30Z")),
            Some(ts("2026-01-01T00:03:00Z"))
        );
        let (latest, count) =
            latest_due(&s, &TimeZone::UTC, ts("2026-01-01T00:01:30Z"), ts("2026-01-01T01:00:00Z"));
        assert_eq!((latest, count), (ts("2026-01-01T01:00:00Z"), 40));
    }

    #[test]
    fn the_timetable_sleeps_in_bounded_steps() {
        let mut t = Timetable::default();
        let now = ts("2026-01-01T00:00:00Z");
        assert_eq!(t.sleep_for(now, MAX_SLEEP), MAX_SLEEP);
        t.push(ts("2026-01-01T05:00:00Z"), 0);
        t.push(ts("2026-01-01T00:00:10Z"), 1);
        assert_eq!(t.sleep_for(now, MAX_SLEEP), Duration::from_secs(10));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.pop_due(ts("2026-01-01T00:00:10Z")), Some((ts("2026-01-01T00:00:10Z"), 1)));
        assert_eq!(t.sleep_for(now, MAX_SLEEP), MAX_SLEEP);
    }

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    #[test]
    fn a_small_step_forward_is_caught_up_like_a_suspend() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let pending = Some(ts("2026-01-01T02:10:00Z"));
        let plan = replan(&s, &TimeZone::UTC, pending, 2 * HOUR, ts("2026-01-01T04:02:00Z"));
        assert_eq!(plan.next, pending, "the entry stays, so `decide` catches it up");
        assert_eq!((plan.missed, plan.skipped), (None, None));
    }

    #[test]
    fn a_correction_forward_skips_the_jumped_span() {
        let s = Schedule::parse("0 * * * *").unwrap();
        // At 02:30 the clock is set forward a day.
        let now = ts("2026-01-02T02:30:00Z");
        let plan = replan(&s, &TimeZone::UTC, Some(ts("2026-01-01T03:00:00Z")), 24 * HOUR, now);
        assert_eq!(plan.missed, None);
        assert_eq!(
            plan.skipped,
            Some((24, ts("2026-01-01T03:00:00Z"), ts("2026-01-02T02:00:00Z"))),
            "03:00 on the 1st up to 02:00 on the 2nd"
        );
        assert_eq!(plan.next, Some(ts("2026-01-02T03:00:00Z")));
    }

    #[test]
    fn an_occurrence_due_before_the_change_is_still_missed_not_skipped() {
        // Suspended over 03:00, and on resume the clock was also corrected 5 h forward:
        // 03:00 came due in real time (judged as of 03:20), the corrected span is skipped.
        let s = Schedule::parse("0 3 * * *").unwrap();
        let now = ts("2026-01-01T08:20:00Z");
        let plan = replan(&s, &TimeZone::UTC, Some(ts("2026-01-01T03:00:00Z")), 5 * HOUR, now);
        assert_eq!(plan.missed, Some(ts("2026-01-01T03:00:00Z")));
        assert_eq!(plan.as_of, ts("2026-01-01T03:20:00Z"));
        assert_eq!(plan.skipped, None, "no 03:00 between 03:20 and 08:20");
        assert_eq!(plan.next, Some(ts("2026-01-02T03:00:00Z")));
    }

    #[test]
    fn a_small_step_back_repeats_wildcard_jobs_but_not_fixed_time_ones() {
        // At 12:05 the clock goes back an hour, to 11:05.
        let now = ts("2026-01-01T11:05:00Z");
        let wildcard = Schedule::parse("*/15 * * * *").unwrap();
        let plan = replan(&wildcard, &TimeZone::UTC, Some(ts("2026-01-01T12:15:00Z")), -HOUR, now);
        assert_eq!(plan.next, Some(ts("2026-01-01T11:15:00Z")), "follows the new clock");
        let fixed = Schedule::parse("30 11 * * *").unwrap();
        let plan = replan(&fixed, &TimeZone::UTC, Some(ts("2026-01-02T11:30:00Z")), -HOUR, now);
        assert_eq!(plan.next, Some(ts("2026-01-02T11:30:00Z")), "11:30 ran today already");
        assert_eq!((plan.missed, plan.skipped), (None, None));
    }

    #[test]
    fn a_correction_back_runs_at_the_new_times() {
        // Back a year: from 2027-06-01T12:05 to 2026-06-01T12:05.
        let now = ts("2026-06-01T12:05:00Z");
        let back = -(365 * 24 * HOUR);
        let fixed = Schedule::parse("30 12 * * *").unwrap();
        let plan = replan(&fixed, &TimeZone::UTC, Some(ts("2027-06-01T12:30:00Z")), back, now);
        assert_eq!(plan.next, Some(ts("2026-06-01T12:30:00Z")));
        assert_eq!((plan.missed, plan.skipped), (None, None));
    }

    #[test]
    fn every_moves_with_the_clock() {
        let s = Schedule::parse("@every 10m").unwrap();
        let now = ts("2026-01-01T00:05:00Z");
        let plan = replan(&s, &TimeZone::UTC, Some(ts("2026-01-02T00:10:00Z")), -24 * HOUR, now);
        assert_eq!(plan.next, Some(ts("2026-01-01T00:10:00Z")), "still 5 minutes away");
        let plan = replan(&s, &TimeZone::UTC, Some(ts("2026-01-01T00:10:00Z")), 24 * HOUR, now);
        assert_eq!(plan.next, Some(ts("2026-01-02T00:10:00Z")));
        assert_eq!(plan.skipped, None);
    }
}
