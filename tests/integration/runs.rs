//! How the daemon runs tasks: timeouts that stop whole process groups, overlap policies,
//! steps, shutdown, the control commands, and redaction of what tasks print.

use std::time::Duration;

use crate::harness::{Scratch, TRIGGERED, canary, history, trigger, wait_until};

fn records<'a>(all: &'a [serde_json::Value], kind: &str, task: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|r| r["type"] == kind && r["task"] == task).collect()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is as good as gone: it runs nothing and holds nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_timeout_stops_the_whole_process_group_even_a_grandchild_ignoring_sigint() {
    let scratch = Scratch::new();
    // The grandchild ignores SIGINT (restic's polite stop) so SIGTERM must follow.
    let script = "(trap \"\" INT; exec sleep 300) & echo $! > grandchild; wait";
    let config = scratch.config(&format!(
        "tasks:\n  slow:\n    {TRIGGERED}\n    command: [sh, -c, '{script}']\n    timeout: 1s\n"
    ));
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "slow", true);
    run.expect_code(1);
    assert!(run.stdout().contains("timeout"), "{run}");
    let grandchild: i32 =
        std::fs::read_to_string(scratch.path().join("grandchild")).unwrap().trim().parse().unwrap();
    assert!(
        !pid_alive(grandchild),
        "grandchild {grandchild} survived the timeout\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("sent SIGINT to the main process, then SIGINT, then SIGTERM"), "{log}");
    let h = history(&scratch);
    let end = records(&h, "end", "slow");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["status"], "timeout");
}

#[test]
fn overlap_skip_drops_firings_while_a_run_is_going() {
    let scratch = Scratch::new();
    let config = scratch
        .config("tasks:\n  busy:\n    schedule: '@every 1s'\n    command: [sleep, '2.5']\n    on_overlap: skip\n");
    let daemon = scratch.start_daemon(&config);
    daemon.wait_for("a skipped firing", |log| {
        log.contains("the previous run is still going (on_overlap: skip)")
    });
    daemon.wait_for_count("run ended: success", 1);
    drop(daemon);
    let h = history(&scratch);
    let skips = records(&h, "skip", "busy");
    assert!(!skips.is_empty() && skips.iter().all(|s| s["reason"] == "overlap"), "{h:?}");
    // Never two runs at once: every start follows the previous end.
    let mut running = false;
    for r in h.iter().filter(|r| r["task"] == "busy") {
        match r["type"].as_str() {
            Some("start") => {
                assert!(!running, "overlapping runs: {h:?}");
                running = true;
            }
            Some("end") => running = false,
            _ => {}
        }
    }
}

#[test]
fn overlap_queue_runs_one_firing_after_the_current_run() {
    let scratch = Scratch::new();
    let config = scratch
        .config("tasks:\n  busy:\n    schedule: '@every 1s'\n    command: [sleep, '2.5']\n    on_overlap: queue\n");
    let daemon = scratch.start_daemon(&config);
    daemon.wait_for("a queued run to start", |_| {
        history(&scratch).iter().any(|r| r["type"] == "start" && r["trigger"] == "queued")
    });
    daemon.wait_for("a firing skipped because one is already queued", |log| {
        log.contains("one run is already queued")
    });
    drop(daemon);
    let h = history(&scratch);
    let starts = records(&h, "start", "busy");
    let queued = starts.iter().position(|s| s["trigger"] == "queued").unwrap();
    // The queued run started only after the run before it ended.
    let queued_id = &starts[queued]["run_id"];
    let at = h.iter().position(|r| r["type"] == "start" && &r["run_id"] == queued_id).unwrap();
    assert_eq!(
        h[..at].iter().filter(|r| r["type"] == "start").count(),
        h[..at].iter().filter(|r| r["type"] == "end").count(),
        "{h:?}"
    );
}

