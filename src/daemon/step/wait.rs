//! A step's end: its output read beside the wait (into the log, the output file, the
//! follow feed and the run's tail), its exit status decided as `set -o pipefail` would, and
//! its processes stopped at the timeout or at shutdown.
//!
//! A step ends when every process of it is gone: a main process that exits while children
//! it started keep running (`cmd &`, `setsid`) is waited for until they end, or until the
//! timeout stops them, and the record says so unless they ended within a short grace
//! (restic's `rclone` child ends just after restic: it was not left behind). A timeout
//! sends SIGINT to the step's main process alone (restic then removes its lock, through an
//! `rclone:` or `sftp:` backend that a SIGINT to the whole group would have killed at the
//! same moment; restic 0.14 does not remove it on SIGTERM), then SIGINT, SIGTERM and
//! SIGKILL to every process of the run, the task's `kill_grace` apart; shutdown does the
//! same within `shutdown_grace`.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::contain::{RunProcs, Search, Stage, Target, timeout_plan};
use super::spawn::Started;
use super::tally::describe_exit;
use super::{Budgets, Found, MAX_LISTING, Runner, StepCall, StepEnd, StepError, Tail};
use crate::daemon::output;
use crate::time::Took;

/// How often a step whose main process has ended checks whether the rest of it has.
const LEFTOVER_POLL: Duration = Duration::from_millis(200);
/// How long processes outliving the main process may take to end on their own before they
/// count as left behind: restic's own `rclone` child ends within a second after restic.
const LEFTOVER_GRACE: Duration = Duration::from_millis(1500);
/// How often they are checked during that grace, so a step is not held longer than needed.
const GRACE_POLL: Duration = Duration::from_millis(50);
/// How long output is still read after the step's processes ended: a background process
/// may keep the pipes open.
const READ_AFTER_END: Duration = Duration::from_secs(2);

/// The stages' waits, and what decides the step once they are over.
pub(super) struct Running {
    pub(super) stages: Vec<JoinHandle<std::io::Result<ExitStatus>>>,
    pub(super) pgid: Pid,
    pub(super) programs: Vec<String>,
    /// Why not every stage started, if one did not.
    pub(super) failed: Option<StepError>,
    /// The machine's count of OOM kills before the stages started.
    pub(super) oom_before: Option<u64>,
}

/// How the step's processes are stopped: at its timeout, and at shutdown.
struct Plans {
    timeout: [Stage; 4],
    shutdown: [Stage; 4],
}

impl Runner {
    /// Reads the started step's output and waits for its end; `found` gets what its restic
    /// steps reported.
    pub(super) async fn wait(
        &self,
        call: &StepCall<'_>,
        started: Started,
        programs: Vec<String>,
        (tail, budgets): (&mut Tail, &mut Budgets),
        mut found: Option<Found<'_>>,
    ) -> StepEnd {
        let Started { children, pgid, failed, stdout, stderr, oom_before } = started;
        let running =
            Running { stages: self.reap_each(children), pgid, programs, failed, oom_before };
        let stage_count = running.stages.len();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        // The output is read on this task, beside the wait: the tail stays a plain value.
        let mut restic = crate::restic::Reader::new(call.index + 1);
        // A snapshot list or a forget answer is one long line (also a forget's listings).
        let lists = call.step.command.iter().any(|a| a == "forget" || a == "snapshots");
        if lists || call.task.audit.is_some() {
            restic.line_limit = MAX_LISTING;
        }
        restic.nodes = found.as_mut().and_then(|f| f.listings.nodes.take());
        let streams = (stdout, stderr);
        let pumps = pump(call, streams, (tail, budgets), &mut restic, ended_rx);
        let (end, ()) = tokio::join!(self.wait_processes(call, running, ended_tx), pumps);
        output::progress_passed_over(&restic);
        if let Some(found) = found {
            // A snapshot from a step that failed (a dump that broke, a timeout) is what
            // restic got, not a whole backup.
            let whole = matches!(&end, StepEnd::Exited(st, _, warnings_apply)
                if st.success()
                    || *warnings_apply
                        && st.code().is_some_and(|c| call.task.warning_exit_codes.contains(&c)));
            for summary in &mut restic.summaries {
                summary.partial = !whole;
            }
            collect(call, &mut restic, found);
        }
        if let StepEnd::Exited(st, ..) = &end {
            let stages =
                if stage_count > 1 { format!(" ({stage_count} stages)") } else { String::new() };
            let pid = pgid.as_raw() as u32;
            info!(step = call.index + 1, pid, "process ended{stages}: {}", describe_exit(*st));
        }
        end
    }

