//! The real daemon (`backupnizza run`) as a process: its socket, its protections, its
//! secret sources and what never leaks out of it.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use backupnizza::protocol::exit;

use crate::harness::{SECRETBOX, Scratch, TRIGGERED, canary, sha256_hex, trigger, write_private};

fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// The pid of the first process the daemon started for `task` (from its log).
fn started_pid(log: &str) -> u32 {
    let line = log
        .lines()
        .find(|l| l.contains("started process with a one-time token"))
        .expect("a started process");
    let at = line.find(" pid=").unwrap() + 5;
    line[at..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn socket_dir_is_0700_socket_is_0600_and_both_go_away_on_stop() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let daemon = scratch.start_daemon(&config);
    let dir = std::fs::symlink_metadata(scratch.path().join("run")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o700);
    assert_eq!(dir.uid(), nix::unistd::getuid().as_raw());
    let sock = std::fs::symlink_metadata(&daemon.socket).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.mode() & 0o777, 0o600);
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!scratch.socket().exists(), "socket left behind");
}

#[test]
fn unsafe_socket_directories_are_refused() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let run_dir = scratch.path().join("run");
    let start = |what: &str| {
        let log = scratch.path().join(format!("{what}.log"));
        let status = scratch.daemon_command(&config, &log).status().unwrap();
        (status.code(), std::fs::read_to_string(log).unwrap())
    };

    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, log) = start("loose");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("has mode 777") && log.contains("chmod 700"), "{log}");

    std::fs::remove_dir(&run_dir).unwrap();
    let elsewhere = scratch.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &run_dir).unwrap();
    let (code, log) = start("symlink");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("symbolic link"), "{log}");

    if is_root() {
        std::fs::remove_file(&run_dir).unwrap();
        std::fs::create_dir(&run_dir).unwrap();
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&run_dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let (code, log) = start("foreign");
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("owned by uid 65534"), "{log}");
    } else {
        eprintln!("SKIPPED part: a foreign-owned directory needs root to create");
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_second_daemon_refuses() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    // A socket nobody listens on any more, as a crashed daemon leaves it.
    let run_dir = scratch.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(scratch.socket()).unwrap());
    assert!(scratch.socket().exists());

    let daemon = scratch.start_daemon(&config);
    assert!(daemon.log_text().contains("removed a stale socket"), "{}", daemon.log_text());

    let log = scratch.path().join("second.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    let second = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{second}");
    assert!(second.contains("another backupnizza daemon is running"), "{second}");
    // The first one is unharmed.
    assert!(scratch.socket().exists());
    assert_eq!(daemon.stop().code(), Some(0));

    // Something that is not a socket is never removed.
    std::fs::write(scratch.socket(), "precious").unwrap();
    let log = scratch.path().join("third.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(std::fs::read_to_string(&log).unwrap().contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(scratch.socket()).unwrap(), "precious");
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_daemon_is_not_dumpable_has_no_core_limit_and_locks_secret_pages() {
    let scratch = Scratch::new();
    let secret = scratch.path().join("secret");
    write_private(&secret, canary().as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n    secrets: [repo]\n",
        secret.display()
    ));
    // Root may ptrace anything, so the check needs the daemon to run as an ordinary user.
    let as_nobody = is_root();
    if as_nobody {
        crate::harness::chown_tree(scratch.path(), 65534, 65534);
    }
    let daemon = scratch.start_daemon_full(&config, as_nobody.then_some(65534), |_| {});
    let pid = daemon.pid();
    // Not dumpable: the kernel hands its /proc files to root and refuses its own user.
    let environ = format!("/proc/{pid}/environ");
    assert_eq!(
        std::fs::metadata(&environ).unwrap().uid(),
        0,
        "/proc/{pid} of a non-dumpable process is owned by root"
    );
    let reader = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat", &environ])
        .output()
        .unwrap();
    if as_nobody {
        assert!(!reader.status.success(), "same-user read of environ succeeded");
        assert!(String::from_utf8_lossy(&reader.stderr).contains("Permission denied"));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    // READY comes after the secrets are loaded, so their pages are locked by now.
    let locked = proc_status_field(pid, "VmLck:").unwrap();
    assert!(locked > 0, "VmLck is {locked} kB");
    drop(daemon);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_canary_secret_never_leaks() {
    let scratch = Scratch::new();
    let secret = canary();
    // The task prints the secret on purpose (the log must mask it), proves it got it by a
    // digest, and stays alive so we can look at its environment and argument list.
    let script = "v=$(secretbox get repo); echo \"secret is $v\"; echo \"to stderr: $v\" >&2; printf %s \"$v\" | sha256sum | cut -c1-64 > digest; printf %s \"$SECRETBOX_TOKEN\" > token; sleep 30 & echo $! > sleeper; wait";
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{env: BNZ_TEST_CANARY}}\ntasks:\n  leak:\n    {TRIGGERED}\n    command: [sh, -c, '{script}']\n    secrets: [repo]\n    timeout: 20s\n"
    ));
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("BNZ_TEST_CANARY", &secret);
    });
    trigger(&scratch, &config, "leak", false).expect_code(0);
    let log = daemon.wait_for("the task's sleeper", |_| {
        scratch.path().join("sleeper").exists()
            && std::fs::read_to_string(scratch.path().join("sleeper"))
                .is_ok_and(|s| s.ends_with('\n'))
    });
    let task_pid = started_pid(&log);
    let sleeper: u32 =
        std::fs::read_to_string(scratch.path().join("sleeper")).unwrap().trim().parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("digest")).unwrap().trim(),
        sha256_hex(secret.as_bytes())
    );

    // The processes of the task: environment and argument lists.
    let token = std::fs::read_to_string(scratch.path().join("token")).unwrap();
    for pid in [task_pid, sleeper] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!contains(&environ, secret.as_bytes()), "canary in environ of {pid}");
        assert!(!contains(&cmdline, secret.as_bytes()), "canary in cmdline of {pid}");
        assert!(!contains(&cmdline, token.as_bytes()), "token in cmdline of {pid}");
        assert!(contains(&environ, b"SECRETBOX_TOKEN="), "the environment was readable");
    }
    // The daemon's own environment block was wiped when it read the `env` source.
    if let Ok(environ) = std::fs::read(format!("/proc/{}/environ", daemon.pid())) {
        assert!(
            !contains(&environ, secret.as_bytes()),
            "canary left in the daemon's environment block"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    daemon.wait_for("the run's end", |log| log.contains("run ended"));
    let log = daemon.log_text();
    assert!(log.contains("secret is ***") && log.contains("to stderr: ***"), "{log}");
    assert_eq!(daemon.stop().code(), Some(0));

    // Every file the daemon wrote (log, history, lock), and everything else in the scratch dir.
    for file in walk(scratch.path()).into_iter().filter(|p| p.is_file()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, secret.as_bytes()), "canary found in {}", file.display());
    }
    let history = std::fs::read_to_string(scratch.path().join("state/history.jsonl")).unwrap();
    assert!(history.contains("to stderr: ***"), "{history}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_token_dies_with_its_process() {
    let scratch = Scratch::new();
    let secret_file = scratch.path().join("pw");
    write_private(&secret_file, canary().as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [sh, -c, 'printf %s \"$SECRETBOX_TOKEN\" > token']\n    secrets: [repo]\n",
        secret_file.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", true).expect_code(0);
    let token = std::fs::read_to_string(scratch.path().join("token")).unwrap();
    assert!(token.starts_with("bnz1_"));
    let out = Command::new(SECRETBOX)
        .args(["get", "repo"])
        .env("SECRETBOX_TOKEN", &token)
        .env("SECRETBOX_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    // Whoever asks now (this test is outside the task, too) hears only `forbidden`.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::FORBIDDEN), "{stderr}");
    assert!(out.stdout.is_empty());
    // The token is gone from the table: the run's one token was minted, and none is live.
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    assert!(status.stdout().contains("1 minted, 0 redeemed, 0 live"), "{status}");
    let log = daemon.wait_for("the rejection in the log", |l| l.contains("reason=\"forbidden\""));
    let line = log.lines().find(|l| l.contains("reason=\"forbidden\"")).unwrap();
    // Logged with a fingerprint, digests of the name and executable the caller chose, and
    // the peer; never the token.
    let name = format!("requested=sha256:{}", &crate::harness::sha256_hex(b"repo")[..16]);
    assert!(
        line.contains("token=tok:")
            && line.contains(&name)
            && line.contains("peer_pid=")
            && line.contains("exe=sha256:"),
        "{line}"
    );
    assert!(!log.contains(&token), "token in the log");
    assert!(log.contains("WARN"));
}

/// The secret sources, each from its real backend.
#[test]
fn secrets_load_from_every_source() {
    let scratch = Scratch::new();
    let unique = canary();
    let values: Vec<(&str, String)> =
        ["keyutils", "keyutils-cli", "secret-service", "command", "file", "env"]
            .iter()
            .map(|n| (*n, canary()))
            .collect();
    let value = |name: &str| values.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    require_secret_service();

    // Kernel keyutils, seeded through `backupnizza secret set` (below) and with keyctl; the
    // Secret Service is gnome-keyring on the private bus that .ci/test starts.
    seed_keychains(
        (&format!("keyring:cli@{unique}"), &value("keyutils-cli")),
        ("backupnizza test", &unique, "ss", &value("secret-service")),
    );
    let cmd_file = scratch.path().join("from-command");
    std::fs::write(&cmd_file, format!("{}\n", value("command"))).unwrap();
    let file = scratch.path().join("from-file");
    write_private(&file, format!("{}\n", value("file")).as_bytes());

    let names = ["keyutils", "keyutils-cli", "secret-service", "command", "file", "env"];
    let script: String = names
        .iter()
        .map(|n| format!("secretbox get --no-newline {n} | sha256sum | cut -c1-64 >> digests; "))
        .collect();
    let config = scratch.config(&format!(
        "secrets:
  keyutils: {{keyring: {{service: {unique}, account: set, store: keyutils}}}}
  keyutils-cli: {{keyring: {{service: {unique}, account: cli, store: keyutils}}}}
  secret-service: {{keyring: {{service: {unique}, account: ss, store: secret-service}}}}
  command: {{command: [cat, {}]}}
  file: {{file: {}}}
  env: {{env: BNZ_TEST_ENV_SECRET}}
tasks:
  all:
    {TRIGGERED}
    command: [sh, -c, '{script}']
    secrets: [{}]
",
        cmd_file.display(),
        file.display(),
        names.join(", ")
    ));
    let set = scratch.backupnizza(["secret", "set", "keyutils", "-c"]);
    let mut set = set.cmd;
    set.arg(&config);
    let out = set.stdin_bytes(format!("{}\n", value("keyutils")).as_bytes());
    assert!(out.status.success(), "secret set: {}", String::from_utf8_lossy(&out.stderr));

    let check = scratch
        .backupnizza(["secret", "check", "-c"])
        .env("BNZ_TEST_ENV_SECRET", value("env"))
        .run_with(&config);
    check.expect_code(0);
    for name in names {
        assert!(
            check.stdout().lines().any(|l| l.starts_with(name) && l.contains(" ok ")),
            "{name}\n{check}"
        );
    }
    for (_, v) in &values {
        assert!(
            !check.stdout().contains(v.as_str()) && !check.stderr().contains(v.as_str()),
            "secret check printed a value"
        );
    }

    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("BNZ_TEST_ENV_SECRET", value("env"));
    });
    trigger(&scratch, &config, "all", true).expect_code(0);
    let digests = std::fs::read_to_string(scratch.path().join("digests")).unwrap();
    let expected: Vec<String> = names.iter().map(|n| sha256_hex(value(n).as_bytes())).collect();
    assert_eq!(
        digests.lines().collect::<Vec<_>>(),
        expected,
        "one digest per source, in order\n{}",
        daemon.log_text()
    );
    drop(daemon);
    let _ =
        Command::new("secret-tool").args(["clear", "service", &unique, "username", "ss"]).status();
}

