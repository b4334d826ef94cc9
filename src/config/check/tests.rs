//! Unit tests of the whole check through [`parse`]: defaults, and the exact problems (with
//! severity, position and key path) for the mistakes people make. The messages are the
//! ones `tests/integration/validate.rs` expects from `backupnizza validate`; these tests pin
//! them without spawning the binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::config::{
    Checked, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_LATENESS, DEFAULT_NOTIFY_TIMEOUT,
    DEFAULT_OUTPUT_KEEP, DEFAULT_OUTPUT_MAX_SIZE, DEFAULT_REDEEM_LIMIT, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_TOKEN_TTL, Environment, Hook, LogFormat, LogLevel, OutputFile, Overlap, Pos, Problem,
    Severity, Source, Store, parse,
};

const MINIMAL_TASK: &str =
    "tasks:\n  docs:\n    schedule: \"0 3 * * *\"\n    command: [restic, backup, ~/Documents]\n";

fn env() -> Environment {
    let vars = [("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")];
    Environment {
        vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        uid: 1000,
    }
}

fn check(text: &str) -> Checked {
    parse(text, Path::new("backup.yaml"), &env())
}

/// Each problem as `(line, column, path, message)`, errors and warnings alike, in the order
/// reported.
fn problems(text: &str) -> Vec<(usize, usize, String, String)> {
    check(text)
        .problems
        .into_iter()
        .map(|p| {
            let Pos { line, column } = p.pos.unwrap_or(Pos { line: 0, column: 0 });
            (line, column, p.path, p.message)
        })
        .collect()
}

fn problem(
    line: usize,
    column: usize,
    path: &str,
    message: &str,
) -> (usize, usize, String, String) {
    (line, column, path.to_string(), message.to_string())
}

/// The only problem of an invalid file, which must be an error.
fn only_error(text: &str) -> Problem {
    let checked = check(text);
    assert!(checked.config.is_none(), "{text:?} should be invalid");
    match <[Problem; 1]>::try_from(checked.problems) {
        Ok([p]) => {
            assert_eq!(p.severity, Severity::Error, "{p:?}");
            p
        }
        Err(all) => panic!("expected one problem for {text:?}, got {all:#?}"),
    }
}

#[test]
fn absent_keys_take_their_documented_defaults() {
    let checked = check(MINIMAL_TASK);
    assert_eq!(checked.problems, []);
    let config = checked.config.expect("a minimal task is valid");
    assert_eq!(config.socket, Path::new("/run/user/1000/backupnizza/secretbox.sock"));
    assert_eq!(config.state_dir, Path::new("/home/u/.local/state/backupnizza"));
    assert_eq!(config.token_ttl, DEFAULT_TOKEN_TTL);
    assert_eq!(config.token_ttl, Duration::from_secs(30));
    assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!((config.log.level, config.log.format), (LogLevel::Info, LogFormat::Text));
    assert!(!config.strict_memory && !config.pin_binaries);
    assert!(
        config.notify.is_none() && config.metrics_textfile.is_none() && config.secrets.is_empty()
    );
    let task = config.task("docs").unwrap();
    assert_eq!(task.zone.name, config.timezone.name);
    assert_eq!(task.max_lateness, DEFAULT_MAX_LATENESS);
    assert_eq!(task.max_lateness, Duration::from_secs(24 * 3600));
    assert_eq!(task.redeem_limit, DEFAULT_REDEEM_LIMIT);
    assert_eq!(task.redeem_limit, 1);
    assert_eq!(task.on_overlap, Overlap::Skip);
    assert_eq!((task.timeout, task.random_delay, task.working_dir.as_ref()), (None, None, None));
    assert!(task.env.is_empty() && task.secrets.is_empty() && task.notify.is_none());
    assert!(task.hooks.before.is_none() && task.hooks.after.is_none());
    let step = &task.steps[0];
    assert_eq!((step.continue_on_error, step.sha256, step.env.len()), (false, None, 0));
}

