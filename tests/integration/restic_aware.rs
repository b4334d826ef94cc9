//! What the daemon learns from restic, and how it shapes runs: the `backup --json` summary
//! in history (`history --json`), hooks, webhooks and metrics, with restic's progress kept
//! out of the log; `retry:` (a fresh token per attempt, one notification); `lock:` (two
//! tasks on one repository never overlap); and the stderr tail under a failed run in
//! `history`. Real restic on a local repository, a real HTTP server for the webhook.

use std::path::Path;

use crate::harness::{Scratch, TRIGGERED, canary, history, wait_until, write_private};
use crate::home::HttpSink;

/// A local restic repository with a random password in a private file, initialized.
pub(crate) fn repository(scratch: &Scratch) -> (String, std::path::PathBuf) {
    let password = canary();
    let file = scratch.path().join("repo-password");
    write_private(&file, password.as_bytes());
    let repo = scratch.path().join("repo").display().to_string();
    let out = restic(scratch, &repo, &file).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (repo, file)
}

/// restic run by hand (by the test, not the daemon) on the repository.
pub(crate) fn restic(scratch: &Scratch, repo: &str, password_file: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("restic");
    cmd.env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .env("RESTIC_CACHE_DIR", scratch.path().join("cache"))
        .arg("--quiet");
    cmd
}

pub(crate) fn end_of<'h>(
    records: &'h [serde_json::Value],
    task: &str,
) -> Option<&'h serde_json::Value> {
    records.iter().rev().find(|r| r["type"] == "end" && r["task"] == task)
}

#[test]
fn a_backup_summary_reaches_history_hooks_the_webhook_and_metrics_and_progress_stays_out_of_the_log()
 {
    let scratch = Scratch::new();
    let sink = HttpSink::start();
    let (repo, password_file) = repository(&scratch);
    let data = scratch.path().join("Documents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), canary().repeat(1000)).unwrap();
    let seen = scratch.path().join("hook-saw");
    let metrics = scratch.path().join("metrics.prom");
    let config = scratch.config(&format!(
        "secrets:
  repo: {{file: {pw}}}
metrics_textfile: {metrics}
notify: {{webhook: {url}/hook}}
tasks:
  backup:
    {TRIGGERED}
    # A source that takes a second: restic 0.18 prints no progress for a backup that is
    # over before its first tick.
    pipeline:
      - [sh, -c, 'cat {data}/notes.txt; sleep 1']
      - [restic, backup, --json, --host, testhost, --stdin, --stdin-filename, notes.txt]
    env:
      RESTIC_REPOSITORY: {repo}
      RESTIC_PASSWORD_COMMAND: secretbox get repo
      RESTIC_CACHE_DIR: {cache}
      RESTIC_PROGRESS_FPS: '30'
    secrets: [repo]
    hooks:
      on_success: [sh, -c, 'echo \"$BACKUPNIZZA_SNAPSHOT_ID $BACKUPNIZZA_DATA_ADDED\" > {seen}']
",
        pw = password_file.display(),
        metrics = metrics.display(),
        url = sink.url,
        data = data.display(),
        cache = scratch.path().join("cache").display(),
        seen = seen.display(),
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "backup", "-c"]).run_with(&config).expect_code(0);

    // The repository's own word on the snapshot, asked by hand.
    let out =
        restic(&scratch, &repo, &password_file).args(["snapshots", "--json"]).output().unwrap();
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let id = snapshots[0]["id"].as_str().unwrap().to_string();

    // `history --json`: one object per line, every line parses, the run carries the id.
    let json = scratch.backupnizza(["history", "--json", "-c"]).run_with(&config);
    json.expect_code(0);
    let objects: Vec<serde_json::Value> =
        json.stdout().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let run = objects.iter().find(|o| o["task"] == "backup" && o["type"] == "run").unwrap();
    assert_eq!(run["status"], "success", "{run}");
    // restic before 0.16 reports the short id, later ones the full id.
    let reported = run["snapshot_id"].as_str().unwrap().to_string();
    assert!(reported.len() >= 8 && id.starts_with(&reported), "{run} vs {id}");
    let added = run["data_added"].as_u64().unwrap();
    assert!(added > 0, "{run}");
    assert_eq!(run["backups"][0]["files_new"], 1, "{run}");
    assert!(run["started"].is_string() && run["ended"].is_string(), "{run}");
    // The text form shows the short id.
    let text = scratch.backupnizza(["history", "backup", "-c"]).run_with(&config);
    assert!(text.stdout().contains(&format!("snapshot {}", &id[..8])), "{}", text.stdout());

    // The hook got the id and the figure.
    wait_until("the on_success hook", || seen.exists());
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), format!("{reported} {added}"));
    // The webhook's end document carries them.
    let requests = sink.wait_for(2);
    let end: serde_json::Value = requests
        .iter()
        .map(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
        .find(|v| v["event"] == "end")
        .unwrap();
    assert_eq!(
        (end["snapshot_id"].as_str(), end["data_added"].as_u64()),
        (Some(reported.as_str()), Some(added))
    );
    // The metrics file has the figures.
    wait_until("the metrics", || {
        std::fs::read_to_string(&metrics).unwrap_or_default().contains("last_backup_data_added")
    });
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(&format!(
            "backupnizza_task_last_backup_data_added_bytes{{task=\"backup\"}} {added}\n"
        )),
        "{text}"
    );
    assert!(text.contains("backupnizza_task_last_backup_files_new{task=\"backup\"} 1\n"), "{text}");

    // Progress stayed out of the log (restic printed some: the log says how many).
    let log = daemon.log_text();
    assert!(!log.contains("\"message_type\":\"status\""), "{log}");
    assert!(
        log.contains("restic progress messages (message_type status) were not logged"),
        "{log}"
    );
    assert!(log.contains("\"message_type\":\"summary\""), "the summary is logged: {log}");
    assert!(!log.contains('\x1b'), "no terminal escapes in the log");
}

