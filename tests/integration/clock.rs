//! The scheduler against a moving wall clock. libfaketime (Debian's `faketime` package) moves
//! the daemon's wall clock while its monotonic and boot clocks run on (with
//! `FAKETIME_DONT_FAKE_MONOTONIC=1` it leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME alone), so
//! to the daemon each move is a change of the clock, not a suspend: a small step forward is
//! caught up like a suspend (one run, one too-late skip), a day back and a year forward and
//! back rebuild the timetable from the new clock, and no timestamp from the future reaches
//! the metrics or the downtime catch-up.

use std::path::Path;

use jiff::Timestamp;

use crate::harness::{PATIENCE, Scratch, TRIGGERED, history, libfaketime, offset_to, trigger};

#[test]
fn after_a_suspend_a_missed_occurrence_runs_once_and_a_too_late_one_is_skipped() {
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    // Far from any occurrence, so nothing fires on time however slow the machine is.
    let before: Timestamp = "2030-06-01T02:00:00Z".parse().unwrap();
    std::fs::write(&clock, offset_to(before)).unwrap();
    let config = scratch.config(
        "timezone: UTC
resume_settle: 0s
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
    let daemon = scratch.start_daemon_faked(&config, &clock);
    let log = daemon.log_text();
    assert!(
        log.contains("next=2030-06-01T02:10:00+00:00"),
        "the fake clock is not in effect\n{log}"
    );

    // The wall clock jumps 1h25m while the boot and monotonic clocks barely move: to the
    // daemon a clock change of at most 3 h, caught up exactly like a suspend.
    std::fs::write(&clock, offset_to("2030-06-01T03:25:00Z".parse().unwrap())).unwrap();
    daemon.clock_moved();

    let log = daemon.wait_for("the catch-up run to end", |l| l.contains("run ended"));
    assert!(log.contains("the wall clock moved forward"), "{log}");
    assert!(log.contains("missed 8 occurrences from 2030-06-01T02:10:00+00:00"), "{log}");
    assert!(log.contains("skipping the missed occurrence of 2030-06-01T03:00:00+00:00"), "{log}");
    assert!(scratch.path().join("caught-up").exists());
    assert!(!scratch.path().join("should-not-run").exists());
    // A clean stop, so the history writer has written the run's records (they follow the
    // log line; a SIGKILL from `drop` could beat them to the file on a loaded machine).
    daemon.stop();

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

/// The fake clock's offset from the real one, in seconds, as the timestamp file holds it.
fn offset(clock: &Path) -> i64 {
    let text = std::fs::read_to_string(clock).unwrap();
    text.trim().trim_start_matches('+').parse().unwrap()
}

/// Moves the fake clock by `seconds` (negative: back).
fn shift(clock: &Path, seconds: i64) {
    std::fs::write(clock, format!("{:+}", offset(clock) + seconds)).unwrap();
}

/// What the daemon's clock reads now.
fn fake_now(clock: &Path) -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second() + offset(clock)).unwrap()
}

