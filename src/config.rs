//! The task file (`backup.yaml`): its types, where it lives, and loading it.
//!
//! [`load`] reads a file; [`parse`] works on text. Both check the whole file and return every
//! problem at once (see [`Problem`]); `backupnizza validate` and `backupnizza run` share them.
//! Every key, its type and its default is documented in `docs/configuration.md`.

mod check;
pub use check::{did_you_mean, valid_name};
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;

use crate::schedule::Schedule;

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

/// What to do when a task fires while its previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Log the firing as skipped.
    Skip,
    /// Run it when the current run ends (at most one waits).
    Queue,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub schedule: Schedule,
    pub zone: Zone,
    /// `command:` becomes one step.
    pub steps: Vec<Step>,
    pub env: Vec<EnvVar>,
    /// Secrets `secretbox get` may fetch from this task's processes.
    pub secrets: Vec<String>,
    pub timeout: Option<Duration>,
    /// The wait between the signals that stop the task at its timeout.
    pub kill_grace: Duration,
    pub on_overlap: Overlap,
    pub working_dir: Option<PathBuf>,
    pub redeem_limit: u32,
    pub max_lateness: Duration,
    pub random_delay: Option<Duration>,
    /// Exit codes that count as success with a warning (restic's 3 by default).
    pub warning_exit_codes: Vec<i32>,
    pub hooks: Hooks,
    /// Overrides the top-level `notify`.
    pub notify: Option<Notify>,
    /// Where the task's full output (redacted) is kept, beyond what the log shows.
    pub output_file: Option<OutputFile>,
    /// Programs besides `secretbox` that may redeem this task's tokens (tools that speak the
    /// protocol themselves), absolute paths; each is pinned by digest at start.
    pub redeemers: Vec<PathBuf>,
    /// How a failed run is tried again.
    pub retry: Option<Retry>,
    /// Tasks with the same lock name never run at the same time: a run waits for the lock
    /// before it starts (normally one name per restic repository).
    pub lock: Option<String>,
    /// Compare the repository's snapshots (this task's `restic snapshots --json`) with the
    /// snapshot ledger of other tasks.
    pub audit: Option<Audit>,
    /// Run the steps at the same time instead of in order.
    pub parallel: bool,
    /// After a run the daemon stopped, run `restic unlock` before the next one.
    pub unlock_stale: bool,
    /// The niceness of the task's processes (0-19).
    pub nice: Option<i32>,
    /// The I/O scheduling class of the task's processes (Linux).
    pub io: Option<IoClass>,
    /// Hold a logind sleep inhibitor while the task runs.
    pub inhibit_sleep: bool,
    /// What must hold for a run to start (it waits until then).
    pub when: When,
    /// Run anyway, conditions or not, once the last success is this old.
    pub force_after: Option<Duration>,
    /// Quiet hours in the task's zone: a run due inside one waits for its end.
    pub blackout: Vec<Blackout>,
    /// How long a catch-up run waits after the daemon saw the machine resume (or the clock
    /// jump forward), so the network can come back first.
    pub resume_settle: Duration,
}

/// A task's `when:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    pub ac_power: bool,
    /// `HOST:PORT` that must accept a TCP connection.
    pub network: Option<String>,
    pub unmetered: bool,
    /// The load, as a percentage of the CPUs, must be below this.
    pub idle_cpu: Option<u8>,
}

impl When {
    pub fn is_empty(&self) -> bool {
        *self == When::default()
    }
}

/// One quiet-hours window: `"09:00-17:00 mon-fri"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blackout {
    /// As written, for messages.
    pub text: String,
    /// Minutes after midnight; `end` before `start` runs past midnight.
    pub start: u16,
    pub end: u16,
    /// Weekdays the window starts on: bit 1 Monday ... bit 7 Sunday.
    pub days: u8,
}

