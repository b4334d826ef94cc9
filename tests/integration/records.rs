//! The run history under faults: a full disk never tears a record, and a history
//! that cannot be opened never stops backups.

use crate::harness::{Scratch, TRIGGERED, history, trigger, wait_until};

/// Every line of the history file, and whether each parses as JSON.
fn lines(scratch: &Scratch) -> Vec<(String, bool)> {
    std::fs::read_to_string(scratch.path().join("state/history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| (l.to_string(), serde_json::from_str::<serde_json::Value>(l).is_ok()))
        .collect()
}

/// Regression: the daemon refused to start (exit 1) when its history could not be opened.
#[test]
fn a_history_that_cannot_be_opened_does_not_stop_backups_and_recovers() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let in_the_way = scratch.path().join("state/history.jsonl");
    std::fs::create_dir_all(&in_the_way).unwrap();
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "t", true);
    run.expect_code(0);
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    status.expect_code(0);
    assert!(status.stdout().contains("history: PROBLEM: cannot write the run history"), "{status}");
    let log = daemon.wait_for("the error", |l| l.contains("cannot write the run history"));
    assert!(log.contains(&in_the_way.display().to_string()), "the error names the path\n{log}");

    // Fixed: the held records are written, in order, and status is clean again.
    std::fs::remove_dir(&in_the_way).unwrap();
    wait_until("the held records", || history(&scratch).iter().any(|r| r["type"] == "end"));
    let records = history(&scratch);
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(kinds, ["daemon", "start", "end"], "{records:?}");
    daemon.wait_for("the recovery", |l| l.contains("the run history is writable again"));
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    assert!(!status.stdout().contains("PROBLEM"), "{status}");
    assert!(daemon.stop().success());
}

/// Unmounts the test's tmpfs on drop.
pub(crate) struct Mount(pub(crate) std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Regression: on a full disk a record was cut at 8,192 bytes and the next one written onto
/// it, losing both. Now the file always ends on a record boundary, and what could not be
/// written is written once there is room again.
#[test]
fn a_full_disk_never_tears_a_record_and_held_records_are_written_later() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let scratch = Scratch::new();
    let state = scratch.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _mount = Mount(state.clone());
    // Each End record carries ~20 stderr lines of 1,000 bytes: about 20 KB.
    let config = scratch.config(&format!(
        "tasks:\n  t:\n    {TRIGGERED}\n    command: [sh, -c, 'for i in $(seq 20); do head -c 1000 /dev/zero | tr \"\\\\0\" x >&2; echo >&2; done']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    // Fill the disk, leaving a few KB: the next big record cannot fit whole.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1k", "count=1000"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let before = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(before - 6 * 1024)
        .unwrap();
    for _ in 0..3 {
        trigger(&scratch, &config, "t", true).expect_code(0);
    }
    daemon.wait_for("the error", |l| l.contains("cannot write the run history"));
    assert!(lines(&scratch).iter().all(|(_, ok)| *ok), "a torn line: {:?}", lines(&scratch));

    // Room again: the held records arrive, whole and in order.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the held records", || {
        history(&scratch).iter().filter(|r| r["type"] == "end").count() == 3
    });
    let all = lines(&scratch);
    assert!(all.iter().all(|(_, ok)| *ok), "a torn line: {all:?}");
    let records = history(&scratch);
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(kinds, ["daemon", "start", "end", "start", "end", "start", "end"], "{kinds:?}");
    let log = daemon.wait_for("the recovery", |l| l.contains("the run history is writable again"));
    assert_eq!(log.matches("cannot write the run history").count(), 1, "said once at ERROR\n{log}");
    assert!(daemon.stop().success());
}

