//! The state owner's decisions, tested in-process under tokio's paused time: what fires
//! when, overlap policies, catch-up after a suspend or downtime, clock corrections,
//! `max_lateness`, runs a dead daemon left, and triggers racing shutdown.
//!
//! The owner runs as in the daemon, with a real history file (read back after it stops), a
//! real broker and the real timetable; two things are stood in for. Its clock is a
//! [`TestClock`] that follows tokio's paused clock and that a test suspends or sets. Its runs
//! are recorded instead of executed: each launched [`Job`] reaches the test, which ends it
//! with the outcome it chooses (the real runs are the integration tests' business). The
//! process-wide chores (systemd, the orphan reaper, memory shedding) are off: this process
//! is shared with other tests.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Inbox, State, Surroundings};
use crate::broker::control::{FireError, Request};
use crate::broker::socket::SocketWatch;
use crate::broker::{Broker, Limits, Secrets};
use crate::config::{Config, Environment};
use crate::daemon::Stop;
use crate::daemon::records::writers::{HistoryClosed, HistoryWriter, LedgerWriter};
use crate::daemon::run::locks::Locks;
use crate::daemon::run::{Event, Job, Outcome, RunContext};
use crate::daemon::step::Runner;
use crate::daemon::step::contain::Containment;
use crate::history::{self, DaemonEvent, History, Record, RunEnd, SkipReason};
use crate::ledger::LedgerFile;
use crate::protocol::{RunRef, RunStatus, StatusBody};
use crate::schedule::clock::{Clock, Reading};
use crate::schedule::timetable::Trigger;

/// A clock that runs with tokio's (paused) clock, and that a test can suspend (the wall
/// clock and boottime jump, the monotonic clock does not) or set (the wall clock alone).
struct TestClock {
    wall_at_start: Timestamp,
    start: tokio::time::Instant,
    moved: Mutex<Moved>,
}

#[derive(Default)]
struct Moved {
    wall: SignedDuration,
    suspended: Duration,
}

impl TestClock {
    fn starting_at(wall: &str) -> Arc<TestClock> {
        Arc::new(TestClock {
            wall_at_start: wall.parse().unwrap(),
            start: tokio::time::Instant::now(),
            moved: Mutex::new(Moved::default()),
        })
    }

    /// The machine sleeps for `d`: tokio's timers (monotonic) do not run meanwhile.
    fn suspend(&self, d: Duration) {
        let mut moved = self.moved.lock().unwrap();
        moved.wall += SignedDuration::try_from(d).unwrap();
        moved.suspended += d;
    }

    /// Someone sets the wall clock by `by`.
    fn set(&self, by: SignedDuration) {
        self.moved.lock().unwrap().wall += by;
    }

    fn now(&self) -> Timestamp {
        self.read().wall
    }
}

impl Clock for TestClock {
    fn read(&self) -> Reading {
        let mono = self.start.elapsed();
        let moved = self.moved.lock().unwrap();
        let wall = self.wall_at_start + SignedDuration::try_from(mono).unwrap() + moved.wall;
        Reading { wall, mono, boot: Some(mono + moved.suspended) }
    }
}

/// A run the owner launched, for the test to end.
struct Launched {
    job: Job,
    /// When the owner launched it, on the test clock.
    at: Timestamp,
    end: oneshot::Sender<RunStatus>,
    /// Resolves when the run sees the daemon's cancellation.
    cancelled: oneshot::Receiver<()>,
}

/// The owner, running, and the test's ends of its channels.
struct Owner {
    clock: Arc<TestClock>,
    launched: mpsc::UnboundedReceiver<Launched>,
    requests: mpsc::Sender<Request>,
    stop: mpsc::Sender<Stop>,
    task: JoinHandle<Stop>,
    ctx: Arc<RunContext>,
    history: HistoryWriter,
    history_closed: HistoryClosed,
    socket: tempfile::NamedTempFile,
    dir: tempfile::TempDir,
}

/// How the recorded runs answer the daemon's cancellation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnCancel {
    /// They end at once, as cancelled.
    End,
    /// They say they saw it and go on until the test ends them, as a run that takes its
    /// time to stop does.
    Linger,
}

