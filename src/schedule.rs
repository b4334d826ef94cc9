//! Schedules: when a task fires, with the semantics cron users expect.
//!
//! A schedule is a 5-field cron expression, a macro (`@daily`, ...), `@every <duration>`,
//! or `manual` (never fires; only `backupnizza trigger` runs the task).
//! Cron expressions follow Vixie cron / cronie (see `docs/configuration.md#schedule`):
//!
//! - 0 and 7 are Sunday; month and weekday names are accepted in any case;
//! - day-of-month and day-of-week are ORed when both are restricted, and ANDed when either
//!   field starts with `*` (so `0 0 1-7 * */7` is the first Sunday of the month);
//! - time zones and DST as cronie handles them: a *fixed-time* job (no `*` at the start of
//!   the minute or hour field) whose time falls in a spring-forward gap fires once, right
//!   after the gap, and once (the first time) in a fall-back overlap; a *wildcard* job follows
//!   the wall clock (nothing in the gap, both passes of the overlap);
//! - a change of the zone's offset by more than three hours (a zone moving across the date
//!   line) is a correction, as cron.8 says: nothing runs for the skipped times, and no job
//!   runs the repeated times a second time.
//!
//! The whole engine is [`Schedule::next_after`]; it does no IO and never reads the clock.
//! We do not use the `cron` crate (Quartz numbering, 6-7 fields, ANDed day fields, wrong DST
//! behaviour) nor `croner` (ORs `*/n` weekday fields): matching is simple, and owning it lets
//! the tests prove it against a brute-force oracle.
//!
//! [`timetable`] holds the daemon's side: the heap of next fire instants, and what to do
//! with an occurrence that comes due (on time, caught up once, or too late) or with the
//! timetable when the wall clock is changed; [`clock`] reads the clocks and tells a suspend
//! from a clock change.

pub(crate) mod clock;
pub(crate) mod timetable;

use std::fmt;
use std::time::Duration;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ToSpan};

/// A parsed schedule. Cheap to clone; pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cron(Cron),
    /// Fires every interval, counted from whatever instant the caller anchors it to
    /// (the daemon's start).
    Every(Duration),
    /// `manual`: never fires by itself; `backupnizza trigger` runs it (restores, `init`,
    /// `unlock`).
    Manual,
}

/// The five fields of a cron expression as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    /// Vixie's rule: the day fields are ANDed when either starts with `*`, else ORed.
    days_and: bool,
    /// No `*` at the start of the minute or hour field: cronie's DST rules for fixed times apply.
    fixed_time: bool,
}

/// Why a schedule expression was refused. Messages name the field and say why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "empty schedule: write a cron expression such as \"0 3 * * *\", a macro such as @daily, or \"@every 90s\""
    )]
    Empty,
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), found {found}{}",
        if *found > 5 { ": seconds and years are not supported" } else { "" }
    )]
    FieldCount { found: usize },
    #[error("{field} field {text:?}: {reason}")]
    Field { field: Field, text: String, reason: String },
    #[error(
        "@reboot is not supported: backupnizza reads its task file once at start; run the task with `backupnizza trigger` from your login or boot scripts instead"
    )]
    Reboot,
    #[error(
        "unknown macro {0:?}: use @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually) or @every <duration>"
    )]
    UnknownMacro(String),
    #[error("@every: {0}")]
    Every(String),
    #[error(
        "character {character:?} (U+{:04X}) at column {column} is not part of a schedule: fields are separated by spaces or tabs, and use ASCII only",
        u32::from(*character)
    )]
    Character { character: char, column: usize },
    #[error(
        "can never fire: the day-of-month field ({days}) never occurs in the month field ({months}), whose longest month has {longest} days"
    )]
    NeverFires { days: String, months: String, longest: u32 },
}

/// One of the five cron fields, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

impl Field {
    /// Inclusive bounds as written (day-of-week accepts 7 for Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            Field::DayOfWeek => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    /// The value of the first name in `names()`.
    fn first_name_value(self) -> u32 {
        u32::from(self == Field::Month)
    }
}

