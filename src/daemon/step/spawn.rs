//! Starting a step's processes: its commands (a pinned program run from the sealed copy that
//! was checked; a leading `~/` expanded and nothing else, no shell), the pipes of a pipeline
//! (one between each two stages, one stderr the stages share), each process made part of
//! the run before it execs, and a fresh token for each (none for a plain hook).
//!
//! The stages are started last first: the last leads the process group, so it is alive
//! (waiting for its input) when the earlier stages join the group; it gets the timeout's
//! first SIGINT (normally restic). A stage that cannot start leaves the earlier ones
//! unstarted; the ones started run to their end.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use nix::unistd::Pid;
use tokio::process::{Child, ChildStdout, Command};
use tracing::{info, warn};

use super::contain::RunProcs;
use super::{Runner, StepCall, StepEnd, StepEnv, StepError, sealed};
use crate::broker::Handle;
use crate::config::Task;
use crate::daemon::host::children::{self, Owned};
use crate::trust::expand_tilde;

/// A step's commands, ready to spawn.
pub(super) struct Prepared {
    /// In stage order.
    pub(super) commands: Vec<Command>,
    /// The images the stages run from ([`sealed`]); kept open until they have started.
    images: sealed::Images,
    plumbing: Plumbing,
    /// Each stage's program, as the log names it.
    pub(super) programs: Vec<String>,
}

/// The step's stderr as it is read: the pipe the stages share, or the one stage's own.
pub(super) type Stderr = Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>;

/// One started stage: the child, its token's handle, and its registration as a child the
/// step reaps itself.
pub(super) type Stage = (Child, Option<Handle>, Owned);

/// A step's processes once started.
pub(super) struct Started {
    /// The stages that started, in stage order, each with its token's handle.
    pub(super) children: Vec<Stage>,
    /// The group every stage is in, led by the last stage.
    pub(super) pgid: Pid,
    /// Why not every stage started, if one did not.
    pub(super) failed: Option<StepError>,
    pub(super) stdout: Option<ChildStdout>,
    pub(super) stderr: Stderr,
    /// The machine's count of OOM kills before the stages started (see `wait`).
    pub(super) oom_before: Option<u64>,
}

impl Runner {
    /// The step's commands with their environment, working directory, pipes and set-up.
    pub(super) async fn commands(
        &self,
        call: &StepCall<'_>,
        env: &StepEnv,
    ) -> Result<Prepared, StepEnd> {
        let stages = call.step.stages();
        let piped = stages.len() > 1;
        let images = self.images(call, env).await?;
        let home = self.home.as_deref();
        // The sealed `secretbox` goes only to stages that run sealed themselves: a process
        // run from disk is readable by the user's other processes, who could reach the
        // image through its descriptors and make it readable (its owner is their uid).
        let handed = self.secretbox_for(call);
        let secretbox: Vec<_> =
            images.iter().map(|image| handed.filter(|_| image.program.is_some())).collect();
        let image_paths: Vec<Option<String>> =
            secretbox.iter().map(|s| s.map(crate::trust::SecretboxImage::path)).collect();
        let mut commands = Vec::with_capacity(stages.len());
        for ((argv, image), image_path) in stages.iter().zip(&images).zip(&image_paths) {
            let mut cmd = sealed::command(argv, image.program.as_ref(), home);
            let backend = image.backend.as_ref().map(sealed::path);
            cmd.args(sealed::args(argv, (image_path.as_deref(), backend.as_deref()), home));
            commands.push(cmd);
        }
        // The pipes between stages, and one stderr the stages share (a line written by one
        // `write` stays whole). Close-on-exec: each child gets only the ends it is given.
        let plumbing = if piped { Plumbing::new(stages.len()) } else { Ok(Plumbing::default()) };
        let mut plumbing =
            plumbing.map_err(|e| StepEnd::NotStarted(StepError::Pipes { source: e }))?;
        for (i, cmd) in commands.iter_mut().enumerate() {
            cmd.env_clear()
                .envs(
                    env.iter()
                        .map(|(k, v)| (k, sealed::env_value(k, v, image_paths[i].as_deref()))),
                )
                .env("BACKUPNIZZA_TASK", &call.task.name)
                .env("BACKUPNIZZA_RUN_ID", call.run_id)
                .envs(call.facts.iter().map(|(k, v)| (k, v)))
                .kill_on_drop(true);
            if piped {
                cmd.env("BACKUPNIZZA_STAGE", (i + 1).to_string());
            }
            if let Some(dir) = &call.task.working_dir {
                cmd.current_dir(dir);
            }
            // A hook (or a listing around a forget) never holds it.
            let read_all = call.hook.is_none() && call.step.reads_all(stages[i]);
            let keep_open = [
                secretbox[i].map(crate::trust::SecretboxImage::raw_fd),
                images[i].backend.as_ref().map(sealed::raw_fd),
            ];
            set_up_child(cmd, call.procs, call.task, (read_all, keep_open));
        }
        plumbing.connect(&mut commands).map_err(|e| StepEnd::NotStarted(StepError::Connect(e)))?;
        let programs = stages
            .iter()
            .map(|a| expand_tilde(&a[0], home).to_string_lossy().into_owned())
            .collect();
        Ok(Prepared { commands, images, plumbing, programs })
    }

