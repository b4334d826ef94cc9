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
    /// Run the daemon in the foreground (as systemd or launchd does).
    ///
    /// Validates the task file, hardens the process, loads every secret into locked memory,
    /// listens on the socket, and runs each task on its schedule until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Show each task's last run, its result and its next fire time (asks the daemon).
    Status(StatusArgs),
    /// Run a task now, through the running daemon (so its secrets are available).
    Trigger(TriggerArgs),
    /// Hold tasks' scheduled runs (all tasks when none is named), for a while or until
    /// `resume`; each occurrence meanwhile is recorded as skipped ("paused"), and `trigger`
    /// still runs them. A pause outlives a restart of the daemon.
    Pause(PauseArgs),
    /// Lift a pause (of all tasks when none is named).
    Resume(ResumeArgs),
    /// Follow what happens to the daemon's tasks (runs ended, tasks overdue or recovered),
    /// one line each, and with --notify show each on this session's desktop.
    ///
    /// For a system daemon, which has no desktop session: run it in a member's session
    /// (docs/operations.md gives an autostart entry and a user unit).
    Watch(WatchArgs),
    /// List past runs from the run history (works without the daemon).
    History(HistoryArgs),
    /// Show the snapshot ledger, or acknowledge deletions (works without the daemon).
    ///
    /// Lists every snapshot the tasks saved and what became of it: seen by an audit,
    /// forgotten by a task's forget, pruned by an audit's keep: policy, or acknowledged.
    Ledger(LedgerArgs),
    /// Store or check secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// What happened to each occurrence of a task: ran, failed, caught up, skipped (and why).
    ///
    /// Reads the run history; answers "did my backup run while the laptop slept?".
    Explain(ExplainArgs),
    /// Print a service definition for the current user, or install it with --install.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print shell completions for backupnizza (or secretbox) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page of backupnizza (or secretbox) to stdout.
    Man(ManArgs),
    /// The daemon's guardian process (started by `run`; not for use by hand).
    #[command(hide = true)]
    Guard,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The task to explain
    #[arg(value_name = "TASK")]
    pub task: String,
    /// How far back to look (a duration such as 7d, 36h)
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// One JSON document, for scripts: each occurrence with its fate (ran, caught_up,
    /// failed, skipped, cancelled, interrupted, running, missed, no_record), manual runs, and
    /// the summary's counts
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket, to ask it for its history instead of reading `state_dir`
    /// (default: read `state_dir`; ask the daemon only if that cannot be read, or is empty
    /// while only the system daemon's socket is there)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// A systemd user unit (Type=notify, sandboxed), or with --system a system unit
    Systemd(ServiceArgs),
    /// A launchd LaunchAgent (runs in the Aqua session, where the Keychain is reachable), or
    /// with --system a LaunchDaemon
    Launchd(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Write it to ~/.config/systemd/user/ (or ~/Library/LaunchAgents/) and say how to enable
    /// it; with --system to /etc/systemd/system/ (or /Library/LaunchDaemons/), as root only
    // `-i`: the plist's install hint sits in an XML comment, where `--` is not allowed.
    #[arg(short = 'i', long)]
    pub install: bool,
    /// A system service run by a dedicated account instead of your own (system mode; the
    /// task file defaults to /etc/backupnizza/backup.yaml)
    #[arg(short = 's', long)]
    pub system: bool,
    /// The dedicated account (and group) of a system service [default: backupnizza, on
    /// macOS _backupnizza]
    #[arg(short = 'u', long, value_name = "NAME", requires = "system")]
    pub user: Option<String>,
}

