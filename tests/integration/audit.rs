//! The audit tells the truth in real use (issue 27), with whichever restic is first on PATH
//! (`.ci/test` runs these with Debian 12's restic 0.14, then Debian 13's 0.18): the docs'
//! prune recipe (no `--json`) leaves a clean audit; a prune by hand is explained by the
//! audit's `keep:` policy while a deletion by hand is not, until `backupnizza ledger forget`
//! acknowledges it; `--skip-if-unchanged` runs keep a `max_age` audit clean (restic >=
//! 0.17); snapshots of a pipeline whose dump failed are partial and never fresh; restic's
//! exit codes 10, 11 and 12 (restic >= 0.17) and 0.14's Go stack trace give a record whose
//! reason names the cause. Real restic on real repositories, the real daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::harness::{Scratch, TRIGGERED, history, write_private};
use crate::restic_aware::{end_of, repository, restic, snapshot_ids};

/// The restic on PATH, as (major, minor).
pub(crate) fn restic_version() -> (u32, u32) {
    let out = std::process::Command::new("restic").arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A repository, some data, and the `env:` lines of a task using them.
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
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("notes.txt"), "important\n").unwrap();
        Fixture { scratch, repo, password_file, data }
    }

    fn env(&self) -> String {
        format!(
            "    env: {{RESTIC_REPOSITORY: '{}', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo]\n",
            self.repo,
            self.scratch.path().join("cache").display()
        )
    }

    /// A task file with `secrets: repo` and `tasks` (each task's text, then this env).
    fn config(&self, tasks: &[(&str, String)]) -> PathBuf {
        let mut body =
            format!("secrets:\n  repo: {{file: {}}}\ntasks:\n", self.password_file.display());
        for (name, text) in tasks {
            body.push_str(&format!("  {name}:\n    {TRIGGERED}\n{text}{}", self.env()));
        }
        self.scratch.config(&body)
    }

    fn backup_task(&self) -> String {
        format!(
            "    command: [restic, backup, --json, --host, testhost, {}]\n",
            self.data.display()
        )
    }

    fn trigger(&self, config: &Path, task: &str) -> crate::harness::Run {
        self.scratch.backupnizza(["trigger", "--wait", task, "-c"]).run_with(config)
    }

    /// restic by hand (not through the daemon), which must succeed.
    fn by_hand(&self, args: &[&str]) {
        let out =
            restic(&self.scratch, &self.repo, &self.password_file).args(args).output().unwrap();
        assert!(out.status.success(), "restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn end(&self, task: &str) -> serde_json::Value {
        end_of(&history(&self.scratch), task).unwrap_or_else(|| panic!("no end of {task}")).clone()
    }

    fn ledger(&self, config: &Path) -> Vec<serde_json::Value> {
        let run = self.scratch.backupnizza(["ledger", "--json", "-c"]).run_with(config);
        run.expect_code(0);
        serde_json::from_str(&run.stdout()).unwrap()
    }
}

