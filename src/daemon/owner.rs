//! The state owner: one task (the daemon's event loop) holds the task and run tables and the
//! timetable as plain values. Nothing else touches them; everything else sends messages:
//!
//! - the socket server sends control [`Request`]s (trigger, status, subscribe to a run),
//!   each with a `oneshot` for the answer;
//! - runs send [`Event`]s (started, deferred, ended);
//! - the timetable wakes the loop when an occurrence is due, and the stop channel when a
//!   signal arrives.
//!
//! Besides these, only the [`Sentinel`] wakes it: a replaced socket, a change of the wall
//! clock or a resume, a child's end (on Linux from the kernel as they happen, so an idle
//! daemon with nothing due sleeps; elsewhere a poll twice a second). Whatever wakes the loop,
//! it first reads the clocks, so a suspend or a change of the wall clock is seen before
//! anything else uses the time; a clock change rebuilds the timetable (see
//! [`clock_change`]). What fires
//! when is decided in [`due`] and [`fire`]; the runs a dead daemon left are settled at start
//! ([`settle`]); `status` and the metrics file are read off the tables ([`report`]).
//!
//! Runs are spawned on a [`TaskTracker`]: at shutdown the loop cancels them, refuses new
//! triggers, keeps answering until every run has sent its end (each has written its End
//! record by then), and only then returns. No run handle is ever dropped unawaited.
//!
//! The owner reads the time from a [`Clock`] and starts runs through a [`Launch`], both in
//! its [`Surroundings`]: the system's clocks and [`run::execute`] in the daemon, a clock the
//! test moves and a recorder of jobs in the in-process tests (`owner/tests.rs`).

mod clock_change;
mod due;
mod fire;
mod report;
mod settle;
mod tables;
#[cfg(test)]
mod tests;
mod vigil;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::Stop;
use super::host::sentinel::{Alarm, Sentinel};
use super::host::systemd;
use super::records::writers::MetricsWriter;
use super::run::{self, Event, Job, RunContext};
use crate::broker::control::{FireError, Request};
use crate::broker::feed::Feed;
use crate::broker::socket::{BoundSocket, SocketWatch};
use crate::history::{DaemonEvent, Record};
use crate::schedule::clock::{Clock, ClockWatch, Reading, Stamp, SystemClock};
use crate::schedule::timetable::{self, Timetable, Trigger};
use tables::{Runs, TaskState};

/// The longest the owner sleeps when the kernel tells it of clock changes and resumes: a
/// day (a wake a day is nothing; it bounds the damage of a change the kernel did not report).
const KERNEL_MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);
/// Time beyond `shutdown_grace` and the kill grace that shutdown waits for runs to end.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// The loop's inputs besides the timetable.
pub(crate) struct Inbox {
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) stop: mpsc::Receiver<Stop>,
}

