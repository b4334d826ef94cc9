//! Running one task: a clean environment with a fresh token per step (and per hook that lists
//! secrets of its own; a plain hook gets none), a process group per
//! step (and the run's cgroup, where there is one: see [`contain`](super::contain)), output
//! into the log line by line (redacted), and timeouts and shutdown that stop every process of
//! the run.
//!
//! Each step's process gets: an allowlist of the daemon's environment (`PATH HOME USER
//! LOGNAME LANG LC_* TZ TMPDIR XDG_*`), then the task's `env`, then the step's, then
//! `SECRETBOX_SOCKET`, `SECRETBOX_DAEMON` and a freshly minted `SECRETBOX_TOKEN` (a hook: only in the map form,
//! scoped to its own `secrets:`). stdin is `/dev/null`; no shell
//! is involved; a leading `~/` in an argument is expanded and nothing else. The token is
//! revoked as soon as its process is reaped. A step ends when every process of it is gone:
//! a main process that exits while children it started keep running (`cmd &`, `setsid`) is
//! waited for until they end, or until the timeout stops them, and the record says so. A
//! timeout sends SIGINT to the step's main process alone (restic then removes its lock,
//! through an `rclone:` or `sftp:` backend that a SIGINT to the whole group would have killed
//! at the same moment; restic 0.14 does not remove it on SIGTERM), then SIGINT, SIGTERM and
//! SIGKILL to every process of the run, the task's `kill_grace` apart; shutdown does the same
//! within `shutdown_grace`.
//! Each step's leader also gets SIGINT if the daemon dies (Linux: `PR_SET_PDEATHSIG`), and
//! the [`guardian`](super::guardian) stops the rest of the run then.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use super::contain::{Containment, RunProcs, Search, Stage, Target, timeout_plan};
use super::guardian::Guardian;
use super::output::{LogBudget, Sinks};
use super::secret_files;
use crate::broker::Broker;
use crate::config::{EnvValue, EnvVar, Hook, Step, Task};
use crate::protocol::RunStatus;
use crate::restic::BackupSummary;
use crate::trust::{Pinned, expand_tilde};

/// How many stderr lines a run keeps for its history record.
pub(crate) const STDERR_TAIL: usize = 20;
/// How often a step whose main process has ended checks whether the rest of it has.
const LEFTOVER_POLL: Duration = Duration::from_millis(200);

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) status: RunStatus,
    /// The exit code of the step that decided the outcome (the last one run).
    pub(crate) exit_code: Option<i32>,
    pub(crate) reason: String,
    pub(crate) stderr_tail: Vec<String>,
    pub(crate) duration: Duration,
    /// What the run's `restic backup --json` steps reported, in step order.
    pub(crate) backups: Vec<BackupSummary>,
    /// The step run last (from 0): the one `exit_code` is from.
    pub(crate) last_step: usize,
    /// Earlier failed attempts (`retry:`); the fields above are the last attempt's.
    pub(crate) attempts: Vec<crate::history::Attempt>,
    /// The last snapshot list a step printed (`restic snapshots --json`), for an audit.
    pub(crate) listed: Option<Vec<crate::restic::Snapshot>>,
    /// Snapshots the steps' `restic forget --json` removed (not with `--dry-run`).
    pub(crate) removed: Vec<crate::restic::Snapshot>,
    /// What the task's audit found.
    pub(crate) findings: Vec<crate::history::Finding>,
}

impl Outcome {
    /// A run that ended before its steps ran (skipped, cancelled, a failed `before` hook).
    pub(crate) fn early(
        status: RunStatus,
        exit_code: Option<i32>,
        reason: impl Into<String>,
    ) -> Outcome {
        Outcome {
            status,
            exit_code,
            reason: reason.into(),
            stderr_tail: Vec::new(),
            duration: Duration::ZERO,
            backups: Vec::new(),
            last_step: 0,
            attempts: Vec::new(),
            listed: None,
            removed: Vec::new(),
            findings: Vec::new(),
        }
    }
}

/// A process's environment, in the order it is set.
type StepEnv = Vec<(OsString, OsString)>;

/// The last stderr lines of a run, for its history record and hooks.
pub(super) type Tail = VecDeque<String>;

/// What runs share: the broker (for tokens, `{secret:}` values and the set of live task
/// processes), the socket to advertise and the environment allowlist.
pub(crate) struct Runner {
    pub(crate) broker: Arc<Broker>,
    pub(crate) socket: PathBuf,
    /// This daemon's pid and start time (`SECRETBOX_DAEMON`), so that `secretbox` sends its
    /// token only to us, not to whoever took the socket path.
    pub(crate) server_id: Option<String>,
    pub(crate) base_env: Vec<(OsString, OsString)>,
    pub(crate) home: Option<PathBuf>,
    /// Grace between SIGINT, SIGTERM and SIGKILL when a task times out.
    pub(crate) kill_grace: Duration,
    pub(crate) shutdown_grace: Duration,
    /// Whether runs get a cgroup each.
    pub(crate) containment: Containment,
    /// Told about each live process group, to stop them if the daemon dies.
    pub(crate) guardian: Option<Guardian>,
    /// Where steps' `{secret_file:}` directories are made ([`secret_files`]).
    pub(crate) secret_files: PathBuf,
}

