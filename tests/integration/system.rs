//! System mode: the daemon runs as a dedicated uid, the desktop user is
//! another, and a `control_group:` decides who besides the daemon's own user may ask for
//! status and trigger runs. The attacks a process of the desktop user could play against a
//! daemon of its own uid (read the task's `/proc/PID/environ` and `/proc/PID/fd`, stop it,
//! redeem a token, drive the control routes) are replayed from another uid and all fail,
//! while a member of the group still controls the daemon; and a real restic backup of the
//! desktop user's 0700 directory, readable only through `CAP_DAC_READ_SEARCH`, goes to an
//! append-only `rclone serve restic` and restores byte for byte.
//!
//! The clients find such a daemon at `/run/backupnizza/secretbox.sock` with no `--socket`,
//! and its members read its history over the socket.
//!
//! Root only (CI runs as root): the test makes a group with `groupadd` (removed by a guard,
//! even when an assertion fails) and starts processes as uids nobody else uses.

use std::path::Path;
use std::process::{Command, Output};

use backupnizza::protocol::exit;

use crate::harness::{Scratch, TRIGGERED, canary, chown_tree, history, wait_until, write_private};
use crate::restic::RestServer;

/// A group made for one test with `groupadd`, removed with `groupdel` when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> TempGroup {
        // Group names are at most 32 bytes; the canary's tail keeps them unique.
        let tail: String = canary().chars().rev().take(10).collect();
        let name = format!("bnzctl-{tail}").to_lowercase();
        let out = Command::new("groupadd").arg(&name).output().expect("groupadd is installed");
        assert!(out.status.success(), "groupadd {name}: {}", String::from_utf8_lossy(&out.stderr));
        // From here on the guard owns the group, whatever fails next.
        let mut group = TempGroup { name, gid: 0 };
        group.gid = nix::unistd::Group::from_name(&group.name)
            .unwrap()
            .expect("the group just added")
            .gid
            .as_raw();
        group
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// A uid from `from` up that no account and no running process has.
pub(crate) fn free_uid(from: u32) -> u32 {
    let busy = |uid: u32| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().is_some()
            || std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                use std::os::unix::fs::MetadataExt;
                e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())
                    && e.metadata().is_ok_and(|m| m.uid() == uid)
            })
    };
    (from..from + 1000).find(|u| !busy(*u)).expect("a free uid")
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives the scratch directory to the dedicated user `uid`, as /etc/backupnizza and /usr/bin
/// are set up for it: it owns its files, the others may read the task file and run the
/// binaries. Returns the directory of binaries that user can run.
fn hand_to_dedicated_user(scratch: &Scratch, config: &Path, uid: u32) -> std::path::PathBuf {
    let bin = scratch.bin_as_user(uid);
    chown_tree(scratch.path(), uid, uid);
    chmod(scratch.path(), 0o755);
    chmod(config, 0o644);
    bin
}

/// `setpriv` credentials: `uid`, primary group `gid`, exactly the supplementary `groups`.
fn creds(uid: u32, gid: u32, groups: &[u32]) -> Vec<String> {
    let mut args = vec![format!("--reuid={uid}"), format!("--regid={gid}")];
    if groups.is_empty() {
        args.push("--clear-groups".into());
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        args.push(format!("--groups={}", list.join(",")));
    }
    args
}

/// PROGRAM ARGS... run through `setpriv CREDS --`, with the harness's environment.
fn run_as(scratch: &Scratch, creds: &[String], program: &Path, args: &[&str]) -> Output {
    scratch.command("setpriv").args(creds).arg("--").arg(program).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!("status {}\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr))
}

/// The `KEY=value` pairs of a process's environment (read as root).
fn environ(pid: u32) -> Vec<(String, String)> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| text(kv).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The running task process below `daemon` that holds a token: the task's `sh`, not one
/// of the short-lived `sleep`s it starts (they inherit the token, and one picked here could
/// be gone by the time the test reads its `/proc` entry).
fn task_process(daemon: u32) -> (u32, Vec<(String, String)>) {
    let find = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            if !backupnizza::broker::peer::descends_from(pid, daemon)
                || crate::harness::program_name(pid) != "sh"
            {
                return None;
            }
            let env = environ(pid);
            env.iter().any(|(k, _)| k == "SECRETBOX_TOKEN").then_some((pid, env))
        })
    };
    wait_until("the task process", || find().is_some());
    find().unwrap()
}

