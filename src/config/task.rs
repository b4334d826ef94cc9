//! A task as the task file describes it: its schedule and steps, their environment, the
//! secrets it may fetch, hooks, notifications, retries, run conditions and limits.

use std::path::PathBuf;
use std::time::Duration;

use super::Zone;
use crate::schedule::Schedule;

/// What to do when a task fires while its previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Log the firing as skipped.
    Skip,
    /// Run it when the current run ends (at most one waits).
    Queue,
}

#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is a yes-or-no key of the task file, set on its own"
)]
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
    pub notify: Option<super::Notify>,
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
    /// Which `control_group` members may trigger the task and read its output.
    pub members: Members,
    /// Linux: run the task's ELF programs, and the `secretbox` its password commands name,
    /// from execute-only sealed images, so that no other process of the user can read them
    /// while they run (see `crate::trust::seal`).
    pub seal: bool,
    /// A verifier: instead of steps, the daemon proves that other tasks' snapshots restore
    /// (see `docs/configuration.md`, `verify:`).
    pub verify: Option<Verify>,
}

/// A task's `members:`: which members of `control_group:` (uids other than the daemon's)
/// may trigger it, follow its runs and read its history. The daemon's own user always may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Members {
    /// Every member (the default).
    #[default]
    All,
    /// No member: for destructive manual tasks (`restore`, `unlock`, `forget --prune`) and
    /// tasks whose output names files members may not see.
    None,
    /// These users' uids, resolved from their names when the file was checked.
    Only(Vec<u32>),
}

impl Members {
    /// Whether a member with `uid` may control the task.
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            Members::All => true,
            Members::None => false,
            Members::Only(uids) => uids.contains(&uid),
        }
    }
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
    /// The repository's retention policy: a recorded snapshot it would have removed is
    /// pruned, not deleted.
    pub keep: Option<Keep>,
}

/// A task's `verify:`: which tasks' newest recorded snapshots to prove restorable, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verify {
    /// The tasks whose newest whole snapshot in the ledger is verified.
    pub tasks: Vec<String>,
    /// How many files of each snapshot are restored and compared with the source (0: none).
    pub sample: u32,
    /// `restic check --read-data-subset=n/K`, `n` advancing by one each run.
    pub check_subset: Option<u32>,
    /// Files whose content must be the same in the newest snapshot as in the one before.
    pub canaries: Vec<PathBuf>,
    /// Restore the whole snapshot into a scratch directory.
    pub drill: bool,
    /// The sample's seed, to repeat a run's choice (a fresh one each run when absent).
    pub seed: Option<u64>,
    /// Where restores that do not fit in the runtime directory (and drills) are made.
    pub scratch: Option<PathBuf>,
}

/// Default for `verify.sample`.
pub const DEFAULT_VERIFY_SAMPLE: u32 = 20;

/// An audit's `keep:`: restic's `forget --keep-*` options, with restic's meaning. A count
/// of `None` is not given; `Some(u32::MAX)` is `unlimited`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// `--keep-within`, as restic writes it (`1y6m` is a year and six months).
    pub within: Option<Within>,
}

/// restic's duration for `--keep-within`: years, months, days and hours, measured back from
/// the group's newest snapshot on the calendar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
}

impl Within {
    /// Parses restic's form: numbers each followed by `y`, `m` (months), `d` or `h`.
    pub fn parse(text: &str) -> Result<Within, String> {
        let mut within = Within::default();
        let mut number = String::new();
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            if !matches!(c, 'y' | 'm' | 'd' | 'h') {
                return Err(format!(
                    "invalid keep-within {text:?}: unknown unit {c:?} (restic's units are y, m for months, d and h)"
                ));
            }
            let n: i64 = number.parse().map_err(|_| {
                format!("invalid keep-within {text:?}: a number must come before {c:?} (restic writes 1y6m7d2h)")
            })?;
            number.clear();
            match c {
                'y' => within.years = within.years.saturating_add(n),
                'm' => within.months = within.months.saturating_add(n),
                'd' => within.days = within.days.saturating_add(n),
                _ => within.hours = within.hours.saturating_add(n),
            }
        }
        if !number.is_empty() {
            return Err(format!(
                "invalid keep-within {text:?}: {number} needs a unit (y, m for months, d or h)"
            ));
        }
        if within == Within::default() {
            return Err(format!("invalid keep-within {text:?}: it keeps nothing"));
        }
        Ok(within)
    }
}

impl std::fmt::Display for Within {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in
            [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')]
        {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Keep {
    /// As restic's options: `--keep-last 3 --keep-daily 7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ];
        let mut words = Vec::new();
        for (name, count) in counts {
            match count {
                Some(u32::MAX) => words.push(format!("--keep-{name} unlimited")),
                Some(n) => words.push(format!("--keep-{name} {n}")),
                None => {}
            }
        }
        if let Some(within) = self.within {
            words.push(format!("--keep-within {within}"));
        }
        f.write_str(&words.join(" "))
    }
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
    /// `read_all:`: whether the step's processes hold the read-all capability of system
    /// mode. `None`: restic's `backup` processes do, nothing else does.
    pub read_all: Option<bool>,
}

impl Task {
    /// The secrets that are this task's own: its `secrets:` and those its `env:` and its
    /// steps' hand over as `{secret:}` or `{secret_file:}`. Its output is masked with these.
    pub fn own_secrets(&self) -> Vec<String> {
        let mut names = self.secrets.clone();
        for var in self.env.iter().chain(self.steps.iter().flat_map(|s| &s.env)) {
            if let EnvValue::Secret(name) | EnvValue::SecretFile(name) = &var.value
                && !names.contains(name)
            {
                names.push(name.clone());
            }
        }
        names
    }

    /// The `PATH` the task's `env:` or a step's (`step_env`, which wins) sets as text, if
    /// either does: what a step's programs are found on, over the daemon's own.
    pub fn env_path<'a>(&'a self, step_env: &'a [EnvVar]) -> Option<&'a str> {
        self.env.iter().chain(step_env).rev().find_map(|var| match &var.value {
            EnvValue::Text(text) if var.name == "PATH" => Some(text.as_str()),
            _ => None,
        })
    }
}

impl Step {
    /// Whether the process running `stage` (one of [`Step::stages`]) holds the read-all
    /// capability of system mode: as `read_all:` says, else only restic's `backup`.
    pub fn reads_all(&self, stage: &[String]) -> bool {
        self.read_all.unwrap_or_else(|| crate::restic::argv::is_backup(stage))
    }

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
    /// docs/configuration.md); for tools that read a credential from a file
    /// (`RESTIC_REPOSITORY_FILE`, `AWS_SHARED_CREDENTIALS_FILE`).
    SecretFile(String),
}