/// Snapshot lists and removals a run's steps printed.
#[derive(Default)]
struct Listings {
    listed: Option<Vec<crate::restic::Snapshot>>,
    removed: Vec<crate::restic::Snapshot>,
}

/// Where a step's restic results go.
struct Found<'a> {
    backups: &'a mut Vec<BackupSummary>,
    listings: &'a mut Listings,
}

/// Longest snapshot list an audit task's step may print (one JSON line; about 150,000
/// snapshots).
const MAX_LISTING: usize = 64 * 1024 * 1024;

/// How a run's steps went, step by step: the status, exit code and reason of the run.
struct Tally {
    steps: usize,
    status: RunStatus,
    exit_code: Option<i32>,
    reason: String,
    /// What steps that succeeded left behind, for the record of a successful run.
    notes: Vec<String>,
    last_step: usize,
}

impl Tally {
    fn new(steps: usize) -> Tally {
        Tally {
            steps,
            status: RunStatus::Success,
            exit_code: None,
            reason: String::from("all steps succeeded"),
            notes: Vec::new(),
            last_step: 0,
        }
    }

    /// Counts step `i`'s end; true when the later steps must not run (in sequence; with
    /// `parallel`, they all ran).
    fn add(&mut self, task: &Task, i: usize, end: StepEnd, parallel: bool) -> bool {
        let steps = self.steps;
        let step = &task.steps[i];
        let label =
            if steps == 1 { String::new() } else { format!(" (step {} of {steps})", i + 1) };
        // The step that decides the run's exit code: the last one run, or (in parallel)
        // the last one that failed.
        if !parallel
            || !matches!(&end, StepEnd::Exited(st, ..) if st.success())
            || self.status.is_ok()
        {
            self.last_step = i;
        }
        match end {
            StepEnd::Exited(st, note, warnings_apply) => {
                let mut code_text = describe_exit(st);
                if let Some(note) = note {
                    code_text = format!("{code_text} ({note})");
                    self.notes.push(format!("{code_text}{label}"));
                }
                let failed_before = !self.status.is_ok();
                if !(parallel && failed_before) {
                    self.exit_code = st.code();
                }
                match st.code() {
                    Some(0) => {}
                    Some(code) if warnings_apply && task.warning_exit_codes.contains(&code) => {
                        warn!("{code_text}{label}: counted as a warning (warning_exit_codes)");
                        if self.status == RunStatus::Success {
                            self.status = RunStatus::Warning;
                            self.reason = format!("{code_text}{label}, a warning");
                        }
                    }
                    _ if step.continue_on_error || parallel => {
                        if step.continue_on_error {
                            warn!("{code_text}{label}; continuing (continue_on_error)");
                        }
                        self.exit_code = st.code();
                        self.status = RunStatus::Failed;
                        self.reason = format!("{code_text}{label}");
                    }
                    _ => {
                        self.status = RunStatus::Failed;
                        self.reason = format!("{code_text}{label}");
                        if i + 1 < steps {
                            self.reason.push_str("; later steps skipped");
                        }
                        return true;
                    }
                }
                false
            }
            StepEnd::TimedOut(how) => {
                self.status = RunStatus::Timeout;
                self.reason = format!("timed out{label}; {how}");
                self.exit_code = None;
                true
            }
            StepEnd::Cancelled => {
                self.status = RunStatus::Cancelled;
                self.reason = format!("stopped by daemon shutdown{label}");
                self.exit_code = None;
                true
            }
            StepEnd::Refused(why) => {
                self.status = RunStatus::Refused;
                self.reason = format!("{why}{label}");
                self.exit_code = None;
                true
            }
            StepEnd::NotStarted(why) => {
                self.status = if i == 0 { RunStatus::Refused } else { RunStatus::Failed };
                self.reason = format!("{why}{label}");
                self.exit_code = None;
                !step.continue_on_error
            }
        }
    }
}

/// Runs `futures` at once on this task and gives their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// What a run's stdout and stderr may still send to the log.
#[derive(Default)]
struct Budgets {
    stdout: LogBudget,
    stderr: LogBudget,
}

impl Budgets {
    fn finish(self) {
        self.stdout.finish();
        self.stderr.finish();
    }
}

/// One process to run: a step, or a hook written as a step.
struct StepCall<'a> {
    task: &'a Task,
    step: &'a Step,
    pin: Option<&'a Pinned>,
    run_id: &'a str,
    procs: &'a RunProcs,
    /// Extra variables for the process (e.g. `BACKUPNIZZA_SCHEDULED`).
    facts: &'a [(String, String)],
    /// The step's number, from 0 (for the log).
    index: usize,
    deadline: Option<Instant>,
    cancel: &'a CancellationToken,
    /// The run's output file, if the task has one.
    output: Sinks<'a>,
    /// The hook's name when this is a hook (its lines in the output file say so).
    hook: Option<&'a str>,
    /// What the process's token may fetch; `None`: no token, and no socket to use it on.
    scope: Option<&'a [String]>,
}

