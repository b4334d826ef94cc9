//! `backupnizza run`: the daemon. Wiring, in start-up order: validate the task file → harden
//! the process → load secrets → bind the socket → schedule; and the way back down on SIGTERM:
//! stop firing, SIGTERM running tasks, SIGKILL what remains after `shutdown_grace`, remove the
//! socket, wipe the secrets, exit 0.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, warn};
use zeroize::Zeroizing;

use crate::config::{self, Config, Environment, Overlap};
use crate::exit::{Exit, FAILURE};
use crate::hardening::Weakness;
use crate::history::{self, History, Record};
use crate::metrics::{TaskMetrics, TokenMetrics};
use crate::notifications::{RunFacts, Sent};
use crate::programs::Pinned;
use crate::protocol::{RunBody, RunRef, StatusBody, TaskStatus, TokenCounts};
use crate::runner::{HookFailure, Outcome, RunStatus, Runner};
use crate::scheduler::{self, ClockWatch, Decision, Timetable, Trigger};
use crate::secrets::{self, Secrets};
use crate::server::{self, Broker, Control, Limits, lock};
use crate::vault::{Rejection, Vault};

/// Grace between SIGINT, SIGTERM and SIGKILL when a task times out.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How often the daemon checks that its socket path still names its socket.
const SOCKET_CHECK: Duration = Duration::from_secs(5);
/// Finished runs kept in memory for `trigger --wait`.
const KEEP_RUNS: usize = 256;

/// Runs the daemon in the foreground until SIGTERM or SIGINT. Must be called before any
/// thread exists: it reads `env` secret sources and wipes them from the environment first.
pub fn main(config_path: PathBuf, env: Environment) -> anyhow::Result<()> {
    let checked = config::check_file(&config_path, &env).map_err(|e| Exit::usage(e.to_string()))?;
    let Some(config) = checked.config else {
        for p in &checked.problems {
            eprintln!("{}", p.display(&config_path));
        }
        return Err(Exit::usage(format!("{} is invalid; nothing was started", config_path.display())).into());
    };
    crate::logging::init(config.log);
    for p in &checked.problems {
        warn!("{}", p.display(&config_path));
    }
    info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "starting");

    // Like OpenSSH's StrictModes: the task file and every program must be ours (or root's)
    // and not writable by others, and pinned programs must match their digests.
    let uid = nix::unistd::getuid().as_raw();
    crate::programs::check_trusted(&config_path, "task file", uid).map_err(Exit::usage)?;
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let secretbox_dir = exe_dir.filter(|d| d.join("secretbox").exists());
    let base_env = crate::runner::allowed_env(std::env::vars_os(), secretbox_dir.as_deref());
    let home = env.var("HOME").map(PathBuf::from);
    let pins = match crate::programs::prepare(&config, &base_env, home.as_deref(), uid) {
        Ok((pins, warnings)) => {
            for w in warnings {
                warn!("{w}");
            }
            pins
        }
        Err(problems) => {
            for p in &problems {
                error!("{p}");
            }
            return Err(Exit::usage(format!(
                "{} program problem{}; nothing was started",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ))
            .into());
        }
    };

    // Before any secret is read: no core dumps, no same-user ptrace.
    report_weaknesses(&crate::hardening::protect_process(), config.strict_memory)?;
    // Orphans of task processes are re-parented to us rather than to init, so "descends from
    // the daemon" keeps meaning "is part of a task" (see `is_task_process`).
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(
            "cannot become the child subreaper of task processes: {e}; orphaned task processes may reach the control routes"
        );
    }
    raise_fd_limit();
    // SAFETY: no other thread exists yet; the runtime starts below.
    let env_values = unsafe { secrets::take_env_sources(&config) };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(config, env, env_values, base_env, pins));
    // Runner tasks have finished or been killed; do not wait for stray blocking threads.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn report_weaknesses(weak: &[Weakness], strict: bool) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for w in weak.iter().filter(|w| seen.insert(w.what)) {
        if strict {
            return Err(Exit {
                code: FAILURE,
                message: format!("cannot {}: {} (strict_memory: true refuses to start without it)", w.what, w.why),
            }
            .into());
        }
        warn!("cannot {}: {}; continuing (set strict_memory: true to refuse instead)", w.what, w.why);
    }
    Ok(())
}

