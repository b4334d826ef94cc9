//! `backupnizza validate`: the example stays valid, and invalid files are reported fully,
//! with positions, names and exit code 2.

use crate::harness::Scratch;

const MINIMAL_TASK: &str =
    "tasks:\n  docs:\n    schedule: \"0 3 * * *\"\n    command: [restic, backup, ~/Documents]\n";

#[test]
fn backup_yaml_example_is_valid() {
    let scratch = Scratch::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/backup.yaml.example");
    let run = scratch.backupnizza(["validate", "-c", example]).run();
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("valid: 5 tasks") || out.contains("valid: 4 tasks"), "{run}");
    for task in ["documents", "offsite", "photos", "prune-offsite"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(task) && l.contains("next 20")),
            "{task} missing\n{run}"
        );
    }
    assert!(!run.stderr().contains("error"), "{run}");
}

#[test]
fn validate_does_not_read_secrets() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "b.yaml",
        "secrets:\n  a: {file: /nonexistent/secret}\n  b: {command: [/bin/false]}\n  c: {env: UNSET_VARIABLE_FOR_TEST}\n  d: {keyring: {service: s, account: a, store: keyutils}}\ntasks:\n  t:\n    schedule: '@daily'\n    command: [restic, snapshots]\n    secrets: [a, b, c, d]\n",
    );
    scratch.backupnizza(["validate", "-c"]).run_with(&file).expect_code(0);
}

#[test]
fn json_task_files_are_read_the_same_way() {
    let scratch = Scratch::new();
    let ok = scratch
        .write("b.json", r#"{"tasks": {"docs": {"schedule": "@hourly", "command": ["true"]}}}"#);
    scratch.backupnizza(["validate", "-c"]).run_with(&ok).expect_code(0);
    let bad = scratch.write(
        "bad.json",
        "{\n  \"tasks\": {\n    \"docs\": {\"schedule\": \"@hourly\", \"comand\": [\"true\"]}\n  }\n}\n",
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&bad);
    run.expect_code(2);
    let err = run.stderr();
    assert!(
        err.contains(&format!("{}:3:", bad.display())) && err.contains("did you mean `command`"),
        "{run}"
    );
}

#[test]
fn the_default_path_comes_from_the_environment() {
    let scratch = Scratch::new();
    let file = scratch.write("elsewhere.yaml", MINIMAL_TASK);
    scratch.backupnizza(["validate"]).env("BACKUPNIZZA_CONFIG", &file).run().expect_code(0);
    scratch.write(".config/backupnizza/backup.yaml", MINIMAL_TASK);
    scratch.backupnizza(["validate"]).run().expect_code(0);
    let missing = scratch
        .backupnizza(["validate"])
        .env("XDG_CONFIG_HOME", scratch.path().join("nowhere"))
        .run();
    missing.expect_code(2);
    assert!(missing.stderr().contains("nowhere/backupnizza/backup.yaml"), "{missing}");
}

struct Case {
    name: &'static str,
    yaml: String,
    /// The line the problem must be reported on, if the file has one for it.
    line: Option<usize>,
    /// Text that must appear in that problem's message (the key, task or secret, the value).
    expect: &'static [&'static str],
}

fn case(
    name: &'static str,
    yaml: &str,
    line: Option<usize>,
    expect: &'static [&'static str],
) -> Case {
    Case { name, yaml: yaml.to_string(), line, expect }
}