const FIELDS: [Field; 5] =
    [Field::Minute, Field::Hour, Field::DayOfMonth, Field::Month, Field::DayOfWeek];

/// Longest span [`Schedule::next_after`] searches: a full Gregorian weekday cycle plus a
/// margin, so `0 0 29 2 */7` (29 February when it is a Sunday) is still found.
const SEARCH_YEARS: i16 = 30;

/// Days in each month (1-based) in the longest year.
const LONGEST_MONTH: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Schedule {
    /// Parses a schedule expression.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        // Like cronie and croniter: spaces and tabs separate fields, and nothing else is
        // blank, leading and trailing included (a no-break space pasted after `0 0 * * *`
        // is an error, not a boundary). Other ASCII is the fields' business.
        if let Some((column, character)) =
            text.chars().enumerate().find(|(_, c)| !c.is_ascii_graphic() && *c != ' ' && *c != '\t')
        {
            return Err(ScheduleError::Character { character, column: column + 1 });
        }
        let source = text.trim_matches([' ', '\t']);
        if source.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = if source.eq_ignore_ascii_case("manual") {
            Kind::Manual
        } else if let Some(rest) = source.strip_prefix('@') {
            let (word, arg) = match rest.split_once([' ', '\t']) {
                Some((word, arg)) => (word, arg.trim_matches([' ', '\t'])),
                None => (rest, ""),
            };
            let word = word.to_ascii_lowercase();
            let expansion = match word.as_str() {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                "reboot" => return Err(ScheduleError::Reboot),
                "every" => return parse_every(source, arg),
                _ => return Err(ScheduleError::UnknownMacro(source.to_string())),
            };
            if !arg.is_empty() {
                return Err(ScheduleError::UnknownMacro(source.to_string()));
            }
            Kind::Cron(Cron::parse(expansion)?)
        } else {
            Kind::Cron(Cron::parse(source)?)
        };
        Ok(Schedule { source: source.to_string(), kind })
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// For `@every` schedules, the interval.
    pub fn interval(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every(d) => Some(d),
            Kind::Cron(_) | Kind::Manual => None,
        }
    }

    /// Whether this is `manual`: the task runs only when triggered.
    pub fn is_manual(&self) -> bool {
        matches!(self.kind, Kind::Manual)
    }

    /// Whether cronie's fixed-time rules apply: a cron expression with no `*` at the start
    /// of its minute or hour field (not `@every`, `@hourly`).
    pub(crate) fn is_fixed_time(&self) -> bool {
        match &self.kind {
            Kind::Cron(cron) => cron.fixed_time,
            Kind::Every(_) | Kind::Manual => false,
        }
    }

    /// The first instant strictly after `after` at which the schedule fires, evaluated in
    /// `tz`. `@every` schedules return `after + interval`: the caller anchors them.
    /// `None` when nothing fires within the next 30 years, and always for `manual`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match &self.kind {
            Kind::Manual => None,
            Kind::Every(interval) => {
                let step = SignedDuration::try_from(*interval).ok()?;
                after.checked_add(step).ok()
            }
            Kind::Cron(cron) => cron.next_after(after, tz),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_every(source: &str, arg: &str) -> Result<Schedule, ScheduleError> {
    if arg.is_empty() {
        return Err(ScheduleError::Every(
            "missing interval: write e.g. \"@every 90s\" or \"@every 1h30m\"".into(),
        ));
    }
    let interval = crate::time::parse(arg).map_err(|e| ScheduleError::Every(e.to_string()))?;
    if interval < Duration::from_secs(1) {
        return Err(ScheduleError::Every(format!(
            "interval {arg:?} is shorter than the minimum of 1s"
        )));
    }
    Ok(Schedule { source: source.to_string(), kind: Kind::Every(interval) })
}