#[test]
fn nested_defaults_apply_inside_a_given_section() {
    let text = "log: {format: json}\nnotify: {ping: 'https://hc.example/x'}\nsecrets:\n  repo: {command: [pw]}\n  k: {keyring: {service: s, account: 1000}}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [x]\n    secrets: [repo, k]\n    hooks: {before: [echo]}\n";
    let config = check(text).config.expect("valid");
    assert_eq!((config.log.level, config.log.format), (LogLevel::Info, LogFormat::Json));
    let notify = config.notify.as_ref().unwrap();
    assert_eq!(
        (notify.send_logs, notify.timeout, notify.webhook.as_ref()),
        (false, DEFAULT_NOTIFY_TIMEOUT, None)
    );
    assert_eq!(
        config.secret("repo").unwrap().source,
        Source::Command { argv: vec!["pw".into()], timeout: Duration::from_secs(30) }
    );
    assert_eq!(
        config.secret("k").unwrap().source,
        Source::Keyring { service: "s".into(), account: "1000".into(), store: Store::Auto }
    );
    let hooks = &config.task("docs").unwrap().hooks;
    assert_eq!(
        (hooks.before.as_ref(), hooks.timeout),
        (Some(&Hook { command: vec!["echo".into()], secrets: Vec::new() }), DEFAULT_HOOK_TIMEOUT)
    );
}

#[test]
fn hooks_are_plain_commands_or_commands_with_secrets_of_their_own() {
    let base = "secrets:\n  repo: {env: R}\n  cloud: {env: C}\n  spare: {env: S}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [x]\n    secrets: [repo, cloud]\n";
    let with = |hooks: &str| format!("{base}    hooks:\n{hooks}");
    let config = check(&with(
        "      before: [sh, -c, 'echo hi']\n      after: {command: [mount-check], secrets: [cloud]}\n      on_failure: {command: [notify-me]}\n",
    ))
    .config
    .expect("valid");
    let hooks = &config.task("docs").unwrap().hooks;
    let (before, after) = (hooks.before.as_ref().unwrap(), hooks.after.as_ref().unwrap());
    assert!(before.secrets.is_empty(), "the plain form gets no token");
    assert_eq!(
        (after.command.as_slice(), after.secrets.as_slice()),
        (&["mount-check".to_string()][..], &["cloud".to_string()][..])
    );
    assert!(hooks.on_failure.as_ref().unwrap().secrets.is_empty());

    let bad = with(
        "      before: {command: [a], secrets: [spare, nope]}\n      after: {secrets: [repo]}\n      on_success: [sh, -c, 'secretbox get repo']\n      on_failure: {command: [sh, -c, 'secretbox get repo'], secrets: [cloud], env: {}}\n",
    );
    let spare_unused = "secret \"spare\" is not used by any task (add it to a task's `secrets:`)";
    assert_eq!(
        problems(&bad),
        [
            problem(4, 3, "secrets.spare", spare_unused),
            problem(
                11,
                40,
                "tasks.docs.hooks.before.secrets[0]",
                "the before hook may fetch only secrets its task may: add \"spare\" to tasks.docs.secrets too"
            ),
            problem(
                11,
                47,
                "tasks.docs.hooks.before.secrets[1]",
                "the before hook of task \"docs\" names secret \"nope\", which is not declared under `secrets:`"
            ),
            problem(12, 14, "tasks.docs.hooks.after", "missing required key `command`"),
            problem(
                13,
                28,
                "tasks.docs.hooks.on_success[2]",
                "`secretbox get repo` will be refused: a hook written as a plain command gets no token: write tasks.docs.hooks.on_success as {command: [...], secrets: [repo]}"
            ),
            problem(
                14,
                38,
                "tasks.docs.hooks.on_failure.command[2]",
                "`secretbox get repo` will be refused: add \"repo\" to tasks.docs.hooks.on_failure.secrets"
            ),
            problem(14, 79, "tasks.docs.hooks.on_failure.env", "unknown key \"env\""),
        ]
    );
}

