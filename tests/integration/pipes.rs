//! Printing into a pipe whose reader goes away (`| head -1`) is a normal exit, not a panic;
//! and `trigger` asks the daemon, not the local task file, whether a task exists.

use std::io::BufRead;
use std::process::{Command, Stdio};

use jiff::{SignedDuration, Timestamp};

use crate::harness::{Run, Scratch, TRIGGERED, trigger};

/// Twice what a pipe buffers by default (64 KiB): a writer must block on the reader, so
/// closing the read end makes its next write fail with EPIPE.
const MORE_THAN_A_PIPE_HOLDS: usize = 128 * 1024;

/// Runs `cmd` with stdout into a pipe, reads one line, closes the read end, and waits.
fn run_into_closed_pipe(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let command = format!("{cmd:?} | head -1");
    let mut child = cmd.spawn().expect("spawn binary");
    let mut first = String::new();
    {
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        reader.read_line(&mut first).expect("read the first line");
    }
    let mut output = child.wait_with_output().expect("wait for binary");
    output.stdout = first.into_bytes();
    Run { command, output }
}

/// The same command runs to the end when read in full, and prints more than a pipe holds.
#[track_caller]
fn assert_closed_pipe_is_a_normal_exit(full: Run, closed: Run) {
    full.expect_code(0);
    assert!(
        full.output.stdout.len() > MORE_THAN_A_PIPE_HOLDS,
        "too little output to fill a pipe\n{full}"
    );
    closed.expect_code(0);
    assert!(!closed.stdout().is_empty(), "{closed}");
    let stderr = closed.stderr();
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{closed}");
}

/// A task file with one task and a history of thousands of manual runs of it.
fn task_with_a_long_history(scratch: &Scratch) -> std::path::PathBuf {
    let config =
        scratch.config(&format!("tasks:\n  docs:\n    {TRIGGERED}\n    command: ['true']\n"));
    let now = Timestamp::now();
    let mut text = String::new();
    for i in 0..3000 {
        let at = now - SignedDuration::from_mins(5 * (i + 1));
        let end = at + SignedDuration::from_secs(1);
        let run_id = format!("run-{i:05}");
        for record in [
            serde_json::json!({"type": "start", "run_id": run_id, "task": "docs", "at": at.to_string(), "scheduled": null, "trigger": "trigger"}),
            serde_json::json!({"type": "end", "run_id": run_id, "task": "docs", "at": end.to_string(), "status": "success", "exit_code": 0, "duration_ms": 1000, "reason": "all steps succeeded", "stderr_tail": []}),
        ] {
            text.push_str(&record.to_string());
            text.push('\n');
        }
    }
    scratch.write("state/history.jsonl", text);
    config
}

#[test]
fn next_into_a_closed_pipe_exits_0_without_a_broken_pipe_panic() {
    let scratch = Scratch::new();
    let args = ["next", "--schedule", "* * * * *", "-n", "10000"];
    let full = scratch.backupnizza(args).run();
    let closed = run_into_closed_pipe(scratch.backupnizza(args).cmd);
    assert_closed_pipe_is_a_normal_exit(full, closed);
}

#[test]
fn history_into_a_closed_pipe_exits_0_without_a_broken_pipe_panic() {
    let scratch = Scratch::new();
    let config = task_with_a_long_history(&scratch);
    let full = scratch.backupnizza(["history", "-n", "100000", "-c"]).run_with(&config);
    let mut closed = scratch.backupnizza(["history", "-n", "100000", "-c"]);
    closed.cmd.arg(&config);
    let closed = run_into_closed_pipe(closed.cmd);
    assert_closed_pipe_is_a_normal_exit(full, closed);
}

#[test]
fn explain_into_a_closed_pipe_exits_0_without_a_broken_pipe_panic() {
    let scratch = Scratch::new();
    let config = task_with_a_long_history(&scratch);
    let full = scratch.backupnizza(["explain", "docs", "--since", "30d", "-c"]).run_with(&config);
    let mut closed = scratch.backupnizza(["explain", "docs", "--since", "30d", "-c"]);
    closed.cmd.arg(&config);
    let closed = run_into_closed_pipe(closed.cmd);
    assert_closed_pipe_is_a_normal_exit(full, closed);
}

#[test]
fn trigger_asks_the_daemon_whether_the_task_exists_not_the_task_file() {
    let scratch = Scratch::new();
    let config =
        scratch.config(&format!("tasks:\n  started:\n    {TRIGGERED}\n    command: ['true']\n"));
    let _daemon = scratch.start_daemon(&config);
    // The file changes after the daemon read it: the daemon's tasks are the ones that count.
    scratch.config(&format!("tasks:\n  edited:\n    {TRIGGERED}\n    command: ['true']\n"));

    trigger(&scratch, &config, "started", true).expect_code(0);
    let unknown = trigger(&scratch, &config, "edited", false);
    unknown.expect_code(2);
    assert!(unknown.stderr().contains("no task named \"edited\""), "{unknown}");
}