pub(crate) fn skip_unless_root() -> bool {
    if nix::unistd::getuid().is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED: needs root to create a group and run processes as other uids (CI runs as root)"
    );
    true
}

/// Must show, line 1: against a daemon of a dedicated uid, a process of the desktop user
/// (another uid, not in `control_group:`) cannot read the task's environment or descriptors,
/// cannot stop it, gets no secret with any token (not even the task's own, leaked), and
/// cannot reach the control routes; a uid in the group redeeming the leaked token is refused
/// too; root outside the group reaches the socket but the server refuses it; a member runs
/// `status` and `trigger --wait`; and the task, afterwards, still redeems its token.
#[test]
fn another_uid_cannot_reach_the_task_or_its_secrets_while_the_control_group_can_control() {
    if skip_unless_root() {
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_100);
    let desktop = free_uid(daemon_uid + 1);
    let member = free_uid(desktop + 1);
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let password = canary();
    write_private(&dir.join("pw"), password.as_bytes());
    let d = dir.display();
    let config = scratch.config(&format!(
        "control_group: {g}\nsecrets:\n  repo: {{file: {d}/pw}}\ntasks:\n  held:\n    {TRIGGERED}\n    secrets: [repo]\n    command: [sh, -c, 'while [ ! -e {d}/go ]; do sleep 0.05; done; secretbox get repo > {d}/out 2> {d}/err; echo $? > {d}/rc']\n  quick:\n    {TRIGGERED}\n    command: ['true']\n",
        g = group.name
    ));
    let bin = hand_to_dedicated_user(&scratch, &config, daemon_uid);
    let daemon_creds = creds(daemon_uid, group.gid, &[]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &daemon_creds)), |_| {});

    // The socket is exactly the group's: directory 0750, socket 0660.
    {
        use std::os::unix::fs::MetadataExt;
        let socket = std::fs::symlink_metadata(scratch.socket()).unwrap();
        let run = std::fs::symlink_metadata(scratch.socket().parent().unwrap()).unwrap();
        assert_eq!((run.mode() & 0o777, run.gid(), run.uid()), (0o750, group.gid, daemon_uid));
        assert_eq!((socket.mode() & 0o777, socket.gid()), (0o660, group.gid));
    }

    let member_creds = creds(member, member, &[group.gid]);
    let desktop_creds = creds(desktop, desktop, &[]);
    let backupnizza = bin.join("backupnizza");
    let config_arg = config.to_str().unwrap();
    let triggered =
        run_as(&scratch, &member_creds, &backupnizza, &["trigger", "held", "-c", config_arg]);
    assert!(triggered.status.success(), "member trigger: {}", show(&triggered));
    let (pid, env) = task_process(daemon.pid());
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    let (token, socket, daemon_id) =
        (get("SECRETBOX_TOKEN"), get("SECRETBOX_SOCKET"), get("SECRETBOX_DAEMON"));

    // The same-uid attacks, from the desktop user's uid.
    let sh =
        |creds: &[String], script: &str| run_as(&scratch, creds, Path::new("sh"), &["-c", script]);
    let environ_read = sh(&desktop_creds, &format!("cat /proc/{pid}/environ"));
    assert!(!environ_read.status.success(), "{}", show(&environ_read));
    assert!(text(&environ_read.stderr).contains("Permission denied"), "{}", show(&environ_read));
    assert!(!text(&environ_read.stdout).contains(&token));
    for what in [format!("ls /proc/{pid}/fd"), format!("cat /proc/{pid}/fd/0")] {
        let fd = sh(&desktop_creds, &what);
        assert!(!fd.status.success(), "{what}: {}", show(&fd));
        assert!(text(&fd.stderr).contains("Permission denied"), "{what}: {}", show(&fd));
    }
    let stop = sh(&desktop_creds, &format!("kill -STOP {pid}"));
    assert!(!stop.status.success(), "{}", show(&stop));
    assert!(text(&stop.stderr).contains("not permitted"), "{}", show(&stop));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!state.rsplit(')').next().unwrap().trim_start().starts_with('T'), "stopped: {state}");

    // Redemptions: a token seen nowhere and the task's own (leaked by root), from the
    // desktop uid (which cannot even reach the socket) and from a member of the group
    // (which reaches it, and is refused as another user).
    let secretbox = bin.join("secretbox");
    let redeem = |creds: &[String], token: &str| {
        scratch
            .command("setpriv")
            .args(creds)
            .arg("--")
            .arg(&secretbox)
            .args(["get", "repo"])
            .env("SECRETBOX_TOKEN", token)
            .env("SECRETBOX_SOCKET", &socket)
            .env("SECRETBOX_DAEMON", &daemon_id)
            .output()
            .unwrap()
    };
    let guessed = canary();
    for (who, creds, expected) in
        [("desktop", &desktop_creds, exit::UNREACHABLE), ("member", &member_creds, exit::FORBIDDEN)]
    {
        for (kind, t) in
            [("an unseen token", guessed.as_str()), ("the leaked token", token.as_str())]
        {
            let out = redeem(creds, t);
            assert_eq!(out.status.code(), Some(expected), "{who} with {kind}: {}", show(&out));
            assert!(out.stdout.is_empty(), "{who} with {kind} printed something");
        }
    }

    // Control routes: the desktop uid cannot reach the socket; root without the group
    // reaches it (it passes any permission) and the server refuses it by its credentials.
    let status =
        |creds: &[String]| run_as(&scratch, creds, &backupnizza, &["status", "-c", config_arg]);
    let refused = status(&desktop_creds);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    assert!(text(&refused.stderr).contains("Permission denied"), "{}", show(&refused));
    let refused =
        run_as(&scratch, &desktop_creds, &backupnizza, &["trigger", "quick", "-c", config_arg]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    let root = status(&creds(0, 0, &[]));
    assert_eq!(root.status.code(), Some(1), "{}", show(&root));
    assert!(text(&root.stderr).contains("serves only its own user"), "{}", show(&root));
    daemon
        .wait_for("the refusal of root", |l| l.contains("refused a connection from another user"));

    // A member controls the daemon.
    let ok = status(&member_creds);
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(text(&ok.stdout).contains("held"), "{}", show(&ok));
    let waited = run_as(
        &scratch,
        &member_creds,
        &backupnizza,
        &["trigger", "--wait", "quick", "-c", config_arg],
    );
    assert!(waited.status.success(), "{}", show(&waited));
    assert!(text(&waited.stdout).contains("success"), "{}", show(&waited));

    // The member cannot read the daemon's state_dir, so `history` and `explain` ask the
    // daemon over the socket; the desktop uid can do neither.
    let state = scratch.path().join("state/history.jsonl");
    let direct = sh(&member_creds, &format!("cat {}", state.display()));
    assert!(!direct.status.success(), "the member read the history file: {}", show(&direct));
    let hist =
        run_as(&scratch, &member_creds, &backupnizza, &["history", "quick", "-c", config_arg]);
    assert!(hist.status.success(), "{}", show(&hist));
    assert!(text(&hist.stdout).contains("quick  success"), "{}", show(&hist));
    let explained =
        run_as(&scratch, &member_creds, &backupnizza, &["explain", "quick", "-c", config_arg]);
    assert!(explained.status.success(), "{}", show(&explained));
    assert!(text(&explained.stdout).contains("success"), "{}", show(&explained));
    let refused = run_as(&scratch, &desktop_creds, &backupnizza, &["history", "-c", config_arg]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    assert!(text(&refused.stderr).contains("Permission denied"), "{}", show(&refused));
    assert!(!text(&refused.stdout).contains("quick"), "{}", show(&refused));

    // None of it touched the task's token: the task redeems it now.
    std::fs::write(dir.join("go"), "").unwrap();
    wait_until("the task's redemption", || {
        std::fs::read_to_string(dir.join("rc")).is_ok_and(|s| s.ends_with('\n'))
    });
    let rc = std::fs::read_to_string(dir.join("rc")).unwrap();
    let err = std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    assert_eq!(rc.trim(), "0", "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("out")).unwrap().trim_end(), password);
    let log = daemon.log_text();
    assert!(!log.contains(&password) && !log.contains(&token), "{log}");
    drop(daemon);
    drop(group);
}

/// Must show, line 2: the daemon as the dedicated uid with `CAP_DAC_READ_SEARCH` (ambient,
/// as the system unit gives it) backs up with real restic the desktop user's 0700 directory
/// to an append-only `rclone serve restic` on loopback; the same backup without the
/// capability fails; the restored files match byte for byte.
#[test]
fn the_dedicated_uid_backs_up_another_users_private_directory_through_the_capability() {
    if skip_unless_root() {
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_300);
    let desktop = free_uid(daemon_uid + 1);
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let password = canary();
    write_private(&dir.join("pw"), password.as_bytes());
    let bin = scratch.bin_as_user(daemon_uid);
    let repo_dir = dir.join("rest");
    let data = dir.join("desktop");
    let env = format!(
        "    env:\n      RESTIC_REPOSITORY: @REPO@\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RESTIC_CACHE_DIR: {}/cache\n    secrets: [repo]\n",
        dir.display()
    );
    let body = format!(
        "control_group: {g}\nsecrets:\n  repo: {{file: {d}/pw}}\ntasks:\n  init:\n    {TRIGGERED}\n    command: [restic, init]\n{env}  backup:\n    {TRIGGERED}\n    command: [restic, backup, --limit-upload, '32', --host, testhost, {data}]\n{env}",
        g = group.name,
        d = dir.display(),
        data = data.display(),
    );
    chown_tree(&dir, daemon_uid, daemon_uid);

    // The desktop user's private files: a text, random bytes, a nested file.
    let files: Vec<(String, Vec<u8>)> = vec![
        ("notes.txt".into(), format!("{}\n", canary()).into_bytes()),
        ("photo.bin".into(), {
            let mut bytes = vec![0u8; 200_000];
            let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            bytes
        }),
        ("taxes/2026.txt".into(), b"deductions\n".to_vec()),
    ];
    for (name, bytes) in &files {
        let path = data.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        chmod(&path, 0o600);
    }
    chown_tree(&data, desktop, desktop);
    chmod(&data, 0o700);
    chmod(&data.join("taxes"), 0o700);

    let server = RestServer::start(&repo_dir);
    let repo = format!("rest:{}/laptop/", server.url);
    let config = scratch.config(&body.replace("@REPO@", &repo));
    chown_tree(&config, daemon_uid, daemon_uid);
    let trigger = |task: &str| {
        let creds = creds(daemon_uid, group.gid, &[]);
        run_as(
            &scratch,
            &creds,
            &bin.join("backupnizza"),
            &["trigger", "--wait", task, "-c", config.to_str().unwrap()],
        )
    };
    let last_backup = || {
        history(&scratch)
            .into_iter()
            .rfind(|r| r["type"] == "end" && r["task"] == "backup")
            .expect("a backup ended")
    };

    // Without the capability: the dedicated user cannot read the directory.
    let plain = creds(daemon_uid, group.gid, &[]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &plain)), |_| {});
    let init = trigger("init");
    assert!(init.status.success(), "{}", show(&init));
    let _ = trigger("backup");
    let end = last_backup();
    assert_ne!(end["status"], "success", "{end}");
    let log = daemon.wait_for("restic's refusal", |l| l.contains("permission denied"));
    drop(daemon);
    assert!(!log.contains(&password), "{log}");

    // With it, ambient, as `AmbientCapabilities=CAP_DAC_READ_SEARCH` gives it.
    let mut capable = plain.clone();
    capable
        .extend(["--inh-caps=+dac_read_search".into(), "--ambient-caps=+dac_read_search".into()]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &capable)), |_| {});
    let waiting = scratch
        .command("setpriv")
        .args(creds(daemon_uid, group.gid, &[]))
        .arg("--")
        .arg(bin.join("backupnizza"))
        .args(["trigger", "--wait", "backup", "-c", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // While restic runs (uploads are throttled to make that seconds), the desktop uid tries
    // what a same-uid attacker does to restic: stop it, read its environment, open the pipe
    // its password came through. Each is refused by the kernel.
    let restic = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            (crate::harness::program_name(pid) == "restic"
                && backupnizza::broker::peer::descends_from(pid, daemon.pid()))
            .then_some(pid)
        })
    };
    wait_until("restic, run by the daemon", || restic().is_some());
    let pid = restic().unwrap();
    let desktop_creds = creds(desktop, desktop, &[]);
    for attack in [
        format!("kill -STOP {pid}"),
        format!("cat /proc/{pid}/environ"),
        format!("ls /proc/{pid}/fd"),
        format!("cat /proc/{pid}/fd/0 /proc/{pid}/fd/3 /proc/{pid}/fd/4"),
    ] {
        let out = run_as(&scratch, &desktop_creds, Path::new("sh"), &["-c", &attack]);
        assert!(!out.status.success(), "{attack}: {}", show(&out));
        assert!(!text(&out.stdout).contains(&password), "{attack} read the password");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("not permitted") || stderr.contains("Permission denied"),
            "{attack}: {}",
            show(&out)
        );
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('T'),
        "stopped: {stat}"
    );

    let backup = waiting.wait_with_output().unwrap();
    assert!(backup.status.success(), "{}\n{}", show(&backup), daemon.log_text());
    assert_eq!(last_backup()["status"], "success");
    let log = daemon.log_text();
    drop(daemon);
    assert!(!log.contains(&password), "{log}");

    // Restore as root, with the password the test knows, and compare.
    let target = dir.join("restored");
    let restore = Command::new("restic")
        .args(["-r", &repo, "restore", "latest", "--target"])
        .arg(&target)
        .env("RESTIC_PASSWORD", &password)
        .env("RESTIC_CACHE_DIR", dir.join("root-cache"))
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", show(&restore));
    let restored = target.join(data.strip_prefix("/").unwrap());
    for (name, bytes) in &files {
        let got = std::fs::read(restored.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *bytes, "{name} differs after restore");
    }
    drop(server);
    drop(group);
}