#[test]
fn a_secret_that_cannot_be_loaded_stops_start_up_with_a_fix() {
    let scratch = Scratch::new();
    let loose = scratch.path().join("loose");
    std::fs::write(&loose, "x").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let unique = canary();
    let cases: Vec<(String, &[&str])> = vec![
        (format!("{{file: {}}}", loose.display()), &["secret \"s\"", "mode 644", "chmod 600"]),
        (
            "{command: [sh, -c, 'echo locked vault >&2; exit 3']}".into(),
            &["secret \"s\"", "exit status: 3", "locked vault"],
        ),
        (
            "{command: [sh, -c, 'sleep 30'], timeout: 300ms}".into(),
            &["did not finish within 300ms"],
        ),
        ("{command: [true]}".into(), &["secret \"s\"", "empty"]),
        ("{command: [/nonexistent/pass]}".into(), &["cannot start it", "install"]),
        ("{env: BNZ_TEST_UNSET_VARIABLE}".into(), &["BNZ_TEST_UNSET_VARIABLE is not set"]),
        (
            format!("{{keyring: {{service: {unique}, account: none, store: keyutils}}}}"),
            &["no entry", "backupnizza secret set"],
        ),
        (
            format!("{{keyring: {{service: {unique}, account: none, store: secret-service}}}}"),
            &["Secret Service", "D-Bus"],
        ),
    ];
    for (i, (source, expect)) in cases.iter().enumerate() {
        let config = scratch.write(
            &format!("c{i}.yaml"),
            format!(
                "socket: {}\nstate_dir: {}\nsecrets:\n  s: {source}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n    secrets: [s]\n",
                scratch.socket().display(),
                scratch.path().join("state").display()
            ),
        );
        let log = scratch.path().join(format!("c{i}.log"));
        let mut cmd = scratch.daemon_command(&config, &log);
        // No session bus at all (a headless server): the error must say what to do.
        cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
        let status = cmd.status().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "case {i} {source}\n{text}");
        for e in *expect {
            assert!(text.contains(e), "case {i} {source}: missing {e:?}\n{text}");
        }
        assert!(!scratch.socket().exists(), "case {i}: socket bound before secrets loaded");
    }
}