/// The task file's text for `tasks` (YAML, indented under `tasks:`), in UTC.
fn config(dir: &Path, tasks: &str) -> Config {
    let text = format!(
        "timezone: UTC\nstate_dir: {}\nsocket: {}\ntasks:\n{tasks}",
        dir.join("state").display(),
        dir.join("run/s.sock").display()
    );
    let checked = crate::config::parse(&text, &dir.join("backup.yaml"), &Environment::default());
    checked.config.unwrap_or_else(|| panic!("{:?}", checked.problems))
}

impl Owner {
    /// Starts the owner at wall time `wall` for `tasks`, with `past` in its history.
    fn start(wall: &str, tasks: &str, past: &[Record]) -> Owner {
        Owner::start_with(wall, tasks, past, OnCancel::End, None)
    }

    /// `process_start`: when the daemon's process started, if before `wall`.
    fn start_with(
        wall: &str,
        tasks: &str,
        past: &[Record],
        on_cancel: OnCancel,
        process_start: Option<&str>,
    ) -> Owner {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), tasks);
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let mut file = History::new(&config.state_dir);
        file.open().unwrap();
        let (history, history_closed) = HistoryWriter::start(file, watch::channel(None).0).unwrap();
        let (ledger, _) = LedgerWriter::start(LedgerFile::new(&config.state_dir)).unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let ctx = Arc::new(RunContext {
            locks: Locks::for_config(&config),
            changes: None,
            zone: config.timezone.tz.clone(),
            pins: config.tasks.iter().map(|t| vec![None; t.steps.len()]).collect(),
            runner: runner(&config, dir.path()),
            config,
            history: history.clone(),
            ledger,
            outputs: None,
            cancel: CancellationToken::new(),
            events: events_tx.clone(),
            outbox: crate::daemon::notify::Outbox::default(),
            suspends: watch::channel(0).0,
            announcements: Arc::new(crate::broker::feed::Feed::new()),
        });
        let clock = TestClock::starting_at(wall);
        let (launch, launched) =
            recorder(clock.clone(), events_tx, (ctx.cancel.clone(), on_cancel), history.clone());
        let socket = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let surroundings = Surroundings {
            clock: clock.clone(),
            launch,
            socket: SocketWatch::of(socket.path()).unwrap(),
            sentinel: crate::daemon::host::sentinel::Sentinel::polling(),
            process_chores: false,
            launched: process_start.map_or_else(|| clock.read().wall, ts),
        };
        let state = State::new(ctx.clone(), surroundings, past, None, watch::channel(None).1);
        let (requests, requests_rx) = mpsc::channel(8);
        let (stop, stop_rx) = mpsc::channel(1);
        let inbox = Inbox { requests: requests_rx, events, stop: stop_rx };
        let past = past.to_vec();
        let task = tokio::spawn(async move { state.run(inbox, &past).await });
        Owner { clock, launched, requests, stop, task, ctx, history, history_closed, socket, dir }
    }

    /// The next run the owner launches.
    async fn next_run(&mut self) -> Launched {
        self.launched.recv().await.expect("the owner stopped launching")
    }

    /// Lets the owner work for `d` of (paused) time.
    async fn wait(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Whether a run was launched that the test has not taken yet.
    fn nothing_launched(&mut self) -> bool {
        self.launched.try_recv().is_err()
    }

    async fn trigger(&self, task: &str) -> Result<RunRef, FireError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Trigger { task: task.into(), reply }).await.unwrap();
        answer.await.unwrap()
    }

    async fn status(&self) -> StatusBody {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Status { reply }).await.unwrap();
        answer.await.unwrap()
    }

    /// Stops the owner, waits for it to end, and reads back its history.
    async fn finish(self) -> (Stop, Vec<Record>) {
        let _ = self.stop.send(Stop::Signal("test")).await;
        let stop = self.task.await.unwrap();
        drop((self.ctx, self.history, self.socket));
        self.history_closed.wait().await;
        let records = history::read_all(&self.dir.path().join("state")).unwrap().records;
        (stop, records)
    }
}

