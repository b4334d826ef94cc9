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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::contain::{Containment, RunProcs, Search, Stage, Target, timeout_plan};
use super::guardian::Guardian;
use super::output::LogBudget;
use super::output_file::RunOutput;
use super::programs::Pinned;
use super::secret_files;
use crate::broker::Broker;
use crate::config::{EnvValue, EnvVar, Hook, Step, Task};
use crate::protocol::RunStatus;
use crate::restic::BackupSummary;

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
    pub(crate) findings: Vec<crate::daemon::ledger::Finding>,
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
    output: Option<&'a RunOutput>,
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

/// Expands a leading `~/` (or a lone `~`).
pub(crate) fn expand_tilde(arg: &str, home: Option<&Path>) -> OsString {
    match (arg.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            let mut out = home.as_os_str().to_os_string();
            out.push(rest);
            out
        }
        _ => arg.into(),
    }
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
    Exited(ExitStatus, Option<String>),
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
        output: Option<&RunOutput>,
    ) -> Outcome {
        let started = Instant::now();
        let mut tail = Tail::with_capacity(STDERR_TAIL);
        let mut budgets = Budgets::default();
        let mut status = RunStatus::Success;
        let mut exit_code = None;
        let mut reason = String::from("all steps succeeded");
        // What steps that succeeded left behind, for the record of a successful run.
        let mut notes = Vec::new();
        let mut backups = Vec::new();
        let mut restic = Listings::default();
        let mut last_step = 0;
        let steps = task.steps.len();
        for (i, step) in task.steps.iter().enumerate() {
            last_step = i;
            let label =
                if steps == 1 { String::new() } else { format!(" (step {} of {steps})", i + 1) };
            let pin = pins.get(i).and_then(Option::as_ref);
            let call = StepCall {
                task,
                step,
                pin,
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
            let found = Found { backups: &mut backups, listings: &mut restic };
            match self.run_step(call, &mut tail, &mut budgets, Some(found)).await {
                StepEnd::Exited(st, note) => {
                    exit_code = st.code();
                    let mut code_text = describe_exit(st);
                    if let Some(note) = note {
                        code_text = format!("{code_text} ({note})");
                        notes.push(format!("{code_text}{label}"));
                    }
                    match st.code() {
                        Some(0) => {}
                        Some(code) if task.warning_exit_codes.contains(&code) => {
                            warn!("{code_text}{label}: counted as a warning (warning_exit_codes)");
                            if status == RunStatus::Success {
                                status = RunStatus::Warning;
                                reason = format!("{code_text}{label}, a warning");
                            }
                        }
                        _ if step.continue_on_error => {
                            warn!("{code_text}{label}; continuing (continue_on_error)");
                            status = RunStatus::Failed;
                            reason = format!("{code_text}{label}");
                        }
                        _ => {
                            status = RunStatus::Failed;
                            reason = format!("{code_text}{label}");
                            if i + 1 < steps {
                                reason.push_str("; later steps skipped");
                            }
                            break;
                        }
                    }
                }
                StepEnd::TimedOut(how) => {
                    status = RunStatus::Timeout;
                    reason = format!("timed out{label}; {how}");
                    exit_code = None;
                    break;
                }
                StepEnd::Cancelled => {
                    status = RunStatus::Cancelled;
                    reason = format!("stopped by daemon shutdown{label}");
                    exit_code = None;
                    break;
                }
                StepEnd::Refused(why) => {
                    status = RunStatus::Refused;
                    reason = format!("{why}{label}");
                    exit_code = None;
                    break;
                }
                StepEnd::NotStarted(why) => {
                    status = if i == 0 { RunStatus::Refused } else { RunStatus::Failed };
                    reason = format!("{why}{label}");
                    exit_code = None;
                    if !step.continue_on_error {
                        break;
                    }
                }
            }
        }
        budgets.finish();
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
        hook: &Hook,
        run_id: &str,
        procs: &RunProcs,
        facts: Vec<(String, String)>,
        cancel: &CancellationToken,
        output: Option<&RunOutput>,
    ) -> Result<i32, HookFailure> {
        let step = Step {
            command: hook.command.clone(),
            env: facts
                .into_iter()
                .map(|(name, value)| EnvVar { name, value: EnvValue::Text(value) })
                .collect(),
            continue_on_error: false,
            sha256: None,
        };
        let deadline = Some(Instant::now() + task.hooks.timeout);
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
            StepEnd::Exited(status, _) => {
                status.code().ok_or_else(|| HookFailure::Failed(describe_exit(status)))
            }
            StepEnd::TimedOut(how) => Err(HookFailure::Failed(format!(
                "timed out after {}; {how}",
                crate::duration::Human(task.hooks.timeout)
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
                match tokio::task::spawn_blocking(move || super::programs::open_verified(&pin))
                    .await
                {
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
    /// `backups` (a hook passes `None`: what it prints is not the run's result).
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
        let (mut cmd, pinned_file) = match self.command(&call).await {
            Ok(pair) => pair,
            Err(end) => return end,
        };
        let program = expand_tilde(&step.command[0], self.home.as_deref());
        cmd.env_clear()
            .envs(env)
            .env("BACKUPNIZZA_TASK", &task.name)
            .env("BACKUPNIZZA_RUN_ID", run_id)
            .envs(facts.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &task.working_dir {
            cmd.current_dir(dir);
        }
        contain_child(&mut cmd, procs);
        // A process without a scope (a plain hook) gets neither a token nor the socket: the
        // socket is useless to it, and `secretbox` then says plainly that it got no token.
        let handle = match scope {
            Some(scope) => {
                let scope: Vec<Arc<str>> = scope.iter().map(|s| Arc::from(s.as_str())).collect();
                let task_name: Arc<str> = Arc::from(task.name.as_str());
                let (token, handle) = match self.broker.mint(&task_name, &scope, task.redeem_limit)
                {
                    Ok(pair) => pair,
                    Err(e) => return StepEnd::NotStarted(format!("cannot mint a token: {e}")),
                };
                cmd.env("SECRETBOX_SOCKET", &self.socket).env("SECRETBOX_TOKEN", token.expose());
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
        drop(pinned_file);
        let mut child = match spawned {
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
                let why = format!("cannot start {}: {e}{hint}", program.to_string_lossy());
                warn!("{why}");
                return StepEnd::NotStarted(why);
            }
        };
        let pid = child.id().unwrap_or_default();
        match handle {
            Some(handle) => self.broker.started(handle, pid),
            None => self.broker.started_without_token(pid),
        }
        if let Some(guardian) = &self.guardian {
            use std::os::fd::AsRawFd;
            let pipes: Vec<_> = [
                child.stdout.as_ref().map(AsRawFd::as_raw_fd),
                child.stderr.as_ref().map(AsRawFd::as_raw_fd),
            ]
            .into_iter()
            .flatten()
            .collect();
            guardian.watch(pid, procs, &pipes, task.kill_grace);
        }
        match handle {
            Some(handle) => {
                info!(step = index + 1, pid, token = %handle.fingerprint(), program = %program.to_string_lossy(), "started process with a one-time token");
            }
            None => {
                info!(step = index + 1, pid, program = %program.to_string_lossy(), "started process without a token");
            }
        }

        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
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
                    let file = output.map(|o| (o, out_label.as_str()));
                    let restic = Some(&mut restic);
                    super::output::pump(s, "stdout", None, &mut budgets.stdout, file, restic).await;
                }
            };
            let err = async {
                if let Some(s) = stderr {
                    let file = output.map(|o| (o, err_label.as_str()));
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
        let pgid = Pid::from_raw(pid as i32);
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
        let waiting = async {
            let first = tokio::select! {
                status = child.wait() => status.map_err(|e| StepEnd::NotStarted(format!("waiting for the process failed: {e}"))),
                () = sleep_until(deadline) => {
                    warn!(pid, "timeout reached; stopping the step's processes (SIGINT, then SIGTERM, then SIGKILL)");
                    let how = stop(procs, pgid, &timeout_plan).await;
                    let _ = child.wait().await;
                    Err(StepEnd::TimedOut(how))
                },
                () = cancel.cancelled() => {
                    info!(pid, "daemon stopping; sending SIGINT to the step's processes");
                    stop(procs, pgid, &shutdown_plan).await;
                    let _ = child.wait().await;
                    Err(StepEnd::Cancelled)
                },
            };
            // The process is reaped: its pid may be reused from now on, so its token dies now.
            match handle {
                Some(handle) => self.broker.reaped(handle, Some(pid)),
                None => self.broker.reaped_without_token(pid),
            }
            let end = match first {
                Ok(status) => {
                    let plans = (&timeout_plan[..], &shutdown_plan[..]);
                    self.leftovers(status, procs, pgid, deadline, cancel, plans).await
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
        if let StepEnd::Exited(st, _) = &end {
            info!(step = index + 1, pid, "process ended: {}", describe_exit(*st));
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
            return StepEnd::Exited(status, None);
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
                        let after = crate::duration::Human(Duration::from_secs(began.elapsed().as_secs()));
                        return StepEnd::Exited(status, Some(format!("the {them} ended {after} later")));
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

/// Makes the child part of the run before it execs: into the run's cgroup (if any), and on
/// Linux a parent-death signal, so it does not outlive a daemon that died.
fn contain_child(cmd: &mut tokio::process::Command, procs: &RunProcs) {
    let join = procs.join_file();
    #[cfg(target_os = "linux")]
    let parent = std::process::id() as libc::pid_t;
    let hook = move || {
        #[cfg(target_os = "linux")]
        // SAFETY: between fork and exec only async-signal-safe calls are made: prctl,
        // getppid, open, write, close and _exit, on values prepared before the fork.
        unsafe {
            // SIGINT, not SIGTERM: restic removes its repository lock on SIGINT.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
            // The daemon died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                libc::_exit(125);
            }
        }
        if let Some(file) = &join {
            // SAFETY: as above; `file` is a NUL-terminated path made before the fork.
            unsafe {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe calls (see above) and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
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

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = Some(Path::new("/home/u"));
        assert_eq!(expand_tilde("~/Documents", home), OsString::from("/home/u/Documents"));
        assert_eq!(expand_tilde("~", home), OsString::from("/home/u"));
        assert_eq!(expand_tilde("~other/x", home), OsString::from("~other/x"));
        assert_eq!(expand_tilde("a~/b", home), OsString::from("a~/b"));
        assert_eq!(expand_tilde("$HOME/x", home), OsString::from("$HOME/x"));
    }
}
