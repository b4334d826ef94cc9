//! The state owner: one task (the daemon's event loop) holds the task and run tables and the
//! timetable as plain values. Nothing else touches them; everything else sends messages:
//!
//! - the socket server sends control [`Request`]s (trigger, status, subscribe to a run),
//!   each with a `oneshot` for the answer;
//! - runs send [`Event`]s (started, ended);
//! - the timetable wakes the loop when an occurrence is due, and the stop channel when a
//!   signal arrives.
//!
//! Whatever wakes the loop (at least every [`SOCKET_CHECK`]), it first reads the clocks, so a
//! suspend or a change of the wall clock is seen within seconds and before anything else
//! uses the time; a clock change rebuilds the timetable (see [`clock_change`]).
//!
//! Runs are spawned on a [`TaskTracker`]: at shutdown the loop cancels them, refuses new
//! triggers, keeps answering until every run has sent its end (each has written its End
//! record by then), and only then returns. No run handle is ever dropped unawaited.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

use super::execute::{self, Event, Job, RunContext};
use super::metrics::TaskMetrics;
use super::runner::Outcome;
use super::writers::MetricsWriter;
use super::{Stop, systemd};
use crate::broker::control::{FireError, Request};
use crate::broker::feed::Feed;
use crate::broker::socket::BoundSocket;
use crate::config::Overlap;
use crate::history::{DaemonEvent, Record, SkipReason};
use crate::protocol::{RunBody, RunRef, RunStatus};
use crate::schedule::clock::{ClockWatch, Reading, Stamp};
use crate::schedule::timetable::{self, Decision, Timetable, Trigger};

mod clock_change;
mod report;
mod settle;

/// How often the daemon checks that its socket path still names its socket: within a
/// second of a swap it stops (clients check the server too, see `SECRETBOX_DAEMON`). A
/// `stat` twice a second costs nothing measurable (docs/benchmarks.md, idle CPU).
const SOCKET_CHECK: Duration = Duration::from_millis(500);
/// Finished runs kept in memory for `trigger --wait`.
const KEEP_RUNS: usize = 256;
/// Time beyond `shutdown_grace` and the kill grace that shutdown waits for runs to end.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Per-task state.
#[derive(Default)]
struct TaskState {
    running: bool,
    /// Why the current run waits to start (`when:`, `blackout:`), and since when.
    deferred: Option<String>,
    /// A firing waiting for the current run (`on_overlap: queue`).
    queued: Option<Job>,
    last: Option<RunBody>,
    next: Option<Timestamp>,
    metrics: TaskMetrics,
    /// The metrics' `last_*` instants with the elapsed-time clock at each, so a clock change
    /// can re-read them on the new clock (see [`TaskState::reread`]).
    stamps: Stamps,
}

#[derive(Default)]
struct Stamps {
    start: Option<Stamp>,
    end: Option<Stamp>,
    success: Option<Stamp>,
}

impl TaskState {
    fn started_at(&mut self, at: Stamp) {
        self.stamps.start = Some(at);
        self.metrics.last_start = Some(at.wall());
    }

    fn ended_at(&mut self, at: Stamp, success: bool) {
        self.stamps.end = Some(at);
        self.metrics.last_end = Some(at.wall());
        if success {
            self.stamps.success = Some(at);
            self.metrics.last_success = Some(at.wall());
        }
    }

    /// After a clock change: each instant becomes *now minus its age*, so none lies in the
    /// future of the new clock and the staleness alert keeps measuring real time.
    fn reread(&mut self, now: &Reading) {
        let m = &mut self.metrics;
        for (stamp, field) in [
            (&self.stamps.start, &mut m.last_start),
            (&self.stamps.end, &mut m.last_end),
            (&self.stamps.success, &mut m.last_success),
        ] {
            if let Some(stamp) = stamp {
                *field = Some(stamp.reread(now));
            }
        }
    }
}