/// Many idle connections must not starve a legitimate one of file descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(65_536);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// Loads every secret into locked memory and makes the values known to the redactor.
async fn load_secrets(
    config: &Config,
    env: &Environment,
    mut env_values: HashMap<String, Zeroizing<Vec<u8>>>,
) -> anyhow::Result<Arc<Secrets>> {
    let mut store = Secrets::empty();
    let mut weak = Vec::new();
    let mut stderr = Vec::new();
    for spec in &config.secrets {
        let loaded = secrets::load_one(spec, env, &mut env_values)
            .await
            .map_err(|e| Exit { code: FAILURE, message: e.to_string() })?;
        weak.extend(store.insert(&spec.name, &loaded.value).context("cannot allocate memory for secrets")?);
        info!(secret = %spec.name, source = %secrets::describe(&spec.source), "loaded secret");
        stderr.extend(loaded.stderr.into_iter().map(|line| (spec.name.clone(), line)));
    }
    report_weaknesses(&weak, config.strict_memory)?;
    let store = Arc::new(store);
    crate::redact::register(store.clone());
    // Logged only now, so the redactor masks any value a command echoed on stderr.
    for (name, line) in stderr {
        info!(secret = %name, "secret command said: {line}");
    }
    Ok(store)
}

async fn run(
    config: Config,
    env: Environment,
    env_values: HashMap<String, Zeroizing<Vec<u8>>>,
    base_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pins: Vec<Vec<Option<Pinned>>>,
) -> anyhow::Result<()> {
    let secrets = load_secrets(&config, &env, env_values).await?;

    let bound = server::bind(&config.socket).map_err(|e| Exit { code: FAILURE, message: e.to_string() })?;
    let history = History::open(&config.state_dir)
        .with_context(|| format!("cannot open the run history in {}", config.state_dir.display()))?;
    let past = history::read_all(&config.state_dir).unwrap_or_default();

    let broker = Arc::new(Broker {
        vault: Mutex::new(Vault::new(config.token_ttl)),
        failures: Mutex::default(),
        secrets: secrets.clone(),
        uid: nix::unistd::getuid().as_raw(),
        limits: Limits::default(),
        control: OnceLock::new(),
    });
    drop(secrets);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let runner = Runner {
        broker: broker.clone(),
        socket: config.socket.clone(),
        base_env,
        home: env.var("HOME").map(PathBuf::from),
        active: Arc::default(),
        kill_grace: KILL_GRACE,
        shutdown_grace: config.shutdown_grace,
    };
    let started = Timestamp::now();
    let daemon = Arc::new(Daemon::new(config, runner, pins, history, started, cancel_tx, cancel_rx, &past));
    let _ = broker.control.set(daemon.clone() as Arc<dyn Control>);

    let listener = tokio::net::UnixListener::from_std(bound.listener.try_clone().context("cannot use the socket")?)
        .context("cannot use the socket")?;
    let (stop_server, server_stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, broker.clone(), server_stopped));
    info!(socket = %bound.path.display(), "listening");

    let outcome = daemon.clone().schedule(&bound, &past).await;

    // Shutting down.
    crate::notify::notify("STOPPING=1");
    daemon.stop_runs().await;
    let _ = stop_server.send(true);
    let _ = server.await;
    let _ = daemon.history.append(&Record::Daemon {
        event: "stop".into(),
        at: daemon.rfc3339(Timestamp::now()),
        pid: std::process::id(),
    });
    drop(bound);
    crate::redact::unregister();
    drop(daemon);
    drop(broker);
    match outcome {
        Stop::Signal(name) => {
            info!("stopped on {name}; socket removed, secrets wiped");
            Ok(())
        }
        Stop::SocketStolen => Err(Exit {
            code: FAILURE,
            message: "the socket path no longer names this daemon's socket (replaced or removed by another process); stopped to be safe, as gpg-agent does".into(),
        }
        .into()),
    }
}