#[test]
fn terminal_escapes_never_reach_the_log() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  colour:\n    {TRIGGERED}\n    command: [printf, '\\033[2K[0:01] 3 files\\r\\n\\033[1;31mred alert\\033[0m\\n\\033]0;title\\007done\\n']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "colour", "-c"]).run_with(&config).expect_code(0);
    let log = daemon.wait_for("the output", |l| l.contains("done"));
    assert!(log.contains("[0:01] 3 files") && log.contains("red alert"), "{log}");
    assert!(!log.contains('\x1b') && !log.contains("\\u001b") && !log.contains("title"), "{log}");
}

#[test]
fn a_run_that_fails_twice_is_tried_again_with_a_fresh_token_and_notifies_once() {
    let scratch = Scratch::new();
    let sink = HttpSink::start();
    let secret = canary();
    let file = scratch.path().join("s");
    write_private(&file, secret.as_bytes());
    let counter = scratch.path().join("attempts");
    let got = scratch.path().join("got");
    // Each attempt redeems its token (redeem_limit 1: a reused token would be refused),
    // then fails until the third.
    let script = format!(
        "secretbox get s >> {got} && echo x >> {counter} && test $(wc -l < {counter}) -ge 3 || {{ echo attempt $BACKUPNIZZA_ATTEMPT failed >&2; exit 4; }}",
        got = got.display(),
        counter = counter.display()
    );
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\nnotify: {{webhook: {}/hook}}\ntasks:\n  flaky:\n    {TRIGGERED}\n    command: [sh, -c, '{script}']\n    secrets: [s]\n    retry: {{attempts: 4, delay: 1s, backoff: 1.5}}\n",
        file.display(),
        sink.url
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "flaky", "-c"]).run_with(&config).expect_code(0);

    assert_eq!(std::fs::read_to_string(&got).unwrap(), format!("{secret}\n").repeat(3));
    let log = daemon.log_text();
    let tokens: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("started process with a one-time token"))
        .filter_map(|l| l.split("token=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(tokens.len(), 3, "three attempts, three tokens: {log}");
    assert!(log.contains("attempt 1 of 4 failed (exit code 4); trying again in 1s"), "{log}");
    assert!(log.contains("attempt 2 of 4 failed (exit code 4); trying again in"), "{log}");

    // One run in history, its earlier attempts linked in its End record.
    let records = history(&scratch);
    let starts = records.iter().filter(|r| r["type"] == "start" && r["task"] == "flaky").count();
    assert_eq!(starts, 1);
    let end = end_of(&records, "flaky").unwrap();
    assert_eq!(end["status"], "success", "{end}");
    assert!(end["reason"].as_str().unwrap().starts_with("attempt 3 of 4: "), "{end}");
    let attempts = end["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{end}");
    assert_eq!(
        (attempts[0]["attempt"].as_u64(), attempts[0]["exit_code"].as_i64()),
        (Some(1), Some(4))
    );
    let text = scratch.backupnizza(["history", "flaky", "-c"]).run_with(&config).stdout();
    assert!(
        text.contains("attempt 1 failed, exit 4") && text.contains("attempt 2 failed, exit 4"),
        "{text}"
    );

    // One start and one end notification, for the final result.
    sink.wait_for(2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let requests = sink.wait_for(2);
    let events: Vec<String> = requests
        .iter()
        .map(|(_, _, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["event"].to_string()
        })
        .collect();
    assert_eq!(events, ["\"start\"", "\"end\""], "{requests:?}");
}

#[test]
fn a_wrong_restic_password_is_not_tried_again_where_restic_says_so() {
    let scratch = Scratch::new();
    let (repo, _) = repository(&scratch);
    let wrong = scratch.path().join("wrong");
    write_private(&wrong, canary().as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:\n  snapshots:\n    {TRIGGERED}\n    command: [restic, snapshots]\n    env: {{RESTIC_REPOSITORY: {repo}, RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo]\n    retry: {{attempts: 3, delay: 1s}}\n",
        wrong.display(),
        scratch.path().join("cache").display()
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "snapshots", "-c"]).run_with(&config).expect_code(1);
    let records = history(&scratch);
    let end = end_of(&records, "snapshots").unwrap();
    if end["exit_code"] != 12 {
        // restic before 0.17 exits 1 on a wrong password: a failure like any other, retried.
        eprintln!(
            "SKIPPED the no-retry assertion: the installed restic reports a wrong password as exit code {} (code 12 needs restic 0.17)",
            end["exit_code"]
        );
        assert_eq!(end["attempts"].as_array().map(Vec::len), Some(2), "{end}");
        return;
    }
    assert!(end.get("attempts").is_none(), "not retried: {end}");
    assert!(daemon.log_text().contains("not tried again (restic: wrong password)"));
}

#[test]
fn tasks_sharing_a_lock_never_overlap_and_explain_shows_the_wait() {
    let scratch = Scratch::new();
    let stamps = scratch.path().join("stamps");
    let task = |name: &str| {
        format!(
            "  {name}:\n    {TRIGGERED}\n    lock: repo\n    command: [sh, -c, 'echo {name} begin $(date +%s.%N) >> {s}; sleep 1; echo {name} end $(date +%s.%N) >> {s}']\n",
            s = stamps.display()
        )
    };
    let config =
        scratch.config(&format!("tasks:\n{}{}{}", task("backup"), task("prune"), task("check")));
    let daemon = scratch.start_daemon(&config);
    for name in ["backup", "prune", "check"] {
        scratch.backupnizza(["trigger", name, "-c"]).run_with(&config).expect_code(0);
    }
    wait_until("three runs", || {
        history(&scratch).iter().filter(|r| r["type"] == "end" && r["status"] == "success").count()
            == 3
    });
    // From the tasks' own clocks: each run's begin comes after the previous run's end.
    let text = std::fs::read_to_string(&stamps).unwrap();
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for name in ["backup", "prune", "check"] {
        let at = |what: &str| -> f64 {
            let prefix = format!("{name} {what} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap()
        };
        spans.push((at("begin"), at("end")));
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlap: {spans:?}\n{text}");
    }
    let log = daemon.log_text();
    assert!(log.contains("waiting for the lock, held by task"), "{log}");
    let waited: Vec<serde_json::Value> = history(&scratch)
        .into_iter()
        .filter(|r| r["type"] == "start" && r["lock_wait"]["lock"] == "repo")
        .collect();
    assert_eq!(waited.len(), 2, "two of three waited");
    let late = waited[1]["task"].as_str().unwrap();
    let explain = scratch.backupnizza(["explain", late, "-c"]).run_with(&config).stdout();
    assert!(
        explain.contains("after waiting") && explain.contains("for lock repo (held by"),
        "{explain}"
    );
    let json = scratch.backupnizza(["explain", late, "--json", "-c"]).run_with(&config).stdout();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["manual"][0]["lock_wait"]["lock"], "repo", "{doc}");
    assert_eq!(doc["manual"][0]["status"], "success", "{doc}");
}

#[test]
fn history_shows_the_last_stderr_lines_under_a_failed_run() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  broken:\n    {TRIGGERED}\n    command: [sh, -c, 'for i in 1 2 3 4 5 6 7; do echo problem $i >&2; done; exit 2']\n  fine:\n    {TRIGGERED}\n    command: [sh, -c, 'echo just chatter >&2']\n"
    ));
    let _daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "broken", "-c"]).run_with(&config).expect_code(1);
    scratch.backupnizza(["trigger", "--wait", "fine", "-c"]).run_with(&config).expect_code(0);
    let text = scratch.backupnizza(["history", "-c"]).run_with(&config).stdout();
    for i in 3..=7 {
        assert!(text.contains(&format!("    | problem {i}\n")), "{text}");
    }
    assert!(!text.contains("| problem 2") && !text.contains("| just chatter"), "{text}");
}