#[test]
fn restic_tasks_treat_exit_code_3_as_a_warning() {
    let codes = |text: &str| check(text).config.expect("valid").tasks[0].warning_exit_codes.clone();
    assert_eq!(codes(MINIMAL_TASK), [3]);
    let steps = "tasks:\n  t:\n    schedule: '@daily'\n    steps:\n      - command: [rclone, sync]\n      - command: [/usr/bin/restic, check]\n";
    assert_eq!(codes(steps), [3], "any step running restic, by file name");
    assert_eq!(
        codes("tasks:\n  t:\n    schedule: '@daily'\n    command: [rclone, sync]\n"),
        [] as [i32; 0]
    );
    assert_eq!(
        codes(&format!("{MINIMAL_TASK}    warning_exit_codes: []\n")),
        [] as [i32; 0],
        "explicit wins"
    );
    assert_eq!(codes(&format!("{MINIMAL_TASK}    warning_exit_codes: [1, 3]\n")), [1, 3]);
}

#[test]
fn unknown_keys_are_named_with_the_nearest_known_key() {
    assert_eq!(
        problems(&format!("taks: {{}}\n{MINIMAL_TASK}")),
        [problem(1, 1, "taks", "unknown key \"taks\" (did you mean `tasks`?)")]
    );
    assert_eq!(
        problems(&format!("{MINIMAL_TASK}    schedual: x\n")),
        [problem(
            5,
            5,
            "tasks.docs.schedual",
            "unknown key \"schedual\" (did you mean `schedule`?)"
        )]
    );
    let step = "tasks:\n  docs:\n    schedule: '@daily'\n    steps:\n      - comand: [x]\n";
    assert_eq!(
        problems(step),
        [
            problem(
                5,
                9,
                "tasks.docs.steps[0].comand",
                "unknown key \"comand\" (did you mean `command`?)"
            ),
            problem(5, 15, "tasks.docs.steps[0]", "missing required key `command`"),
        ]
    );
    // Too far from anything known: no guess.
    assert_eq!(
        only_error(&format!("{MINIMAL_TASK}    colour: red\n")).message,
        "unknown key \"colour\""
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    // The file of `a_file_with_many_problems_reports_all_of_them` in tests/integration.
    let text = "token_ttl: 30\ntimezone: Mars/Olympus\nsecrets:\n  repo:\n    keyring: {service: s}\ntasks:\n  docs:\n    schedule: '61 * * * *'\n    command: []\n    secrets: [repo, nope]\n    on_overlap: never\n  docs:\n    schedule: '@daily'\n    command: [x]\n";
    let checked = check(text);
    assert!(checked.config.is_none());
    assert!(checked.problems.iter().all(|p| p.severity == Severity::Error));
    let found = problems(text);
    let summary: Vec<(usize, &str)> =
        found.iter().map(|(line, _, path, _)| (*line, path.as_str())).collect();
    assert_eq!(
        summary,
        [
            (1, "token_ttl"),
            (2, "timezone"),
            (5, "secrets.repo.keyring"),
            (8, "tasks.docs.schedule"),
            (9, "tasks.docs.command"),
            (10, "tasks.docs.secrets[1]"),
            (11, "tasks.docs.on_overlap"),
            (12, "tasks.docs"),
        ]
    );
    assert_eq!(found[0].3, "invalid duration 30: a number needs a unit (write 30s, 30m or 30h)");
    assert!(found[1].3.starts_with("unknown time zone \"Mars/Olympus\""), "{}", found[1].3);
    assert_eq!(found[2].3, "missing required key `account`");
    assert!(
        found[3].3.starts_with("invalid schedule \"61 * * * *\": minute field \"61\""),
        "{}",
        found[3].3
    );
    assert_eq!(found[4].3, "empty command: give at least the program to run");
    assert_eq!(
        found[5].3,
        "task \"docs\" names secret \"nope\", which is not declared under `secrets:`"
    );
    assert_eq!(found[6].3, "invalid value \"never\": expected one of skip, queue");
    assert_eq!(
        found[7].3,
        "duplicate key \"docs\" (first defined at line 7): each key may appear once"
    );
}

#[test]
fn problems_without_a_position_come_last() {
    let no_home = Environment { vars: BTreeMap::new(), uid: 1000 };
    let text = format!("{MINIMAL_TASK}    working_dir: ~/x\n    on_overlap: skipp\n");
    let checked = parse(&text, Path::new("b.yaml"), &no_home);
    let found: Vec<(Option<Pos>, &str, &str)> =
        checked.problems.iter().map(|p| (p.pos, p.path.as_str(), p.message.as_str())).collect();
    assert_eq!(
        found,
        [
            (
                Some(Pos { line: 5, column: 18 }),
                "tasks.docs.working_dir",
                "cannot expand `~`: HOME is not set"
            ),
            (
                Some(Pos { line: 6, column: 17 }),
                "tasks.docs.on_overlap",
                "invalid value \"skipp\": expected one of skip, queue (did you mean `skip`?)"
            ),
            (
                None,
                "state_dir",
                "no default: neither XDG_STATE_HOME nor HOME is set; set `state_dir:`"
            ),
        ]
    );
}

#[test]
fn command_and_steps_exclude_each_other() {
    let both = "tasks:\n  docs:\n    schedule: '@daily'\n    command: [x]\n    steps:\n      - command: [y]\n";
    assert_eq!(
        problems(both),
        [problem(
            6,
            7,
            "tasks.docs",
            "both `command` and `steps`: give one (a single command, or a list of steps)"
        )]
    );
    assert_eq!(
        problems("tasks:\n  docs:\n    schedule: '@daily'\n"),
        [problem(
            3,
            13,
            "tasks.docs",
            "missing `command` (or `steps`): what should this task run?"
        )]
    );
    let pinned = "tasks:\n  docs:\n    schedule: '@daily'\n    sha256: abc\n    steps:\n      - command: [y]\n";
    assert_eq!(
        problems(pinned),
        [problem(
            4,
            13,
            "tasks.docs.sha256",
            "with `steps:`, pin each step's program with its own `sha256`"
        )]
    );
    assert_eq!(
        problems("tasks:\n  docs:\n    schedule: '@daily'\n    steps: []\n"),
        [problem(4, 12, "tasks.docs.steps", "empty list of steps: give at least one step")]
    );
}

#[test]
fn secrets_named_by_tasks_must_be_declared() {
    let text = format!(
        "secrets:\n  repo: {{env: REPO_PW}}\n{MINIMAL_TASK}    secrets: [repo, rep0]\n    env:\n      AWS_SECRET_ACCESS_KEY: {{secret: repoo}}\n    notify:\n      ping: {{secret: hc}}\n"
    );
    assert_eq!(
        problems(&text),
        [
            problem(
                7,
                21,
                "tasks.docs.secrets[1]",
                "task \"docs\" names secret \"rep0\", which is not declared under `secrets:` (did you mean `repo`?)"
            ),
            problem(
                9,
                39,
                "tasks.docs.env.AWS_SECRET_ACCESS_KEY.secret",
                "{secret: repoo} in task \"docs\" names a secret that is not declared under `secrets:` (did you mean `repo`?)"
            ),
            problem(
                11,
                22,
                "tasks.docs.notify.ping.secret",
                "{secret: hc} names a secret that is not declared under `secrets:`"
            ),
        ]
    );
}

#[test]
fn secretbox_get_must_name_a_secret_in_the_tasks_scope() {
    let text = format!(
        "secrets:\n  repo: {{env: REPO_PW}}\n{MINIMAL_TASK}    env:\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RCLONE_PASSWORD_COMMAND: /usr/bin/secretbox get --quiet offsite\n"
    );
    assert_eq!(
        problems(&text),
        [
            // `secretbox get` in a command does not count as using the secret.
            problem(
                2,
                3,
                "secrets.repo",
                "secret \"repo\" is not used by any task (add it to a task's `secrets:`)"
            ),
            problem(
                8,
                32,
                "tasks.docs.env.RESTIC_PASSWORD_COMMAND",
                "`secretbox get repo` will be refused: add \"repo\" to tasks.docs.secrets"
            ),
            problem(
                9,
                32,
                "tasks.docs.env.RCLONE_PASSWORD_COMMAND",
                "`secretbox get offsite`: secret \"offsite\" is not declared under `secrets:`"
            ),
        ]
    );
}

#[test]
fn warnings_leave_the_config_usable() {
    let text = "secrets:\n  unused: {env: X}\ntasks:\n  docs:\n    schedule: '@daily'\n    command: [restic, backup, /x]\n    env:\n      RESTIC_PASSWORD: hunter2\n";
    let checked = check(text);
    assert!(checked.config.is_some());
    assert!(checked.problems.iter().all(|p| p.severity == Severity::Warning));
    assert_eq!(
        problems(text),
        [
            problem(
                2,
                3,
                "secrets.unused",
                "secret \"unused\" is not used by any task (add it to a task's `secrets:`)"
            ),
            problem(
                8,
                24,
                "tasks.docs.env.RESTIC_PASSWORD",
                "RESTIC_PASSWORD is written in plain text in the task file; use RESTIC_PASSWORD_COMMAND: secretbox get NAME so the secret stays in the keychain"
            ),
        ]
    );
}

#[test]
fn each_secret_has_exactly_one_source() {
    let with =
        |secret: &str| format!("secrets:\n  repo: {secret}\n{MINIMAL_TASK}    secrets: [repo]\n");
    assert_eq!(
        only_error(&with("{}")).message,
        "no source: give exactly one of keyring, command, file or env"
    );
    assert_eq!(
        only_error(&with("{file: /x, env: X}")).message,
        "2 sources (file, env): give exactly one of keyring, command, file or env"
    );
    let p = only_error(&with("{file: /x, timeout: 5s}"));
    assert_eq!(
        (p.path.as_str(), p.message.as_str()),
        ("secrets.repo.timeout", "`timeout` applies only to a `command` source")
    );
    let p = only_error(&with("{keyring: {service: s, account: a, store: gnome}}"));
    assert_eq!(p.path, "secrets.repo.keyring.store");
    assert_eq!(
        p.message,
        "invalid value \"gnome\": expected one of auto, secret-service, keyutils, keychain"
    );
}

#[test]
fn durations_need_a_unit_and_a_sensible_length() {
    let top = |line: &str| only_error(&format!("{line}\n{MINIMAL_TASK}")).message;
    assert_eq!(
        top("token_ttl: 5 minutes"),
        "invalid duration \"5 minutes\": \"5\" has no unit (write 5s, 5m or 5h)"
    );
    assert_eq!(top("token_ttl: 0s"), "must be longer than 0s");
    assert_eq!(
        top("token_ttl: 2h"),
        "must be at most 1h: a token is only needed while the task starts up"
    );
    assert_eq!(
        top("shutdown_grace: 1x"),
        "invalid duration \"1x\": unknown unit \"x\" (use ms, s, m, h or d)"
    );
    let task = |line: &str| only_error(&format!("{MINIMAL_TASK}    {line}\n"));
    let p = task("timeout: 30");
    assert_eq!((p.pos, p.path.as_str()), (Some(Pos { line: 5, column: 14 }), "tasks.docs.timeout"));
    assert_eq!(p.message, "invalid duration 30: a number needs a unit (write 30s, 30m or 30h)");
    assert_eq!(
        task("max_lateness: soon").message,
        "invalid duration \"soon\": expected a number at \"soon\" (write e.g. 30s, 2m or 1h30m)"
    );
    assert_eq!(
        task("hooks: {timeout: true}").message,
        "expected a duration such as 30s, 2m or 1h30m, found a boolean (\"true\")"
    );
    // Zero is a valid `max_lateness` (never catch up), unlike a zero timeout.
    assert!(check(&format!("{MINIMAL_TASK}    max_lateness: 0s\n")).config.is_some());
}

#[test]
fn wrong_types_say_what_was_expected_and_found() {
    let task = |line: &str| only_error(&format!("{MINIMAL_TASK}    {line}\n")).message;
    assert_eq!(task("redeem_limit: 0"), "0 is out of range 1-1000");
    assert_eq!(
        task("redeem_limit: lots"),
        "expected a whole number from 1 to 1000, found a string (\"lots\")"
    );
    assert_eq!(
        task("warning_exit_codes: 3"),
        "expected a list of exit codes such as [3], found a number (\"3\")"
    );
    assert_eq!(
        task("working_dir: backups"),
        "backups is a relative path: write an absolute path (a leading ~/ is expanded)"
    );
    assert_eq!(
        task("sha256: abc"),
        "invalid sha256 \"abc\": write the 64 hex digits that `sha256sum PROGRAM` prints"
    );
    assert_eq!(
        task("notify: {ping: ftp://x}"),
        "expected an http:// or https:// URL (or {secret: NAME})"
    );
    assert_eq!(
        only_error("tasks:\n  docs:\n    schedule: '@daily'\n    command: restic backup ~/x\n")
            .message,
        "a command is a list of arguments, run without a shell: write [\"restic\", \"backup\", \"~/x\"] instead of \"restic backup ~/x\""
    );
}

#[test]
fn yaml_syntax_errors_and_empty_files_are_one_problem() {
    let p = only_error("tasks:\n  docs: [1, 2\n");
    assert!(p.message.starts_with("YAML syntax: "), "{}", p.message);
    let p = only_error("");
    assert_eq!((p.pos, p.path.as_str()), (None, ""));
    assert_eq!(
        p.message,
        "the task file is empty: it needs at least a `tasks:` mapping (see backup.yaml.example)"
    );
    assert_eq!(
        only_error("secrets: {}\n").message,
        "no `tasks:` mapping: define at least one task (see backup.yaml.example)"
    );
}

#[test]
fn output_file_is_a_path_or_a_mapping_and_relative_paths_live_in_state_dir() {
    let output = |text: &str| {
        let checked = check(&format!("{MINIMAL_TASK}    output_file: {text}\n"));
        assert_eq!(checked.problems, [], "{text}");
        checked.config.unwrap().tasks[0].output_file.clone().unwrap()
    };
    assert_eq!(
        output("logs/docs.log"),
        OutputFile {
            path: "/home/u/.local/state/backupnizza/logs/docs.log".into(),
            max_size: DEFAULT_OUTPUT_MAX_SIZE,
            keep: DEFAULT_OUTPUT_KEEP,
        }
    );
    assert_eq!(
        output("{path: ~/docs.log, max_size: 512KiB, keep: 1}"),
        OutputFile { path: "/home/u/docs.log".into(), max_size: 512 * 1024, keep: 1 }
    );
    assert_eq!(output("{path: /var/log/d, max_size: 1048576}").max_size, 1024 * 1024);
    assert!(check(MINIMAL_TASK).config.unwrap().tasks[0].output_file.is_none());
}

#[test]
fn bad_output_files_name_the_key_and_the_fix() {
    let at = |text: &str| format!("{MINIMAL_TASK}    output_file: {text}\n");
    assert_eq!(
        problems(&at("{path: x, max_szie: 1MiB}")),
        [problem(
            5,
            28,
            "tasks.docs.output_file.max_szie",
            "unknown key \"max_szie\" (did you mean `max_size`?)"
        )]
    );
    assert_eq!(
        problems(&at("{path: x, max_size: 10 MiBs}")),
        [problem(
            5,
            38,
            "tasks.docs.output_file.max_size",
            "expected a size such as 10MiB, 512KiB or 1GB (a bare number is bytes), found a string (\"10 MiBs\")"
        )]
    );
    assert_eq!(
        only_error(&at("{path: x, max_size: 4KiB}")).message,
        "4096 bytes is too small: at least 256 KiB, so each file holds whole lines"
    );
    let zero = only_error(&at("{path: x, keep: 0}"));
    assert_eq!(zero.path, "tasks.docs.output_file.keep");
    assert!(zero.message.starts_with("0 is out of range 1-100"), "{}", zero.message);
    assert_eq!(only_error(&at("{max_size: 1MiB}")).message, "missing required key `path`");
    assert_eq!(only_error(&at("logs/")).message, "\"logs/\" names a directory: name the file");
    assert_eq!(only_error(&at("[a, b]")).path, "tasks.docs.output_file");
    let shared = format!(
        "{MINIMAL_TASK}    output_file: out.log\n  other:\n    schedule: '@daily'\n    command: [x]\n    output_file: /home/u/.local/state/backupnizza/out.log\n"
    );
    assert_eq!(
        problems(&shared),
        [problem(
            9,
            18,
            "tasks.other.output_file",
            "/home/u/.local/state/backupnizza/out.log is already the output file of task \"docs\": give each task its own file"
        )]
    );
}

#[test]
fn control_group_names_a_group_that_exists_and_is_absent_by_default() {
    assert_eq!(check(MINIMAL_TASK).config.unwrap().control_group, None);
    // Group 0 exists everywhere (`root` on Linux, `wheel` on macOS): look its name up.
    let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(0)).unwrap().unwrap().name;
    let config = check(&format!("control_group: {name}\n{MINIMAL_TASK}")).config.unwrap();
    assert_eq!(config.control_group, Some(crate::config::ControlGroup { name, gid: 0 }));

    let p = only_error(&format!("control_group: no-such-group-bnz\n{MINIMAL_TASK}"));
    assert_eq!((p.pos.map(|p| p.line), p.path.as_str()), (Some(1), "control_group"));
    assert_eq!(
        p.message,
        "no group named \"no-such-group-bnz\" on this system: create it (`groupadd no-such-group-bnz`) or name an existing group"
    );
}

