//! Running one task: a clean environment with a fresh token per step (and per hook that lists
//! secrets of its own; a plain hook gets none), a process group per
//! step (and the run's cgroup, where there is one: see [`contain`]), output
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
//! the [`guardian`] stops the rest of the run then.
//!
//! A step's environment and `{secret_file:}` values are made in [`env`](mod@env), its commands and
//! processes in [`spawn`] (pinned programs, pipelines, tokens), and its end in [`wait`]
//! (timeouts, shutdown, leftovers); [`tally`] turns the steps' ends into the run's outcome.

pub(crate) mod call;
pub(crate) mod contain;
mod env;
mod forget;
pub(crate) mod guardian;
mod sealed;
pub(crate) mod secret_files;
mod spawn;
mod tally;
mod wait;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::output::{LogBudget, STDERR_TAIL, Sinks, Tail};
use crate::broker::Broker;
use crate::config::{EnvValue, EnvVar, Hook, Step, Task};
use crate::protocol::RunStatus;
use crate::restic::{BackupSummary, Snapshot};
use crate::trust::{PinError, Pinned};
use contain::{Containment, RunProcs};
pub(crate) use env::allowed_env;
use guardian::Guardian;
pub(crate) use tally::describe_exit;
use tally::{Tally, join_all};

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
    pub(crate) listed: Option<Vec<Snapshot>>,
    /// Snapshots the steps' `restic forget --json` removed (not with `--dry-run`).
    pub(crate) removed: Vec<Snapshot>,
    /// What the task's audit found.
    pub(crate) findings: Vec<crate::history::Finding>,
    /// What a verifier's run proved.
    pub(crate) verification: Option<crate::history::Verification>,
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
            verification: None,
        }
    }

    /// Fails the run for `reason`, with no exit code (a ping with `/0` would report success).
    pub(crate) fn fail(&mut self, reason: String) {
        self.status = RunStatus::Failed;
        self.exit_code = None;
        self.reason = reason;
    }
}

/// Why a step (or hook) did not start, or not whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("secret {secret:?} for {var} is not loaded")]
    SecretNotLoaded { secret: String, var: String },
    #[error("cannot write the secret files in {}: {source}", dir.display())]
    SecretFiles { dir: PathBuf, source: std::io::Error },
    #[error("writing the secret files failed: {0}")]
    SecretFilesThread(tokio::task::JoinError),
    #[error("cannot make the pipeline's pipes: {source}{}", spawn_hint(source))]
    Pipes { source: std::io::Error },
    #[error("cannot connect the pipeline's stages: {0}")]
    Connect(std::io::Error),
    #[error("cannot mint a token: {0}")]
    Mint(std::io::Error),
    /// `stage` is `(n, of)` in a pipeline.
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("checking the pinned program failed: {0}")]
    PinThread(tokio::task::JoinError),
    #[error("cannot start {program}{}: {source}{}", stage.map(|(n, of)| format!(" (stage {n} of {of})")).unwrap_or_default(), spawn_hint(source))]
    Spawn { program: String, stage: Option<(usize, usize)>, source: std::io::Error },
    #[error("waiting for the process failed: {0}")]
    Wait(std::io::Error),
    #[error("nothing was started")]
    NothingStarted,
}

/// Why a hook has no exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookFailure {
    /// The daemon is stopping: not the hook's fault, and not the run's.
    Cancelled,
    Failed(String),
}

/// What to add to a failed spawn's message: how to fix it, when that is known.
fn spawn_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        " (not found in the task's PATH)"
    } else if crate::sys::proc::out_of_fds(e) {
        " (the daemon is out of file descriptors: raise its open-file limit, LimitNOFILE=)"
    } else {
        ""
    }
}

/// How one step (or hook) ended.
enum StepEnd {
    /// The main process exited, and every process it left behind ended too (the note says
    /// how many there were, if any).
    /// The bool says whether the task's `warning_exit_codes` may apply: not when the
    /// status is an earlier pipeline stage's (restic's 3 is restic's, not a dump's).
    Exited(ExitStatus, Option<String>, bool),
    TimedOut(String),
    Cancelled,
    NotStarted(StepError),
    /// A pinned program failed its check: nothing ran, no token was minted.
    Refused(StepError),
}

/// A process's environment, in the order it is set.
type StepEnv = Vec<(OsString, OsString)>;

/// What runs share: the broker (for tokens, `{secret:}` values and the set of live task
/// processes), the socket to advertise and the environment allowlist.
pub(crate) struct Runner {
    pub(crate) broker: Arc<Broker>,
    pub(crate) socket: PathBuf,
    /// This daemon's pid and start time (`SECRETBOX_DAEMON`), so that `secretbox` sends its
    /// token only to us, not to whoever took the socket path.
    pub(crate) server_id: Option<String>,
    pub(crate) base_env: Vec<(OsString, OsString)>,
    /// Where the `secretbox` beside the daemon is: first on every step's `PATH`, also one
    /// the task's `env:` sets.
    pub(crate) secretbox_dir: Option<PathBuf>,
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
    /// The sealed `secretbox` handed to the processes of sealing tasks ([`sealed`]).
    pub(crate) secretbox_image: Option<Arc<crate::trust::SecretboxImage>>,
}

