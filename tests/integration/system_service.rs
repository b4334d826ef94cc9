//! System mode's service definitions and credentials: the system
//! unit passes `systemd-analyze verify`, the LaunchDaemon (and the user LaunchAgent) parse
//! as strict XML property lists with the keys launchd needs, and a secret seeded with
//! `secret set --credential` reaches a task through `$CREDENTIALS_DIRECTORY` and the
//! existing `file:` source.
//!
//! What cannot run here: no service manager runs in CI, so systemd itself never starts the
//! unit, never decrypts `LoadCredentialEncrypted=` and never applies the sandbox. The tests
//! do what systemd would: `systemd-creds decrypt` (the same code and host key) into a
//! private 0700 directory, then the real daemon with `CREDENTIALS_DIRECTORY` pointing at it.
//! launchd and macOS (UserName, Full Disk Access) are not run at all: only the plist's form
//! and keys are checked.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::harness::{BACKUPNIZZA, Scratch, TRIGGERED, canary, trigger};

/// A task file with a credential secret, a `command:` secret and a local repository.
fn system_config(scratch: &Scratch) -> std::path::PathBuf {
    scratch.config(&format!(
        "secrets:\n  repo: {{file: \"${{CREDENTIALS_DIRECTORY}}/restic-repo\"}}\n  other: {{command: [echo, not-a-credential]}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [repo]\n    command: [sh, -c, 'secretbox get repo > got']\n    env: {{RESTIC_REPOSITORY: /srv/restic-repo}}\n"
    ))
}

/// Parses a property list with python3's plistlib, whose expat parser is strict (it rejects
/// `--` inside a comment, which a lenient parser lets through); returns it as JSON.
fn strict_plist(xml: &str) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (Debian package python3)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not a well-formed plist: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_system_unit_verifies_and_the_launch_daemon_plist_is_well_formed() {
    let scratch = Scratch::new();
    let config = system_config(&scratch);
    let printed = scratch.backupnizza(["service", "systemd", "--system", "-c"]).run_with(&config);
    printed.expect_code(0);
    let unit = printed.stdout();
    for line in [
        "Type=notify",
        "User=backupnizza",
        "Group=backupnizza",
        "AmbientCapabilities=CAP_DAC_READ_SEARCH",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
        // The host key and credential stores are hidden from everything the daemon runs.
        "InaccessiblePaths=-/var/lib/systemd/credential.secret -/etc/credstore -/etc/credstore.encrypted -/run/credstore -/run/credstore.encrypted",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "Delegate=yes",
        "StateDirectory=backupnizza",
        "CacheDirectory=backupnizza",
        "RuntimeDirectory=backupnizza",
        "RuntimeDirectoryMode=0700",
        "Environment=XDG_RUNTIME_DIR=/run XDG_STATE_HOME=/var/lib XDG_CACHE_HOME=/var/cache/backupnizza",
        "LoadCredentialEncrypted=restic-repo:/etc/credstore.encrypted/restic-repo",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    // The `command:` secret is not a credential; the local repository must stay writable; the
    // scratch socket and state directories are outside the unit's own, so listed too.
    assert_eq!(unit.matches("LoadCredentialEncrypted=").count(), 1, "{unit}");
    let rw = unit.lines().find(|l| l.starts_with("ReadWritePaths=")).expect("ReadWritePaths");
    assert!(rw.contains("-/srv/restic-repo"), "{rw}");
    assert!(rw.contains(&format!("-{}", scratch.path().join("run").display())), "{rw}");
    assert!(
        unit.contains(
            "useradd --system --home-dir /var/lib/backupnizza --shell /usr/sbin/nologin backupnizza"
        ),
        "{unit}"
    );
    let ours = std::fs::canonicalize(&config).unwrap();
    assert!(
        unit.lines().any(|l| l == format!("ExecStart={BACKUPNIZZA} run -c {}", ours.display())),
        "{unit}"
    );

    // systemd-analyze checks the unit as a system unit (it does not resolve User=, so the
    // account need not exist; ExecStart's binary must).
    let dir = scratch.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    let unit_path = dir.join("backupnizza.service");
    std::fs::write(&unit_path, &unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by .ci/run)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Another account name, and a task file the daemon's environment resolves.
    let named = scratch
        .backupnizza(["service", "systemd", "--system", "--user", "bk-test", "-c"])
        .run_with(&config);
    named.expect_code(0);
    assert!(named.stdout().lines().any(|l| l == "User=bk-test"), "{named}");

    let daemon = scratch.backupnizza(["service", "launchd", "--system", "-c"]).run_with(&config);
    daemon.expect_code(0);
    let plist = strict_plist(&daemon.stdout());
    assert_eq!(plist["Label"], "org.backupnizza.daemon");
    assert_eq!(plist["UserName"], "_backupnizza");
    assert_eq!(plist["GroupName"], "_backupnizza");
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!([BACKUPNIZZA, "run", "-c", ours.display().to_string()])
    );
    assert_eq!(plist["RunAtLoad"], true);
    assert_eq!(plist["KeepAlive"]["SuccessfulExit"], false);
    assert_eq!(plist["StandardErrorPath"], "/Library/Logs/backupnizza/backupnizza.log");
    // A LaunchDaemon runs outside any login session: an Aqua limit would never load it.
    assert!(plist.get("LimitLoadToSessionType").is_none(), "{plist}");
    assert!(daemon.stdout().contains("Full Disk Access"), "{daemon}");

    // The user LaunchAgent's comment held `--install` once: illegal in XML.
    let agent = scratch.backupnizza(["service", "launchd", "-c"]).run_with(&config);
    agent.expect_code(0);
    assert_eq!(strict_plist(&agent.stdout())["LimitLoadToSessionType"], "Aqua");
}

