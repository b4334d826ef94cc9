//! Pinned programs and StrictModes: a program swapped after the daemon checked it is refused
//! (and no token is minted for it); task files and programs others could write are refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{Scratch, TRIGGERED, sha256_hex, write_private};

/// Copies a system program into the scratch directory (mode 0755) and returns its path.
fn install(scratch: &Scratch, from: &str, name: &str) -> PathBuf {
    let dir = scratch.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let to = dir.join(name);
    let tmp = dir.join(format!(".{name}.new"));
    crate::harness::copy_program(from, &tmp);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Atomically, as a package manager (or an attacker) replaces a binary.
    std::fs::rename(&tmp, &to).unwrap();
    to
}

fn minted(scratch: &Scratch, config: &Path) -> u64 {
    let run = scratch.backupnizza(["status", "--json", "-c"]).run_with(config);
    let body: serde_json::Value =
        serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}\n{run}"));
    body["tokens"]["minted"].as_u64().unwrap()
}

fn secret_config(scratch: &Scratch) -> String {
    let pw = scratch.path().join("pw");
    write_private(&pw, b"pinned-test-secret");
    format!("secrets:\n  repo: {{file: {}}}\n", pw.display())
}

#[test]
fn a_swapped_pinned_binary_is_refused_and_gets_no_token() {
    let scratch = Scratch::new();
    let prog = install(&scratch, "/bin/echo", "prog");
    let digest = sha256_hex(&std::fs::read(&prog).unwrap());
    let config = scratch.config(&format!(
        "{}tasks:\n  pinned:\n    {TRIGGERED}\n    command: [{}, pinned-run-ok]\n    sha256: {digest}\n    secrets: [repo]\n",
        secret_config(&scratch),
        prog.display()
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "pinned", "-c"]).run_with(&config).expect_code(0);
    daemon.wait_for("the pinned program's output", |l| l.contains("pinned-run-ok"));
    let before = minted(&scratch, &config);
    assert_eq!(before, 1);

    install(&scratch, "/bin/false", "prog");
    let run = scratch.backupnizza(["trigger", "--wait", "pinned", "-c"]).run_with(&config);
    run.expect_code(1);
    assert!(run.stdout().contains("refused"), "{run}");
    let log = daemon.log_text();
    let line =
        log.lines().find(|l| l.contains("pinned program") && l.contains("changed")).expect(&log);
    assert!(line.contains("ERROR") && line.contains(&digest), "{line}");
    assert_eq!(minted(&scratch, &config), before, "a token was minted for a refused program");
}

#[test]
fn pin_binaries_records_digests_at_start() {
    let scratch = Scratch::new();
    let prog = install(&scratch, "/bin/true", "tool");
    let config = scratch.config(&format!(
        "pin_binaries: true\ntasks:\n  t:\n    {TRIGGERED}\n    command: [{}]\n",
        prog.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "t", "-c"]).run_with(&config).expect_code(0);
    install(&scratch, "/bin/echo", "tool");
    let run = scratch.backupnizza(["trigger", "--wait", "t", "-c"]).run_with(&config);
    run.expect_code(1);
    assert!(run.stdout().contains("changed"), "{run}");
}

#[test]
fn a_wrong_pin_or_a_pinned_script_stops_start_up() {
    let scratch = Scratch::new();
    let prog = install(&scratch, "/bin/true", "tool");
    let script = scratch.path().join("bin/script.sh");
    std::fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases = [
        (
            format!("command: [{}]\n    sha256: {}", prog.display(), "0".repeat(64)),
            "but the task file pins",
        ),
        (format!("command: [{}]\n    sha256: {}", script.display(), "0".repeat(64)), "is a script"),
        (format!("command: [no-such-program-xyz]\n    sha256: {}", "0".repeat(64)), "not found"),
    ];
    for (i, (command, expect)) in cases.iter().enumerate() {
        let config = scratch.config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    {command}\n"));
        let log = scratch.path().join(format!("case{i}.log"));
        let status = scratch.daemon_command(&config, &log).status().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(2), "{text}");
        assert!(text.contains(expect), "case {i}: {expect:?}\n{text}");
    }
}

#[test]
fn writable_task_files_and_programs_are_refused() {
    let scratch = Scratch::new();
    let prog = install(&scratch, "/bin/true", "tool");
    let config = scratch
        .config(&format!("tasks:\n  t:\n    {TRIGGERED}\n    command: [{}]\n", prog.display()));
    let start = |name: &str| {
        let log = scratch.path().join(format!("{name}.log"));
        let status = scratch.daemon_command(&config, &log).status().unwrap();
        (status.code(), std::fs::read_to_string(&log).unwrap())
    };
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o664)).unwrap();
    let (code, log) = start("file");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!("task file {}", config.display())) && log.contains("chmod go-w"),
        "{log}"
    );

    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (code, log) = start("program");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!("program {}", prog.display())) && log.contains("mode 775"),
        "{log}"
    );
}

