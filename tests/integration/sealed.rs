//! The user service, where the daemon and every other process of the user share one uid:
//! a running backup cannot be read by those other processes, because the daemon runs the
//! task's programs and `secretbox` from execute-only sealed images, which the kernel makes
//! non-dumpable (issue 29).
//!
//! The daemon runs as an unprivileged uid (root may read anything, so root's processes are
//! never non-dumpable), with a `file:` canary as the repository password, and real restic
//! (the one first on `PATH`: CI runs this module with restic 0.14 and again with 0.18). The
//! attacker is `sealed/attacker.py`, run as the same uid by the test, not by the daemon:
//! it reads every `/proc` file of restic and of each `secretbox` it catches, stops them
//! first, opens their descriptors, tries their memory and attaches gdb. A task with
//! `seal: false` is the control: the same attacker reads its restic's token.
//!
//! Root only (CI runs as root): it runs processes as a uid nobody else uses.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness::{Scratch, TRIGGERED, canary, chown_tree, history, wait_until, write_private};

/// The daemon's user and what it owns: its binaries, a repository, a canary password.
struct User {
    scratch: Scratch,
    uid: u32,
    bin: PathBuf,
    repo: PathBuf,
    password_file: PathBuf,
    password: String,
    config: PathBuf,
}

impl User {
    fn new() -> User {
        let scratch = Scratch::new();
        let uid = crate::system::free_uid(62_700);
        let bin = scratch.bin_as_user(uid);
        crate::harness::copy_program(crate::harness::on_path("restic"), bin.join("restic"));
        crate::harness::copy_program(crate::harness::on_path("rclone"), bin.join("rclone"));
        let dir = scratch.path().to_path_buf();
        let password = canary();
        let password_file = dir.join("repo-password");
        write_private(&password_file, password.as_bytes());
        let repo = dir.join("repo");
        let env = format!(
            "    env:\n      PATH: {bin}:/usr/bin:/bin\n      RESTIC_REPOSITORY: {repo}\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RESTIC_CACHE_DIR: {dir}/cache\n    secrets: [repo]\n",
            bin = bin.display(),
            repo = repo.display(),
            dir = dir.display()
        );
        // restic waits on its input for seconds after it read its password: long enough for
        // the attacker to try everything on it while it holds the password.
        let backup = "    pipeline:\n      - [sh, -c, 'sleep 3; echo data']\n      - [restic, backup, --host, testhost, --stdin, --stdin-filename, data.txt]\n";
        // The same, on restic's rclone: backend (rclone serving a local directory).
        let remote_env = env.replace(
            &format!("RESTIC_REPOSITORY: {}", repo.display()),
            &format!(
                "RESTIC_REPOSITORY: 'rclone:{}/remote'\n      RCLONE_CONFIG: {}/rclone.conf",
                dir.display(),
                dir.display()
            ),
        );
        let config = scratch.config(&format!(
            "secrets:\n  repo: {{file: {pw}}}\ntasks:\n  init:\n    {TRIGGERED}\n    command: [restic, init]\n{env}  backup:\n    {TRIGGERED}\n{backup}{env}  open:\n    {TRIGGERED}\n    seal: false\n{backup}{env}  remote-init:\n    {TRIGGERED}\n    command: [restic, init]\n{remote_env}  remote:\n    {TRIGGERED}\n{backup}{remote_env}  holder:\n    {TRIGGERED}\n    command: [sh, -c, 'sleep 5.375']\n{env}",
            pw = password_file.display(),
        ));
        chown_tree(scratch.path(), uid, uid);
        User { scratch, uid, bin, repo, password_file, password, config }
    }

    /// PROGRAM ARGS... as the daemon's user.
    fn run_as(&self, program: &Path, args: &[&str]) -> Output {
        self.scratch
            .command("setpriv")
            .args(crate::harness::plain_user(self.uid))
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .unwrap()
    }