#[test]
fn a_failing_step_stops_later_steps_unless_it_may_continue() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:
  stop:
    {TRIGGERED}
    steps:
      - command: [touch, first]
      - command: [sh, -c, 'echo step two failed >&2; exit 4']
      - command: [touch, never]
  carry-on:
    {TRIGGERED}
    steps:
      - command: ['false']
        continue_on_error: true
      - command: [touch, after]
  warn:
    {TRIGGERED}
    command: [sh, -c, 'exit 3']
    warning_exit_codes: [3]
"
    ));
    let _daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "stop", true);
    run.expect_code(1);
    assert!(
        run.stdout().contains("exit code 4 (step 2 of 3)")
            && run.stdout().contains("later steps skipped"),
        "{run}"
    );
    assert!(scratch.path().join("first").exists());
    assert!(!scratch.path().join("never").exists());
    let h = history(&scratch);
    let end = records(&h, "end", "stop");
    assert_eq!(end[0]["exit_code"], 4);
    assert_eq!(end[0]["stderr_tail"], serde_json::json!(["step two failed"]));

    let run = trigger(&scratch, &config, "carry-on", true);
    run.expect_code(1);
    assert!(scratch.path().join("after").exists(), "{run}");

    let run = trigger(&scratch, &config, "warn", true);
    run.expect_code(0);
    assert!(run.stdout().contains("warning (exit 3"), "{run}");
}

#[test]
fn sigterm_stops_running_tasks_and_the_daemon_exits_cleanly() {
    let scratch = Scratch::new();
    // Shutdown sends SIGINT first (restic removes its lock on SIGINT), then SIGTERM within
    // shutdown_grace (at 15 s here): the background sleep ignores SIGINT and takes the SIGTERM.
    let script = "trap \"echo task got SIGINT; exit 0\" INT; touch trapped; sleep 300 & wait";
    let config = scratch.config(&format!(
        "shutdown_grace: 20s\ntasks:\n  long:\n    {TRIGGERED}\n    command: [sh, -c, '{script}']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "long", false).expect_code(0);
    daemon.wait_for("the task to set its trap", |_| scratch.path().join("trapped").exists());
    let started = std::time::Instant::now();
    let log_path = daemon.log.clone();
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20), "took longer than shutdown_grace");
    assert!(!scratch.socket().exists(), "socket left behind");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("task got SIGINT"), "{log}");
    let h = history(&scratch);
    assert_eq!(records(&h, "end", "long")[0]["status"], "cancelled");
    assert!(h.iter().any(|r| r["type"] == "daemon" && r["event"] == "stop"));
}

#[test]
fn status_trigger_and_history_talk_to_the_daemon() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  hello:\n    {TRIGGERED}\n    command: [echo, hello]\n  fails:\n    {TRIGGERED}\n    command: ['false']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "hello", true);
    run.expect_code(0);
    assert!(run.stdout().contains("success (exit 0"), "{run}");
    trigger(&scratch, &config, "fails", true).expect_code(1);
    let unknown = trigger(&scratch, &config, "helo", false);
    unknown.expect_code(2);
    assert!(unknown.stderr().contains("did you mean \"hello\""), "{unknown}");

    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    status.expect_code(0);
    let out = status.stdout();
    assert!(out.contains("daemon: running"), "{status}");
    assert!(
        out.lines().any(|l| l.starts_with("hello")
            && l.contains("success")
            && l.contains("2027-01-01T00:00:00+00:00")),
        "{status}"
    );
    assert!(out.lines().any(|l| l.starts_with("fails") && l.contains("failed")), "{status}");
    let json = scratch.backupnizza(["status", "--json", "-c"]).run_with(&config);
    let body: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(body["tokens"]["minted"], 2);

    let history = scratch.backupnizza(["history", "-c"]).run_with(&config);
    history.expect_code(0);
    assert!(history.stdout().lines().any(|l| l.contains("  hello  success  exit 0")), "{history}");
    assert!(history.stdout().lines().any(|l| l.contains("  fails  failed  exit 1")), "{history}");
    let only = scratch.backupnizza(["history", "fails", "-c"]).run_with(&config);
    assert!(!only.stdout().contains("hello"), "{only}");
    drop(daemon);

    // Without the daemon: a clear error, and history still works.
    let down = scratch.backupnizza(["status", "-c"]).run_with(&config);
    down.expect_code(1);
    assert!(down.stderr().contains("is the daemon running"), "{down}");
    scratch.backupnizza(["history", "-c"]).run_with(&config).expect_code(0);
}