/// Regression: unreadable lines were dropped silently; `history` and `explain` now say how
/// many and where.
#[test]
fn history_and_explain_report_unreadable_lines() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let start = r#"{"type":"start","run_id":"r1","task":"t","at":"2026-11-30T10:00:00Z","scheduled":null,"trigger":"trigger"}"#;
    let end = r#"{"type":"end","run_id":"r1","task":"t","at":"2026-11-30T10:00:01Z","status":"success","exit_code":0,"duration_ms":1000,"reason":"ok","stderr_tail":[]}"#;
    scratch.write(
        "state/history.jsonl",
        format!("{start}\n{{\"type\":\"end\",\"run_i\n{end}\nnot json\n"),
    );
    let run = scratch.backupnizza(["history", "-c"]).run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains("success"), "{run}");
    assert!(
        run.stderr().contains("2 unreadable lines skipped") && run.stderr().contains("lines 2, 4"),
        "{run}"
    );
    let run = scratch.backupnizza(["explain", "t", "--since", "30d", "-c"]).run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains("history: 2 unreadable lines skipped"), "{run}");
}

/// `explain` counts truly (regressions): a failed catch-up run is failed, not "caught up"; a
/// run with no End and a later daemon start was interrupted; a run cancelled during its
/// random delay appears (it now has a Start record too); unreadable lines are reported.
#[test]
fn explain_counts_each_odd_case_truly() {
    let scratch = Scratch::new();
    let config = scratch.config("tasks:\n  t:\n    schedule: '0 * * * *'\n    command: [true]\n");
    let now = jiff::Timestamp::now();
    let hour = now.as_second() / 3600 * 3600;
    let at = |hours_ago: i64, minutes: i64| {
        jiff::Timestamp::from_second(hour - hours_ago * 3600 + minutes * 60).unwrap().to_string()
    };
    let start = |id: &str, h: i64, m: i64, trigger: &str| {
        format!(
            r#"{{"type":"start","run_id":"{id}","task":"t","at":"{}","scheduled":"{}","trigger":"{trigger}"}}"#,
            at(h, m),
            at(h, 0)
        )
    };
    let end = |id: &str, h: i64, m: i64, status: &str, code: &str| {
        format!(
            r#"{{"type":"end","run_id":"{id}","task":"t","at":"{}","status":"{status}","exit_code":{code},"duration_ms":1000,"reason":"r","stderr_tail":[]}}"#,
            at(h, m)
        )
    };
    let daemon = |h: i64, m: i64| {
        format!(r#"{{"type":"daemon","event":"start","at":"{}","pid":1}}"#, at(h, m))
    };
    let lines = [
        daemon(6, 1),
        start("late", 5, 30, "catch_up"),
        end("late", 5, 31, "failed", "1"),
        start("cut", 4, 0, "schedule"),
        daemon(3, 10),
        start("delay", 3, 20, "schedule"),
        end("delay", 3, 20, "cancelled", "null"),
        "{\"torn".to_string(),
        start("ok1", 2, 0, "schedule"),
        end("ok1", 2, 1, "success", "0"),
        start("ok2", 1, 0, "schedule"),
        end("ok2", 1, 1, "success", "0"),
    ];
    scratch.write("state/history.jsonl", lines.join("\n") + "\n");
    let run = scratch.backupnizza(["explain", "t", "--since", "6h", "-c"]).run_with(&config);
    run.expect_code(0);
    let out = run.stdout();
    let line = |h: i64| {
        out.lines().find(|l| l.contains(&at(h, 0).replace('Z', "+00:00"))).unwrap_or("").to_string()
    };
    assert!(line(5).contains("caught up") && line(5).contains("and failed"), "{out}");
    assert!(line(4).contains("interrupted"), "{out}");
    assert!(line(3).contains("cancelled"), "{out}");
    assert!(
        out.contains("2 ran, 1 failed, 0 caught up, 0 skipped, 0 missed while the daemon was down, 1 cancelled, 1 interrupted"),
        "{out}"
    );
    assert!(out.contains("history: 1 unreadable line skipped"), "{out}");
}

/// Regression: 1 GB of task output became 748 MB of daemon log (a log line per output line).
/// Now each stream of a run logs its first 1,000 lines (1 MiB at most), a count, and its last
/// 100 lines: the log stays under a few MB however much a task prints.
#[test]
fn a_task_printing_a_gigabyte_leaves_a_bounded_log() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  t:\n    {TRIGGERED}\n    timeout: 20s\n    command: [sh, -c, 'yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 1000000000; echo last-line-marker']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "t", true);
    let log = daemon.wait_for("the run's end", |l| l.contains("run ended"));
    assert!(
        log.contains("passed the log budget"),
        "{run}\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(log.contains("were not logged; the last"), "the summary line");
    let size = std::fs::metadata(&daemon.log).unwrap().len();
    assert!(size < 6 * 1024 * 1024, "the daemon log grew to {size} bytes");
    if run.code() == Some(0) {
        assert!(log.contains("last-line-marker"), "the last lines are logged at the end");
    }
    assert!(daemon.stop().success());
}

