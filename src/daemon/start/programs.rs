//! The programs of this task file, checked once at start before anything runs: the helpers
//! of `command:` secret sources, every step, pipeline stage, hook and notify command
//! (StrictModes, see [`crate::trust`]), and the pins of the steps that are pinned.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::config::{Config, EnvValue, EnvVar, Source, Task};
use crate::digest::hex;
use crate::trust::{Pinned, check_source_program, check_trusted, pin, resolve};

/// The `PATH` a step's process will see: the task's or step's `env` wins over the daemon's.
pub(crate) fn step_path(
    base: &[(OsString, OsString)],
    task: &Task,
    step_env: &[EnvVar],
) -> Option<OsString> {
    let mut path = base.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    for var in task.env.iter().chain(step_env) {
        if let (true, EnvValue::Text(text)) = (var.name == "PATH", &var.value) {
            path = Some(text.into());
        }
    }
    path
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

/// Checks every program at start, before any runs: the helpers of `command:` secret sources
/// (StrictModes), and each task's steps and hooks (StrictModes, and the pins). Returns, for
/// each task, the pin of each step (if pinned), plus warnings; or every problem found.
pub(crate) fn prepare(
    config: &Config,
    cx: &Context<'_>,
) -> Result<(Pins, Vec<String>), Vec<String>> {
    let (base_env, home, uid) = (cx.base_env, cx.home, cx.uid);
    let mut pins = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    // A helper runs at start, before any task, and sees the secret it prints.
    for spec in &config.secrets {
        let Source::Command { argv, .. } = &spec.source else { continue };
        if let Err(e) = check_source_program(&argv[0], cx.daemon_path, uid) {
            let at = spec.pos.map(|p| format!(":{p}")).unwrap_or_default();
            errors.push(format!(
                "{}{at}: secret {:?} (command source): {e}",
                cx.config_path.display(),
                spec.name
            ));
        }
    }
    for task in &config.tasks {
        let mut task_pins = Vec::new();
        for (i, step) in task.steps.iter().enumerate() {
            let label = if task.steps.len() == 1 {
                format!("task {:?}", task.name)
            } else {
                format!("task {:?} step {}", task.name, i + 1)
            };
            let path = step_path(base_env, task, &step.env);
            // A pipeline's later stages: the same trust rules, and no pin (see the docs).
            for (n, argv) in step.pipe_into.iter().enumerate() {
                let stage = format!("{label} pipeline stage {}", n + 2);
                match resolve(&argv[0], path.as_deref(), home, task.working_dir.as_deref()) {
                    Some(program) => {
                        if let Err(e) = check_trusted(&program, "program", uid) {
                            errors.push(format!("{stage}: {e}"));
                        }
                    }
                    None => warnings.push(format!(
                        "{stage}: program {:?} not found (searched the task's PATH); its runs will fail until it is installed",
                        argv[0]
                    )),
                }
            }
            let wants_pin = step.sha256.is_some() || config.pin_binaries;
            let Some(program) =
                resolve(&step.command[0], path.as_deref(), home, task.working_dir.as_deref())
            else {
                let problem = format!(
                    "{label}: program {:?} not found (searched the task's PATH)",
                    step.command[0]
                );
                if wants_pin {
                    errors.push(format!(
                        "{problem}; a pinned program must exist when the daemon starts"
                    ));
                } else {
                    warnings.push(format!("{problem}; its runs will fail until it is installed"));
                }
                task_pins.push(None);
                continue;
            };
            if let Err(e) = check_trusted(&program, "program", uid) {
                errors.push(format!("{label}: {e}"));
                task_pins.push(None);
                continue;
            }
            if !wants_pin {
                task_pins.push(None);
                continue;
            }
            match pin(&program) {
                Ok(actual) => match step.sha256 {
                    Some(expected) if expected != actual => {
                        errors.push(format!(
                            "{label}: program {} has sha256 {}, but the task file pins {}: update `sha256:` if the program was upgraded on purpose",
                            program.display(),
                            hex(&actual),
                            hex(&expected)
                        ));
                        task_pins.push(None);
                    }
                    _ => task_pins.push(Some(Pinned { path: program, digest: actual })),
                },
                Err(e) => {
                    errors.push(format!("{label}: {e}"));
                    task_pins.push(None);
                }
            }
        }
        pins.push(task_pins);
        // The task's notifier (its own, or the file's): the same trust rules.
        if let Some(argv) =
            task.notify.as_ref().or(config.notify.as_ref()).and_then(|n| n.command.as_ref())
        {
            let path = step_path(base_env, task, &[]);
            match resolve(&argv[0], path.as_deref(), home, None) {
                Some(program) => {
                    if let Err(e) = check_trusted(&program, "program", uid) {
                        errors.push(format!("task {:?} notify command: {e}", task.name));
                    }
                }
                None => warnings.push(format!(
                    "task {:?} notify command: program {:?} not found; notifications by command will fail",
                    task.name, argv[0]
                )),
            }
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
            let path = step_path(base_env, task, &[]);
            match resolve(&argv[0], path.as_deref(), home, task.working_dir.as_deref()) {
                Some(program) => {
                    if let Err(e) = check_trusted(&program, "program", uid) {
                        errors.push(format!("task {:?} {name} hook: {e}", task.name));
                    }
                }
                None => warnings.push(format!(
                    "task {:?} {name} hook: program {:?} not found; the hook will fail",
                    task.name, argv[0]
                )),
            }
        }
    }
    if errors.is_empty() { Ok((pins, warnings)) } else { Err(errors) }
}