/// `schedule: manual` never fires by itself: while an `@every 1s` task fires three times, the
/// manual one has no start record; `trigger --wait` runs it; `status`, `validate` and `next`
/// say it runs only when triggered.
#[test]
fn a_manual_task_never_fires_and_runs_when_triggered() {
    let scratch = Scratch::new();
    let config = scratch.config(
        "tasks:\n  restore:\n    schedule: manual\n    command: [echo, restored]\n  tick:\n    schedule: '@every 1s'\n    command: ['true']\n",
    );
    let validate = scratch.backupnizza(["validate", "-c"]).run_with(&config);
    validate.expect_code(0);
    assert!(validate.stdout().contains("runs only when triggered"), "{validate}");
    let next = scratch.backupnizza(["next", "restore", "-c"]).run_with(&config);
    next.expect_code(0);
    assert!(next.stdout().trim().is_empty(), "{next}");

    let daemon = scratch.start_daemon(&config);
    wait_until("three ticks", || {
        history(&scratch).iter().filter(|r| r["type"] == "end" && r["task"] == "tick").count() >= 3
    });
    assert!(
        !history(&scratch).iter().any(|r| r["task"] == "restore"),
        "the manual task fired by itself"
    );
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    assert!(
        status.stdout().lines().any(|l| l.starts_with("restore") && l.contains("manual (trigger)")),
        "{status}"
    );
    let run = trigger(&scratch, &config, "restore", true);
    run.expect_code(0);
    let starts: Vec<_> = history(&scratch)
        .into_iter()
        .filter(|r| r["type"] == "start" && r["task"] == "restore")
        .collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["trigger"], "trigger", "a run of `backupnizza trigger`");
    assert!(daemon.stop().success());
}

/// Regression: every `schedule: manual` task was warned about at each start ("will not fire
/// in the next 30 years"); it never fires by design.
#[test]
fn a_manual_task_is_not_warned_about_at_start() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  restore:\n    schedule: manual\n    command: ['true']\n  yearly:\n    {TRIGGERED}\n    command: ['true']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    // Tasks are scheduled in the file's order: once `yearly` is, `restore` has been told of.
    let log = daemon.wait_for("the schedule", |l| l.contains("task=yearly"));
    assert!(!log.contains("will not fire"), "{log}");
    assert!(log.contains("manual: runs only when triggered"), "{log}");
    assert!(daemon.stop().success());
}

