//! Tests for the schedule engine: parsing, the cron rules by name, cronie's DST rules in three
//! zones, and a property test against a brute-force, minute-by-minute oracle.

use super::*;
use jiff::Zoned;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap()
}

fn at(text: &str) -> Timestamp {
    text.parse::<Zoned>()
        .map(|z| z.timestamp())
        .or_else(|_| text.parse::<Timestamp>())
        .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
}

/// The next `n` fire times as RFC 3339 strings with offsets, as `backupnizza next` prints them.
fn next_n(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let schedule = Schedule::parse(expr).unwrap();
    let zone = tz(zone);
    let mut t = at(after);
    let mut out = Vec::new();
    for _ in 0..n {
        t = schedule.next_after(t, &zone).unwrap();
        out.push(t.to_zoned(zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
    }
    out
}

// ---- parsing -------------------------------------------------------------------------

#[test]
fn parse_errors_name_the_field_and_the_reason() {
    let cases = [
        ("61 3 * * *", "minute field \"61\": 61 is out of range 0-59"),
        ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field \"0\": 0 is out of range 1-31"),
        ("0 0 * 13 *", "month field \"13\": 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field \"8\": 8 is out of range 0-7"),
        ("0 0 * foo *", "month field \"foo\": \"foo\" is neither a number 1-12 nor a month name"),
        ("0 0 * * funday", "day-of-week field \"funday\""),
        ("*/0 * * * *", "minute field \"*/0\": step must be at least 1"),
        ("1/99999999999 * * * *", "step \"99999999999\" is not a number"),
        ("5-3 * * * *", "range \"5-3\" starts after it ends"),
        ("0 0 * * sat-mon", "cannot wrap past Sunday"),
        ("1,,2 * * * *", "empty list item"),
        ("0 3 * *", "expected 5 fields"),
        ("0 0 3 * * *", "seconds and years are not supported"),
        ("@reboot", "@reboot is not supported"),
        ("@fortnightly", "unknown macro"),
        ("@every", "missing interval"),
        ("@every 0s", "shorter than the minimum"),
        ("@every 10", "no unit"),
        ("0 0 30 2 *", "can never fire"),
        ("0 0 31 4,6,9,11 *", "can never fire"),
        ("", "empty schedule"),
    ];
    for (expr, want) in cases {
        let err = Schedule::parse(expr).expect_err(expr).to_string();
        assert!(err.contains(want), "{expr:?}: got {err:?}, want {want:?}");
    }
}

#[test]
fn huge_steps_do_not_overflow() {
    // Regression: `v += step` overflowed for steps near u32::MAX.
    assert_eq!(
        next_n("1-59/4294967295 * * * *", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-01T00:01:00+00:00", "2026-01-01T01:01:00+00:00"]
    );
}

#[test]
fn names_macros_and_sunday_seven() {
    let after = "2026-01-01T00:00:00Z";
    assert_eq!(next_n("0 12 * * SUN", "UTC", after, 2), next_n("0 12 * * 7", "UTC", after, 2));
    assert_eq!(
        next_n("0 12 * * 0", "UTC", after, 2),
        ["2026-01-04T12:00:00+00:00", "2026-01-11T12:00:00+00:00"]
    );
    assert_eq!(
        next_n("0 0 1 Feb-mar *", "UTC", after, 2),
        ["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]
    );
    assert_eq!(next_n("@daily", "UTC", after, 1), ["2026-01-02T00:00:00+00:00"]);
    assert_eq!(next_n("@midnight", "UTC", after, 1), next_n("@daily", "UTC", after, 1));
    assert_eq!(next_n("@hourly", "UTC", after, 1), ["2026-01-01T01:00:00+00:00"]);
    assert_eq!(next_n("@weekly", "UTC", after, 1), ["2026-01-04T00:00:00+00:00"]);
    assert_eq!(next_n("@monthly", "UTC", after, 1), ["2026-02-01T00:00:00+00:00"]);
    assert_eq!(next_n("@annually", "UTC", after, 1), ["2027-01-01T00:00:00+00:00"]);
    assert_eq!(next_n("@yearly", "UTC", after, 1), next_n("@annually", "UTC", after, 1));
    // Steps over ranges.
    assert_eq!(
        next_n("10-20/5 0 * * *", "UTC", after, 3),
        ["2026-01-01T00:10:00+00:00", "2026-01-01T00:15:00+00:00", "2026-01-01T00:20:00+00:00"]
    );
    assert_eq!(
        next_n("50-59/5 0 * * *", "UTC", after, 3),
        ["2026-01-01T00:50:00+00:00", "2026-01-01T00:55:00+00:00", "2026-01-02T00:50:00+00:00"]
    );
}

#[test]
fn manual_never_fires_and_is_not_an_interval() {
    let tz = TimeZone::UTC;
    for text in ["manual", "MANUAL", " manual "] {
        let s = Schedule::parse(text).unwrap();
        assert!(s.is_manual(), "{text:?}");
        assert_eq!(s.next_after("2026-01-01T00:00:00Z".parse().unwrap(), &tz), None);
        assert_eq!(s.interval(), None);
        assert!(!s.is_fixed_time());
    }
    assert!(Schedule::parse("manually").is_err());
    assert!(!Schedule::parse("@daily").unwrap().is_manual());
}

// ---- cronie's edge rules (entry.c), one test each ------------------------------------

#[test]
fn cronie_rule_a_step_after_a_lone_number_is_an_error_with_the_range_to_write() {
    let err = Schedule::parse("5/5 * * * *").unwrap_err().to_string();
    assert!(err.contains("minute field \"5/5\""), "{err}");
    assert!(err.contains("write 5-59/5"), "{err}");
    let err = Schedule::parse("0 1/2 * * *").unwrap_err().to_string();
    assert!(err.contains("write 1-23/2"), "{err}");
    assert!(Schedule::parse("5-59/5 * * * *").is_ok());
    assert!(Schedule::parse("*/5 * * * *").is_ok());
}

#[test]
fn cronie_rule_a_weekday_range_ending_in_0_or_sun_ends_on_sunday_as_7() {
    let after = "2026-01-01T00:00:00Z"; // a Thursday
    let week = next_n("0 12 * * *", "UTC", after, 7);
    assert_eq!(next_n("0 12 * * mon-sun", "UTC", after, 7), week);
    assert_eq!(next_n("0 12 * * 1-0", "UTC", after, 7), week);
    // `5-0` is Friday to Sunday: Fri 2, Sat 3, Sun 4, then Fri 9.
    assert_eq!(
        next_n("0 12 * * 5-0", "UTC", after, 4),
        [
            "2026-01-02T12:00:00+00:00",
            "2026-01-03T12:00:00+00:00",
            "2026-01-04T12:00:00+00:00",
            "2026-01-09T12:00:00+00:00"
        ]
    );
    assert_eq!(
        next_n("0 12 * * sat-sun", "UTC", after, 2),
        next_n("0 12 * * 6,0", "UTC", after, 2)
    );
}

#[test]
fn cronie_rule_fields_are_split_on_spaces_and_tabs_only() {
    assert!(Schedule::parse("0\t3 * *\t*").is_ok());
    assert!(Schedule::parse("0  3   * * *").is_ok());
    for other in ["\u{a0}", "\u{2003}", "\u{3000}"] {
        let text = format!("0{other}3 * * * *");
        // Not a field boundary: an error that names the character's column.
        let err = Schedule::parse(&text).unwrap_err().to_string();
        assert!(err.contains("at column 2"), "{text:?}: {err}");
    }
}

#[test]
fn cronie_rule_numbers_are_plain_digits_without_a_sign() {
    for expr in ["+5 * * * *", "0 +3 * * *", "*/+5 * * * *", "0 0 * * +1", "0 0 1-+5 * *"] {
        assert!(Schedule::parse(expr).is_err(), "{expr:?} was accepted");
    }
    assert!(Schedule::parse("05 03 * * *").is_ok(), "leading zeros are digits");
}

#[test]
fn day_of_month_or_day_of_week_when_both_restricted() {
    // `30 4 1,15 * 5`: the 1st, the 15th and every Friday. January 2026: Fri 2, 9, 16...
    assert_eq!(
        next_n("30 4 1,15 * 5", "UTC", "2026-01-01T05:00:00Z", 4),
        [
            "2026-01-02T04:30:00+00:00",
            "2026-01-09T04:30:00+00:00",
            "2026-01-15T04:30:00+00:00",
            "2026-01-16T04:30:00+00:00"
        ]
    );
    // Both restricted (no leading `*`): days 1-7 OR any Sunday.
    assert_eq!(
        next_n("0 0 1-7 * 0", "UTC", "2026-01-07T12:00:00Z", 2),
        ["2026-01-11T00:00:00+00:00", "2026-01-18T00:00:00+00:00"]
    );
}

#[test]
fn star_step_weekday_counts_as_unrestricted_so_day_fields_are_anded() {
    // `*/7` starts with `*`: days 1-7 AND Sunday = the first Sunday of the month.
    assert_eq!(
        next_n("0 0 1-7 * */7", "UTC", "2026-01-01T00:00:00Z", 3),
        ["2026-01-04T00:00:00+00:00", "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]
    );
    // A `*`-prefixed day-of-month ANDs too: odd days that are Mondays.
    assert_eq!(
        next_n("0 0 */2 * mon", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-05T00:00:00+00:00", "2026-01-19T00:00:00+00:00"]
    );
}

#[test]
fn rare_but_possible_schedules_are_found() {
    // 29 February that is also a Sunday (ANDed by the `*/7`): 2032.
    assert_eq!(
        next_n("0 0 29 2 */7", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2032-02-29T00:00:00+00:00"]
    );
    assert_eq!(
        next_n("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
    );
}

#[test]
fn every_is_relative_to_its_anchor() {
    let s = Schedule::parse("@every 90s").unwrap();
    assert_eq!(s.interval(), Some(Duration::from_secs(90)));
    let t = at("2026-01-01T00:00:10Z");
    assert_eq!(s.next_after(t, &TimeZone::UTC), Some(at("2026-01-01T00:01:40Z")));
}

// ---- cronie's DST rules, by name, in three zones -------------------------------------

#[test]
fn a_2_30_job_in_new_york_fires_right_after_the_spring_gap() {
    assert_eq!(
        next_n("30 2 * * *", "America/New_York", "2026-03-07T12:00:00-05:00", 2),
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    );
}

#[test]
fn dst_fixed_time_in_spring_gap_runs_once_right_after_it() {
    // New York 2026-03-08 02:00 EST -> 03:00 EDT.
    assert_eq!(
        next_n("30 2 * * *", "America/New_York", "2026-03-08T00:00:00-05:00", 2),
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    );
    // Several gap minutes of one job collapse into one run.
    assert_eq!(
        next_n("0,15,30,45 2 * * *", "America/New_York", "2026-03-08T00:00:00-05:00", 2),
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00"]
    );
    // Berlin 2026-03-29 02:00 CET -> 03:00 CEST.
    assert_eq!(
        next_n("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00+01:00", 2),
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    );
    // Lord Howe 2026-10-04 02:00 +10:30 -> 02:30 +11:00: a 30-minute gap.
    assert_eq!(
        next_n("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00+10:30", 2),
        ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]
    );
    // A fixed time just after the gap is not disturbed.
    assert_eq!(
        next_n("45 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00+10:30", 1),
        ["2026-10-04T02:45:00+11:00"]
    );
}

#[test]
fn dst_fixed_time_in_fall_back_overlap_runs_once_at_the_first_pass() {
    // New York 2026-11-01 02:00 EDT -> 01:00 EST.
    assert_eq!(
        next_n("30 1 * * *", "America/New_York", "2026-10-31T12:00:00-04:00", 2),
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    );
    // Asked from inside the second pass, it does not fire again that night.
    assert_eq!(
        next_n("30 1 * * *", "America/New_York", "2026-11-01T01:10:00-05:00", 1),
        ["2026-11-02T01:30:00-05:00"]
    );
    // Berlin 2026-10-25 03:00 CEST -> 02:00 CET.
    assert_eq!(
        next_n("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00+02:00", 2),
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    );
    // Lord Howe 2026-04-05 02:00 +11:00 -> 01:30 +10:30.
    assert_eq!(
        next_n("45 1 * * *", "Australia/Lord_Howe", "2026-04-04T12:00:00+11:00", 2),
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]
    );
}

#[test]
fn dst_wildcard_jobs_follow_the_wall_clock() {
    // Nothing in the gap: 01:00 EST, then 03:00 EDT.
    assert_eq!(
        next_n("0 * * * *", "America/New_York", "2026-03-08T00:30:00-05:00", 3),
        ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"]
    );
    // Both passes of the overlap.
    assert_eq!(
        next_n("0 * * * *", "America/New_York", "2026-11-01T00:30:00-04:00", 3),
        ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]
    );
    assert_eq!(
        next_n("30 * * * *", "Europe/Berlin", "2026-10-25T01:45:00+02:00", 3),
        ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"]
    );
    assert_eq!(
        next_n("30 * * * *", "Europe/Berlin", "2026-03-29T01:45:00+01:00", 2),
        ["2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]
    );
    // Lord Howe: the half-hour gap and the half-hour overlap.
    assert_eq!(
        next_n("*/15 2 * * *", "Australia/Lord_Howe", "2026-10-04T01:50:00+10:30", 3),
        ["2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00", "2026-10-05T02:00:00+11:00"]
    );
    assert_eq!(
        next_n("*/15 1 * * *", "Australia/Lord_Howe", "2026-04-05T01:20:00+11:00", 6),
        [
            "2026-04-05T01:30:00+11:00",
            "2026-04-05T01:45:00+11:00",
            "2026-04-05T01:30:00+10:30",
            "2026-04-05T01:45:00+10:30",
            "2026-04-06T01:00:00+10:30",
            "2026-04-06T01:15:00+10:30"
        ]
    );
}

#[test]
fn dst_change_is_not_a_skip_for_times_outside_the_change() {
    assert_eq!(
        next_n("0 3 * * *", "America/New_York", "2026-03-07T12:00:00-05:00", 2),
        ["2026-03-08T03:00:00-04:00", "2026-03-09T03:00:00-04:00"]
    );
    assert_eq!(
        next_n("0 0 * * *", "Australia/Lord_Howe", "2026-04-04T12:00:00+11:00", 2),
        ["2026-04-05T00:00:00+11:00", "2026-04-06T00:00:00+10:30"]
    );
}

// ---- the property test ---------------------------------------------------------------

/// What the generator meant an expression to be, kept apart from the parser under test.
struct Intended {
    text: String,
    /// minute, hour, day-of-month, month, day-of-week (0-6) membership.
    sets: [Vec<bool>; 5],
    days_and: bool,
    fixed_time: bool,
}

impl Intended {
    fn day_matches(&self, date: Date) -> bool {
        let dom = self.sets[2][date.day() as usize];
        let dow = self.sets[4][date.weekday().to_sunday_zero_offset() as usize];
        if self.days_and { dom && dow } else { dom || dow }
    }

    fn matches(&self, civil: DateTime) -> bool {
        self.sets[0][civil.minute() as usize]
            && self.sets[1][civil.hour() as usize]
            && self.sets[3][civil.month() as usize]
            && self.day_matches(civil.date())
    }

    fn can_fire(&self) -> bool {
        if !self.days_and {
            return true;
        }
        let longest = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12).any(|m| self.sets[3][m] && (1..=longest[m]).any(|d| self.sets[2][d]))
    }
}

/// Generates one field: its text and the set it denotes. `lo..=hi` are the written bounds.
fn gen_field(
    rng: &mut StdRng,
    lo: u32,
    hi: u32,
    star_weight: f64,
    names: &[&str],
    name_base: u32,
) -> (String, Vec<bool>) {
    let mut set = vec![false; hi as usize + 1];
    let render = |rng: &mut StdRng, v: u32| -> String {
        if !names.is_empty()
            && v >= name_base
            && ((v - name_base) as usize) < names.len()
            && rng.random_bool(0.3)
        {
            let name = names[(v - name_base) as usize];
            if rng.random_bool(0.5) { name.to_uppercase() } else { name.to_string() }
        } else {
            v.to_string()
        }
    };
    if rng.random_bool(star_weight) {
        if rng.random_bool(0.6) {
            set[lo as usize..].iter_mut().for_each(|b| *b = true);
            return ("*".into(), set);
        }
        let step = rng.random_range(2..=(hi - lo + 1).max(2));
        let top = if hi == 7 { 6 } else { hi };
        let mut v = lo;
        while v <= top {
            set[v as usize] = true;
            v += step;
        }
        return (format!("*/{step}"), set);
    }
    let items = rng.random_range(1..=3);
    let mut parts = Vec::new();
    for _ in 0..items {
        let a = rng.random_range(lo..=hi);
        match rng.random_range(0..4) {
            0 | 1 => {
                set[a as usize] = true;
                parts.push(render(rng, a));
            }
            2 => {
                let b = rng.random_range(a..=hi);
                (a..=b).for_each(|v| set[v as usize] = true);
                parts.push(format!("{}-{}", render(rng, a), render(rng, b)));
            }
            _ => {
                let b = rng.random_range(a..=hi);
                let step = rng.random_range(1..=6);
                (a..=b).step_by(step as usize).for_each(|v| set[v as usize] = true);
                parts.push(format!("{}-{}/{step}", render(rng, a), render(rng, b)));
            }
        }
    }
    (parts.join(","), set)
}

fn gen_expression(rng: &mut StdRng) -> Intended {
    const MONTHS: &[&str] =
        &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let (min_t, min_s) = gen_field(rng, 0, 59, 0.3, &[], 0);
    let (hour_t, hour_s) = gen_field(rng, 0, 23, 0.4, &[], 0);
    let (dom_t, dom_s) = gen_field(rng, 1, 31, 0.7, &[], 0);
    let (mon_t, mon_s) = gen_field(rng, 1, 12, 0.85, MONTHS, 1);
    let (dow_t, mut dow_s) = gen_field(rng, 0, 7, 0.6, DAYS, 0);
    if dow_s[7] {
        dow_s[0] = true;
    }
    dow_s.truncate(7);
    Intended {
        text: format!("{min_t} {hour_t} {dom_t} {mon_t} {dow_t}"),
        days_and: dom_t.starts_with('*') || dow_t.starts_with('*'),
        fixed_time: !(min_t.starts_with('*') || hour_t.starts_with('*')),
        sets: [min_s, hour_s, dom_s, mon_s, dow_s],
    }
}

/// The oracle: walks every UTC minute from `walk_from` to `until` and applies cronie's rules
/// directly to the wall clock it sees. It shares no code with the engine except jiff's
/// instant-to-civil conversion.
fn oracle_fires(
    e: &Intended,
    zone: &TimeZone,
    walk_from: Timestamp,
    until: Timestamp,
) -> Vec<Timestamp> {
    let mut fires = Vec::new();
    let mut t = walk_from;
    let mut prev = zone.to_datetime(t);
    let mut latest_seen = prev;
    loop {
        t = t.checked_add(SignedDuration::from_mins(1)).unwrap();
        if t > until {
            return fires;
        }
        let civil = zone.to_datetime(t);
        let expected_next = prev.checked_add(1.minute()).unwrap();
        // A jump forward: fixed-time jobs whose skipped minute matched run now, once.
        let mut skipped_match = false;
        if civil > expected_next && e.fixed_time {
            let mut c = expected_next;
            while c < civil {
                skipped_match |= e.matches(c);
                c = c.checked_add(1.minute()).unwrap();
            }
        }
        // A repeated wall-clock minute (the second pass of an overlap): fixed-time jobs skip it.
        let repeated = civil <= latest_seen;
        let fires_now = if e.fixed_time {
            skipped_match || (e.matches(civil) && !repeated)
        } else {
            e.matches(civil)
        };
        if fires_now {
            fires.push(t);
        }
        latest_seen = latest_seen.max(civil);
        prev = civil;
    }
}

/// Instants near each zone's 2026-2030 DST transitions, so random windows often cross one.
fn transitions(zone: &TimeZone) -> Vec<Timestamp> {
    zone.following(at("2026-01-01T00:00:00Z"))
        .take_while(|t| t.timestamp() < at("2031-01-01T00:00:00Z"))
        .map(|t| t.timestamp())
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "the generator of random expressions and the oracle, kept together"
)]
fn property_engine_agrees_with_brute_force_oracle() {
    let seed: u64 =
        std::env::var("SCHEDULE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0de);
    let cases: usize =
        std::env::var("SCHEDULE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut rng = StdRng::seed_from_u64(seed);
    let zones: Vec<(String, TimeZone)> =
        ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]
            .iter()
            .map(|n| (n.to_string(), tz(n)))
            .collect();
    let zone_transitions: Vec<Vec<Timestamp>> = zones.iter().map(|(_, z)| transitions(z)).collect();
    let window = SignedDuration::from_hours(4 * 24);
    let (mut checked_instants, mut fired, mut crossed_dst) = (0usize, 0usize, 0usize);
    for case in 0..cases {
        let expr = gen_expression(&mut rng);
        let parsed = Schedule::parse(&expr.text);
        if !expr.can_fire() {
            assert!(
                matches!(parsed, Err(ScheduleError::NeverFires { .. })),
                "seed {seed} case {case}: {:?} can never fire but parsed as {parsed:?}",
                expr.text
            );
            continue;
        }
        let schedule = parsed
            .unwrap_or_else(|e| panic!("seed {seed} case {case}: {:?} refused: {e}", expr.text));
        let zi = case % zones.len();
        let (zone_name, zone) = &zones[zi];
        // Half the windows start a little before a DST transition, half anywhere in 2026-2030.
        let start = if !zone_transitions[zi].is_empty() && rng.random_bool(0.5) {
            let tr = zone_transitions[zi][rng.random_range(0..zone_transitions[zi].len())];
            tr - SignedDuration::from_secs(rng.random_range(0..3 * 86_400))
        } else {
            at("2026-01-01T00:00:00Z")
                + SignedDuration::from_secs(rng.random_range(0..5 * 365 * 86_400))
        };
        let start = Timestamp::from_second(start.as_second() / 60 * 60).unwrap();
        let end = start + window;
        let crossing = zone_transitions[zi].iter().copied().find(|t| *t > start && *t <= end);
        if crossing.is_some() {
            crossed_dst += 1;
        }
        // The oracle walks from a day earlier so it has seen the wall clock before `start`.
        let fires: Vec<Timestamp> =
            oracle_fires(&expr, zone, start - SignedDuration::from_hours(24), end)
                .into_iter()
                .filter(|t| *t > start)
                .collect();
        fired += fires.len();
        let ctx =
            || format!("seed {seed} case {case}: {:?} in {zone_name} from {start}", expr.text);

        // The chain of next_after from the window start reproduces the oracle exactly.
        let mut t = start;
        for want in &fires {
            let got = schedule.next_after(t, zone);
            assert_eq!(got, Some(*want), "{} after {t}", ctx());
            t = *want;
            checked_instants += 1;
        }
        let beyond = schedule.next_after(t, zone);
        assert!(
            beyond.is_none_or(|b| b > end),
            "{}: engine fired at {beyond:?}, oracle did not",
            ctx()
        );

        // Arbitrary instants (with seconds) inside the window agree too.
        // Half of them near the DST change, where civil order and instant order differ.
        for i in 0..8 {
            let q = match crossing {
                Some(tr) if i % 2 == 0 => {
                    tr + SignedDuration::from_secs(rng.random_range(-5400..5400))
                }
                _ => start + SignedDuration::from_secs(rng.random_range(0..window.as_secs())),
            };
            if q <= start || q > end {
                continue;
            }
            let want = fires.iter().find(|f| **f > q).copied();
            let got = schedule.next_after(q, zone);
            match want {
                Some(w) => assert_eq!(got, Some(w), "{} query {q}", ctx()),
                None => assert!(got.is_none_or(|g| g > end), "{} query {q}: got {got:?}", ctx()),
            }
            checked_instants += 1;
        }
    }
    // The generator must actually exercise the engine, or this test proves nothing.
    assert!(fired > cases * 10, "only {fired} firings over {cases} cases");
    assert!(crossed_dst > cases / 4, "only {crossed_dst} windows crossed a DST change");
    assert!(checked_instants > cases * 10);
}

#[test]
fn cronie_rule_a_zone_change_of_more_than_three_hours_is_a_correction() {
    // Samoa moved across the date line: 2011-12-29 23:59:59 -10:00 was followed by
    // 2011-12-31 00:00:00 +14:00. A daily 03:00 job does not run for the lost day (a DST
    // gap would have run it right after the gap).
    assert_eq!(
        next_n("0 3 * * *", "Pacific/Apia", "2011-12-29T12:00:00-10:00", 2),
        ["2011-12-31T03:00:00+14:00", "2012-01-01T03:00:00+14:00"]
    );
    assert_eq!(
        next_n("0 23 * * *", "Pacific/Apia", "2011-12-29T12:00:00-10:00", 2),
        ["2011-12-29T23:00:00-10:00", "2011-12-31T23:00:00+14:00"]
    );
    // The other way (Apia, 1892: 4 July was lived twice): an hourly job does not run the
    // repeated day's hours again.
    let after_first_pass = next_n("0 * * * *", "Pacific/Apia", "1892-07-04T23:30:00+12:33:04", 1);
    assert_eq!(after_first_pass, ["1892-07-05T00:00:00-11:26:56"]);
}

/// Regression: a trailing no-break space (`0 0 * * *` and U+00A0, pasted from a web page)
/// was accepted, where cronie and croniter reject it. Only spaces and tabs separate fields;
/// any other blank or non-ASCII character is an error that names its column.
#[test]
fn a_no_break_space_or_other_non_ascii_character_is_an_error_naming_its_column() {
    let error = |text: &str| Schedule::parse(text).unwrap_err();
    assert_eq!(
        error("0 0 * * *\u{a0}"),
        ScheduleError::Character { character: '\u{a0}', column: 10 }
    );
    assert_eq!(
        error("\u{a0}0 0 * * *"),
        ScheduleError::Character { character: '\u{a0}', column: 1 }
    );
    // Elsewhere: a no-break space between fields, a non-ASCII digit, a line break.
    assert_eq!(
        error("0\u{a0}0 * * *"),
        ScheduleError::Character { character: '\u{a0}', column: 2 }
    );
    assert_eq!(error("0 ٣ * * *"), ScheduleError::Character { character: '٣', column: 3 });
    assert_eq!(error("0 0 * * *\n"), ScheduleError::Character { character: '\n', column: 10 });
    assert_eq!(
        error("@every\u{2003}1h"),
        ScheduleError::Character { character: '\u{2003}', column: 7 }
    );
    let message = error("0 0 * * *\u{a0}").to_string();
    assert!(message.contains("U+00A0") && message.contains("column 10"), "{message}");
    // Spaces and tabs, leading and trailing too, are fine.
    assert!(Schedule::parse(" \t0 0 * * *\t ").is_ok());
    assert!(Schedule::parse("@every\t90s").is_ok());
}
