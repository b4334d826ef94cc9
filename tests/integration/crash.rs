//! Crashes and runaway processes: after SIGKILL of the daemon no
//! task process lives on, the restart records the run as `interrupted` and never runs two
//! copies, and a run ends only when every process it started has ended.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{
    Daemon, Scratch, TRIGGERED, history, libfaketime, offset_to, trigger, wait_until,
};

/// Pids of live processes whose argument list is exactly `argv`.
fn running(argv: &[&str]) -> Vec<u32> {
    let mut want = argv.join("\0").into_bytes();
    want.push(0);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

/// The run id in a process's environment.
fn run_id_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|v| {
        std::str::from_utf8(v.strip_prefix(b"BACKUPNIZZA_RUN_ID=")?).ok().map(str::to_string)
    })
}

/// The daemon's guardian: its child running `backupnizza guard`.
fn guardian_of(daemon: &Daemon) -> u32 {
    let dir = format!("/proc/{}/task", daemon.pid());
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"guard"))
        })
        .expect("the daemon has a guardian process")
}

/// A libfaketime file that makes the clock read `target` now.
fn clock_at(scratch: &Scratch, target: &str) -> PathBuf {
    scratch.write("faketime", offset_to(target.parse().unwrap()))
}

fn sigkill(mut daemon: Daemon) {
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit();
}

fn records_of<'a>(records: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// The hourly task, five seconds before it fires (start-up reads and seals programs); its step is a shell with a child in the
/// background and one in the foreground.
fn hourly(scratch: &Scratch, sleep: &str) -> (PathBuf, PathBuf) {
    let clock = clock_at(scratch, "2030-06-01T01:59:55Z");
    let config = scratch.config(&format!(
        "timezone: UTC
resume_settle: 0s
tasks:
  hourly:
    schedule: '0 * * * *'
    max_lateness: 1h
    on_overlap: skip
    command: [sh, -c, 'sleep {sleep} & sleep {sleep}; wait']
"
    ));
    (config, clock)
}

#[test]
fn after_sigkill_of_the_daemon_no_task_process_lives_on_and_the_restart_runs_it_once_again() {
    let scratch = Scratch::new();
    let sleep = "313.25";
    let (config, clock) = hourly(&scratch, sleep);
    let daemon = scratch.start_daemon_faked(&config, &clock);
    daemon.wait_for("the run's two sleeps", |_| running(&["sleep", sleep]).len() == 2);
    let first_run = run_id_of(running(&["sleep", sleep])[0]).unwrap();
    sigkill(daemon);
    // The leader got SIGINT as its parent died; the guardian stops the rest of the group (a
    // background job of a shell ignores SIGINT, so it takes the SIGTERM after 10 s).
    wait_until("no task process left", || running(&["sleep", sleep]).is_empty());

    let daemon = scratch.start_daemon_faked(&config, &clock);
    let log = daemon
        .wait_for("the rerun", |l| l.contains("running the interrupted occurrence once again"));
    assert!(log.contains("no process of it was left"), "{log}");
    wait_until("the rerun's sleeps", || running(&["sleep", sleep]).len() == 2);
    let pids = running(&["sleep", sleep]);
    assert!(pids.iter().all(|p| run_id_of(*p).as_deref() != Some(first_run.as_str())));

    // Records are written by the history thread, which may lag behind the processes.
    wait_until("the rerun's start record", || records_of(&history(&scratch), "start").len() >= 2);
    let records = history(&scratch);
    let ends = records_of(&records, "end");
    let interrupted: Vec<_> = ends.iter().filter(|e| e["run_id"] == first_run.as_str()).collect();
    assert_eq!(interrupted.len(), 1, "{records:#?}");
    assert_eq!(interrupted[0]["status"], "interrupted");
    let starts = records_of(&records, "start");
    assert_eq!(starts.len(), 2, "one start per run, no second copy\n{records:#?}");
    assert_eq!(starts[1]["trigger"], "catch_up");
    assert_eq!(starts[1]["scheduled"], "2030-06-01T02:00:00+00:00");

    // `history` and `explain` tell it.
    let out = scratch.backupnizza(["history", "-c"]).run_with(&config);
    out.expect_code(0);
    assert!(out.stdout().contains("interrupted"), "{out}");
    let mut explain = scratch.backupnizza(["explain", "hourly", "--since", "1h", "-c"]).cmd;
    explain
        .arg(&config)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1");
    let out = explain.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 interrupted"), "{text}");

    // A trigger while the rerun goes on is refused (on_overlap: skip): never two copies.
    let refused = trigger(&scratch, &config, "hourly", false);
    assert_ne!(refused.code(), Some(0), "{refused}");
    assert!(refused.stderr().contains("still going"), "{refused}");
    assert_eq!(running(&["sleep", sleep]).len(), 2);
    daemon.stop();
    assert!(running(&["sleep", sleep]).is_empty());
}