#[test]
fn installing_the_system_unit_is_refused_unless_root_and_a_swappable_binary_is_named() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the command as another user (CI runs as root)");
        return;
    }
    let scratch = Scratch::new();
    let config = system_config(&scratch);
    // nobody must reach the task file and the binary.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    crate::harness::copy_program(BACKUPNIZZA, bin.join("backupnizza"));
    // A binary another user can swap makes the whole mode moot: the command says so.
    nix::unistd::chown(&bin, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    // Another test thread may fork while the copy is still open for writing, and the
    // child then holds it until it execs: ETXTBSY for a moment, so try again.
    let out = (0..50)
        .map(|_| {
            let out = scratch
                .command("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(bin.join("backupnizza"))
                .args(["service", "systemd", "--system", "--install", "-c"])
                .arg(&config)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            out
        })
        .find(|out| !String::from_utf8_lossy(&out.stderr).contains("Text file busy"))
        .expect("the copied binary stayed busy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/etc/systemd/system/backupnizza.service, which only root may do"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: {} is owned by uid 65534, so a non-root user could replace the daemon",
            bin.display()
        )),
        "{stderr}"
    );
}

#[test]
fn secret_set_credential_errors_say_what_to_do() {
    let scratch = Scratch::new();
    let config = system_config(&scratch);
    let store = scratch.path().join("credstore");
    // Not a credential source.
    let wrong = scratch
        .backupnizza(["secret", "set", "other", "--credential", "--credstore"])
        .run_with_args(&store, &["-c", config.to_str().unwrap()]);
    wrong.expect_code(2);
    assert!(wrong.stderr().contains("`file: ${CREDENTIALS_DIRECTORY}/NAME`"), "{wrong}");
    // systemd-creds missing: said before any value is read.
    let empty = scratch.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let missing = scratch
        .backupnizza(["secret", "set", "repo", "--credential", "--credstore"])
        .env("PATH", &empty)
        .run_with_args(&store, &["-c", config.to_str().unwrap()]);
    missing.expect_code(1);
    assert!(missing.stderr().contains("systemd-creds is not on PATH"), "{missing}");
    assert!(!store.join("restic-repo").exists());
}

#[test]
fn a_secret_seeded_with_systemd_creds_reaches_a_task_through_credentials_directory() {
    let scratch = Scratch::new();
    let config = system_config(&scratch);
    let value = canary();
    let store = scratch.path().join("credstore");

    // Seed: the value on stdin, never an argument; only ciphertext lands in the store. The
    // host key (/var/lib/systemd/credential.secret) is created by systemd-creds on first use
    // as root; there is no TPM here, so this is the host-key binding, not TPM2.
    let mut set = scratch.backupnizza(["secret", "set", "repo", "--credential", "--credstore"]).cmd;
    set.arg(&store).arg("-c").arg(&config);
    let mut child =
        set.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{value}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "secret set --credential: {stderr}");
    assert!(stderr.contains("LoadCredentialEncrypted=restic-repo:"), "{stderr}");
    let cred = store.join("restic-repo");
    let meta = std::fs::metadata(&cred).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o700);
    let ciphertext = std::fs::read(&cred).unwrap();
    assert!(!contains(&ciphertext, value.as_bytes()), "the plaintext is in the credential file");
    let leftovers: Vec<_> =
        std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("restic-repo")], "only the credential");

    // What systemd does for LoadCredentialEncrypted=restic-repo:...: decrypt (checking the
    // embedded name) into a private directory, one read-only file per credential.
    let creds_dir = scratch.path().join("credentials");
    std::fs::create_dir(&creds_dir).unwrap();
    std::fs::set_permissions(&creds_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plain = creds_dir.join("restic-repo");
    let decrypt = Command::new("systemd-creds")
        .args(["decrypt", "--name=restic-repo"])
        .arg(&cred)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(decrypt.status.success(), "{}", String::from_utf8_lossy(&decrypt.stderr));
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o400)).unwrap();
    // A credential renamed on disk does not decrypt as another (the name is bound in).
    let renamed = Command::new("systemd-creds")
        .args(["decrypt", "--name=other", "-"])
        .arg(&cred)
        .output()
        .unwrap();
    assert!(!renamed.status.success(), "a credential decrypted under another name");

    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("CREDENTIALS_DIRECTORY", &creds_dir);
    });
    trigger(&scratch, &config, "t", true).expect_code(0);
    assert_eq!(std::fs::read_to_string(scratch.path().join("got")).unwrap().trim_end(), value);
    assert!(!daemon.log_text().contains(&value), "the value is in the daemon's log");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