/// The shared parts of runs, as the owner's tests need them: a broker with no secrets, no
/// containment, no guardian.
fn runner(config: &Config, dir: &Path) -> Runner {
    let broker = Broker::new(Arc::new(Secrets::empty()), config.token_ttl, Limits::default());
    Runner {
        broker: Arc::new(broker),
        socket: dir.join("run/s.sock"),
        server_id: None,
        base_env: Vec::new(),
        secretbox_dir: None,
        home: None,
        kill_grace: config.kill_grace,
        shutdown_grace: config.shutdown_grace,
        containment: Containment::default(),
        guardian: None,
        secret_files: dir.join("secret-files"),
        secretbox_image: None,
    }
}

/// A launcher that hands each run to the test and ends it as the test says (or as
/// cancelled at shutdown), telling the owner and writing its End record as a run does.
fn recorder(
    clock: Arc<TestClock>,
    events: mpsc::UnboundedSender<Event>,
    (cancel, on_cancel): (CancellationToken, OnCancel),
    history: HistoryWriter,
) -> (super::Launch, mpsc::UnboundedReceiver<Launched>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let launch: super::Launch = Box::new(move |job, _feed| {
        let (end, mut ended) = oneshot::channel();
        let (saw_cancel, cancelled) = oneshot::channel();
        let (idx, run_id) = (job.idx, job.run_id.clone());
        let at = clock.now();
        let _ = tx.send(Launched { job, at, end, cancelled });
        let (clock, events, cancel) = (clock.clone(), events.clone(), cancel.clone());
        let history = history.clone();
        Box::pin(async move {
            let _ = events.send(Event::Started { idx, at });
            let status = tokio::select! {
                status = &mut ended => status.unwrap_or(RunStatus::Cancelled),
                () = cancel.cancelled() => {
                    let _ = saw_cancel.send(());
                    match on_cancel {
                        OnCancel::End => RunStatus::Cancelled,
                        OnCancel::Linger => ended.await.unwrap_or(RunStatus::Cancelled),
                    }
                }
            };
            let ended = clock.now();
            let reason = "ended by the test".to_string();
            let end = RunEnd::without_steps(
                run_id.clone(),
                "t".into(),
                ended.to_string(),
                status,
                reason.clone(),
            );
            // Not `append_and_wait`: waiting on the writer's thread would let the paused
            // clock run ahead meanwhile. The writer keeps the order records are sent in.
            history.append(Record::End(end));
            let outcome = Box::new(Outcome::early(status, None, reason));
            let _ = events.send(Event::Ended { idx, run_id, outcome, ended });
        })
    });
    (launch, rx)
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// The skip records in `records`: (scheduled, count, reason).
fn skips(records: &[Record]) -> Vec<(String, u64, SkipReason)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Skip { scheduled, count, reason, .. } => {
                Some((scheduled.clone(), *count, *reason))
            }
            _ => None,
        })
        .collect()
}

fn ends(records: &[Record]) -> Vec<&RunEnd> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::End(end) => Some(end),
            _ => None,
        })
        .collect()
}

const EVERY_10S: &str = "  t:\n    schedule: '@every 10s'\n    command: [true]\n";