/// Regression: a failing secret command's error quotes its last stderr line, and
/// start-up stops before the redactor knows any value, so a command that echoed its own
/// output, or a secret loaded before it, put them in the log. Both are masked now, in the
/// JSON log whose escaping hid values with quotes from the old mask.
#[test]
fn a_failing_secret_command_that_echoes_secrets_on_stderr_leaks_neither() {
    let scratch = Scratch::new();
    let (early, own) = (format!("{}\"é\\", canary()), format!("{}\"🔑", canary()));
    write_private(&scratch.path().join("early"), early.as_bytes());
    scratch.write("own", &own);
    let config = scratch.config(&format!(
        "log: {{format: json}}\nsecrets:\n  early: {{file: {dir}/early}}\n  late: {{command: [sh, -c, 'cat {dir}/own; echo \"$(cat {dir}/own) $(cat {dir}/early)\" >&2; exit 3']}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n    secrets: [early, late]\n",
        dir = scratch.path().display()
    ));
    let log = scratch.path().join("daemon.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("its last stderr line: *** ***"), "{text}");
    for value in [&early, &own] {
        assert!(!text.contains(&value[7..39]), "{text}");
    }
}

/// The Secret Service runs only inside `.ci/test`'s private D-Bus session.
pub(crate) fn require_secret_service() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
            && std::env::var_os("BNZ_TEST_SECRET_SERVICE").is_some(),
        "this test needs the private D-Bus session with gnome-keyring that .ci/test starts: run the tests with .ci/test"
    );
}