enum Stop {
    Signal(&'static str),
    SocketStolen,
}

/// Per-task state.
#[derive(Default)]
struct TaskState {
    running: bool,
    /// A firing waiting for the current run (`on_overlap: queue`): run id, trigger, occurrence.
    queued: Option<(String, Trigger, Option<Timestamp>)>,
    last: Option<RunBody>,
    next: Option<Timestamp>,
    metrics: TaskMetrics,
}

/// Most of the stderr tail a hook gets in `BACKUPNIZZA_STDERR_TAIL`.
const MAX_TAIL_ENV: usize = 32 * 1024;

/// A `before` hook exiting with this (EX_TEMPFAIL) skips the run, as in borgmatic.
const SKIP_EXIT_CODE: i32 = 75;

/// The daemon's shared state: tasks, their runs, history.
pub struct Daemon {
    config: Config,
    runner: Runner,
    /// For each task, each step's pinned program (if pinned).
    pins: Vec<Vec<Option<Pinned>>>,
    history: History,
    started: Timestamp,
    zone: TimeZone,
    tasks: Mutex<Vec<TaskState>>,
    runs: Mutex<Runs>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Serialises metrics-file writes (see `write_metrics`).
    metrics_writer: Mutex<()>,
    cancel: watch::Sender<bool>,
    cancel_rx: watch::Receiver<bool>,
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<String, watch::Sender<RunBody>>,
    finished: VecDeque<String>,
}

/// A run id: the UTC start time and 32 random bits (`20261122T053704Z-0dd8a1f3`).
fn new_run_id(now: Timestamp) -> String {
    let mut suffix = [0u8; 4];
    let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    format!("{}-{:08x}", now.strftime("%Y%m%dT%H%M%SZ"), u32::from_be_bytes(suffix))
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: Config,
        runner: Runner,
        pins: Vec<Vec<Option<Pinned>>>,
        history: History,
        started: Timestamp,
        cancel: watch::Sender<bool>,
        cancel_rx: watch::Receiver<bool>,
        past: &[Record],
    ) -> Daemon {
        let mut tasks: Vec<TaskState> = config.tasks.iter().map(|_| TaskState::default()).collect();
        // Last known result of each task, from history.
        for record in past {
            if let Record::End { run_id, task, at, status, exit_code, duration_ms, reason, .. } = record {
                if let Some(i) = config.tasks.iter().position(|t| &t.name == task) {
                    if let Ok(end) = at.parse::<Timestamp>() {
                        let m = &mut tasks[i].metrics;
                        m.last_end = Some(end);
                        m.last_start = end.checked_sub(jiff::SignedDuration::from_millis(*duration_ms as i64)).ok();
                        m.last_exit_code = *exit_code;
                        m.last_duration_seconds = Some(*duration_ms as f64 / 1000.0);
                        if matches!(status.as_str(), "success" | "warning") {
                            m.last_success = Some(end);
                        }
                    }
                    tasks[i].last = Some(RunBody {
                        run_id: run_id.clone(),
                        task: task.clone(),
                        status: status.clone(),
                        started: String::new(),
                        ended: Some(at.clone()),
                        exit_code: *exit_code,
                        duration_ms: Some(*duration_ms),
                        reason: reason.clone(),
                    });
                }
            }
        }
        let zone = config.timezone.tz.clone();
        Daemon {
            config,
            runner,
            pins,
            history,
            started,
            zone,
            tasks: Mutex::new(tasks),
            runs: Mutex::default(),
            handles: Mutex::default(),
            metrics_writer: Mutex::default(),
            cancel,
            cancel_rx,
        }
    }

    fn rfc3339(&self, at: Timestamp) -> String {
        crate::commands::rfc3339(at, &self.zone)
    }

    fn record(&self, record: Record) {
        if let Err(e) = self.history.append(&record) {
            error!(file = %self.history.path().display(), error = %e, "cannot write run history");
        }
    }

    fn skip(&self, task: &str, scheduled: Timestamp, count: u64, reason: &str, detail: String) {
        if let Some(i) = self.config.tasks.iter().position(|t| t.name == task) {
            lock(&self.tasks)[i].metrics.skips += count;
        }
        self.record(Record::Skip {
            task: task.to_string(),
            at: self.rfc3339(Timestamp::now()),
            scheduled: self.rfc3339(scheduled),
            count,
            reason: reason.to_string(),
            detail,
        });
    }