fn invalid_cases() -> Vec<Case> {
    let long_socket = format!("socket: /tmp/{}/s.sock\n{MINIMAL_TASK}", "d".repeat(120));
    vec![
        case("yaml syntax", "tasks:\n  docs: [1, 2\n", None, &["YAML syntax"]),
        case(
            "a keep policy that keeps nothing",
            &format!("{MINIMAL_TASK}    audit: {{tasks: [docs], keep: {{last: 0}}}}\n"),
            Some(5),
            &["tasks.docs.audit.keep", "keeps nothing"],
        ),
        case(
            "restic's months in keep within",
            &format!("{MINIMAL_TASK}    audit: {{tasks: [docs], keep: {{within: 30min}}}}\n"),
            Some(5),
            &["tasks.docs.audit.keep.within", "unknown unit 'i'"],
        ),
        case(
            "tasks is not a mapping",
            "tasks: 5\n",
            Some(1),
            &["tasks", "expected a mapping", "5"],
        ),
        case(
            "unknown top-level key",
            &format!("taks: {{}}\n{MINIMAL_TASK}"),
            Some(1),
            &["unknown key \"taks\"", "did you mean `tasks`"],
        ),
        case(
            "unknown task key",
            &format!("{MINIMAL_TASK}    schedual: x\n"),
            Some(5),
            &["tasks.docs.schedual", "did you mean `schedule`"],
        ),
        case(
            "bad task name",
            "tasks:\n  \"bad name!\":\n    schedule: '@daily'\n    command: [x]\n",
            Some(2),
            &["invalid task name \"bad name!\""],
        ),
        case(
            "duplicate task names",
            &format!("{MINIMAL_TASK}  docs:\n    schedule: '@daily'\n    command: [x]\n"),
            Some(5),
            &["duplicate key \"docs\"", "line 2"],
        ),
        case(
            "secret without source",
            &format!("secrets:\n  repo: {{}}\n{MINIMAL_TASK}"),
            Some(2),
            &["secrets.repo", "no source"],
        ),
        case(
            "secret with two sources",
            &format!("secrets:\n  repo:\n    file: /x\n    env: X\n{MINIMAL_TASK}"),
            Some(3),
            &["secrets.repo", "2 sources (file, env)"],
        ),
        case(
            "bad duration",
            &format!("token_ttl: 5 minutes\n{MINIMAL_TASK}"),
            Some(1),
            &["token_ttl", "\"5 minutes\""],
        ),
        case(
            "duration without unit",
            &format!("{MINIMAL_TASK}    timeout: 30\n"),
            Some(5),
            &["tasks.docs.timeout", "30s"],
        ),
        case(
            "unknown time zone",
            &format!("timezone: Europe/Berln\n{MINIMAL_TASK}"),
            Some(1),
            &["\"Europe/Berln\"", "did you mean `Europe/Berlin`"],
        ),
        case(
            "unknown task time zone",
            &format!("{MINIMAL_TASK}    timezone: America/New_Yrok\n"),
            Some(5),
            &["tasks.docs.timezone", "America/New_Yrok"],
        ),
        case(
            "cron minute out of range",
            "tasks:\n  docs:\n    schedule: '61 3 * * *'\n    command: [x]\n",
            Some(3),
            &["tasks.docs.schedule", "minute field \"61\"", "0-59"],
        ),
        case(
            "cron weekday name",
            "tasks:\n  docs:\n    schedule: '0 3 * * funday'\n    command: [x]\n",
            Some(3),
            &["day-of-week field \"funday\""],
        ),
        case(
            "cron field count",
            "tasks:\n  docs:\n    schedule: '0 0 3 * * *'\n    command: [x]\n",
            Some(3),
            &["expected 5 fields", "found 6"],
        ),
        case(
            "schedule that never fires",
            "tasks:\n  docs:\n    schedule: '0 0 30 2 *'\n    command: [x]\n",
            Some(3),
            &["tasks.docs.schedule", "can never fire"],
        ),
        case(
            "@reboot",
            "tasks:\n  docs:\n    schedule: '@reboot'\n    command: [x]\n",
            Some(3),
            &["@reboot is not supported"],
        ),
        case(
            "empty command",
            "tasks:\n  docs:\n    schedule: '@daily'\n    command: []\n",
            Some(4),
            &["tasks.docs.command", "empty command"],
        ),
        case(
            "command as a string",
            "tasks:\n  docs:\n    schedule: '@daily'\n    command: restic backup ~/x\n",
            Some(4),
            &["tasks.docs.command", "[\"restic\", \"backup\", \"~/x\"]"],
        ),
        case(
            "missing command",
            "tasks:\n  docs:\n    schedule: '@daily'\n",
            Some(3),
            &["tasks.docs", "missing `command`"],
        ),
        case(
            "command and steps",
            "tasks:\n  docs:\n    schedule: '@daily'\n    command: [x]\n    steps:\n      - command: [y]\n",
            Some(6),
            &["tasks.docs", "both `command` and `steps`"],
        ),
        case(
            "missing schedule",
            "tasks:\n  docs:\n    command: [x]\n",
            Some(3),
            &["tasks.docs", "missing required key `schedule`"],
        ),
        case(
            "undeclared secret in secrets list",
            &format!(
                "secrets:\n  repo: {{env: REPO_PW}}\n{MINIMAL_TASK}    secrets: [repo, offsite]\n"
            ),
            Some(7),
            &["tasks.docs.secrets[1]", "\"offsite\"", "not declared"],
        ),
        case(
            "undeclared secret in env",
            &format!("{MINIMAL_TASK}    env:\n      RESTIC_PASSWORD: {{secret: repo}}\n"),
            Some(6),
            &["tasks.docs.env.RESTIC_PASSWORD.secret", "repo", "\"docs\""],
        ),
        case(
            "secretbox get outside the task's scope",
            &format!(
                "secrets:\n  repo: {{env: REPO_PW}}\n{MINIMAL_TASK}    env:\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n"
            ),
            Some(8),
            &["secretbox get repo", "add \"repo\" to tasks.docs.secrets"],
        ),
        case("socket path too long", &long_socket, Some(1), &["socket", "bytes", "at most"]),
        case(
            "bad on_overlap",
            &format!("{MINIMAL_TASK}    on_overlap: skipp\n"),
            Some(5),
            &["tasks.docs.on_overlap", "\"skipp\"", "did you mean `skip`"],
        ),
        case(
            "bad log level",
            &format!("log: {{level: verbose}}\n{MINIMAL_TASK}"),
            Some(1),
            &["log.level", "\"verbose\""],
        ),
        case(
            "unknown log key",
            &format!("log:\n  formt: json\n{MINIMAL_TASK}"),
            Some(2),
            &["log.formt", "did you mean `format`"],
        ),
        case(
            "keyring without account",
            &format!(
                "secrets:\n  repo:\n    keyring: {{service: s}}\n{MINIMAL_TASK}    secrets: [repo]\n"
            ),
            Some(3),
            &["secrets.repo.keyring", "missing required key `account`"],
        ),
        case(
            "bad keyring store",
            &format!(
                "secrets:\n  repo:\n    keyring: {{service: s, account: a, store: gnome}}\n{MINIMAL_TASK}    secrets: [repo]\n"
            ),
            Some(3),
            &["secrets.repo.keyring.store", "\"gnome\""],
        ),
        case(
            "bad secret name",
            &format!("secrets:\n  -repo: {{env: X}}\n{MINIMAL_TASK}"),
            Some(2),
            &["invalid secret name \"-repo\""],
        ),
        case(
            "bad env var name",
            &format!("{MINIMAL_TASK}    env:\n      1FOO: bar\n"),
            Some(6),
            &["tasks.docs.env.1FOO", "invalid environment variable name"],
        ),
        case(
            "reserved env var",
            &format!("{MINIMAL_TASK}    env:\n      SECRETBOX_TOKEN: abc\n"),
            Some(6),
            &["SECRETBOX_TOKEN", "set by backupnizza"],
        ),
        case(
            "redeem_limit out of range",
            &format!("{MINIMAL_TASK}    redeem_limit: 0\n"),
            Some(5),
            &["tasks.docs.redeem_limit", "0 is out of range"],
        ),
        case(
            "empty steps",
            "tasks:\n  docs:\n    schedule: '@daily'\n    steps: []\n",
            Some(4),
            &["tasks.docs.steps", "empty list of steps"],
        ),
        case(
            "unknown step key",
            "tasks:\n  docs:\n    schedule: '@daily'\n    steps:\n      - comand: [x]\n",
            Some(5),
            &["tasks.docs.steps[0].comand", "did you mean `command`"],
        ),
        case(
            "bool as string",
            "tasks:\n  docs:\n    schedule: '@daily'\n    steps:\n      - command: [x]\n        continue_on_error: 'yes'\n",
            Some(6),
            &["continue_on_error", "expected true or false", "\"yes\""],
        ),
        case(
            "relative working_dir",
            &format!("{MINIMAL_TASK}    working_dir: backups\n"),
            Some(5),
            &["tasks.docs.working_dir", "relative path"],
        ),
        case("empty file", "", None, &["empty"]),
        case("no tasks", "secrets: {}\n", None, &["tasks", "no `tasks:`"]),
        case("yaml tag", "tasks: !custom {}\n", None, &["tags"]),
        case(
            "@every without unit",
            "tasks:\n  docs:\n    schedule: '@every 90'\n    command: [x]\n",
            Some(3),
            &["tasks.docs.schedule", "no unit"],
        ),
        case(
            "output_file unknown sub-key",
            &format!("{MINIMAL_TASK}    output_file: {{path: x, kep: 2}}\n"),
            Some(5),
            &["tasks.docs.output_file.kep", "did you mean `keep`"],
        ),
        case(
            "output_file bad size",
            &format!("{MINIMAL_TASK}    output_file: {{path: x, max_size: 10 megs}}\n"),
            Some(5),
            &["tasks.docs.output_file.max_size", "expected a size such as 10MiB", "10 megs"],
        ),
        case(
            "output_file keep 0",
            &format!("{MINIMAL_TASK}    output_file: {{path: x, keep: 0}}\n"),
            Some(5),
            &["tasks.docs.output_file.keep", "out of range 1-100"],
        ),
    ]
}

