//! The task file (`backup.yaml`): its types, where it lives, and loading it.
//!
//! [`load`] reads a file; [`parse`] works on text. Both check the whole file and return every
//! problem at once (see [`Problem`]); `backupnizza validate` and `backupnizza run` share them.
//! Every key, its type and its default is documented in `docs/configuration.md`.

mod check;
pub use check::{did_you_mean, valid_name};
mod environment;
mod notify;
mod task;
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;

pub use environment::Environment;
pub use notify::{Desktop, Email, Gotify, Notify, Ntfy, UrlValue};
pub(crate) use task::program_name;
pub use task::{
    Audit, Blackout, DEFAULT_VERIFY_SAMPLE, EnvValue, EnvVar, Hook, Hooks, IoClass, Keep, Members,
    OutputFile, Overlap, Retry, Step, Task, Verify, When, Within,
};
pub use tree::Pos;

/// Default for `token_ttl`: long enough for restic to start and ask for its password.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Default for `shutdown_grace`: how long running tasks get to stop at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default for `resume_settle`: a minute for Wi-Fi and DNS to come back after a resume.
pub const DEFAULT_RESUME_SETTLE: Duration = Duration::from_secs(60);
/// Default for `kill_grace`: the wait between the signals that stop a task at its timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Default for a task's `max_lateness`: a missed run is caught up if less than this late.
pub const DEFAULT_MAX_LATENESS: Duration = Duration::from_secs(24 * 3600);
/// Default for a `command` secret source's `timeout`.
pub const DEFAULT_SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `hooks.timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for `notify.timeout`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for a task's `redeem_limit`: each secret once per token.
pub const DEFAULT_REDEEM_LIMIT: u32 = 1;
/// Default for `output_file.max_size`: a verbose restic backup (one line per file) of a
/// home directory fits, and four generations stay well under 100 MB.
pub const DEFAULT_OUTPUT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Smallest `output_file.max_size`: room for a few of the longest lines a file takes
/// (64 KiB each), so each generation holds whole lines.
pub const MIN_OUTPUT_MAX_SIZE: u64 = 256 * 1024;
/// Default for `output_file.keep`: the last few runs' output, as logrotate keeps by default.
pub const DEFAULT_OUTPUT_KEEP: u32 = 3;
/// Most generations `output_file.keep` may ask for.
pub const MAX_OUTPUT_KEEP: u32 = 100;

/// A checked task file.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub token_ttl: Duration,
    /// The default zone for tasks that do not name one.
    pub timezone: Zone,
    pub log: LogSettings,
    pub strict_memory: bool,
    pub shutdown_grace: Duration,
    /// The default of each task's `kill_grace`.
    pub kill_grace: Duration,
    /// The default of each task's `resume_settle`.
    pub resume_settle: Duration,
    /// Record each task program's digest at start and refuse to run a changed program.
    pub pin_binaries: bool,
    /// Notifications for every task that has none of its own.
    pub notify: Option<Notify>,
    /// Prometheus text file written after every run (node_exporter's textfile collector).
    pub metrics_textfile: Option<PathBuf>,
    /// The group whose members (of other uids) may use the control routes (system mode).
    pub control_group: Option<ControlGroup>,
    /// In file order.
    pub secrets: Vec<SecretSpec>,
    /// In file order.
    pub tasks: Vec<Task>,
}

impl Config {
    /// `metrics_textfile:`'s directory when it does not exist: the daemon refuses to start
    /// (rather than warn after every run), and `validate` reports it.
    pub fn missing_metrics_dir(&self) -> Option<&std::path::Path> {
        let dir = self.metrics_textfile.as_ref()?.parent()?;
        (!dir.as_os_str().is_empty() && !dir.is_dir()).then_some(dir)
    }

    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|s| s.name == name)
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// A time zone with the name it was given (or the system's name for it).
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub tz: TimeZone,
}

impl Zone {
    /// The system's local zone.
    pub fn system() -> Zone {
        let tz = TimeZone::system();
        let name = tz.iana_name().unwrap_or("local").to_string();
        Zone { name, tz }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const NAMES: &'static [&'static str] = &["error", "warn", "info", "debug", "trace"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<LogLevel> {
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace]
            .into_iter()
            .find(|l| l.as_str() == name.to_ascii_lowercase())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret the daemon loads at start, and where from.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub name: String,
    pub source: Source,
    /// Where the secret's key is in the task file, for messages about it found after parsing
    /// (a `command:` program that fails StrictModes).
    pub pos: Option<Pos>,
    /// `allow_short: true`: the value may be shorter than
    /// [`MIN_SECRET_LEN`](crate::broker::sources::MIN_SECRET_LEN) bytes. Masking a short
    /// value in output anyone can shape (file names a backup lists) tells them when they
    /// guessed it, so a short one must be asked for.
    pub allow_short: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OS keychain entry.
    Keyring { service: String, account: String, store: Store },
    /// A program whose standard output is the secret (no shell).
    Command { argv: Vec<String>, timeout: Duration },
    /// A file (mode 0600); `~/` and `$VARS` are expanded when it is read.
    File { path: String },
    /// An environment variable of the daemon, removed once read.
    Env { var: String },
}

impl Source {
    /// The source key as written in the task file.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Keyring { .. } => "keyring",
            Source::Command { .. } => "command",
            Source::File { .. } => "file",
            Source::Env { .. } => "env",
        }
    }
}

/// Which keychain a `keyring` source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Secret Service on Linux, the Keychain on macOS.
    Auto,
    SecretService,
    Keyutils,
    Keychain,
}

impl Store {
    pub const NAMES: &'static [&'static str] = &["auto", "secret-service", "keyutils", "keychain"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One problem found in a task file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Where in the file, when the parser knows.
    pub pos: Option<Pos>,
    /// The key path, e.g. `tasks.documents.steps[1].command`; empty for the whole file.
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Problem {
    /// Formats the problem as `FILE:LINE:COLUMN: error: PATH: MESSAGE`, or
    /// `FILE: error: PATH: MESSAGE` when the position is unknown.
    pub fn display<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        DisplayProblem { problem: self, file }
    }
}

struct DisplayProblem<'a> {
    problem: &'a Problem,
    file: &'a Path,
}

impl fmt::Display for DisplayProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.problem;
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = p.pos {
            write!(f, ":{pos}")?;
        }
        let severity = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if !p.path.is_empty() {
            write!(f, "{}: ", p.path)?;
        }
        f.write_str(&p.message)
    }
}

/// Why a task file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read task file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let mut out = String::new();
    for p in problems {
        out.push_str(&p.display(path).to_string());
        out.push('\n');
    }
    out.push_str(&format!(
        "{}: {errors} error{} found",
        path.display(),
        if errors == 1 { "" } else { "s" }
    ));
    out
}

/// What a checked file produced: the config when there are no errors, and every problem
/// (warnings included) either way.
#[derive(Debug)]
pub struct Checked {
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
}

/// `control_group:`, resolved when the task file was checked: members of this group may ask
/// the daemon for status and trigger runs, and the socket's directory and file are given to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

/// Where a system daemon (run as a dedicated user, with `control_group:`) listens; the
/// clients try it when the task file names no `socket:` and no user daemon's socket exists.
pub const SYSTEM_SOCKET: &str = "/run/backupnizza/secretbox.sock";

/// Longest socket path the platform accepts, in bytes (`sun_path` minus its NUL).
pub const MAX_SOCKET_PATH: usize =
    if cfg!(any(target_os = "macos", target_os = "freebsd", target_os = "openbsd")) {
        103
    } else {
        107
    };

/// Reads and checks a task file.
pub fn load(path: &Path, env: &Environment) -> Result<Config, LoadError> {
    let checked = check_file(path, env)?;
    match checked.config {
        Some(config) => Ok(config),
        None => Err(LoadError::Invalid { path: path.to_path_buf(), problems: checked.problems }),
    }
}

/// Reads and checks a task file, returning warnings alongside the config.
pub fn check_file(path: &Path, env: &Environment) -> Result<Checked, LoadError> {
    let bytes = std::fs::read(path)
        .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let before = &e.as_bytes()[..offset];
            let line = memchr::memchr_iter(b'\n', before).count() + 1;
            let column = offset - before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            return Ok(Checked {
                config: None,
                problems: vec![Problem {
                    severity: Severity::Error,
                    pos: Some(Pos { line, column }),
                    path: String::new(),
                    message: "the task file is not valid UTF-8".into(),
                }],
            });
        }
    };
    Ok(parse(&text, path, env))
}

/// Checks task-file text. `path` is recorded in the config and used in messages.
pub fn parse(text: &str, path: &Path, env: &Environment) -> Checked {
    check::check(text, path, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("HOME".to_string(), "/home/u".to_string());
        vars.insert("CREDS".to_string(), "/run/creds".to_string());
        Environment { vars, uid: 1000 }
    }

    #[test]
    fn defaults_follow_xdg_and_fall_back() {
        let mut e = env();
        assert_eq!(e.default_socket(), PathBuf::from("/tmp/backupnizza-1000/secretbox.sock"));
        assert_eq!(e.default_state_dir(), Some(PathBuf::from("/home/u/.local/state/backupnizza")));
        assert_eq!(
            e.default_config_path(),
            Some(PathBuf::from("/home/u/.config/backupnizza/backup.yaml"))
        );
        e.vars.insert("XDG_RUNTIME_DIR".into(), "/run/user/1000".into());
        e.vars.insert("XDG_STATE_HOME".into(), "/s".into());
        e.vars.insert("XDG_CONFIG_HOME".into(), "/c".into());
        assert_eq!(e.default_socket(), PathBuf::from("/run/user/1000/backupnizza/secretbox.sock"));
        assert_eq!(e.default_state_dir(), Some(PathBuf::from("/s/backupnizza")));
        assert_eq!(e.default_config_path(), Some(PathBuf::from("/c/backupnizza/backup.yaml")));
        e.vars.insert("BACKUPNIZZA_CONFIG".into(), "/etc/b.yaml".into());
        assert_eq!(e.default_config_path(), Some(PathBuf::from("/etc/b.yaml")));
    }

    #[test]
    fn paths_expand_home_and_variables() {
        let e = env();
        assert_eq!(e.expand_path("~/x").unwrap(), PathBuf::from("/home/u/x"));
        assert_eq!(e.expand_path("$CREDS/repo").unwrap(), PathBuf::from("/run/creds/repo"));
        assert_eq!(e.expand_path("${CREDS}x/y").unwrap(), PathBuf::from("/run/credsx/y"));
        assert!(e.expand_path("$NOPE/x").unwrap_err().contains("$NOPE"));
        assert!(e.expand_path("${CREDS").is_err());
        assert_eq!(e.expand_path("/a/~/b").unwrap(), PathBuf::from("/a/~/b"));
    }

    #[test]
    fn the_example_parses_into_the_documented_values() {
        let text = include_str!("../backup.yaml.example");
        let checked = parse(text, Path::new("backup.yaml.example"), &env());
        let config = checked.config.expect("example is valid");
        assert_eq!(config.token_ttl, Duration::from_secs(30));
        assert_eq!(config.timezone.name, "Europe/Berlin");
        let docs = config.task("documents").unwrap();
        assert_eq!(docs.steps.len(), 1);
        assert_eq!(docs.steps[0].command[0], "restic");
        assert_eq!(docs.warning_exit_codes, vec![3]);
        assert_eq!(docs.working_dir, Some(PathBuf::from("/home/u/")));
        assert_eq!(docs.max_lateness, Duration::from_secs(12 * 3600));
        let offsite = config.task("offsite").unwrap();
        assert_eq!(offsite.on_overlap, Overlap::Queue);
        assert!(
            offsite.env.iter().any(|v| v.value == EnvValue::SecretFile("offsite-append".into()))
        );
        let prune = config.task("prune-offsite").unwrap();
        assert_eq!(prune.steps.len(), 2);
        assert!(prune.steps[1].continue_on_error);
        assert_eq!(
            config.secret("offsite-append").unwrap().source,
            Source::File { path: "${CREDENTIALS_DIRECTORY}/offsite-append".into() }
        );
    }

    /// Invalid input never panics: every prefix of the example, and the example with each
    /// line removed, is either valid or a list of problems.
    #[test]
    fn mangled_files_never_panic() {
        let text = include_str!("../backup.yaml.example");
        let e = env();
        for cut in (0..text.len()).step_by(13).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse(&text[..cut], Path::new("x"), &e);
        }
        let lines: Vec<&str> = text.lines().collect();
        for skip in 0..lines.len() {
            let mangled: Vec<&str> =
                lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect();
            let _ = parse(&mangled.join("\n"), Path::new("x"), &e);
            // Indentation damage too.
            let shifted: Vec<String> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| if i == skip { format!(" {l}") } else { l.to_string() })
                .collect();
            let _ = parse(&shifted.join("\n"), Path::new("x"), &e);
        }
    }
}
