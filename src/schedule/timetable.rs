//! The timetable: one timer over all tasks, and what to do with an occurrence that comes due.
//!
//! Next fire instants sit in one min-heap. The loop never sleeps longer than [`MAX_SLEEP`]:
//! monotonic sleeps stop while a machine is suspended, so it wakes in bounded steps, re-reads
//! the wall clock, and notices (and logs) a suspend or a clock change by comparing elapsed
//! wall time with elapsed monotonic time. [`decide`] is pure: given an occurrence and the
//! current time it says whether to run it (on time, or caught up once after a suspend or
//! downtime) or to skip it as too late, and when the task fires next.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::Schedule;

/// Longest single sleep of the loop.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(60);
/// An occurrence handled within this long of its instant is on time, not "caught up".
pub(crate) const ON_TIME: Duration = Duration::from_secs(30);
/// A difference between wall and monotonic time above this is reported as a jump.
pub(crate) const JUMP_THRESHOLD: Duration = Duration::from_secs(5);

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

    /// How long to sleep before the next entry is due, never more than [`MAX_SLEEP`].
    pub(crate) fn sleep_for(&self, now: Timestamp) -> Duration {
        match self.peek() {
            Some((at, _)) => {
                let d = at.duration_since(now);
                if d.is_negative() {
                    Duration::ZERO
                } else {
                    Duration::try_from(d).unwrap_or(MAX_SLEEP).min(MAX_SLEEP)
                }
            }
            None => MAX_SLEEP,
        }
    }
}

/// Notices wall-clock jumps between two readings of both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockWatch {
    wall: Timestamp,
    mono: std::time::Instant,
}

impl ClockWatch {
    pub(crate) fn new(wall: Timestamp, mono: std::time::Instant) -> ClockWatch {
        ClockWatch { wall, mono }
    }

    /// The wall-clock change not explained by monotonic time since the last reading
    /// (positive after a suspend or a forward clock change), if it exceeds the threshold.
    pub(crate) fn observe(
        &mut self,
        wall: Timestamp,
        mono: std::time::Instant,
    ) -> Option<SignedDuration> {
        let wall_elapsed = wall.duration_since(self.wall);
        let mono_elapsed =
            SignedDuration::try_from(mono.duration_since(self.mono)).unwrap_or(SignedDuration::MAX);
        let jump = wall_elapsed - mono_elapsed;
        self.wall = wall;
        self.mono = mono;
        (jump.unsigned_abs() > JUMP_THRESHOLD).then_some(jump)
    }
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
        assert_eq!(t.sleep_for(now), MAX_SLEEP);
        t.push(ts("2026-01-01T05:00:00Z"), 0);
        t.push(ts("2026-01-01T00:00:10Z"), 1);
        assert_eq!(t.sleep_for(now), Duration::from_secs(10));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.pop_due(ts("2026-01-01T00:00:10Z")), Some((ts("2026-01-01T00:00:10Z"), 1)));
        assert_eq!(t.sleep_for(now), MAX_SLEEP);
    }

    #[test]
    fn clock_watch_reports_suspends_and_changes() {
        let mono = std::time::Instant::now();
        let mut w = ClockWatch::new(ts("2026-01-01T00:00:00Z"), mono);
        assert_eq!(w.observe(ts("2026-01-01T00:01:00Z"), mono + Duration::from_secs(60)), None);
        let jump = w.observe(ts("2026-01-01T03:01:00Z"), mono + Duration::from_secs(120)).unwrap();
        assert_eq!(
            jump,
            SignedDuration::from_mins(179),
            "3h of wall time in 1min of monotonic time"
        );
        let back = w.observe(ts("2026-01-01T02:01:00Z"), mono + Duration::from_secs(120)).unwrap();
        assert_eq!(back, SignedDuration::from_hours(-1));
    }
}