#[test]
fn output_files_in_every_shape_are_valid() {
    let scratch = Scratch::new();
    for (i, shape) in ["logs/docs.log", "~/docs.log", "{path: /tmp/d.log, max_size: 1MiB, keep: 5}"]
        .iter()
        .enumerate()
    {
        let file = scratch
            .write(&format!("ok{i}.yaml"), format!("{MINIMAL_TASK}    output_file: {shape}\n"));
        scratch.backupnizza(["validate", "-c"]).run_with(&file).expect_code(0);
    }
}

#[test]
fn each_invalid_file_exits_2_naming_line_and_key() {
    let scratch = Scratch::new();
    let cases = invalid_cases();
    assert!(cases.len() >= 25);
    for (i, case) in cases.iter().enumerate() {
        let file = scratch.write(&format!("case{i}.yaml"), &case.yaml);
        let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
        assert_eq!(run.code(), Some(2), "case {:?}\n{run}", case.name);
        assert!(run.stdout().is_empty(), "case {:?} printed to stdout\n{run}", case.name);
        let stderr = run.stderr();
        let prefix = match case.line {
            Some(line) => format!("{}:{line}:", file.display()),
            None => format!("{}", file.display()),
        };
        let found = stderr.lines().any(|l| {
            l.starts_with(&prefix)
                && l.contains("error:")
                && case.expect.iter().all(|e| l.contains(e))
        });
        assert!(
            found,
            "case {:?}: no line starting {prefix:?} containing {:?}\n{run}",
            case.name, case.expect
        );
        assert!(!stderr.contains("panicked"), "case {:?}\n{run}", case.name);
    }
}