#[test]
fn tasks_cannot_control_the_daemon() {
    let scratch = Scratch::new();
    let config_path = scratch.path().join("backup.yaml");
    let config = scratch.config(&format!(
        "tasks:\n  sneaky:\n    {TRIGGERED}\n    command: [sh, -c, 'backupnizza trigger other -c {0}; echo rc=$?; backupnizza status -c {0}; echo rc=$?']\n  other:\n    {TRIGGERED}\n    command: [touch, triggered]\n",
        config_path.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "sneaky", true).expect_code(0);
    let log = daemon.log_text();
    assert_eq!(log.matches("rc=1").count(), 2, "{log}");
    assert!(log.contains("tasks may not control the daemon"), "{log}");
    assert!(!scratch.path().join("triggered").exists());
}

/// Regression: an orphan left behind by a task (re-parented when the task exits) is still
/// part of the task, thanks to the daemon being the child subreaper.
#[test]
fn orphans_of_tasks_cannot_control_the_daemon_either() {
    let scratch = Scratch::new();
    let config_path = scratch.path().join("backup.yaml");
    let config = scratch.config(&format!(
        "tasks:\n  orphaner:\n    {TRIGGERED}\n    command: [sh, -c, '(sleep 0.5; backupnizza trigger other -c {0} 2>orphan.err; echo $? > orphan.rc) & exit 0']\n  other:\n    {TRIGGERED}\n    command: [touch, triggered]\n",
        config_path.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "orphaner", true).expect_code(0);
    daemon.wait_for("the orphan's attempt", |_| {
        std::fs::read_to_string(scratch.path().join("orphan.rc")).is_ok_and(|s| s.ends_with('\n'))
    });
    assert_eq!(std::fs::read_to_string(scratch.path().join("orphan.rc")).unwrap().trim(), "1");
    assert!(
        std::fs::read_to_string(scratch.path().join("orphan.err"))
            .unwrap()
            .contains("tasks may not control the daemon")
    );
    assert!(!scratch.path().join("triggered").exists());
}

#[test]
fn secrets_tokens_and_url_passwords_are_redacted_from_task_output() {
    let scratch = Scratch::new();
    let secret = canary();
    let pw = scratch.path().join("pw");
    crate::harness::write_private(&pw, secret.as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:\n  chatty:\n    {TRIGGERED}\n    command: [sh, -c, 'echo \"token $SECRETBOX_TOKEN\"; echo \"repo rest:https://me:hunter2@example.net:8000/x/\"; echo \"pw $(secretbox get repo)\" >&2; exit 1']\n    secrets: [repo]\n  long:\n    {TRIGGERED}\n    command: [cat, long]\n    secrets: [repo]\n",
        pw.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "chatty", true).expect_code(1);
    let log = daemon.wait_for("the output", |l| l.contains("pw ***"));
    // Regression: a secret in a line longer than the log's line limit, right across the cut
    // (the task lists the secret: a task's output is masked with its own secrets).
    let long = format!("{}{secret}{}", "x".repeat(8 * 1024 - 30), "y".repeat(100));
    let long_file = scratch.path().join("long");
    std::fs::write(&long_file, format!("{long}\n")).unwrap();
    assert!(
        log.contains("token bnz1_***") && log.contains("rest:https://me:***@example.net:8000/x/"),
        "{log}"
    );
    assert!(!log.contains("hunter2") && !log.contains(&secret));
    let h = std::fs::read_to_string(scratch.path().join("state/history.jsonl")).unwrap();
    assert!(h.contains("pw ***") && !h.contains(&secret), "{h}");
    trigger(&scratch, &config, "long", true).expect_code(0);
    let log = daemon.wait_for("the long line", |l| l.contains("[cut at 8192 bytes]"));
    assert!(!log.contains(&secret[..25]), "part of the secret leaked at the cut");
}

/// A descriptor the daemon was started with (here fd 9, open on a file
/// holding a canary, not close-on-exec, as a careless parent leaves it) reaches no task.
/// The task's descriptors are read from outside, in `/proc`.
#[test]
fn a_task_sees_only_stdin_stdout_and_stderr() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new();
    let leaked = scratch.write("parent-secret", canary());
    let config = scratch.config(&format!(
        "tasks:\n  fds:\n    {TRIGGERED}\n    timeout: 30s\n    command: [sleep, '29.125']\n"
    ));
    let file = std::fs::File::open(&leaked).unwrap();
    let raw = file.as_raw_fd();
    let daemon = scratch.start_daemon_with(&config, move |cmd| {
        // SAFETY: dup2 is async-signal-safe; `raw` stays open in the test until spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    drop(file);
    let daemon_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !daemon_fds.iter().any(|p| p.contains("parent-secret")),
        "the daemon kept the inherited descriptor: {daemon_fds:?}"
    );
    trigger(&scratch, &config, "fds", false).expect_code(0);
    let want = b"sleep\x0029.125\x00".to_vec();
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    let pid = loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .find(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want));
        if let Some(entry) = found {
            break entry.file_name().to_string_lossy().into_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the task did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2], "the task inherited more than stdio");
    daemon.stop();
}