/// The snapshots in the repository at `repo` (a path), by hand: `(full id, time)`.
pub(crate) fn snapshot_ids(scratch: &Scratch, repo: &str, password_file: &Path) -> Vec<String> {
    let out = restic(scratch, repo, password_file).args(["snapshots", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_audit_reports_deleted_and_forged_snapshots_by_id_and_not_our_own_forget() {
    let scratch = Scratch::new();
    let sink = HttpSink::start();
    let server = crate::restic::RestServer::start(&scratch.path().join("rest"));
    let local = scratch.path().join("rest/laptop").display().to_string();
    let password = canary();
    let password_file = scratch.path().join("repo-password");
    write_private(&password_file, password.as_bytes());
    let out = restic(&scratch, &local, &password_file).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = scratch.path().join("Documents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "important\n").unwrap();
    let metrics = scratch.path().join("metrics.prom");
    let env = |repo: &str| {
        format!(
            "    env: {{RESTIC_REPOSITORY: '{repo}', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo]\n",
            scratch.path().join("cache").display()
        )
    };
    // Backups and audits through the append-only server; retention on the directory itself,
    // with the rights the server does not give.
    let rest = format!("rest:{}/laptop/", server.url);
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {pw}}}\nmetrics_textfile: {metrics}\ntasks:
  backup:
    {TRIGGERED}
    command: [restic, backup, --json, --host, testhost, {data}]
{rest_env}  audit:
    {TRIGGERED}
    command: [restic, snapshots, --json]
    audit: {{tasks: [backup], max_age: 1h}}
    notify: {{ping: {url}/ping, webhook: {url}/hook}}
{rest_env}  stale:
    {TRIGGERED}
    command: [restic, snapshots, --json]
    audit: {{tasks: [backup], max_age: 2s}}
{rest_env}  prune:
    {TRIGGERED}
    command: [restic, forget, --keep-last, '1', --json]
{local_env}",
        pw = password_file.display(),
        metrics = metrics.display(),
        data = data.display(),
        url = sink.url,
        rest_env = env(&rest),
        local_env = env(&local),
    ));
    let daemon = scratch.start_daemon(&config);
    let trigger =
        |task: &str| scratch.backupnizza(["trigger", "--wait", task, "-c"]).run_with(&config);
    trigger("backup").expect_code(0);
    trigger("backup").expect_code(0);
    let ours = snapshot_ids(&scratch, &local, &password_file);
    assert_eq!(ours.len(), 2);
    let ledger = std::fs::read_to_string(scratch.path().join("state/ledger.jsonl")).unwrap();
    let saved = ledger.lines().filter(|l| l.contains("\"type\":\"saved\"")).count();
    assert_eq!(saved, 2, "two backups in the ledger: {ledger}");

    // A clean repository: the audit succeeds.
    trigger("audit").expect_code(0);
    let end = end_of(&history(&scratch), "audit").unwrap().clone();
    assert!(
        end["reason"].as_str().unwrap().contains("audit: clean, 2 recorded snapshots checked"),
        "{end}"
    );

    // Behind the daemon's back, on the repository directly: one snapshot deleted, one made
    // with the same host name and path.
    let deleted = ours[0].clone();
    let out = restic(&scratch, &local, &password_file).args(["forget", &deleted]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = restic(&scratch, &local, &password_file)
        .args(["backup", "--host", "testhost"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forged = snapshot_ids(&scratch, &local, &password_file)
        .into_iter()
        .find(|id| !ours.contains(id))
        .unwrap();

    trigger("audit").expect_code(1);
    let end = end_of(&history(&scratch), "audit").unwrap().clone();
    assert_eq!(end["status"], "failed", "{end}");
    let findings = end["findings"].as_array().unwrap();
    let find = |kind: &str| {
        findings.iter().find(|f| f["kind"] == kind).unwrap_or_else(|| panic!("no {kind}: {end}"))
    };
    assert!(deleted.starts_with(find("missing")["snapshot_id"].as_str().unwrap()), "{end}");
    assert_eq!(find("unrecorded")["snapshot_id"], forged.as_str(), "{end}");
    assert_eq!(findings.len(), 2, "{end}");
    let text = scratch.backupnizza(["history", "audit", "-c"]).run_with(&config).stdout();
    assert!(text.contains(&format!("! audit: snapshot {} is missing", &deleted[..8])), "{text}");
    assert!(text.contains(&format!("! audit: snapshot {} (host testhost", &forged[..8])), "{text}");
    // The failure notification names both: the ping (to /fail, with the findings as its
    // body) and the webhook. Two audit runs, each a start and an end, each a ping and a
    // webhook: all 8 (waiting for 6 raced the last webhook).
    let requests = sink.wait_for(8);
    let fail = requests
        .iter()
        .find(|(_, p, _)| p.starts_with("/ping/fail"))
        .unwrap_or_else(|| panic!("{requests:?}"));
    let body = String::from_utf8_lossy(&fail.2);
    assert!(body.contains(&deleted[..8]) && body.contains(&forged[..8]), "{body}");
    let hook: serde_json::Value = requests
        .iter()
        .filter(|(_, p, _)| p == "/hook")
        .map(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
        .rfind(|v| v["event"] == "end" && v["status"] == "failed")
        .unwrap();
    let ids: Vec<&str> = hook["audit_findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["snapshot_id"].as_str())
        .collect();
    assert!(ids.contains(&forged.as_str()) && ids.iter().any(|i| deleted.starts_with(i)), "{hook}");
    let log = daemon.log_text();
    assert!(log.lines().any(|l| l.contains("ERROR") && l.contains("kind=missing")), "{log}");
    wait_until("the audit's metric", || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .contains("backupnizza_audit_findings{task=\"audit\"} 2\n")
    });

    // Backups stopped: the newest recorded snapshot is older than the stale audit's 2s.
    std::thread::sleep(std::time::Duration::from_secs(3));
    trigger("stale").expect_code(1);
    let end = end_of(&history(&scratch), "stale").unwrap().clone();
    let stale = end["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "stale").cloned();
    assert!(
        stale.is_some_and(|f| f["detail"].as_str().unwrap().contains("backups have stopped")),
        "{end}"
    );

    // Our own retention: keeps the newest (the forged one), removes the second backup; the
    // next audit does not report that removal.
    trigger("prune").expect_code(0);
    let removed = ours[1].clone();
    assert!(!snapshot_ids(&scratch, &local, &password_file).contains(&removed));
    trigger("audit").expect_code(1);
    let end = end_of(&history(&scratch), "audit").unwrap().clone();
    let reported: Vec<&str> = end["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["snapshot_id"].as_str())
        .collect();
    assert!(
        !reported.iter().any(|id| removed.starts_with(id)),
        "our forget is not an alarm: {end}"
    );
    assert!(reported.iter().any(|id| deleted.starts_with(id)), "{end}");
    drop(server);
    assert!(!daemon.log_text().contains(&password));
}

#[test]
fn a_pipeline_feeds_a_dump_into_restic_and_fails_when_any_stage_does() {
    let scratch = Scratch::new();
    let (repo, password_file) = repository(&scratch);
    let secret = canary();
    let dump_key = scratch.path().join("dump-key");
    write_private(&dump_key, secret.as_bytes());
    let env = format!(
        "    env: {{RESTIC_REPOSITORY: {repo}, RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo, dump]\n",
        scratch.path().join("cache").display()
    );
    // The "dump" redeems a secret of its own (its own token), restic redeems the password
    // (another token): each stage has one.
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\n  dump: {{file: {}}}\ntasks:
  dump:
    {TRIGGERED}
    pipeline:
      - [sh, -c, 'test \"$(secretbox get dump)\" = {secret} && echo \"stage $BACKUPNIZZA_STAGE\" && seq 1 1000']
      - [restic, backup, --json, --host, testhost, --stdin, --stdin-filename, db.sql]
{env}  broken:
    {TRIGGERED}
    pipeline:
      - [sh, -c, 'echo half a dump; echo the database went away >&2; exit 3']
      - [restic, backup, --json, --host, testhost, --stdin, --stdin-filename, broken.sql]
{env}  hung:
    {TRIGGERED}
    timeout: 2s
    kill_grace: 1s
    pipeline:
      - [sleep, '300']
      - [sh, -c, 'cat > /dev/null; sleep 300']
{env}",
        password_file.display(),
        dump_key.display()
    ));
    let daemon = scratch.start_daemon(&config);
    let trigger =
        |task: &str| scratch.backupnizza(["trigger", "--wait", task, "-c"]).run_with(&config);

    trigger("dump").expect_code(0);
    let out = restic(&scratch, &repo, &password_file)
        .args(["dump", "latest", "db.sql"])
        .output()
        .unwrap();
    let restored = String::from_utf8(out.stdout).unwrap();
    let expected: String = std::iter::once("stage 1".to_string())
        .chain((1..=1000).map(|i| i.to_string()))
        .map(|l| l + "\n")
        .collect();
    assert_eq!(restored, expected, "the snapshot holds the first stage's output");
    let log = daemon.log_text();
    let tokens: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("task=dump") && l.contains("started process with a one-time token"))
        .filter_map(|l| l.split("token=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(tokens.len(), 2, "one token per stage: {log}");
    let end = end_of(&history(&scratch), "dump").unwrap().clone();
    assert!(end["backups"][0]["snapshot_id"].is_string(), "{end}");

    // The first stage failed: the step fails, though restic made a snapshot of what came.
    trigger("broken").expect_code(1);
    let end = end_of(&history(&scratch), "broken").unwrap().clone();
    assert_eq!(end["status"], "failed", "{end}");
    assert_eq!(end["exit_code"], 3, "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains("stage 1 of 2 (sh) exit code 3"), "{end}");
    assert!(end["stderr_tail"].to_string().contains("the database went away"), "{end}");

    // Killed by its timeout: no stage is left.
    trigger("hung").expect_code(1);
    let end = end_of(&history(&scratch), "hung").unwrap().clone();
    assert_eq!(end["status"], "timeout", "{end}");
    let pids: Vec<u32> = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("task=hung") && l.contains("started process"))
        .filter_map(|l| l.split(" pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "two stages started");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "stage {pid} outlived the timeout");
    }
}

#[test]
fn parallel_steps_overlap_each_with_its_token_and_the_run_fails_if_one_does() {
    let scratch = Scratch::new();
    let stamps = scratch.path().join("stamps");
    let secret = canary();
    let file = scratch.path().join("s");
    write_private(&file, secret.as_bytes());
    let step = |name: &str, code: u8| {
        format!(
            "      - command: [sh, -c, 'test \"$(secretbox get s)\" = {secret} && echo {name} begin $(date +%s.%N) >> {s}; sleep 1; echo {name} end $(date +%s.%N) >> {s}; exit {code}']\n",
            s = stamps.display()
        )
    };
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:\n  both:\n    {TRIGGERED}\n    parallel: true\n    secrets: [s]\n    steps:\n{}{}  one-fails:\n    {TRIGGERED}\n    parallel: true\n    secrets: [s]\n    steps:\n{}{}",
        file.display(),
        step("a", 0),
        step("b", 0),
        step("c", 5),
        step("d", 0),
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "both", "-c"]).run_with(&config).expect_code(0);
    scratch.backupnizza(["trigger", "--wait", "one-fails", "-c"]).run_with(&config).expect_code(1);
    let text = std::fs::read_to_string(&stamps).unwrap();
    let at = |name: &str, what: &str| -> f64 {
        let prefix = format!("{name} {what} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in {text}"))
            .parse()
            .unwrap()
    };
    // Each began before the other ended: they overlapped.
    assert!(at("a", "begin") < at("b", "end") && at("b", "begin") < at("a", "end"), "{text}");
    // The failing step did not stop the other, and fails the run.
    assert!(text.contains("d end"), "{text}");
    let end = end_of(&history(&scratch), "one-fails").unwrap().clone();
    assert_eq!(
        (end["status"].as_str(), end["exit_code"].as_i64()),
        (Some("failed"), Some(5)),
        "{end}"
    );
    assert!(end["reason"].as_str().unwrap().contains("(step 1 of 2)"), "{end}");
    let log = daemon.log_text();
    assert!(log.contains("step{n=2}"), "each step's lines are marked: {log}");
    let tokens: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("task=both") && l.contains("started process with a one-time token"))
        .filter_map(|l| l.split("token=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(tokens.len(), 2, "{log}");
}

#[test]
fn trigger_follow_prints_the_output_redacted_and_exits_with_the_task_code() {
    let scratch = Scratch::new();
    let secret = canary();
    let file = scratch.path().join("s");
    write_private(&file, secret.as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:\n  restore:\n    schedule: manual\n    secrets: [s]\n    command: [sh, -c, 'for i in 1 2 3; do echo line $i; sleep 0.3; done; echo leaked $(secretbox get s); echo trouble >&2; exit 7']\n    hooks:\n      before: [echo, getting ready]\n",
        file.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    let run =
        scratch.backupnizza(["trigger", "--wait", "--follow", "restore", "-c"]).run_with(&config);
    run.expect_code(7);
    assert_eq!(
        run.stdout(),
        "[before] getting ready\nline 1\nline 2\nline 3\nleaked ***\n",
        "{run}"
    );
    let err = run.stderr();
    assert!(err.contains("trouble") && err.contains("triggered restore: run "), "{err}");
    assert!(err.contains("failed (exit 7"), "{err}");
    assert!(!run.stdout().contains(&secret) && !err.contains(&secret));
}

#[test]
fn unlock_stale_clears_the_lock_a_timed_out_run_left_and_the_next_run_succeeds() {
    use nix::sys::signal::{Signal, kill};
    let scratch = Scratch::new();
    // A server the test can freeze: restic, stopped at its timeout, then cannot remove its
    // lock, is killed, and leaves the lock behind. The frozen server is then killed and a new
    // one started on its address: restic 0.18 gets its lock's DELETE into the frozen server's
    // socket before it is killed, and a server that was only continued would carry it out.
    let rest = scratch.path().join("rest");
    let server = crate::restic::RestServer::serve("rclone", &["restic"], &rest);
    let local = scratch.path().join("rest/laptop");
    let password_file = scratch.path().join("repo-password");
    write_private(&password_file, canary().as_bytes());
    let out = restic(&scratch, &local.display().to_string(), &password_file)
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let go = scratch.path().join("go");
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {pw}}}\ntasks:
  db:
    {TRIGGERED}
    timeout: 4s
    kill_grace: 1s
    unlock_stale: true
    env: {{RESTIC_REPOSITORY: 'rest:{url}/laptop/', RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {cache}}}
    secrets: [repo]
    pipeline:
      - [sh, -c, 'if test -e {go}; then echo dump; else sleep 300; fi']
      - [restic, backup, --stdin, --stdin-filename, db.sql]
",
        pw = password_file.display(),
        url = server.url,
        cache = scratch.path().join("cache").display(),
        go = go.display(),
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "db", "-c"]).run_with(&config).expect_code(0);
    let locks = || std::fs::read_dir(local.join("locks")).map_or(0, Iterator::count);
    // The lock must be written whole before the server is frozen: rclone writes in place,
    // and a lock frozen half-written is one `restic unlock` cannot load and rightly leaves.
    let lock_whole = || {
        let Some(Ok(entry)) =
            std::fs::read_dir(local.join("locks")).ok().and_then(|mut d| d.next())
        else {
            return false;
        };
        let id = entry.file_name().to_string_lossy().into_owned();
        let cat = restic(&scratch, &local.display().to_string(), &password_file)
            .args(["--no-lock", "cat", "lock", &id])
            .output()
            .unwrap();
        cat.status.success()
    };
    wait_until("restic's lock, written whole", lock_whole);
    assert_eq!(locks(), 1);
    let rclone = nix::unistd::Pid::from_raw(server.pid() as i32);
    kill(rclone, Signal::SIGSTOP).unwrap();
    wait_until("the timeout", || {
        end_of(&history(&scratch), "db").is_some_and(|e| e["status"] == "timeout")
    });
    let addr = server.url.trim_start_matches("http://").to_string();
    drop(server);
    let _server = crate::restic::RestServer::serve_on("rclone", &["restic"], &rest, &addr);
    assert_eq!(locks(), 1, "the killed restic left its lock");

    std::fs::write(&go, "").unwrap();
    scratch.backupnizza(["trigger", "--wait", "db", "-c"]).run_with(&config).expect_code(0);
    assert_eq!(locks(), 0, "restic unlock removed the stale lock: {}", daemon.log_text());
    let end = end_of(&history(&scratch), "db").unwrap().clone();
    assert_eq!(end["status"], "success", "{end}");
    assert!(
        end["reason"].as_str().unwrap().starts_with(
            "restic unlock ran first, as the last run ended timeout (unlock_stale): exit code 0"
        ),
        "{end}"
    );
    assert!(daemon.log_text().contains("running restic unlock first (unlock_stale)"));
}

#[test]
fn a_copy_between_repositories_sharing_one_password_works_without_raising_redeem_limit() {
    let scratch = Scratch::new();
    let (from, password_file) = repository(&scratch);
    let to = scratch.path().join("second").display().to_string();
    let out = restic(&scratch, &to, &password_file).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = scratch.path().join("Documents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "important\n").unwrap();
    let out = restic(&scratch, &from, &password_file).arg("backup").arg(&data).output().unwrap();
    assert!(out.status.success());
    let task = |name: &str, extra: &str| {
        format!(
            "  {name}:\n    {TRIGGERED}\n    command: [restic, copy, --from-repo, {from}]\n    env: {{RESTIC_REPOSITORY: {to}, RESTIC_PASSWORD_COMMAND: secretbox get repo, RESTIC_FROM_PASSWORD_COMMAND: secretbox get repo, RESTIC_CACHE_DIR: {}}}\n    secrets: [repo]\n{extra}",
            scratch.path().join("cache").display()
        )
    };
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:\n{}{}",
        password_file.display(),
        task("copy", ""),
        task("strict", "    redeem_limit: 1\n"),
    ));
    // validate says exactly when the limit is too low.
    let check = scratch.backupnizza(["validate", "-c"]).run_with(&config);
    let said = format!("{}{}", check.stdout(), check.stderr());
    assert!(
        said.contains("tasks.strict.redeem_limit") && said.contains("fetches secret \"repo\" 2 times (RESTIC_PASSWORD_COMMAND, RESTIC_FROM_PASSWORD_COMMAND)") && said.contains("set redeem_limit: 2"),
        "{said}"
    );
    assert!(!said.contains("tasks.copy.redeem_limit"), "{said}");
    let _daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "copy", "-c"]).run_with(&config).expect_code(0);
    assert_eq!(snapshot_ids(&scratch, &to, &password_file).len(), 1, "copied");
    // The limit the user set is kept, and fails as validate said it would.
    scratch.backupnizza(["trigger", "--wait", "strict", "-c"]).run_with(&config).expect_code(1);
}