impl Blackout {
    /// Whether local time `now` falls in the window (one that passes midnight belongs to the
    /// day it starts on).
    pub fn contains(&self, now: &jiff::Zoned) -> bool {
        let minute =
            u16::try_from(i32::from(now.hour()) * 60 + i32::from(now.minute())).unwrap_or(0);
        let day = now.weekday().to_monday_one_offset() as u8;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&minute)
        } else {
            let yesterday = if day == 1 { 7 } else { day - 1 };
            (on(day) && minute >= self.start) || (on(yesterday) && minute < self.end)
        }
    }
}

/// A task's `io:` (Linux's I/O scheduling classes, as `ionice` sets them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// Only when no other process wants the disk.
    Idle,
    /// The normal class, at a priority from 0 (first) to 7 (last).
    BestEffort(u8),
}

impl IoClass {
    /// The value `ioprio_set(2)` takes: the class in the top bits, the priority below.
    pub fn ioprio(self) -> i32 {
        const CLASS_SHIFT: i32 = 13;
        match self {
            IoClass::Idle => 3 << CLASS_SHIFT,
            IoClass::BestEffort(level) => (2 << CLASS_SHIFT) | i32::from(level),
        }
    }
}

/// A task's `audit:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The tasks whose saved snapshots the repository must hold.
    pub tasks: Vec<String>,
    /// How old their newest snapshot may be.
    pub max_age: Option<Duration>,
}

/// The file name of a program path (`/usr/bin/restic` → `restic`).
pub(crate) fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// A task's `retry:`: attempts in all (the first included), the wait before the second,
/// and the factor each later wait grows by.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub delay: Duration,
    pub backoff: f64,
}

impl Retry {
    /// The wait after failed attempt `n` (from 1), capped at a day.
    pub fn delay_after(&self, n: u32) -> Duration {
        let factor = self.backoff.powi(n.saturating_sub(1) as i32);
        Duration::try_from_secs_f64(self.delay.as_secs_f64() * factor)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(24 * 3600))
    }
}

/// A task's `output_file`: every line its steps and hooks print, redacted, each prefixed
/// with the time, the run id and the stream; rotated past `max_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Absolute (a relative path in the file is relative to `state_dir`).
    pub path: PathBuf,
    /// Size past which the file is rotated to `PATH.1`.
    pub max_size: u64,
    /// Rotated generations kept (`PATH.1` ... `PATH.keep`), besides `PATH` itself.
    pub keep: u32,
}

/// Commands run around a task's steps (argv, no shell), with the run's facts in their
/// environment.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Before the steps; exit 75 skips the run (not a failure), any other failure fails it.
    pub before: Option<Hook>,
    pub on_success: Option<Hook>,
    pub on_failure: Option<Hook>,
    /// After everything, whatever the result.
    pub after: Option<Hook>,
    pub timeout: Duration,
}

/// One hook: `[ARGV...]`, or `{command: [ARGV...], secrets: [NAME...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: Vec<String>,
    /// What the hook's token may fetch, a subset of the task's `secrets:`. Empty (the plain
    /// argv form) means no token at all: most hooks only ping or clean up, and a token in
    /// their environment would be one more copy of the task's keys to steal.
    pub secrets: Vec<String>,
}

/// Where to report runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// A healthchecks.io-style ping URL: `/start`, the bare URL on success, `/fail` or
    /// `/<exit code>` on failure.
    pub ping: Option<UrlValue>,
    /// POSTed a JSON document with the run's facts at start and end.
    pub webhook: Option<UrlValue>,
    /// Include the last stderr lines (pings: as the request body; webhooks: in the JSON).
    pub send_logs: bool,
    pub timeout: Duration,
    /// Run at the end of each run with its facts in the environment.
    pub command: Option<Vec<String>>,
}

/// A URL written in the file, or one kept as a secret (ping URLs are credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlValue {
    Text(String),
    Secret(String),
}

#[derive(Debug, Clone)]
pub struct Step {
    /// The program and its arguments; in a pipeline, the first stage.
    pub command: Vec<String>,
    /// A pipeline's later stages, in order: `command`'s stdout feeds the first of them.
    pub pipe_into: Vec<Vec<String>>,
    pub env: Vec<EnvVar>,
    pub continue_on_error: bool,
    /// The program's expected SHA-256 (`sha256:`), checked before every run.
    pub sha256: Option<[u8; 32]>,
}