/// A value's forms as a formatter may write them: raw, JSON (serde_json, minus the quotes),
/// JSON with non-ASCII as `\uXXXX` (Python's default), and Rust's `{:?}`.
fn written_forms(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).unwrap();
    let json = json[1..json.len() - 1].to_string();
    let mut ascii = String::new();
    for c in json.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    let debug = format!("{value:?}");
    vec![value.to_string(), json, ascii, debug[1..debug.len() - 1].to_string()]
}

/// Regression: with `log: {format: json}` a secret holding `"` or `\` reached the
/// log, because masking ran on the line after JSON had escaped them; a `command:` source's
/// stderr went the same way. The secrets here hold quotes, a backslash, a tab, a newline and
/// non-ASCII; a task prints one raw and in its escaped forms, whole and line by line, on
/// stdout and stderr, and a secret command echoes its value on stderr. Neither log format,
/// the history, the output file, the webhook nor the metrics file may hold any form of any
/// line, and the task still gets its secret (it proves so with a digest).
#[test]
fn secrets_with_quotes_backslashes_and_newlines_are_masked_in_every_format() {
    for format in ["json", "text"] {
        let scratch = Scratch::new();
        let sink = crate::home::HttpSink::start();
        let (one, two, three, four) = (canary(), canary(), canary(), canary());
        let secret = format!("{one}\"quote\\back\ttab é🔑\nsecond-{two}");
        let said = format!("{three}'said\"\\ 🔑\nits-own-{four}");
        crate::harness::write_private(&scratch.path().join("pw"), secret.as_bytes());
        scratch.write("said", format!("{said}\n"));
        let mut shown = Vec::new();
        for text in [secret.as_str(), secret.lines().next().unwrap()] {
            shown.extend(written_forms(text));
        }
        scratch.write("forms", shown.join("\n") + "\n");
        let config = scratch.config(&format!(
            "log: {{format: {format}}}\nmetrics_textfile: {metrics}\nsecrets:\n  pw: {{file: {pw}}}\n  said: {{command: [sh, -c, 'cat {dir}/said; cat {dir}/said >&2']}}\ntasks:\n  leaky:\n    {TRIGGERED}\n    secrets: [pw]\n    output_file: out.log\n    notify: {{webhook: {url}/hook, send_logs: true}}\n    command: [sh, -c, 'v=$(secretbox get pw) || exit 9; printf \"%s\\n\" \"$v\"; printf \"%s\\n\" \"$v\" >&2; cat {dir}/forms; cat {dir}/forms >&2; echo \"digest $(printf %s \"$v\" | sha256sum)\"; exit 1']\n",
            metrics = scratch.path().join("metrics.prom").display(),
            pw = scratch.path().join("pw").display(),
            url = sink.url,
            dir = scratch.path().display(),
        ));
        let daemon = scratch.start_daemon(&config);
        trigger(&scratch, &config, "leaky", true).expect_code(1);
        let log = daemon.wait_for("the run's end", |l| l.contains("run ended"));
        let requests = sink.wait_for(2);
        assert!(daemon.stop().success());
        // The legitimate path: the task got the exact value through secretbox.
        let digest = crate::harness::sha256_hex(secret.as_bytes());
        assert!(log.contains(&format!("digest {digest}")), "{format}: no digest\n{log}");
        assert!(log.contains("secret command said: ***"), "{format}: the command's stderr\n{log}");
        let history = std::fs::read_to_string(scratch.path().join("state/history.jsonl")).unwrap();
        let end = records(&crate::harness::history(&scratch), "end", "leaky")[0].clone();
        let tail = end["stderr_tail"].as_array().unwrap();
        assert!(tail.len() >= 5 && tail.iter().all(|l| l == "***"), "{format}: {end}");
        let webhook = requests
            .iter()
            .map(|(_, _, body)| String::from_utf8_lossy(body).into_owned())
            .find(|b| b.contains("\"event\":\"end\""))
            .unwrap_or_else(|| panic!("{format}: no end webhook: {requests:?}"));
        assert!(webhook.contains("\"stderr_tail\":[\"***\""), "{format}: {webhook}");
        let places = [
            ("log", log),
            ("history", history),
            ("output file", std::fs::read_to_string(scratch.path().join("state/out.log")).unwrap()),
            ("webhook", webhook),
            ("metrics", std::fs::read_to_string(scratch.path().join("metrics.prom")).unwrap()),
        ];
        let mut forbidden = Vec::new();
        for value in [&secret, &said] {
            for line in value.lines() {
                forbidden.extend(written_forms(line));
            }
            forbidden.extend(written_forms(value));
        }
        for (place, text) in &places {
            for needle in &forbidden {
                assert!(
                    !text.contains(needle.as_str()),
                    "{format}: {place} holds {needle:?}\n{text}"
                );
            }
            // No fragment either: each line carries a canary no mask leaves behind.
            for canary in [&one, &two, &three, &four] {
                assert!(!text.contains(&canary[7..]), "{format}: {place} holds part of a line");
            }
        }
    }
}