/// Snapshot lists and removals a run's steps printed.
#[derive(Default)]
struct Listings {
    listed: Option<Vec<Snapshot>>,
    removed: Vec<Snapshot>,
    /// What the run's reason should say of them (a forget whose removals are not known).
    notes: Vec<String>,
    /// A spot check's sample of the files a `restic ls --json` listed ([`call`]).
    nodes: Option<crate::restic::ls::Sampler>,
    /// What a `restic stats --json` printed.
    stats: Option<crate::restic::Stats>,
}

/// Where a step's restic results go.
struct Found<'a> {
    backups: &'a mut Vec<BackupSummary>,
    listings: &'a mut Listings,
}

impl Found<'_> {
    fn reborrow(&mut self) -> Found<'_> {
        Found { backups: self.backups, listings: self.listings }
    }
}

/// Longest snapshot list an audit task's step may print (one JSON line; about 150,000
/// snapshots).
const MAX_LISTING: usize = 64 * 1024 * 1024;

/// What a run's stdout and stderr may still send to the log.
#[derive(Default)]
struct Budgets {
    stdout: LogBudget,
    stderr: LogBudget,
}

impl Budgets {
    /// Logs what was held back, masked with `task`'s own secrets like the lines before it.
    fn finish(self, task: &str) {
        crate::redact::as_task(Some(task), || {
            self.stdout.finish();
            self.stderr.finish();
        });
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
    /// A hook: the task's `{secret:}` values reach it only when its own `secrets:` list
    /// them (a step, and the listings around a forget, get all of its task's).
    hook_scoped: bool,
}

/// One attempt at a run's steps: the facts every step of it shares.
pub(crate) struct Steps<'a> {
    pub(crate) task: &'a Task,
    /// Each step's pinned program, if pinned.
    pub(crate) pins: &'a [Option<Pinned>],
    pub(crate) run_id: &'a str,
    pub(crate) procs: &'a RunProcs,
    /// Extra variables for every step (e.g. `BACKUPNIZZA_SCHEDULED`).
    pub(crate) facts: &'a [(String, String)],
    /// The task's timeout.
    pub(crate) deadline: Option<Instant>,
    /// Cancelled at daemon shutdown.
    pub(crate) cancel: &'a CancellationToken,
    /// The run's output file and feed.
    pub(crate) output: Sinks<'a>,
}

impl<'a> Steps<'a> {
    /// Step `i` as a process to run.
    fn call(&self, i: usize) -> StepCall<'a> {
        StepCall {
            task: self.task,
            step: &self.task.steps[i],
            pin: self.pins.get(i).and_then(Option::as_ref),
            run_id: self.run_id,
            procs: self.procs,
            facts: self.facts,
            index: i,
            deadline: self.deadline,
            cancel: self.cancel,
            output: self.output,
            hook: None,
            scope: Some(&self.task.secrets),
            hook_scoped: false,
        }
    }
}

/// What a run's steps reported, merged in step order.
#[derive(Default)]
struct Results {
    backups: Vec<BackupSummary>,
    listings: Listings,
}

impl Results {
    fn found(&mut self) -> Found<'_> {
        Found { backups: &mut self.backups, listings: &mut self.listings }
    }

    fn merge(&mut self, mut other: Results) {
        self.backups.append(&mut other.backups);
        if other.listings.listed.is_some() {
            self.listings.listed = other.listings.listed;
        }
        self.listings.removed.extend(other.listings.removed);
        self.listings.notes.extend(other.listings.notes);
    }
}

impl Runner {
    /// Runs every step of a run, in order (or all at once with `parallel`), to the run's
    /// outcome.
    pub(crate) async fn run(&self, steps: Steps<'_>) -> Outcome {
        let started = Instant::now();
        let task = steps.task;
        let mut tally = Tally::new(task.steps.len());
        let mut results = Results::default();
        let tail = if task.parallel {
            self.run_parallel(&steps, &mut tally, &mut results).await
        } else {
            self.run_in_sequence(&steps, &mut tally, &mut results).await
        };
        let Tally { status, exit_code, mut reason, mut notes, last_step, restic_failed, .. } =
            tally;
        notes.append(&mut results.listings.notes);
        if status == RunStatus::Success && !notes.is_empty() {
            reason = format!("{reason}; {}", notes.join("; "));
        }
        if restic_failed && let Some(why) = crate::restic::exit::cause(tail.iter()) {
            reason = format!("{reason}: {why}");
        }
        Outcome {
            status,
            exit_code,
            reason,
            stderr_tail: tail.into(),
            duration: started.elapsed(),
            backups: results.backups,
            last_step,
            attempts: Vec::new(),
            listed: results.listings.listed,
            removed: results.listings.removed,
            findings: Vec::new(),
            verification: None,
        }
    }