/// Stores `value` in the kernel keyring (`keyctl padd user DESCRIPTION @s`) and in the
/// Secret Service (`secret-tool store`, attributes `service SERVICE username USER`), as a
/// user seeding the keychains would.
pub(crate) fn seed_keychains(keyutils: (&str, &str), secret_service: (&str, &str, &str, &str)) {
    let (description, value) = keyutils;
    let keyctl = Command::new("keyctl")
        .args(["padd", "user", description, "@s"])
        .stdin_bytes(value.as_bytes());
    assert!(keyctl.status.success(), "keyctl: {}", String::from_utf8_lossy(&keyctl.stderr));
    let (label, service, user, value) = secret_service;
    let tool = Command::new("secret-tool")
        .args(["store", &format!("--label={label}"), "service", service, "username", user])
        .stdin_bytes(value.as_bytes());
    assert!(tool.status.success(), "secret-tool: {}", String::from_utf8_lossy(&tool.stderr));
}

pub(crate) trait StdinBytes {
    fn stdin_bytes(&mut self, bytes: &[u8]) -> std::process::Output;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, bytes: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The run ids a `trigger` printed ("triggered t: run ID").
fn triggered_run_id(run: &crate::harness::Run) -> Option<String> {
    run.stdout().lines().find_map(|l| l.split(": run ").nth(1)).map(|id| id.trim().to_string())
}

/// Regression guard for shutdown: a trigger that races SIGTERM is either refused, or its run
/// is tracked to the end and gets an End record (none is dropped with its task handle), and
/// a run queued behind it is ended as cancelled, also with a record.
#[test]
fn a_trigger_that_races_sigterm_is_refused_or_gets_its_end_record() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  t:\n    {TRIGGERED}\n    command: [sleep, '0.3']\n    on_overlap: queue\n"
    ));
    let mut accepted = 0;
    for round in 0..10u64 {
        let mut daemon = scratch.start_daemon(&config);
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| trigger(&scratch, &config, "t", false));
            let second = s.spawn(|| trigger(&scratch, &config, "t", false));
            // From "before the triggers arrive" to "after both were answered".
            std::thread::sleep(std::time::Duration::from_millis(round * 4));
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            (first.join().unwrap(), second.join().unwrap())
        });
        let status = daemon.wait_exit();
        assert!(status.success(), "round {round}: {status}\n{}", daemon.log_text());
        let records = crate::harness::history(&scratch);
        let ends: Vec<&str> = records
            .iter()
            .filter(|r| r["type"] == "end")
            .filter_map(|r| r["run_id"].as_str())
            .collect();
        for run in [&first, &second] {
            match triggered_run_id(run) {
                Some(id) => {
                    accepted += 1;
                    assert!(
                        ends.contains(&id.as_str()),
                        "round {round}: run {id} has no End record\n{run}\n{records:?}"
                    );
                }
                None => assert_ne!(
                    run.code(),
                    Some(0),
                    "round {round}: a refused trigger must say so\n{run}"
                ),
            }
        }
        for start in records.iter().filter(|r| r["type"] == "start") {
            let id = start["run_id"].as_str().unwrap();
            assert!(
                ends.contains(&id),
                "round {round}: run {id} started and never ended\n{records:?}"
            );
        }
    }
    assert!(accepted > 0, "no trigger was ever accepted: the race was not exercised");
}

