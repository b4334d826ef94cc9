//! Reading the clocks, and telling a suspend from a clock change.
//!
//! The daemon sleeps on the monotonic clock (tokio, `std::time::Instant`), which stops while
//! the machine is suspended, and fires on the wall clock, which an administrator, NTP or a
//! time-zone-less RTC can set anywhere. Comparing how far each clock moved between two
//! readings tells what happened in between:
//!
//! - Linux has a third clock, CLOCK_BOOTTIME, which runs on through a suspend but, like the
//!   monotonic clock, is never set. *boottime − monotonic* is the time spent suspended and
//!   *wall − boottime* is a change of the wall clock, so a suspend that ended with NTP
//!   stepping the clock reports both parts.
//! - Elsewhere (macOS) there is no such clock here: a wall clock that ran ahead of the
//!   monotonic one is taken for a suspend (the common case on a laptop), and one that fell
//!   behind for a clock change.
//!
//! A [`Stamp`] keeps a wall time together with the boottime reading taken with it, so a
//! time recorded before a clock change can be re-read on the corrected clock: *now − time
//! elapsed since*. That is how metrics never show an instant later than now.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// A difference between the clocks above this is a suspend or a clock change (below it is
/// scheduling jitter and the time between two reads).
pub(crate) const JUMP_THRESHOLD: Duration = Duration::from_secs(5);

/// A change of the wall clock larger than this is a *correction* (cronie's rule, cron(8)):
/// nothing is caught up for the wall-clock time it skipped. Smaller forward changes are
/// caught up like a suspend.
pub(crate) const CORRECTION: Duration = Duration::from_secs(3 * 3600);

/// The three clocks, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) wall: Timestamp,
    /// The monotonic clock tokio sleeps on; stops during a suspend.
    pub(crate) mono: Duration,
    /// CLOCK_BOOTTIME: monotonic, but counts suspended time. `None` where not available.
    pub(crate) boot: Option<Duration>,
}

impl Reading {
    /// Reads the clocks now.
    pub(crate) fn now() -> Reading {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::time::{ClockId, clock_gettime};
            let read = |id| {
                clock_gettime(id).ok().and_then(|t| {
                    Some(Duration::new(t.tv_sec().try_into().ok()?, t.tv_nsec() as u32))
                })
            };
            let boot = read(ClockId::CLOCK_BOOTTIME);
            let wall = Timestamp::now();
            // Both clocks come from the kernel in one place, so their difference is exact;
            // `Instant` is the fallback only if the kernel refused (it never does on Linux).
            if let Some(mono) = read(ClockId::CLOCK_MONOTONIC) {
                return Reading { wall, mono, boot };
            }
            Reading { wall, mono: process_elapsed(), boot }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            Reading { wall: Timestamp::now(), mono: process_elapsed(), boot: None }
        }
    }

    /// The clock that measures real elapsed time: boottime where there is one, else the
    /// monotonic clock (which misses suspends).
    fn elapsed_clock(&self) -> Duration {
        self.boot.unwrap_or(self.mono)
    }
}

/// Where the state owner reads the time: the system's clocks in the daemon, a clock that a
/// test moves (suspends, sets) in the state owner's in-process tests.
pub(crate) trait Clock: Send + Sync {
    fn read(&self) -> Reading;
}

/// The system's clocks ([`Reading::now`]).
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn read(&self) -> Reading {
        Reading::now()
    }
}

/// Monotonic time since the first call in this process.
fn process_elapsed() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// A wall time, and where the elapsed-time clock stood when it was taken. Signed: an
/// instant from before the machine booted (a run in the history) stands before zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    wall: Timestamp,
    at: SignedDuration,
}

impl Stamp {
    /// A stamp for `wall`, an instant as old on the wall clock as it is now (an event a
    /// moment old when it reached the state owner, or a record from the history).
    pub(crate) fn before(now: &Reading, wall: Timestamp) -> Stamp {
        let ago = now.wall.duration_since(wall);
        Stamp { wall, at: signed(now.elapsed_clock()).saturating_sub(ago) }
    }

    /// The wall time as recorded.
    pub(crate) fn wall(&self) -> Timestamp {
        self.wall
    }

    /// The instant on the current wall clock: `now` minus the time elapsed since. Equal to
    /// the recorded wall time unless the clock was changed in between.
    pub(crate) fn reread(&self, now: &Reading) -> Timestamp {
        // Never later than now: the elapsed-time clock does not go back.
        let elapsed = signed(now.elapsed_clock()).saturating_sub(self.at).max(SignedDuration::ZERO);
        now.wall.checked_sub(elapsed).unwrap_or(now.wall)
    }
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Jump {
    /// Time spent suspended (zero when none was seen).
    pub(crate) suspended: Duration,
    /// How far the wall clock was set (positive: forward); zero when it was not.
    pub(crate) changed: SignedDuration,
    /// Whether the clocks could tell a suspend from a forward change (Linux). When not, a
    /// forward move is reported as `suspended`.
    pub(crate) told_apart: bool,
}

impl Jump {
    /// A change of the wall clock (either direction) above [`JUMP_THRESHOLD`].
    pub(crate) fn is_clock_change(&self) -> bool {
        !self.changed.is_zero()
    }

    /// More than [`CORRECTION`]: a correction rather than an adjustment.
    pub(crate) fn is_correction(&self) -> bool {
        self.changed.unsigned_abs() > CORRECTION
    }
}

/// Compares each reading with the previous one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockWatch {
    last: Reading,
}