fn states(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter().map(|r| r["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_docs_prune_recipe_without_json_is_recorded_and_the_next_audit_is_clean() {
    let r = Fixture::new();
    // The recipe of backup.yaml.example and docs/operations.md: no --json.
    let prune = "    command: [restic, forget, --prune, --keep-last, '1']\n".to_string();
    let audit = "    command: [restic, snapshots, --json]\n    audit: {tasks: [backup]}\n";
    let config =
        r.config(&[("backup", r.backup_task()), ("prune", prune), ("audit", audit.into())]);
    let daemon = r.scratch.start_daemon(&config);
    for _ in 0..3 {
        r.trigger(&config, "backup").expect_code(0);
    }
    r.trigger(&config, "audit").expect_code(0);
    r.trigger(&config, "prune").expect_code(0);
    assert_eq!(snapshot_ids(&r.scratch, &r.repo, &r.password_file).len(), 1);
    let end = r.end("prune");
    assert!(end["reason"].as_str().unwrap().starts_with("all steps succeeded"), "{end}");
    assert!(
        daemon.log_text().contains("the forget removed 2 snapshots (listed before and after it)"),
        "{}",
        daemon.log_text()
    );

    r.trigger(&config, "audit").expect_code(0);
    let end = r.end("audit");
    assert!(
        end["reason"].as_str().unwrap().contains("audit: clean, 1 recorded snapshot checked"),
        "{end}"
    );
    let rows = r.ledger(&config);
    assert_eq!(states(&rows), ["forgotten", "forgotten", "seen"], "{rows:?}");
    assert!(rows[0]["detail"].as_str().unwrap().contains("by task prune's forget"), "{rows:?}");
    // A second audit: still clean, the forgets are remembered.
    r.trigger(&config, "audit").expect_code(0);
}

#[test]
fn a_prune_by_hand_is_explained_by_the_keep_policy_and_a_deletion_is_not_until_acknowledged() {
    let r = Fixture::new();
    let audit =
        "    command: [restic, snapshots, --json]\n    audit: {tasks: [backup], keep: {last: 2}}\n";
    let config = r.config(&[("backup", r.backup_task()), ("audit", audit.into())]);
    let _daemon = r.scratch.start_daemon(&config);
    for _ in 0..3 {
        r.trigger(&config, "backup").expect_code(0);
    }
    let ids = snapshot_ids(&r.scratch, &r.repo, &r.password_file);
    assert_eq!(ids.len(), 3);

    // Pruned elsewhere (by hand here) with the same policy: explained, reported, clean.
    r.by_hand(&["forget", "--keep-last", "2", "--prune"]);
    r.trigger(&config, "audit").expect_code(0);
    let reason = r.end("audit")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!(
            "1 snapshot pruned by the keep policy (--keep-last 2): {}",
            &ids[0][..8]
        )),
        "{reason}"
    );

    // The newest deleted by hand: the policy would have kept it.
    let newest = &ids[2];
    r.by_hand(&["forget", newest]);
    r.trigger(&config, "audit").expect_code(1);
    let end = r.end("audit");
    let findings = end["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{end}");
    assert_eq!(findings[0]["kind"], "missing", "{end}");
    assert!(newest.starts_with(findings[0]["snapshot_id"].as_str().unwrap()), "{end}");
    assert!(findings[0]["detail"].as_str().unwrap().contains("would have kept it"), "{end}");

    // An id the ledger does not hold is refused, and nothing is written.
    let run = r.scratch.backupnizza(["ledger", "forget", "deadbeef", "--reason", "x", "-c"]);
    let run = run.run_with(&config);
    run.expect_code(2);
    assert!(run.stderr().contains("no snapshot deadbeef in the ledger"), "{}", run.stderr());
    // Acknowledged: the audit passes and says so.
    let run = r.scratch.backupnizza([
        "ledger",
        "forget",
        &newest[..8],
        "--reason",
        "restored elsewhere",
        "-c",
    ]);
    let run = run.run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains(&format!("acknowledged {}", &newest[..8])), "{}", run.stdout());
    r.trigger(&config, "audit").expect_code(0);
    let reason = r.end("audit")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!("1 deletion acknowledged: {} (restored elsewhere)", &newest[..8])),
        "{reason}"
    );
    let rows = r.ledger(&config);
    assert_eq!(states(&rows), ["pruned", "seen", "acknowledged"], "{rows:?}");
}

#[test]
fn unchanged_runs_with_skip_if_unchanged_keep_a_max_age_audit_clean() {
    if restic_version() < (0, 17) {
        eprintln!(
            "SKIPPED: restic {:?} has no --skip-if-unchanged (0.17 added it)",
            restic_version()
        );
        return;
    }
    let r = Fixture::new();
    // The one snapshot claims to be from 2020: only the unchanged runs after it are fresh.
    // A relative path: with an absolute one, restic's tree holds every directory above it
    // (/tmp changes all the time), so nothing would ever be unchanged.
    let backup = format!(
        "    working_dir: {}\n    command: [restic, backup, --json, --skip-if-unchanged, --host, testhost, --time, '2020-01-01 00:00:00', .]\n",
        r.data.display()
    );
    let audit =
        "    command: [restic, snapshots, --json]\n    audit: {tasks: [backup], max_age: 1d}\n";
    let config = r.config(&[("backup", backup), ("audit", audit.into())]);
    let _daemon = r.scratch.start_daemon(&config);
    r.trigger(&config, "backup").expect_code(0);
    r.trigger(&config, "audit").expect_code(1);
    assert_eq!(r.end("audit")["findings"][0]["kind"], "stale");

    for _ in 0..3 {
        r.trigger(&config, "backup").expect_code(0);
        let end = r.end("backup");
        assert_eq!(end["backups"][0]["unchanged"], true, "{end}");
    }
    assert_eq!(snapshot_ids(&r.scratch, &r.repo, &r.password_file).len(), 1);
    r.trigger(&config, "audit").expect_code(0);
    let rows = r.ledger(&config);
    assert_eq!(states(&rows), ["seen", "unchanged", "unchanged", "unchanged"], "{rows:?}");
}