/// What a JSON log line says: its message, and its stream for a task's output.
fn events(log: &str) -> Vec<(String, Option<String>)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["message"].as_str().unwrap_or_default().to_string(),
                v["stream"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The number a summary line starts with ("900 lines (...) over the rate limit ...").
fn leading_count(message: &str) -> u64 {
    message.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Regression: a burst went to the log as fast as the task printed it. Now a
/// stream logs at most 100 lines a second; the rest of a burst is counted in a summary line,
/// and the end of the output is still logged when the run ends. Asserted by accounting, not
/// timing: every line is either logged in order or counted by a summary, exactly once.
#[test]
fn a_burst_of_output_is_rate_limited_and_every_line_is_accounted_for() {
    const LINES: u64 = 5000;
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "log: {{format: json}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [seq, -f, 'line-%g', '{LINES}']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", true).expect_code(0);
    let log = daemon.wait_for("the run's end", |l| l.contains("run ended"));
    assert!(daemon.stop().success());
    let events = events(&log);
    let tail_at = events
        .iter()
        .position(|(m, _)| {
            m.contains("not logged follow") || m.contains("over the rate limit follow")
        })
        .unwrap_or_else(|| panic!("no tail announced\n{log}"));
    let (before, after) = events.split_at(tail_at);
    let in_order: Vec<u64> = before
        .iter()
        .filter(|(_, s)| s.as_deref() == Some("stdout"))
        .map(|(m, _)| m.trim_start_matches("line-").parse().unwrap())
        .collect();
    assert!(in_order.windows(2).all(|w| w[0] < w[1]), "logged out of order: {in_order:?}");
    assert!(in_order.len() <= 1000, "{} lines logged as they came", in_order.len());
    let rated: Vec<u64> = before
        .iter()
        .filter(|(m, _)| {
            m.contains("over the rate limit (100 lines or 32 KiB a second) were not logged")
        })
        .map(|(m, _)| leading_count(m))
        .collect();
    assert!(!rated.is_empty(), "the burst was not summarized\n{log}");
    let past_budget: u64 = events
        .iter()
        .filter(|(m, _)| m.contains("past the log budget were not logged"))
        .map(|(m, _)| leading_count(m))
        .sum();
    assert_eq!(
        in_order.len() as u64 + rated.iter().sum::<u64>() + past_budget,
        LINES,
        "logged {} in order, {rated:?} over the rate, {past_budget} past the budget",
        in_order.len()
    );
    let tail: Vec<&str> = after[1..]
        .iter()
        .filter(|(_, s)| s.as_deref() == Some("stdout"))
        .map(|(m, _)| m.as_str())
        .collect();
    assert!(!tail.is_empty() && tail.len() <= 100, "{} tail lines", tail.len());
    assert_eq!(tail.last(), Some(&"line-5000"), "the end of the output is logged");
}

/// The full output only where the user asks. A task printing 50 MB with
/// `output_file: {max_size: 1MiB, keep: 2}` leaves three files under 1 MiB each (0600, in a
/// 0700 directory under state_dir), the newest holding the end of the run (the step's last
/// line, then the `after` hook's), a canary secret masked in every file and in the log, and a
/// daemon log within its documented bound.
#[test]
fn output_file_keeps_the_full_output_redacted_and_rotated_under_its_cap() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let canary = crate::harness::canary();
    let secret = scratch.path().join("pw");
    crate::harness::write_private(&secret, canary.as_bytes());
    let script = "echo \"first $PW\"; yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 50000000; echo; echo \"last-marker $PW\"";
    let config = scratch.config(&format!(
        "secrets:\n  pw: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    timeout: 5m\n    command: [sh, -c, '{script}']\n    env:\n      PW: {{secret: pw}}\n    secrets: [pw]\n    hooks:\n      after: {{command: [sh, -c, 'echo \"after-hook $PW\"'], secrets: [pw]}}\n    output_file: {{path: out/t.log, max_size: 1MiB, keep: 2}}\n",
        secret.display()
    ));
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "t", true);
    run.expect_code(0);
    let log_path = daemon.log.clone();
    // Stopping drains the output-file writer: everything sent is on disk afterwards.
    assert!(daemon.stop().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(&canary), "the canary leaked into the log");
    let size = std::fs::metadata(&log_path).unwrap().len();
    assert!(size < 6 * 1024 * 1024, "the daemon log grew to {size} bytes");

    let dir = scratch.path().join("state/out");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let generations: Vec<_> = ["t.log", "t.log.1", "t.log.2"].map(|n| dir.join(n)).into();
    for file in &generations {
        let len = std::fs::metadata(file).unwrap().len();
        assert!(len <= 1024 * 1024, "{} is {len} bytes", file.display());
        assert_eq!(mode(file), 0o600, "{}", file.display());
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains(&canary), "the canary leaked into {}", file.display());
    }
    assert!(!dir.join("t.log.3").exists(), "keep: 2 keeps two rotated files");
    let newest = std::fs::read_to_string(&generations[0]).unwrap();
    let last: Vec<&str> = newest.lines().rev().take(2).collect();
    let run_id = history(&scratch)
        .iter()
        .find(|r| r["type"] == "end")
        .and_then(|r| r["run_id"].as_str().map(str::to_string))
        .unwrap();
    // `TIME RUN_ID STREAM LINE`, the secret masked.
    let fields = |line: &str| line.splitn(4, ' ').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        fields(last[0])[1..],
        [run_id.clone(), "after.stdout".into(), "after-hook ***".into()]
    );
    assert_eq!(fields(last[1])[1..], [run_id, "stdout".into(), "last-marker ***".into()]);
    assert!(fields(last[0])[0].parse::<jiff::Timestamp>().is_ok(), "{}", last[0]);
}