#[test]
fn retry_and_lock_are_read_with_defaults_and_bounds() {
    let task = |extra: &str| check(&format!("{MINIMAL_TASK}{extra}"));
    let checked = task("    retry: {attempts: 3}\n    lock: main-repo\n");
    let t = &checked.config.expect("valid").tasks[0];
    let retry = t.retry.as_ref().unwrap();
    assert_eq!((retry.attempts, retry.delay, retry.backoff), (3, Duration::from_secs(30), 1.0));
    assert_eq!(t.lock.as_deref(), Some("main-repo"));
    let retry = crate::config::Retry { attempts: 4, delay: Duration::from_secs(10), backoff: 2.0 };
    assert_eq!(
        [1, 2, 3].map(|n| retry.delay_after(n)),
        [10, 20, 40].map(Duration::from_secs),
        "each wait is the last one times the factor"
    );
    let messages = |extra: &str| -> Vec<String> {
        problems(&format!("{MINIMAL_TASK}{extra}")).into_iter().map(|p| p.3).collect()
    };
    assert_eq!(
        messages("    retry: {attempts: 1}\n"),
        ["1 is out of range 2-20: 1 is no retry at all; remove `retry`"]
    );
    assert_eq!(messages("    retry: {attempts: 2, backoff: 0.5}\n"), ["0.5 is out of range 1-10"]);
    let unknown = messages("    retry: {tries: 2}\n");
    assert!(unknown.iter().any(|m| m.contains("tries")), "{unknown:?}");
    assert!(unknown.iter().any(|m| m.contains("attempts")), "{unknown:?}");
    assert!(messages("    lock: 'my repo'\n")[0].starts_with("invalid lock name \"my repo\""));
}

