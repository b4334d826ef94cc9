//! `backupnizza next`: fire times of a file's tasks and of single expressions.

use crate::harness::Scratch;

#[test]
fn next_schedule_fires_right_after_the_spring_gap() {
    let scratch = Scratch::new();
    let run = scratch
        .backupnizza([
            "next",
            "--schedule",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--after",
            "2026-03-07T12:00:00-05:00",
            "-n",
            "2",
        ])
        .run();
    run.expect_code(0);
    assert_eq!(run.stdout(), "2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n", "{run}");
}

#[test]
fn next_after_is_exclusive() {
    let scratch = Scratch::new();
    let run = scratch
        .backupnizza([
            "next",
            "--schedule",
            "0 12 * * *",
            "--timezone",
            "UTC",
            "--after",
            "2026-01-01T12:00:00Z",
            "-n",
            "1",
        ])
        .run();
    run.expect_code(0);
    assert_eq!(run.stdout(), "2026-01-02T12:00:00+00:00\n", "{run}");
}

#[test]
fn next_rejects_bad_expressions_zones_and_instants_with_exit_2() {
    let scratch = Scratch::new();
    let cases: [(&[&str], &str); 4] = [
        (&["--schedule", "0 0 30 2 *"], "can never fire"),
        (&["--schedule", "0 25 * * *"], "hour field \"25\""),
        (
            &["--schedule", "@daily", "--timezone", "Mars/Olympus"],
            "unknown time zone \"Mars/Olympus\"",
        ),
        (&["--schedule", "@daily", "--after", "yesterday"], "invalid --after"),
    ];
    for (args, want) in cases {
        let run = scratch.backupnizza(["next"].iter().chain(args)).run();
        run.expect_code(2);
        assert!(run.stdout().is_empty(), "{run}");
        assert!(run.stderr().contains(want), "{want}\n{run}");
    }
}

#[test]
fn next_for_a_task_file_prints_sorted_lines_with_task_names() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "b.yaml",
        "timezone: Europe/Berlin\ntasks:\n  nightly:\n    schedule: '0 3 * * *'\n    command: [x]\n  hourly:\n    schedule: '@hourly'\n    timezone: America/New_York\n    command: [x]\n",
    );
    let run = scratch
        .backupnizza(["next", "-c"])
        .run_with_args(&file, &["-n", "2", "--after", "2026-03-28T23:30:00Z"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout(),
        "2026-03-28T20:00:00-04:00\thourly\n2026-03-28T21:00:00-04:00\thourly\n2026-03-29T03:00:00+02:00\tnightly\n2026-03-30T03:00:00+02:00\tnightly\n",
        "{run}"
    );
    let only = scratch
        .backupnizza(["next", "-c"])
        .run_with_args(&file, &["nightly", "-n", "1", "--after", "2026-01-01T00:00:00Z"]);
    assert_eq!(only.stdout(), "2026-01-01T03:00:00+01:00\tnightly\n", "{only}");
    let unknown = scratch.backupnizza(["next", "-c"]).run_with_args(&file, &["nightlly"]);
    unknown.expect_code(2);
    assert!(unknown.stderr().contains("did you mean \"nightly\""), "{unknown}");
}

#[test]
fn every_command_has_help_and_version() {
    let scratch = Scratch::new();
    let version = scratch.backupnizza(["--version"]).run();
    version.expect_code(0);
    assert!(version.stdout().starts_with("backupnizza "), "{version}");
    for cmd in [vec!["--help"], vec!["validate", "--help"], vec!["next", "--help"]] {
        let run = scratch.backupnizza(&cmd).run();
        run.expect_code(0);
        assert!(run.stdout().contains("Usage:"), "{run}");
    }
}