impl Cron {
    fn parse(text: &str) -> Result<Cron, ScheduleError> {
        // Spaces and tabs only, as cronie splits: any other whitespace is part of a field,
        // and then an error there, rather than a field boundary cron would not see.
        let parts: Vec<&str> = text.split([' ', '\t']).filter(|p| !p.is_empty()).collect();
        if parts.len() != 5 {
            return Err(ScheduleError::FieldCount { found: parts.len() });
        }
        let mut sets = [0u64; 5];
        for ((set, field), part) in sets.iter_mut().zip(FIELDS).zip(&parts) {
            *set = parse_field(field, part)?;
        }
        // Day-of-week 7 is Sunday, like 0.
        let weekdays = ((sets[4] & 0x7f) | (sets[4] >> 7)) as u8;
        let starts_with_star = |i: usize| parts[i].starts_with('*');
        let cron = Cron {
            minutes: sets[0],
            hours: sets[1] as u32,
            days: sets[2] as u32,
            months: sets[3] as u16,
            weekdays,
            days_and: starts_with_star(2) || starts_with_star(4),
            fixed_time: !(starts_with_star(0) || starts_with_star(1)),
        };
        if cron.days_and && !cron.some_day_exists() {
            return Err(ScheduleError::NeverFires {
                days: parts[2].to_string(),
                months: parts[3].to_string(),
                longest: (1..=12)
                    .filter(|m| cron.months & (1 << m) != 0)
                    .map(|m| LONGEST_MONTH[m])
                    .max()
                    .unwrap_or(0),
            });
        }
        Ok(cron)
    }