/// The daemon's variables a task inherits; everything else is dropped.
pub(crate) fn allowed_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    secretbox_dir: Option<&Path>,
) -> Vec<(OsString, OsString)> {
    const EXACT: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"];
    let mut out: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            EXACT.iter().any(|e| e.as_bytes() == k)
                || k.starts_with(b"LC_")
                || k.starts_with(b"XDG_")
        })
        .collect();
    // Let tasks find the `secretbox` installed beside `backupnizza`, ahead of any other.
    if let Some(dir) = secretbox_dir {
        let path = out.iter_mut().find(|(k, _)| k == "PATH");
        let current = path.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        if !std::env::split_paths(&current).any(|p| p == dir) {
            let joined = std::env::join_paths(
                std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&current)),
            )
            .unwrap_or(current);
            match path {
                Some((_, v)) => *v = joined,
                None => out.push(("PATH".into(), joined)),
            }
        }
    }
    out
}

/// Why a hook has no exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookFailure {
    /// The daemon is stopping: not the hook's fault, and not the run's.
    Cancelled,
    Failed(String),
}

enum StepEnd {
    /// The main process exited, and every process it left behind ended too (the note says
    /// how many there were, if any).
    /// The bool says whether the task's `warning_exit_codes` may apply: not when the
    /// status is an earlier pipeline stage's (restic's 3 is restic's, not a dump's).
    Exited(ExitStatus, Option<String>, bool),
    TimedOut(String),
    Cancelled,
    NotStarted(String),
    /// A pinned program failed its check: nothing ran, no token was minted.
    Refused(String),
}

impl Runner {
    /// Runs every step of `task` in order. `deadline` is the task's timeout; `cancel` is
    /// cancelled at daemon shutdown. `facts` are extra variables for every step (e.g.
    /// `BACKUPNIZZA_SCHEDULED`); `output` is the run's output file, if any.
    #[allow(clippy::too_many_arguments)] // one call site, each argument a distinct fact of the run
    pub(crate) async fn run(
        &self,
        task: &Task,
        pins: &[Option<Pinned>],
        run_id: &str,
        procs: &RunProcs,
        facts: &[(String, String)],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        output: Sinks<'_>,
    ) -> Outcome {
        let started = Instant::now();
        let mut tally = Tally::new(task.steps.len());
        let mut backups = Vec::new();
        let mut restic = Listings::default();
        let call = |i: usize, step| StepCall {
            task,
            step,
            pin: pins.get(i).and_then(Option::as_ref),
            run_id,
            procs,
            facts,
            index: i,
            deadline,
            cancel,
            output,
            hook: None,
            scope: Some(&task.secrets),
        };
        let tail: Tail = if task.parallel {
            // Each step with its own tail, budgets and results, merged in step order.
            let runs = task.steps.iter().enumerate().map(|(i, step)| async move {
                let (mut tail, mut budgets) = (Tail::new(), Budgets::default());
                let (mut backups, mut listings) = (Vec::new(), Listings::default());
                let found = Found { backups: &mut backups, listings: &mut listings };
                let end = self
                    .run_step(call(i, step), &mut tail, &mut budgets, Some(found))
                    .instrument(tracing::info_span!("step", n = i + 1))
                    .await;
                budgets.finish();
                (end, tail, backups, listings)
            });
            let mut tail = Tail::with_capacity(STDERR_TAIL);
            for (i, (end, step_tail, mut step_backups, listings)) in
                join_all(runs.collect()).await.into_iter().enumerate()
            {
                tally.add(task, i, end, true);
                tail.extend(step_tail);
                backups.append(&mut step_backups);
                if listings.listed.is_some() {
                    restic.listed = listings.listed;
                }
                restic.removed.extend(listings.removed);
            }
            let excess = tail.len().saturating_sub(STDERR_TAIL);
            tail.drain(..excess);
            tail
        } else {
            let mut tail = Tail::with_capacity(STDERR_TAIL);
            let mut budgets = Budgets::default();
            for (i, step) in task.steps.iter().enumerate() {
                let found = Found { backups: &mut backups, listings: &mut restic };
                let end = self.run_step(call(i, step), &mut tail, &mut budgets, Some(found)).await;
                if tally.add(task, i, end, false) {
                    break;
                }
            }
            budgets.finish();
            tail
        };
        let Tally { status, exit_code, mut reason, notes, last_step, .. } = tally;
        if status == RunStatus::Success && !notes.is_empty() {
            reason = format!("{reason}; {}", notes.join("; "));
        }
        Outcome {
            status,
            exit_code,
            reason,
            stderr_tail: tail.into(),
            duration: started.elapsed(),
            backups,
            last_step,
            attempts: Vec::new(),
            listed: restic.listed,
            removed: restic.removed,
            findings: Vec::new(),
        }
    }

