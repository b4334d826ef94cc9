//! A verifier's run (`verify:`): instead of steps, the daemon proves that the newest
//! snapshot each named task saved (the snapshot ledger says which) restores.
//!
//! - the **spot check** ([`spot`]) restores a random sample of the snapshot's files (the
//!   seed in the record) into a private directory ([`scratch`]) and compares each with the
//!   source file, when the source's size and modification time are still the snapshot's;
//! - **canaries** are files whose content must be the same in the newest snapshot as in the
//!   one before (ransomware that encrypts a canary changes it);
//! - the **data check** reads subset `n/K` of the repository's data ([`rotation`]);
//! - the **drill** ([`drill`]) restores the whole snapshot and counts what it got.
//!
//! Every restic command runs as a step of the task would (its `PATH`, environment, a token
//! for its secrets, its timeout); the run's timeout or the daemon's stop ends the run where
//! it is, and what was restored is wiped either way. Each failed check is a problem in the
//! record (paths through the redactor, cut) and fails the run.

mod drill;
pub(crate) mod rotation;
pub(crate) mod scratch;
mod spot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{error, info};

use super::{Outcome, Run};
use crate::config::Verify;
use crate::daemon::step::Runner;
use crate::daemon::step::call::{Call, CallEnd, Called};
use crate::history::Verification;
use crate::protocol::RunStatus;
use crate::restic::Snapshot;

/// At most this many problems are recorded (the rest are counted).
const MAX_PROBLEMS: usize = 20;
/// A problem's sentence is cut here (a path may be long).
const MAX_PROBLEM: usize = 400;

/// A task's snapshot to verify, and the one before it (for the canaries).
pub(super) struct Target {
    task: String,
    newest: Snapshot,
    previous: Option<Snapshot>,
    /// The canaries under its paths.
    canaries: Vec<PathBuf>,
}

/// One verification in progress.
pub(super) struct Verifier<'a> {
    runner: &'a Runner,
    call: Call<'a>,
    run_id: &'a str,
    state_dir: &'a Path,
    /// The daemon's zone, for times in records.
    zone: &'a jiff::tz::TimeZone,
    /// On tmpfs: where spot checks restore when they fit.
    runtime_root: PathBuf,
    /// On disk: drills, and spot checks too large for the runtime directory.
    disk_root: PathBuf,
    record: Verification,
    /// More problems than were recorded.
    dropped: usize,
    /// The run's timeout or the daemon's stop ended a command: nothing more starts.
    stopped: Option<(RunStatus, String)>,
    /// The stderr tail of the last command that failed.
    tail: Vec<String>,
    /// restic 0.17 or later: `restore --include-file` and `--verify`.
    modern: bool,
}