/// Removes the system daemon's runtime directory, as systemd does when the unit stops.
struct RuntimeDir(std::path::PathBuf);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The clients' fallback, end to end: a daemon of the dedicated uid listens where the
/// system unit puts it (`XDG_RUNTIME_DIR=/run`, so `/run/backupnizza/secretbox.sock`, a
/// directory systemd's `RuntimeDirectory=` creates for the account), with no `socket:` or
/// `state_dir:` in the task file; a member of `control_group:` with no daemon of their own
/// runs `status`, `trigger --wait`, `history` and `explain` with no `--socket`, and each
/// finds the system daemon (the member's own, empty `state_dir` is not the daemon's).
#[test]
fn a_member_without_a_user_daemon_finds_the_system_daemon_for_every_command() {
    if skip_unless_root() {
        return;
    }
    let runtime = Path::new(backupnizza::config::SYSTEM_SOCKET).parent().unwrap().to_path_buf();
    if runtime.exists() {
        eprintln!("SKIPPED: {} exists: a system daemon runs on this machine", runtime.display());
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_500);
    let member = free_uid(daemon_uid + 1);
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let config = scratch.write(
        "backup.yaml",
        format!(
            "control_group: {g}\ntasks:\n  t:\n    {TRIGGERED}\n    command: ['true']\n",
            g = group.name
        ),
    );
    let bin = hand_to_dedicated_user(&scratch, &config, daemon_uid);
    std::fs::create_dir(&runtime).unwrap();
    let _runtime = RuntimeDir(runtime.clone());
    chown_tree(&runtime, daemon_uid, daemon_uid);
    chmod(&runtime, 0o700);
    let daemon_state = dir.join("var-lib");
    let daemon_creds = creds(daemon_uid, group.gid, &[]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &daemon_creds)), |cmd| {
        cmd.env("XDG_RUNTIME_DIR", "/run").env("XDG_STATE_HOME", &daemon_state);
    });
    assert!(
        daemon.log_text().contains(backupnizza::config::SYSTEM_SOCKET),
        "{}",
        daemon.log_text()
    );

    // The member's environment is the harness's: its own XDG_RUNTIME_DIR (no socket there)
    // and XDG_STATE_HOME (no history there).
    let member_creds = creds(member, member, &[group.gid]);
    let backupnizza = bin.join("backupnizza");
    let config_arg = config.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-c", config_arg]);
        run_as(&scratch, &member_creds, &backupnizza, &all)
    };
    let status = run(&["status"]);
    assert!(status.status.success(), "{}", show(&status));
    assert!(text(&status.stdout).contains(backupnizza::config::SYSTEM_SOCKET), "{}", show(&status));
    let waited = run(&["trigger", "--wait", "t"]);
    assert!(waited.status.success(), "{}", show(&waited));
    let hist = run(&["history", "t"]);
    assert!(hist.status.success(), "{}", show(&hist));
    assert!(text(&hist.stdout).contains("t  success"), "{}", show(&hist));
    let explained = run(&["explain", "t"]);
    assert!(explained.status.success(), "{}", show(&explained));
    assert!(text(&explained.stdout).contains("manual run"), "{}", show(&explained));

    // The records came from the daemon's state_dir, which the member cannot read.
    let file = daemon_state.join("backupnizza/history.jsonl");
    let direct = run_as(&scratch, &member_creds, Path::new("cat"), &[file.to_str().unwrap()]);
    assert!(!direct.status.success(), "{}", show(&direct));
    assert!(daemon.stop().success());
    drop(group);
}