/// Regression: a sandboxed systemd user service runs in a user namespace where root is not
/// mapped, so root's programs appear owned by the overflow uid; they are still root's.
#[test]
fn root_programs_are_trusted_inside_a_user_namespace_without_root() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: needs root to run the daemon as another user");
        return;
    }
    let scratch = Scratch::new();
    // A secret that cannot load: start-up gets past the program checks, then stops there.
    let config = scratch.config(&format!(
        "secrets:\n  s: {{env: BNZ_UNSET_FOR_THIS_TEST}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [/bin/true]\n    secrets: [s]\n"
    ));
    let bin = scratch.path().join("bin-1000");
    std::fs::create_dir(&bin).unwrap();
    crate::harness::copy_program(crate::harness::BACKUPNIZZA, bin.join("backupnizza"));
    for entry in
        [scratch.path().to_path_buf(), bin.clone(), bin.join("backupnizza"), config.clone()]
    {
        nix::unistd::chown(
            &entry,
            Some(nix::unistd::Uid::from_raw(1000)),
            Some(nix::unistd::Gid::from_raw(1000)),
        )
        .unwrap();
    }
    let out = scratch
        .command("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--",
            "unshare",
            "--user",
            "--map-current-user",
        ])
        .arg(bin.join("backupnizza"))
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("owned by uid 65534"), "{log}");
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("BNZ_UNSET_FOR_THIS_TEST is not set"), "{log}");
}

/// Regression: a `command:` secret source's helper that another user
/// could write (mode 777, or owned by that user, or in a directory open to others) was run
/// at start and printed, and so saw, the secret. Another user (uid 65534 through `setpriv`
/// when root; else the test itself) rewrites the world-writable helper into one that leaves a
/// marker; the daemon refuses to start, exit 2, naming the task file and line, the secret,
/// the program and the fix, and the helper never runs (no marker), neither at start nor under
/// `secret check`. Found through the daemon's `PATH`, as the source finds it, and in a
/// directory anyone may write, it is refused too; a helper of our own with mode 0755 works.
#[test]
fn a_command_source_helper_others_could_write_is_refused_and_never_runs() {
    use std::os::unix::fs::PermissionsExt;

    use crate::harness::canary;

    let root = nix::unistd::getuid().is_root();
    let scratch = Scratch::new();
    let value = canary();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("pw-helper");
    let marker = scratch.path().join("helper-ran");
    let good = format!("#!/bin/sh\ntouch {}\nprintf '%s\\n' {value}\n", marker.display());
    std::fs::write(&helper, &good).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The attacker: another user may reach and write the helper.
    for dir in [scratch.path(), bin.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let attack = format!("#!/bin/sh\ntouch {}\nprintf '%s\\n' {value}\n", marker.display());
    let mut write = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c"]);
        c
    } else {
        let mut c = std::process::Command::new("sh");
        c.arg("-c");
        c
    };
    let wrote = write
        .arg("printf '%s' \"$1\" > \"$2\"")
        .arg("sh")
        .arg(&attack)
        .arg(&helper)
        .output()
        .unwrap();
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));

    let config_for = |argv0: &str| {
        scratch.config(&format!(
            "secrets:\n  pw: {{command: [{argv0}]}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [pw]\n    command: [sh, -c, 'secretbox get pw > got']\n"
        ))
    };
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let start = |config: &Path, name: &str| {
        let log = scratch.path().join(format!("{name}.log"));
        let status = scratch.daemon_command(config, &log).env("PATH", &path).status().unwrap();
        (status.code(), std::fs::read_to_string(&log).unwrap())
    };
    let refused = |config: &Path, name: &str, expect: &[&str]| {
        let (code, log) = start(config, name);
        assert_eq!(code, Some(2), "{name}\n{log}");
        // `secrets:` is line 3, after `socket:` and `state_dir:`; `pw:` is its first key.
        let at = format!("{}:4:3: secret \"pw\" (command source): ", config.display());
        assert!(log.contains(&at), "{name}: no file:line and secret\n{log}");
        for e in expect {
            assert!(log.contains(e), "{name}: missing {e:?}\n{log}");
        }
        assert!(log.contains("nothing was started"), "{name}\n{log}");
        assert!(!log.contains(&value), "{name}: the value in the log\n{log}");
        assert!(!marker.exists(), "{name}: the helper ran");
    };

    // World-writable, by full path and through PATH.
    let by_path = config_for(&helper.display().to_string());
    refused(&by_path, "mode-777", &["mode 777", &format!("chmod go-w {}", helper.display())]);
    refused(&config_for("pw-helper"), "mode-777-on-path", &["mode 777", "chmod go-w"]);
    // `secret check` runs the helper too: refused the same way.
    let check =
        scratch.backupnizza(["secret", "check", "-c"]).env("PATH", &path).run_with(&by_path);
    assert_ne!(check.code(), Some(0), "{check}");
    assert!(check.stdout().contains("mode 777"), "{check}");
    assert!(!marker.exists(), "secret check ran the helper");

    // Owned by another user (root can make one), mode 0755.
    std::fs::write(&helper, &good).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        nix::unistd::chown(&helper, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        refused(&by_path, "foreign-owner", &["owned by uid 65534", "chown"]);
        nix::unistd::chown(&helper, Some(nix::unistd::getuid()), None).unwrap();
    } else {
        eprintln!("SKIPPED (part): a helper owned by another user needs root to create");
    }
    // Ours and 0755, but in a directory anyone may write (and so replace it).
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&config_for("pw-helper"), "open-directory", &["writable by others", "chmod o-w"]);
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The legitimate helper, found through PATH: it runs, and the task gets its value.
    let config = config_for("pw-helper");
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("PATH", &path);
    });
    assert!(marker.exists(), "the helper did not run");
    scratch.backupnizza(["trigger", "--wait", "t", "-c"]).run_with(&config).expect_code(0);
    assert_eq!(std::fs::read_to_string(scratch.path().join("got")).unwrap().trim(), value);
    assert!(daemon.stop().success());
}