#[test]
fn a_refused_second_fetch_is_logged_with_its_task_and_an_outsider_is_not() {
    let scratch = Scratch::new();
    let file = scratch.path().join("s");
    write_private(&file, canary().as_bytes());
    let token_file = scratch.path().join("token");
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:\n  twice:\n    {TRIGGERED}\n    secrets: [s]\n    command: [sh, -c, 'secretbox get s > /dev/null; echo \"$SECRETBOX_TOKEN\" > {}; secretbox get s']\n",
        file.display(),
        token_file.display()
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "twice", "-c"]).run_with(&config).expect_code(1);
    let log = daemon.wait_for("the refusal", |l| l.contains("refused a secret redemption"));
    let line = log.lines().find(|l| l.contains("refused a secret redemption")).unwrap();
    assert!(line.contains("task=\"twice\"") && line.contains("reason=\"used\""), "{line}");
    // The same token from a process outside the task: forbidden, and no task named.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let outsider = scratch
        .command(crate::harness::SECRETBOX)
        .args(["get", "s"])
        .env("SECRETBOX_TOKEN", token.trim())
        .env("SECRETBOX_SOCKET", scratch.socket())
        .output()
        .unwrap();
    assert!(!outsider.status.success());
    let log = daemon.wait_for_count("refused a secret redemption", 2);
    let line = log.lines().filter(|l| l.contains("refused a secret redemption")).nth(1).unwrap();
    assert!(line.contains("reason=\"forbidden\"") && line.contains("task=\"?\""), "{line}");
}