/// The clients' fallback: with no `socket:` in the task file and no user daemon, `status`
/// says it tried the user daemon's socket and then the system daemon's, by path.
#[test]
fn status_without_a_daemon_names_the_user_and_the_system_socket_it_tried() {
    if Path::new(backupnizza::config::SYSTEM_SOCKET).exists() {
        eprintln!("SKIPPED: a system daemon's socket exists on this machine");
        return;
    }
    let scratch = Scratch::new();
    let config = scratch.write(
        "backup.yaml",
        format!(
            "state_dir: {}\ntasks:\n  t:\n    {TRIGGERED}\n    command: ['true']\n",
            scratch.path().join("state").display()
        ),
    );
    let run = scratch.backupnizza(["status", "-c"]).run_with(&config);
    run.expect_code(1);
    let user = scratch.path().join("xdg-run/backupnizza/secretbox.sock");
    assert!(run.stderr().contains(&user.display().to_string()), "{run}");
    assert!(run.stderr().contains(backupnizza::config::SYSTEM_SOCKET), "{run}");

    // `--socket` wins over both.
    let given = scratch.path().join("elsewhere/s.sock");
    let run = scratch
        .backupnizza(["status", "--socket", given.to_str().unwrap(), "-c"])
        .run_with(&config);
    run.expect_code(1);
    assert!(run.stderr().contains(&given.display().to_string()), "{run}");
    assert!(!run.stderr().contains(backupnizza::config::SYSTEM_SOCKET), "{run}");
}