#[test]
fn snapshots_of_a_pipeline_whose_dump_failed_are_partial_and_the_audit_says_stale() {
    let r = Fixture::new();
    let dump = "    pipeline:
      - [sh, -c, 'echo half a dump; echo the database went away >&2; exit 2']
      - [restic, backup, --json, --host, testhost, --stdin, --stdin-filename, db.sql]\n";
    let audit =
        "    command: [restic, snapshots, --json]\n    audit: {tasks: [dump], max_age: 1d}\n";
    let config = r.config(&[("dump", dump.into()), ("audit", audit.into())]);
    let _daemon = r.scratch.start_daemon(&config);
    for _ in 0..2 {
        r.trigger(&config, "dump").expect_code(1);
        let end = r.end("dump");
        assert_eq!(end["backups"][0]["partial"], true, "{end}");
    }
    // restic saved what came: two snapshots, neither a backup.
    assert_eq!(snapshot_ids(&r.scratch, &r.repo, &r.password_file).len(), 2);
    r.trigger(&config, "audit").expect_code(1);
    let end = r.end("audit");
    let findings = end["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{end}");
    assert_eq!(findings[0]["kind"], "stale", "{end}");
    let detail = findings[0]["detail"].as_str().unwrap();
    assert!(detail.contains("2 snapshots partial (their runs failed) not counted"), "{end}");
    let rows = r.ledger(&config);
    assert!(rows.iter().all(|r| r["partial"] == true), "{rows:?}");
}

