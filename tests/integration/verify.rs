//! Proof that backups restore (issue 30), with whichever restic is first on PATH (`.ci/test`
//! runs these with Debian 12's restic 0.14, then Debian 13's 0.18): a verifier task
//! (`verify:`) spot-checks the newest recorded snapshot against the source, reads a rotating
//! subset of the repository's data, compares canaries between snapshots and restores the
//! whole snapshot in a drill. Real restic on real repositories, the real daemon.

use std::fs::FileTimes;
use std::path::{Path, PathBuf};

use crate::harness::{Scratch, TRIGGERED, history, write_private};
use crate::restic_aware::{end_of, repository};

struct Fixture {
    scratch: Scratch,
    repo: String,
    password_file: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let scratch = Scratch::new();
        let (repo, password_file) = repository(&scratch);
        let data = scratch.path().join("Documents");
        std::fs::create_dir_all(data.join("letters")).unwrap();
        for i in 0..6 {
            std::fs::write(
                data.join(format!("letters/l{i}.txt")),
                format!("letter {i}\n").repeat(50),
            )
            .unwrap();
        }
        std::fs::write(data.join("odd [name]*.txt"), "glob characters\n").unwrap();
        std::fs::write(data.join(".canary"), "do not touch\n".repeat(20)).unwrap();
        Fixture { scratch, repo, password_file, data }
    }

    /// A task file: `backup` of the data, and a verifier with `verify` (its text).
    fn config(&self, verify: &str, extra: &str) -> PathBuf {
        let env = format!(
            "    env: {{RESTIC_REPOSITORY: '{}', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}{extra}}}\n    secrets: [repo]\n",
            self.repo,
            self.scratch.path().join("cache").display()
        );
        let body = format!(
            "metrics_textfile: {}\nsecrets:\n  repo: {{file: {}}}\ntasks:\n  backup:\n    {TRIGGERED}\n    command: [restic, backup, --json, {}]\n{env}  verify:\n    {TRIGGERED}\n    verify: {verify}\n{env}",
            self.metrics().display(),
            self.password_file.display(),
            self.data.display(),
        );
        self.scratch.config(&body)
    }

    fn metrics(&self) -> PathBuf {
        self.scratch.path().join("metrics.prom")
    }

    fn trigger(&self, config: &Path, task: &str) -> crate::harness::Run {
        self.scratch.backupnizza(["trigger", "--wait", task, "-c"]).run_with(config)
    }

    fn end(&self) -> serde_json::Value {
        end_of(&history(&self.scratch), "verify").expect("an end of the verifier").clone()
    }

    /// Nothing restored is left in either place a verification restores to.
    fn assert_nothing_restored_left(&self) {
        for root in [
            self.scratch.path().join("state/verify-scratch"),
            self.scratch.path().join("run/verify"),
        ] {
            let left: Vec<_> = std::fs::read_dir(&root)
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", root.display());
        }
    }
}

/// Rewrites `path` with other bytes of the same size and puts its modification time back.
fn tamper_keeping_size_and_time(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes.fill(b'X');
    std::fs::write(path, &bytes).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_times(FileTimes::new().set_modified(meta.modified().unwrap())).unwrap();
    drop(file);
    let now = std::fs::metadata(path).unwrap();
    assert_eq!((now.len(), now.modified().unwrap()), (meta.len(), meta.modified().unwrap()));
}