#[test]
fn leftovers_that_outlived_the_daemon_and_its_guardian_are_stopped_at_restart() {
    for cgroups in ["on", "off"] {
        let scratch = Scratch::new();
        let sleep = if cgroups == "on" { "313.5" } else { "313.75" };
        let (config, clock) = hourly(&scratch, sleep);
        let start = |scratch: &Scratch| {
            scratch.start_daemon_with(&config, |cmd| {
                cmd.env("LD_PRELOAD", libfaketime())
                    .env("FAKETIME_TIMESTAMP_FILE", &clock)
                    .env("FAKETIME_NO_CACHE", "1")
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                    .env("BACKUPNIZZA_CGROUP", cgroups);
            })
        };
        let daemon = start(&scratch);
        daemon.wait_for("the run's two sleeps", |_| running(&["sleep", sleep]).len() == 2);
        let first_run = run_id_of(running(&["sleep", sleep])[0]).unwrap();
        // Both die at once: nothing is left to stop the shell's children.
        let guardian = guardian_of(&daemon);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian as i32), Signal::SIGKILL)
            .unwrap();
        sigkill(daemon);
        std::thread::sleep(Duration::from_millis(500));
        let survivors = running(&["sleep", sleep]);
        assert!(!survivors.is_empty(), "the scenario needs a survivor (cgroups {cgroups})");

        let daemon = start(&scratch);
        let log = daemon.wait_for("the settlement", |l| l.contains("leftover process"));
        assert!(log.contains("stopped without ending this run"), "{log}");
        for pid in survivors {
            wait_until("the old run's processes to go", || {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || run_id_of(pid).as_deref() != Some(first_run.as_str())
            });
        }
        // The record is written by the history thread, which may lag behind the log.
        wait_until("the interrupted record", || {
            records_of(&history(&scratch), "end").iter().any(|e| e["run_id"] == first_run.as_str())
        });
        let records = history(&scratch);
        let end = records_of(&records, "end")
            .into_iter()
            .find(|e| e["run_id"] == first_run.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{records:#?}"));
        assert_eq!(end["status"], "interrupted");
        assert!(end["reason"].as_str().unwrap().contains("leftover process"), "{end}");
        daemon.stop();
        assert!(running(&["sleep", sleep]).is_empty(), "cgroups {cgroups}");
    }
}

#[test]
fn a_run_ends_when_the_500_children_its_main_process_left_have_ended() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:
  many:
    {TRIGGERED}
    command: [sh, -c, 'for i in $(seq 500); do sleep 2.71 & done']
  runaway:
    {TRIGGERED}
    timeout: 3s
    command: [sh, -c, 'for i in $(seq 500); do sleep 271.5 & done']
"
    ));
    let _daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "many", true).expect_code(0);
    assert!(running(&["sleep", "2.71"]).is_empty(), "the run ended before its children");
    let records = history(&scratch);
    let end = records_of(&records, "end")[0];
    assert_eq!(end["status"], "success");
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains("500 processes it left behind ended"), "{reason}");
    assert!(end["duration_ms"].as_u64().unwrap() >= 2700, "{end}");

    let run = trigger(&scratch, &config, "runaway", true);
    assert_ne!(run.code(), Some(0), "{run}");
    assert!(running(&["sleep", "271.5"]).is_empty(), "leftovers outlived the timeout");
    let records = history(&scratch);
    let end = records_of(&records, "end")[1];
    assert_eq!(end["status"], "timeout");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("but the 500 processes it left behind had not; leftovers killed"),
        "{reason}"
    );
}