/// Which program a completion script or man page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    Backupnizza,
    Secretbox,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
    /// The program to complete
    #[arg(long = "for", value_enum, default_value = "backupnizza")]
    pub program: Program,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The program to document
    #[arg(long = "for", value_enum, default_value = "backupnizza")]
    pub program: Program,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the daemon's answer as JSON
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket (default: the task file's `socket:`; without one, the user
    /// daemon's, else the system daemon's /run/backupnizza/secretbox.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The task to run
    #[arg(value_name = "TASK")]
    pub task: String,
    /// Wait for the run to end and exit with its result (0 success, warning or skipped; 1 otherwise)
    #[arg(long)]
    pub wait: bool,
    /// Print the run's output as it comes (redacted; the task's stdout on stdout, its
    /// stderr and our own lines on stderr), then exit as --wait does, but with the task's
    /// own exit code when it failed with one
    #[arg(long)]
    pub follow: bool,
    /// The daemon's socket (default: the task file's `socket:`; without one, the user
    /// daemon's, else the system daemon's /run/backupnizza/secretbox.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The tasks to pause (default: every task)
    #[arg(value_name = "TASK")]
    pub tasks: Vec<String>,
    /// How long (a duration such as 30m, 2h, 1d); without it, until `backupnizza resume`
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// The daemon's socket (default: the task file's `socket:`; without one, the user
    /// daemon's, else the system daemon's /run/backupnizza/secretbox.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Show each event as a desktop notification too (`failures`: only failed runs and
    /// overdue tasks)
    #[arg(long, value_name = "WHICH", num_args = 0..=1, default_missing_value = "all", value_parser = ["all", "failures"])]
    pub notify: Option<String>,
    /// One JSON object per line, for scripts
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket (default: the task file's `socket:`; without one, the user
    /// daemon's, else the system daemon's /run/backupnizza/secretbox.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The tasks to resume (default: every paused task)
    #[arg(value_name = "TASK")]
    pub tasks: Vec<String>,
    /// The daemon's socket (default: the task file's `socket:`; without one, the user
    /// daemon's, else the system daemon's /run/backupnizza/secretbox.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// One JSON array, for scripts: each snapshot with its task, time, state and detail
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<LedgerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Record that snapshots were removed on purpose; later audits report them as
    /// acknowledged instead of missing.
    ///
    /// Every id is checked against the ledger before anything is written. Run it as the
    /// daemon's user (state_dir must be writable); the daemon need not be stopped.
    Forget(LedgerForgetArgs),
}

#[derive(Debug, Args)]
pub struct LedgerForgetArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The snapshots: full ids, or their first 8 digits or more
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// Why they were removed (kept in the ledger with the time)
    #[arg(long, value_name = "TEXT", required = true)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this task
    #[arg(value_name = "TASK")]
    pub task: Option<String>,
    /// How many entries to show (the most recent)
    #[arg(short = 'n', long = "count", default_value_t = 20)]
    pub count: usize,
    /// One JSON object per line, for scripts: a run's start and end joined (with its restic
    /// snapshot id and figures), or a skipped occurrence
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket, to ask it for its history instead of reading `state_dir`
    /// (default: read `state_dir`; ask the daemon only if that cannot be read, or is empty
    /// while only the system daemon's socket is there)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a value in the keychain entry that secret NAME's `keyring` source names.
    ///
    /// The value is read from stdin, or prompted for without echo on a terminal. With
    /// --credential it is encrypted with `systemd-creds` for the system unit instead.
    Set(SecretSetArgs),
    /// Load every secret as the daemon would and print each name with ok or the error.
    ///
    /// Values are never printed. Exit 1 if any secret cannot be loaded.
    Check(SecretCheckArgs),
}