/// Members cannot exhaust the daemon (issue 28): with a 16 MB history, 60 history requests a
/// member never read took the daemon from 7 MB to 1.78 GB, and a chatty run's kept output
/// was 16 MB. Here a member holds 30 unread history requests over an 8 MB history: the
/// daemon stays under 150 MB, and its own user still reads the history meanwhile; then 12
/// runs printing 1,500 lines of 8 KiB each (12 MB, kept whole before: 144 MB for 12) grow
/// it by under 100 MB.
#[test]
fn a_member_cannot_exhaust_the_daemon_with_unread_history_or_chatty_runs() {
    if skip_unless_root() {
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_400);
    let member = free_uid(daemon_uid + 1);
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "control_group: {g}\ntasks:\n  chatty:\n    {TRIGGERED}\n    command: [sh, -c, 'yes \"$(head -c 8000 /dev/zero | tr \"\\0\" x)\" | head -n 1500']\n",
        g = group.name
    ));
    // An 8 MB history of skip records, as a long-running daemon accumulates.
    let detail = "d".repeat(1000);
    let record = format!(
        "{{\"type\":\"skip\",\"task\":\"chatty\",\"at\":\"2026-01-01T00:00:00Z\",\"scheduled\":\"2026-01-01T00:00:00Z\",\"count\":1,\"reason\":\"overlap\",\"detail\":\"{detail}\"}}\n"
    );
    let records = 8 * 1024 * 1024 / record.len() + 1;
    scratch.write("state/history.jsonl", record.repeat(records));
    let reader = scratch.write(
        "unread.py",
        "import socket, sys, time\nheld = []\nfor _ in range(30):\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.connect(sys.argv[1])\n    s.sendall(b'GET /v1/history HTTP/1.1\\r\\nhost: d\\r\\nbackupnizza-protocol: 1\\r\\n\\r\\n')\n    held.append(s)\nprint('sent', flush=True)\ntime.sleep(600)\n",
    );
    let bin = hand_to_dedicated_user(&scratch, &config, daemon_uid);
    let daemon_creds = creds(daemon_uid, group.gid, &[]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &daemon_creds)), |_| {});
    let member_creds = creds(member, member, &[group.gid]);
    let mut unread = scratch
        .command("setpriv")
        .args(&member_creds)
        .args(["--", "/usr/bin/python3"])
        .arg(&reader)
        .arg(scratch.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(unread.stdout.as_mut().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said.trim(), "sent");
    // The most the daemon holds while the requests sit unread (sampled for five seconds:
    // on a slow machine it grows later, never more).
    let mut most = 0;
    for _ in 0..50 {
        most = most.max(crate::harness::rss_kib(daemon.pid()) * 1024);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The legitimate path meanwhile: the daemon's own user reads the whole history.
    let backupnizza = bin.join("backupnizza");
    let config_arg = config.to_str().unwrap();
    let (socket, count) = (scratch.socket(), (records + 10).to_string());
    let over_socket =
        ["history", "--json", "-n", &count, "--socket", socket.to_str().unwrap(), "-c", config_arg];
    let own = run_as(&scratch, &daemon_creds, &backupnizza, &over_socket);
    let _ = unread.kill();
    let _ = unread.wait();
    assert!(own.status.success(), "{}", show(&own));
    let lines = text(&own.stdout).lines().filter(|l| l.contains("\"skip\"")).count();
    assert!(lines >= records, "{lines} of {records} records\n{}", text(&own.stderr));
    eprintln!("30 unread history requests: the daemon reached {} MiB", most / 1024 / 1024);
    assert!(most < 150 * 1024 * 1024, "the daemon reached {} MiB", most / 1024 / 1024);

    let before = crate::harness::rss_kib(daemon.pid()) * 1024;
    for _ in 0..12 {
        let run = run_as(
            &scratch,
            &daemon_creds,
            &backupnizza,
            &["trigger", "--wait", "chatty", "-c", config_arg],
        );
        assert!(run.status.success(), "{}", show(&run));
    }
    let after = crate::harness::rss_kib(daemon.pid()) * 1024;
    eprintln!(
        "12 chatty runs: {} MiB before, {} MiB after",
        before / 1024 / 1024,
        after / 1024 / 1024
    );
    assert!(
        after < before + 100 * 1024 * 1024,
        "12 chatty runs grew the daemon from {} to {} MiB",
        before / 1024 / 1024,
        after / 1024 / 1024
    );
}

/// Per-task control (issue 28): members could trigger every task, `restore` and
/// `forget --prune` included, and read the output of every run. A task's `members:` says
/// which members may trigger it and read its history: `none` keeps every member out, a list
/// lets those users in; the daemon's own user is never kept out.
#[test]
fn a_tasks_members_decide_which_members_may_trigger_it_and_read_its_history() {
    if skip_unless_root() {
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_600);
    let stranger = free_uid(daemon_uid + 1);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a user named nobody");
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "control_group: {g}\ntasks:\n  open:\n    {TRIGGERED}\n    command: [echo, open-output]\n  restore:\n    {TRIGGERED}\n    members: none\n    command: [echo, restore-output]\n  limited:\n    {TRIGGERED}\n    members: [nobody]\n    command: [echo, limited-output]\n",
        g = group.name
    ));
    let bin = hand_to_dedicated_user(&scratch, &config, daemon_uid);
    let daemon_creds = creds(daemon_uid, group.gid, &[]);
    let _daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &daemon_creds)), |_| {});
    let backupnizza = bin.join("backupnizza");
    let config_arg = config.to_str().unwrap();
    let socket = scratch.socket();
    let socket_arg = socket.to_str().unwrap();
    let trigger = |creds: &[String], task: &str| {
        run_as(
            &scratch,
            creds,
            &backupnizza,
            &["trigger", "--wait", task, "--socket", socket_arg, "-c", config_arg],
        )
    };
    // The daemon's own user runs every task.
    for task in ["open", "restore", "limited"] {
        let run = trigger(&daemon_creds, task);
        assert!(run.status.success(), "{task}: {}", show(&run));
    }
    let member = creds(nobody.uid.as_raw(), group.gid, &[group.gid]);
    let other = creds(stranger, stranger, &[group.gid]);
    for (who, creds, task, allowed) in [
        ("nobody", &member, "open", true),
        ("nobody", &member, "limited", true),
        ("nobody", &member, "restore", false),
        ("a member not listed", &other, "limited", false),
        ("a member not listed", &other, "open", true),
    ] {
        let run = trigger(creds, task);
        assert_eq!(run.status.success(), allowed, "{who} triggering {task}: {}", show(&run));
        if !allowed {
            assert!(text(&run.stderr).contains("members:"), "{who}, {task}: {}", show(&run));
        }
    }
    // The history a member reads leaves out the tasks it may not read.
    let history = |creds: &[String]| {
        let out = run_as(
            &scratch,
            creds,
            &backupnizza,
            &["history", "--json", "-n", "100", "--socket", socket_arg, "-c", config_arg],
        );
        assert!(out.status.success(), "{}", show(&out));
        text(&out.stdout)
    };
    let seen = history(&member);
    assert!(seen.contains("\"open\"") && seen.contains("\"limited\""), "{seen}");
    assert!(!seen.contains("\"restore\""), "{seen}");
    let seen = history(&other);
    assert!(
        seen.contains("\"open\"") && !seen.contains("\"limited\"") && !seen.contains("\"restore\""),
        "{seen}"
    );
    let seen = history(&daemon_creds);
    assert!(seen.contains("\"restore\""), "the daemon's user reads everything: {seen}");
}

