//! How many times one run's process fetches each secret, read off the task file, so that
//! `redeem_limit` fits the common cases without the user having to discover it: `restic
//! copy` with the source's password from the same secret (`--from-password-command`,
//! `RESTIC_FROM_PASSWORD_COMMAND`), and rclone's config password when both repositories of a
//! copy are `rclone:` ones (restic starts rclone once per repository, and each asks).

use std::collections::BTreeMap;

use crate::config::{EnvValue, EnvVar, Step, program_name};

/// Variables restic (or rclone) runs as a command to get a password.
const PASSWORD_VARS: &[&str] =
    &["RESTIC_PASSWORD_COMMAND", "RESTIC_FROM_PASSWORD_COMMAND", "RCLONE_PASSWORD_COMMAND"];
/// Options of restic that take a password command.
const PASSWORD_OPTIONS: &[&str] =
    &["--password-command", "--from-password-command", "--password-command2"];
/// Options and variables naming a repository.
const REPO_OPTIONS: &[&str] = &["-r", "--repo", "--from-repo", "--repo2"];
const REPO_VARS: &[&str] = &["RESTIC_REPOSITORY", "RESTIC_FROM_REPOSITORY"];

/// `NAME` in `secretbox get NAME` (`secretbox get --no-newline NAME`), if `command` is one.
fn secret_of(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace();
    if program_name(words.next()?) != "secretbox" || words.next()? != "get" {
        return None;
    }
    words.find(|w| !w.starts_with('-'))
}

/// The value of option `name` in `args` (`--opt VALUE` or `--opt=VALUE`).
fn options<'a>(args: &'a [String], names: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        for name in names {
            if arg == name {
                if let Some(v) = args.get(i + 1) {
                    out.push(v.as_str());
                }
            } else if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                out.push(v);
            }
        }
    }
    out
}

/// For one step: each secret's redemptions per run, with the places that ask.
pub(super) fn uses(task_env: &[EnvVar], step: &Step) -> BTreeMap<String, (u32, Vec<String>)> {
    // The step's own env overrides the task's.
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    for var in task_env.iter().chain(&step.env) {
        if let EnvValue::Text(text) = &var.value {
            env.insert(&var.name, text);
        } else {
            env.remove(var.name.as_str());
        }
    }
    let mut out: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    for argv in step.stages() {
        if program_name(&argv[0]) != "restic" {
            continue;
        }
        let args = &argv[1..];
        let is_copy = args.iter().any(|a| a == "copy");
        let mut repos: Vec<&str> = options(args, REPO_OPTIONS);
        repos.extend(REPO_VARS.iter().filter_map(|v| env.get(v).copied()));
        let rclone_repos = repos.iter().filter(|r| r.starts_with("rclone:")).count().max(1) as u32;
        let mut ask = |command: &str, place: &str, times: u32| {
            if let Some(name) = secret_of(command) {
                let entry = out.entry(name.to_string()).or_default();
                entry.0 += times;
                entry.1.push(place.to_string());
            }
        };
        for var in PASSWORD_VARS {
            // Without `copy`, restic uses only the destination's password command.
            if *var == "RESTIC_FROM_PASSWORD_COMMAND" && !is_copy {
                continue;
            }
            if let Some(command) = env.get(var) {
                let times = if *var == "RCLONE_PASSWORD_COMMAND" { rclone_repos } else { 1 };
                ask(command, var, times);
            }
        }
        for option in PASSWORD_OPTIONS {
            for command in options(args, &[option]) {
                ask(command, option, 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(argv: &[&str], env: &[(&str, &str)]) -> (Vec<EnvVar>, Step) {
        let env = env
            .iter()
            .map(|(k, v)| EnvVar { name: k.to_string(), value: EnvValue::Text(v.to_string()) })
            .collect();
        let step = Step {
            command: argv.iter().map(ToString::to_string).collect(),
            pipe_into: Vec::new(),
            env: Vec::new(),
            continue_on_error: false,
            sha256: None,
            read_all: None,
        };
        (env, step)
    }

    #[test]
    fn a_copy_with_one_password_asks_twice() {
        let (env, s) = step(
            &["restic", "copy", "--from-repo", "/a"],
            &[
                ("RESTIC_REPOSITORY", "/b"),
                ("RESTIC_PASSWORD_COMMAND", "secretbox get repo"),
                ("RESTIC_FROM_PASSWORD_COMMAND", "secretbox get repo"),
            ],
        );
        assert_eq!(uses(&env, &s)["repo"].0, 2);
        let (env, s) = step(
            &["restic", "backup", "/d"],
            &[
                ("RESTIC_PASSWORD_COMMAND", "secretbox get repo"),
                ("RESTIC_FROM_PASSWORD_COMMAND", "secretbox get repo"),
            ],
        );
        assert_eq!(uses(&env, &s)["repo"].0, 1, "backup reads only its own password");
    }

    #[test]
    fn rclone_asks_once_per_rclone_repository() {
        let (env, s) = step(
            &[
                "restic",
                "copy",
                "--from-repo=rclone:a:x",
                "--from-password-command",
                "secretbox get old",
            ],
            &[
                ("RESTIC_REPOSITORY", "rclone:b:y"),
                ("RESTIC_PASSWORD_COMMAND", "secretbox get new"),
                ("RCLONE_PASSWORD_COMMAND", "/usr/bin/secretbox get --no-newline rclone"),
            ],
        );
        let u = uses(&env, &s);
        assert_eq!((u["rclone"].0, u["old"].0, u["new"].0), (2, 1, 1));
    }
}
