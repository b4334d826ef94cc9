//! The snapshot ledger under faults, against the real daemon and real restic on a local
//! repository: a torn last line, a directory or a symbolic link in the ledger's place, an
//! invalid byte, and a full disk. After each, every snapshot the daemon made is in the
//! ledger on a line of its own, and the next audit is clean: the daemon never takes its own
//! snapshot for a forgery.

use std::io::Write;
use std::path::PathBuf;

use crate::harness::{Daemon, Scratch, TRIGGERED, history, trigger, wait_until};
use crate::restic_aware::repository;

/// A task file with a local restic repository, a `backup` task and an `audit` task on it.
struct Setup {
    scratch: Scratch,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let scratch = Scratch::new();
        let (repo, password_file) = repository(&scratch);
        let data = scratch.path().join("Documents");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("notes.txt"), "important\n").unwrap();
        let env = format!(
            "    env: {{RESTIC_REPOSITORY: '{repo}', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo]\n",
            scratch.path().join("cache").display()
        );
        let config = scratch.config(&format!(
            "secrets:\n  repo: {{file: {pw}}}\ntasks:
  backup:
    {TRIGGERED}
    command: [restic, backup, --json, --host, testhost, {data}]
{env}  audit:
    {TRIGGERED}
    command: [restic, snapshots, --json]
    audit: {{tasks: [backup]}}
{env}",
            pw = password_file.display(),
            data = data.display(),
        ));
        Setup { scratch, config }
    }

    fn ledger(&self) -> PathBuf {
        self.scratch.path().join("state/ledger.jsonl")
    }

    fn start(&self) -> Daemon {
        self.scratch.start_daemon(&self.config)
    }

    /// Runs the backup to success; what `trigger --wait` printed.
    fn backup(&self) -> String {
        let run = trigger(&self.scratch, &self.config, "backup", true);
        run.expect_code(0);
        run.stdout()
    }

    /// Runs the audit and checks that it is clean; what `trigger --wait` printed.
    #[track_caller]
    fn audit_is_clean(&self, checked: usize) -> String {
        let run = trigger(&self.scratch, &self.config, "audit", true);
        run.expect_code(0);
        let clean = format!("audit: clean, {checked} recorded snapshot");
        assert!(run.stdout().contains(&clean), "{run}");
        run.stdout()
    }

    /// Appends raw bytes to the ledger, as a crash, a disk or a person might.
    fn append_raw(&self, bytes: &[u8]) {
        let mut file = std::fs::OpenOptions::new().append(true).open(self.ledger()).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// Every snapshot id the backup runs reported (their End records) is a `saved` entry on
    /// a line of the ledger that parses as JSON; returns how many there are.
    #[track_caller]
    fn every_snapshot_is_on_a_line_of_its_own(&self) -> usize {
        let bytes = std::fs::read(self.ledger()).unwrap();
        let saved: Vec<String> = bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .filter(|entry| entry["type"] == "saved")
            .map(|entry| entry["snapshot_id"].as_str().unwrap().to_string())
            .collect();
        let records = history(&self.scratch);
        let ends = records.iter().filter(|r| r["type"] == "end" && r["task"] == "backup");
        let made: Vec<&str> = ends
            .flat_map(|end| end["backups"].as_array().unwrap())
            .map(|b| b["snapshot_id"].as_str().unwrap())
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!made.is_empty(), "no backup recorded: {records:?}");
        for id in &made {
            assert!(
                saved.iter().any(|s| s == id),
                "snapshot {id} is not on a line of its own\n{text}"
            );
        }
        made.len()
    }
}

/// Swaps two paths in one step (`renameat2` with `RENAME_EXCHANGE`), so the ledger's path
/// is never empty while the daemon retries: it would start a new file there. (Linux's call;
/// the suite runs on Linux only, and `.ci/macos` type-checks the rest of it.)
#[cfg(target_os = "linux")]
fn exchange(a: &std::path::Path, b: &std::path::Path) {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).unwrap();
}