#[tokio::test(start_paused = true)]
async fn a_cron_task_fires_on_its_minute_and_not_before() {
    let tasks = "  t:\n    schedule: '*/5 * * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:01:30Z", tasks, &[]);
    let run = owner.next_run().await;
    assert_eq!(run.job.trigger, Trigger::Schedule);
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T10:05:00Z")));
    assert!(run.at >= ts("2026-03-02T10:05:00Z") && run.at < ts("2026-03-02T10:05:01Z"));
    let _ = run.end.send(RunStatus::Success);
    let next = owner.next_run().await;
    assert_eq!(next.job.occurrence, Some(ts("2026-03-02T10:10:00Z")));
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn every_counts_from_the_daemon_start() {
    let mut owner = Owner::start("2026-03-02T10:00:03Z", EVERY_10S, &[]);
    for expected in ["2026-03-02T10:00:13Z", "2026-03-02T10:00:23Z"] {
        let run = owner.next_run().await;
        assert_eq!(run.job.occurrence, Some(ts(expected)));
        let _ = run.end.send(RunStatus::Success);
    }
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn on_overlap_skip_records_each_occurrence_that_could_not_run() {
    let mut owner = Owner::start("2026-03-02T10:00:00Z", EVERY_10S, &[]);
    let run = owner.next_run().await;
    owner.wait(Duration::from_secs(25)).await;
    assert!(owner.nothing_launched(), "a second run started beside the first");
    let _ = run.end.send(RunStatus::Success);
    let (_, records) = owner.finish().await;
    let overlaps: Vec<_> =
        skips(&records).into_iter().filter(|s| s.2 == SkipReason::Overlap).collect();
    assert_eq!(overlaps.len(), 2, "{records:?}");
    assert_eq!(overlaps[0].0, "2026-03-02T10:00:20+00:00");
}

#[tokio::test(start_paused = true)]
async fn on_overlap_queue_holds_one_run_and_skips_the_next() {
    let tasks = "  t:\n    schedule: '@every 10s'\n    on_overlap: queue\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:00:00Z", tasks, &[]);
    let first = owner.next_run().await;
    owner.wait(Duration::from_secs(25)).await;
    assert!(owner.nothing_launched());
    let _ = first.end.send(RunStatus::Failed);
    let queued = owner.next_run().await;
    assert_eq!(queued.job.trigger, Trigger::Queued);
    assert_eq!(queued.job.occurrence, Some(ts("2026-03-02T10:00:20Z")));
    let _ = queued.end.send(RunStatus::Success);
    let (_, records) = owner.finish().await;
    let skipped = skips(&records);
    assert_eq!(skipped, [("2026-03-02T10:00:30+00:00".into(), 1, SkipReason::Overlap)]);
}

#[tokio::test(start_paused = true)]
async fn a_manual_trigger_of_a_busy_task_is_refused_and_not_recorded() {
    let mut owner = Owner::start("2026-03-02T10:00:00Z", EVERY_10S, &[]);
    let run = owner.next_run().await;
    let refused = owner.trigger("t").await;
    assert!(matches!(refused, Err(FireError::Busy { .. })), "{refused:?}");
    let _ = run.end.send(RunStatus::Success);
    let (_, records) = owner.finish().await;
    assert!(skips(&records).is_empty(), "{records:?}");
}

#[tokio::test(start_paused = true)]
async fn a_manual_trigger_runs_at_once_and_an_unknown_task_gets_a_suggestion() {
    let tasks = "  documents:\n    schedule: '@daily'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:00:00Z", tasks, &[]);
    let started = owner.trigger("documents").await.unwrap();
    let run = owner.next_run().await;
    assert_eq!((run.job.trigger, run.job.occurrence), (Trigger::Manual, None));
    assert_eq!(run.job.run_id, started.run_id);
    let unknown = owner.trigger("documets").await;
    assert_eq!(
        unknown.unwrap_err(),
        FireError::NoSuchTask { name: "documets".into(), hint: Some("documents".into()) }
    );
    let _ = run.end.send(RunStatus::Success);
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_suspend_is_caught_up_once_and_the_rest_folded_into_it() {
    let tasks = "  t:\n    schedule: '0 * * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:30:00Z", tasks, &[]);
    owner.wait(Duration::from_secs(5)).await;
    owner.clock.suspend(Duration::from_secs(5 * 3600));
    let run = owner.next_run().await;
    assert_eq!(run.job.trigger, Trigger::CatchUp);
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T15:00:00Z")));
    // Right after the resume, the catch-up waits for the network (resume_settle).
    let settle = run.job.settle.expect("a catch-up after a resume settles");
    assert!(settle <= Duration::from_secs(60) && settle >= Duration::from_secs(58), "{settle:?}");
    let _ = run.end.send(RunStatus::Success);
    let (_, records) = owner.finish().await;
    let skipped = skips(&records);
    assert_eq!(skipped, [("2026-03-02T11:00:00+00:00".into(), 4, SkipReason::Superseded)]);
}