/// Starts a run: the future the owner spawns on its tracker.
pub(crate) type Launch =
    Box<dyn Fn(Job, Arc<Feed>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the owner reads and starts outside its own tables.
pub(crate) struct Surroundings {
    /// Where the owner reads the time.
    pub(crate) clock: Arc<dyn Clock>,
    /// Starts a run.
    pub(crate) launch: Launch,
    /// The socket path, checked when the [`Sentinel`] says: the daemon stops when it names
    /// another file.
    pub(crate) socket: SocketWatch,
    /// What wakes the idle owner besides the timetable.
    pub(crate) sentinel: Sentinel,
    /// The daemon's process-wide chores: systemd's notifications, reaping adopted orphans,
    /// giving back idle memory. Off in the in-process tests, which share their process with
    /// other tests (an orphan reaper there would reap other tests' children).
    pub(crate) process_chores: bool,
    /// When the daemon's process started: an occurrence that fell while it was starting
    /// (reading the task file, loading secrets from a slow keychain or password manager) is
    /// caught up, not lost, even with no history to say it was alive.
    pub(crate) launched: Timestamp,
}

impl Surroundings {
    /// The daemon's: the system's clocks, runs by [`run::execute`], its bound socket.
    pub(crate) fn of_this_daemon(
        ctx: Arc<RunContext>,
        bound: &BoundSocket,
        launched: Timestamp,
    ) -> Surroundings {
        Surroundings {
            clock: Arc::new(SystemClock),
            launch: Box::new(move |job, feed| Box::pin(run::execute(ctx.clone(), job, feed))),
            socket: bound.watch(),
            sentinel: Sentinel::for_socket(&bound.watch().path),
            process_chores: true,
            launched,
        }
    }
}

/// The daemon's mutable state, owned by its event loop.
pub(crate) struct State {
    ctx: Arc<RunContext>,
    clock: Arc<dyn Clock>,
    launch: Launch,
    socket: SocketWatch,
    sentinel: Sentinel,
    process_chores: bool,
    /// When the daemon started, on the current wall clock; also the anchor of `@every`.
    started: Timestamp,
    /// When its process started ([`Surroundings::launched`]).
    launched: Timestamp,
    started_stamp: Stamp,
    tasks: Vec<TaskState>,
    runs: Runs,
    table: Timetable,
    tracker: TaskTracker,
    metrics: Option<MetricsWriter>,
    /// What is wrong with the run history right now, from its writer thread.
    history_health: watch::Receiver<Option<String>>,
    /// When the last resume (or forward jump of the clock) was seen, for `resume_settle`.
    resumed: Option<tokio::time::Instant>,
}

impl State {
    /// The state at start: each task's last result, from the history (see
    /// [`TaskState::from_history`]).
    pub(crate) fn new(
        ctx: Arc<RunContext>,
        surroundings: Surroundings,
        past: &[Record],
        metrics: Option<MetricsWriter>,
        history_health: watch::Receiver<Option<String>>,
    ) -> State {
        let Surroundings { clock, launch, socket, sentinel, process_chores, launched } =
            surroundings;
        let reading = clock.read();
        let tasks = TaskState::from_history(&ctx, past, &reading);
        State {
            started: reading.wall,
            launched: launched.min(reading.wall),
            started_stamp: Stamp::before(&reading, reading.wall),
            ctx,
            clock,
            launch,
            socket,
            sentinel,
            process_chores,
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

    /// The wall clock, as the owner's clock reads it.
    fn now(&self) -> Timestamp {
        self.clock.read().wall
    }

    /// The event loop, until a stop request or a stolen socket; then the drain of running
    /// tasks. Returns why it stopped.
    pub(crate) async fn run(mut self, mut inbox: Inbox, past: &[Record]) -> Stop {
        let first = self.begin(past).await;
        let stop = self.serve(&mut inbox, first).await;
        self.drain(&mut inbox).await;
        stop
    }

    /// Before the loop: the Start record, the runs a dead daemon left, the downtime's
    /// catch-up, the timetable, and READY. Returns the clocks' reading the timetable was
    /// built from, so a change made from here on (even before READY) is seen as a change.
    async fn begin(&mut self, past: &[Record]) -> Reading {
        self.ctx.history.append(Record::Daemon {
            event: DaemonEvent::Start,
            at: self.rfc3339(self.now()),
            pid: std::process::id(),
        });
        self.settle_unended(past).await;
        let first = self.clock.read();
        let now = first.wall;
        self.restore_pauses(now);
        self.catch_up_downtime(past, now);
        self.refresh_deadlines();
        for (i, task) in self.ctx.config.tasks.iter().enumerate() {
            if let Some(next) =
                timetable::next_fire(&task.schedule, &task.zone.tz, self.started, now)
            {
                info!(task = %task.name, schedule = %task.schedule, timezone = %task.zone.name, next = %crate::time::rfc3339(next, &task.zone.tz), "scheduled");
                self.tasks[i].next = Some(next);
                self.table.push(next, i);
            } else if task.schedule.is_manual() {
                // By design, not a problem: no warning at each start.
                info!(task = %task.name, "manual: runs only when triggered");
            } else {
                warn!(task = %task.name, schedule = %task.schedule, "will not fire in the next 30 years");
            }
        }
        // READY means the metrics file exists.
        let text = self.metrics_text();
        if let (Some(writer), Some(text)) = (self.metrics.as_mut(), text) {
            writer.write_and_wait(text).await;
        }
        if self.process_chores {
            systemd::notify("READY=1");
            shed_memory();
        }
        first
    }

    async fn serve(&mut self, inbox: &mut Inbox, first: Reading) -> Stop {
        let watchdog = systemd::watchdog_interval().filter(|_| self.process_chores);
        let mut watchdog = watchdog.map(|d| quiet_interval(d / 2));
        let mut clock = ClockWatch::new(first);
        let mut zombies = HashMap::new();
        loop {
            let cap =
                if self.sentinel.is_kernel() { KERNEL_MAX_SLEEP } else { timetable::MAX_SLEEP };
            let now = self.now();
            let mut pause = self.table.sleep_for(now, cap);
            if let Some(vigil) = self.next_vigil() {
                let until = Duration::try_from(vigil.duration_since(now)).unwrap_or_default();
                pause = pause.min(until);
            }
            let wake = tokio::select! {
                () = tokio::time::sleep(pause) => Wake::Timer,
                stop = inbox.stop.recv() => return stop.unwrap_or(Stop::Signal("a closed stop channel")),
                Some(request) = inbox.requests.recv() => Wake::Request(request),
                Some(event) = inbox.events.recv() => Wake::Event(event),
                alarm = self.sentinel.next() => Wake::Alarm(alarm),
                () = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } } => Wake::Watchdog,
            };
            // The clocks first, on every wake: a jump is seen as soon as the kernel reports
            // it, and nothing below (a run's end, a trigger, the metrics) works on a stale
            // timetable.
            let reading = self.clock.read();
            if let Some(jump) = clock.observe(reading) {
                self.on_clock_jump(jump, &reading);
            }
            match wake {
                Wake::Timer => {}
                Wake::Request(request) => self.answer(request),
                Wake::Event(event) => self.on_event(event),
                Wake::Alarm(alarm) => {
                    if alarm.socket() && !self.socket.still_ours() {
                        error!(socket = %self.socket.path.display(), "the socket path no longer names this daemon's socket; stopping");
                        return Stop::SocketStolen;
                    }
                    if alarm.children() && self.process_chores {
                        if super::host::reap_orphans(&mut zombies) {
                            self.sentinel.recheck_children(super::host::ORPHAN_AGE);
                        }
                        if let Some(guardian) = &self.ctx.runner.guardian {
                            guardian.check();
                        }
                    }
                }
                Wake::Watchdog => systemd::notify("WATCHDOG=1"),
            }
            // Runs' ends already sent come first: a run whose End record is written is over,
            // and an occurrence due now must not be skipped as an overlap with it (a daemon
            // stopped and continued finds both ready at once).
            while let Ok(event) = inbox.events.try_recv() {
                self.on_event(event);
            }
            // The wall time the jump check saw, not a second reading: a clock set between
            // the two would reach the due occurrences on the old timetable and look like
            // downtime (a year forward was caught up as 52,560 missed runs). A jump after
            // the reading is seen at the next wake, which the sentinel brings at once.
            self.fire_due(reading.wall);
            self.keep_vigil(reading.wall);
        }
    }

    /// Cancels running tasks (they SIGINT, SIGTERM, then SIGKILL their processes) and keeps answering
    /// until every one has ended.
    async fn drain(&mut self, inbox: &mut Inbox) {
        if self.process_chores {
            systemd::notify("STOPPING=1");
        }
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
            Request::Pause { request, reply } => {
                let _ = reply.send(self.pause(&request));
            }
            Request::Resume { tasks, reply } => {
                let _ = reply.send(self.resume(&tasks));
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
                self.tasks[idx].started_at(Stamp::before(&self.clock.read(), at));
            }
            Event::Deferred { idx, why } => {
                if why.is_some() {
                    self.tasks[idx].metrics.deferrals += 1;
                }
                self.tasks[idx].deferred = why;
            }
            Event::Ended { idx, run_id, outcome, ended } => {
                self.run_ended(idx, &run_id, &outcome, ended);
                if self.process_chores && self.tasks.iter().all(|t| !t.running) {
                    shed_memory();
                }
            }
        }
    }
}

/// An interval that, after a stall (the daemon stopped and continued, a suspend), ticks once
/// and goes on from there, rather than once for every tick it missed.
fn quiet_interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// What woke the loop.
enum Wake {
    Timer,
    Request(Request),
    Event(Event),
    Alarm(Alarm),
    Watchdog,
}

/// How long after the daemon goes idle it gives back memory: start-up's and a run's last
/// work (the history writer's fsync, the notifications, the server's first accept) goes on
/// for a moment on other threads, and would touch again what was given back too early.
const SHED_AFTER: Duration = Duration::from_secs(2);

/// Gives back what the idle daemon need not hold (see `footprint`), [`SHED_AFTER`] from now,
/// on a blocking thread: reading `/proc/self/smaps` and trimming the heap are not the event
/// loop's to wait for.
fn shed_memory() {
    tokio::spawn(async {
        tokio::time::sleep(SHED_AFTER).await;
        let released = tokio::task::spawn_blocking(crate::sys::footprint::shed).await;
        debug!(
            released_kib = released.unwrap_or(0) / 1024,
            "idle: released start-up pages and free heap"
        );
    });
}