impl Step {
    /// Every process the step runs, in pipeline order (one for a plain command).
    pub fn stages(&self) -> Vec<&[String]> {
        std::iter::once(self.command.as_slice())
            .chain(self.pipe_into.iter().map(Vec::as_slice))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Text(String),
    /// `{secret: NAME}`: the plaintext secret itself (opt-in, less safe).
    Secret(String),
    /// `{secret_file: NAME}`: the path of a 0600 file holding the secret, in a private
    /// directory of the daemon's that lives as long as the step (see
    /// [`crate::daemon::secret_files`]); for tools that read a credential from a file
    /// (`RESTIC_REPOSITORY_FILE`, `AWS_SHARED_CREDENTIALS_FILE`).
    SecretFile(String),
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

/// The parts of the process environment that decide defaults and `$VAR` expansion, captured
/// once so tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub uid: u32,
}

impl Environment {
    /// A snapshot of the process environment. Variables that are not UTF-8 are left out
    /// and wiped on the way (one may be an `env:` secret source).
    pub fn from_process() -> Environment {
        use zeroize::Zeroize;
        let mut vars = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => {
                    vars.insert(k, v);
                }
                (_, Ok(mut v)) => v.zeroize(),
                (_, Err(v)) => v.into_encoded_bytes().zeroize(),
            }
        }
        Environment { vars, uid: nix::unistd::getuid().as_raw() }
    }

    /// Removes `name` from the snapshot and wipes its value: the daemon forgets the
    /// variables of `env:` secret sources, which must not outlive their move onto locked
    /// pages in an ordinary string.
    pub fn forget(&mut self, name: &str) {
        use zeroize::Zeroize;
        if let Some(mut value) = self.vars.remove(name) {
            value.zeroize();
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// `$BACKUPNIZZA_CONFIG`, else `$XDG_CONFIG_HOME/backupnizza/backup.yaml`, else
    /// `~/.config/backupnizza/backup.yaml`.
    pub fn default_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = self.var("BACKUPNIZZA_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let base = match self.var("XDG_CONFIG_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => self.home()?.join(".config"),
        };
        Some(base.join("backupnizza").join("backup.yaml"))
    }

    /// `$XDG_RUNTIME_DIR/backupnizza/secretbox.sock`, else
    /// `$TMPDIR/backupnizza-$UID/secretbox.sock` (`/tmp` when `TMPDIR` is unset).
    pub fn default_socket(&self) -> PathBuf {
        if let Some(dir) = self.var("XDG_RUNTIME_DIR") {
            Path::new(dir).join("backupnizza").join("secretbox.sock")
        } else {
            let tmp = self.var("TMPDIR").unwrap_or("/tmp");
            Path::new(tmp).join(format!("backupnizza-{}", self.uid)).join("secretbox.sock")
        }
    }

    /// `$XDG_STATE_HOME/backupnizza`, else `~/.local/state/backupnizza`.
    pub fn default_state_dir(&self) -> Option<PathBuf> {
        let base = match self.var("XDG_STATE_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => self.home()?.join(".local").join("state"),
        };
        Some(base.join("backupnizza"))
    }

    /// Expands a leading `~/` and `$VAR` / `${VAR}` references.
    pub fn expand_path(&self, raw: &str) -> Result<PathBuf, String> {
        let mut out = String::new();
        let mut rest = raw;
        if raw == "~" || raw.starts_with("~/") {
            let home = self.var("HOME").ok_or("cannot expand `~`: HOME is not set")?;
            out.push_str(home);
            rest = &raw[1..];
        }
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').ok_or_else(|| format!("unclosed `${{` in {raw:?}"))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                return Err(format!("a `$` in {raw:?} is not followed by a variable name"));
            }
            let value =
                self.var(name).ok_or_else(|| format!("{raw:?} uses ${name}, which is not set"))?;
            out.push_str(value);
            rest = tail;
        }
        out.push_str(rest);
        Ok(PathBuf::from(out))
    }
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
        let mut vars = BTreeMap::new();
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