#[test]
fn a_clean_repository_passes_and_a_file_changed_behind_its_size_and_time_fails_when_sampled() {
    let f = Fixture::new();
    let config = f.config("{tasks: [backup], sample: 50}", "");
    let daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "backup").expect_code(0);
    f.trigger(&config, "verify").expect_code(0);
    let end = f.end();
    let v = &end["verify"];
    assert_eq!(end["status"], "success", "{end}");
    // All 8 files are sampled (fewer than 50), all match.
    assert_eq!((v["sampled"].as_u64(), v["matched"].as_u64()), (Some(8), Some(8)), "{end}");
    assert_eq!(v["mismatched"], 0);
    assert!(v["snapshots"][0].as_str().unwrap().starts_with("backup:"), "{end}");
    f.assert_nothing_restored_left();

    // One file is tampered with behind its size and time; another is changed openly.
    let tampered = f.data.join("letters/l3.txt");
    tamper_keeping_size_and_time(&tampered);
    std::fs::write(f.data.join("letters/l4.txt"), "rewritten, longer than before\n".repeat(80))
        .unwrap();
    let run = f.trigger(&config, "verify");
    assert_ne!(run.code(), Some(0), "a failed verification fails trigger --wait");
    let end = f.end();
    let v = &end["verify"];
    assert_eq!(end["status"], "failed", "{end}");
    assert_eq!((v["mismatched"].as_u64(), v["skipped"].as_u64()), (Some(1), Some(1)), "{end}");
    assert_eq!(v["matched"], 6, "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains(&tampered.display().to_string()), "{reason}");
    assert!(reason.contains("restores with other content"), "{reason}");
    f.assert_nothing_restored_left();

    // The record gives the seed; `history` shows the counts; status says when verified.
    let text = f.scratch.backupnizza(["history", "verify", "-c"]).run_with(&config);
    assert!(text.stdout().contains("mismatched 1"), "{}", text.stdout());
    let status = f.scratch.backupnizza(["status", "--json", "-c"]).run_with(&config);
    let status: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let backup =
        status["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "backup").unwrap();
    assert!(backup["verified"].is_string(), "{status}");

    // The metrics file carries the verification's figures, as Prometheus reads them.
    let samples = crate::home::prometheus_parse(&f.metrics());
    let value = |name: &str, task: &str| {
        samples.iter().find(|(n, t, _)| n == name && t == task).map(|(_, _, v)| *v)
    };
    assert_eq!(value("backupnizza_verify_mismatches", "verify"), Some(1.0), "{samples:?}");
    assert!(value("backupnizza_verify_last_success_timestamp_seconds", "verify").unwrap() > 1.7e9);
    assert!(value("backupnizza_task_last_verified_timestamp_seconds", "backup").unwrap() > 1.7e9);
    // The repository's password reached restic through the token path alone.
    let password = std::fs::read_to_string(&f.password_file).unwrap();
    let history_text =
        std::fs::read_to_string(f.scratch.path().join("state/history.jsonl")).unwrap_or_default();
    for (what, text) in [("log", daemon.log_text()), ("history", history_text)] {
        assert!(!text.contains(password.trim()), "the password is in the {what}");
    }
    assert!(
        daemon.log_text().contains("spot check: chose 8 of the 8 files"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn a_corrupted_pack_fails_the_data_check_of_its_subset_and_that_subset_is_read_again() {
    let f = Fixture::new();
    let config = f.config("{tasks: [backup], sample: 0, check_subset: 2}", "");
    let _daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "backup").expect_code(0);
    // Every pack file of the repository gets bytes flipped in its middle.
    let mut packs = Vec::new();
    let mut todo = vec![PathBuf::from(&f.repo).join("data")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { todo.push(p) } else { packs.push(p) }
        }
    }
    assert!(!packs.is_empty());
    for p in &packs {
        let mut bytes = std::fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0xff;
        }
        write_private(p, &bytes);
    }
    let mut failed_subset = None;
    for _ in 0..2 {
        let run = f.trigger(&config, "verify");
        let end = f.end();
        let subset = end["verify"]["subset"].as_str().unwrap().to_string();
        if run.code() != Some(0) {
            let reason = end["reason"].as_str().unwrap();
            assert!(reason.contains(&format!("data check of subset {subset} failed")), "{reason}");
            failed_subset = Some(subset);
            break;
        }
    }
    let failed = failed_subset.expect("a subset holding a corrupted pack fails its check");
    // Not rotated out of sight: the next run reads the same subset, and fails again.
    assert_ne!(f.trigger(&config, "verify").code(), Some(0));
    assert_eq!(f.end()["verify"]["subset"], failed.as_str());
}

#[test]
fn the_data_check_reads_each_subset_in_turn_across_a_restart() {
    let f = Fixture::new();
    let config = f.config("{tasks: [backup], sample: 0, check_subset: 3}", "");
    let daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "backup").expect_code(0);
    let mut read = Vec::new();
    for _ in 0..2 {
        f.trigger(&config, "verify").expect_code(0);
        read.push(f.end()["verify"]["subset"].as_str().unwrap().to_string());
    }
    assert!(f.end()["verify"]["cycle_completed"].is_null());
    daemon.stop();
    let daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "verify").expect_code(0);
    let end = f.end();
    read.push(end["verify"]["subset"].as_str().unwrap().to_string());
    assert_eq!(read, ["1/3", "2/3", "3/3"]);
    assert!(end["verify"]["cycle_completed"].is_string(), "{end}");
    assert!(daemon.log_text().contains("reading subset 3/3"), "{}", daemon.log_text());
}