    /// Runs the hook `name` with `facts` added to its environment, bounded by the task's hook
    /// timeout; its output goes to the log and to `output` like a step's. A hook gets a token
    /// only when it lists secrets of its own, scoped to exactly those. Returns its exit code,
    /// or why it has none.
    #[allow(clippy::too_many_arguments)] // each argument a distinct fact of the hook's run
    pub(crate) async fn run_hook(
        &self,
        task: &Task,
        name: &str,
        (hook, timeout): (&Hook, Duration),
        run_id: &str,
        procs: &RunProcs,
        facts: Vec<(String, String)>,
        cancel: &CancellationToken,
        output: Sinks<'_>,
    ) -> Result<i32, HookFailure> {
        let step = Step {
            command: hook.command.clone(),
            pipe_into: Vec::new(),
            env: facts
                .into_iter()
                .map(|(name, value)| EnvVar { name, value: EnvValue::Text(value) })
                .collect(),
            continue_on_error: false,
            sha256: None,
        };
        let deadline = Some(Instant::now() + timeout);
        let call = StepCall {
            task,
            step: &step,
            pin: None,
            run_id,
            procs,
            facts: &[],
            index: 0,
            deadline,
            cancel,
            output,
            hook: Some(name),
            scope: (!hook.secrets.is_empty()).then_some(hook.secrets.as_slice()),
        };
        // A hook's output is logged like a step's (with a budget of its own), but its stderr
        // is not the run's tail.
        let mut budgets = Budgets::default();
        let end = self.run_step(call, &mut Tail::new(), &mut budgets, None).await;
        budgets.finish();
        match end {
            StepEnd::Exited(status, ..) => {
                status.code().ok_or_else(|| HookFailure::Failed(describe_exit(status)))
            }
            StepEnd::TimedOut(how) => Err(HookFailure::Failed(format!(
                "timed out after {}; {how}",
                crate::time::Human(timeout)
            ))),
            StepEnd::Cancelled => Err(HookFailure::Cancelled),
            StepEnd::NotStarted(why) | StepEnd::Refused(why) => Err(HookFailure::Failed(why)),
        }
    }

    /// The step's environment, and the secrets it needs as files (in step directory
    /// `label`: see [`secret_files`]). A `{secret_file:}` value becomes the file's path
    /// when the process may fetch that secret (`scope`: a step's task always may, validation
    /// saw to that); for a hook that does not list it, the variable is left unset, as its
    /// token is.
    fn env_for(
        &self,
        task: &Task,
        step: &Step,
        scope: Option<&[String]>,
        label: &str,
    ) -> Result<(StepEnv, Vec<String>), String> {
        let mut env = self.base_env.clone();
        let mut files: Vec<String> = Vec::new();
        for var in task.env.iter().chain(&step.env) {
            env.retain(|(k, _)| k != var.name.as_str());
            let value: OsString = match &var.value {
                EnvValue::Text(text) => text.into(),
                EnvValue::Secret(name) => match self.broker.secrets().get(name) {
                    Some(secret) => {
                        OsStr::from_bytes(secret.expose_secret().as_bytes()).to_os_string()
                    }
                    None => return Err(format!("secret {name:?} for {} is not loaded", var.name)),
                },
                EnvValue::SecretFile(name) => {
                    if !scope.is_some_and(|s| s.contains(name)) {
                        continue;
                    }
                    if self.broker.secrets().get(name).is_none() {
                        return Err(format!("secret {name:?} for {} is not loaded", var.name));
                    }
                    if !files.contains(name) {
                        files.push(name.clone());
                    }
                    secret_files::path_of(&self.secret_files, label, name).into_os_string()
                }
            };
            env.push((var.name.clone().into(), value));
        }
        // A variable set to a file and then overridden (a step's text over the task's
        // `{secret_file:}`) needs no file.
        files.retain(|name| {
            let path = secret_files::path_of(&self.secret_files, label, name);
            env.iter().any(|(_, v)| Path::new(v) == path)
        });
        Ok((env, files))
    }

    /// Writes the step's secret files (on a blocking thread: file writes), straight from
    /// the locked store.
    async fn write_secret_files(
        &self,
        label: &str,
        names: Vec<String>,
    ) -> Result<Option<secret_files::StepFiles>, String> {
        if names.is_empty() {
            return Ok(None);
        }
        let broker = self.broker.clone();
        let root = self.secret_files.clone();
        let dir = label.to_string();
        let written = tokio::task::spawn_blocking(move || {
            let secrets = broker.secrets();
            let items: Vec<(&str, &[u8])> = names
                .iter()
                .filter_map(|n| Some((n.as_str(), secrets.get(n)?.expose_secret().as_bytes())))
                .collect();
            secret_files::StepFiles::create(&root, &dir, &items)
        })
        .await;
        match written {
            Ok(Ok(files)) => Ok(Some(files)),
            Ok(Err(e)) => {
                let why = format!(
                    "cannot write the secret files in {}: {e}",
                    self.secret_files.join(label).display()
                );
                error!("{why}");
                Err(why)
            }
            Err(e) => Err(format!("writing the secret files failed: {e}")),
        }
    }