/// Regression: every run of restic with an `rclone:` repository ended with a note about "the
/// 1 process it left behind" (restic's rclone child, which ends just after restic). A
/// process that ends within a short grace is not left behind; the step still waits for it.
#[test]
fn a_child_that_ends_just_after_its_parent_is_not_reported_left_behind() {
    let scratch = Scratch::new();
    let marker = scratch.path().join("child-ended");
    let config = scratch.config(&format!(
        "tasks:\n  quick:\n    {TRIGGERED}\n    command: [sh, -c, '(sleep 0.3; touch {}) & exit 0']\n",
        marker.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "quick", true).expect_code(0);
    assert!(marker.exists(), "the run ended before its child");
    let records = history(&scratch);
    let end = records_of(&records, "end")[0];
    assert_eq!(end["status"], "success");
    let reason = end["reason"].as_str().unwrap();
    assert!(!reason.contains("left behind"), "{reason}");
    assert!(!daemon.log_text().contains("left behind"), "{}", daemon.log_text());
}

#[test]
fn a_setsid_grandchild_is_part_of_its_run_with_or_without_cgroups() {
    for cgroups in ["on", "off"] {
        let scratch = Scratch::new();
        let (short, long) = if cgroups == "on" { ("2.25", "272.25") } else { ("2.5", "272.5") };
        let config = scratch.config(&format!(
            "tasks:
  escape:
    {TRIGGERED}
    command: [sh, -c, 'setsid sleep {short} &']
  runaway:
    {TRIGGERED}
    timeout: 3s
    command: [sh, -c, 'setsid sleep {long} &']
"
        ));
        let _daemon = scratch.start_daemon_with(&config, |cmd| {
            cmd.env("BACKUPNIZZA_CGROUP", cgroups);
        });
        trigger(&scratch, &config, "escape", true).expect_code(0);
        assert!(running(&["sleep", short]).is_empty(), "cgroups {cgroups}");
        let records = history(&scratch);
        let end = records_of(&records, "end")[0];
        assert!(
            end["reason"].as_str().unwrap().contains("1 process it left behind ended"),
            "cgroups {cgroups}: {end}"
        );
        let run = trigger(&scratch, &config, "runaway", true);
        assert_ne!(run.code(), Some(0), "{run}");
        assert!(running(&["sleep", long]).is_empty(), "cgroups {cgroups}");
        let records = history(&scratch);
        assert_eq!(records_of(&records, "end")[1]["status"], "timeout");
    }
}

/// A restic repository for these tests: initialised, its password a canary in a 0600 file
/// (for a `file:` secret), and 32 MiB of random data to back up, so that a backup uploaded at
/// 512 KiB/s takes about a minute unless it is stopped. (A local repository's uploads are not
/// cancelled: interrupted, restic finishes the packs in flight before it removes its lock.)
struct Repo {
    url: String,
    password: String,
    secret: PathBuf,
    data: PathBuf,
}

impl Repo {
    fn new(scratch: &Scratch, url: String) -> Repo {
        let repo = Repo {
            url,
            password: crate::harness::canary(),
            secret: scratch.path().join("repo-password"),
            data: scratch.path().join("data"),
        };
        let init = repo.restic(&["init", "-q"]);
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        crate::harness::write_private(&repo.secret, repo.password.as_bytes());
        std::fs::create_dir_all(&repo.data).unwrap();
        let mut bytes = vec![0u8; 32 * 1024 * 1024];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        std::fs::write(repo.data.join("big"), bytes).unwrap();
        repo
    }

    /// restic on this repository, as the test (not through the daemon).
    fn restic(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("restic")
            .args(["--no-cache", "-r", &self.url])
            .args(args)
            .env("RESTIC_PASSWORD", &self.password)
            .env("RCLONE_CONFIG", "/dev/null")
            .output()
            .expect("restic is installed (.ci/run installs it)")
    }

    /// `restic list locks`.
    fn locks(&self) -> Vec<String> {
        let out = self.restic(&["list", "locks", "--no-lock"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

#[test]
fn sigkill_during_a_real_restic_backup_leaves_no_restic_and_no_lock() {
    let scratch = Scratch::new();
    let repo = Repo::new(&scratch, scratch.path().join("repo").display().to_string());
    let config = scratch.config(&format!(
        "secrets:
  repo: {{file: {}}}
tasks:
  backup:
    {TRIGGERED}
    kill_grace: 30s
    secrets: [repo]
    env:
      RESTIC_PASSWORD_COMMAND: secretbox get repo
    command: [restic, --no-cache, -r, {}, backup, --pack-size, '4', --limit-upload, '2048', {}]
",
        repo.secret.display(),
        repo.url,
        repo.data.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "backup", false).expect_code(0);
    // restic (0.14 at least) writes its lock file, waits 200 ms, checks for other locks and
    // only then registers the lock for removal at exit: SIGINT inside that window leaves the
    // lock behind with plain restic too. So the crash comes once the lock is a second old.
    // Interrupted, it finishes the 4 MiB packs in flight (about 2 s at 2 MiB/s) before it
    // removes the lock; `kill_grace` gives it that time, the guardian's wait included.
    let lock_dir = Path::new(&repo.url).join("locks");
    wait_until("restic to hold its lock for a second", || {
        std::fs::read_dir(&lock_dir).unwrap().flatten().any(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(1)))
        })
    });
    let data = repo.data.display().to_string();
    let restic = || running_program("restic", &data);
    assert!(restic() > 0);
    sigkill(daemon);
    wait_until("no restic left", || restic() == 0);
    assert!(repo.locks().is_empty(), "restic died holding its lock");

    let daemon = scratch.start_daemon(&config);
    daemon.wait_for("the settlement", |l| l.contains("stopped without ending this run"));
    wait_until("the interrupted record", || {
        records_of(&history(&scratch), "end").iter().any(|e| e["status"] == "interrupted")
    });
    assert!(repo.locks().is_empty());
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    assert!(status.stdout().contains("interrupted"), "{status}");
    // A manual run is not run again by itself: one start only.
    assert_eq!(records_of(&history(&scratch), "start").len(), 1);
    assert_eq!(restic(), 0);
    daemon.stop();
}

/// Regression: SIGINT to the whole group at a timeout killed restic's
/// `rclone:` backend at the same moment, so restic could not remove its lock, and the next
/// prune failed. Now the main process gets SIGINT alone first.
#[test]
fn a_timeout_of_restic_with_an_rclone_backend_leaves_no_lock() {
    let scratch = Scratch::new();
    let repo_dir = scratch.path().join("repo");
    let repo = Repo::new(&scratch, format!("rclone::local:{}", repo_dir.display()));
    let url = &repo.url;
    let config = scratch.config(&format!(
        "secrets:
  repo: {{file: {}}}
tasks:
  backup:
    {TRIGGERED}
    timeout: 4s
    kill_grace: 5s
    secrets: [repo]
    env: &env
      RESTIC_PASSWORD_COMMAND: secretbox get repo
      RCLONE_CONFIG: /dev/null
    command: [restic, --no-cache, -r, '{url}', backup, --limit-upload, '512', {}]
  prune:
    {TRIGGERED}
    secrets: [repo]
    env: *env
    command: [restic, --no-cache, -r, '{url}', prune]
",
        repo.secret.display(),
        repo.data.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "backup", true);
    assert_ne!(run.code(), Some(0), "{run}");
    let records = history(&scratch);
    let end = records_of(&records, "end")[0];
    assert_eq!(end["status"], "timeout", "{end}");
    assert!(end["reason"].as_str().unwrap().contains("SIGINT to the main process"), "{end}");
    assert!(repo.locks().is_empty(), "restic left its lock");
    trigger(&scratch, &config, "prune", true).expect_code(0);
}

/// Regression: a guardian killed alone went unnoticed (nothing logged, not replaced), and
/// once the daemon died too, `sh -c "sleep 300 & sleep 301"` lived on under PID 1 (dash
/// survives the parent-death SIGINT while it waits on a foreground child) until the daemon
/// started again. Now a dead guardian is logged and replaced within a second, and what the
/// daemon leaves is gone within the task's `kill_grace`.
#[test]
fn a_killed_guardian_is_replaced_and_nothing_outlives_the_daemon_past_kill_grace() {
    let scratch = Scratch::new();
    let (bg, fg) = ("300.25", "301.25");
    let config = scratch.config(&format!(
        "tasks:\n  sleepy:\n    {TRIGGERED}\n    kill_grace: 4s\n    command: [sh, -c, 'sleep {bg} & sleep {fg}']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    let first = guardian_of(&daemon);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let log = daemon.wait_for("a new guardian", |l| l.contains("started a new one"));
    let line = log.lines().find(|l| l.contains("the guardian process ended")).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    wait_until("the new guardian", || guardian_of(&daemon) != first);
    trigger(&scratch, &config, "sleepy", false).expect_code(0);
    wait_until("both sleeps", || {
        running(&["sleep", bg]).len() == 1 && running(&["sleep", fg]).len() == 1
    });
    sigkill(daemon);
    // The new guardian stops the whole run: SIGINT, SIGTERM 2 s later for the background
    // job that ignores SIGINT, then SIGKILL at 4 s. The sleeps would last five minutes, so
    // their end within the harness's patience is the guardian's doing (how soon it acts is
    // not asserted: a loaded machine delays signals, not the outcome).
    wait_until("the background sleep to be stopped", || running(&["sleep", bg]).is_empty());
    wait_until("the foreground sleep to be stopped", || running(&["sleep", fg]).is_empty());
}

/// Regression: after the daemon was stopped (SIGSTOP) for two minutes and continued, the
/// socket check's missed ticks ran back to back and the orphan reaper reaped a step's child
/// before the runner could: 3 of 4 catch-up runs were recorded `refused (waiting for the
/// process failed: No child processes)` although `true` had run. A child the runner started
/// is only ever reaped by the runner.
#[test]
fn a_daemon_stopped_for_minutes_records_each_catch_up_run_with_its_real_exit() {
    let scratch = Scratch::new();
    let task = |name: &str| format!("  {name}:\n    schedule: '* * * * *'\n    command: [true]\n");
    let config = scratch.config(&format!(
        "resume_settle: 0s\ntasks:\n{}{}{}{}",
        task("a"),
        task("b"),
        task("c"),
        task("d")
    ));
    let daemon = scratch.start_daemon(&config);
    let ends = || records_of(&history(&scratch), "end").len();
    for _ in 0..2 {
        // Stopped between two minutes' runs, with none in progress: a run the daemon had not
        // yet seen end when it was stopped would make its task's catch-up an overlap, skipped
        // as it should be, and the count below would be short for a reason it does not test.
        wait_until("a quiet moment between two minutes' runs", || {
            let second = jiff::Timestamp::now().as_second().rem_euclid(60);
            let records = history(&scratch);
            (10..40).contains(&second)
                && records_of(&records, "start").len() == records_of(&records, "end").len()
        });
        let before = ends();
        daemon.signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(120));
        daemon.signal(Signal::SIGCONT);
        // Each task missed two occurrences: one catch-up run each.
        wait_until("the four catch-up runs", || ends() >= before + 4);
    }
    let records = history(&scratch);
    let ends = records_of(&records, "end");
    let wrong: Vec<_> =
        ends.iter().filter(|e| e["status"] != "success" || e["exit_code"] != 0).collect();
    assert!(wrong.is_empty(), "runs recorded without their real exit: {wrong:#?}");
    let catch_ups =
        records_of(&records, "start").iter().filter(|s| s["trigger"] == "catch_up").count();
    assert!(catch_ups >= 8, "{catch_ups} catch-up runs\n{records:#?}");
    daemon.stop();
}

/// Regression: with the defaults, 4 of 24 restic runs killed with the daemon left a lock,
/// and `unlock_stale` (off by default) did not help. A task that runs restic now unlocks
/// after any run whose restic did not end by itself.
#[test]
fn restic_killed_with_the_daemon_three_times_leaves_no_lock_after_the_next_run() {
    let scratch = Scratch::new();
    let repo = Repo::new(&scratch, scratch.path().join("repo").display().to_string());
    let config = scratch.config(&format!(
        "secrets:
  repo: {{file: {}}}
tasks:
  backup:
    {TRIGGERED}
    secrets: [repo]
    env:
      RESTIC_PASSWORD_COMMAND: secretbox get repo
    command: [restic, --no-cache, -r, {}, backup, --pack-size, '4', --limit-upload, '2048', {}]
",
        repo.secret.display(),
        repo.url,
        repo.data.display()
    ));
    let lock_dir = Path::new(&repo.url).join("locks");
    let holding = || {
        std::fs::read_dir(&lock_dir).unwrap().flatten().any(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_millis(500)))
        })
    };
    let restic = || running_program("restic", &repo.url);
    for _ in 0..3 {
        let daemon = scratch.start_daemon(&config);
        trigger(&scratch, &config, "backup", false).expect_code(0);
        wait_until("restic to hold a lock", holding);
        sigkill(daemon);
        wait_until("no restic left", || restic() == 0);
    }
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "backup", true);
    run.expect_code(0);
    assert!(repo.locks().is_empty(), "locks left: {:?}", repo.locks());
    let records = history(&scratch);
    let last = records_of(&records, "end").last().copied().cloned().unwrap();
    assert!(last["reason"].as_str().unwrap().contains("restic unlock ran first"), "{last}");
    daemon.stop();
}

/// Regression: at a timeout the first SIGINT went to the step's main process only. With
/// `sh -c '... | restic backup --stdin'` that is the shell; restic then got its SIGINT with
/// its `rclone` backend's, could not remove its lock, and the next prune failed.
#[test]
fn a_timeout_of_restic_inside_a_shell_with_an_rclone_backend_leaves_no_lock() {
    let scratch = Scratch::new();
    let repo_dir = scratch.path().join("repo");
    let repo = Repo::new(&scratch, format!("rclone::local:{}", repo_dir.display()));
    let url = &repo.url;
    let big = repo.data.join("big");
    let config = scratch.config(&format!(
        "secrets:
  repo: {{file: {}}}
tasks:
  backup:
    {TRIGGERED}
    timeout: 4s
    kill_grace: 5s
    secrets: [repo]
    env: &env
      RESTIC_PASSWORD_COMMAND: secretbox get repo
      RCLONE_CONFIG: /dev/null
    command: [sh, -c, 'cat {} | restic --no-cache -r \"{url}\" backup --stdin --limit-upload 512']
  prune:
    {TRIGGERED}
    secrets: [repo]
    env: *env
    command: [restic, --no-cache, -r, '{url}', prune]
",
        repo.secret.display(),
        big.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "backup", true);
    assert_ne!(run.code(), Some(0), "{run}");
    let records = history(&scratch);
    let end = records_of(&records, "end")[0];
    assert_eq!(end["status"], "timeout", "{end}");
    assert!(end["reason"].as_str().unwrap().contains("1 restic process"), "{end}");
    assert!(repo.locks().is_empty(), "restic left its lock");
    trigger(&scratch, &config, "prune", true).expect_code(0);
}

/// How many live processes run `program` (by their `argv[0]`) with `marker` in their
/// arguments (this test's own: other tests run the same programs at the same time).
fn running_program(program: &str, marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|p| p.parse().ok())
                .is_some_and(|pid| crate::harness::program_name(pid) == program)
                && std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
                && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
                })
        })
        .count()
}