#[tokio::test(start_paused = true)]
async fn a_suspend_past_max_lateness_skips_instead_of_running() {
    let tasks = "  t:\n    schedule: '0 * * * *'\n    max_lateness: 20m\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:30:00Z", tasks, &[]);
    owner.wait(Duration::from_secs(5)).await;
    // Asleep from 10:30 to 13:40: the 13:00 occurrence is 40 minutes late.
    owner.clock.suspend(Duration::from_secs(3 * 3600 + 600));
    owner.wait(Duration::from_secs(5)).await;
    assert!(owner.nothing_launched());
    let (_, records) = owner.finish().await;
    assert_eq!(skips(&records), [("2026-03-02T11:00:00+00:00".into(), 3, SkipReason::TooLate)]);
}

#[tokio::test(start_paused = true)]
async fn downtime_is_caught_up_at_start() {
    let past =
        [Record::Daemon { event: DaemonEvent::Stop, at: "2026-03-01T22:00:00Z".into(), pid: 7 }];
    let tasks = "  t:\n    schedule: '0 3 * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T08:00:00Z", tasks, &past);
    let run = owner.next_run().await;
    assert_eq!(run.job.trigger, Trigger::CatchUp);
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T03:00:00Z")));
    assert_eq!(run.job.settle, None, "a downtime catch-up does not wait for a resume");
    let _ = run.end.send(RunStatus::Success);
    owner.finish().await;
}

/// A first start (no history) whose secrets took 7 s to load, across 03:00: that occurrence
/// fell while the daemon was starting, and runs, not waits a day.
#[tokio::test(start_paused = true)]
async fn an_occurrence_during_start_up_runs_and_one_before_it_does_not() {
    let tasks = "  t:\n    schedule: '0 3 * * *'\n    command: [true]\n";
    let launched = Some("2026-03-02T02:59:55Z");
    let mut owner = Owner::start_with("2026-03-02T03:00:02Z", tasks, &[], OnCancel::End, launched);
    let run = owner.next_run().await;
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T03:00:00Z")));
    let _ = run.end.send(RunStatus::Success);
    owner.finish().await;

    let launched = Some("2026-03-02T03:00:01Z");
    let mut owner = Owner::start_with("2026-03-02T03:00:02Z", tasks, &[], OnCancel::End, launched);
    owner.wait(Duration::from_secs(3600)).await;
    assert!(owner.nothing_launched(), "03:00 was before the daemon's process started");
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_from_the_future_does_not_hide_the_downtime() {
    // Written before the clock was set back: taken at its word, it would say the daemon
    // was alive until then and nothing was missed.
    let past = [
        Record::Daemon { event: DaemonEvent::Stop, at: "2026-03-01T22:00:00Z".into(), pid: 7 },
        Record::Daemon { event: DaemonEvent::Stop, at: "2027-01-01T00:00:00Z".into(), pid: 8 },
    ];
    let tasks = "  t:\n    schedule: '0 3 * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T08:00:00Z", tasks, &past);
    let run = owner.next_run().await;
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T03:00:00Z")));
    let _ = run.end.send(RunStatus::Success);
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn downtime_past_max_lateness_is_skipped_at_start() {
    let past =
        [Record::Daemon { event: DaemonEvent::Stop, at: "2026-03-01T22:00:00Z".into(), pid: 7 }];
    let tasks = "  t:\n    schedule: '0 3 * * *'\n    max_lateness: 1h\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T08:00:00Z", tasks, &past);
    owner.wait(Duration::from_secs(5)).await;
    assert!(owner.nothing_launched());
    let (_, records) = owner.finish().await;
    assert_eq!(skips(&records), [("2026-03-02T03:00:00+00:00".into(), 1, SkipReason::TooLate)]);
}

#[tokio::test(start_paused = true)]
async fn a_clock_corrected_forward_skips_what_it_jumped_over() {
    let tasks = "  t:\n    schedule: '0 * * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:30:00Z", tasks, &[]);
    owner.wait(Duration::from_secs(5)).await;
    owner.clock.set(SignedDuration::from_hours(5));
    owner.wait(Duration::from_secs(5)).await;
    assert!(owner.nothing_launched(), "a correction is not caught up");
    let (_, records) = owner.finish().await;
    let skipped = skips(&records);
    assert_eq!(skipped, [("2026-03-02T11:00:00+00:00".into(), 5, SkipReason::ClockChange)]);
}