/// An output file that cannot be written is said once per run at ERROR, and the run goes on.
#[test]
fn an_output_file_that_cannot_be_written_is_reported_once_and_the_run_goes_on() {
    let scratch = Scratch::new();
    // A regular file where the output file's directory should be.
    scratch.write("state/blocker", "not a directory");
    let config = scratch.config(&format!(
        "tasks:\n  t:\n    {TRIGGERED}\n    command: [seq, '500']\n    output_file: blocker/t.log\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", true).expect_code(0);
    trigger(&scratch, &config, "t", true).expect_code(0);
    let log = daemon.wait_for_count("run ended", 2);
    assert!(daemon.stop().success());
    let errors: Vec<&str> =
        log.lines().filter(|l| l.contains("cannot write the output file")).collect();
    assert_eq!(errors.len(), 2, "once per run\n{log}");
    assert!(
        errors.iter().all(|l| l.contains("ERROR") && l.contains("blocker/t.log")),
        "{errors:?}"
    );
    assert_eq!(history(&scratch).iter().filter(|r| r["status"] == "success").count(), 2);
}

/// Regression: on a fresh state directory, `explain` called every occurrence before the
/// daemon's first start "missed while the daemon was down". They are counted, not listed.
#[test]
fn explain_does_not_call_occurrences_before_the_first_start_missed() {
    let scratch = Scratch::new();
    let config = scratch.config("tasks:\n  t:\n    schedule: '* * * * *'\n    command: [true]\n");
    let daemon = scratch.start_daemon(&config);
    wait_until("the daemon's start record", || {
        history(&scratch).iter().any(|r| r["type"] == "daemon" && r["event"] == "start")
    });
    let run = scratch.backupnizza(["explain", "t", "--since", "1h", "-c"]).run_with(&config);
    run.expect_code(0);
    let out = run.stdout();
    assert!(!out.contains("missed:"), "{out}");
    assert!(out.contains(" 0 missed while the daemon was down"), "{out}");
    assert!(
        out.contains("earlier occurrences not listed: before the daemon's first start"),
        "{out}"
    );
    let run =
        scratch.backupnizza(["explain", "t", "--since", "1h", "--json", "-c"]).run_with(&config);
    let json: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(json["summary"]["missed"], 0, "{json}");
    assert!(json["summary"]["before_first_start"].as_u64().unwrap() >= 59, "{json}");
    assert!(daemon.stop().success());
}

/// Regression: a run under a second showed as `0s` in `history` and `explain`.
#[test]
fn history_and_explain_show_a_run_under_a_second_in_milliseconds() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5);
    let start = serde_json::json!({"type": "start", "run_id": "r1", "task": "t", "at": at.to_string(), "scheduled": null, "trigger": "trigger"});
    let end = serde_json::json!({"type": "end", "run_id": "r1", "task": "t", "at": at.to_string(), "status": "success", "exit_code": 0, "duration_ms": 420, "reason": "all steps succeeded", "stderr_tail": []});
    scratch.write("state/history.jsonl", format!("{start}\n{end}\n"));
    let run = scratch.backupnizza(["history", "-c"]).run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains("  420ms  r1"), "{run}");
    let run = scratch.backupnizza(["explain", "t", "-c"]).run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains("success (exit 0, 420ms)"), "{run}");
}