#[test]
fn a_file_with_many_problems_reports_all_of_them() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "many.yaml",
        "token_ttl: 30\ntimezone: Mars/Olympus\nsecrets:\n  repo:\n    keyring: {service: s}\ntasks:\n  docs:\n    schedule: '61 * * * *'\n    command: []\n    secrets: [repo, nope]\n    on_overlap: never\n  docs:\n    schedule: '@daily'\n    command: [x]\n",
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(2);
    let stderr = run.stderr();
    let expected = [
        (1, "token_ttl"),
        (2, "Mars/Olympus"),
        (5, "missing required key `account`"),
        (8, "minute field \"61\""),
        (9, "empty command"),
        (10, "\"nope\""),
        (11, "\"never\""),
        (12, "duplicate key \"docs\""),
    ];
    for (line, text) in expected {
        let prefix = format!("{}:{line}:", file.display());
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(text)),
            "line {line} {text:?}\n{run}"
        );
    }
    assert!(stderr.contains(&format!("{}: 8 errors found", file.display())), "{run}");
}

#[test]
fn warnings_do_not_fail_validation() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "warn.yaml",
        "secrets:\n  unused: {env: X}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [restic, backup, /x]\n    env:\n      RESTIC_PASSWORD: hunter2\n",
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(0);
    assert!(
        run.stderr().contains(&format!("{}:2:3: warning: secrets.unused", file.display())),
        "{run}"
    );
    assert!(run.stderr().contains("RESTIC_PASSWORD_COMMAND"), "{run}");
}