    /// The command for a step: the pinned, verified copy when the step is pinned.
    async fn command(
        &self,
        call: &StepCall<'_>,
    ) -> Result<(tokio::process::Command, Option<std::fs::File>), StepEnd> {
        // A pinned program is checked before anything else, and run from the checked file.
        let pinned_file = match call.pin.cloned() {
            Some(pin) => {
                match tokio::task::spawn_blocking(move || crate::trust::open_verified(&pin)).await {
                    Ok(Ok(file)) => Some(file),
                    Ok(Err(why)) => {
                        error!("{why}");
                        return Err(StepEnd::Refused(why));
                    }
                    Err(e) => {
                        return Err(StepEnd::Refused(format!(
                            "checking the pinned program failed: {e}"
                        )));
                    }
                }
            }
            None => None,
        };
        let home = self.home.as_deref();
        let program = &call.step.command[0];
        let mut cmd = match &pinned_file {
            #[cfg(target_os = "linux")]
            Some(file) => {
                use std::os::fd::AsRawFd;
                // The child inherits the descriptor across fork and execs it before
                // close-on-exec closes it: the kernel runs the sealed copy we hashed.
                let mut cmd =
                    tokio::process::Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
                cmd.arg0(program);
                cmd
            }
            _ => tokio::process::Command::new(expand_tilde(program, home)),
        };
        cmd.args(call.step.command[1..].iter().map(|a| expand_tilde(a, home)));
        Ok((cmd, pinned_file))
    }

