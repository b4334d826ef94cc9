//! Both ends prove who they are. The daemon grants a redemption
//! only to the `secretbox` it pinned at start (or a task's `redeemers:`), read through the
//! peer's `/proc/PID/exe`; `secretbox` sends its token only to the daemon named in
//! `SECRETBOX_DAEMON`, checked with `SO_PEERCRED` on the connected socket. Each test plays
//! the attack with a process that is not part of the task, and then shows the legitimate
//! path still works.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backupnizza::protocol::exit;
use nix::sys::signal::Signal;

use crate::harness::{
    SECRETBOX, Scratch, TRIGGERED, canary, chown_tree, trigger, wait_until, write_private,
};

/// The unprivileged user the daemon runs as when the tests run as root.
const NOBODY: u32 = 65534;

/// `sh -c SCRIPT` as `uid`: the attacker, a process of the daemon's user outside the task.
fn as_user(uid: u32, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups", "--"])
        .args(["sh", "-c", script])
        .output()
        .unwrap()
}

/// A working copy of `secretbox` whose bytes differ (one byte appended to the ELF file): it
/// speaks the protocol exactly as the real one, so only its digest tells them apart.
fn altered_secretbox(to: &Path) {
    let mut bytes = std::fs::read(SECRETBOX).unwrap();
    bytes.push(0);
    std::fs::write(to, bytes).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Waits for the task to write `rc{n}` after `go{n}` appears.
fn step(dir: &Path, n: u32) -> (i32, String) {
    std::fs::write(dir.join(format!("go{n}")), "").unwrap();
    wait_until(&format!("the task's attempt {n}"), || read(dir, &format!("rc{n}")).ends_with('\n'));
    (read(dir, &format!("rc{n}")).trim().parse().unwrap(), read(dir, &format!("out{n}")))
}

/// A task script that redeems `secret` with `program` once per `go{n}` file, n = 1..=count.
fn attempts(dir: &Path, program: &str, secret: &str, count: u32) -> String {
    let d = dir.display();
    (1..=count)
        .map(|n| format!("while [ ! -e {d}/go{n} ]; do sleep 0.05; done; {program} get {secret} > {d}/out{n} 2>{d}/err{n}; echo $? > {d}/rc{n}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A scratch directory with a `file:` secret `repo` (a canary, returned) and a triggered task
/// `t` that redeems it with `secretbox` twice, at `go1` and `go2`; `extra` adds task keys.
fn two_attempts(extra: &str) -> (Scratch, std::path::PathBuf, String, std::path::PathBuf) {
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let password = canary();
    write_private(&dir.join("pw"), password.as_bytes());
    let script = attempts(&dir, "secretbox", "repo", 2);
    let config = scratch.config(&format!(
        "token_ttl: 10m\nsecrets:\n  repo: {{file: {}/pw}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [repo]\n{extra}    command: [sh, -c, '{script}']\n",
        dir.display()
    ));
    (scratch, dir, password, config)
}

/// Point 3: a `secretbox` written over the one beside the daemon (as in `~/.cargo/bin`) by a
/// process of the daemon's user is refused with `forbidden`, prints nothing, and the refusal
/// is logged; the genuine one, put back, works. The daemon runs as an ordinary user (when the
/// tests run as root), so it reads the peer's `/proc/PID/exe` without privileges.
#[test]
fn a_swapped_secretbox_gets_nothing_and_the_genuine_one_still_works() {
    if !nix::unistd::getuid().is_root() {
        eprintln!(
            "SKIPPED: needs root to run the daemon and the attacker as another user (CI runs as root)"
        );
        return;
    }
    let (scratch, dir, password, config) = two_attempts("");
    // The daemon's copies of the binaries are created by the harness in bin-as-user.
    let bin = dir.join("bin-as-user");
    std::fs::create_dir_all(&bin).unwrap();
    chown_tree(&dir, NOBODY, NOBODY);
    let daemon = scratch.start_daemon_full(&config, Some(NOBODY), |_| {});
    let installed = bin.join("secretbox");
    assert!(installed.exists());
    let trigger = scratch
        .command("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--"])
        .arg(bin.join("backupnizza"))
        .args(["trigger", "t", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(trigger.status.success(), "{}", String::from_utf8_lossy(&trigger.stderr));

    // The attacker, of the daemon's user but outside the task, swaps the installed file.
    let genuine = dir.join("genuine-secretbox");
    crate::harness::copy_program(&installed, &genuine);
    let evil = dir.join("evil-secretbox");
    altered_secretbox(&evil);
    chown_tree(&dir, NOBODY, NOBODY);
    let swap = as_user(NOBODY, &format!("mv {} {}", evil.display(), installed.display()));
    assert!(swap.status.success(), "{}", String::from_utf8_lossy(&swap.stderr));
    let (code, out) = step(&dir, 1);
    assert_eq!(code, exit::FORBIDDEN, "{}", read(&dir, "err1"));
    assert!(out.is_empty(), "the swapped secretbox printed something");
    let log = daemon.wait_for("the refusal", |l| l.contains("refused a secret redemption"));
    assert!(log.contains("neither the secretbox pinned at start nor a listed redeemer"), "{log}");
    assert!(!log.contains(&password), "{log}");

    // Put back, the genuine bytes (a new file: hashed again) get the secret, with the very
    // token the swapped one held: the refusal did not touch it.
    let restore = as_user(NOBODY, &format!("mv {} {}", genuine.display(), installed.display()));
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    let (code, out) = step(&dir, 2);
    assert_eq!(code, 0, "{}", read(&dir, "err2"));
    assert_eq!(out.trim_end(), password);
    drop(daemon);
}

/// Point 3, `redeemers:`: a program a task lists (pinned by digest at start) redeems that
/// task's tokens; the same program run by another task is refused; and an untrusted redeemer
/// (group-writable) stops the daemon at start with a message naming it.
#[test]
fn listed_redeemers_serve_their_own_task_only_and_must_be_trusted() {
    let scratch = Scratch::new();
    let dir = scratch.path().to_path_buf();
    let password = canary();
    write_private(&dir.join("pw"), password.as_bytes());
    let tool = dir.join("tools/mybox");
    std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
    altered_secretbox(&tool);
    let (own, other) = (dir.join("own"), dir.join("other"));
    std::fs::create_dir_all(&own).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let body = |redeemers: &str| {
        format!(
            "secrets:\n  repo: {{file: {d}/pw}}\ntasks:\n  own:\n    {TRIGGERED}\n    secrets: [repo]\n    redeemers: [{tool}]{redeemers}\n    command: [sh, -c, '{a}']\n  other:\n    {TRIGGERED}\n    secrets: [repo]\n    command: [sh, -c, '{b}']\n",
            d = dir.display(),
            tool = tool.display(),
            a = attempts(&own, &tool.display().to_string(), "repo", 1),
            b = attempts(&other, &tool.display().to_string(), "repo", 1),
        )
    };
    let config = scratch.config(&body(""));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "own", false).expect_code(0);
    trigger(&scratch, &config, "other", false).expect_code(0);
    let (code, out) = step(&own, 1);
    assert_eq!(code, 0, "{}", read(&own, "err1"));
    assert_eq!(out.trim_end(), password);
    let (code, out) = step(&other, 1);
    assert_eq!(code, exit::FORBIDDEN, "{}", read(&other, "err1"));
    assert!(out.is_empty());
    daemon.wait_for("the refusal", |l| l.contains("a redeemer listed by another task"));
    drop(daemon);

    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o775)).unwrap();
    let log = dir.join("refused.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("redeemer {} is writable by group or others", tool.display())),
        "{text}"
    );
}

/// Point 7: with the daemon stopped (SIGSTOP, as a same-user attacker may), its socket is
/// renamed away and a fake server listens at the path. `secretbox` connects, sees that the
/// process on the other end is not the daemon of `SECRETBOX_DAEMON`, sends nothing and exits
/// 12; the fake server receives not one byte. Resumed, the daemon notices the swap and stops.
#[test]
fn secretbox_sends_nothing_to_a_server_that_is_not_its_daemon() {
    let (scratch, dir, password, config) = two_attempts("    redeem_limit: 2\n");
    let mut daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", false).expect_code(0);
    // The legitimate path first.
    let (code, out) = step(&dir, 1);
    assert_eq!(code, 0, "{}", read(&dir, "err1"));
    assert_eq!(out.trim_end(), password);

    daemon.signal(Signal::SIGSTOP);
    let socket = daemon.socket.clone();
    std::fs::rename(&socket, dir.join("run/moved.sock")).unwrap();
    let fake = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let (received, accepted) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            if let Ok((mut stream, _)) = fake.accept() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf);
                received.lock().unwrap().extend(buf);
            }
        })
    };
    let (code, out) = step(&dir, 2);
    let err = read(&dir, "err2");
    assert_eq!(code, exit::NOT_THE_DAEMON, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("is not the daemon that started this process"), "{err}");
    server.join().unwrap();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "secretbox never connected");
    assert!(
        received.lock().unwrap().is_empty(),
        "the fake server received {:?}",
        received.lock().unwrap()
    );

    daemon.signal(Signal::SIGCONT);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(daemon.log_text().contains("no longer names this daemon's socket"));
}
