//! One run of a task, in named phases: the random delay, the Start record and start
//! notification, the `before` hook, the steps, the result hooks, and the end (log line, End
//! record, end notification, and the [`Event::Ended`] that tells the state owner).
//!
//! A run holds the daemon's immutable context ([`RunContext`]) and talks back only by
//! sending events; it never touches the task or run tables, which belong to the state owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::contain::RunProcs;
use super::locks::{Held, Locks, Taken};
use super::notifications::{self, RunFacts, Sent};
use super::output::Sinks;
use super::output_file::{OutputWriter, RunOutput};
use super::runner::{HookFailure, Outcome, Runner};
use super::writers::HistoryWriter;
use crate::broker::feed::Feed;
use crate::config::{Config, Task};
use crate::history::Record;
use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;
use crate::trust::Pinned;

/// Most of the stderr tail a hook gets in `BACKUPNIZZA_STDERR_TAIL`.
const MAX_TAIL_ENV: usize = 32 * 1024;

/// "1 recorded snapshot", "2 recorded snapshots".
fn snapshots(n: usize) -> String {
    format!("{n} recorded snapshot{}", if n == 1 { "" } else { "s" })
}

/// Longest `restic unlock` (unlock_stale) runs when the task has no `timeout`.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A `before` hook exiting with this (EX_TEMPFAIL) skips the run, as in borgmatic.
const SKIP_EXIT_CODE: i32 = 75;

/// What every run shares, immutable for the daemon's life.
pub(crate) struct RunContext {
    pub(crate) config: Config,
    /// The tasks' `lock:`s.
    pub(crate) locks: Locks,
    /// For each task, each step's pinned program (if pinned).
    pub(crate) pins: Vec<Vec<Option<Pinned>>>,
    pub(crate) runner: Runner,
    pub(crate) history: HistoryWriter,
    /// Writes tasks' `output_file`s; `None` when no task has one.
    pub(crate) outputs: Option<OutputWriter>,
    /// The daemon's zone, for timestamps in records.
    pub(crate) zone: TimeZone,
    /// Cancelled when the daemon begins to stop.
    pub(crate) cancel: CancellationToken,
    /// Back to the state owner.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Notifications in flight, awaited (bounded) at shutdown.
    pub(crate) notifications: tokio_util::task::TaskTracker,
    /// How many suspends the state owner has seen: a run that sees it change slept.
    pub(crate) suspends: tokio::sync::watch::Sender<u64>,
    /// UPower's and NetworkManager's change signals, when some task's `when:` needs them.
    pub(crate) changes: Option<super::changes::Changes>,
}

impl RunContext {
    pub(crate) fn rfc3339(&self, at: Timestamp) -> String {
        crate::time::rfc3339(at, &self.zone)
    }

    /// Sends a run's notifications; `after` orders them behind an earlier event's.
    fn notify(&self, task: &Task, facts: RunFacts, after: Option<Sent>) -> Option<Sent> {
        let notify = task.notify.as_ref().or(self.config.notify.as_ref())?;
        let local = (self.runner.base_env.as_slice(), self.runner.home.as_deref());
        notifications::send(
            notify,
            self.runner.broker.secrets(),
            facts,
            after,
            &self.notifications,
            local,
        )
    }
}

/// What a run tells the state owner.
pub(crate) enum Event {
    /// The run got past its random delay and recorded its start.
    Started { idx: usize, at: Timestamp },
    /// The run waits for its conditions (why, and since when), or no longer does (`None`).
    Deferred { idx: usize, why: Option<String> },
    /// The run is over and its End record is on disk.
    Ended { idx: usize, run_id: String, outcome: Box<Outcome>, ended: Timestamp },
}

/// A run to start.
pub(crate) struct Job {
    pub(crate) idx: usize,
    pub(crate) run_id: String,
    pub(crate) trigger: Trigger,
    pub(crate) occurrence: Option<Timestamp>,
    /// How the task's previous run ended when the daemon stopped it (timeout, shutdown, the
    /// daemon's death): `unlock_stale` then runs `restic unlock` first.
    pub(crate) after_stop: Option<RunStatus>,
    /// When the task last succeeded, for `force_after`.
    pub(crate) last_success: Option<Timestamp>,
    /// A catch-up run right after a resume waits this long first (`resume_settle`).
    pub(crate) settle: Option<Duration>,
}