    /// Runs one step (or hook) to its end; a step's restic summaries are added to
    /// `found` (a hook passes `None`: what it prints is not the run's result). A pipeline's
    /// stages run at once, each stage's stdout into the next one's stdin, all in one
    /// process group (led by the last stage, which gets the timeout's first SIGINT: normally
    /// restic), each with a token of its own; the step ends when every stage has ended.
    async fn run_step(
        &self,
        call: StepCall<'_>,
        tail: &mut Tail,
        budgets: &mut Budgets,
        found: Option<Found<'_>>,
    ) -> StepEnd {
        let StepCall {
            task,
            step,
            run_id,
            procs,
            facts,
            index,
            deadline,
            cancel,
            output,
            hook,
            scope,
            ..
        } = call;
        // The step's own directory of secret files: unique per run and step (or hook).
        let label = match hook {
            Some(h) => format!("{run_id}.{h}"),
            None => format!("{run_id}.{}", index + 1),
        };
        let (env, file_names) = match self.env_for(task, step, scope, &label) {
            Ok(pair) => pair,
            Err(why) => return StepEnd::NotStarted(why),
        };
        // Removed when this function returns: once every process of the step has ended.
        let secret_files = match self.write_secret_files(&label, file_names).await {
            Ok(files) => files,
            Err(why) => return StepEnd::NotStarted(why),
        };
        let stages = step.stages();
        let piped = stages.len() > 1;
        let mut commands = Vec::with_capacity(stages.len());
        let (first, pinned_file) = match self.command(&call).await {
            Ok(pair) => pair,
            Err(end) => return end,
        };
        commands.push(first);
        let home = self.home.as_deref();
        for argv in &stages[1..] {
            let mut cmd = tokio::process::Command::new(expand_tilde(&argv[0], home));
            cmd.args(argv[1..].iter().map(|a| expand_tilde(a, home)));
            commands.push(cmd);
        }
        // The pipes between stages, and one stderr the stages share (a line written by one
        // `write` stays whole). Close-on-exec: each child gets only the ends it is given.
        let plumbing = if piped { Plumbing::new(stages.len()) } else { Ok(Plumbing::default()) };
        let mut plumbing = match plumbing {
            Ok(p) => p,
            Err(e) => return StepEnd::NotStarted(format!("cannot make the pipeline's pipes: {e}")),
        };
        for (i, cmd) in commands.iter_mut().enumerate() {
            cmd.env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("BACKUPNIZZA_TASK", &task.name)
                .env("BACKUPNIZZA_RUN_ID", run_id)
                .envs(facts.iter().map(|(k, v)| (k, v)))
                .kill_on_drop(true);
            if piped {
                cmd.env("BACKUPNIZZA_STAGE", (i + 1).to_string());
            }
            if let Some(dir) = &task.working_dir {
                cmd.current_dir(dir);
            }
            set_up_child(cmd, procs, task);
        }
        if let Err(e) = plumbing.connect(&mut commands) {
            return StepEnd::NotStarted(format!("cannot connect the pipeline's stages: {e}"));
        }
        let programs: Vec<String> = stages
            .iter()
            .map(|a| expand_tilde(&a[0], home).to_string_lossy().into_owned())
            .collect();
        // Started last stage first: it leads the process group, so it is alive (waiting for
        // its input) when the earlier stages join the group.
        let mut children: Vec<Option<(tokio::process::Child, Option<crate::broker::Handle>)>> =
            (0..commands.len()).map(|_| None).collect();
        let mut pgid: Option<Pid> = None;
        let mut failed: Option<String> = None;
        for i in (0..commands.len()).rev() {
            let mut cmd = std::mem::replace(&mut commands[i], tokio::process::Command::new("/"));
            cmd.process_group(pgid.map_or(0, Pid::as_raw));
            // A process without a scope (a plain hook) gets neither a token nor the socket:
            // the socket is useless to it, and `secretbox` then says plainly that it got no
            // token.
            let handle = match scope {
                Some(scope) => {
                    let scope: Vec<Arc<str>> =
                        scope.iter().map(|s| Arc::from(s.as_str())).collect();
                    let task_name: Arc<str> = Arc::from(task.name.as_str());
                    let (token, handle) =
                        match self.broker.mint(&task_name, &scope, task.redeem_limit) {
                            Ok(pair) => pair,
                            Err(e) => {
                                failed = Some(format!("cannot mint a token: {e}"));
                                break;
                            }
                        };
                    cmd.env("SECRETBOX_SOCKET", &self.socket)
                        .env("SECRETBOX_TOKEN", token.expose());
                    if let Some(id) = &self.server_id {
                        cmd.env("SECRETBOX_DAEMON", id);
                    }
                    Some(handle)
                }
                None => None,
            };
            let spawned = cmd.spawn();
            // The command holds the token's only other copy: wiped now, spawned or not.
            drop(cmd);
            let child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    if let Some(handle) = handle {
                        self.broker.reaped(handle, None);
                    }
                    let hint = if e.kind() == std::io::ErrorKind::NotFound {
                        " (not found in the task's PATH)"
                    } else {
                        ""
                    };
                    let which = if piped {
                        format!(" (stage {} of {})", i + 1, stages.len())
                    } else {
                        String::new()
                    };
                    let why = format!("cannot start {}{which}: {e}{hint}", programs[i]);
                    warn!("{why}");
                    failed = Some(why);
                    break;
                }
            };
            let pid = child.id().unwrap_or_default();
            pgid.get_or_insert(Pid::from_raw(pid as i32));
            if let Some(handle) = handle {
                self.broker.started(handle, pid);
                info!(step = index + 1, pid, token = %handle.fingerprint(), program = %programs[i], "started process with a one-time token");
            } else {
                self.broker.started_without_token(pid);
                info!(step = index + 1, pid, program = %programs[i], "started process without a token");
            }
            children[i] = Some((child, handle));
        }
        drop(pinned_file);
        // Our copies of the pipes' ends: the stages hold their own now.
        let shared_stderr = plumbing.finish();
        let Some(pgid) = pgid else {
            return StepEnd::NotStarted(failed.unwrap_or_else(|| "nothing was started".into()));
        };
        let mut children: Vec<(tokio::process::Child, Option<crate::broker::Handle>)> =
            children.into_iter().flatten().collect();
        let stdout = children.last_mut().and_then(|(c, _)| c.stdout.take());
        let own_stderr = if shared_stderr.is_none() { children[0].0.stderr.take() } else { None };
        if let Some(guardian) = &self.guardian {
            use std::os::fd::AsFd;
            let pipes: Vec<_> = [
                stdout.as_ref().map(AsFd::as_fd),
                shared_stderr.as_ref().map(AsFd::as_fd),
                own_stderr.as_ref().map(AsFd::as_fd),
            ]
            .into_iter()
            .flatten()
            .collect();
            guardian.watch(pgid.as_raw() as u32, procs, &pipes, task.kill_grace);
        }
        let stderr: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = match shared_stderr {
            Some(rx) => Some(Box::new(rx)),
            None => own_stderr.map(|s| Box::new(s) as _),
        };
        // Each stage's token dies as soon as its process is reaped, whatever the others do.
        let waits: Vec<tokio::task::JoinHandle<std::io::Result<ExitStatus>>> = children
            .into_iter()
            .map(|(mut child, handle)| {
                let broker = self.broker.clone();
                let pid = child.id().unwrap_or_default();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    match handle {
                        Some(handle) => broker.reaped(handle, Some(pid)),
                        None => broker.reaped_without_token(pid),
                    }
                    status
                })
            })
            .collect();

        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        // In the output file, a hook's streams are `before.stdout` and so on.
        let label = |stream: &str| hook.map_or(stream.to_string(), |h| format!("{h}.{stream}"));
        let (out_label, err_label) = (label("stdout"), label("stderr"));
        // The output is read on this task, beside the wait: the tail stays a plain value.
        let mut restic = crate::restic::Reader::new(index + 1);
        if task.audit.is_some() || step.command.iter().any(|a| a == "forget") {
            restic.line_limit = MAX_LISTING;
        }
        let pumps = async {
            let out = async {
                if let Some(s) = stdout {
                    let file = (output, out_label.as_str());
                    let restic = Some(&mut restic);
                    super::output::pump(s, "stdout", None, &mut budgets.stdout, file, restic).await;
                }
            };
            let err = async {
                if let Some(s) = stderr {
                    let file = (output, err_label.as_str());
                    let tail = Some(&mut *tail);
                    super::output::pump(s, "stderr", tail, &mut budgets.stderr, file, None).await;
                }
            };
            // A background process may keep the pipes open; stop reading 2 s after the
            // process itself ended.
            tokio::select! {
                _ = async { tokio::join!(out, err) } => {}
                () = async { let _ = ended_rx.await; tokio::time::sleep(Duration::from_secs(2)).await } => {}
            }
        };
        let timeout_plan = timeout_plan(task.kill_grace);
        // Shutdown stays within `shutdown_grace`: a third of it after each SIGINT and after
        // SIGTERM.
        let third = self.shutdown_grace / 3;
        let shutdown_plan = [
            (Target::Main, Signal::SIGINT, third),
            (Target::All, Signal::SIGINT, third),
            (Target::All, Signal::SIGTERM, third),
            (Target::All, Signal::SIGKILL, task.kill_grace),
        ];
        let stage_count = waits.len();
        let mut waits = waits;
        let wait_all = |waits: &mut Vec<tokio::task::JoinHandle<std::io::Result<ExitStatus>>>| {
            let waits = std::mem::take(waits);
            async move {
                let mut statuses = Vec::with_capacity(waits.len());
                for w in waits {
                    statuses.push(match w.await {
                        Ok(status) => status,
                        Err(e) => Err(std::io::Error::other(e)),
                    });
                }
                statuses
            }
        };
        let pid = pgid.as_raw() as u32;
        let waiting = async {
            let mut all = std::pin::pin!(wait_all(&mut waits));
            let first = tokio::select! {
                statuses = &mut all => decide(statuses, &programs, failed.take()),
                () = sleep_until(deadline) => {
                    warn!(pid, "timeout reached; stopping the step's processes (SIGINT, then SIGTERM, then SIGKILL)");
                    let how = stop(procs, pgid, &timeout_plan).await;
                    let _ = all.await;
                    Err(StepEnd::TimedOut(how))
                },
                () = cancel.cancelled() => {
                    info!(pid, "daemon stopping; sending SIGINT to the step's processes");
                    stop(procs, pgid, &shutdown_plan).await;
                    let _ = all.await;
                    Err(StepEnd::Cancelled)
                },
            };
            let end = match first {
                Ok((status, note, last_decides)) => {
                    let plans = (&timeout_plan[..], &shutdown_plan[..]);
                    match self.leftovers(status, procs, pgid, deadline, cancel, plans).await {
                        StepEnd::Exited(st, more, _) => {
                            StepEnd::Exited(st, join_notes(note, more), last_decides)
                        }
                        other => other,
                    }
                }
                Err(end) => end,
            };
            if let Some(guardian) = &self.guardian {
                guardian.release(pid);
            }
            let _ = ended_tx.send(());
            end
        };
        let (end, ()) = tokio::join!(waiting, pumps);
        super::output::progress_passed_over(&restic);
        if let Some(found) = found {
            for summary in &restic.summaries {
                info!(step = index + 1, snapshot = %summary.snapshot_id, "restic saved a snapshot");
            }
            found.backups.append(&mut restic.summaries);
            if restic.listed.is_some() {
                found.listings.listed = restic.listed.take();
            }
            // A dry run removes nothing.
            if !step.command.iter().any(|a| a == "--dry-run" || a == "-n") {
                found.listings.removed.append(&mut restic.removed);
            }
        }
        if let StepEnd::Exited(st, ..) = &end {
            let stages =
                if stage_count > 1 { format!(" ({stage_count} stages)") } else { String::new() };
            info!(step = index + 1, pid, "process ended{stages}: {}", describe_exit(*st));
        }
        // Every process of the step has ended: its secret files go now, off the async
        // threads (the drop unlinks them).
        if let Some(files) = secret_files {
            let _ = tokio::task::spawn_blocking(move || drop(files)).await;
        }
        end
    }

    /// After a step's main process exited: waits for the processes it left behind, until
    /// they end, the deadline (which stops them) or shutdown.
    async fn leftovers(
        &self,
        status: ExitStatus,
        procs: &RunProcs,
        pgid: Pid,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        (timeout_plan, shutdown_plan): (&[Stage], &[Stage]),
    ) -> StepEnd {
        // The common case (nothing left) costs one signal-0 and, with a cgroup, one read.
        if procs.all_gone(Some(pgid), || self.broker.active()) {
            return StepEnd::Exited(status, None, true);
        }
        let count = procs.members(Some(pgid), Search::Adopted, &self.broker.active()).len().max(1);
        let them = if count == 1 {
            "1 process it left behind".to_string()
        } else {
            format!("{count} processes it left behind")
        };
        let main = format!("the main process ended ({})", describe_exit(status));
        let until = if deadline.is_some() { ", or at the timeout" } else { "" };
        info!(
            pgid = pgid.as_raw(),
            "{main}; waiting for the {them}: the step ends when they do{until}"
        );
        let began = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(LEFTOVER_POLL) => {
                    if procs.all_gone(Some(pgid), || self.broker.active()) {
                        let after = crate::time::Human(Duration::from_secs(began.elapsed().as_secs()));
                        return StepEnd::Exited(status, Some(format!("the {them} ended {after} later")), true);
                    }
                }
                () = sleep_until(deadline) => {
                    warn!(pgid = pgid.as_raw(), "timeout reached; stopping the {them} (SIGINT, then SIGTERM, then SIGKILL)");
                    // The main process is gone: its stages are passed over.
                    let how = stop(procs, pgid, timeout_plan).await;
                    return StepEnd::TimedOut(format!("{main}, but the {them} had not; leftovers killed: {how}"));
                }
                () = cancel.cancelled() => {
                    info!(pgid = pgid.as_raw(), "daemon stopping; sending SIGINT to the {them}");
                    stop(procs, pgid, shutdown_plan).await;
                    return StepEnd::Cancelled;
                }
            }
        }
    }
}