/// Runs the daemon knows by id: live ones, and the last [`KEEP_RUNS`] finished ones.
#[derive(Default)]
struct Runs {
    by_id: HashMap<String, Known>,
    finished: VecDeque<String>,
}

/// What the daemon keeps of one run it knows.
struct Known {
    /// Its state, for `trigger --wait` and `status`.
    state: watch::Sender<RunBody>,
    /// Its output, for `trigger --follow`.
    feed: Arc<Feed>,
}

/// The loop's inputs besides the timetable.
pub(super) struct Inbox {
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    pub(super) stop: mpsc::Receiver<Stop>,
}

/// The daemon's mutable state, owned by its event loop.
pub(super) struct State {
    ctx: Arc<RunContext>,
    /// When the daemon started, on the current wall clock; also the anchor of `@every`.
    started: Timestamp,
    started_stamp: Stamp,
    tasks: Vec<TaskState>,
    runs: Runs,
    table: Timetable,
    tracker: TaskTracker,
    metrics: Option<MetricsWriter>,
    /// What is wrong with the run history right now, from its writer thread.
    history_health: watch::Receiver<Option<String>>,
    /// When the last resume (or forward jump of the clock) was seen, for `resume_settle`.
    resumed: Option<std::time::Instant>,
}

/// A run id: the UTC start time and 32 random bits (`20261122T053704Z-0dd8a1f3`).
fn new_run_id(now: Timestamp) -> String {
    let mut suffix = [0u8; 4];
    let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    format!("{}-{:08x}", now.strftime("%Y%m%dT%H%M%SZ"), u32::from_be_bytes(suffix))
}

impl State {
    /// The state at start: each task's last result, from the history. Records dated later
    /// than now (written before the clock was set back) are not used: one of them would put
    /// `last_success` in the future, where the staleness alert can never fire.
    pub(super) fn new(
        ctx: Arc<RunContext>,
        started: Timestamp,
        past: &[Record],
        metrics: Option<MetricsWriter>,
        history_health: watch::Receiver<Option<String>>,
    ) -> State {
        let mut tasks: Vec<TaskState> =
            ctx.config.tasks.iter().map(|_| TaskState::default()).collect();
        let reading = Reading::now();
        let future = future_records(past, reading.wall);
        if future.count > 0 {
            warn!(
                ignored = future.count,
                latest = %future.latest.map(|t| ctx.rfc3339(t)).unwrap_or_default(),
                "{} history record{} dated later than now (written before the clock was set back) {} not used for metrics or to decide what to catch up",
                future.count,
                if future.count == 1 { "" } else { "s" },
                if future.count == 1 { "is" } else { "are" },
            );
        }
        for record in past {
            let Record::End {
                run_id,
                task,
                at,
                status,
                exit_code,
                duration_ms,
                reason,
                backups,
                findings,
                ..
            } = record
            else {
                continue;
            };
            let Some(i) = ctx.config.tasks.iter().position(|t| &t.name == task) else { continue };
            let Some(end) = at.parse::<Timestamp>().ok().filter(|t| *t <= reading.wall) else {
                continue;
            };
            let start = end.checked_sub(jiff::SignedDuration::from_millis(*duration_ms as i64));
            if let Ok(start) = start {
                tasks[i].started_at(Stamp::before(&reading, start));
            }
            let success = matches!(status, RunStatus::Success | RunStatus::Warning);
            tasks[i].ended_at(Stamp::before(&reading, end), success);
            tasks[i].metrics.ended(&super::metrics::Ended {
                exit_code: *exit_code,
                seconds: *duration_ms as f64 / 1000.0,
                ok: status.is_ok(),
                backups,
                audit: ctx.config.tasks[i].audit.as_ref().map(|_| findings.len()),
            });
            tasks[i].last = Some(RunBody {
                run_id: run_id.clone(),
                task: task.clone(),
                status: *status,
                started: String::new(),
                ended: Some(at.clone()),
                exit_code: *exit_code,
                duration_ms: Some(*duration_ms),
                reason: reason.clone(),
            });
        }
        State {
            ctx,
            started,
            started_stamp: Stamp::before(&reading, started),
            tasks,
            runs: Runs::default(),
            table: Timetable::default(),
            tracker: TaskTracker::new(),
            metrics,
            history_health,
            resumed: None,
        }
    }