/// Without `XDG_RUNTIME_DIR` the default socket directory is
/// `$TMPDIR/backupnizza-$UID`, a name another user can create first. That user (uid 65534,
/// through setpriv) squats it; the daemon still starts, in a private directory it records in
/// `state_dir`, and the clients and tasks find it.
#[test]
fn a_squatted_default_socket_directory_does_not_stop_the_daemon() {
    if !is_root() {
        eprintln!("SKIPPED: another user's directory needs root to create");
        return;
    }
    let scratch = Scratch::new();
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let squatted = tmp.join(format!("backupnizza-{uid}"));
    let squat = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mkdir", "-m", "755"])
        .arg(&squatted)
        .output()
        .unwrap();
    assert!(squat.status.success(), "{}", String::from_utf8_lossy(&squat.stderr));
    let secret = scratch.path().join("secret");
    let value = canary();
    write_private(&secret, value.as_bytes());
    // No `socket:`: the default applies.
    let config = scratch.write(
        "backup.yaml",
        format!(
            "state_dir: {}\nsecrets:\n  repo: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [repo]\n    command: [sh, -c, 'secretbox get repo > got']\n",
            scratch.path().join("state").display(),
            secret.display()
        ),
    );
    let unset = |cmd: &mut Command| {
        cmd.env_remove("XDG_RUNTIME_DIR").env("TMPDIR", &tmp);
    };
    let daemon = scratch.start_daemon_with(&config, unset);
    let log = daemon.log_text();
    assert!(log.contains("owned by uid 65534"), "{log}");
    assert!(log.contains("bound the socket in a private directory"), "{log}");
    let record = std::fs::read_to_string(scratch.path().join("state/socket")).unwrap();
    let socket = std::path::PathBuf::from(record.trim());
    assert!(socket.starts_with(&tmp) && !socket.starts_with(&squatted), "{}", socket.display());
    assert_eq!(std::fs::metadata(socket.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
    assert!(std::fs::read_dir(&squatted).unwrap().next().is_none(), "nothing in the squat");

    let mut status = scratch.backupnizza(["status", "-c"]).cmd;
    unset(&mut status);
    let out = status.arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&socket.display().to_string()));
    let mut run = scratch.backupnizza(["trigger", "--wait", "t", "-c"]).cmd;
    unset(&mut run);
    let out = run.arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(scratch.path().join("got")).unwrap().trim(), value);
    assert!(daemon.stop().success());
    assert!(!socket.exists() && !scratch.path().join("state/socket").exists());
    assert!(!socket.parent().unwrap().exists(), "the private directory is left behind");
}