/// The metrics file's samples: `(name, task label, value)`.
fn metrics(path: &Path) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let task = labels.strip_prefix("task=\"").and_then(|t| t.split_once('"')).map(|t| t.0);
            Some((name.to_string(), task.unwrap_or("").to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The samples that are instants of the past (start, end, success, the daemon's start):
/// every gauge ending in `_timestamp_seconds` or `start_time_seconds` except the next fire.
fn past_instants(samples: &[(String, String, f64)]) -> Vec<(String, String, f64)> {
    samples
        .iter()
        .filter(|(n, _, _)| {
            (n.ends_with("_timestamp_seconds") || n.ends_with("_start_time_seconds"))
                && !n.contains("next_fire")
        })
        .cloned()
        .collect()
}

/// Polls the metrics file until `cond` holds; panics with the file after `PATIENCE`.
#[track_caller]
fn wait_for_metrics(
    path: &Path,
    what: &str,
    cond: impl Fn(&[(String, String, f64)]) -> bool,
) -> Vec<(String, String, f64)> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let samples = metrics(path);
        if cond(&samples) {
            return samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn value(samples: &[(String, String, f64)], name: &str, task: &str) -> Option<f64> {
    samples.iter().find(|(n, t, _)| n == name && t == task).map(|s| s.2)
}

fn seconds(at: &str) -> f64 {
    at.parse::<Timestamp>().unwrap().as_second() as f64
}

const DAY: i64 = 86_400;

#[test]
fn clock_set_back_a_day_fires_at_the_new_wall_clock_times() {
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    std::fs::write(&clock, offset_to("2030-06-02T02:00:40Z".parse().unwrap())).unwrap();
    let config = scratch.config(
        "timezone: UTC
resume_settle: 0s
tasks:
  minutely:
    schedule: '* * * * *'
    command: [touch, minutely]
  nightly:
    schedule: '0 3 * * *'
    command: [touch, nightly]
",
    );
    let daemon = scratch.start_daemon_faked(&config, &clock);
    let log = daemon.log_text();
    assert!(
        log.contains("next=2030-06-02T02:01:00+00:00"),
        "the fake clock is not in effect\n{log}"
    );

    // Back a day, to 02:00:40 on the 1st. Before the fix, the next runs stayed on the 2nd and
    // the daemon said nothing until then.
    shift(&clock, -DAY);
    daemon.clock_moved();
    let log = daemon.wait_for("the run at the new clock's 02:01", |l| l.contains("run ended"));
    assert_eq!(log.matches("the wall clock moved back").count(), 1, "logged once\n{log}");
    assert!(log.contains("a correction: tasks run at the new clock's times"), "{log}");
    assert!(
        log.contains(
            "rescheduled after the clock change task=minutely next=2030-06-01T02:01:00+00:00"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "rescheduled after the clock change task=nightly next=2030-06-01T03:00:00+00:00"
        ),
        "{log}"
    );
    assert!(scratch.path().join("minutely").exists());

    let records = history(&scratch);
    let starts: Vec<_> = records.iter().filter(|r| r["type"] == "start").collect();
    assert_eq!(starts.len(), 1, "{records:?}");
    assert_eq!(starts[0]["task"], "minutely");
    assert_eq!(starts[0]["scheduled"], "2030-06-01T02:01:00+00:00", "{records:?}");
    assert!(starts[0]["at"].as_str().unwrap().starts_with("2030-06-01T02:01"), "{records:?}");
    assert!(
        !records.iter().any(|r| r["type"] == "skip"),
        "nothing skipped going back: {records:?}"
    );
}

#[test]
fn clock_forward_a_year_and_back_leaves_next_runs_and_metrics_in_the_present() {
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    let prom = scratch.path().join("backupnizza.prom");
    std::fs::write(&clock, offset_to("2030-06-01T02:00:00Z".parse().unwrap())).unwrap();
    let config = scratch.config(&format!(
        "timezone: UTC
resume_settle: 0s
metrics_textfile: {}
tasks:
  every-ten:
    schedule: '*/10 * * * *'
    command: [touch, every-ten]
  backup:
    {TRIGGERED}
    command: ['true']
",
        prom.display()
    ));
    let daemon = scratch.start_daemon_faked(&config, &clock);
    assert!(daemon.log_text().contains("next=2030-06-01T02:10:00+00:00"), "{}", daemon.log_text());

    // A year forward (2031-06-01T02:00): a correction; nothing of the year is caught up.
    shift(&clock, 365 * DAY);
    daemon.clock_moved();
    daemon.wait_for("the reschedule in 2031", |l| {
        l.contains(
            "rescheduled after the clock change task=every-ten next=2031-06-01T02:10:00+00:00",
        )
    });
    // A backup succeeds while the clock says 2031.
    trigger(&scratch, &config, "backup", true).expect_code(0);
    wait_for_metrics(&prom, "a last success in 2031", |m| {
        value(m, "backupnizza_task_last_success_timestamp_seconds", "backup")
            .is_some_and(|v| v >= seconds("2031-06-01T02:00:00Z"))
    });

    // And back to 2030.
    shift(&clock, -365 * DAY);
    daemon.clock_moved();
    let log = daemon.wait_for("the reschedule in 2030", |l| {
        l.contains(
            "rescheduled after the clock change task=every-ten next=2030-06-01T02:10:00+00:00",
        )
    });
    assert!(log.contains("the wall clock moved forward"), "{log}");
    assert!(log.contains("the wall clock moved back"), "{log}");
    assert!(
        log.contains(
            "rescheduled after the clock change task=backup next=2031-01-01T00:00:00+00:00"
        ),
        "the next 1 January after the present, not after 2031-06: {log}"
    );
    let samples = wait_for_metrics(&prom, "next runs in the present", |m| {
        value(m, "backupnizza_task_next_fire_timestamp_seconds", "every-ten")
            == Some(seconds("2030-06-01T02:10:00Z"))
    });
    let now = fake_now(&clock).as_second() as f64;
    let future: Vec<_> = past_instants(&samples).into_iter().filter(|s| s.2 > now + 1.0).collect();
    assert!(future.is_empty(), "timestamps later than now ({now}): {future:?}");
    assert_eq!(
        value(&samples, "backupnizza_task_next_fire_timestamp_seconds", "backup"),
        Some(seconds("2031-01-01T00:00:00Z"))
    );
    let success = value(&samples, "backupnizza_task_last_success_timestamp_seconds", "backup");
    assert!(
        success.is_some_and(|v| v >= seconds("2030-06-01T02:00:00Z")),
        "the success is kept, at its age on the present clock: {samples:?}"
    );

    // The skipped year is on record, not silently dropped.
    let records = history(&scratch);
    let skip = |task: &str| {
        records
            .iter()
            .find(|r| r["type"] == "skip" && r["task"] == task && r["reason"] == "clock_change")
            .unwrap_or_else(|| panic!("no clock_change skip for {task}: {records:?}"))
            .clone()
    };
    assert_eq!(skip("every-ten")["scheduled"], "2030-06-01T02:10:00+00:00");
    assert!(skip("every-ten")["count"].as_u64().unwrap() > 50_000);
    assert_eq!(skip("backup")["scheduled"], "2031-01-01T00:00:00+00:00");
    assert_eq!(skip("backup")["count"], 1);
    assert!(
        !records.iter().any(|r| r["type"] == "start" && r["task"] == "every-ten"),
        "no catch-up for the skipped year: {records:?}"
    );
}

#[test]
fn a_future_dated_history_record_does_not_disable_downtime_catch_up() {
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    let prom = scratch.path().join("backupnizza.prom");
    std::fs::write(&clock, offset_to("2030-06-01T03:25:00Z".parse().unwrap())).unwrap();
    let config = scratch.config(&format!(
        "timezone: UTC
resume_settle: 0s
metrics_textfile: {}
tasks:
  every-ten:
    schedule: '*/10 * * * *'
    command: [touch, caught-up]
    max_lateness: 1h
",
        prom.display()
    ));
    // The daemon stopped at 02:05; a run recorded while the clock was a year ahead follows.
    let lines = [
        r#"{"type":"daemon","event":"start","at":"2030-06-01T01:00:00+00:00","pid":1}"#,
        r#"{"type":"daemon","event":"stop","at":"2030-06-01T02:05:00+00:00","pid":1}"#,
        r#"{"type":"start","run_id":"r1","task":"every-ten","at":"2031-06-01T01:00:00+00:00","scheduled":"2031-06-01T01:00:00+00:00","trigger":"schedule"}"#,
        r#"{"type":"end","run_id":"r1","task":"every-ten","at":"2031-06-01T01:00:01+00:00","status":"success","exit_code":0,"duration_ms":1000,"reason":"all steps succeeded","stderr_tail":[]}"#,
    ];
    scratch.write("state/history.jsonl", lines.join("\n") + "\n");
    let daemon = scratch.start_daemon_faked(&config, &clock);
    let log = daemon.wait_for("the catch-up run to end", |l| l.contains("run ended"));
    assert!(log.contains("2 history records dated later than now"), "{log}");
    assert!(log.contains("missed 8 occurrences from 2030-06-01T02:10:00+00:00"), "{log}");
    assert!(scratch.path().join("caught-up").exists());

    let samples = wait_for_metrics(&prom, "the catch-up run's success", |m| {
        value(m, "backupnizza_task_runs_total", "every-ten") == Some(1.0)
    });
    let now = fake_now(&clock).as_second() as f64;
    let future: Vec<_> = past_instants(&samples).into_iter().filter(|s| s.2 > now + 1.0).collect();
    assert!(future.is_empty(), "timestamps later than now ({now}): {future:?}");
    assert!(
        value(&samples, "backupnizza_task_last_success_timestamp_seconds", "every-ten")
            .is_some_and(|v| v >= seconds("2030-06-01T03:25:00Z")),
        "{samples:?}"
    );
}