#[test]
fn restic_exit_codes_10_11_and_12_give_a_reason_that_names_the_cause() {
    if restic_version() < (0, 17) {
        eprintln!(
            "SKIPPED: restic {:?} exits 1 for all three (0.17 gave them codes)",
            restic_version()
        );
        return;
    }
    let r = Fixture::new();
    let wrong = r.scratch.path().join("wrong-password");
    write_private(&wrong, b"not the password");
    let cache = r.scratch.path().join("cache");
    let missing = r.scratch.path().join("no-such-repo");
    let config = r.scratch.config(&format!(
        "secrets:\n  repo: {{file: {pw}}}\n  wrong: {{file: {wrong}}}\ntasks:
  missing:
    {TRIGGERED}
    command: [restic, snapshots, --json]
    env: {{RESTIC_REPOSITORY: '{missing}', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {cache}}}
    secrets: [repo]
  locked:
    {TRIGGERED}
    command: [restic, prune]
{env}  wrong:
    {TRIGGERED}
    command: [restic, snapshots]
    env: {{RESTIC_REPOSITORY: '{repo}', RESTIC_PASSWORD_COMMAND: secretbox get wrong, RESTIC_CACHE_DIR: {cache}}}
    secrets: [wrong]
",
        pw = r.password_file.display(),
        wrong = wrong.display(),
        missing = missing.display(),
        cache = cache.display(),
        repo = r.repo,
        env = r.env(),
    ));
    let _daemon = r.scratch.start_daemon(&config);
    r.trigger(&config, "missing").expect_code(1);
    let reason = r.end("missing")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("exit code 10 (restic: the repository does not exist): "),
        "{reason}"
    );
    assert!(reason.contains("repository does not exist"), "{reason}");

    r.trigger(&config, "wrong").expect_code(1);
    let reason = r.end("wrong")["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("exit code 12 (restic: wrong password"), "{reason}");

    // A backup by hand that waits on its stdin holds the repository's lock.
    let mut holder = restic(&r.scratch, &r.repo, &r.password_file)
        .args(["backup", "--stdin", "--stdin-filename", "held"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"some data\n").unwrap();
    crate::harness::wait_until("the holder's lock", || {
        std::fs::read_dir(Path::new(&r.repo).join("locks")).is_ok_and(|d| d.count() > 0)
    });
    r.trigger(&config, "locked").expect_code(1);
    let reason = r.end("locked")["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("exit code 11 (restic: the repository is locked"), "{reason}");
    assert!(reason.contains("locked"), "{reason}");
    drop(stdin);
    assert!(holder.wait().unwrap().success());
}

#[test]
fn a_forget_the_append_only_server_refuses_removes_nothing_from_the_ledger_and_says_why() {
    let scratch = Scratch::new();
    let server = crate::restic::RestServer::start(&scratch.path().join("rest"));
    let repo = format!("rest:{}/laptop/", server.url);
    let password_file = scratch.path().join("repo-password");
    write_private(&password_file, crate::harness::canary().as_bytes());
    let out = restic(&scratch, &repo, &password_file).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = Fixture { repo, password_file, data: scratch.path().join("Documents"), scratch };
    std::fs::create_dir_all(&r.data).unwrap();
    std::fs::write(r.data.join("notes.txt"), "important\n").unwrap();
    let prune = "    command: [restic, forget, --keep-last, '1']\n".to_string();
    let audit = "    command: [restic, snapshots, --json]\n    audit: {tasks: [backup]}\n";
    let config =
        r.config(&[("backup", r.backup_task()), ("prune", prune), ("audit", audit.into())]);
    let _daemon = r.scratch.start_daemon(&config);
    r.trigger(&config, "backup").expect_code(0);
    r.trigger(&config, "backup").expect_code(0);
    r.trigger(&config, "prune");
    let end = r.end("prune");
    if restic_version() < (0, 17) {
        // restic 0.14 fails with the server's 403 and a Go stack trace: the reason names
        // the 403, and the trace's frames are not what the record keeps.
        assert_eq!(end["status"], "failed", "{end}");
        let reason = end["reason"].as_str().unwrap();
        assert!(reason.contains("403 Forbidden"), "{end}");
        let tail = end["stderr_tail"].as_array().unwrap();
        assert!(!tail.iter().any(|l| l.as_str().unwrap().contains(".go:")), "{end}");
    }
    // restic 0.18 exits 0 and says it removed one; the listings know better.
    assert_eq!(snapshot_ids(&r.scratch, &r.repo, &r.password_file).len(), 2);
    let rows = r.ledger(&config);
    assert_eq!(states(&rows), ["saved", "saved"], "{rows:?}");
    r.trigger(&config, "audit").expect_code(0);
}

/// A task that sets `PATH` (to reach a newer restic, say) still gets the `secretbox` beside
/// the daemon first on it, as the docs promise.
#[test]
fn a_task_whose_env_sets_path_still_finds_the_secretbox_beside_the_daemon() {
    let r = Fixture::new();
    let restic = crate::harness::on_path("restic");
    let restic_dir = restic.parent().unwrap();
    let task = format!(
        "    steps:\n      - command: [restic, snapshots]\n        env: {{PATH: '{}:/usr/bin:/bin'}}\n",
        restic_dir.display()
    );
    let config = r.config(&[("list", task)]);
    let daemon = r.scratch.start_daemon(&config);
    r.trigger(&config, "list").expect_code(0);
    assert!(!daemon.log_text().contains("secretbox: not found"), "{}", daemon.log_text());
}

/// The directory of `program` on the test's PATH.
/// Regression: a failed attempt's snapshot (a dump that broke, tried again by `retry:`) was
/// left out of the ledger, and the next audit called it forged.
#[test]
fn every_attempts_snapshot_reaches_the_ledger_and_the_audit_stays_clean() {
    let r = Fixture::new();
    let marker = r.scratch.path().join("failed-once");
    let dump = format!(
        "    retry: {{attempts: 2, delay: 1s}}
    pipeline:
      - [sh, -c, 'echo dump; test -e {m} || {{ touch {m}; exit 2; }}']
      - [restic, backup, --json, --host, testhost, --stdin, --stdin-filename, db.sql]\n",
        m = marker.display()
    );
    let audit = "    command: [restic, snapshots, --json]\n    audit: {tasks: [dump]}\n";
    let config = r.config(&[("dump", dump), ("audit", audit.into())]);
    let _daemon = r.scratch.start_daemon(&config);
    r.trigger(&config, "dump").expect_code(0);
    let end = r.end("dump");
    assert_eq!(end["attempts"].as_array().map(Vec::len), Some(1), "{end}");
    assert_eq!(snapshot_ids(&r.scratch, &r.repo, &r.password_file).len(), 2);
    let rows = r.ledger(&config);
    let partial: Vec<bool> = rows.iter().map(|r| r["partial"] == true).collect();
    assert_eq!(partial, [true, false], "{rows:?}");
    r.trigger(&config, "audit").expect_code(0);
}
