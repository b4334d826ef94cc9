//! The `backupnizza` subcommands. Each takes its parsed arguments and returns an
//! `anyhow::Result`; the binary maps errors to exit codes (see `exit`).

pub mod control;
pub mod explain;
pub mod generate;
pub mod history;
pub mod ledger;
pub mod next;
pub mod secret;
pub mod service;
pub mod validate;
pub mod watch;

use std::io::{self, Write};
use std::path::PathBuf;

use crate::cli::ConfigArg;
use crate::config::{self, Config, Environment, Task};
use crate::exit::{self, Exit};

/// Writes a command's output with `writeln!` through one locked, buffered standard output,
/// flushed before returning. Write errors go through [`exit::stdout_error`]: a closed pipe
/// ends the command with exit 0 and no message, anything else is a failure.
pub fn print(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> anyhow::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    write(&mut out).and_then(|()| out.flush()).map_err(exit::stdout_error)
}

/// Loads and checks the task file named by `-c` (or the default one); an unreadable or
/// invalid file is a usage error (exit 2) listing every problem.
pub fn load_config(arg: &ConfigArg, env: &Environment) -> anyhow::Result<Config> {
    let path = config_path(arg, env)?;
    config::load(&path, env).map_err(|e| Exit::usage(e.to_string()).into())
}

/// The task called `name`, or a usage error that suggests the closest name.
pub fn require_task<'c>(config: &'c Config, name: &str) -> anyhow::Result<&'c Task> {
    config.task(name).ok_or_else(|| {
        let hint = config::did_you_mean(name, config.tasks.iter().map(|t| t.name.as_str()))
            .map(|n| format!(" (did you mean {n:?}?)"))
            .unwrap_or_default();
        Exit::usage(format!("no task named {name:?} in {}{hint}", config.path.display())).into()
    })
}

/// The task file named by `-c`, else the default location.
pub fn config_path(arg: &ConfigArg, env: &Environment) -> anyhow::Result<PathBuf> {
    match &arg.config {
        Some(path) => Ok(path.clone()),
        None => env.default_config_path().ok_or_else(|| {
            Exit::usage("no task file given: use -c FILE or set BACKUPNIZZA_CONFIG (HOME is not set either)").into()
        }),
    }
}