/// A run in progress.
struct Run<'a> {
    ctx: &'a RunContext,
    task: &'a Task,
    job: Job,
    /// Where the run's processes are.
    procs: RunProcs,
    /// Pairs the start and end notifications.
    rid: String,
    started: Timestamp,
    start_sent: Option<Sent>,
    /// The task's output file for this run (steps and hooks alike).
    output: Option<RunOutput>,
    /// What `trigger --follow` reads.
    feed: Arc<Feed>,
    /// The task's lock, held from before the start to the End record.
    held: Option<Held>,
    /// logind's sleep inhibitor, held from the start to the end of the run.
    inhibitor: Option<super::inhibit::Inhibitor>,
    /// How long the run waited for it.
    lock_wait: Option<crate::history::LockWait>,
    /// How long the run waited for its conditions.
    deferred: Option<crate::history::Deferred>,
}

/// Runs `job` to its end. Every path ends with an End record and [`Event::Ended`].
pub(crate) async fn execute(ctx: Arc<RunContext>, job: Job, feed: Arc<Feed>) {
    let task = &ctx.config.tasks[job.idx];
    let procs = ctx.runner.containment.for_run(&job.run_id);
    let output = match (&ctx.outputs, &task.output_file) {
        (Some(writer), Some(file)) => Some(writer.run(file, &task.name, &job.run_id)),
        _ => None,
    };
    let mut run = Run {
        ctx: &ctx,
        task,
        procs,
        job,
        rid: notifications::new_rid(),
        started: Timestamp::now(),
        start_sent: None,
        output,
        feed,
        held: None,
        inhibitor: None,
        lock_wait: None,
        deferred: None,
    };
    let outcome = run.phases().await;
    run.result_hooks(&outcome).await;
    run.finish(outcome).await;
}