    /// Starts the stages, last first, each with a token of its own (a process without a
    /// scope, a plain hook, gets neither a token nor the socket: the socket is useless to
    /// it, and `secretbox` then says plainly that it got no token). `None` when no stage
    /// started (and why).
    pub(super) fn spawn(
        &self,
        call: &StepCall<'_>,
        commands: Prepared,
    ) -> Result<Started, StepError> {
        let Prepared { mut commands, images, mut plumbing, programs } = commands;
        let oom_before = crate::sys::proc::oom_kills();
        let mut children: Vec<Option<Stage>> = (0..commands.len()).map(|_| None).collect();
        let mut pgid: Option<Pid> = None;
        let mut failed = None;
        for i in (0..commands.len()).rev() {
            let mut cmd = std::mem::replace(&mut commands[i], Command::new("/"));
            cmd.process_group(pgid.map_or(0, Pid::as_raw));
            match self.spawn_stage(call, cmd, i, &programs) {
                Ok(stage) => {
                    let pid = stage.0.id().unwrap_or_default();
                    pgid.get_or_insert(Pid::from_raw(pid as i32));
                    children[i] = Some(stage);
                }
                Err(why) => {
                    failed = Some(why);
                    break;
                }
            }
        }
        drop(images);
        // Our copies of the pipes' ends: the stages hold their own now.
        let shared_stderr = plumbing.finish();
        let Some(pgid) = pgid else { return Err(failed.unwrap_or(StepError::NothingStarted)) };
        let mut children: Vec<Stage> = children.into_iter().flatten().collect();
        let stdout = children.last_mut().and_then(|(c, ..)| c.stdout.take());
        let own_stderr = if shared_stderr.is_none() { children[0].0.stderr.take() } else { None };
        if let Some(guardian) = &self.guardian {
            let pipes: Vec<_> = [
                stdout.as_ref().map(AsFd::as_fd),
                shared_stderr.as_ref().map(AsFd::as_fd),
                own_stderr.as_ref().map(AsFd::as_fd),
            ]
            .into_iter()
            .flatten()
            .collect();
            guardian.watch(pgid.as_raw() as u32, call.procs, &pipes, call.task.kill_grace);
        }
        let stderr: Stderr = match shared_stderr {
            Some(rx) => Some(Box::new(rx)),
            None => own_stderr.map(|s| Box::new(s) as _),
        };
        Ok(Started { children, pgid, failed, stdout, stderr, oom_before })
    }

    /// Mints stage `i`'s token (if it has a scope) and spawns it. The command holds the
    /// token's only other copy, wiped when it is dropped here, spawned or not.
    fn spawn_stage(
        &self,
        call: &StepCall<'_>,
        mut cmd: Command,
        i: usize,
        programs: &[String],
    ) -> Result<Stage, StepError> {
        let task = call.task;
        let handle = match call.scope {
            Some(scope) => {
                let scope: Vec<Arc<str>> = scope.iter().map(|s| Arc::from(s.as_str())).collect();
                let task_name: Arc<str> = Arc::from(task.name.as_str());
                let (token, handle) = self
                    .broker
                    .mint(&task_name, &scope, task.redeem_limit)
                    .map_err(StepError::Mint)?;
                cmd.env("SECRETBOX_SOCKET", &self.socket).env("SECRETBOX_TOKEN", token.expose());
                if let Some(id) = &self.server_id {
                    cmd.env("SECRETBOX_DAEMON", id);
                }
                Some(handle)
            }
            None => None,
        };
        let spawning = children::spawning();
        let spawned = cmd.spawn();
        drop(cmd);
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                if let Some(handle) = handle {
                    self.broker.reaped(handle, None);
                }
                let stage = (programs.len() > 1).then_some((i + 1, programs.len()));
                let why = StepError::Spawn { program: programs[i].clone(), stage, source };
                warn!("{why}");
                return Err(why);
            }
        };
        let pid = child.id().unwrap_or_default();
        let owned = spawning.started(pid);
        let step = call.index + 1;
        if let Some(handle) = handle {
            self.broker.started(handle, pid);
            info!(step, pid, token = %handle.fingerprint(), program = %programs[i], "started process with a one-time token");
        } else {
            self.broker.started_without_token(pid);
            info!(step, pid, program = %programs[i], "started process without a token");
        }
        Ok((child, handle, owned))
    }

    /// Waits for each stage on a task of its own, so each stage's token dies as soon as its
    /// process is reaped, whatever the others do.
    pub(super) fn reap_each(
        &self,
        children: Vec<Stage>,
    ) -> Vec<tokio::task::JoinHandle<std::io::Result<ExitStatus>>> {
        children
            .into_iter()
            .map(|(mut child, handle, owned)| {
                let broker = self.broker.clone();
                let pid = child.id().unwrap_or_default();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    match handle {
                        Some(handle) => broker.reaped(handle, Some(pid)),
                        None => broker.reaped_without_token(pid),
                    }
                    drop(owned);
                    status
                })
            })
            .collect()
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
    fn connect(&mut self, commands: &mut [Command]) -> std::io::Result<()> {
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
/// parent-death signal on Linux, so it does not outlive a daemon that died, the read-all
/// capability of system mode where the step needs it (`read_all`), and the task's
/// `nice:` and `io:` (set in the child, so the program itself is what runs: no `nice`
/// wrapper in front of restic, so its pin and its exit codes stay its own).
fn set_up_child(
    cmd: &mut Command,
    procs: &RunProcs,
    task: &Task,
    (read_all, keep_open): (bool, [Option<i32>; 2]),
) {
    let setup = crate::sys::exec::ChildSetup {
        keep_open,
        join_cgroup: procs.join_file(),
        parent_death_signal: true,
        nice: task.nice,
        ioprio: task.io.map(crate::config::IoClass::ioprio),
        read_all,
    };
    crate::sys::exec::set_up_before_exec(cmd, setup);
}