/// A credential written literally (a password in a repository URL, a
/// `*_PASSWORD`, `*_SECRET*`, `*_KEY`) is a warning that points to `{secret_file:}`, and the
/// warning never repeats the value; a variable that says where a secret is, is not warned
/// about; `{secret_file:}` must name a secret the task lists.
#[test]
fn literal_credentials_are_warned_about_without_their_value() {
    let scratch = Scratch::new();
    let (url_pass, key, token) =
        (crate::harness::canary(), crate::harness::canary(), crate::harness::canary());
    let file = scratch.write(
        "creds.yaml",
        format!(
            "secrets:\n  url: {{env: X}}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [restic, backup, /x]\n    env:\n      RESTIC_REPOSITORY: rest:https://laptop:{url_pass}@backup.example.net:8000/laptop/\n      MY_API_KEY: {key}\n      GITHUB_SECRET_TOKEN: {token}\n      RESTIC_PASSWORD_FILE: /run/credentials/restic\n      SOME_SECRET_FILE: /run/credentials/x\n      OTHER_REPOSITORY: sftp:backup@host:/srv/restic\n      RESTIC_REPOSITORY_FILE: {{secret_file: url}}\n    secrets: [url]\n"
        ),
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(0);
    let err = run.stderr();
    for value in [&url_pass, &key, &token] {
        assert!(!err.contains(value.as_str()), "a warning repeats the value\n{run}");
    }
    let f = file.display();
    assert!(
        err.contains(&format!("{f}:8:26: warning: tasks.docs.env.RESTIC_REPOSITORY: RESTIC_REPOSITORY holds a URL with a password (user:***@)"))
            && err.contains("RESTIC_REPOSITORY_FILE: {secret_file: NAME}"),
        "{run}"
    );
    for var in ["MY_API_KEY", "GITHUB_SECRET_TOKEN"] {
        assert!(
            err.lines().any(|l| l.contains(&format!(
                "warning: tasks.docs.env.{var}: {var} looks like a credential"
            )) && l.contains("{secret_file: NAME}")),
            "{var}\n{run}"
        );
    }
    for var in
        ["RESTIC_PASSWORD_FILE", "SOME_SECRET_FILE", "OTHER_REPOSITORY", "RESTIC_REPOSITORY_FILE"]
    {
        assert!(!err.contains(&format!("env.{var}")), "{var} warned about\n{run}");
    }

    // A secret_file the task does not list is an error that says how to fix it.
    let bad = scratch.write(
        "bad.yaml",
        "secrets:\n  url: {env: X}\n  aws: {env: Y}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [restic, backup, /x]\n    env:\n      RESTIC_REPOSITORY_FILE: {secret_file: url}\n      AWS_SHARED_CREDENTIALS_FILE: {secret_file: aws}\n      X_FILE: {secret_file: nope}\n      Y_FILE: {secret_file: url, secret: url}\n    secrets: [url]\n",
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&bad);
    run.expect_code(2);
    let err = run.stderr();
    let f = bad.display();
    assert!(err.contains(&format!("{f}:10:50: error: tasks.docs.env.AWS_SHARED_CREDENTIALS_FILE.secret_file: {{secret_file: aws}} hands the secret to task \"docs\", which does not list it: add \"aws\" to tasks.docs.secrets")), "{run}");
    assert!(err.contains(&format!("{f}:11:29: error: tasks.docs.env.X_FILE.secret_file: {{secret_file: nope}} in task \"docs\" names a secret that is not declared under `secrets:`")), "{run}");
    assert!(
        err.contains(
            "tasks.docs.env.Y_FILE: expected {secret: NAME} or {secret_file: NAME}, one key"
        ),
        "{run}"
    );
    assert!(!err.contains("RESTIC_REPOSITORY_FILE"), "{run}");
}

/// What would fail every run, or the daemon's start, on this machine is a `validate` error
/// (exit 2), and the daemon refuses a missing metrics directory once, at start; `--portable`
/// checks the file alone.
#[test]
fn a_program_not_on_path_and_a_missing_metrics_directory_fail_validate_on_this_machine() {
    let scratch = Scratch::new();
    let missing_dir = scratch.path().join("no-such-dir");
    let file = scratch.config(&format!(
        "metrics_textfile: {}/backup.prom\ntasks:\n  dump:\n    schedule: manual\n    pipeline:\n      - [no-such-dump-tool, --all]\n      - [restic, backup, --stdin]\n",
        missing_dir.display()
    ));
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(2);
    let err = run.stderr();
    assert!(
        err.contains("task \"dump\" pipeline stage 1: program \"no-such-dump-tool\" not found on the task's PATH"),
        "{err}"
    );
    assert!(!err.contains("stage 2: program"), "restic is installed: {err}");
    assert!(err.contains(&format!("directory {} does not exist", missing_dir.display())), "{err}");
    scratch.backupnizza(["validate", "--portable", "-c"]).run_with(&file).expect_code(0);

    let log = scratch.path().join("daemon.log");
    let status = scratch.daemon_command(&file, &log).status().unwrap();
    assert_eq!(status.code(), Some(2), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("metrics_textfile: directory"), "{text}");
}

/// A pipeline into `restic backup --stdin` gets advice to use `--stdin-from-command` where
/// the restic on PATH has it (0.17 and later), and none where it does not.
#[test]
fn validate_advises_stdin_from_command_where_restic_has_it() {
    let scratch = Scratch::new();
    let file = scratch.config(
        "tasks:\n  dump:\n    schedule: manual\n    pipeline:\n      - [sh, -c, 'echo dump']\n      - [restic, backup, --stdin, --stdin-filename, db.sql]\n",
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(0);
    let advised = run.stderr().contains("has `backup --stdin-from-command`");
    assert_eq!(advised, crate::audit::restic_version() >= (0, 17), "{}", run.stderr());
}

/// Issue 29: a sealing task's script runs from disk, readable by the user's other
/// processes; `validate` says which step and why, and says nothing of an ELF program or of a
/// task with `seal: false`.
#[test]
fn validate_names_the_programs_of_a_sealing_task_that_stay_readable() {
    let scratch = Scratch::new();
    let script = scratch.write("dump.sh", "#!/bin/sh\necho dump\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let body = |seal: &str| {
        format!(
            "tasks:\n  dump:\n    schedule: manual\n    seal: {seal}\n    pipeline:\n      - [{}]\n      - [restic, backup, --stdin]\n",
            script.display()
        )
    };
    let run =
        scratch.backupnizza(["validate", "-c"]).run_with(&scratch.write("a.yaml", body("true")));
    run.expect_code(0);
    let err = run.stderr();
    assert!(
        err.contains("task \"dump\" pipeline stage 1:") && err.contains("is a script"),
        "{err}"
    );
    assert!(!err.contains("pipeline stage 2:"), "restic is an ELF program: {err}");
    let run =
        scratch.backupnizza(["validate", "-c"]).run_with(&scratch.write("b.yaml", body("false")));
    run.expect_code(0);
    assert!(!run.stderr().contains("is a script"), "{}", run.stderr());
}

/// Loader variables (issue 28): `LD_PRELOAD` in `env:` ran a library inside restic and
/// inside the genuine `secretbox`, and `validate` said nothing. Each is refused, naming the
/// key and the way to say it is meant; `{loader: VALUE}` is accepted, for loader variables
/// only; the daemon refuses the same file at start.
#[test]
fn loader_variables_in_env_are_refused_unless_written_as_loader() {
    let scratch = Scratch::new();
    let refused = scratch.write(
        "refused.yaml",
        format!(
            "{MINIMAL_TASK}    env:\n      LD_PRELOAD: /tmp/planted.so\n      DYLD_INSERT_LIBRARIES: /tmp/planted.dylib\n    steps:\n      - command: [restic, check]\n        env: {{BASH_ENV: /tmp/rc, ENV: /tmp/rc, LD_AUDIT: /tmp/a.so}}\n"
        )
        .replace("    command: [restic, backup, ~/Documents]\n", ""),
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&refused);
    run.expect_code(2);
    let err = run.stderr();
    for key in [
        "tasks.docs.env.LD_PRELOAD",
        "tasks.docs.env.DYLD_INSERT_LIBRARIES",
        "tasks.docs.steps[0].env.BASH_ENV",
        "tasks.docs.steps[0].env.ENV",
        "tasks.docs.steps[0].env.LD_AUDIT",
    ] {
        assert!(
            err.lines().any(|l| l.contains(key) && l.contains("{loader: VALUE}")),
            "{key}\n{run}"
        );
    }
    let log = scratch.path().join("daemon.log");
    let status = scratch.daemon_command(&refused, &log).status().unwrap();
    assert_eq!(status.code(), Some(2), "{}", std::fs::read_to_string(&log).unwrap_or_default());

    let meant = scratch.write(
        "meant.yaml",
        format!("{MINIMAL_TASK}    env:\n      LD_LIBRARY_PATH: {{loader: /opt/restic/lib}}\n"),
    );
    scratch.backupnizza(["validate", "-c"]).run_with(&meant).expect_code(0);
    let misused = scratch.write(
        "misused.yaml",
        format!("{MINIMAL_TASK}    env:\n      RESTIC_CACHE_DIR: {{loader: /tmp}}\n"),
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&misused);
    run.expect_code(2);
    assert!(run.stderr().contains("tasks.docs.env.RESTIC_CACHE_DIR"), "{run}");
}

/// `members:` takes `all`, `none` or user names of this machine; anything else is an error
/// naming the key (an unknown user, by name).
#[test]
fn members_are_all_none_or_users_of_this_machine() {
    let scratch = Scratch::new();
    for ok in ["all", "none", "[root]", "[]"] {
        let file = scratch.write("ok.yaml", format!("{MINIMAL_TASK}    members: {ok}\n"));
        scratch.backupnizza(["validate", "-c"]).run_with(&file).expect_code(0);
    }
    for (bad, said) in [
        ("[no-such-user-here]", "no user \"no-such-user-here\""),
        ("some", "all, none, or a list of user names"),
        ("5", "all, none, or a list of user names"),
    ] {
        let file = scratch.write("bad.yaml", format!("{MINIMAL_TASK}    members: {bad}\n"));
        let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
        run.expect_code(2);
        assert!(
            run.stderr().contains("tasks.docs.members") && run.stderr().contains(said),
            "{run}"
        );
    }
}

/// `read_all:` is a bool, on `command:` tasks or on each step; on a task with `steps:` it is
/// an error that says where it goes.
#[test]
fn read_all_is_a_bool_on_a_command_or_on_each_step() {
    let scratch = Scratch::new();
    let ok = scratch.write("ok.yaml", format!("{MINIMAL_TASK}    read_all: false\n"));
    scratch.backupnizza(["validate", "-c"]).run_with(&ok).expect_code(0);
    let steps = scratch.write(
        "steps.yaml",
        "tasks:\n  dump:\n    schedule: '@daily'\n    steps:\n      - {pipeline: [[tar, c, /srv], [restic, backup, --stdin]], read_all: true}\n",
    );
    scratch.backupnizza(["validate", "-c"]).run_with(&steps).expect_code(0);
    for (bad, said) in [
        (format!("{MINIMAL_TASK}    read_all: maybe\n"), "tasks.docs.read_all"),
        (
            "tasks:\n  t:\n    schedule: '@daily'\n    read_all: true\n    steps:\n      - command: [restic, backup, /srv]\n".to_string(),
            "give each step that needs it its own `read_all`",
        ),
    ] {
        let file = scratch.write("bad.yaml", &bad);
        let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
        run.expect_code(2);
        assert!(run.stderr().contains(said), "{run}");
    }
}