    /// Whether some (month, day) pair of the fields exists in the calendar (29 February
    /// counts: it comes every four years). With the day fields ANDed and such a pair, the
    /// day-of-week also matches some year, since every date falls on every weekday within
    /// a 28-year cycle.
    fn some_day_exists(&self) -> bool {
        (1..=12).any(|month| {
            self.months & (1 << month) != 0
                && self.days & (((1u64 << (LONGEST_MONTH[month] + 1)) - 2) as u32) != 0
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_and { day && weekday } else { day || weekday }
    }

    /// The first civil minute at or after `from` that matches all fields, up to `limit`.
    fn next_civil(&self, from: DateTime, limit: Date) -> Option<DateTime> {
        let mut date = from.date();
        let (mut hour, mut minute) = (from.hour() as u32, from.minute() as u32);
        while date <= limit {
            if self.months & (1 << date.month()) == 0 {
                date = date.last_of_month().tomorrow().ok()?;
                (hour, minute) = (0, 0);
                continue;
            }
            if self.day_matches(date) {
                while let Some(h) = first_bit_from(u64::from(self.hours), hour) {
                    let from_minute = if h == hour { minute } else { 0 };
                    if let Some(m) = first_bit_from(self.minutes, from_minute) {
                        return Some(date.at(h as i8, m as i8, 0, 0));
                    }
                    (hour, minute) = (h + 1, 0);
                }
            }
            date = date.tomorrow().ok()?;
            (hour, minute) = (0, 0);
        }
        None
    }

    fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let limit = local.date().checked_add(SEARCH_YEARS.years()).ok()?;
        let mut start = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;

        // In the first pass of a fall-back overlap, civil order is not instant order: the
        // rest of the first pass comes first, then (for wildcard jobs) the whole second pass,
        // whose civil times may be earlier than `local`.
        if let AmbiguousOffset::Fold { before, after: later } =
            tz.to_ambiguous_timestamp(local).offset()
            && tz.to_offset(after) == before
        {
            let correction = is_correction(before, later);
            let transition = tz.following(after).next()?.timestamp();
            let fold_start = later.to_datetime(transition);
            let fold_end = before.to_datetime(transition);
            if let Some(civil) = self.next_civil(start, limit).filter(|c| *c < fold_end) {
                return before.to_timestamp(civil).ok();
            }
            if !self.fixed_time
                && !correction
                && let Some(civil) = self.next_civil(fold_start, limit).filter(|c| *c < fold_end)
            {
                return later.to_timestamp(civil).ok();
            }
            start = start.max(fold_end);
        }

        while let Some(civil) = self.next_civil(start, limit) {
            match tz.to_ambiguous_timestamp(civil).offset() {
                AmbiguousOffset::Unambiguous { offset } => {
                    let at = offset.to_timestamp(civil).ok()?;
                    if at > after {
                        return Some(at);
                    }
                }
                AmbiguousOffset::Fold { before, after: later } => {
                    let first = before.to_timestamp(civil).ok()?;
                    if first > after {
                        return Some(first);
                    }
                    let second = later.to_timestamp(civil).ok()?;
                    if !self.fixed_time && !is_correction(before, later) && second > after {
                        return Some(second);
                    }
                }
                AmbiguousOffset::Gap { before, after: later } => {
                    // A change of more than three hours is a correction to cronie (the
                    // zone moved across the date line): the lost times do not run at all.
                    if self.fixed_time && !is_correction(before, later) {
                        // `civil` read with the offset after the gap is an instant before the
                        // transition, so the next transition is the end of this gap.
                        let probe = later.to_timestamp(civil).ok()?;
                        let gap_end = tz.following(probe).next()?.timestamp();
                        if gap_end > after {
                            return Some(gap_end);
                        }
                    }
                }
            }
            start = civil.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// Whether a change of the zone's offset from `before` to `after` is one cron treats as a
/// correction (cron.8: "Time changes of more than 3 hours are considered to be
/// corrections"), not a DST change: jobs in the times it skips, or for the second pass of
/// the times it repeats, do not run.
fn is_correction(before: jiff::tz::Offset, after: jiff::tz::Offset) -> bool {
    (after.seconds() - before.seconds()).abs() > 3 * 3600
}

/// The lowest set bit of `bits` at position `from` or above.
fn first_bit_from(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = bits >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

fn parse_field(field: Field, text: &str) -> Result<u64, ScheduleError> {
    let fail = |reason: String| ScheduleError::Field { field, text: text.to_string(), reason };
    let (min, max) = field.bounds();
    let mut set = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(fail("empty list item (two commas, or a comma at the end)".into()));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = digits(step)
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| fail(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(fail("step must be at least 1".into()));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (min, if field == Field::DayOfWeek { 6 } else { max })
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, mut b) = (value(field, a).map_err(fail)?, value(field, b).map_err(fail)?);
            // A weekday range that ends on Sunday as 0 (`mon-sun`, `5-0`) ends on 7, as in
            // cronie.
            if field == Field::DayOfWeek && b == 0 && a > 0 {
                b = 7;
            }
            if a > b {
                let hint = if field == Field::DayOfWeek {
                    " (ranges cannot wrap past Sunday; write e.g. sat,mon or 6-7,1)"
                } else {
                    " (ranges cannot wrap around)"
                };
                return Err(fail(format!("range {range:?} starts after it ends{hint}")));
            }
            (a, b)
        } else {
            let a = value(field, range).map_err(fail)?;
            // cronie rejects a step after a lone number (`5/5`); some crons read it as
            // `5-max/5`. Rejected here too, with the spelling that means the latter.
            if let Some(n) = step {
                return Err(fail(format!(
                    "a step needs a range or * before it: write {a}-{max}/{n} (or */{n})"
                )));
            }
            (a, a)
        };
        let step = step.unwrap_or(1);
        let mut v = start;
        while v <= end {
            set |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok(set)
}

fn value(field: Field, text: &str) -> Result<u32, String> {
    let (min, max) = field.bounds();
    if text.is_empty() {
        return Err("missing number in range".into());
    }
    // Plain digits, as cronie reads them: `parse` alone would take a leading `+`.
    if let Some(n) = digits(text).and_then(|d| d.parse::<u32>().ok()) {
        return if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is out of range {min}-{max}"))
        };
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names().iter().position(|name| *name == lower) {
        return Ok(i as u32 + field.first_name_value());
    }
    Err(match field {
        Field::Month => format!("{text:?} is neither a number 1-12 nor a month name (jan-dec)"),
        Field::DayOfWeek => format!("{text:?} is neither a number 0-7 nor a day name (sun-sat)"),
        _ => format!("{text:?} is not a number in {min}-{max}"),
    })
}

/// `text` if it is one or more ASCII digits.
fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

#[cfg(test)]
mod tests;