#[test]
fn a_canary_replaced_by_random_bytes_of_the_same_size_fails_naming_it() {
    let f = Fixture::new();
    let canary = f.data.join(".canary");
    let config = f
        .config(&format!("{{tasks: [backup], sample: 0, canaries: ['{}']}}", canary.display()), "");
    let _daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "backup").expect_code(0);
    std::fs::write(f.data.join("letters/new.txt"), "another day\n").unwrap();
    f.trigger(&config, "backup").expect_code(0);
    f.trigger(&config, "verify").expect_code(0);
    assert_eq!(f.end()["verify"]["canaries"], 1, "{}", f.end());

    let size = std::fs::metadata(&canary).unwrap().len() as usize;
    let mut bytes = vec![0u8; size];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(&canary, &bytes).unwrap();
    f.trigger(&config, "backup").expect_code(0);
    assert_ne!(f.trigger(&config, "verify").code(), Some(0));
    let end = f.end();
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("canary {} changed between snapshot", canary.display())),
        "{reason}"
    );
    f.assert_nothing_restored_left();
}

#[test]
fn a_drill_restores_everything_and_leaves_nothing_behind_also_when_stopped_at_its_timeout() {
    let f = Fixture::new();
    let config = f.config("{tasks: [backup], sample: 0, drill: true}", "");
    let daemon = f.scratch.start_daemon(&config);
    f.trigger(&config, "backup").expect_code(0);
    f.trigger(&config, "verify").expect_code(0);
    let end = f.end();
    let drill = &end["verify"]["drill"];
    assert_eq!(drill["files"], drill["expected_files"], "{end}");
    assert_eq!(drill["bytes"], drill["expected_bytes"], "{end}");
    assert!(drill["bytes"].as_u64().unwrap() > 2500, "{end}");
    // restic 0.17 and later read every restored file back (`restore --verify`).
    let modern = crate::audit::restic_version() >= (0, 17);
    assert_eq!(drill["restic_verified"], modern, "{end}");
    f.assert_nothing_restored_left();
    daemon.stop();

    // A restic that restores, then hangs: the run's timeout stops it with files restored.
    let bin = f.scratch.path().join("slow-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = crate::harness::on_path("restic");
    let wrapper = bin.join("restic");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\n\"{}\" \"$@\" || exit $?\ncase \"$*\" in *restore*) touch {}/restored-then-hung; exec sleep 600;; esac\n", real.display(), f.scratch.path().display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let path = format!(", PATH: '{}:/usr/bin:/bin'", bin.display());
    let config = f.config("{tasks: [backup], sample: 0, drill: true}", &path);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "  verify:\n",
        "  verify:\n    timeout: 5s\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _daemon = f.scratch.start_daemon(&config);
    let run = f.trigger(&config, "verify");
    assert_ne!(run.code(), Some(0));
    let end = f.end();
    assert_eq!(end["status"], "timeout", "{end}");
    assert!(
        f.scratch.path().join("restored-then-hung").exists(),
        "the restore ran before the timeout"
    );
    f.assert_nothing_restored_left();
}