#[tokio::test(start_paused = true)]
async fn a_small_step_forward_is_caught_up_like_a_suspend() {
    let tasks = "  t:\n    schedule: '0 * * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:30:00Z", tasks, &[]);
    owner.wait(Duration::from_secs(5)).await;
    owner.clock.set(SignedDuration::from_mins(40));
    let run = owner.next_run().await;
    assert_eq!(run.job.trigger, Trigger::CatchUp);
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T11:00:00Z")));
    let _ = run.end.send(RunStatus::Success);
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_clock_set_back_does_not_repeat_a_run_that_already_happened() {
    let tasks = "  t:\n    schedule: '0 11 * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:59:00Z", tasks, &[]);
    let run = owner.next_run().await;
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T11:00:00Z")));
    let _ = run.end.send(RunStatus::Success);
    owner.wait(Duration::from_secs(60)).await;
    owner.clock.set(SignedDuration::from_mins(-30));
    // An hour of the new clock, which passes 11:00 again.
    owner.wait(Duration::from_secs(3600)).await;
    assert!(owner.nothing_launched(), "the 11:00 run ran twice");
    let status = owner.status().await;
    assert_eq!(status.tasks[0].next.as_deref(), Some("2026-03-03T11:00:00+00:00"));
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_a_dead_daemon_left_is_settled_and_run_again_within_max_lateness() {
    let past = [
        Record::Daemon { event: DaemonEvent::Start, at: "2026-03-02T09:00:00Z".into(), pid: 41 },
        Record::Start {
            run_id: "20260302T100000Z-00000001".into(),
            task: "t".into(),
            at: "2026-03-02T10:00:01Z".into(),
            scheduled: Some("2026-03-02T10:00:00Z".into()),
            trigger: Trigger::Schedule,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        },
    ];
    let tasks = "  t:\n    schedule: '0 10 * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:20:00Z", tasks, &past);
    let run = owner.next_run().await;
    assert_eq!(run.job.trigger, Trigger::CatchUp);
    assert_eq!(run.job.occurrence, Some(ts("2026-03-02T10:00:00Z")));
    // The interrupted run ended the daemon's way: unlock_stale may apply to the next.
    assert_eq!(run.job.after_stop, Some(RunStatus::Interrupted));
    let _ = run.end.send(RunStatus::Success);
    let (_, records) = owner.finish().await;
    let interrupted = ends(&records)
        .into_iter()
        .find(|e| e.run_id == "20260302T100000Z-00000001")
        .expect("the unended run got an End record");
    assert_eq!(interrupted.status, RunStatus::Interrupted);
    assert!(interrupted.reason.contains("pid 41"), "{}", interrupted.reason);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_the_running_run_and_refuses_new_triggers() {
    let mut owner =
        Owner::start_with("2026-03-02T10:00:00Z", EVERY_10S, &[], OnCancel::Linger, None);
    let run = owner.next_run().await;
    owner.stop.send(Stop::Signal("test")).await.unwrap();
    run.cancelled.await.expect("the run was told the daemon is stopping");
    // The owner is draining (the run is still stopping): it answers, and starts nothing.
    assert!(matches!(owner.trigger("t").await, Err(FireError::Stopping)));
    assert!(owner.status().await.tasks[0].running);
    // Occurrences come due while it drains (every 10 s); none starts.
    owner.wait(Duration::from_secs(12)).await;
    assert!(owner.nothing_launched(), "a run started during shutdown");
    let _ = run.end.send(RunStatus::Cancelled);
    let (stop, records) = owner.finish().await;
    assert_eq!(stop, Stop::Signal("test"));
    // The owner returned only once the run had ended and written its End record.
    let statuses: Vec<RunStatus> = ends(&records).iter().map(|e| e.status).collect();
    assert_eq!(statuses, [RunStatus::Cancelled]);
    assert!(matches!(records.first(), Some(Record::Daemon { event: DaemonEvent::Start, .. })));
    assert!(matches!(records.last(), Some(Record::End(_))));
}

