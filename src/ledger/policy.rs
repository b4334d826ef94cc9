//! restic's keep policy (`restic forget --keep-*`), applied to a group of snapshots the way
//! restic applies it, so that an audit can tell a snapshot that a prune elsewhere removed
//! (the policy would have removed it) from one that somebody deleted (it would have kept
//! it).
//!
//! restic's rule: the snapshots newest first; `within` keeps every snapshot newer than the
//! newest one (not now) minus the duration, on the calendar; each count (`last`, `hourly`,
//! `daily`, `weekly` by ISO week, `monthly`, `yearly`) keeps a snapshot whose hour, day,
//! week, month or year differs from the one it kept last, until the count is used up
//! (`unlimited`: never). Calendar fields are read in each snapshot's own UTC offset, as
//! restic reads them. restic 0.16 added one more rule (a count not used up also keeps the
//! oldest snapshot); this module follows restic 0.14, which keeps that snapshot less
//! often, so a prune by either version is explained, and the one deletion it lets pass is
//! of the oldest snapshot of a group that was short of its counts. Month arithmetic for
//! `within` clamps to the month's end (restic's Go overflows into the next month); the two
//! differ only within three days of a month's end.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp};

use crate::config::Keep;

/// A snapshot's time as restic's policy reads it: the instant, and the calendar in the
/// offset the time was written with.
#[derive(Debug, Clone, Copy)]
pub(super) struct When {
    at: Timestamp,
    offset: Offset,
}

impl When {
    /// Reads an RFC 3339 time (restic's `2026-12-01T10:00:00.5+01:00`, or `...Z`).
    pub(super) fn parse(text: &str) -> Option<When> {
        let at: Timestamp = text.parse().ok()?;
        let offset = if text.ends_with(['Z', 'z']) {
            Offset::UTC
        } else {
            let (sign, hm) = text.get(text.len().checked_sub(6)?..)?.split_at(1);
            let (h, m) = hm.split_once(':')?;
            let seconds = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
            Offset::from_seconds(if sign == "-" { -seconds } else { seconds }).ok()?
        };
        Some(When { at, offset })
    }

    fn civil(self) -> DateTime {
        TimeZone::fixed(self.offset).to_datetime(self.at)
    }
}

/// Which bucket a snapshot falls in, from its calendar time and its place (newest first).
type Bucket = fn(DateTime, usize) -> i64;

/// The policy's buckets in restic's order, each with its count.
fn buckets(keep: &Keep) -> [(Option<u32>, Bucket); 6] {
    fn always(_: DateTime, nr: usize) -> i64 {
        nr as i64
    }
    fn hour(d: DateTime, _: usize) -> i64 {
        day(d, 0) * 100 + i64::from(d.hour())
    }
    fn day(d: DateTime, _: usize) -> i64 {
        month(d, 0) * 100 + i64::from(d.day())
    }
    fn week(d: DateTime, _: usize) -> i64 {
        let w = d.date().iso_week_date();
        i64::from(w.year()) * 100 + i64::from(w.week())
    }
    fn month(d: DateTime, _: usize) -> i64 {
        year(d, 0) * 100 + i64::from(d.month())
    }
    fn year(d: DateTime, _: usize) -> i64 {
        i64::from(d.year())
    }
    [
        (keep.last, always),
        (keep.hourly, hour),
        (keep.daily, day),
        (keep.weekly, week),
        (keep.monthly, month),
        (keep.yearly, year),
    ]
}