/// Regression: with `ulimit -n 64` and 20 tasks firing, 31 redemptions were refused as "only
/// the process the token was given to, and its children, may redeem it" (logged `why="a
/// process that has exited"`): a resource failure dressed as a security refusal. Now no
/// redemption is refused for its ancestry, and what fails says it is out of descriptors.
#[test]
fn out_of_file_descriptors_is_said_and_never_a_refusal() {
    let scratch = Scratch::new();
    let secret = scratch.path().join("secret");
    write_private(&secret, canary().as_bytes());
    let results = scratch.path().join("results");
    std::fs::create_dir(&results).unwrap();
    let mut tasks = String::new();
    for n in 0..20 {
        tasks.push_str(&format!(
            "  t{n}:\n    {TRIGGERED}\n    secrets: [s]\n    command: [sh, -c, 'secretbox get s > /dev/null 2> {dir}/{n}.err; echo $? > {dir}/{n}.code']\n",
            dir = results.display()
        ));
    }
    let config =
        scratch.config(&format!("secrets:\n  s: {{file: {}}}\ntasks:\n{tasks}", secret.display()));
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let triggers: Vec<_> = (0..20)
        .map(|n| {
            let mut cmd = scratch.backupnizza(["trigger", &format!("t{n}"), "--wait", "-c"]).cmd;
            cmd.arg(&config).spawn().unwrap()
        })
        .collect();
    for mut t in triggers {
        let _ = t.wait();
    }
    let log = daemon.log_text();
    for refusal in ["a process that has exited", "not the token's process tree", "only the process"]
    {
        assert!(!log.contains(refusal), "a redemption was refused for its ancestry:\n{log}");
    }
    // Every redemption that ran either got the secret or says why: file descriptors.
    let mut failed = Vec::new();
    for n in 0..20 {
        let Ok(code) = std::fs::read_to_string(results.join(format!("{n}.code"))) else {
            continue; // the task's own process could not start: its End record says why
        };
        if code.trim() != "0" {
            let err = std::fs::read_to_string(results.join(format!("{n}.err"))).unwrap_or_default();
            failed.push(format!("t{n}: exit {} {err}", code.trim()));
        }
    }
    let unexplained: Vec<_> = failed.iter().filter(|f| !f.contains("file descriptors")).collect();
    assert!(unexplained.is_empty(), "failures that do not name file descriptors: {unexplained:#?}");
    let mut short = 0;
    for end in crate::harness::history(&scratch).iter().filter(|r| r["type"] == "end") {
        let reason = end["reason"].as_str().unwrap_or_default();
        short += usize::from(reason.contains("file descriptors"));
        assert!(
            end["status"] == "success" || reason.contains("file descriptors"),
            "a run failed without naming file descriptors: {end}"
        );
    }
    let said = short + failed.len() + log.matches("out of file descriptors").count();
    assert!(said > 0, "the scenario never ran out of descriptors: it tests nothing\n{log}");
    daemon.stop();
}