#[tokio::test(start_paused = true)]
async fn a_queued_run_the_daemon_stops_before_it_starts_ends_cancelled() {
    let tasks = "  t:\n    schedule: '@every 10s'\n    on_overlap: queue\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T10:00:00Z", tasks, &[]);
    let _running = owner.next_run().await;
    owner.wait(Duration::from_secs(11)).await;
    assert!(owner.status().await.tasks[0].running);
    let (_, records) = owner.finish().await;
    let queued = "the daemon stopped before the queued run started";
    let cancelled: Vec<&RunEnd> =
        ends(&records).into_iter().filter(|e| e.reason == queued).collect();
    assert_eq!(cancelled.len(), 1, "{records:?}");
    assert_eq!((cancelled[0].status, cancelled[0].task.as_str()), (RunStatus::Cancelled, "t"));
    // A Start to pair with its End, as every run has.
    let start = records.iter().find_map(|r| match r {
        Record::Start { run_id, trigger, .. } => Some((run_id, *trigger)),
        _ => None,
    });
    assert_eq!(start, Some((&cancelled[0].run_id, Trigger::Schedule)));
}

#[tokio::test(start_paused = true)]
async fn status_shows_the_next_run_and_the_running_task() {
    let tasks = "  t:\n    schedule: '0 12 * * *'\n    command: [true]\n";
    let mut owner = Owner::start("2026-03-02T11:59:50Z", tasks, &[]);
    let before = owner.status().await;
    assert!(!before.tasks[0].running);
    assert_eq!(before.tasks[0].next.as_deref(), Some("2026-03-02T12:00:00+00:00"));
    let run = owner.next_run().await;
    let during = owner.status().await;
    assert!(during.tasks[0].running);
    assert_eq!(during.tasks[0].next.as_deref(), Some("2026-03-03T12:00:00+00:00"));
    let _ = run.end.send(RunStatus::Failed);
    owner.wait(Duration::from_secs(1)).await;
    let after = owner.status().await;
    assert_eq!(after.tasks[0].last.as_ref().map(|l| l.status), Some(RunStatus::Failed));
    owner.finish().await;
}

/// Regression: the last run known from the history showed `"started": ""` in `status`.
#[tokio::test(start_paused = true)]
async fn status_gives_the_last_run_from_the_history_its_start() {
    let end = |run_id: &str, task: &str, at: &str| {
        let mut end = RunEnd::without_steps(
            run_id.into(),
            task.into(),
            at.into(),
            RunStatus::Success,
            "all steps succeeded".into(),
        );
        end.duration_ms = 90_000;
        Record::End(end)
    };
    let past = [
        Record::Daemon { event: DaemonEvent::Start, at: "2026-03-02T08:00:00Z".into(), pid: 7 },
        Record::Start {
            run_id: "r1".into(),
            task: "a".into(),
            at: "2026-03-02T09:00:01+00:00".into(),
            scheduled: Some("2026-03-02T09:00:00+00:00".into()),
            trigger: Trigger::Schedule,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        },
        end("r1", "a", "2026-03-02T09:01:31+00:00"),
        // Its Start record rotated away: the end less the duration.
        end("r2", "b", "2026-03-02T09:31:30+00:00"),
    ];
    let tasks = "  a:\n    schedule: '0 9 * * *'\n    command: [true]\n  b:\n    schedule: '30 9 * * *'\n    command: [true]\n";
    let owner = Owner::start("2026-03-02T10:00:00Z", tasks, &past);
    let status = owner.status().await;
    let started = |i: usize| status.tasks[i].last.as_ref().map(|l| l.started.clone());
    assert_eq!(started(0).as_deref(), Some("2026-03-02T09:00:01+00:00"));
    assert_eq!(started(1).as_deref(), Some("2026-03-02T09:30:00+00:00"));
    owner.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_stolen_socket_stops_the_owner() {
    let owner = Owner::start("2026-03-02T10:00:00Z", EVERY_10S, &[]);
    std::fs::remove_file(owner.socket.path()).unwrap();
    std::fs::write(owner.socket.path(), "someone else's").unwrap();
    let Owner { task, .. } = owner;
    assert_eq!(task.await.unwrap(), Stop::SocketStolen);
}