impl ClockWatch {
    pub(crate) fn new(first: Reading) -> ClockWatch {
        ClockWatch { last: first }
    }

    /// The suspend and clock change since the last reading, if either exceeds
    /// [`JUMP_THRESHOLD`]; a part below it is reported as zero.
    pub(crate) fn observe(&mut self, now: Reading) -> Option<Jump> {
        let last = std::mem::replace(&mut self.last, now);
        let wall = now.wall.duration_since(last.wall);
        let mono = signed(now.mono.saturating_sub(last.mono));
        let (suspended, changed, told_apart) = if let (Some(b0), Some(b1)) = (last.boot, now.boot) {
            let boot = signed(b1.saturating_sub(b0));
            (boot - mono, wall - boot, true)
        } else {
            // Without boottime, ahead is a suspend and behind a change.
            let d = wall - mono;
            if d.is_positive() {
                (d, SignedDuration::ZERO, false)
            } else {
                (SignedDuration::ZERO, d, false)
            }
        };
        let significant = |d: SignedDuration| d.unsigned_abs() > JUMP_THRESHOLD;
        let suspended = if significant(suspended) {
            Duration::try_from(suspended).unwrap_or_default()
        } else {
            Duration::ZERO
        };
        let changed = if significant(changed) { changed } else { SignedDuration::ZERO };
        (!suspended.is_zero() || !changed.is_zero()).then_some(Jump {
            suspended,
            changed,
            told_apart,
        })
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn reading(wall: &str, mono: u64, boot: Option<u64>) -> Reading {
        Reading {
            wall: ts(wall),
            mono: Duration::from_secs(mono),
            boot: boot.map(Duration::from_secs),
        }
    }

    #[test]
    fn steady_clocks_report_nothing() {
        let mut w = ClockWatch::new(reading("2026-01-01T00:00:00Z", 100, Some(100)));
        assert_eq!(w.observe(reading("2026-01-01T00:01:00Z", 160, Some(160))), None);
        // Jitter below the threshold is not a jump.
        assert_eq!(w.observe(reading("2026-01-01T00:02:03Z", 220, Some(220))), None);
    }

    #[test]
    fn boottime_tells_a_suspend_from_a_clock_change() {
        // Suspended for an hour: wall and boottime moved on, monotonic did not.
        let mut w = ClockWatch::new(reading("2026-01-01T00:00:00Z", 100, Some(100)));
        let j = w.observe(reading("2026-01-01T01:00:10Z", 110, Some(3710))).unwrap();
        assert_eq!(j.suspended, Duration::from_secs(3600));
        assert!(!j.is_clock_change());

        // The clock set back a day: only the wall clock moved.
        let j = w.observe(reading("2025-12-31T01:00:20Z", 120, Some(3720))).unwrap();
        assert_eq!(j.suspended, Duration::ZERO);
        assert_eq!(j.changed, SignedDuration::from_hours(-24));
        assert!(j.is_correction());

        // A suspend of 2h after which NTP stepped the clock 4h ahead: both parts.
        let j = w.observe(reading("2025-12-31T07:00:30Z", 130, Some(10930))).unwrap();
        assert_eq!(j.suspended, Duration::from_secs(7200));
        assert_eq!(j.changed, SignedDuration::from_hours(4));
    }

    #[test]
    fn without_boottime_ahead_is_a_suspend_and_behind_a_change() {
        let mut w = ClockWatch::new(reading("2026-01-01T00:00:00Z", 100, None));
        let j = w.observe(reading("2026-01-01T03:01:00Z", 160, None)).unwrap();
        assert_eq!((j.suspended, j.changed), (Duration::from_secs(3 * 3600), SignedDuration::ZERO));
        assert!(!j.told_apart);
        let j = w.observe(reading("2026-01-01T02:01:00Z", 160, None)).unwrap();
        assert_eq!((j.suspended, j.changed), (Duration::ZERO, SignedDuration::from_hours(-1)));
        assert!(!j.is_correction());
    }

    #[test]
    fn a_stamp_is_reread_on_the_corrected_clock() {
        let then = reading("2027-06-01T12:00:00Z", 100, Some(100));
        let stamp = Stamp::before(&then, then.wall);
        assert_eq!(stamp.reread(&then), ts("2027-06-01T12:00:00Z"));
        // Ten minutes later the clock is set back a year: the stamp reads ten minutes ago.
        let now = reading("2026-06-01T12:10:00Z", 700, Some(700));
        assert_eq!(stamp.reread(&now), ts("2026-06-01T12:00:00Z"));
        // An event that reached the owner 2 s after it happened.
        let late = Stamp::before(&now, ts("2026-06-01T12:09:58Z"));
        assert_eq!(late.reread(&now), ts("2026-06-01T12:09:58Z"));
        assert_eq!(late.wall(), ts("2026-06-01T12:09:58Z"));
    }

    #[test]
    fn a_stamp_from_before_the_boot_keeps_its_age() {
        // A success from the history, two days old, on a machine booted ten minutes ago.
        let now = reading("2026-06-03T12:00:00Z", 600, Some(600));
        let stamp = Stamp::before(&now, ts("2026-06-01T12:00:00Z"));
        assert_eq!(stamp.reread(&now), ts("2026-06-01T12:00:00Z"));
        // An hour later the clock also was set an hour forward: still two days old.
        let later = reading("2026-06-03T14:00:00Z", 4200, Some(4200));
        assert_eq!(stamp.reread(&later), ts("2026-06-01T13:00:00Z"));
    }
}
