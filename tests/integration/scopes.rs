//! What each process of a task is handed (issue 28): a step gets every secret its task's
//! `env:` names; a hook only those its own `secrets:` list, so a plain hook (code the task
//! did not need to trust with secrets) holds none, in its environment or through a token.
//! The real daemon, real hooks reading their own `/proc/self/environ`, canaries made at run
//! time.

use crate::harness::{Scratch, TRIGGERED, canary, write_private};

#[test]
fn a_hook_gets_only_the_env_secrets_its_own_secrets_list() {
    let scratch = Scratch::new();
    let (aws, other) = (canary(), canary());
    let aws_file = scratch.path().join("aws");
    let other_file = scratch.path().join("other");
    write_private(&aws_file, aws.as_bytes());
    write_private(&other_file, other.as_bytes());
    let dump = |name: &str| {
        let out = scratch.path().join(name);
        format!("[sh, -c, 'cat /proc/self/environ | tr \"\\\\0\" \"\\\\n\" > {}']", out.display())
    };
    let config = scratch.config(&format!(
        "secrets:\n  aws: {{file: {}}}\n  other: {{file: {}}}\ntasks:
  backup:
    {TRIGGERED}
    command: {step}
    env: {{AWS_SECRET_ACCESS_KEY: {{secret: aws}}, OTHER: {{secret: other}}}}
    secrets: [aws, other]
    hooks:
      before: {plain}
      after: {{command: {listed}, secrets: [aws]}}
",
        aws_file.display(),
        other_file.display(),
        step = dump("step.env"),
        plain = dump("plain-hook.env"),
        listed = dump("listed-hook.env"),
    ));
    let _daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "backup", "-c"]).run_with(&config).expect_code(0);
    let read = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap();
    // The legitimate path: the step has both.
    let step = read("step.env");
    assert!(step.contains(&format!("AWS_SECRET_ACCESS_KEY={aws}")), "the step has its secret");
    assert!(step.contains(&format!("OTHER={other}")), "the step has its other secret");
    // A plain hook: no secret value, and no token either.
    let plain = read("plain-hook.env");
    assert!(!plain.contains(&aws) && !plain.contains(&other), "a plain hook got a secret");
    assert!(!plain.contains("AWS_SECRET_ACCESS_KEY=") && !plain.contains("SECRETBOX_TOKEN="));
    assert!(plain.contains("BACKUPNIZZA_HOOK=before"), "it ran, with its facts");
    // A hook that lists one secret: that one, not the other.
    let listed = read("listed-hook.env");
    assert!(listed.contains(&format!("AWS_SECRET_ACCESS_KEY={aws}")), "the listed secret");
    assert!(!listed.contains(&other), "a secret the hook does not list");
}
