//! What `validate` checks of this machine, after the file itself is valid (skipped with
//! `--portable`, for a file checked on one machine and deployed on another): every step's
//! program and pipeline stage is found on the task's `PATH` (the daemon would start with a
//! warning, and every run fail), the directory of `metrics_textfile:` exists (the daemon
//! would not start); and, as advice, a pipeline into `restic backup --stdin` where this
//! machine's restic has `--stdin-from-command` (0.17 and later), which fails without saving
//! a snapshot when the dump fails; and, as advice, each program of a sealing task
//! (`seal:`) that will run from disk, readable by the user's other processes: a script.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::{Config, Environment, Step, Task, program_name};
use crate::trust::{dir_first, resolve, secretbox_dir};

/// What the checks found: errors fail `validate` (exit 2), advice does not.
#[derive(Default)]
pub(super) struct Machine {
    pub errors: Vec<String>,
    pub advice: Vec<String>,
}

pub(super) fn check(config: &Config, env: &Environment) -> Machine {
    let mut found = Machine::default();
    let home = env.var("HOME").map(PathBuf::from);
    let beside = secretbox_dir();
    for task in &config.tasks {
        for (i, step) in task.steps.iter().enumerate() {
            let label = if task.steps.len() == 1 {
                format!("task {:?}", task.name)
            } else {
                format!("task {:?} step {}", task.name, i + 1)
            };
            let path = step_path(env, task, step, beside.as_deref());
            let stages = step.stages();
            for (n, argv) in stages.iter().enumerate() {
                let at = if stages.len() > 1 {
                    format!("{label} pipeline stage {}", n + 1)
                } else {
                    label.clone()
                };
                let dir = task.working_dir.as_deref();
                match resolve(&argv[0], Some(&path), home.as_deref(), dir) {
                    None => found.errors.push(format!(
                        "{at}: program {:?} not found on the task's PATH ({}): install it, give its full path, or set PATH in the task's env:",
                        argv[0],
                        path.to_string_lossy()
                    )),
                    Some(program) if task.seal && cfg!(target_os = "linux") => {
                        found.advice.extend(unsealed(&program, &at));
                    }
                    Some(_) => {}
                }
            }
            if let Some(advice) = stdin_advice(step, &path, home.as_deref(), &label) {
                found.advice.push(advice);
            }
        }
    }
    if let Some(dir) = config.missing_metrics_dir() {
        found.errors.push(format!(
            "metrics_textfile: directory {} does not exist: create it (node_exporter's --collector.textfile.directory), or change the path",
            dir.display()
        ));
    }
    found
}

/// Advice when a sealing task's program will run from disk, readable by the user's other
/// processes while it runs: a script (its interpreter opens it by path and must read it),
/// or a file this user cannot read (`seal:`, docs/security.md).
fn unsealed(program: &Path, at: &str) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let why = match std::fs::File::open(program).and_then(|mut f| f.read_exact(&mut head)) {
        Err(e) => format!("cannot be read ({e}), so it cannot be copied into sealed memory"),
        Ok(()) if &head == b"\x7fELF" => return None,
        Ok(()) if head.starts_with(b"#!") => {
            "is a script, which its interpreter must read by path".to_string()
        }
        Ok(()) => "is not an ELF program".to_string(),
    };
    Some(format!(
        "{at}: {} {why}: it runs from disk, and while it runs other processes of this user can read its environment (its token) and descriptors; start the real program in the step's argv (e.g. [restic, ...], not a wrapper script) to have it sealed",
        program.display()
    ))
}

/// The `PATH` the step will see: its task's or its own `env:` over the caller's, with the
/// `secretbox` beside `backupnizza` first, as the daemon does.
fn step_path(env: &Environment, task: &Task, step: &Step, beside: Option<&Path>) -> OsString {
    let caller = env.var("PATH").unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let path = OsString::from(task.env_path(&step.env).unwrap_or(caller));
    match beside {
        Some(dir) => dir_first(&path, dir),
        None => path,
    }
}

/// Advice for a pipeline into `restic backup --stdin` when the restic it runs has
/// `--stdin-from-command` (asked with `restic version`, which reads no repository).
fn stdin_advice(step: &Step, path: &OsString, home: Option<&Path>, label: &str) -> Option<String> {
    let last = step.pipe_into.last()?;
    let into_stdin = program_name(&last[0]) == "restic"
        && last.iter().any(|a| a == "backup")
        && last.iter().any(|a| a == "--stdin");
    if !into_stdin {
        return None;
    }
    let restic = resolve(&last[0], Some(path), home, None)?;
    let out = std::process::Command::new(&restic)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, number) = crate::restic::version(&text)?;
    (number >= (0, 17)).then(|| {
        format!(
            "{label}: a pipeline into `restic backup --stdin` saves a snapshot of what came even when the dump fails (recorded as partial); restic {version} ({}) has `backup --stdin-from-command`, which fails without saving one: command: [restic, backup, --stdin-from-command, --stdin-filename, NAME, --, DUMP, ARGS...] (docs/operations.md)",
            restic.display()
        )
    })
}