/// Which of `times` (one group's snapshots, in any order) the policy keeps, by index.
pub(super) fn kept(keep: &Keep, times: &[When], now: Timestamp) -> Vec<bool> {
    // A policy that keeps nothing is no policy (restic refuses it): it explains nothing.
    let counts = [keep.last, keep.hourly, keep.daily, keep.weekly, keep.monthly, keep.yearly];
    if keep.within.is_none() && counts.iter().all(|c| c.unwrap_or(0) == 0) {
        return vec![true; times.len()];
    }
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].at.cmp(&times[*a].at));
    // restic measures `within` from the newest snapshot not in the future.
    let latest =
        order.iter().map(|i| times[*i]).find(|t| t.at <= now).or(order.first().map(|i| times[*i]));
    let within_from = match (keep.within, latest) {
        (Some(w), Some(latest)) => {
            // Beyond jiff's range (`within: 20000y`): everything is within, as in restic.
            let zoned = latest.at.to_zoned(TimeZone::fixed(latest.offset));
            let span = Span::new().try_years(w.years).and_then(|s| s.try_months(w.months));
            let span = span.and_then(|s| s.try_days(w.days));
            let hours = SignedDuration::try_from_hours(w.hours);
            Some(
                span.ok()
                    .and_then(|span| zoned.checked_sub(span).ok())
                    .zip(hours)
                    .and_then(|(z, h)| z.timestamp().checked_sub(h).ok())
                    .unwrap_or(Timestamp::MIN),
            )
        }
        _ => None,
    };
    let mut counts = buckets(keep).map(|(count, bucket)| (count.unwrap_or(0), bucket, None));
    let mut kept = vec![false; times.len()];
    for (nr, &i) in order.iter().enumerate() {
        let t = times[i];
        let mut keep_it = within_from.is_some_and(|from| t.at > from);
        for (count, bucket, last) in &mut counts {
            if *count == 0 {
                continue;
            }
            let value = bucket(t.civil(), nr);
            if *last != Some(value) {
                keep_it = true;
                *last = Some(value);
                if *count != u32::MAX {
                    *count -= 1;
                }
            }
        }
        kept[i] = keep_it;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Within;

    fn when(s: &str) -> When {
        When::parse(s).unwrap()
    }

    fn run(keep: Keep, times: &[&str]) -> Vec<bool> {
        let times: Vec<When> = times.iter().map(|t| when(t)).collect();
        kept(&keep, &times, "2030-01-01T00:00:00Z".parse().unwrap())
    }

    #[test]
    fn last_keeps_the_newest_whatever_the_order() {
        let keep = Keep { last: Some(2), ..Keep::default() };
        let times = ["2026-12-01T10:00:00Z", "2026-12-03T10:00:00Z", "2026-12-02T10:00:00Z"];
        assert_eq!(run(keep, &times), [false, true, true]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_in_the_snapshots_own_offset() {
        let keep = Keep { daily: Some(2), ..Keep::default() };
        // 23:30 at +02:00 is the 1st there (21:30 UTC); 00:30 at +02:00 is the 2nd.
        let times = [
            "2026-12-01T23:30:00+02:00",
            "2026-12-02T00:30:00+02:00",
            "2026-12-02T08:00:00+02:00",
            "2026-11-30T08:00:00+02:00",
        ];
        assert_eq!(run(keep, &times), [true, false, true, false]);
    }

    #[test]
    fn weekly_uses_iso_weeks_and_unlimited_never_runs_out() {
        let keep = Keep { weekly: Some(u32::MAX), ..Keep::default() };
        // 2026-12-27 is a Sunday (week 52), 2026-12-28 a Monday (week 53), 2027-01-03 a
        // Sunday in the same ISO week 53 of 2026.
        let times = ["2026-12-27T10:00:00Z", "2026-12-28T10:00:00Z", "2027-01-03T10:00:00Z"];
        assert_eq!(run(keep, &times), [true, false, true]);
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot_not_from_now() {
        let within = Within { days: 2, ..Within::default() };
        let keep = Keep { within: Some(within), ..Keep::default() };
        let times = ["2020-01-10T00:00:00Z", "2020-01-08T00:00:01Z", "2020-01-08T00:00:00Z"];
        assert_eq!(run(keep, &times), [true, true, false]);
    }

    #[test]
    fn a_policy_that_keeps_nothing_explains_nothing_and_a_huge_within_keeps_all() {
        let times = ["2026-12-01T10:00:00Z", "2026-12-03T10:00:00Z"];
        let zero = Keep { last: Some(0), daily: Some(0), ..Keep::default() };
        assert_eq!(run(zero, &times), [true, true]);
        let huge = Within { years: 20_000, hours: i64::MAX, ..Within::default() };
        assert_eq!(run(Keep { within: Some(huge), ..Keep::default() }, &times), [true, true]);
    }

    #[test]
    fn counts_combine_and_a_snapshot_kept_by_any_is_kept() {
        let keep = Keep { last: Some(1), monthly: Some(2), ..Keep::default() };
        let times = [
            "2026-10-15T10:00:00Z",
            "2026-11-20T10:00:00Z",
            "2026-11-25T10:00:00Z",
            "2026-12-01T10:00:00Z",
        ];
        assert_eq!(run(keep, &times), [false, false, true, true]);
    }
}