#[test]
fn nice_and_io_apply_to_the_program_itself() {
    let scratch = Scratch::new();
    let out = scratch.path().join("seen");
    let config = scratch.config(&format!(
        "tasks:
  polite:
    {TRIGGERED}
    nice: 15
    io: {{class: idle}}
    command: [sh, -c, 'ps -o ni= -p $$ > {o}; ionice -p $$ >> {o}; exit 3']
    warning_exit_codes: [3]
  best:
    {TRIGGERED}
    io: {{class: best-effort, priority: 6}}
    pipeline:
      - [sh, -c, 'ionice -p $$']
      - [sh, -c, 'cat; ionice -p $$']
",
        o = out.display()
    ));
    let daemon = scratch.start_daemon(&config);
    // Exit code 3 is still the program's own (a warning), not a wrapper's.
    scratch.backupnizza(["trigger", "--wait", "polite", "-c"]).run_with(&config).expect_code(0);
    let seen = std::fs::read_to_string(&out).unwrap();
    let mut lines = seen.lines();
    assert_eq!(lines.next().map(str::trim), Some("15"), "{seen}");
    assert_eq!(lines.next(), Some("idle"), "{seen}");
    let end = end_of(&history(&scratch), "polite").unwrap().clone();
    assert_eq!(end["status"], "warning", "{end}");
    scratch.backupnizza(["trigger", "--wait", "best", "-c"]).run_with(&config).expect_code(0);
    // Both stages: the first's line through the second, then the second's own.
    daemon.wait_for_count("best-effort: prio 6", 2);
}