impl Run<'_> {
    /// The verification, to the run's outcome.
    pub(super) async fn verify(&self, spec: &Verify, deadline: Option<Instant>) -> Outcome {
        let began = Instant::now();
        let call = Call {
            task: self.task,
            run_id: &self.job.run_id,
            procs: &self.procs,
            deadline,
            cancel: &self.ctx.cancel,
            output: self.sinks(),
        };
        let runner = &self.ctx.runner;
        let state_dir = &self.ctx.config.state_dir;
        let mut v = Verifier {
            runner,
            call,
            run_id: &self.job.run_id,
            state_dir,
            zone: &self.ctx.zone,
            runtime_root: scratch::runtime_root(&runner.secret_files),
            disk_root: scratch::disk_root(state_dir, spec.scratch.as_deref()),
            record: Verification {
                seed: spec.seed.unwrap_or_else(rand::random),
                ..Verification::default()
            },
            dropped: 0,
            stopped: None,
            tail: Vec::new(),
            modern: restic_is_modern(runner, self.task).await,
        };
        info!(seed = v.record.seed, "verifying the newest snapshots of {}", spec.tasks.join(", "));
        let targets = self.targets(spec, &mut v).await;
        for target in &targets {
            v.record.snapshots.push(format!("{}:{}", target.task, short(&target.newest.id)));
            v.spot(target, spec.sample).await;
        }
        if let Some(k) = spec.check_subset {
            v.data_check(k).await;
        }
        if spec.drill {
            for target in &targets {
                v.drill(target).await;
            }
        }
        v.outcome(began)
    }

    /// Each named task's newest whole snapshot in the ledger that the repository still
    /// lists, with the one before it; a task without one is a problem.
    async fn targets(&self, spec: &Verify, v: &mut Verifier<'_>) -> Vec<Target> {
        let (_, loaded) = self.ctx.ledger.append_and_load(Vec::new()).await;
        let ledger = match loaded {
            Ok(ledger) => ledger,
            Err(e) => {
                v.problem(format!("cannot read the snapshot ledger: {e}"));
                return Vec::new();
            }
        };
        let Some(listed) = v.list().await else { return Vec::new() };
        let find = |id: &str| listed.iter().find(|s| s.id.starts_with(id)).cloned();
        let mut targets = Vec::new();
        for task in &spec.tasks {
            let recorded = ledger.whole_snapshots(task);
            let Some((newest_id, at)) = recorded.first() else {
                v.problem(format!("task {task:?} has no whole snapshot in the snapshot ledger yet: nothing to verify until it has run"));
                continue;
            };
            let Some(newest) = find(newest_id) else {
                v.problem(format!("the newest snapshot of task {task:?}, {} (recorded {at}), is not in the repository (run an audit to learn why)", short(newest_id)));
                continue;
            };
            let previous = recorded[1..].iter().find_map(|(id, _)| find(id));
            targets.push(Target { task: task.clone(), newest, previous, canaries: Vec::new() });
        }
        let all_found = targets.len() == spec.tasks.len();
        for canary in &spec.canaries {
            match targets.iter_mut().find(|t| spot::under_any(canary, &t.newest.paths)) {
                Some(t) => t.canaries.push(canary.clone()),
                None if all_found => v.problem(format!(
                    "canary {} is not under the paths of any verified snapshot",
                    canary.display()
                )),
                // Its task's snapshot is missing: that problem is said already.
                None => {}
            }
        }
        targets
    }
}

