//! Command-line definitions of both binaries (clap), kept in the library so that the man
//! pages and shell completions are generated from the same source as the parsers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
The task file is `-c FILE`, else $BACKUPNIZZA_CONFIG, else
$XDG_CONFIG_HOME/backupnizza/backup.yaml (~/.config/backupnizza/backup.yaml).

Exit codes: 0 success, 1 runtime failure, 2 usage error or invalid task file.
Documentation: docs/configuration.md, docs/protocol.md, docs/security.md.";

/// backupnizza: an ssh-agent for backup jobs.
///
/// Runs restic, rclone and other backup commands on cron schedules and hands them their
/// secrets (repository passwords, cloud keys) through one-time tokens, so the secrets never
/// sit in environment variables, argument lists or files.
#[derive(Debug, Parser)]
#[command(name = "backupnizza", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Backupnizza {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The task file (default: $BACKUPNIZZA_CONFIG, else ~/.config/backupnizza/backup.yaml)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a task file and show each task's next fire time; exit 2 if it is invalid.
    ///
    /// Every problem is reported at once, one per line, as FILE:LINE:COLUMN: error: MESSAGE.
    /// Secret values are not read.
    Validate(ValidateArgs),
    /// Show upcoming fire times of the tasks in a file, or of one schedule expression.
    ///
    /// With a task file, prints `RFC3339<TAB>TASK` lines sorted by time. With --schedule,
    /// prints one RFC3339 time per line. --after is exclusive.
    Next(NextArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct NextArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only these tasks (default: all)
    #[arg(value_name = "TASK", conflicts_with = "schedule")]
    pub tasks: Vec<String>,
    /// How many fire times to show per task
    #[arg(short = 'n', long = "count", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// Start after this instant (RFC 3339 with offset, e.g. 2026-03-07T12:00:00-05:00); default: now
    #[arg(long, value_name = "RFC3339")]
    pub after: Option<String>,
    /// A schedule expression to evaluate instead of a task file, e.g. '30 2 * * *'
    #[arg(long, value_name = "EXPR", conflicts_with = "config")]
    pub schedule: Option<String>,
    /// IANA time zone for --schedule (default: the system's local zone)
    #[arg(long, value_name = "TZ", requires = "schedule")]
    pub timezone: Option<String>,
}