/// Regression: a restart within half a second of a SIGKILL was refused ("another backupnizza
/// daemon is running") while the dying process still held the lock.
#[test]
fn a_restart_right_after_a_sigkill_starts() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n"));
    let mut daemon = scratch.start_daemon(&config);
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    // No wait for the exit: the next daemon starts while the kernel tears this one down.
    let again = scratch.start_daemon(&config);
    daemon.wait_exit();
    trigger(&scratch, &config, "t", true).expect_code(0);
    again.stop();
}

/// Regression: SIGTERM during start-up waited for a slow `command:` secret helper (32 s, or
/// minutes with a longer `timeout:`). Now the helper and what it started are stopped and the
/// daemon exits at once.
#[test]
fn sigterm_during_a_slow_secret_helper_exits_within_seconds() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "secrets:\n  slow: {{command: [sh, -c, 'sleep 60.125; echo late'], timeout: 90s}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [slow]\n    command: [true]\n"
    ));
    let log = scratch.path().join("daemon.log");
    let mut child = scratch.daemon_command(&config, &log).spawn().unwrap();
    crate::harness::wait_until("the helper to run", || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0060.125\x00")
        })
    });
    let asked = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(status.success(), "{status:?}\n{}", std::fs::read_to_string(&log).unwrap());
    crate::harness::wait_until("the helper's sleep to go", || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0060.125\x00")
        })
    });
}

/// Regression: a helper that printed the secret, exited 0 and left a background child
/// holding its stdout was reported as a timeout. Its output is used once it has exited.
#[test]
fn a_helper_that_leaves_a_background_child_holding_its_output_still_loads() {
    let scratch = Scratch::new();
    let value = canary();
    let config = scratch.config(&format!(
        "secrets:\n  s: {{command: [sh, -c, 'printf %s {value}; sleep 30.375 &'], timeout: 10s}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [s]\n    command: [sh, -c, 'secretbox get --no-newline s | sha256sum > {}']\n",
        scratch.path().join("digest").display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", true).expect_code(0);
    let digest = std::fs::read_to_string(scratch.path().join("digest")).unwrap();
    assert!(digest.starts_with(&sha256_hex(value.as_bytes())), "{digest}");
    daemon.stop();
}

/// Regression: a revoked key in the kernel keyring was reported as "no entry ... store it",
/// sending the user looking for a key that is there. It says revoked now.
#[test]
fn a_revoked_kernel_keyring_entry_is_said_to_be_revoked() {
    let scratch = Scratch::new();
    let unique = format!("bnz-revoked-{}", std::process::id());
    let description = format!("keyring:acct@{unique}");
    let added = Command::new("keyctl")
        .args(["padd", "user", &description, "@s"])
        .stdin_bytes(canary().as_bytes());
    assert!(added.status.success(), "keyctl: {}", String::from_utf8_lossy(&added.stderr));
    let id = String::from_utf8_lossy(&added.stdout).trim().to_string();
    let revoked = Command::new("keyctl").args(["revoke", &id]).output().unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let config = scratch.config(&format!(
        "secrets:\n  s: {{keyring: {{service: {unique}, account: acct, store: keyutils}}}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [s]\n    command: [true]\n"
    ));
    let log = scratch.path().join("daemon.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("is revoked") && text.contains("store it again"), "{text}");
    assert!(!text.contains("no entry"), "{text}");
}