#[test]
fn a_pipeline_is_a_command_with_stages() {
    let text = "tasks:\n  db:\n    schedule: '@daily'\n    pipeline:\n      - [pg_dump, app]\n      - [restic, backup, --stdin]\n";
    let config = check(text).config.expect("valid");
    let step = &config.tasks[0].steps[0];
    assert_eq!(step.command, ["pg_dump", "app"]);
    assert_eq!(step.pipe_into, [vec!["restic", "backup", "--stdin"]]);
    assert_eq!(step.stages().len(), 2);
    assert_eq!(
        config.tasks[0].warning_exit_codes,
        [3],
        "restic in any stage: its exit code 3 is a warning"
    );
    let steps = "tasks:\n  db:\n    schedule: '@daily'\n    steps:\n      - pipeline: [[a], [b], [c]]\n      - command: [d]\n";
    let config = check(steps).config.expect("valid");
    assert_eq!(config.tasks[0].steps[0].stages().len(), 3);
    let messages =
        |text: &str| -> Vec<String> { problems(text).into_iter().map(|p| p.3).collect() };
    assert_eq!(
        messages("tasks:\n  db:\n    schedule: '@daily'\n    pipeline: [[a]]\n"),
        ["a pipeline needs at least two stages; for one command, write `command:`"]
    );
    assert_eq!(
        messages(
            "tasks:\n  db:\n    schedule: '@daily'\n    steps:\n      - {command: [a], pipeline: [[a], [b]]}\n"
        ),
        ["both `command` and `pipeline`: give one (a pipeline's first stage is its command)"]
    );
    let empty = problems("tasks:\n  db:\n    schedule: '@daily'\n    pipeline: [[a], []]\n");
    assert_eq!(
        empty.iter().map(|p| p.2.as_str()).collect::<Vec<_>>(),
        ["tasks.db.pipeline[1]"],
        "{empty:?}"
    );
}

