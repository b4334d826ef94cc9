//! Schedule expressions: parsing never panics, and an accepted expression's next fire time
//! is strictly after the instant asked about.
#![no_main]

use jiff::Timestamp;
use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (when, expr) = data.split_at(8);
    let Ok(expr) = std::str::from_utf8(expr) else { return };
    let Ok(schedule) = backupnizza::schedule::Schedule::parse(expr) else { return };
    // Instants between 1970 and 2100, in zones with and without DST.
    let seconds = (u64::from_le_bytes(when.try_into().unwrap()) % 4_102_444_800) as i64;
    let after = Timestamp::from_second(seconds).unwrap();
    for zone in ["UTC", "America/New_York", "Australia/Lord_Howe"] {
        let tz = TimeZone::get(zone).unwrap();
        if let Some(next) = schedule.next_after(after, &tz) {
            assert!(next > after, "{expr:?} in {zone}: {next} is not after {after}");
        }
    }
});