    /// Fires task `idx` now (or queues it, or skips it, per `on_overlap`).
    fn fire(
        self: &Arc<Self>,
        idx: usize,
        trigger: Trigger,
        occurrence: Option<Timestamp>,
    ) -> Result<RunRef, (StatusCode, String)> {
        let task = &self.config.tasks[idx];
        if *self.cancel_rx.borrow() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping".into()));
        }
        let now = Timestamp::now();
        let run_id = loop {
            let id = new_run_id(now);
            if !lock(&self.runs).by_id.contains_key(&id) {
                break id;
            }
        };
        let mut tasks = lock(&self.tasks);
        let state = &mut tasks[idx];
        if state.running {
            let why = match (task.on_overlap, &state.queued) {
                (Overlap::Skip, _) => "the previous run is still going (on_overlap: skip)",
                (Overlap::Queue, Some(_)) => "one run is already queued behind the current one (on_overlap: queue)",
                (Overlap::Queue, None) => {
                    info!(task = %task.name, run_id, "queued behind the running run (on_overlap: queue)");
                    state.queued = Some((run_id.clone(), trigger, occurrence));
                    drop(tasks);
                    self.register_run(&run_id, &task.name, "queued", now);
                    return Ok(RunRef { run_id, task: task.name.clone() });
                }
            };
            // `skip` takes the tasks lock itself.
            drop(tasks);
            match occurrence {
                // An occurrence that will not run is recorded; a refused manual trigger is
                // only answered (it is not an occurrence of the schedule).
                Some(at) => {
                    warn!(task = %task.name, occurrence = %self.rfc3339(at), "not running: {why}");
                    self.skip(&task.name, at, 1, "overlap", why.to_string());
                    self.write_metrics();
                }
                None => info!(task = %task.name, "manual trigger refused: {why}"),
            }
            return Err((StatusCode::CONFLICT, format!("task {:?} is running and {why}", task.name)));
        }
        state.running = true;
        drop(tasks);
        self.register_run(&run_id, &task.name, "running", now);
        self.spawn_run(idx, run_id.clone(), trigger, occurrence);
        Ok(RunRef { run_id, task: task.name.clone() })
    }

    fn facts(
        &self,
        event: &'static str,
        task: &config::Task,
        (run_id, rid): (&str, &str),
        started: Timestamp,
        ended: Option<Timestamp>,
        outcome: Option<&Outcome>,
    ) -> RunFacts {
        RunFacts {
            event,
            task: task.name.clone(),
            run_id: run_id.to_string(),
            status: outcome.map_or("running", |o| o.status.as_str()).to_string(),
            exit_code: outcome.and_then(|o| o.exit_code),
            duration_ms: None,
            started: self.rfc3339(started),
            ended: ended.map(|t| self.rfc3339(t)),
            reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            stderr_tail: outcome.map(|o| o.stderr_tail.clone()),
            host: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            rid: rid.to_string(),
        }
    }

    /// The run's facts for a hook's environment.
    fn hook_facts(&self, hook: &str, started: Timestamp, outcome: Option<&Outcome>) -> Vec<(String, String)> {
        let mut facts = vec![
            ("BACKUPNIZZA_HOOK".to_string(), hook.to_string()),
            ("BACKUPNIZZA_STARTED".to_string(), self.rfc3339(started)),
        ];
        if let Some(o) = outcome {
            facts.push(("BACKUPNIZZA_STATUS".into(), o.status.as_str().into()));
            facts.push(("BACKUPNIZZA_EXIT_CODE".into(), o.exit_code.map(|c| c.to_string()).unwrap_or_default()));
            facts.push(("BACKUPNIZZA_DURATION_MS".into(), o.duration.as_millis().to_string()));
            facts.push(("BACKUPNIZZA_REASON".into(), o.reason.clone()));
            // Bounded (an environment string over 128 KiB makes exec fail with E2BIG) and
            // without NULs (which no environment string can hold): keep the end.
            let mut tail = o.stderr_tail.join("\n").replace('\0', "");
            if tail.len() > MAX_TAIL_ENV {
                let mut cut = tail.len() - MAX_TAIL_ENV;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail = tail[cut..].to_string();
            }
            facts.push(("BACKUPNIZZA_STDERR_TAIL".into(), tail));
        }
        facts
    }

    /// Sends a run's notifications; `after` orders them behind an earlier event's.
    fn notify(&self, idx: usize, facts: RunFacts, after: Option<Sent>) -> Option<Sent> {
        let task = &self.config.tasks[idx];
        let notify = task.notify.as_ref().or(self.config.notify.as_ref())?;
        crate::notifications::send(notify, &self.runner.broker.secrets, facts, after)
    }

    /// Rewrites the metrics file in the background. Writers take turns, and each snapshots
    /// the state only once it holds its turn, so a later state is never overwritten by an
    /// earlier one.
    fn write_metrics(self: &Arc<Self>) {
        if self.config.metrics_textfile.is_none() {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = lock(&me.metrics_writer);
            me.write_metrics_now();
        });
    }

    fn write_metrics_now(&self) {
        let Some(path) = &self.config.metrics_textfile else { return };
        let tasks = lock(&self.tasks);
        let named: Vec<(&str, TaskMetrics)> = self
            .config
            .tasks
            .iter()
            .zip(tasks.iter())
            .map(|(t, s)| (t.name.as_str(), TaskMetrics { next: s.next, ..s.metrics.clone() }))
            .collect();
        drop(tasks);
        let tokens = {
            let vault = lock(&self.runner.broker.vault);
            let stats = vault.stats();
            TokenMetrics {
                minted: stats.minted,
                redeemed: stats.redeemed,
                rejected: Rejection::ALL.iter().zip(stats.rejected).map(|(r, n)| (r.as_str(), n)).collect(),
            }
        };
        let refs: Vec<(&str, &TaskMetrics)> = named.iter().map(|(n, m)| (*n, m)).collect();
        let text = crate::metrics::render(&refs, &tokens, self.started);
        if let Err(e) = crate::metrics::write_atomic(path, &text) {
            warn!(file = %path.display(), error = %e, "cannot write the metrics file");
        }
    }

    fn register_run(&self, run_id: &str, task: &str, status: &str, now: Timestamp) {
        let body = RunBody {
            run_id: run_id.to_string(),
            task: task.to_string(),
            status: status.to_string(),
            started: self.rfc3339(now),
            ended: None,
            exit_code: None,
            duration_ms: None,
            reason: String::new(),
        };
        lock(&self.runs).by_id.insert(run_id.to_string(), watch::channel(body).0);
    }

    fn spawn_run(self: &Arc<Self>, idx: usize, run_id: String, trigger: Trigger, occurrence: Option<Timestamp>) {
        let me = self.clone();
        let span = tracing::info_span!("run", task = %self.config.tasks[idx].name, run_id = %run_id);
        let handle = tokio::spawn(async move { me.execute(idx, run_id, trigger, occurrence).await }.instrument(span));
        let mut handles = lock(&self.handles);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    async fn execute(self: Arc<Self>, idx: usize, run_id: String, trigger: Trigger, occurrence: Option<Timestamp>) {
        let task = &self.config.tasks[idx];
        let mut cancel = self.cancel_rx.clone();
        let rid = crate::notifications::new_rid();
        let mut run_started = Timestamp::now();
        let mut start_sent: Option<Sent> = None;
        let outcome = 'run: {
            if let (Some(max), Trigger::Schedule | Trigger::CatchUp) = (task.random_delay, trigger) {
                let delay = Duration::from_millis(rand::random_range(0..=max.as_millis().min(u64::MAX as u128) as u64));
                info!("waiting {} before starting (random_delay)", crate::duration::Human(delay));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = async { let _ = cancel.wait_for(|c| *c).await; } => break 'run Outcome {
                        status: RunStatus::Cancelled, exit_code: None, reason: "daemon stopped during random_delay".into(),
                        stderr_tail: Vec::new(), duration: Duration::ZERO,
                    },
                }
            }
            let started = Timestamp::now();
            info!(trigger = trigger.as_str(), "run started");
            self.record(Record::Start {
                run_id: run_id.clone(),
                task: task.name.clone(),
                at: self.rfc3339(started),
                scheduled: occurrence.map(|o| self.rfc3339(o)),
                trigger: trigger.as_str().into(),
            });
            {
                let mut tasks = lock(&self.tasks);
                tasks[idx].metrics.last_start = Some(started);
            }
            run_started = started;
            start_sent = self.notify(idx, self.facts("start", task, (&run_id, &rid), started, None, None), None);
            if let Some(before) = &task.hooks.before {
                let facts = self.hook_facts("before", started, None);
                match self.runner.run_hook(task, before, &run_id, facts, &mut cancel).await {
                    Ok(0) => {}
                    Ok(SKIP_EXIT_CODE) => {
                        info!("the before hook exited 75: skipping this run");
                        break 'run Outcome {
                            status: RunStatus::Skipped,
                            exit_code: None,
                            reason: "the before hook exited 75 (skip)".into(),
                            stderr_tail: Vec::new(),
                            duration: Duration::ZERO,
                        };
                    }
                    Ok(code) => {
                        break 'run Outcome {
                            status: RunStatus::Failed,
                            exit_code: Some(code),
                            reason: format!("the before hook failed with exit code {code}; the steps did not run"),
                            stderr_tail: Vec::new(),
                            duration: Duration::ZERO,
                        };
                    }
                    Err(HookFailure::Cancelled) => {
                        break 'run Outcome {
                            status: RunStatus::Cancelled,
                            exit_code: None,
                            reason: "stopped by daemon shutdown during the before hook".into(),
                            stderr_tail: Vec::new(),
                            duration: Duration::ZERO,
                        };
                    }
                    Err(HookFailure::Failed(why)) => {
                        break 'run Outcome {
                            status: RunStatus::Failed,
                            exit_code: None,
                            reason: format!("the before hook failed: {why}; the steps did not run"),
                            stderr_tail: Vec::new(),
                            duration: Duration::ZERO,
                        };
                    }
                }
            }
            let deadline = task.timeout.map(|t| Instant::now() + t);
            // The occurrence a run belongs to, with milliseconds, for scripts (and for the
            // benchmark that measures how punctually runs start).
            let mut facts = Vec::new();
            if let Some(o) = occurrence {
                facts.push((
                    "BACKUPNIZZA_SCHEDULED".to_string(),
                    o.to_zoned(self.zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
                ));
            }
            self.runner.run(task, &self.pins[idx], &run_id, &facts, deadline, cancel.clone()).await
        };
        // Result hooks, then `after` — also when the `before` hook failed; none for a run the
        // `before` hook skipped, or once the daemon is stopping.
        if !matches!(outcome.status, RunStatus::Cancelled | RunStatus::Skipped) {
            let which = if outcome.status.is_ok() {
                ("on_success", &task.hooks.on_success)
            } else {
                ("on_failure", &task.hooks.on_failure)
            };
            let started = Timestamp::now() - jiff::SignedDuration::try_from(outcome.duration).unwrap_or_default();
            for (name, hook) in [which, ("after", &task.hooks.after)] {
                let Some(argv) = hook else { continue };
                if *cancel.borrow() {
                    break;
                }
                let facts = self.hook_facts(name, started, Some(&outcome));
                match self.runner.run_hook(task, argv, &run_id, facts, &mut cancel).await {
                    Ok(0) => {}
                    Ok(code) => warn!("the {name} hook exited {code}; the run's result is unchanged"),
                    Err(HookFailure::Cancelled) => break,
                    Err(HookFailure::Failed(why)) => {
                        warn!("the {name} hook failed: {why}; the run's result is unchanged")
                    }
                }
            }
        }
        let ended = Timestamp::now();
        let duration_ms = outcome.duration.as_millis() as u64;
        let message = format!(
            "run ended: {} ({}) after {}",
            outcome.status.as_str(),
            outcome.reason,
            crate::duration::Human(Duration::from_millis(duration_ms))
        );
        match outcome.status {
            RunStatus::Success | RunStatus::Skipped => info!("{message}"),
            RunStatus::Warning | RunStatus::Cancelled => warn!("{message}"),
            _ => error!("{message}"),
        }
        self.record(Record::End {
            run_id: run_id.clone(),
            task: task.name.clone(),
            at: self.rfc3339(ended),
            status: outcome.status.as_str().into(),
            exit_code: outcome.exit_code,
            duration_ms,
            reason: outcome.reason.clone(),
            stderr_tail: outcome.stderr_tail.clone(),
        });
        {
            let mut tasks = lock(&self.tasks);
            let m = &mut tasks[idx].metrics;
            m.last_end = Some(ended);
            m.last_exit_code = outcome.exit_code;
            m.last_duration_seconds = Some(outcome.duration.as_secs_f64());
            match outcome.status {
                RunStatus::Skipped => m.skips += 1,
                status => {
                    m.runs += 1;
                    if status.is_ok() {
                        m.last_success = Some(ended);
                    } else if status != RunStatus::Cancelled {
                        m.failures += 1;
                    }
                }
            }
        }
        if outcome.status != RunStatus::Cancelled {
            let mut facts = self.facts("end", task, (&run_id, &rid), run_started, Some(ended), Some(&outcome));
            facts.duration_ms = Some(duration_ms);
            self.notify(idx, facts, start_sent);
        }
        self.write_metrics();
        let body = {
            let runs = lock(&self.runs);
            let mut body = runs.by_id.get(&run_id).map(|s| s.borrow().clone()).unwrap_or_else(|| RunBody {
                run_id: run_id.clone(),
                task: task.name.clone(),
                status: String::new(),
                started: String::new(),
                ended: None,
                exit_code: None,
                duration_ms: None,
                reason: String::new(),
            });
            body.status = outcome.status.as_str().into();
            body.ended = Some(self.rfc3339(ended));
            body.exit_code = outcome.exit_code;
            body.duration_ms = Some(duration_ms);
            body.reason = outcome.reason;
            body
        };
        self.finish_run(&run_id, body.clone());
        let next = {
            let mut tasks = lock(&self.tasks);
            let state = &mut tasks[idx];
            state.last = Some(body);
            match state.queued.take() {
                Some(queued) if !*self.cancel_rx.borrow() => Some(queued),
                Some((queued_id, _, _)) => {
                    state.running = false;
                    drop(tasks);
                    self.finish_cancelled(&queued_id, &self.config.tasks[idx].name);
                    None
                }
                None => {
                    state.running = false;
                    None
                }
            }
        };
        if let Some((queued_id, trigger, occurrence)) = next {
            if let Some(sender) = lock(&self.runs).by_id.get(&queued_id) {
                sender.send_modify(|b| b.status = "running".into());
            }
            let trigger = if trigger == Trigger::Manual { Trigger::Manual } else { Trigger::Queued };
            self.spawn_run(idx, queued_id, trigger, occurrence);
        }
    }

    fn finish_cancelled(&self, run_id: &str, task: &str) {
        let now = Timestamp::now();
        self.finish_run(
            run_id,
            RunBody {
                run_id: run_id.to_string(),
                task: task.to_string(),
                status: RunStatus::Cancelled.as_str().into(),
                started: self.rfc3339(now),
                ended: Some(self.rfc3339(now)),
                exit_code: None,
                duration_ms: Some(0),
                reason: "the daemon stopped before the queued run started".into(),
            },
        );
    }

    fn finish_run(&self, run_id: &str, body: RunBody) {
        let mut runs = lock(&self.runs);
        if let Some(sender) = runs.by_id.get(run_id) {
            sender.send_replace(body);
        }
        runs.finished.push_back(run_id.to_string());
        while runs.finished.len() > KEEP_RUNS {
            if let Some(old) = runs.finished.pop_front() {
                runs.by_id.remove(&old);
            }
        }
    }

    /// The scheduler loop; returns why it stopped.
    async fn schedule(self: Arc<Self>, bound: &server::BoundSocket, past: &[Record]) -> Stop {
        let now = Timestamp::now();
        let mut table = Timetable::default();
        self.catch_up_downtime(past, now);
        self.record(Record::Daemon { event: "start".into(), at: self.rfc3339(now), pid: std::process::id() });
        for (i, task) in self.config.tasks.iter().enumerate() {
            match scheduler::next_fire(&task.schedule, &task.zone.tz, self.started, now) {
                Some(next) => {
                    info!(task = %task.name, schedule = %task.schedule, timezone = %task.zone.name, next = %crate::commands::rfc3339(next, &task.zone.tz), "scheduled");
                    lock(&self.tasks)[i].next = Some(next);
                    table.push(next, i);
                }
                None => warn!(task = %task.name, schedule = %task.schedule, "will not fire in the next 30 years"),
            }
        }
        let (mut term, mut int, mut hup) =
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
                (Ok(t), Ok(i), Ok(h)) => (t, i, h),
                _ => {
                    error!("cannot install signal handlers");
                    return Stop::Signal("a signal-handler failure");
                }
            };
        // Synchronously: READY means the metrics file exists.
        self.write_metrics_now();
        crate::notify::notify("READY=1");
        let mut watchdog = crate::notify::watchdog_interval().map(|d| tokio::time::interval(d / 2));
        let mut socket_check = tokio::time::interval(SOCKET_CHECK);
        let mut clock = ClockWatch::new(now, Instant::now());
        let mut zombies = HashSet::new();
        loop {
            let pause = table.sleep_for(Timestamp::now());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = term.recv() => return Stop::Signal("SIGTERM"),
                _ = int.recv() => return Stop::Signal("SIGINT"),
                _ = hup.recv() => {
                    info!("SIGHUP received: the task file is read once at start; restart the daemon to apply changes");
                    continue;
                }
                _ = socket_check.tick() => {
                    if !bound.still_ours() {
                        error!(socket = %bound.path.display(), "the socket path no longer names this daemon's socket; stopping");
                        return Stop::SocketStolen;
                    }
                    let active = lock(&self.runner.active).clone();
                    reap_orphans(&active, &mut zombies);
                    continue;
                }
                _ = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } } => {
                    crate::notify::notify("WATCHDOG=1");
                    continue;
                }
            }
            let now = Timestamp::now();
            if let Some(jump) = clock.observe(now, Instant::now()) {
                let direction = if jump.is_negative() { "back" } else { "forward" };
                warn!(
                    "the wall clock moved {direction} by {} more than the monotonic clock (suspend and resume, or a clock change); checking for missed runs",
                    crate::duration::Human(Duration::try_from(jump.abs()).unwrap_or_default())
                );
            }
            while let Some((due, idx)) = table.pop_due(now) {
                self.handle_due(idx, due, now);
                let task = &self.config.tasks[idx];
                let next = scheduler::next_fire(&task.schedule, &task.zone.tz, self.started, now.max(due));
                lock(&self.tasks)[idx].next = next;
                if let Some(next) = next {
                    table.push(next, idx);
                }
            }
        }
    }

    /// An occurrence came due: run it (on time or caught up) or log why not.
    fn handle_due(self: &Arc<Self>, idx: usize, due: Timestamp, now: Timestamp) {
        let task = &self.config.tasks[idx];
        match scheduler::decide(&task.schedule, &task.zone.tz, due, now, task.max_lateness) {
            Decision::Run { trigger, occurrence, superseded, first_missed } => {
                if trigger == Trigger::CatchUp {
                    let late = Duration::try_from(now.duration_since(occurrence)).unwrap_or_default();
                    warn!(
                        task = %task.name,
                        "missed {} occurrence{} from {} (machine asleep or daemon stopped); running once now, {} late",
                        superseded + 1,
                        if superseded == 0 { "" } else { "s" },
                        self.rfc3339(first_missed),
                        crate::duration::Human(Duration::from_secs(late.as_secs()))
                    );
                    if superseded > 0 {
                        self.skip(
                            &task.name,
                            first_missed,
                            superseded,
                            "superseded",
                            format!("folded into the catch-up run of {}", self.rfc3339(occurrence)),
                        );
                    }
                }
                let _ = self.fire(idx, trigger, Some(occurrence));
            }
            Decision::TooLate { count, first, last } => {
                let which = if count == 1 {
                    format!("the missed occurrence of {}", self.rfc3339(first))
                } else {
                    format!("{count} missed occurrences from {} to {}", self.rfc3339(first), self.rfc3339(last))
                };
                warn!(
                    task = %task.name,
                    "skipping {which}: the latest is more than max_lateness ({}) late",
                    crate::duration::Human(task.max_lateness)
                );
                self.skip(
                    &task.name,
                    first,
                    count,
                    "too_late",
                    format!("more than max_lateness ({}) late", crate::duration::Human(task.max_lateness)),
                );
                self.write_metrics();
            }
        }
    }

    /// Occurrences that fell while the daemon was not running (after the last history
    /// record) are handled like those missed during a suspend.
    fn catch_up_downtime(self: &Arc<Self>, past: &[Record], now: Timestamp) {
        let Some(last_alive) = past.iter().filter_map(|r| r.at().parse::<Timestamp>().ok()).max() else { return };
        for (idx, task) in self.config.tasks.iter().enumerate() {
            if task.schedule.interval().is_some() {
                continue; // `@every` counts from the daemon's start.
            }
            if let Some(first) = task.schedule.next_after(last_alive, &task.zone.tz).filter(|o| *o <= now) {
                self.handle_due(idx, first, now);
            }
        }
    }

    /// Cancels running tasks and waits for them (they SIGTERM, then SIGKILL, their groups).
    async fn stop_runs(&self) {
        let _ = self.cancel.send(true);
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.handles));
        let running = handles.iter().filter(|h| !h.is_finished()).count();
        if running > 0 {
            info!(running, grace = %crate::duration::Human(self.config.shutdown_grace), "stopping running tasks");
        }
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(self.config.shutdown_grace + KILL_GRACE + Duration::from_secs(5), all).await.is_err() {
            error!("some tasks did not stop in time");
        }
    }
}