#[test]
fn nice_and_io_are_bounded_and_idle_has_no_priority() {
    let config = check(&format!("{MINIMAL_TASK}    nice: 19\n    io: {{class: best-effort}}\n"))
        .config
        .expect("valid");
    assert_eq!(config.tasks[0].nice, Some(19));
    assert_eq!(config.tasks[0].io, Some(crate::config::IoClass::BestEffort(4)));
    assert_eq!(crate::config::IoClass::Idle.ioprio(), 3 << 13);
    assert_eq!(crate::config::IoClass::BestEffort(7).ioprio(), (2 << 13) | 7);
    let messages = |extra: &str| -> Vec<String> {
        problems(&format!("{MINIMAL_TASK}{extra}")).into_iter().map(|p| p.3).collect()
    };
    assert_eq!(messages("    nice: 20\n"), ["20 is out of range 0-19 (19 is the politest)"]);
    assert_eq!(
        messages("    io: {class: idle, priority: 3}\n"),
        ["the idle class has no priority: remove it, or use class: best-effort"]
    );
    assert!(messages("    io: {class: realtime}\n")[0].contains("invalid value \"realtime\""));
}

#[test]
fn a_verifier_has_no_command_names_other_tasks_and_verifies_something() {
    let base = MINIMAL_TASK;
    let ok = check(&format!(
        "{base}  v:\n    schedule: manual\n    verify: {{tasks: [docs], canaries: [~/Documents/.canary]}}\n"
    ));
    let config = ok.config.expect("a valid verifier");
    let v = config.tasks[1].verify.as_ref().unwrap();
    assert!(config.tasks[1].steps.is_empty());
    assert_eq!((v.sample, v.check_subset, v.drill), (20, None, false));
    assert_eq!(v.canaries, [Path::new("/home/u/Documents/.canary")]);

    let cases = [
        (
            "    command: [restic, check]\n    verify: {tasks: [docs]}\n",
            "runs the daemon's checks, not commands",
        ),
        ("    verify: {tasks: [v]}\n", "verifies itself"),
        ("    verify: {tasks: [doc]}\n", "which is not in this file"),
        ("    verify: {tasks: [docs], sample: 0}\n", "verifies nothing"),
        ("    verify: {tasks: [docs], check_subset: 0}\n", "out of range"),
        ("    verify: {tasks: [docs], drill: yes}\n", "true or false"),
    ];
    for (text, want) in cases {
        let p = only_error(&format!("{base}  v:\n    schedule: manual\n{text}"));
        assert!(p.message.contains(want), "{text}: {p:?}");
        assert!(p.path.starts_with("tasks.v"), "{p:?}");
    }
}