    /// Waits for every stage, then for what they left behind; stops them all at the
    /// deadline or at shutdown. Tells the output readers when the processes are over.
    async fn wait_processes(
        &self,
        call: &StepCall<'_>,
        running: Running,
        ended: oneshot::Sender<()>,
    ) -> StepEnd {
        let Running { stages, pgid, programs, failed, oom_before } = running;
        let procs = call.procs;
        let plans = self.plans(call);
        let pid = pgid.as_raw() as u32;
        let mut all = std::pin::pin!(wait_all(stages));
        let first = tokio::select! {
            statuses = &mut all => decide(statuses, &programs, failed),
            () = sleep_until(call.deadline) => {
                warn!(pid, "timeout reached; stopping the step's processes (SIGINT, then SIGTERM, then SIGKILL)");
                let how = stop(procs, pgid, &plans.timeout).await;
                let _ = all.await;
                Err(StepEnd::TimedOut(how))
            },
            () = call.cancel.cancelled() => {
                info!(pid, "daemon stopping; sending SIGINT to the step's processes");
                stop(procs, pgid, &plans.shutdown).await;
                let _ = all.await;
                Err(StepEnd::Cancelled)
            },
        };
        let end = match first {
            Ok((status, note, last_decides)) => {
                let note = join_notes(note, out_of_memory(status, procs, oom_before));
                match self.leftovers(status, call, pgid, &plans).await {
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
        let _ = ended.send(());
        end
    }

    /// The timeout's stages, `kill_grace` apart. Shutdown's: restic gets `kill_grace` (at
    /// most half of `shutdown_grace`) after its SIGINT, the rest of `shutdown_grace` is split
    /// between SIGINT to every process and SIGTERM, and SIGKILL comes once it has passed.
    fn plans(&self, call: &StepCall<'_>) -> Plans {
        let grace = call.task.kill_grace;
        let first = grace.min(self.shutdown_grace / 2);
        let rest = self.shutdown_grace.saturating_sub(first) / 2;
        Plans {
            timeout: timeout_plan(grace),
            shutdown: [
                (Target::MainAndRestic, Signal::SIGINT, first),
                (Target::All, Signal::SIGINT, rest),
                (Target::All, Signal::SIGTERM, rest),
                (Target::All, Signal::SIGKILL, grace),
            ],
        }
    }

    /// After a step's main process exited: waits for the processes it left behind, until
    /// they end, the deadline (which stops them) or shutdown. Those that end within
    /// [`LEFTOVER_GRACE`] were not left behind: the step ends without a note.
    async fn leftovers(
        &self,
        status: ExitStatus,
        call: &StepCall<'_>,
        pgid: Pid,
        plans: &Plans,
    ) -> StepEnd {
        let procs = call.procs;
        let gone = || procs.all_gone(Some(pgid), || self.broker.active());
        // The common case (nothing left) costs one signal-0 and, with a cgroup, one read.
        if gone() {
            return StepEnd::Exited(status, None, true);
        }
        let main = format!("the main process ended ({})", describe_exit(status));
        let began = Instant::now();
        // "1 process it left behind", once the grace has passed (or the step must stop).
        let mut them: Option<String> = None;
        let them_now = || self.left_behind(call, pgid);
        loop {
            let poll = if them.is_some() { LEFTOVER_POLL } else { GRACE_POLL };
            tokio::select! {
                () = tokio::time::sleep(poll) => {
                    if gone() {
                        let note = them.map(|them| format!("the {them} ended {} later", Took(began.elapsed())));
                        return StepEnd::Exited(status, note, true);
                    }
                    if them.is_none() && began.elapsed() >= LEFTOVER_GRACE {
                        let said = them.insert(them_now());
                        let until = if call.deadline.is_some() { ", or at the timeout" } else { "" };
                        info!(
                            pgid = pgid.as_raw(),
                            "{main}; waiting for the {said}: the step ends when they do{until}"
                        );
                    }
                }
                () = sleep_until(call.deadline) => {
                    let them = them.unwrap_or_else(them_now);
                    warn!(pgid = pgid.as_raw(), "timeout reached; stopping the {them} (SIGINT, then SIGTERM, then SIGKILL)");
                    // The main process is gone: its stages are passed over.
                    let how = stop(procs, pgid, &plans.timeout).await;
                    return StepEnd::TimedOut(format!("{main}, but the {them} had not; leftovers killed: {how}"));
                }
                () = call.cancel.cancelled() => {
                    let them = them.unwrap_or_else(them_now);
                    info!(pgid = pgid.as_raw(), "daemon stopping; sending SIGINT to the {them}");
                    stop(procs, pgid, &plans.shutdown).await;
                    return StepEnd::Cancelled;
                }
            }
        }
    }

    /// "1 process it left behind", "500 processes it left behind".
    fn left_behind(&self, call: &StepCall<'_>, pgid: Pid) -> String {
        let members = call.procs.members(Some(pgid), Search::Adopted, &self.broker.active());
        match members.len().max(1) {
            1 => "1 process it left behind".to_string(),
            count => format!("{count} processes it left behind"),
        }
    }
}

/// Reads the step's stdout (through restic's reader) and stderr (into the run's tail) until
/// they end, or [`READ_AFTER_END`] after the processes did.
async fn pump(
    call: &StepCall<'_>,
    (stdout, stderr): (Option<tokio::process::ChildStdout>, super::spawn::Stderr),
    (tail, budgets): (&mut Tail, &mut Budgets),
    restic: &mut crate::restic::Reader,
    ended: oneshot::Receiver<()>,
) {
    // In the output file, a hook's streams are `before.stdout` and so on.
    let label = |stream: &str| call.hook.map_or(stream.to_string(), |h| format!("{h}.{stream}"));
    let (out_label, err_label) = (label("stdout"), label("stderr"));
    let sinks = call.output;
    let out = async {
        if let Some(s) = stdout {
            let file = (sinks, out_label.as_str());
            output::pump(s, "stdout", None, &mut budgets.stdout, file, Some(restic)).await;
        }
    };
    let err = async {
        if let Some(s) = stderr {
            let file = (sinks, err_label.as_str());
            output::pump(s, "stderr", Some(tail), &mut budgets.stderr, file, None).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(out, err) } => {}
        () = async { let _ = ended.await; tokio::time::sleep(READ_AFTER_END).await } => {}
    }
}

/// What a step's restic printed, into the run's results: snapshots it saved, the last
/// snapshot list, and what a `forget` removed (a dry run removes nothing).
fn collect(call: &StepCall<'_>, restic: &mut crate::restic::Reader, found: Found<'_>) {
    for summary in &restic.summaries {
        let step = call.index + 1;
        if summary.unchanged {
            info!(step, "restic made no snapshot: nothing changed since its parent (unchanged)");
        } else if summary.partial {
            warn!(step, snapshot = %summary.snapshot_id, "restic saved a snapshot, but the step failed: recorded as partial");
        } else {
            info!(step, snapshot = %summary.snapshot_id, "restic saved a snapshot");
        }
    }
    found.backups.append(&mut restic.summaries);
    found.listings.nodes = restic.nodes.take();
    if restic.stats.is_some() {
        found.listings.stats = restic.stats.take();
    }
    if restic.listed.is_some() {
        found.listings.listed = restic.listed.take();
    }
    if !call.step.command.iter().any(|a| a == "--dry-run" || a == "-n") {
        found.listings.removed.append(&mut restic.removed);
    }
}

/// Every stage's exit status, in stage order.
async fn wait_all(
    waits: Vec<JoinHandle<std::io::Result<ExitStatus>>>,
) -> Vec<std::io::Result<ExitStatus>> {
    let mut statuses = Vec::with_capacity(waits.len());
    for w in waits {
        statuses.push(match w.await {
            Ok(status) => status,
            Err(e) => Err(std::io::Error::other(e)),
        });
    }
    statuses
}

/// The exit status that decides a step (the pipeline's, as with `set -o pipefail`: the last
/// stage that failed, else the last stage), with a note naming the failed stages and
/// whether the last stage decided; or why the step did not run whole (`not_started`).
fn decide(
    statuses: Vec<std::io::Result<ExitStatus>>,
    programs: &[String],
    not_started: Option<StepError>,
) -> Result<(ExitStatus, Option<String>, bool), StepEnd> {
    // Started last first: a stage that could not start leaves the earlier ones unstarted.
    let offset = programs.len() - statuses.len();
    let mut decided = None;
    let mut decided_by = 0;
    let mut failures = Vec::new();
    for (i, status) in statuses.into_iter().enumerate() {
        let status = status.map_err(|e| StepEnd::NotStarted(StepError::Wait(e)))?;
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
    let status = decided.ok_or(StepEnd::NotStarted(StepError::NothingStarted))?;
    let note = (!failures.is_empty()).then(|| failures.join(", "));
    Ok((status, note, decided_by + 1 == programs.len()))
}

/// What to say of a process killed by SIGKILL when the kernel's out-of-memory killer did
/// it: its run's cgroup counted a kill; or, where the cgroup cannot tell (no memory
/// controller, no cgroup), the machine's count of OOM kills grew while the step ran
/// (`oom_before`), which makes it all but certain.
fn out_of_memory(status: ExitStatus, procs: &RunProcs, oom_before: Option<u64>) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGKILL) {
        return None;
    }
    let killed = match procs.oom_kills() {
        Some(kills) => kills > 0,
        None => matches!((oom_before, crate::sys::proc::oom_kills()), (Some(a), Some(b)) if b > a),
    };
    killed.then(|| "out of memory: the kernel's OOM killer ended it".to_string())
}

fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
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