#[test]
fn nice_and_io_are_those_of_the_running_restic_and_its_exit_code_3_is_a_warning() {
    let scratch = Scratch::new();
    let (repo, password_file) = repository(&scratch);
    let data = scratch.path().join("polite-data");
    std::fs::write(&data, "data").unwrap();
    // Reading another process's /proc/PID/mem at offset 0 fails (EIO) even for root: restic
    // saves the snapshot and exits 3, "some source files could not be read".
    let mut unreadable = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    // The password command waits, so restic is there to be looked at before it reads.
    let config = scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\ntasks:
  polite:
    {TRIGGERED}
    nice: 15
    io: {{class: idle}}
    secrets: [repo]
    env: {{RESTIC_REPOSITORY: {repo}, RESTIC_CACHE_DIR: {}, RESTIC_PASSWORD_COMMAND: \"sh -c 'sleep 3; secretbox get repo'\"}}
    command: [restic, backup, --host, testhost, {}, /proc/{}/mem]
",
        password_file.display(),
        scratch.path().join("cache").display(),
        data.display(),
        unreadable.id()
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "polite", "-c"]).run_with(&config).expect_code(0);
    let marker = data.display().to_string();
    let find = || {
        let out = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
    };
    wait_until("the running restic", || !find().is_empty());
    let pid = find();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Field 19, counted after the `(comm)` field that may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let nice = after.split_whitespace().nth(19 - 3).unwrap();
    let ionice = std::process::Command::new("ionice").args(["-p", &pid]).output().unwrap();
    assert_eq!(nice, "15", "restic ({comm:?}, pid {pid}): {stat}");
    assert_eq!(String::from_utf8_lossy(&ionice.stdout).trim(), "idle", "restic pid {pid}");
    wait_until("the run's end", || end_of(&history(&scratch), "polite").is_some());
    let end = end_of(&history(&scratch), "polite").unwrap().clone();
    assert_eq!(end["exit_code"], 3, "{end}");
    assert_eq!(end["status"], "warning", "{end}");
    assert_eq!(snapshot_ids(&scratch, &repo, &password_file).len(), 1, "{}", daemon.log_text());
    let _ = unreadable.kill();
    let _ = unreadable.wait();
}