/// The red team's attack on `output_file:` (issue 28): another user who can write the
/// file's directory plants `t.log -> the victim's .profile`, and the next run chmodded the
/// victim 0600 and appended to it. Here that user (uid 65534, through `setpriv`) plants a
/// link and a file of their own in a sticky world-writable directory (which StrictModes
/// allows, as it allows /tmp); a directory others may write without the sticky bit is
/// refused outright. Nothing is written through any of them, the victim keeps its mode and
/// content, every run succeeds, and a task's own output file is still written.
#[test]
fn a_planted_link_or_file_at_an_output_file_changes_nothing() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let scratch = Scratch::new();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(scratch.path(), 0o755);
    let victim = scratch.write("victim/.profile", "# the victim's profile\n");
    mode(&victim, 0o644);
    let drop = scratch.path().join("drop");
    let open = scratch.path().join("open");
    for (dir, m) in [(&drop, 0o1777), (&open, 0o777)] {
        std::fs::create_dir(dir).unwrap();
        mode(dir, m);
    }
    let as_other = |script: &str| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    as_other(&format!(
        "ln -s {} {d}/linked.log && : > {d}/planted.log && chmod 666 {d}/planted.log",
        victim.display(),
        d = drop.display()
    ));
    let task = |name: &str, file: &str| {
        format!(
            "  {name}:\n    {TRIGGERED}\n    command: [echo, 'output of {name}']\n    output_file: {file}\n"
        )
    };
    let config = scratch.config(&format!(
        "tasks:\n{}{}{}{}",
        task("linked", &format!("{}/linked.log", drop.display())),
        task("planted", &format!("{}/planted.log", drop.display())),
        task("open", &format!("{}/t.log", open.display())),
        task("own", "out/own.log"),
    ));
    let daemon = scratch.start_daemon(&config);
    for name in ["linked", "planted", "open", "own"] {
        trigger(&scratch, &config, name, true).expect_code(0);
    }
    let log = daemon.wait_for_count("run ended", 4);
    let errors: Vec<&str> =
        log.lines().filter(|l| l.contains("cannot write the output file")).collect();
    let said = |file: &str, why: &str| {
        assert!(
            errors.iter().any(|l| l.contains(file) && l.contains(why)),
            "{file}: {why}\n{errors:#?}"
        );
    };
    said("linked.log", "symbolic link, which is not followed");
    said("planted.log", "belongs to uid 65534");
    said("t.log", "writable by group or others");
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // The victim, the planted file and the open directory are as they were.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "# the victim's profile\n");
    assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o644);
    let planted = std::fs::metadata(drop.join("planted.log")).unwrap();
    assert_eq!((planted.len(), planted.uid(), planted.mode() & 0o777), (0, 65534, 0o666));
    assert!(!open.join("t.log").exists());
    assert_eq!(history(&scratch).iter().filter(|r| r["status"] == "success").count(), 4);
    // The legitimate path still works.
    let own = std::fs::read_to_string(scratch.path().join("state/out/own.log")).unwrap();
    assert!(own.contains("output of own"), "{own}");
}