/// Regression: a process the kernel's out-of-memory killer ended was recorded as "killed by
/// SIGKILL", as if someone had killed it. The record says out of memory now. The step puts
/// itself in a memory cgroup of the test's (cgroup v1 or v2, as root) limited to 32 MiB and
/// asks for 512 MiB.
#[test]
fn a_step_the_oom_killer_ends_is_recorded_as_out_of_memory() {
    let scratch = Scratch::new();
    let name = format!("bnz-oom-{}", std::process::id());
    let (cgroup, limit) = if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        (Path::new("/sys/fs/cgroup/memory").join(&name), "memory.limit_in_bytes")
    } else {
        let root = Path::new("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        assert!(controllers.contains("memory"), "this test needs a memory cgroup controller");
        (root.join(&name), "memory.max")
    };
    std::fs::create_dir(&cgroup).unwrap();
    let hog = format!(
        "import os; open('{cg}/{limit}', 'w').write(str(32 << 20)); open('{cg}/cgroup.procs', 'w').write(str(os.getpid())); x = bytearray(512 << 20); x[::4096] = b'x' * len(x[::4096])",
        cg = cgroup.display()
    );
    let config = scratch.config(&format!(
        "tasks:\n  hog:\n    {TRIGGERED}\n    command: [python3, -c, \"{hog}\"]\n"
    ));
    let daemon = scratch.start_daemon(&config);
    let run = trigger(&scratch, &config, "hog", true);
    assert_ne!(run.code(), Some(0), "{run}");
    let records = history(&scratch);
    let end = records_of(&records, "end")[0];
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains("killed by SIGKILL (out of memory"), "{end}");
    daemon.stop();
    let _ = std::fs::remove_dir(&cgroup);
}
