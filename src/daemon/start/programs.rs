//! The programs of this task file, checked once at start before anything runs: the helpers
//! of `command:` secret sources, every step, pipeline stage, hook and notify command
//! (StrictModes, see [`crate::trust`]), and the pins of the steps that are pinned.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::config::{Config, EnvVar, Source, Task};
use crate::digest::hex;
use crate::trust::{Pinned, check_source_program, check_trusted, pin, resolve};

/// The `PATH` a step's process will see: the task's or step's `env` wins over the daemon's.
pub(crate) fn step_path(
    base: &[(OsString, OsString)],
    task: &Task,
    step_env: &[EnvVar],
) -> Option<OsString> {
    match task.env_path(step_env) {
        Some(text) => Some(text.into()),
        None => base.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()),
    }
}

/// For each task, for each step, the pinned program (if pinned).
pub(crate) type Pins = Vec<Vec<Option<Pinned>>>;

/// Where the programs are looked for: the task file (named in problems about secrets), the
/// daemon's own `PATH` (what `command:` sources are found by), the environment tasks get, and
/// the daemon's user.
pub(crate) struct Context<'a> {
    pub config_path: &'a Path,
    pub daemon_path: Option<&'a OsStr>,
    pub base_env: &'a [(OsString, OsString)],
    pub home: Option<&'a Path>,
    pub uid: u32,
}

/// What the checks found: problems that stop the daemon, and warnings it starts with.
#[derive(Default)]
struct Findings {
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// Checks every program at start, before any runs: the helpers of `command:` secret sources
/// (StrictModes), and each task's steps and hooks (StrictModes, and the pins). Returns, for
/// each task, the pin of each step (if pinned), plus warnings; or every problem found.
pub(crate) fn prepare(
    config: &Config,
    cx: &Context<'_>,
) -> Result<(Pins, Vec<String>), Vec<String>> {
    let mut found = Findings::default();
    // A helper runs at start, before any task, and sees the secret it prints.
    for spec in &config.secrets {
        let Source::Command { argv, .. } = &spec.source else { continue };
        if let Err(e) = check_source_program(&argv[0], cx.daemon_path, cx.uid) {
            let at = spec.pos.map(|p| format!(":{p}")).unwrap_or_default();
            found.errors.push(format!(
                "{}{at}: secret {:?} (command source): {e}",
                cx.config_path.display(),
                spec.name
            ));
        }
    }
    let mut pins = Vec::new();
    for task in &config.tasks {
        pins.push(check_steps(config, task, cx, &mut found));
        // The task's notifier (its own, or the file's): the same trust rules.
        if let Some(argv) =
            task.notify.as_ref().or(config.notify.as_ref()).and_then(|n| n.command.as_ref())
        {
            let what = format!("task {:?} notify command", task.name);
            let missing = "notifications by command will fail";
            check_program(&argv[0], (task, None), cx, (&what, missing), &mut found);
        }
        // Hooks run with the task's environment (and some with a token): the same trust rules.
        let hooks = [
            ("before", &task.hooks.before),
            ("on_success", &task.hooks.on_success),
            ("on_failure", &task.hooks.on_failure),
            ("after", &task.hooks.after),
        ];
        for (name, hook) in hooks {
            let Some(argv) = hook.as_ref().map(|h| &h.command) else { continue };
            let what = format!("task {:?} {name} hook", task.name);
            let dir = task.working_dir.as_deref();
            check_program(&argv[0], (task, dir), cx, (&what, "the hook will fail"), &mut found);
        }
    }
    let Findings { errors, warnings } = found;
    if errors.is_empty() { Ok((pins, warnings)) } else { Err(errors) }
}

/// A hook's or notifier's program: found on the task's `PATH` (from `dir`, for a relative
/// path) and trusted, or a warning that `missing` will happen.
fn check_program(
    program: &str,
    (task, dir): (&Task, Option<&Path>),
    cx: &Context<'_>,
    (what, missing): (&str, &str),
    found: &mut Findings,
) {
    let path = step_path(cx.base_env, task, &[]);
    match resolve(program, path.as_deref(), cx.home, dir) {
        Some(resolved) => {
            if let Err(e) = check_trusted(&resolved, "program", cx.uid) {
                found.errors.push(format!("{what}: {e}"));
            }
        }
        None => found.warnings.push(format!("{what}: program {program:?} not found; {missing}")),
    }
}

/// Each step of `task`: its pipeline's later stages trusted (never pinned), its program
/// trusted and, when pinned, hashed. Returns each step's pin.
fn check_steps(
    config: &Config,
    task: &Task,
    cx: &Context<'_>,
    found: &mut Findings,
) -> Vec<Option<Pinned>> {
    let mut pins = Vec::new();
    for (i, step) in task.steps.iter().enumerate() {
        let label = if task.steps.len() == 1 {
            format!("task {:?}", task.name)
        } else {
            format!("task {:?} step {}", task.name, i + 1)
        };
        let path = step_path(cx.base_env, task, &step.env);
        let dir = task.working_dir.as_deref();
        // A pipeline's later stages: the same trust rules, and no pin (see the docs).
        for (n, argv) in step.pipe_into.iter().enumerate() {
            let stage = format!("{label} pipeline stage {}", n + 2);
            match resolve(&argv[0], path.as_deref(), cx.home, dir) {
                Some(program) => {
                    if let Err(e) = check_trusted(&program, "program", cx.uid) {
                        found.errors.push(format!("{stage}: {e}"));
                    }
                }
                None => found.warnings.push(format!(
                    "{stage}: program {:?} not found (searched the task's PATH); its runs will fail until it is installed",
                    argv[0]
                )),
            }
        }
        let wants_pin = step.sha256.is_some() || config.pin_binaries;
        let program = resolve(&step.command[0], path.as_deref(), cx.home, dir);
        pins.push(check_step(step, program, (&label, wants_pin), cx.uid, found));
    }
    pins
}

/// A step's first program: it must exist when pinned, be trusted, and match its pin.
fn check_step(
    step: &crate::config::Step,
    program: Option<std::path::PathBuf>,
    (label, wants_pin): (&str, bool),
    uid: u32,
    found: &mut Findings,
) -> Option<Pinned> {
    let Some(program) = program else {
        let problem =
            format!("{label}: program {:?} not found (searched the task's PATH)", step.command[0]);
        if wants_pin {
            found
                .errors
                .push(format!("{problem}; a pinned program must exist when the daemon starts"));
        } else {
            found.warnings.push(format!("{problem}; its runs will fail until it is installed"));
        }
        return None;
    };
    if let Err(e) = check_trusted(&program, "program", uid) {
        found.errors.push(format!("{label}: {e}"));
        return None;
    }
    if !wants_pin {
        return None;
    }
    match pin(&program) {
        Ok(actual) => match step.sha256 {
            Some(expected) if expected != actual => {
                found.errors.push(format!(
                    "{label}: program {} has sha256 {}, but the task file pins {}: update `sha256:` if the program was upgraded on purpose",
                    program.display(),
                    hex(&actual),
                    hex(&expected)
                ));
                None
            }
            _ => Some(Pinned { path: program, digest: actual }),
        },
        Err(e) => {
            found.errors.push(format!("{label}: {e}"));
            None
        }
    }
}