/// Regression: a torn last line glued the next `saved` entry onto the fragment, and the
/// next audit called the daemon's own snapshot "made by hand, elsewhere, or forged".
#[test]
fn a_torn_ledger_line_never_swallows_the_next_entry() {
    let setup = Setup::new();
    let daemon = setup.start();
    setup.backup();
    // Torn between runs, while the daemon has the file open ...
    setup.append_raw(br#"{"type":"saved","task":"backup","run_id":"20261202T0"#);
    setup.backup();
    let audit = setup.audit_is_clean(2);
    let skipped = "1 unreadable line of the snapshot ledger skipped (ledger.jsonl line 2)";
    assert!(audit.contains(skipped), "{audit}");
    assert!(daemon.stop().success());
    // ... and while it is stopped, as a crash leaves it.
    setup.append_raw(br#"{"type":"seen","audit":"au"#);
    let daemon = setup.start();
    setup.backup();
    let audit = setup.audit_is_clean(3);
    assert!(audit.contains("2 unreadable lines of the snapshot ledger skipped"), "{audit}");
    let log = daemon.log_text();
    assert!(log.contains("WARN") && log.contains("audit: 2 unreadable lines"), "{log}");
    assert_eq!(setup.every_snapshot_is_on_a_line_of_its_own(), 3);
    assert!(daemon.stop().success());
}

/// Regression: with a directory in the ledger's place the entry was dropped after one
/// ERROR, and once the ledger was repaired the audit called the snapshot forged.
#[test]
#[cfg(target_os = "linux")]
fn a_directory_in_the_ledgers_place_holds_entries_until_the_file_is_back() {
    let setup = Setup::new();
    let daemon = setup.start();
    setup.backup();
    let aside = setup.scratch.path().join("state/ledger.jsonl.aside");
    std::fs::rename(setup.ledger(), &aside).unwrap();
    std::fs::create_dir(setup.ledger()).unwrap();
    let held = "the snapshot ledger could not be written: 1 entry held in memory and retried";
    let run = setup.backup();
    assert!(run.contains(held), "{run}");
    let end = crate::restic_aware::end_of(&history(&setup.scratch), "backup").unwrap().clone();
    assert!(end["reason"].as_str().unwrap().contains(held), "{end}");
    // An audit now cannot read the ledger: it fails, and finds nothing forged.
    let run = trigger(&setup.scratch, &setup.config, "audit", true);
    run.expect_code(1);
    assert!(run.stdout().contains("cannot read the snapshot ledger"), "{run}");
    let end = crate::restic_aware::end_of(&history(&setup.scratch), "audit").unwrap().clone();
    assert!(end.get("findings").is_none(), "{end}");

    exchange(&setup.ledger(), &aside);
    std::fs::remove_dir(&aside).unwrap();
    let log =
        daemon.wait_for("the recovery", |l| l.contains("the snapshot ledger is writable again"));
    assert_eq!(log.matches("cannot write the snapshot ledger").count(), 1, "said once\n{log}");
    let audit = setup.audit_is_clean(2);
    assert!(!audit.contains("unreadable"), "{audit}");
    assert_eq!(setup.every_snapshot_is_on_a_line_of_its_own(), 2);
    assert!(daemon.stop().success());
}

/// Regression: the ledger was read as one UTF-8 string, so one invalid byte anywhere failed
/// every audit until the file was edited by hand.
#[test]
fn an_invalid_byte_in_the_ledger_is_skipped_and_counted() {
    let setup = Setup::new();
    let daemon = setup.start();
    setup.backup();
    setup.append_raw(b"{\"type\":\"saved\",\"task\":\"backup\",\"snapshot_id\":\"\xff\xfe\"}\n");
    setup.backup();
    let audit = setup.audit_is_clean(2);
    let skipped = "1 unreadable line of the snapshot ledger skipped (ledger.jsonl line 2)";
    assert!(audit.contains(skipped), "{audit}");
    assert_eq!(setup.every_snapshot_is_on_a_line_of_its_own(), 2);
    assert!(daemon.stop().success());
}

/// Regression: a symbolic link in the ledger's place was followed, and its target written.
#[test]
#[cfg(target_os = "linux")]
fn a_symbolic_link_in_the_ledgers_place_is_not_followed() {
    let setup = Setup::new();
    let daemon = setup.start();
    setup.backup();
    let target = setup.scratch.write("elsewhere.jsonl", "not the ledger\n");
    let aside = setup.scratch.path().join("state/ledger.jsonl.aside");
    std::fs::rename(setup.ledger(), &aside).unwrap();
    std::os::unix::fs::symlink(&target, setup.ledger()).unwrap();
    let run = setup.backup();
    assert!(run.contains("1 entry held in memory and retried"), "{run}");
    let run = trigger(&setup.scratch, &setup.config, "audit", true);
    run.expect_code(1);
    assert!(run.stdout().contains("a symbolic link, which is not followed"), "{run}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not the ledger\n");
    let log = daemon.wait_for("the error", |l| l.contains("cannot write the snapshot ledger"));
    assert!(log.contains("a symbolic link, which is not followed"), "{log}");

    exchange(&setup.ledger(), &aside);
    std::fs::remove_file(&aside).unwrap();
    daemon.wait_for("the recovery", |l| l.contains("the snapshot ledger is writable again"));
    setup.audit_is_clean(2);
    assert_eq!(setup.every_snapshot_is_on_a_line_of_its_own(), 2);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not the ledger\n");
    assert!(daemon.stop().success());
}

/// An audit sees the entries the daemon holds in memory: on a full disk the backup's
/// `saved` entry cannot be written, and the audit that follows counts it as recorded
/// instead of reporting the daemon's own snapshot as forged.
#[test]
fn an_audit_counts_the_entries_held_in_memory_while_the_disk_is_full() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let setup = Setup::new();
    let state = setup.scratch.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _mount = crate::records::Mount(state.clone());
    let daemon = setup.start();
    setup.backup();
    // tmpfs allocates whole pages: a ledger that fills its page exactly needs a new page for
    // its next entry, which a full disk does not have. The padding is an entry of an audit
    // that does not exist.
    let len = std::fs::metadata(setup.ledger()).unwrap().len() as usize;
    let frame =
        r#"{"type":"audited","audit":"","at":"2026-12-02T10:00:00Z","findings":0}"#.len() + 1;
    let pad = "p".repeat(4096 - len - frame);
    let padding = format!(
        "{{\"type\":\"audited\",\"audit\":\"{pad}\",\"at\":\"2026-12-02T10:00:00Z\",\"findings\":0}}\n"
    );
    setup.append_raw(padding.as_bytes());
    assert_eq!(std::fs::metadata(setup.ledger()).unwrap().len(), 4096);
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", state.join("filler").display()))
        .stderr(std::process::Stdio::null())
        .status();

    let run = setup.backup();
    assert!(run.contains("1 entry held in memory and retried"), "{run}");
    let audit = setup.audit_is_clean(2);
    // Held: the second backup's `saved`, a `seen` for each snapshot, and `audited`.
    assert!(audit.contains("4 entries held in memory and retried"), "{audit}");
    daemon.wait_for("the error", |l| l.contains("cannot write the snapshot ledger"));

    // Room again: the held entries are written, whole and in order.
    std::fs::remove_file(state.join("filler")).unwrap();
    daemon.wait_for("the recovery", |l| l.contains("the snapshot ledger is writable again"));
    wait_until("the held history records", || {
        let records = history(&setup.scratch);
        records.iter().filter(|r| r["type"] == "end" && r["task"] == "backup").count() == 2
    });
    assert_eq!(setup.every_snapshot_is_on_a_line_of_its_own(), 2);
    let audit = setup.audit_is_clean(2);
    assert!(!audit.contains("held") && !audit.contains("unreadable"), "{audit}");
    assert!(daemon.stop().success());
}