/// The exit status that decides a step (the pipeline's, as with `set -o pipefail`: the last
/// stage that failed, else the last stage), with a note naming the failed stages and
/// whether the last stage decided; or why the step did not run whole (`not_started`).
fn decide(
    statuses: Vec<std::io::Result<ExitStatus>>,
    programs: &[String],
    not_started: Option<String>,
) -> Result<(ExitStatus, Option<String>, bool), StepEnd> {
    // Started last first: a stage that could not start leaves the earlier ones unstarted.
    let offset = programs.len() - statuses.len();
    let mut decided = None;
    let mut decided_by = 0;
    let mut failures = Vec::new();
    for (i, status) in statuses.into_iter().enumerate() {
        let status = status
            .map_err(|e| StepEnd::NotStarted(format!("waiting for the process failed: {e}")))?;
        if !status.success() && programs.len() > 1 {
            failures.push(format!(
                "stage {} of {} ({}) {}",
                i + offset + 1,
                programs.len(),
                programs[i + offset],
                describe_exit(status)
            ));
        }
        if !status.success() || decided.as_ref().is_none_or(|d: &ExitStatus| d.success()) {
            decided = Some(status);
            decided_by = i + offset;
        }
    }
    if let Some(why) = not_started {
        return Err(StepEnd::NotStarted(why));
    }
    let status = decided.ok_or_else(|| StepEnd::NotStarted("nothing was started".into()))?;
    let note = (!failures.is_empty()).then(|| failures.join(", "));
    Ok((status, note, decided_by + 1 == programs.len()))
}

fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// The pipes of a pipeline: one between each two stages, and one stderr for all.
#[derive(Default)]
struct Plumbing {
    /// `(read, write)` between stage i and i + 1.
    links: Vec<(Option<OwnedFd>, Option<OwnedFd>)>,
    /// `(read, write)`; our write end is dropped once the stages have theirs.
    stderr: Option<(OwnedFd, OwnedFd)>,
}

impl Plumbing {
    fn new(stages: usize) -> std::io::Result<Plumbing> {
        // std's pipes are close-on-exec (atomically where the platform has pipe2).
        let pipe = || std::io::pipe().map(|(r, w)| (OwnedFd::from(r), OwnedFd::from(w)));
        let mut links = Vec::new();
        for _ in 1..stages {
            let (r, w) = pipe()?;
            links.push((Some(r), Some(w)));
        }
        let (r, w) = pipe()?;
        Ok(Plumbing { links, stderr: Some((r, w)) })
    }

    /// Sets every command's stdin, stdout and stderr: the first reads nothing, the last
    /// writes to us.
    fn connect(&mut self, commands: &mut [tokio::process::Command]) -> std::io::Result<()> {
        let n = commands.len();
        for (i, cmd) in commands.iter_mut().enumerate() {
            let stdin = match i {
                0 => Stdio::null(),
                _ => self.links[i - 1].0.take().map_or_else(Stdio::null, Stdio::from),
            };
            let stdout = if i + 1 == n {
                Stdio::piped()
            } else {
                self.links[i].1.take().map_or_else(Stdio::null, Stdio::from)
            };
            let stderr = match &self.stderr {
                Some((_, w)) => Stdio::from(w.try_clone()?),
                None => Stdio::piped(),
            };
            cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        }
        Ok(())
    }

    /// Drops our write end of the shared stderr (so it ends when the stages do) and gives
    /// its read end, for the async reader.
    fn finish(&mut self) -> Option<tokio::net::unix::pipe::Receiver> {
        self.links.clear();
        let (read, _write) = self.stderr.take()?;
        tokio::net::unix::pipe::Receiver::from_owned_fd(read).ok()
    }
}

/// Makes the child part of the run before it execs: into the run's cgroup (if any), a
/// parent-death signal on Linux, so it does not outlive a daemon that died, and the task's
/// `nice:` and `io:` (set in the child, so the program itself is what runs: no `nice`
/// wrapper in front of restic, so its pin and its exit codes stay its own).
fn set_up_child(cmd: &mut tokio::process::Command, procs: &RunProcs, task: &Task) {
    let setup = crate::sys::exec::ChildSetup {
        join_cgroup: procs.join_file(),
        parent_death_signal: true,
        nice: task.nice,
        ioprio: task.io.map(crate::config::IoClass::ioprio),
    };
    crate::sys::exec::set_up_before_exec(cmd, setup);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Stops every process of the step's run. Returns which signals were needed.
async fn stop(procs: &RunProcs, pgid: Pid, plan: &[Stage]) -> String {
    match procs.stop(Some(pgid), Search::Adopted, plan).await {
        Some((how, _)) => how,
        None => "the process had already ended".into(),
    }
}

/// "exit code 3", "killed by SIGTERM".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => {
            let name =
                Signal::try_from(sig).map_or("an unknown signal", nix::sys::signal::Signal::as_str);
            format!("killed by {name}")
        }
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_keeps_only_the_documented_variables() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/h"),
            ("LC_ALL", "C"),
            ("XDG_RUNTIME_DIR", "/run/u"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("LD_PRELOAD", "evil.so"),
            ("SSH_AUTH_SOCK", "/s"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = allowed_env(vars, Some(Path::new("/opt/bnz/bin")));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["PATH", "HOME", "LC_ALL", "XDG_RUNTIME_DIR"]);
        assert_eq!(env[0].1, OsString::from("/opt/bnz/bin:/usr/bin"));
        let again = allowed_env(env.clone(), Some(Path::new("/opt/bnz/bin")));
        assert_eq!(again[0].1, OsString::from("/opt/bnz/bin:/usr/bin"));
    }
}