/// Reaps orphaned task processes the daemon adopted as child subreaper. A zombie child that
/// is not a step process the runner waits for, seen on two checks in a row, is an orphan
/// (the runner's own children are reaped by tokio within milliseconds).
#[cfg(target_os = "linux")]
fn reap_orphans(active: &HashSet<u32>, previous: &mut HashSet<u32>) {
    let mut zombies = HashSet::new();
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else { return };
    for thread in threads.flatten() {
        let Ok(children) = std::fs::read_to_string(thread.path().join("children")) else { continue };
        for pid in children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')));
            if zombie && !active.contains(&pid) {
                zombies.insert(pid);
            }
        }
    }
    for pid in zombies.intersection(previous) {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(*pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    *previous = zombies;
}

#[cfg(not(target_os = "linux"))]
fn reap_orphans(_active: &HashSet<u32>, _previous: &mut HashSet<u32>) {}

impl Control for Daemon {
    fn is_task_process(&self, pid: u32) -> bool {
        use crate::peer::{Ancestry, ancestry};
        // As child subreaper (Linux), everything a task starts stays below the daemon, even
        // after its parent exits; a broken chain counts as "maybe" and is refused.
        let me = std::process::id();
        if cfg!(target_os = "linux") {
            return pid == me || ancestry(pid, me) != Ancestry::Unrelated;
        }
        let active = lock(&self.runner.active).clone();
        active.iter().any(|a| ancestry(pid, *a) != Ancestry::Unrelated)
    }

    fn status(&self) -> StatusBody {
        let tasks = lock(&self.tasks);
        let vault = lock(&self.runner.broker.vault);
        let stats = vault.stats();
        let rejected = Rejection::ALL.iter().zip(stats.rejected).map(|(r, n)| (r.as_str().to_string(), n)).collect();
        StatusBody {
            daemon: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: self.rfc3339(self.started),
            tasks: self
                .config
                .tasks
                .iter()
                .zip(tasks.iter())
                .map(|(task, state)| TaskStatus {
                    name: task.name.clone(),
                    schedule: task.schedule.to_string(),
                    timezone: task.zone.name.clone(),
                    next: state.next.map(|n| crate::commands::rfc3339(n, &task.zone.tz)),
                    running: state.running,
                    last: state.last.clone(),
                })
                .collect(),
            tokens: TokenCounts { minted: stats.minted, redeemed: stats.redeemed, live: vault.live() as u64, rejected },
        }
    }

    fn trigger(self: Arc<Self>, task: &str) -> Result<RunRef, (StatusCode, String)> {
        let Some(idx) = self.config.tasks.iter().position(|t| t.name == task) else {
            return Err((StatusCode::NOT_FOUND, format!("no task named {task:?}")));
        };
        self.fire(idx, Trigger::Manual, None)
    }

    fn run(&self, id: &str, wait: Duration) -> server::BoxFuture<Option<RunBody>> {
        let receiver = lock(&self.runs).by_id.get(id).map(|s| s.subscribe());
        Box::pin(async move {
            let mut receiver = receiver?;
            let done = |b: &RunBody| b.status != "running" && b.status != "queued";
            let _ = tokio::time::timeout(wait, receiver.wait_for(done)).await;
            let body = receiver.borrow().clone();
            Some(body)
        })
    }
}
