//! Whether backups are current, and holding them for a while: a task that only fails becomes
//! overdue (in `status`, `status --json`, the metrics file and one notification) and recovers
//! with its next success; `pause --for` holds runs and lifts itself; `pause` then `resume`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Scratch, history, wait_until};
use crate::home::prometheus_parse;

fn status_json(scratch: &Scratch, config: &Path) -> serde_json::Value {
    let run = scratch.backupnizza(["status", "--json", "-c"]).run_with(config);
    run.expect_code(0);
    serde_json::from_str(&run.stdout()).unwrap()
}

fn task<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tasks"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()
}

fn gauge(metrics: &Path, name: &str, task: &str) -> Option<f64> {
    prometheus_parse(metrics).into_iter().find(|(n, l, _)| n == name && l == task).map(|s| s.2)
}

/// Lines of the notifier's log: `EVENT TASK STATUS`.
fn notified(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn a_task_that_only_fails_is_overdue_until_it_succeeds_and_one_that_succeeds_never_is() {
    let scratch = Scratch::new();
    let metrics = scratch.path().join("backupnizza.prom");
    let events = scratch.path().join("events");
    let ok = scratch.path().join("ok");
    // `@every 1s`: overdue 2 s (two occurrences) + 10 s after the daemon's start without a
    // success. `flaky` fails until the file `ok` exists.
    let config = scratch.config(&format!(
        "metrics_textfile: {metrics}
notify:
  command: [sh, -c, 'echo \"$BACKUPNIZZA_EVENT $BACKUPNIZZA_TASK $BACKUPNIZZA_STATUS\" >> {events}']
tasks:
  flaky:
    schedule: '@every 1s'
    command: [sh, -c, 'test -e {ok}']
  fine:
    schedule: '@every 1s'
    command: ['true']
  by-hand:
    schedule: manual
    command: ['true']
",
        metrics = metrics.display(),
        events = events.display(),
        ok = ok.display(),
    ));
    let daemon = scratch.start_daemon(&config);
    let started = Instant::now();
    let status = status_json(&scratch, &config);
    assert_eq!(task(&status, "flaky")["overdue"], false, "not yet: {status}");

    daemon.wait_for("flaky to become overdue", |l| l.contains("overdue: no success since"));
    assert!(started.elapsed() >= Duration::from_secs(11), "overdue too early");
    let status = status_json(&scratch, &config);
    assert_eq!(task(&status, "flaky")["overdue"], true, "{status}");
    assert!(task(&status, "flaky")["overdue_since"].is_string(), "{status}");
    assert_eq!(task(&status, "fine")["overdue"], false, "{status}");
    assert_eq!(task(&status, "by-hand")["overdue"], false, "{status}");
    let text = scratch.backupnizza(["status", "-c"]).run_with(&config);
    assert!(text.stdout().contains("OVERDUE since"), "{text}");
    wait_until("the overdue gauge", || {
        gauge(&metrics, "backupnizza_task_overdue", "flaky") == Some(1.0)
    });
    assert_eq!(gauge(&metrics, "backupnizza_task_overdue", "fine"), Some(0.0));
    assert_eq!(gauge(&metrics, "backupnizza_task_overdue", "by-hand"), None, "manual: no sample");
    wait_until("the overdue notification", || {
        notified(&events).iter().any(|l| l == "overdue flaky overdue")
    });

    // A success clears it, once, and it is said once.
    std::fs::write(&ok, "").unwrap();
    daemon.wait_for("the recovery", |l| l.contains("no longer overdue"));
    wait_until("the recovered gauge", || {
        gauge(&metrics, "backupnizza_task_overdue", "flaky") == Some(0.0)
    });
    assert_eq!(task(&status_json(&scratch, &config), "flaky")["overdue"], false);
    wait_until("the recovery notification", || {
        notified(&events).iter().any(|l| l == "recovered flaky recovered")
    });
    let lines = notified(&events);
    let count = |line: &str| lines.iter().filter(|l| *l == line).count();
    assert_eq!(count("overdue flaky overdue"), 1, "{lines:?}");
    assert_eq!(count("recovered flaky recovered"), 1, "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("overdue fine")), "{lines:?}");
}

/// Start records of `task` in the history, by time.
fn starts(scratch: &Scratch, task: &str) -> Vec<jiff::Timestamp> {
    starts_of(scratch, task, |_| true)
}

/// Start records of `task` whose `scheduled` is set (not a trigger's).
fn scheduled_starts(scratch: &Scratch, task: &str) -> Vec<jiff::Timestamp> {
    starts_of(scratch, task, |r| r["scheduled"].is_string())
}

fn starts_of(
    scratch: &Scratch,
    task: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Vec<jiff::Timestamp> {
    history(scratch)
        .iter()
        .filter(|r| r["type"] == "start" && r["task"] == task && pick(r))
        .filter_map(|r| r["at"].as_str()?.parse().ok())
        .collect()
}

fn paused_skips(scratch: &Scratch, task: &str) -> usize {
    history(scratch)
        .iter()
        .filter(|r| r["type"] == "skip" && r["task"] == task && r["reason"] == "paused")
        .count()
}

#[test]
fn pause_for_a_while_holds_runs_and_lifts_itself_and_pause_then_resume() {
    let scratch = Scratch::new();
    let metrics = scratch.path().join("backupnizza.prom");
    let config = scratch.config(&format!(
        "metrics_textfile: {}
tasks:
  tick:
    schedule: '@every 1s'
    command: ['true']
  other:
    schedule: '@every 1s'
    command: ['true']
",
        metrics.display()
    ));
    let daemon = scratch.start_daemon(&config);
    wait_until("a first run", || !starts(&scratch, "tick").is_empty());

    let paused = scratch.backupnizza(["pause", "--for", "10s", "tick", "-c"]).run_with(&config);
    paused.expect_code(0);
    assert!(paused.stdout().starts_with("paused until "), "{paused}");
    let at: jiff::Timestamp = jiff::Timestamp::now();
    let status = status_json(&scratch, &config);
    let pause = &task(&status, "tick")["paused"];
    assert!(pause["until"].is_string(), "{status}");
    assert!(task(&status, "other")["paused"].is_null(), "only tick is paused: {status}");
    wait_until("the paused gauge", || {
        gauge(&metrics, "backupnizza_task_paused", "tick") == Some(1.0)
    });
    // `trigger` still runs a paused task.
    scratch.backupnizza(["trigger", "--wait", "tick", "-c"]).run_with(&config).expect_code(0);

    daemon.wait_for("the pause's end", |l| l.contains("the pause ended"));
    let ended = jiff::Timestamp::now();
    wait_until("a run after the pause", || starts(&scratch, "tick").iter().any(|s| *s > ended));
    // During the pause: no scheduled run started (the trigger's did), and skips said "paused".
    let second = jiff::SignedDuration::from_secs(1);
    let during: Vec<_> = scheduled_starts(&scratch, "tick")
        .into_iter()
        .filter(|s| *s > at + second && *s < ended - second)
        .collect();
    assert!(during.is_empty(), "scheduled runs started while paused: {during:?}");
    // Records are stamped to the second: the trigger's start is told by its `trigger`.
    let triggered = starts_of(&scratch, "tick", |r| r["trigger"] == "trigger");
    assert_eq!(triggered.len(), 1, "the trigger ran the paused task");
    assert!(
        paused_skips(&scratch, "tick") >= 5,
        "occurrences while paused are recorded as skipped"
    );
    assert!(starts(&scratch, "other").iter().any(|s| *s > at && *s < ended), "other kept running");
    assert_eq!(gauge(&metrics, "backupnizza_task_paused", "tick"), Some(0.0));
    let explain = scratch.backupnizza(["explain", "tick", "--since", "2m", "-c"]).run_with(&config);
    explain.expect_code(0);
    assert!(
        explain.stdout().contains("skipped (`backupnizza pause` held the task): paused until"),
        "{explain}"
    );

    // Every task, until resumed.
    let paused = scratch.backupnizza(["pause", "-c"]).run_with(&config);
    paused.expect_code(0);
    assert!(paused.stdout().contains("until `backupnizza resume`"), "{paused}");
    let status = status_json(&scratch, &config);
    for name in ["tick", "other"] {
        let pause = &task(&status, name)["paused"];
        assert!(pause.is_object() && pause["until"].is_null(), "{status}");
    }
    let skips = paused_skips(&scratch, "other");
    wait_until("skips of other while paused", || paused_skips(&scratch, "other") >= skips + 2);
    let resumed = scratch.backupnizza(["resume", "-c"]).run_with(&config);
    resumed.expect_code(0);
    assert!(resumed.stdout().contains("resumed: tick, other"), "{resumed}");
    let after = jiff::Timestamp::now();
    wait_until("runs after resume", || {
        starts(&scratch, "other").iter().any(|s| *s > after)
            && starts(&scratch, "tick").iter().any(|s| *s > after)
    });
    assert!(task(&status_json(&scratch, &config), "tick")["paused"].is_null());

    // Mistakes: an unknown task, a zero or malformed duration.
    let unknown = scratch.backupnizza(["pause", "tik", "-c"]).run_with(&config);
    assert_eq!(unknown.code(), Some(2), "{unknown}");
    assert!(unknown.stderr().contains("did you mean \"tick\""), "{unknown}");
    let bad = scratch.backupnizza(["pause", "--for", "soon", "-c"]).run_with(&config);
    assert_eq!(bad.code(), Some(2), "{bad}");
}

/// Pauses outlive a restart: a timed one keeps its end, an open one stays until `resume`, one
/// whose end came while the daemon was down is over; an unreadable pauses file is a WARN
/// naming it, and then nothing is paused.
#[test]
fn pauses_hold_across_a_restart_and_one_that_ended_meanwhile_is_over() {
    let scratch = Scratch::new();
    let every_second =
        |name: &str| format!("  {name}:\n    schedule: '@every 1s'\n    command: ['true']\n");
    let config = scratch.config(&format!(
        "tasks:\n{}{}{}",
        every_second("long"),
        every_second("open"),
        every_second("short")
    ));
    let pauses = scratch.path().join("state/pauses.json");
    let daemon = scratch.start_daemon(&config);
    for args in [&["--for", "1h", "long"][..], &["open"], &["--for", "2s", "short"]] {
        let paused = scratch
            .backupnizza(["pause"].into_iter().chain(args.iter().copied()).chain(["-c"]))
            .run_with(&config);
        paused.expect_code(0);
    }
    let before = status_json(&scratch, &config);
    let short_until: jiff::Timestamp =
        task(&before, "short")["paused"]["until"].as_str().unwrap().parse().unwrap();
    assert!(pauses.exists(), "the pauses are on disk once `pause` answered");
    assert!(daemon.stop().success());

    // Down until the short pause's end has passed.
    while jiff::Timestamp::now() <= short_until {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (long_starts, open_starts) =
        (scheduled_starts(&scratch, "long").len(), scheduled_starts(&scratch, "open").len());
    let short_starts = scheduled_starts(&scratch, "short").len();
    let (long_skips, open_skips) = (paused_skips(&scratch, "long"), paused_skips(&scratch, "open"));
    let daemon = scratch.start_daemon(&config);
    let after = status_json(&scratch, &config);
    assert_eq!(task(&after, "long")["paused"], task(&before, "long")["paused"], "{after}");
    assert_eq!(task(&after, "open")["paused"], task(&before, "open")["paused"], "{after}");
    assert!(task(&after, "short")["paused"].is_null(), "{after}");
    let log = daemon.log_text();
    assert!(log.contains("still paused until") && log.contains("still paused until resumed"));
    assert!(log.contains("the pause ended while the daemon was not running"), "{log}");
    wait_until("paused skips after the restart, and short's runs", || {
        paused_skips(&scratch, "long") >= long_skips + 2
            && paused_skips(&scratch, "open") >= open_skips + 2
            && scheduled_starts(&scratch, "short").len() > short_starts
    });
    assert_eq!(scheduled_starts(&scratch, "long").len(), long_starts, "long ran while paused");
    assert_eq!(scheduled_starts(&scratch, "open").len(), open_starts, "open ran while paused");

    scratch.backupnizza(["resume", "-c"]).run_with(&config).expect_code(0);
    assert!(!pauses.exists(), "no pause left, no file");
    assert!(daemon.stop().success());

    // A torn file pauses nothing, and says which file.
    std::fs::write(&pauses, "{\"pauses\": [{\"task\": \"lo").unwrap();
    let daemon = scratch.start_daemon(&config);
    let warning = daemon.wait_for("the warning", |l| l.contains("starting with no task paused"));
    assert!(warning.contains("pauses.json is not a pauses file"), "{warning}");
    let runs = scheduled_starts(&scratch, "long").len();
    wait_until("long runs again", || scheduled_starts(&scratch, "long").len() > runs);
}