#[derive(Debug, Args)]
pub struct SecretSetArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The secret, as declared under `secrets:`
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Encrypt the value with `systemd-creds encrypt` into the credential store the system
    /// unit loads (for a `file: ${CREDENTIALS_DIRECTORY}/NAME` source) instead of a keychain
    #[arg(long)]
    pub credential: bool,
    /// Where --credential writes the ciphertext, as DIR/NAME [default: /etc/credstore.encrypted]
    #[arg(long, value_name = "DIR", requires = "credential")]
    pub credstore: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SecretCheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Check the file alone, not this machine (whether each step's program is on its PATH,
    /// whether metrics_textfile's directory exists): for a file deployed elsewhere
    #[arg(long)]
    pub portable: bool,
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

const SECRETBOX_AFTER_HELP: &str = "\
secretbox only works inside processes that backupnizza starts: it trades the one-time
token the daemon put in SECRETBOX_TOKEN for a secret named in the task's `secrets:`.

Use it as restic's password command:
    env:
      RESTIC_PASSWORD_COMMAND: secretbox get repo
or as rclone's (rclone --password-command, or RCLONE_PASSWORD_COMMAND):
    env:
      RCLONE_PASSWORD_COMMAND: secretbox get rclone-config

Environment: SECRETBOX_TOKEN (the token), SECRETBOX_SOCKET (the daemon's socket),
SECRETBOX_DAEMON (the daemon's PID:START; nothing is sent to another server).
Exit codes: 0 ok, 1 internal error, 2 usage, 3 no token in the environment,
4 daemon unreachable, 5 token expired, 6 token already used for NAME,
7 token not valid for NAME, 8 token's process has exited, 9 unknown token,
10 caller not allowed, 11 too many failures (slow down),
12 the socket is served by another process than the daemon (nothing was sent).
On any failure nothing is written to stdout.";

/// secretbox: fetch a secret from the backupnizza daemon with a one-time token.
#[derive(Debug, Parser)]
#[command(name = "secretbox", version, after_help = SECRETBOX_AFTER_HELP, max_term_width = 100)]
pub struct Secretbox {
    #[command(subcommand)]
    pub command: SecretboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretboxCommand {
    /// Print secret NAME, followed by a newline, on stdout.
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The secret's name, as declared in the task file
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Do not print a newline after the secret
    #[arg(short = 'n', long)]
    pub no_newline: bool,
    /// The daemon's socket (default: $SECRETBOX_SOCKET)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Give up if the daemon has not answered within this long
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

/// `get`'s default `--timeout`.
pub const SECRETBOX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl GetArgs {
    /// The arguments of the one call restic and rclone make, `secretbox get NAME` with a
    /// valid NAME and no options, read without building clap's parser (which costs about as
    /// much as the rest of `secretbox`'s start-up). Anything else is `None`, for clap to read
    /// and explain; for these arguments both give the same answer (tested).
    pub fn plain(args: &[std::ffi::OsString]) -> Option<GetArgs> {
        let [_, command, name] = args else { return None };
        let name = name.to_str().filter(|n| crate::config::valid_name(n))?;
        (command == "get").then(|| GetArgs {
            name: name.to_string(),
            no_newline: false,
            socket: None,
            timeout: SECRETBOX_TIMEOUT,
        })
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::time::parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_get_reads_what_clap_reads() {
        let args = |list: &[&str]| -> Vec<std::ffi::OsString> {
            list.iter().map(std::ffi::OsString::from).collect()
        };
        for name in ["restic-password", "a", "s0.b_c-d", "help"] {
            let argv = args(&["secretbox", "get", name]);
            let plain = GetArgs::plain(&argv).expect("a plain get");
            let SecretboxCommand::Get(parsed) = Secretbox::try_parse_from(&argv).unwrap().command;
            assert_eq!(format!("{plain:?}"), format!("{parsed:?}"));
        }
        // Options, bad names and other shapes are clap's to read (and explain).
        for argv in [
            &["secretbox", "get", "-n", "x"][..],
            &["secretbox", "get", "--help"],
            &["secretbox", "get", "-x"],
            &["secretbox", "get", "bad name"],
            &["secretbox", "get", ""],
            &["secretbox", "got", "x"],
            &["secretbox", "get"],
            &["secretbox", "get", "x", "y"],
        ] {
            assert!(GetArgs::plain(&args(argv)).is_none(), "{argv:?}");
        }
    }
}
