//! The scheduler against a moving wall clock. libfaketime (Debian's `faketime` package) moves
//! the daemon's wall clock while its monotonic clock runs on, as after a suspend: a missed
//! occurrence is caught up once, and one later than `max_lateness` is skipped and logged.

use std::path::PathBuf;

use jiff::Timestamp;

use crate::harness::Scratch;

fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime.so.1 (Debian package faketime; .ci/run installs it)")
}

/// A libfaketime spec that makes the clock read `target` now.
fn offset_to(target: Timestamp) -> String {
    let seconds = target.as_second() - Timestamp::now().as_second();
    format!("{seconds:+}")
}

#[test]
fn after_a_suspend_a_missed_occurrence_runs_once_and_a_too_late_one_is_skipped() {
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    // Far from any occurrence, so nothing fires on time however slow the machine is.
    let before: Timestamp = "2030-06-01T02:00:00Z".parse().unwrap();
    std::fs::write(&clock, offset_to(before)).unwrap();
    let config = scratch.config(
        "timezone: UTC
tasks:
  every-ten:
    schedule: '*/10 * * * *'
    command: [touch, caught-up]
    max_lateness: 1h
  nightly:
    schedule: '0 3 * * *'
    command: [touch, should-not-run]
    max_lateness: 5m
",
    );
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    });
    let log = daemon.log_text();
    assert!(
        log.contains("next=2030-06-01T02:10:00+00:00"),
        "the fake clock is not in effect\n{log}"
    );

    // "Suspend" for 1h25m: the wall clock jumps; the monotonic clock barely moves.
    std::fs::write(&clock, offset_to("2030-06-01T03:25:00Z".parse().unwrap())).unwrap();
    // No nudge needed: the loop reads the clocks on every wake, at least every 5 s.

    let log = daemon.wait_for("the catch-up run to end", |l| l.contains("run ended"));
    assert!(log.contains("the wall clock moved forward"), "{log}");
    assert!(log.contains("missed 8 occurrences from 2030-06-01T02:10:00+00:00"), "{log}");
    assert!(log.contains("skipping the missed occurrence of 2030-06-01T03:00:00+00:00"), "{log}");
    assert!(scratch.path().join("caught-up").exists());
    assert!(!scratch.path().join("should-not-run").exists());
    drop(daemon);

    // `explain` reads the same story back (under the same fake clock).
    let explain = |task: &str| {
        let mut cmd = scratch.backupnizza(["explain", task, "--since", "2h", "-c"]).cmd;
        cmd.arg(&config)
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let every = explain("every-ten");
    assert!(
        every.contains("2030-06-01T03:20:00+00:00  caught up after suspend or downtime"),
        "{every}"
    );
    assert!(
        every.contains("2030-06-01T02:10:00+00:00  skipped (folded into a later catch-up run)"),
        "{every}"
    );
    let nightly = explain("nightly");
    assert!(nightly.contains("2030-06-01T03:00:00+00:00  skipped (too late)"), "{nightly}");

    let history: Vec<serde_json::Value> =
        std::fs::read_to_string(scratch.path().join("state/history.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let starts: Vec<_> = history.iter().filter(|r| r["type"] == "start").collect();
    assert_eq!(starts.len(), 1, "exactly one run: {history:?}");
    assert_eq!(starts[0]["task"], "every-ten");
    assert_eq!(starts[0]["trigger"], "catch_up");
    assert_eq!(starts[0]["scheduled"], "2030-06-01T03:20:00+00:00");
    let skips: Vec<_> = history.iter().filter(|r| r["type"] == "skip").collect();
    assert!(
        skips
            .iter()
            .any(|s| s["task"] == "every-ten" && s["reason"] == "superseded" && s["count"] == 7),
        "{skips:?}"
    );
    assert!(
        skips
            .iter()
            .any(|s| s["task"] == "nightly" && s["reason"] == "too_late" && s["count"] == 1),
        "{skips:?}"
    );
}