/// A hook written as a plain command gets no token (nor the socket), so
/// `secretbox get` fails there with exit 3; a hook in the map form gets a token for exactly
/// the secrets it lists, and is refused the task's others.
#[test]
fn hooks_get_a_token_only_for_the_secrets_they_list() {
    use backupnizza::protocol::exit;
    let scratch = Scratch::new();
    let (repo, cloud) = (canary(), canary());
    for (file, value) in [("repo.pw", &repo), ("cloud.pw", &cloud)] {
        crate::harness::write_private(&scratch.path().join(file), value.as_bytes());
    }
    // `$N` hides the names from validate, which would (rightly) reject these uses up front.
    let plain =
        "env > plain.env; N=repo; secretbox get $N > plain.out 2> plain.err; echo $? > plain.rc";
    // The refused name first: a token whose whole scope is used up answers `used` to anything.
    let map = "env > map.env; N=repo; secretbox get $N > other.out 2> other.err; echo $? > other.rc; N=cloud; secretbox get --no-newline $N > map.out";
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\n  cloud: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: ['true']\n    secrets: [repo, cloud]\n    hooks:\n      before: [sh, -c, '{plain}']\n      after: {{command: [sh, -c, '{map}'], secrets: [cloud]}}\n",
        scratch.path().join("repo.pw").display(),
        scratch.path().join("cloud.pw").display(),
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", true).expect_code(0);
    let read = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_default();
    let log = daemon.log_text();

    let env = read("plain.env");
    assert!(env.contains("BACKUPNIZZA_HOOK=before"), "{env}");
    assert!(!env.contains("SECRETBOX_TOKEN") && !env.contains("SECRETBOX_SOCKET"), "{env}");
    assert_eq!(read("plain.rc").trim(), exit::NO_TOKEN.to_string(), "{}\n{log}", read("plain.err"));
    assert!(read("plain.out").is_empty());
    assert!(
        read("plain.err").contains("the before hook lists no secrets"),
        "{}",
        read("plain.err")
    );

    assert!(read("map.env").contains("SECRETBOX_TOKEN=bnz1_"));
    assert_eq!(read("map.out"), cloud, "{log}");
    assert_eq!(read("other.rc").trim(), exit::NOT_IN_SCOPE.to_string(), "{}", read("other.err"));
    assert!(read("other.out").is_empty());
    assert!(log.contains("started process without a token"), "{log}");
}