    fn trigger(&self, task: &str) {
        let config = self.config.to_str().unwrap();
        let out = self.run_as(&self.bin.join("backupnizza"), &["trigger", task, "-c", config]);
        assert!(out.status.success(), "trigger {task}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits for the `n`th end record of `task` and returns it.
    fn end(&self, task: &str, n: usize) -> serde_json::Value {
        let ends = || -> Vec<serde_json::Value> {
            history(&self.scratch)
                .into_iter()
                .filter(|r| r["type"] == "end" && r["task"] == task)
                .collect()
        };
        wait_until(&format!("run {n} of {task} to end"), || ends().len() >= n);
        ends()[n - 1].clone()
    }

    /// The attacker: started as the daemon's user by the test (not a descendant of the
    /// daemon), looking for every needle in all it reads.
    fn attacker(&self, daemon: u32, needles: &[&str]) -> Attacker {
        let script = self.scratch.path().join("attacker.py");
        std::fs::write(&script, include_str!("sealed/attacker.py")).unwrap();
        let report = self.scratch.path().join(format!("report-{}.json", canary()));
        let stop = self.scratch.path().join(format!("stop-{}", canary()));
        let child = self
            .scratch
            .command("setpriv")
            .args(crate::harness::plain_user(self.uid))
            .args(["--", "/usr/bin/python3"])
            .arg(&script)
            .arg(&report)
            .arg(&stop)
            .arg(daemon.to_string())
            .args(needles)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut ready = report.clone().into_os_string();
        ready.push(".ready");
        wait_until("the attacker", || Path::new(&ready).exists());
        Attacker { child, report, stop }
    }

    /// The snapshots in the repository, as restic lists them (read as root).
    fn snapshots(&self) -> usize {
        let out = std::process::Command::new(crate::harness::on_path("restic"))
            .args(["snapshots", "--json", "--no-cache", "-r"])
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len()
    }
}

struct Attacker {
    child: std::process::Child,
    report: PathBuf,
    stop: PathBuf,
}

impl Attacker {
    fn finish(mut self) -> serde_json::Value {
        std::fs::write(&self.stop, "").unwrap();
        assert!(self.child.wait().unwrap().success(), "the attacker failed");
        serde_json::from_slice(&std::fs::read(&self.report).unwrap()).unwrap()
    }
}

/// What the attacker got of each process whose name contains `name`: `what` → outcome.
fn outcomes(report: &serde_json::Value, name: &str, what: &str) -> Vec<String> {
    report["processes"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains(name))
        .filter_map(|(_, v)| v[what].as_str().map(str::to_string))
        .collect()
}

/// Must show, lines 1-3 and 5: over three backups, the attacker (same uid, not below the
/// daemon) is refused restic's environment, descriptors (restic stopped first), maps,
/// memory and ptrace, and those of every `secretbox` it catches; the canary never reaches
/// it; and every backup is in the repository. Its control reads its own child's
/// environment, and the token from the environment of a `seal: false` task's restic.
#[test]
fn a_process_of_the_same_user_cannot_read_a_running_backup_or_its_password() {
    if crate::system::skip_unless_root() {
        return;
    }
    let user = User::new();
    let daemon = user.scratch.start_daemon_full(&user.config, Some(user.uid), |_| {});
    let log = daemon
        .wait_for("the sealed secretbox", |l| l.contains("tasks run secretbox from a sealed"));
    assert!(!log.contains("cannot seal"), "{log}");
    user.trigger("init");
    assert_eq!(user.end("init", 1)["status"], "success");

    let attacker = user.attacker(daemon.pid(), &[&user.password]);
    for n in 1..=3 {
        user.trigger("backup");
        let end = user.end("backup", n);
        assert_eq!(end["status"], "success", "{end}");
    }
    let report = attacker.finish();
    eprintln!("what the attacker got: {report:#}");
    for line in daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("started process") || l.contains("run ended"))
    {
        eprintln!("{line}");
    }
    assert_eq!(report["control_environ"], true, "the attacker cannot read its own child: {report}");
    assert_eq!(report["found"], serde_json::json!([]), "the attacker got the password: {report}");
    for what in ["environ", "fd", "maps", "mem"] {
        let got = outcomes(&report, "restic", what);
        // The attacker polls /proc and spends a second or two on each restic (gdb): it
        // attacks most of the three, and must attack at least two.
        assert!(got.len() >= 2, "the attacker attacked fewer than two restic processes: {report}");
        let refused = |o: &String| o == "Permission denied" || o == "ended";
        assert!(got.iter().all(refused), "restic's {what}: {got:?}\n{report}");
        // And each `secretbox` restic started for its password that the attacker caught:
        // it polls /proc for restic's new children and stops one as soon as it has
        // executed, but a secretbox lives for milliseconds, so it is often gone first.
        let got = outcomes(&report, "/proc/self/fd/", what);
        assert!(got.iter().all(refused), "secretbox's {what}: {got:?}\n{report}");
    }
    // gdb never attaches: refused (or restic was gone by the time gdb tried).
    let gdb: Vec<&str> =
        report["gdb"].as_array().unwrap().iter().filter_map(|g| g.as_str()).collect();
    assert!(gdb.iter().any(|g| g.contains("ptrace: Operation not permitted")), "{gdb:?}");
    assert!(
        gdb.iter().all(|g| g.contains("ptrace: Operation not permitted")
            || g.contains("ptrace: No such process")),
        "{gdb:?}"
    );
    // The arguments are the kernel's to show to anyone: they hold no secret.
    assert!(outcomes(&report, "restic", "cmdline").iter().all(|o| o == "read"), "{report}");
    assert_eq!(user.snapshots(), 3);

    // restic's rclone: backend runs sealed too: the attacker catches it among restic's
    // children and is refused its environment (which holds the token) and the rest.
    user.trigger("remote-init");
    let end = user.end("remote-init", 1);
    assert_eq!(end["status"], "success", "{end}");
    // (A poller can miss a child that lives briefly: up to three runs, each attacked.)
    for n in 1..=3 {
        let attacker = user.attacker(daemon.pid(), &[&user.password, "SECRETBOX_TOKEN="]);
        user.trigger("remote");
        let end = user.end("remote", n);
        assert_eq!(end["status"], "success", "{end}");
        let report = attacker.finish();
        eprintln!("what the attacker got of the rclone: backup: {report:#}");
        assert_eq!(report["found"], serde_json::json!([]), "{report}");
        let refused = |o: &String| o == "Permission denied" || o == "ended";
        // Every process caught (restic, its rclone, a secretbox): refused.
        for what in ["environ", "fd", "maps", "mem"] {
            let got = outcomes(&report, " ", what);
            assert!(got.iter().all(refused), "{what}: {report}");
        }
        let caught = outcomes(&report, "rclone ", "environ");
        if !caught.is_empty() {
            break;
        }
        assert!(n < 3, "the attacker never caught restic's rclone: {report}");
    }

    // The control: the same attacker against a task that does not seal gets its token and
    // attaches gdb (a poller can miss a process: up to three tries).
    let mut report = serde_json::Value::Null;
    for n in 1..=3 {
        let attacker = user.attacker(daemon.pid(), &["SECRETBOX_TOKEN="]);
        user.trigger("open");
        assert_eq!(user.end("open", n)["status"], "success");
        report = attacker.finish();
        if !report["processes"].as_object().unwrap().is_empty() {
            break;
        }
    }
    let found = report["found"].as_array().unwrap();
    assert!(found.iter().any(|f| f == "restic environ"), "the control read no token: {report}");
    assert!(outcomes(&report, "restic", "fd").iter().any(|o| o == "read"), "{report}");
    let gdb = report["gdb"].as_array().unwrap();
    assert!(gdb.iter().any(|g| g.as_str().unwrap().contains("detached")), "{report}");
}

/// Must show, line 4: a process of the user swaps the `secretbox` beside the daemon for a
/// wrapper that runs the genuine one and keeps what it prints. The tasks' password commands
/// run the sealed image, not the file: the wrapper never runs, and the backups succeed.
#[test]
fn a_wrapper_swapped_in_for_secretbox_gets_nothing_and_the_backups_succeed() {
    if crate::system::skip_unless_root() {
        return;
    }
    let user = User::new();
    let _daemon = user.scratch.start_daemon_full(&user.config, Some(user.uid), |_| {});
    let stolen = user.scratch.path().join("stolen");
    let secretbox = user.bin.join("secretbox");
    let swap = format!(
        "mv {sb} {sb}.real && printf '#!/bin/sh\\necho ran >> {st}\\n{sb}.real \"$@\" | tee -a {st}\\n' > {sb} && chmod 755 {sb}",
        sb = secretbox.display(),
        st = stolen.display()
    );
    let out = user.run_as(Path::new("/bin/sh"), &["-c", &swap]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The wrapper works: run by hand it does run (and, with no token, gets nothing).
    let _ = user.run_as(&secretbox, &["get", "repo"]);
    assert_eq!(std::fs::read_to_string(&stolen).unwrap_or_default(), "ran\n");
    std::fs::remove_file(&stolen).unwrap();

    user.trigger("init");
    assert_eq!(user.end("init", 1)["status"], "success");
    for n in 1..=3 {
        user.trigger("backup");
        let end = user.end("backup", n);
        assert_eq!(end["status"], "success", "{end}");
    }
    assert!(!stolen.exists(), "the wrapper ran: {:?}", std::fs::read_to_string(&stolen));
    assert_eq!(user.snapshots(), 3);
    assert!(!user.password.is_empty());
}

/// The sealed copy's owner is the daemon's uid: a process of that uid that reaches its
/// descriptor through a dumpable holder (here the `sleep` a sealed `sh` started, which
/// inherited it) can make it readable and read it. The daemon notices at the next run, no
/// longer counts the copy's key, runs `secretbox` from disk instead, and the backup still
/// succeeds.
#[test]
fn a_sealed_copy_made_readable_is_noticed_and_no_longer_used() {
    if crate::system::skip_unless_root() {
        return;
    }
    let user = User::new();
    let daemon = user.scratch.start_daemon_full(&user.config, Some(user.uid), |_| {});
    user.trigger("init");
    assert_eq!(user.end("init", 1)["status"], "success");
    user.trigger("holder");
    // The holder: the `sleep` (from disk, dumpable) below the task's sealed `sh`.
    let find = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (cmdline == b"sleep\x005.375\x00").then_some(pid)
        })
    };
    wait_until("the holder's sleep", || find().is_some());
    let holder = find().unwrap();
    let fd = std::fs::read_dir(format!("/proc/{holder}/fd"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("memfd:secretbox"))
        })
        .map(|e| e.path())
        .expect("the sleep inherited the sealed secretbox");
    // The attack, as the daemon's user: chmod through the descriptor's path, then read.
    let attack = format!("chmod 700 {p} && head -c 4 {p} | od -c | head -1", p = fd.display());
    let out = user.run_as(Path::new("/bin/sh"), &["-c", &attack]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("177   E   L   F"), "{out:?}");
    assert_eq!(user.end("holder", 1)["status"], "success");
    // The next backup: the daemon says so, and the backup runs secretbox from disk.
    user.trigger("backup");
    let end = user.end("backup", 1);
    assert_eq!(end["status"], "success", "{end}");
    let log =
        daemon.wait_for("the notice", |l| l.contains("sealed copy of secretbox was made readable"));
    assert!(!log.contains(&user.password), "{log}");
    assert_eq!(user.snapshots(), 1);
}