impl Run<'_> {
    async fn phases(&mut self) -> Outcome {
        let suspends = *self.ctx.suspends.borrow();
        let mut outcome = self.phases_inner().await;
        let slept = self.ctx.suspends.borrow().saturating_sub(suspends);
        if slept > 0 && outcome.status != RunStatus::Skipped {
            let times = if slept == 1 { String::new() } else { format!(" {slept} times") };
            warn!("the machine was suspended{times} while this run lasted");
            outcome.reason =
                format!("{}; the machine was suspended{times} during the run", outcome.reason);
        }
        outcome
    }

    async fn phases_inner(&mut self) -> Outcome {
        if let Err(early) = self.before_start().await {
            // Still a Start record, so the occurrence and its early End pair up in
            // `history` and `explain`.
            self.started = Timestamp::now();
            self.write_start();
            return early;
        }
        self.record_start();
        self.inhibit_sleep().await;
        let unlocked = self.unlock_stale().await;
        if let Err(early) = self.before_hook().await {
            return early;
        }
        let mut outcome = self.attempts().await;
        self.ledger(&mut outcome).await;
        if let Some(unlocked) = unlocked {
            outcome.reason = format!("{unlocked}; {}", outcome.reason);
        }
        outcome
    }

    /// The snapshot ledger: what the steps saved and our `forget` removed goes in; for an
    /// audit task, the snapshot list its steps printed is compared with it, and the findings
    /// fail the run.
    async fn ledger(&self, outcome: &mut Outcome) {
        use crate::ledger::{self, Entry};
        let at = self.ctx.rfc3339(Timestamp::now());
        let (task, run_id) = (&self.task.name, &self.job.run_id);
        let mut entries: Vec<Entry> = outcome
            .backups
            .iter()
            .map(|b| Entry::Saved {
                task: task.clone(),
                run_id: run_id.clone(),
                at: at.clone(),
                snapshot_id: b.snapshot_id.clone(),
            })
            .collect();
        entries.extend(outcome.removed.iter().map(|s| Entry::Forgotten {
            task: task.clone(),
            run_id: run_id.clone(),
            at: at.clone(),
            snapshot_id: s.id.clone(),
        }));
        let audit = self.task.audit.clone().filter(|_| outcome.status.is_ok());
        if entries.is_empty() && audit.is_none() {
            return;
        }
        let listed = outcome.listed.take();
        let state_dir = self.ctx.config.state_dir.clone();
        let name = task.clone();
        let done = tokio::task::spawn_blocking(move || {
            ledger::append(&state_dir, &entries)?;
            let (Some(audit), Some(listed)) = (audit, listed) else { return Ok(None) };
            let ledger = ledger::Ledger::load(&state_dir)?;
            let verdict = ledger::audit(
                &ledger,
                &listed,
                &name,
                &audit.tasks,
                audit.max_age,
                Timestamp::now(),
                &at,
            );
            ledger::append(&state_dir, &verdict.entries)?;
            Ok::<_, std::io::Error>(Some(verdict))
        })
        .await;
        let verdict = match done {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                let why = format!(
                    "cannot update the snapshot ledger in {}: {e}",
                    self.ctx.config.state_dir.display()
                );
                error!("{why}");
                if self.task.audit.is_some() && outcome.status.is_ok() {
                    *outcome = Outcome {
                        status: RunStatus::Failed,
                        exit_code: None,
                        reason: why,
                        ..outcome.clone()
                    };
                }
                return;
            }
            Err(e) => {
                error!("the snapshot ledger's update failed: {e}");
                return;
            }
        };
        if self.task.audit.is_none() || !outcome.status.is_ok() {
            return;
        }
        let Some(verdict) = verdict else {
            let why = "audit: the steps printed no snapshot list (the audit's command should be `restic snapshots --json`)";
            error!("{why}");
            outcome.status = RunStatus::Failed;
            outcome.exit_code = None;
            outcome.reason = why.to_string();
            return;
        };
        for finding in &verdict.findings {
            error!(kind = %finding.kind, "audit: {}", finding.detail);
        }
        if verdict.findings.is_empty() {
            info!("audit: clean, {} checked against the ledger", snapshots(verdict.checked));
            outcome.reason =
                format!("{}; audit: clean, {} checked", outcome.reason, snapshots(verdict.checked));
        } else {
            let n = verdict.findings.len();
            let list: Vec<&str> = verdict.findings.iter().map(|f| f.detail.as_str()).collect();
            outcome.status = RunStatus::Failed;
            // No exit code: a ping with `/0` would report success.
            outcome.exit_code = None;
            outcome.reason = format!(
                "audit found {n} problem{}: {}",
                if n == 1 { "" } else { "s" },
                list.join("; ")
            );
        }
        outcome.findings = verdict.findings;
    }

    /// The steps, tried again after a failure as the task's `retry:` says: each attempt is a
    /// fresh start (new tokens, a new timeout). Not tried again: a run that succeeded, was
    /// refused or cancelled, the last attempt, and a restic step's exit code that says
    /// retrying cannot help. The hooks run once, around all attempts.
    async fn attempts(&self) -> Outcome {
        let Some(retry) = &self.task.retry else { return self.steps(None).await };
        let began = Instant::now();
        let mut earlier: Vec<crate::history::Attempt> = Vec::new();
        let mut attempt = 1;
        loop {
            let mut outcome = self.steps(Some(attempt)).await;
            let verdict = retry_verdict(self.task, &outcome);
            let mut last = attempt == retry.attempts || verdict.is_err();
            if let Err(why) = &verdict
                && !matches!(outcome.status, RunStatus::Success | RunStatus::Warning)
            {
                info!(
                    "attempt {attempt} of {} {}: not tried again ({why})",
                    retry.attempts, outcome.status
                );
            }
            if !last {
                let wait = retry.delay_after(attempt);
                warn!(
                    "attempt {attempt} of {} {} ({}); trying again in {}",
                    retry.attempts,
                    outcome.status,
                    outcome.reason,
                    crate::time::Human(wait)
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.ctx.cancel.cancelled() => {
                        outcome.reason.push_str("; not tried again: the daemon is stopping");
                        last = true;
                    }
                }
            }
            if last {
                if attempt > 1 {
                    outcome.reason =
                        format!("attempt {attempt} of {}: {}", retry.attempts, outcome.reason);
                }
                outcome.attempts = earlier;
                outcome.duration = began.elapsed();
                return outcome;
            }
            earlier.push(crate::history::Attempt {
                number: attempt,
                at: self.ctx.rfc3339(Timestamp::now()),
                status: outcome.status,
                exit_code: outcome.exit_code,
                duration_ms: outcome.duration.as_millis() as u64,
                reason: outcome.reason,
            });
            attempt += 1;
        }
    }

    /// What a run waits for before it starts, in order: its random delay, the settling
    /// after a resume, its run conditions, its lock.
    async fn before_start(&mut self) -> Result<(), Outcome> {
        self.random_delay().await?;
        self.settle().await?;
        self.wait_for_conditions().await?;
        self.take_lock().await
    }

    /// How long until this run's occurrence is `max_lateness` late; `None` for a run that
    /// belongs to no occurrence (triggered by hand), which waits as long as it takes.
    fn until_too_late(&self) -> Option<Duration> {
        let occurrence = self.job.occurrence.filter(|_| self.job.trigger != Trigger::Manual)?;
        let late = jiff::SignedDuration::try_from(self.task.max_lateness).unwrap_or_default();
        Some(
            Duration::try_from((occurrence + late).duration_since(Timestamp::now()))
                .unwrap_or_default(),
        )
    }

    /// `random_delay` spreads scheduled runs; manual triggers start at once.
    async fn random_delay(&self) -> Result<(), Outcome> {
        let (Some(max), Trigger::Schedule | Trigger::CatchUp) =
            (self.task.random_delay, self.job.trigger)
        else {
            return Ok(());
        };
        let delay = Duration::from_millis(rand::random_range(
            0..=max.as_millis().min(u128::from(u64::MAX)) as u64,
        ));
        info!("waiting {} before starting (random_delay)", crate::time::Human(delay));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.ctx.cancel.cancelled() => {
                Err(Outcome::early(RunStatus::Cancelled, None, "daemon stopped during random_delay"))
            }
        }
    }

    fn sinks(&self) -> Sinks<'_> {
        Sinks { file: self.output.as_ref(), feed: Some(&self.feed) }
    }

    /// A catch-up run right after a resume waits `resume_settle`, so the network (Wi-Fi,
    /// DNS, a VPN) is back before restic needs it; `when.network` is checked after it.
    async fn settle(&self) -> Result<(), Outcome> {
        let Some(wait) = self.job.settle.filter(|w| !w.is_zero()) else { return Ok(()) };
        info!(
            "waiting {} after the resume before catching up (resume_settle {})",
            crate::time::Human(wait),
            crate::time::Human(self.task.resume_settle)
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.ctx.cancel.cancelled() => Err(Outcome::early(
                RunStatus::Cancelled,
                None,
                "daemon stopped during resume_settle",
            )),
        }
    }

    /// Waits until the task's `when:` holds and no `blackout:` window is on (see
    /// [`conditions`](super::conditions)): at most until the occurrence is `max_lateness`
    /// late (then skipped), or until shutdown. `force_after` lets a run start anyway once
    /// the last success is that old. A run triggered by hand does not wait.
    async fn wait_for_conditions(&mut self) -> Result<(), Outcome> {
        let task = self.task;
        if (task.when.is_empty() && task.blackout.is_empty()) || self.job.trigger == Trigger::Manual
        {
            return Ok(());
        }
        let check = || {
            let (when, blackout) = (task.when.clone(), task.blackout.clone());
            let zone = task.zone.tz.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    super::conditions::unmet(&when, &blackout, &Timestamp::now().to_zoned(zone))
                })
                .await
                .unwrap_or(None)
            }
        };
        // Marked seen before each check, so a signal that comes during one is not lost.
        let mut changes = self.ctx.changes.clone();
        let seen = |changes: &mut Option<super::changes::Changes>| {
            if let Some(c) = changes {
                c.borrow_and_update();
            }
        };
        seen(&mut changes);
        let Some(unmet) = check().await else { return Ok(()) };
        let (mut why, mut signalled) = (unmet.why, unmet.signalled);
        let forced = |why: &str| -> bool {
            let Some(after) = task.force_after else { return false };
            let limit = jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX);
            let old =
                self.job.last_success.is_none_or(|t| Timestamp::now().duration_since(t) >= limit);
            if old {
                warn!(
                    "{why}, but the last success is older than force_after {}: running anyway",
                    crate::time::Human(after)
                );
            }
            old
        };
        if forced(&why) {
            return Ok(());
        }
        let began = Instant::now();
        let since = Timestamp::now().to_zoned(task.zone.tz.clone()).strftime("%H:%M").to_string();
        let late_at = self.until_too_late();
        let late = async {
            match late_at {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(late);
        warn!("deferred: {why}; waiting for the run conditions");
        let _ = self
            .ctx
            .events
            .send(Event::Deferred { idx: self.job.idx, why: Some(format!("{why} since {since}")) });
        loop {
            // A signal wakes the run at once; without one coming, poll.
            let listening =
                signalled.is_some() && changes.as_ref().is_some_and(|c| c.has_changed().is_ok());
            let poll =
                if listening { super::conditions::BACKSTOP } else { super::conditions::POLL };
            let signal = async {
                match changes.as_mut() {
                    Some(c) if listening => match c.changed().await {
                        Ok(()) => *c.borrow(),
                        // The listener is gone (no bus): poll from now on.
                        Err(_) => std::future::pending().await,
                    },
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                Some(source) = signal => {
                    info!("{} signalled a change: checking the run conditions again", source.service());
                }
                () = &mut late => {
                    let waited = crate::time::Human(Duration::from_secs(began.elapsed().as_secs()));
                    let reason = format!("deferred past max_lateness ({why} since {since}, {waited})");
                    warn!("{reason}: skipped");
                    let _ = self.ctx.events.send(Event::Deferred { idx: self.job.idx, why: None });
                    return Err(Outcome::early(RunStatus::Skipped, None, reason));
                }
                () = self.ctx.cancel.cancelled() => {
                    return Err(Outcome::early(RunStatus::Cancelled, None, format!("daemon stopped while deferred ({why})")));
                }
            }
            seen(&mut changes);
            match check().await {
                None => break,
                Some(now) if now.why != why => {
                    info!("still deferred: {}", now.why);
                    let _ = self.ctx.events.send(Event::Deferred {
                        idx: self.job.idx,
                        why: Some(format!("{} since {since}", now.why)),
                    });
                    (why, signalled) = (now.why, now.signalled);
                }
                Some(now) => signalled = now.signalled,
            }
            if forced(&why) {
                break;
            }
        }
        let waited = began.elapsed();
        info!(
            "the run conditions hold after {}: starting",
            crate::time::Human(Duration::from_secs(waited.as_secs()))
        );
        self.deferred =
            Some(crate::history::Deferred { why, waited_ms: waited.as_millis() as u64 });
        Ok(())
    }

    /// Takes the task's `lock:`, waiting while another run holds it: at most until the
    /// occurrence is `max_lateness` late (then the run is skipped, as a late occurrence is),
    /// or for the task's `timeout` (then it timed out), or until shutdown.
    async fn take_lock(&mut self) -> Result<(), Outcome> {
        let Some(name) = &self.task.lock else { return Ok(()) };
        let (task, run_id) = (&self.task.name, &self.job.run_id);
        let holder = match self.ctx.locks.try_take(name, task, run_id) {
            Some(Taken::At(held)) => {
                self.held = Some(held);
                return Ok(());
            }
            Some(Taken::Busy { holder }) => holder,
            None => return Ok(()),
        };
        let began = Instant::now();
        let held_by = holder.as_ref().map(|(t, _)| t.clone());
        let by = holder.map_or_else(String::new, |(t, r)| format!(", held by task {t} (run {r})"));
        // A scheduled run waits no later than its occurrence's max_lateness.
        let late_at = self.until_too_late();
        let limit = match (late_at, self.task.timeout) {
            (Some(a), Some(b)) => Some((a.min(b), a <= b)),
            (Some(a), None) => Some((a, true)),
            (None, Some(b)) => Some((b, false)),
            (None, None) => None,
        };
        info!(lock = %name, "waiting for the lock{by}");
        let waited = || crate::time::Human(Duration::from_secs(began.elapsed().as_secs()));
        let gave_up = |late: bool| {
            let bound = if late { "max_lateness" } else { "timeout" };
            let why = format!("gave up waiting for lock {name}{by} after {} ({bound})", waited());
            warn!("{why}");
            let status = if late { RunStatus::Skipped } else { RunStatus::Timeout };
            Outcome::early(status, None, why)
        };
        let sleep = async {
            match limit {
                Some((d, late)) => {
                    tokio::time::sleep(d).await;
                    late
                }
                None => std::future::pending().await,
            }
        };
        let held = tokio::select! {
            held = self.ctx.locks.take(name, task, run_id) => held,
            late = sleep => return Err(gave_up(late)),
            () = self.ctx.cancel.cancelled() => {
                return Err(Outcome::early(RunStatus::Cancelled, None, format!("daemon stopped while waiting for lock {name}")));
            }
        };
        info!(lock = %name, "took the lock after waiting {}", waited());
        self.held = held;
        self.lock_wait = Some(crate::history::LockWait {
            lock: name.clone(),
            held_by,
            waited_ms: began.elapsed().as_millis() as u64,
        });
        Ok(())
    }

    fn record_start(&mut self) {
        let ctx = self.ctx;
        self.started = Timestamp::now();
        info!(trigger = self.job.trigger.as_str(), "run started");
        self.write_start();
        let _ = ctx.events.send(Event::Started { idx: self.job.idx, at: self.started });
        self.start_sent = ctx.notify(self.task, self.facts("start", None, None), None);
    }

    fn write_start(&self) {
        let ctx = self.ctx;
        ctx.history.append(Record::Start {
            run_id: self.job.run_id.clone(),
            task: self.task.name.clone(),
            at: ctx.rfc3339(self.started),
            scheduled: self.job.occurrence.map(|o| ctx.rfc3339(o)),
            trigger: self.job.trigger,
            cgroup: self.procs.cgroup.as_ref().map(|c| c.display().to_string()),
            lock_wait: self.lock_wait.clone(),
            deferred: self.deferred.clone(),
        });
    }

    /// Takes a sleep inhibitor for the run (unless `inhibit_sleep: false`).
    async fn inhibit_sleep(&mut self) {
        if !self.task.inhibit_sleep {
            return;
        }
        let task = self.task.name.clone();
        match tokio::task::spawn_blocking(move || super::inhibit::take(&task)).await {
            Ok(Ok(inhibitor)) => {
                info!(mode = inhibitor.mode, "holding a sleep inhibitor while the run lasts");
                self.inhibitor = Some(inhibitor);
            }
            Ok(Err(why)) => tracing::debug!("no sleep inhibitor: {why}"),
            Err(e) => tracing::debug!("no sleep inhibitor: {e}"),
        }
    }

    /// After a run the daemon stopped, restic may have left its lock behind (SIGKILLed while
    /// it removed it, or the daemon died): with `unlock_stale: true`, `restic unlock` runs
    /// first, with the task's settings and a token of its own. restic removes only the locks
    /// it can prove stale (this host and a process that is gone, or older than 30 minutes),
    /// never a live run's. Says what it did, for the run's record.
    async fn unlock_stale(&self) -> Option<String> {
        let previous = self.job.after_stop?;
        if !self.task.unlock_stale {
            return None;
        }
        let restic =
            self.task.steps.iter().flat_map(crate::config::Step::stages).find_map(|argv| {
                (crate::config::program_name(&argv[0]) == "restic").then(|| argv[0].clone())
            })?;
        info!("the last run ended {previous}: running restic unlock first (unlock_stale)");
        let hook = crate::config::Hook {
            command: vec![restic, "unlock".into()],
            secrets: self.task.secrets.clone(),
        };
        let facts = self.hook_facts("unlock_stale", self.started, None);
        let ran = self
            .ctx
            .runner
            .run_hook(
                self.task,
                "unlock_stale",
                (&hook, self.task.timeout.unwrap_or(UNLOCK_TIMEOUT)),
                &self.job.run_id,
                &self.procs,
                facts,
                &self.ctx.cancel,
                self.sinks(),
            )
            .await;
        let ok = matches!(ran, Ok(0));
        let result = match ran {
            Ok(code) => format!("exit code {code}"),
            Err(HookFailure::Cancelled) => "stopped by daemon shutdown".into(),
            Err(HookFailure::Failed(why)) => why,
        };
        if !ok {
            warn!("restic unlock did not succeed ({result}); running the task anyway");
        }
        Some(format!(
            "restic unlock ran first, as the last run ended {previous} (unlock_stale): {result}"
        ))
    }

    async fn before_hook(&self) -> Result<(), Outcome> {
        let Some(before) = &self.task.hooks.before else { return Ok(()) };
        let facts = self.hook_facts("before", self.started, None);
        let ran = self
            .ctx
            .runner
            .run_hook(
                self.task,
                "before",
                (before, self.task.hooks.timeout),
                &self.job.run_id,
                &self.procs,
                facts,
                &self.ctx.cancel,
                self.sinks(),
            )
            .await;
        match ran {
            Ok(0) => Ok(()),
            Ok(SKIP_EXIT_CODE) => {
                info!("the before hook exited 75: skipping this run");
                Err(Outcome::early(RunStatus::Skipped, None, "the before hook exited 75 (skip)"))
            }
            Ok(code) => Err(Outcome::early(
                RunStatus::Failed,
                Some(code),
                format!("the before hook failed with exit code {code}; the steps did not run"),
            )),
            Err(HookFailure::Cancelled) => Err(Outcome::early(
                RunStatus::Cancelled,
                None,
                "stopped by daemon shutdown during the before hook",
            )),
            Err(HookFailure::Failed(why)) => Err(Outcome::early(
                RunStatus::Failed,
                None,
                format!("the before hook failed: {why}; the steps did not run"),
            )),
        }
    }

    /// One attempt at the steps (`attempt` is its number, from 1, for a task with `retry:`).
    async fn steps(&self, attempt: Option<u32>) -> Outcome {
        let deadline = self.task.timeout.map(|t| Instant::now() + t);
        // The occurrence a run belongs to, with milliseconds, for scripts (and for the
        // benchmark that measures how punctually runs start).
        let mut facts = Vec::new();
        if let Some(o) = self.job.occurrence {
            facts.push((
                "BACKUPNIZZA_SCHEDULED".to_string(),
                o.to_zoned(self.ctx.zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            ));
        }
        if let Some(n) = attempt {
            facts.push(("BACKUPNIZZA_ATTEMPT".to_string(), n.to_string()));
        }
        let pins = &self.ctx.pins[self.job.idx];
        self.ctx
            .runner
            .run(
                self.task,
                pins,
                &self.job.run_id,
                &self.procs,
                &facts,
                deadline,
                &self.ctx.cancel,
                self.sinks(),
            )
            .await
    }

    /// Result hooks, then `after` — also when the `before` hook failed; none for a run the
    /// `before` hook skipped, or once the daemon is stopping.
    async fn result_hooks(&self, outcome: &Outcome) {
        if matches!(outcome.status, RunStatus::Cancelled | RunStatus::Skipped) {
            return;
        }
        let hooks = &self.task.hooks;
        let which = if outcome.status.is_ok() {
            ("on_success", &hooks.on_success)
        } else {
            ("on_failure", &hooks.on_failure)
        };
        let started =
            Timestamp::now() - jiff::SignedDuration::try_from(outcome.duration).unwrap_or_default();
        for (name, hook) in [which, ("after", &hooks.after)] {
            let Some(hook) = hook else { continue };
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            let facts = self.hook_facts(name, started, Some(outcome));
            match self
                .ctx
                .runner
                .run_hook(
                    self.task,
                    name,
                    (hook, self.task.hooks.timeout),
                    &self.job.run_id,
                    &self.procs,
                    facts,
                    &self.ctx.cancel,
                    self.sinks(),
                )
                .await
            {
                Ok(0) => {}
                Ok(code) => warn!("the {name} hook exited {code}; the run's result is unchanged"),
                Err(HookFailure::Cancelled) => break,
                Err(HookFailure::Failed(why)) => {
                    warn!("the {name} hook failed: {why}; the run's result is unchanged");
                }
            }
        }
    }

    /// The log line, the End record (on disk before anyone hears of the end), the end
    /// notification, and the event for the state owner.
    async fn finish(mut self, outcome: Outcome) {
        let ctx = self.ctx;
        self.procs.remove();
        if let Some(output) = self.output.take() {
            output.finish();
        }
        let ended = Timestamp::now();
        let duration_ms = outcome.duration.as_millis() as u64;
        let message = format!(
            "run ended: {} ({}) after {}",
            outcome.status,
            outcome.reason,
            crate::time::Human(Duration::from_millis(duration_ms))
        );
        match outcome.status {
            RunStatus::Success | RunStatus::Skipped => info!("{message}"),
            RunStatus::Warning | RunStatus::Cancelled => warn!("{message}"),
            _ => error!("{message}"),
        }
        ctx.history
            .append_and_wait(Record::End {
                run_id: self.job.run_id.clone(),
                task: self.task.name.clone(),
                at: ctx.rfc3339(ended),
                status: outcome.status,
                exit_code: outcome.exit_code,
                duration_ms,
                reason: outcome.reason.clone(),
                stderr_tail: outcome.stderr_tail.clone(),
                backups: outcome.backups.clone(),
                attempts: outcome.attempts.clone(),
                findings: outcome.findings.clone(),
            })
            .await;
        if outcome.status != RunStatus::Cancelled {
            let mut facts = self.facts("end", Some(ended), Some(&outcome));
            facts.duration_ms = Some(duration_ms);
            ctx.notify(self.task, facts, self.start_sent);
        }
        // The End record is on disk: the next run on this lock may start, and followers
        // have everything.
        drop(self.held.take());
        if self.inhibitor.take().is_some() {
            info!("released the sleep inhibitor");
        }
        self.feed.end();
        let _ = ctx.events.send(Event::Ended {
            idx: self.job.idx,
            run_id: self.job.run_id,
            outcome: Box::new(outcome),
            ended,
        });
    }

    fn facts(
        &self,
        event: &'static str,
        ended: Option<Timestamp>,
        outcome: Option<&Outcome>,
    ) -> RunFacts {
        let total = outcome.and_then(|o| crate::restic::total(&o.backups));
        RunFacts {
            event,
            task: self.task.name.clone(),
            run_id: self.job.run_id.clone(),
            status: outcome.map_or(RunStatus::Running, |o| o.status).as_str().to_string(),
            exit_code: outcome.and_then(|o| o.exit_code),
            duration_ms: None,
            started: self.ctx.rfc3339(self.started),
            ended: ended.map(|t| self.ctx.rfc3339(t)),
            reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            stderr_tail: outcome.map(|o| o.stderr_tail.clone()),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            rid: self.rid.clone(),
            snapshot_id: total.as_ref().map(|t| t.snapshot_id.clone()),
            data_added: total.as_ref().map(|t| t.data_added),
            backups: outcome.map(|o| o.backups.clone()).unwrap_or_default(),
            audit_findings: outcome.map(|o| o.findings.clone()).unwrap_or_default(),
        }
    }

    /// The run's facts for a hook's environment.
    fn hook_facts(
        &self,
        hook: &str,
        started: Timestamp,
        outcome: Option<&Outcome>,
    ) -> Vec<(String, String)> {
        let mut facts = vec![
            ("BACKUPNIZZA_HOOK".to_string(), hook.to_string()),
            ("BACKUPNIZZA_STARTED".to_string(), self.ctx.rfc3339(started)),
        ];
        if let Some(o) = outcome {
            facts.push(("BACKUPNIZZA_STATUS".into(), o.status.as_str().into()));
            facts.push((
                "BACKUPNIZZA_EXIT_CODE".into(),
                o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ));
            facts.push(("BACKUPNIZZA_DURATION_MS".into(), o.duration.as_millis().to_string()));
            facts.push(("BACKUPNIZZA_REASON".into(), o.reason.clone()));
            facts.push(("BACKUPNIZZA_STDERR_TAIL".into(), env_tail(&o.stderr_tail)));
            if let Some(total) = crate::restic::total(&o.backups) {
                let ids: Vec<&str> = o.backups.iter().map(|b| b.snapshot_id.as_str()).collect();
                facts.push(("BACKUPNIZZA_SNAPSHOT_ID".into(), total.snapshot_id));
                facts.push(("BACKUPNIZZA_SNAPSHOT_IDS".into(), ids.join(" ")));
                facts.push(("BACKUPNIZZA_DATA_ADDED".into(), total.data_added.to_string()));
            }
        }
        facts
    }
}

/// restic's exit codes that no retry can improve (restic 0.17 and later): 10, the
/// repository does not exist; 12, the password is wrong.
const RESTIC_FINAL_CODES: &[(i32, &str)] =
    &[(10, "restic: the repository does not exist"), (12, "restic: wrong password")];

/// Whether a finished attempt may be tried again; `Err` says why not.
fn retry_verdict(task: &Task, outcome: &Outcome) -> Result<(), &'static str> {
    match outcome.status {
        RunStatus::Failed | RunStatus::Timeout => {}
        RunStatus::Success | RunStatus::Warning => return Err("it succeeded"),
        RunStatus::Refused => return Err("the run was refused, and would be again"),
        _ => return Err("it did not fail"),
    }
    let step = task.steps.get(outcome.last_step);
    let restic = step.is_some_and(|s| crate::config::program_name(&s.command[0]) == "restic");
    if let (true, Some(code)) = (restic, outcome.exit_code)
        && let Some((_, why)) = RESTIC_FINAL_CODES.iter().find(|(c, _)| *c == code)
    {
        return Err(why);
    }
    Ok(())
}

/// The stderr tail as one environment value: bounded (an environment string over 128 KiB
/// makes exec fail with E2BIG) and without NULs (which no environment string can hold),
/// keeping the end.
fn env_tail(lines: &[String]) -> String {
    let mut tail = lines.join("\n").replace('\0', "");
    if tail.len() > MAX_TAIL_ENV {
        let mut cut = tail.len() - MAX_TAIL_ENV;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &str) -> Task {
        let text = format!(
            "tasks:\n  t:\n    schedule: '@daily'\n    command: [{command}]\n    retry: {{attempts: 2}}\n"
        );
        let vars = [("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")];
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = crate::config::Environment { vars, uid: 1000 };
        let checked = crate::config::parse(&text, std::path::Path::new("b.yaml"), &env);
        checked.config.expect("valid").tasks.remove(0)
    }

    #[test]
    fn restic_codes_that_retrying_cannot_fix_are_not_retried() {
        let failed = |code| Outcome::early(RunStatus::Failed, Some(code), "x");
        let restic = task("/usr/bin/restic, snapshots");
        assert_eq!(retry_verdict(&restic, &failed(12)), Err("restic: wrong password"));
        assert!(retry_verdict(&restic, &failed(10)).is_err());
        assert_eq!(retry_verdict(&restic, &failed(1)), Ok(()));
        // Another program's 12 is its own business.
        assert_eq!(retry_verdict(&task("rclone, sync"), &failed(12)), Ok(()));
        let timed_out = Outcome::early(RunStatus::Timeout, None, "x");
        assert_eq!(retry_verdict(&restic, &timed_out), Ok(()));
        for status in [RunStatus::Success, RunStatus::Refused, RunStatus::Cancelled] {
            assert!(retry_verdict(&restic, &Outcome::early(status, None, "x")).is_err());
        }
    }
}
