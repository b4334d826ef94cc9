//! The `backupnizza` subcommands. Each takes its parsed arguments and returns an
//! `anyhow::Result`; the binary maps errors to exit codes (see `exit`).

pub mod control;
pub mod explain;
pub mod generate;
pub mod history;
pub mod next;
pub mod secret;
pub mod service;
pub mod validate;

use std::path::PathBuf;

use crate::cli::ConfigArg;
use crate::config::Environment;
use crate::exit::Exit;

/// The task file named by `-c`, else the default location.
pub fn config_path(arg: &ConfigArg, env: &Environment) -> anyhow::Result<PathBuf> {
    match &arg.config {
        Some(path) => Ok(path.clone()),
        None => env.default_config_path().ok_or_else(|| {
            Exit::usage("no task file given: use -c FILE or set BACKUPNIZZA_CONFIG (HOME is not set either)").into()
        }),
    }
}

/// Formats an instant in a zone as RFC 3339 with its UTC offset (`2026-03-08T03:00:00-04:00`).
pub fn rfc3339(at: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    at.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}