impl Verifier<'_> {
    /// Runs `restic ARGS...`; `None` when it did not run to an exit (the run's timeout or
    /// the daemon's stop, which end the verification, or a failure to start it).
    async fn restic(
        &mut self,
        label: &str,
        args: Vec<String>,
        nodes: Option<crate::restic::ls::Sampler>,
    ) -> Option<Called> {
        if self.stopped.is_some() {
            return None;
        }
        let called = self.runner.restic(self.call, label, args, nodes).await;
        match &called.end {
            CallEnd::Exited(..) => return Some(called),
            CallEnd::TimedOut(how) => {
                let took = self.call.task.timeout.map(crate::time::Human);
                let after = took.map(|t| format!(" after {t}")).unwrap_or_default();
                self.stopped =
                    Some((RunStatus::Timeout, format!("timed out{after} ({label}); {how}")));
            }
            CallEnd::Cancelled => {
                self.stopped = Some((RunStatus::Cancelled, "the daemon is stopping".into()));
            }
            CallEnd::NotStarted(why) => self.problem(format!("{label}: {why}")),
        }
        self.tail = called.tail;
        None
    }

    /// Runs `restic ARGS...` for `what` (a check, said in the problem when it fails);
    /// `Some` only when it exited 0.
    async fn restic_ok(
        &mut self,
        what: &str,
        label: &str,
        args: Vec<String>,
        nodes: Option<crate::restic::ls::Sampler>,
    ) -> Option<Called> {
        let called = self.restic(label, args, nodes).await?;
        if called.end.success() {
            return Some(called);
        }
        let CallEnd::Exited(_, how) = &called.end else { return None };
        let last = called.tail.last().map(|l| format!(": {l}")).unwrap_or_default();
        self.problem(format!("{what} failed: restic {how}{last}"));
        self.tail = called.tail;
        None
    }

    /// The repository's snapshots.
    async fn list(&mut self) -> Option<Vec<Snapshot>> {
        let args = vec!["snapshots".into(), "--json".into(), "--no-lock".into()];
        let called = self
            .restic_ok("listing the repository's snapshots", "verify-snapshots", args, None)
            .await?;
        if called.listed.is_none() {
            self.problem("restic printed no snapshot list".into());
        }
        called.listed
    }

    /// The data check: subset `n/K` of the repository's data read back.
    async fn data_check(&mut self, k: u32) {
        let path = rotation::file(self.state_dir, &self.call.task.name);
        let mut place = tokio::task::spawn_blocking({
            let path = path.clone();
            move || rotation::Rotation::load(&path, k)
        })
        .await
        .unwrap_or_default();
        let subset = place.subset();
        info!("data check: reading subset {subset} of the repository's data");
        let args = vec!["check".into(), format!("--read-data-subset={subset}")];
        let what = format!("data check of subset {subset}");
        if self.restic_ok(&what, "verify-check", args, None).await.is_some() {
            place.passed(&crate::time::rfc3339(jiff::Timestamp::now(), self.zone));
            let (kept, file) = (place.clone(), path.clone());
            let saved = tokio::task::spawn_blocking(move || kept.save(&file)).await;
            if let Ok(Err(e)) = saved {
                self.problem(format!(
                    "cannot record the data check's place in {}: {e}",
                    path.display()
                ));
            }
        }
        self.record.subset = Some(subset);
        self.record.cycle_completed = place.cycle_completed;
    }

    /// Records a failed check.
    fn problem(&mut self, text: String) {
        error!("verify: {text}");
        if self.record.problems.len() >= MAX_PROBLEMS {
            self.dropped += 1;
            return;
        }
        self.record.problems.push(crate::daemon::output::cut(&text, MAX_PROBLEM).into_owned());
    }

    /// The run's outcome: stopped, failed (every problem in the reason), or a summary.
    fn outcome(mut self, began: Instant) -> Outcome {
        if self.dropped > 0 {
            self.record.problems.push(format!("and {} more problems (see the log)", self.dropped));
        }
        let summary = summary(&self.record);
        let (status, reason) = match (self.stopped.take(), self.record.problems.is_empty()) {
            (Some((status, why)), _) => (status, format!("{why}; verified so far: {summary}")),
            (None, true) => (RunStatus::Success, format!("verified: {summary}")),
            (None, false) => (
                RunStatus::Failed,
                format!("verification failed: {}", self.record.problems.join("; ")),
            ),
        };
        let mut outcome = Outcome::early(status, None, reason);
        if status == RunStatus::Success {
            outcome.exit_code = Some(0);
        }
        outcome.stderr_tail = self.tail;
        outcome.duration = began.elapsed();
        outcome.verification = Some(self.record);
        outcome
    }
}

/// What was verified, in a sentence.
fn summary(v: &Verification) -> String {
    let mut parts = vec![format!(
        "{} snapshot{}, {} of {} sampled files matched ({} skipped: changed since)",
        v.snapshots.len(),
        if v.snapshots.len() == 1 { "" } else { "s" },
        v.matched,
        v.sampled,
        v.skipped
    )];
    if v.canaries > 0 {
        parts.push(format!("{} canaries unchanged", v.canaries));
    }
    if let Some(subset) = &v.subset {
        parts.push(format!("data subset {subset} read"));
    }
    if let Some(d) = &v.drill {
        parts.push(format!("drill restored {} files, {} bytes", d.files, d.bytes));
    }
    parts.join(", ")
}

/// restic's short id.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Whether the `restic` the task's `PATH` finds is 0.17 or later (`restore --include-file`
/// and `--verify`); `false` when it cannot be told.
async fn restic_is_modern(runner: &Runner, task: &crate::config::Task) -> bool {
    let path = runner.path_for(task);
    let probe = tokio::process::Command::new("restic")
        .arg("version")
        .env_clear()
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(Ok(out)) = tokio::time::timeout(std::time::Duration::from_secs(10), probe).await else {
        return false;
    };
    crate::restic::version(&String::from_utf8_lossy(&out.stdout)).is_some_and(|(_, n)| n >= (0, 17))
}