    /// The steps one after another, until one fails (unless `continue_on_error`).
    async fn run_in_sequence(
        &self,
        steps: &Steps<'_>,
        tally: &mut Tally,
        results: &mut Results,
    ) -> Tail {
        let mut tail = Tail::with_capacity(STDERR_TAIL);
        let mut budgets = Budgets::default();
        for i in 0..steps.task.steps.len() {
            let end =
                self.run_step(steps.call(i), &mut tail, &mut budgets, Some(results.found())).await;
            if tally.add(steps.task, i, end, false) {
                break;
            }
        }
        budgets.finish(&steps.task.name);
        tail
    }

    /// Every step at once, each with its own tail, budgets and results, merged in step order.
    async fn run_parallel(
        &self,
        steps: &Steps<'_>,
        tally: &mut Tally,
        results: &mut Results,
    ) -> Tail {
        let runs = (0..steps.task.steps.len()).map(|i| async move {
            let (mut tail, mut budgets) = (Tail::new(), Budgets::default());
            let mut own = Results::default();
            let end = self
                .run_step(steps.call(i), &mut tail, &mut budgets, Some(own.found()))
                .instrument(tracing::info_span!("step", n = i + 1))
                .await;
            budgets.finish(&steps.task.name);
            (end, tail, own)
        });
        let mut tail = Tail::with_capacity(STDERR_TAIL);
        for (i, (end, step_tail, own)) in join_all(runs.collect()).await.into_iter().enumerate() {
            tally.add(steps.task, i, end, true);
            tail.extend(step_tail);
            results.merge(own);
        }
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
        tail
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
            read_all: None,
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
            hook_scoped: true,
        };
        // A hook's output is logged like a step's (with a budget of its own), but its stderr
        // is not the run's tail.
        let mut budgets = Budgets::default();
        let end = self.run_step(call, &mut Tail::new(), &mut budgets, None).await;
        budgets.finish(&task.name);
        match end {
            StepEnd::Exited(status, ..) => {
                status.code().ok_or_else(|| HookFailure::Failed(describe_exit(status)))
            }
            StepEnd::TimedOut(how) => Err(HookFailure::Failed(format!(
                "timed out after {}; {how}",
                crate::time::Human(timeout)
            ))),
            StepEnd::Cancelled => Err(HookFailure::Cancelled),
            StepEnd::NotStarted(why) => Err(HookFailure::Failed(why.to_string())),
            StepEnd::Refused(why) => Err(HookFailure::Failed(why.to_string())),
        }
    }

    /// Runs one step (or hook) to its end; a step's restic summaries are added to `found`
    /// (a hook passes `None`: what it prints is not the run's result). Its `{secret_file:}`
    /// files live until every process of it has ended.
    async fn run_step(
        &self,
        call: StepCall<'_>,
        tail: &mut Tail,
        budgets: &mut Budgets,
        found: Option<Found<'_>>,
    ) -> StepEnd {
        // The step's own directory of secret files: unique per run and step (or hook).
        let label = match call.hook {
            Some(h) => format!("{}.{h}", call.run_id),
            None => format!("{}.{}", call.run_id, call.index + 1),
        };
        let scope = (call.scope, call.hook_scoped);
        let (env, file_names) = match self.env_for(call.task, call.step, scope, &label) {
            Ok(pair) => pair,
            Err(why) => return StepEnd::NotStarted(why),
        };
        let secret_files = match self.write_secret_files(&label, file_names).await {
            Ok(files) => files,
            Err(why) => return StepEnd::NotStarted(why),
        };
        let forget = found.is_some().then(|| forget::listing(&call)).flatten();
        let (mut found, before) = match &forget {
            Some(listing) => (found, self.list_for_forget(&call, listing, forget::BEFORE).await),
            None => (found, None),
        };
        let json_from = found.as_ref().map_or(0, |f| f.listings.removed.len());
        // Stopped while the repository was listed: the forget does not start.
        let end = if forget.is_some() && call.cancel.is_cancelled() {
            StepEnd::Cancelled
        } else {
            self.run_processes(&call, &env, tail, budgets, found.as_mut().map(Found::reborrow))
                .await
        };
        if let (Some(listing), Some(found)) = (&forget, found.as_mut()) {
            let after = self.list_for_forget(&call, listing, forget::AFTER).await;
            forget::removed(found, json_from, before, after);
        }
        // Every process of the step has ended: its secret files go now, off the async
        // threads (the drop unlinks them).
        if let Some(files) = secret_files {
            let _ = tokio::task::spawn_blocking(move || drop(files)).await;
        }
        end
    }

    /// Starts the step's processes and waits for their end.
    async fn run_processes(
        &self,
        call: &StepCall<'_>,
        env: &StepEnv,
        tail: &mut Tail,
        budgets: &mut Budgets,
        found: Option<Found<'_>>,
    ) -> StepEnd {
        let commands = match self.commands(call, env).await {
            Ok(commands) => commands,
            Err(end) => return end,
        };
        let programs = commands.programs.clone();
        match self.spawn(call, commands) {
            Ok(started) => self.wait(call, started, programs, (tail, budgets), found).await,
            Err(why) => StepEnd::NotStarted(why),
        }
    }
}