/// The read-all capability only where restic needs it (issue 28): every process a system
/// daemon started held `CAP_DAC_READ_SEARCH`, so a task with no secrets read `/etc/shadow`.
/// Here, with the capability granted as the unit grants it, a hook, a notify command, a
/// secret source's helper and a plain step each fail to read a root-only file, while
/// restic's backup step still backs up another user's 0700 directory, and a step that says
/// `read_all: true` reads the file.
#[test]
fn only_restic_backup_steps_hold_the_read_all_capability() {
    if skip_unless_root() {
        return;
    }
    let group = TempGroup::create();
    let daemon_uid = free_uid(62_800);
    let desktop = free_uid(daemon_uid + 1);
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let d = dir.display().to_string();
    write_private(&dir.join("pw"), canary().as_bytes());
    let data = dir.join("desktop");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("private.txt"), canary()).unwrap();
    let try_root =
        |name: &str| format!("cat {d}/root-only > {d}/{name}.out 2> {d}/{name}.err; true");
    let env = format!(
        "    env: {{RESTIC_REPOSITORY: {d}/repo, RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {d}/cache}}\n    secrets: [repo]\n"
    );
    let config = scratch.config(&format!(
        "control_group: {g}
secrets:
  repo: {{file: {d}/pw}}
  helper: {{command: [sh, -c, '{source}; echo a-value-long-enough']}}
tasks:
  init:
    {TRIGGERED}
    command: [restic, init]
{env}  backup:
    {TRIGGERED}
    command: [restic, backup, --host, testhost, {data}]
    hooks:
      before: [sh, -c, '{hook}']
    notify: {{command: [sh, -c, '{notify}']}}
{env}  plain:
    {TRIGGERED}
    command: [sh, -c, '{plain}']
  opted:
    {TRIGGERED}
    read_all: true
    command: [sh, -c, '{opted}']
",
        g = group.name,
        source = try_root("source"),
        hook = try_root("hook"),
        notify = try_root("notify"),
        plain = try_root("plain"),
        opted = try_root("opted"),
        data = data.display(),
    ));
    let bin = hand_to_dedicated_user(&scratch, &config, daemon_uid);
    // Made after the tree was handed over: root's alone.
    let secret_of_root = canary();
    write_private(&dir.join("root-only"), secret_of_root.as_bytes());
    chown_tree(&data, desktop, desktop);
    chmod(&data, 0o700);
    chmod(&data.join("private.txt"), 0o600);
    let mut capable = creds(daemon_uid, group.gid, &[]);
    capable
        .extend(["--inh-caps=+dac_read_search".into(), "--ambient-caps=+dac_read_search".into()]);
    let daemon = scratch.start_daemon_privs(&config, Some((daemon_uid, &capable)), |_| {});
    let config_arg = config.to_str().unwrap();
    for task in ["init", "backup", "plain", "opted"] {
        let run = run_as(
            &scratch,
            &capable,
            &bin.join("backupnizza"),
            &["trigger", "--wait", task, "-c", config_arg],
        );
        assert!(run.status.success(), "{task}: {}", show(&run));
    }
    wait_until("the notify command", || dir.join("notify.err").exists());
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    for who in ["source", "hook", "notify", "plain"] {
        assert!(!read(&format!("{who}.out")).contains(&secret_of_root), "the {who} read it");
        assert!(
            read(&format!("{who}.err")).contains("Permission denied"),
            "{who}: {}",
            read(&format!("{who}.err"))
        );
    }
    assert_eq!(read("opted.out"), secret_of_root, "read_all: true: {}", read("opted.err"));
    // The backup read the desktop user's private file.
    let log = daemon.log_text();
    let backup = history(&scratch)
        .into_iter()
        .rfind(|r| r["type"] == "end" && r["task"] == "backup")
        .expect("the backup ended");
    assert_eq!(backup["status"], "success", "{backup}\n{log}");
    assert!(log.contains("stays with the daemon"), "{log}");
}
