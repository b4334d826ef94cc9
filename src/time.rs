//! Time as the task file, the logs and the records write it: human durations (`90s`, `2m`,
//! `1h30m`, `500ms`, `1d`), parsed and shown, and instants as RFC 3339 in a zone.
//!
//! A duration is one or more `<integer><unit>` parts, largest unit first, with no spaces.
//! A bare number is refused on purpose: `timeout: 30` could mean seconds or minutes, and a
//! backup that is killed after 30 seconds instead of 30 minutes is a bad surprise.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Why a duration could not be parsed; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DurationError(String);

const UNITS: &[(&str, u64)] =
    &[("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a human duration such as `1h30m`.
pub(crate) fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError("empty duration: write e.g. 30s, 2m or 1h30m".into()));
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    let mut last_unit_ms = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError(format!(
                "invalid duration {text:?}: expected a number at {rest:?} (write e.g. 30s, 2m or 1h30m)"
            )));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(DurationError(format!(
                "invalid duration {text:?}: {number:?} has no unit (write {number}s, {number}m or {number}h)"
            )));
        }
        let Some(&(_, unit_ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            )));
        };
        if unit_ms >= last_unit_ms {
            return Err(DurationError(format!(
                "invalid duration {text:?}: write units from largest to smallest, each once (e.g. 1h30m)"
            )));
        }
        last_unit_ms = unit_ms;
        let value: u64 = number.parse().map_err(|_| {
            DurationError(format!("invalid duration {text:?}: {number} is too large"))
        })?;
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= MAX_MS)
            .ok_or_else(|| {
                DurationError(format!("invalid duration {text:?}: longer than 100 years"))
            })?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A century: enough for any schedule, small enough that adding it to a timestamp never overflows.
const MAX_MS: u64 = 100 * 365 * 86_400_000;

/// Displays a duration the way the task file writes it (`1h30m`, `250ms`, `0s`).
pub(crate) struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, unit_ms) in UNITS {
            if ms >= *unit_ms {
                write!(f, "{}{unit}", ms / unit_ms)?;
                ms %= unit_ms;
            }
        }
        Ok(())
    }
}

/// Displays how long something took (a run, a wait): whole seconds from one second on
/// (`12s`, `1h30m`; the milliseconds there are noise), and milliseconds below (`420ms`),
/// where whole seconds would say `0s` of a run that did take time.
pub(crate) struct Took(pub Duration);

impl fmt::Display for Took {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0 < Duration::from_secs(1) {
            Duration::from_millis(self.0.subsec_millis().into())
        } else {
            Duration::from_secs(self.0.as_secs())
        };
        Human(shown).fmt(f)
    }
}

/// Formats an instant in a zone as RFC 3339 with its UTC offset (`2026-03-08T03:00:00-04:00`).
pub(crate) fn rfc3339(at: Timestamp, tz: &TimeZone) -> String {
    at.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_docs_promise() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1d2h").unwrap(), Duration::from_secs(93_600));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m500ms").unwrap(), Duration::from_millis(60_500));
    }

    #[test]
    fn refuses_what_is_ambiguous_or_malformed() {
        for bad in
            ["", "30", "1x", "h", "1m1h", "1h1h", "-5s", "1.5h", "1h 30m", "99999999999999999999s"]
        {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("duration"), "{bad:?} gave {err}");
        }
        assert!(parse("30").unwrap_err().to_string().contains("no unit"));
    }

    #[test]
    fn displays_round_trip() {
        for text in ["90s", "1h30m", "1d", "250ms", "1m500ms"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&Human(d).to_string()).unwrap(), d);
        }
        assert_eq!(Human(Duration::from_secs(5400)).to_string(), "1h30m");
    }

    /// Regression: runs under a second showed as `0s`.
    #[test]
    fn a_time_taken_under_a_second_shows_its_milliseconds_and_longer_ones_whole_seconds() {
        let took = |ms: u64| Took(Duration::from_millis(ms)).to_string();
        assert_eq!(took(420), "420ms");
        assert_eq!(took(999), "999ms");
        assert_eq!(took(0), "0s");
        assert_eq!(took(1000), "1s");
        assert_eq!(took(12_420), "12s");
        assert_eq!(took(5_400_900), "1h30m");
    }
}