    fn rfc3339(&self, at: Timestamp) -> String {
        self.ctx.rfc3339(at)
    }

    /// The event loop, until a stop request or a stolen socket; then the drain of running
    /// tasks. Returns why it stopped.
    pub(super) async fn run(
        mut self,
        bound: &BoundSocket,
        mut inbox: Inbox,
        past: &[Record],
    ) -> Stop {
        let stop = self.serve(bound, &mut inbox, past).await;
        self.drain(&mut inbox).await;
        stop
    }

    async fn serve(&mut self, bound: &BoundSocket, inbox: &mut Inbox, past: &[Record]) -> Stop {
        self.ctx.history.append(Record::Daemon {
            event: DaemonEvent::Start,
            at: self.rfc3339(Timestamp::now()),
            pid: std::process::id(),
        });
        self.settle_unended(past).await;
        // The first reading of the clocks is the one the timetable is built from, so a
        // change made from here on (even before READY) is seen as a change.
        let first = Reading::now();
        let now = first.wall;
        self.catch_up_downtime(past, now);
        for (i, task) in self.ctx.config.tasks.iter().enumerate() {
            if let Some(next) =
                timetable::next_fire(&task.schedule, &task.zone.tz, self.started, now)
            {
                info!(task = %task.name, schedule = %task.schedule, timezone = %task.zone.name, next = %crate::time::rfc3339(next, &task.zone.tz), "scheduled");
                self.tasks[i].next = Some(next);
                self.table.push(next, i);
            } else {
                warn!(task = %task.name, schedule = %task.schedule, "will not fire in the next 30 years");
            }
        }
        // READY means the metrics file exists.
        let text = self.metrics_text();
        if let (Some(writer), Some(text)) = (self.metrics.as_mut(), text) {
            writer.write_and_wait(text).await;
        }
        systemd::notify("READY=1");
        shed_memory();
        let mut watchdog = systemd::watchdog_interval().map(|d| tokio::time::interval(d / 2));
        let mut socket_check = tokio::time::interval(SOCKET_CHECK);
        let mut clock = ClockWatch::new(first);
        let mut zombies = HashSet::new();
        loop {
            let pause = self.table.sleep_for(Timestamp::now());
            let wake = tokio::select! {
                () = tokio::time::sleep(pause) => Wake::Timer,
                stop = inbox.stop.recv() => return stop.unwrap_or(Stop::Signal("a closed stop channel")),
                Some(request) = inbox.requests.recv() => Wake::Request(request),
                Some(event) = inbox.events.recv() => Wake::Event(event),
                _ = socket_check.tick() => Wake::SocketCheck,
                () = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } } => Wake::Watchdog,
            };
            // The clocks first, on every wake: a jump is seen within one socket check, and
            // nothing below (a run's end, a trigger, the metrics) works on a stale timetable.
            let reading = Reading::now();
            if let Some(jump) = clock.observe(reading) {
                self.on_clock_jump(jump, &reading);
            }
            match wake {
                Wake::Timer => {}
                Wake::Request(request) => self.answer(request),
                Wake::Event(event) => self.on_event(event),
                Wake::SocketCheck => {
                    if !bound.still_ours() {
                        error!(socket = %bound.path.display(), "the socket path no longer names this daemon's socket; stopping");
                        return Stop::SocketStolen;
                    }
                    super::reap_orphans(&self.ctx.runner.broker.active(), &mut zombies);
                }
                Wake::Watchdog => systemd::notify("WATCHDOG=1"),
            }
            // The wall time the jump check saw, not a second reading: a clock set between
            // the two would reach the due occurrences on the old timetable and look like
            // downtime (a year forward was caught up as 52,560 missed runs). A jump after
            // the reading is seen at the next wake, at most one socket check later.
            let now = reading.wall;
            while let Some((due, idx)) = self.table.pop_due(now) {
                self.handle_due(idx, due, now);
                let task = &self.ctx.config.tasks[idx];
                let next =
                    timetable::next_fire(&task.schedule, &task.zone.tz, self.started, now.max(due));
                self.tasks[idx].next = next;
                if let Some(next) = next {
                    self.table.push(next, idx);
                }
            }
        }
    }

    /// Cancels running tasks (they SIGINT, SIGTERM, then SIGKILL their processes) and keeps answering
    /// until every one has ended.
    async fn drain(&mut self, inbox: &mut Inbox) {
        systemd::notify("STOPPING=1");
        self.ctx.cancel.cancel();
        self.tracker.close();
        if !self.tracker.is_empty() {
            info!(running = self.tracker.len(), grace = %crate::time::Human(self.ctx.config.shutdown_grace), "stopping running tasks");
        }
        let kill_grace =
            self.ctx.config.tasks.iter().map(|t| t.kill_grace).max().unwrap_or_default();
        let limit = self.ctx.config.shutdown_grace + kill_grace + SHUTDOWN_SLACK;
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = self.tracker.wait() => break,
                Some(event) = inbox.events.recv() => self.on_event(event),
                Some(request) = inbox.requests.recv() => self.answer(request),
                () = &mut deadline => {
                    error!("some tasks did not stop in time");
                    break;
                }
            }
        }
        // Runs send their end before they finish: take the last ones.
        while let Ok(event) = inbox.events.try_recv() {
            self.on_event(event);
        }
        self.write_metrics();
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Trigger { task, reply } => {
                let result = match self.ctx.config.tasks.iter().position(|t| t.name == task) {
                    Some(idx) => self.fire(idx, Trigger::Manual, None),
                    None => Err(FireError::NoSuchTask {
                        hint: crate::config::did_you_mean(
                            &task,
                            self.ctx.config.tasks.iter().map(|t| t.name.as_str()),
                        )
                        .map(str::to_string),
                        name: task,
                    }),
                };
                let _ = reply.send(result);
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Subscribe { run_id, reply } => {
                let _ = reply.send(self.runs.by_id.get(&run_id).map(|k| k.state.subscribe()));
            }
            Request::Follow { run_id, reply } => {
                let _ = reply.send(self.runs.by_id.get(&run_id).map(|k| k.feed.clone()));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started { idx, at } => {
                self.tasks[idx].deferred = None;
                self.tasks[idx].started_at(Stamp::before(&Reading::now(), at));
            }
            Event::Deferred { idx, why } => {
                if why.is_some() {
                    self.tasks[idx].metrics.deferrals += 1;
                }
                self.tasks[idx].deferred = why;
            }
            Event::Ended { idx, run_id, outcome, ended } => {
                self.run_ended(idx, &run_id, &outcome, ended);
                if self.tasks.iter().all(|t| !t.running) {
                    shed_memory();
                }
            }
        }
    }

    fn skip(
        &mut self,
        idx: usize,
        scheduled: Timestamp,
        count: u64,
        reason: SkipReason,
        detail: String,
    ) {
        self.tasks[idx].metrics.skips += count;
        self.ctx.history.append(Record::Skip {
            task: self.ctx.config.tasks[idx].name.clone(),
            at: self.rfc3339(Timestamp::now()),
            scheduled: self.rfc3339(scheduled),
            count,
            reason,
            detail,
        });
    }

    /// Fires task `idx` now (or queues it, or skips it, per `on_overlap`).
    fn fire(
        &mut self,
        idx: usize,
        trigger: Trigger,
        occurrence: Option<Timestamp>,
    ) -> Result<RunRef, FireError> {
        let ctx = self.ctx.clone();
        let task = &ctx.config.tasks[idx];
        if ctx.cancel.is_cancelled() {
            return Err(FireError::Stopping);
        }
        let now = Timestamp::now();
        let run_id = loop {
            let id = new_run_id(now);
            if !self.runs.by_id.contains_key(&id) {
                break id;
            }
        };
        let job = Job {
            idx,
            run_id: run_id.clone(),
            trigger,
            occurrence,
            after_stop: None,
            last_success: None,
            settle: None,
        };
        let state = &mut self.tasks[idx];
        if state.running {
            let why = match (task.on_overlap, &state.queued) {
                (Overlap::Skip, _) => "the previous run is still going (on_overlap: skip)",
                (Overlap::Queue, Some(_)) => {
                    "one run is already queued behind the current one (on_overlap: queue)"
                }
                (Overlap::Queue, None) => {
                    info!(task = %task.name, run_id, "queued behind the running run (on_overlap: queue)");
                    state.queued = Some(job);
                    self.register_run(&run_id, &task.name, RunStatus::Queued, now);
                    return Ok(RunRef { run_id, task: task.name.clone() });
                }
            };
            // An occurrence that will not run is recorded; a refused manual trigger is only
            // answered (it is not an occurrence of the schedule).
            if let Some(at) = occurrence {
                warn!(task = %task.name, occurrence = %self.rfc3339(at), "not running: {why}");
                self.skip(idx, at, 1, SkipReason::Overlap, why.to_string());
                self.write_metrics();
            } else {
                info!(task = %task.name, "manual trigger refused: {why}");
            }
            return Err(FireError::Busy { task: task.name.clone(), why });
        }
        state.running = true;
        self.register_run(&run_id, &task.name, RunStatus::Running, now);
        self.spawn_run(job);
        Ok(RunRef { run_id, task: task.name.clone() })
    }

    fn spawn_run(&mut self, mut job: Job) {
        if job.trigger == Trigger::CatchUp
            && let Some(resumed) = self.resumed
        {
            let settle = self.ctx.config.tasks[job.idx].resume_settle;
            job.settle = settle.checked_sub(resumed.elapsed());
        }
        job.last_success = self.tasks[job.idx].metrics.last_success;
        job.after_stop = self.tasks[job.idx].last.as_ref().map(|l| l.status).filter(|s| {
            matches!(s, RunStatus::Timeout | RunStatus::Cancelled | RunStatus::Interrupted)
        });
        // Every run is registered before it is spawned.
        let feed = self.runs.by_id.get(&job.run_id).map(|k| k.feed.clone());
        let feed = feed.unwrap_or_else(|| Arc::new(Feed::new()));
        let span = tracing::info_span!("run", task = %self.ctx.config.tasks[job.idx].name, run_id = %job.run_id);
        self.tracker.spawn(execute::execute(self.ctx.clone(), job, feed).instrument(span));
    }

    fn register_run(&mut self, run_id: &str, task: &str, status: RunStatus, now: Timestamp) {
        let body = RunBody {
            run_id: run_id.to_string(),
            task: task.to_string(),
            status,
            started: self.rfc3339(now),
            ended: None,
            exit_code: None,
            duration_ms: None,
            reason: String::new(),
        };
        let known = Known { state: watch::channel(body).0, feed: Arc::new(Feed::new()) };
        self.runs.by_id.insert(run_id.to_string(), known);
    }

    /// A run ended: its metrics and state, then the queued run (if any) starts, or is
    /// cancelled when the daemon is stopping.
    fn run_ended(&mut self, idx: usize, run_id: &str, outcome: &Outcome, ended: Timestamp) {
        self.tasks[idx].deferred = None;
        let ran = outcome.status != RunStatus::Skipped;
        self.tasks[idx]
            .ended_at(Stamp::before(&Reading::now(), ended), ran && outcome.status.is_ok());
        let m = &mut self.tasks[idx].metrics;
        m.ended(&super::metrics::Ended {
            exit_code: outcome.exit_code,
            seconds: outcome.duration.as_secs_f64(),
            ok: outcome.status.is_ok(),
            backups: &outcome.backups,
            audit: self.ctx.config.tasks[idx].audit.as_ref().map(|_| outcome.findings.len()),
        });
        match outcome.status {
            RunStatus::Skipped => m.skips += 1,
            status => {
                m.runs += 1;
                if !status.is_ok() && status != RunStatus::Cancelled {
                    m.failures += 1;
                }
            }
        }
        let mut body = match self.runs.by_id.get(run_id) {
            Some(known) => known.state.borrow().clone(),
            None => RunBody {
                run_id: run_id.to_string(),
                task: self.ctx.config.tasks[idx].name.clone(),
                status: outcome.status,
                started: String::new(),
                ended: None,
                exit_code: None,
                duration_ms: None,
                reason: String::new(),
            },
        };
        body.status = outcome.status;
        body.ended = Some(self.rfc3339(ended));
        body.exit_code = outcome.exit_code;
        body.duration_ms = Some(outcome.duration.as_millis() as u64);
        body.reason.clone_from(&outcome.reason);
        self.tasks[idx].last = Some(body.clone());
        self.finish_run(run_id, body);
        match self.tasks[idx].queued.take() {
            Some(queued) if !self.ctx.cancel.is_cancelled() => {
                if let Some(known) = self.runs.by_id.get(&queued.run_id) {
                    known.state.send_modify(|b| b.status = RunStatus::Running);
                }
                let trigger = if queued.trigger == Trigger::Manual {
                    Trigger::Manual
                } else {
                    Trigger::Queued
                };
                self.spawn_run(Job { trigger, ..queued });
            }
            Some(queued) => {
                self.tasks[idx].running = false;
                self.cancel_queued(&queued);
            }
            None => self.tasks[idx].running = false,
        }
        self.write_metrics();
    }

    /// A queued run the daemon stopped before it started: it ends as cancelled, with an
    /// End record saying so.
    fn cancel_queued(&mut self, job: &Job) {
        let now = Timestamp::now();
        let task = self.ctx.config.tasks[job.idx].name.clone();
        let reason = "the daemon stopped before the queued run started".to_string();
        // A Start and an End, like every run, so `history` and `explain` show it.
        self.ctx.history.append(Record::Start {
            run_id: job.run_id.clone(),
            task: task.clone(),
            at: self.rfc3339(now),
            scheduled: job.occurrence.map(|o| self.rfc3339(o)),
            trigger: job.trigger,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        });
        self.ctx.history.append(Record::End {
            run_id: job.run_id.clone(),
            task: task.clone(),
            at: self.rfc3339(now),
            status: RunStatus::Cancelled,
            exit_code: None,
            duration_ms: 0,
            reason: reason.clone(),
            stderr_tail: Vec::new(),
            backups: Vec::new(),
            attempts: Vec::new(),
            findings: Vec::new(),
        });
        let body = RunBody {
            run_id: job.run_id.clone(),
            task,
            status: RunStatus::Cancelled,
            started: self.rfc3339(now),
            ended: Some(self.rfc3339(now)),
            exit_code: None,
            duration_ms: Some(0),
            reason,
        };
        self.finish_run(&job.run_id, body);
    }

    fn finish_run(&mut self, run_id: &str, body: RunBody) {
        if let Some(known) = self.runs.by_id.get(run_id) {
            known.state.send_replace(body);
            // A run cancelled before it started has had no execute to end its feed.
            known.feed.end();
        }
        self.runs.finished.push_back(run_id.to_string());
        while self.runs.finished.len() > KEEP_RUNS {
            if let Some(old) = self.runs.finished.pop_front() {
                self.runs.by_id.remove(&old);
            }
        }
    }

    /// An occurrence came due: run it (on time or caught up) or log why not.
    fn handle_due(&mut self, idx: usize, due: Timestamp, now: Timestamp) {
        let ctx = self.ctx.clone();
        let task = &ctx.config.tasks[idx];
        let human = crate::time::Human;
        match timetable::decide(&task.schedule, &task.zone.tz, due, now, task.max_lateness) {
            Decision::Run { trigger, occurrence, superseded, first_missed } => {
                if trigger == Trigger::CatchUp {
                    let late =
                        Duration::try_from(now.duration_since(occurrence)).unwrap_or_default();
                    warn!(
                        task = %task.name,
                        "missed {} occurrence{} from {} (machine asleep, daemon stopped or clock changed); running once now, {} late",
                        superseded + 1,
                        if superseded == 0 { "" } else { "s" },
                        self.rfc3339(first_missed),
                        human(Duration::from_secs(late.as_secs()))
                    );
                    if superseded > 0 {
                        let detail =
                            format!("folded into the catch-up run of {}", self.rfc3339(occurrence));
                        self.skip(idx, first_missed, superseded, SkipReason::Superseded, detail);
                    }
                }
                let _ = self.fire(idx, trigger, Some(occurrence));
            }
            Decision::TooLate { count, first, last } => {
                let which = if count == 1 {
                    format!("the missed occurrence of {}", self.rfc3339(first))
                } else {
                    format!(
                        "{count} missed occurrences from {} to {}",
                        self.rfc3339(first),
                        self.rfc3339(last)
                    )
                };
                let limit = human(task.max_lateness);
                warn!(task = %task.name, "skipping {which}: the latest is more than max_lateness ({limit}) late");
                self.skip(
                    idx,
                    first,
                    count,
                    SkipReason::TooLate,
                    format!("more than max_lateness ({limit}) late"),
                );
                self.write_metrics();
            }
        }
    }

    /// Occurrences that fell while the daemon was not running (after the last history
    /// record) are handled like those missed during a suspend. The last record means the
    /// latest one not dated in the future: a record written before the clock was set back
    /// would otherwise say the daemon was alive until then, and nothing would be caught up.
    fn catch_up_downtime(&mut self, past: &[Record], now: Timestamp) {
        let Some(last_alive) = past
            .iter()
            .filter_map(|r| r.at().parse::<Timestamp>().ok())
            .filter(|at| *at <= now)
            .max()
        else {
            return;
        };
        let ctx = self.ctx.clone();
        for (idx, task) in ctx.config.tasks.iter().enumerate() {
            if task.schedule.interval().is_some() {
                continue; // `@every` counts from the daemon's start.
            }
            if let Some(first) =
                task.schedule.next_after(last_alive, &task.zone.tz).filter(|o| *o <= now)
            {
                self.handle_due(idx, first, now);
            }
        }
    }
}

/// What woke the loop.
enum Wake {
    Timer,
    Request(Request),
    Event(Event),
    SocketCheck,
    Watchdog,
}

/// History records dated later than `now`.
struct Future {
    count: usize,
    latest: Option<Timestamp>,
}

fn future_records(past: &[Record], now: Timestamp) -> Future {
    let future: Vec<Timestamp> = past
        .iter()
        .filter_map(|r| r.at().parse::<Timestamp>().ok())
        .filter(|at| *at > now)
        .collect();
    Future { count: future.len(), latest: future.iter().max().copied() }
}

/// Gives back what the idle daemon need not hold (see `footprint`), on a blocking thread:
/// reading `/proc/self/smaps` and trimming the heap are not the event loop's to wait for.
fn shed_memory() {
    tokio::task::spawn_blocking(|| {
        let released = crate::sys::footprint::shed();
        debug!(released_kib = released / 1024, "idle: released start-up pages and free heap");
    });
}
