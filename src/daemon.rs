//! `backupnizza run`: the daemon's start-up and shutdown.
//!
//! Start-up: validate the task file → take the `env:` secret sources onto locked pages and
//! out of the environment → check the programs it runs, secret helpers included
//! ([`programs`]) → harden the process → load the other secrets → bind the socket → start the history and metrics writers
//! ([`writers`]) and the tasks' output files' ([`output_file`]) → serve the socket → hand the task and run state to its owner ([`state`]),
//! which fires runs ([`execute`], processes by [`runner`], `{secret_file:}` values by
//! [`secret_files`]; [`notifications`], [`metrics`]
//! and [`systemd`] report them). Shutdown, on SIGTERM or SIGINT: the state owner stops
//! firing, cancels runs (SIGINT, SIGTERM, then SIGKILL within `shutdown_grace`) and waits for their
//! End records; then the server closes, the history is flushed, the socket is removed, and
//! the secrets are dropped — and the log says they were wiped only once that is true.

mod changes;
mod conditions;
mod contain;
pub(crate) mod execute;
pub mod guardian;
mod inhibit;
pub(crate) mod locks;
pub(crate) mod metrics;
pub(crate) mod notifications;
mod notifier;
mod output;
pub(crate) mod output_file;
pub(crate) mod programs;
pub(crate) mod runner;
pub(crate) mod secret_files;
mod state;
pub(crate) mod systemd;
mod writers;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::control::Control;
use crate::broker::secrets::{self, Secrets};
use crate::broker::{Broker, Limits, Redeemers, socket};
use crate::config::{self, Config, Environment};
use crate::exit::{Exit, FAILURE};
use crate::history::{self, DaemonEvent, History, Record};
use crate::sys::hardening::Weakness;
use crate::trust::Pinned;
use execute::RunContext;
use output_file::OutputWriter;
use runner::Runner;
use writers::{HistoryWriter, MetricsWriter};

/// Longest shutdown waits for the history thread and for notifications in flight.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Runs the daemon in the foreground until SIGTERM or SIGINT. Must be called before any
/// other thread exists: it takes `env` secret sources out of the environment, which it
/// refuses to do (with an error) once another thread exists.
pub fn main(config_path: PathBuf, mut env: Environment) -> anyhow::Result<()> {
    close_inherited_fds(&env);
    let checked = config::check_file(&config_path, &env).map_err(|e| Exit::usage(e.to_string()))?;
    let Some(config) = checked.config else {
        for p in &checked.problems {
            eprintln!("{}", p.display(&config_path));
        }
        return Err(Exit::usage(format!(
            "{} is invalid; nothing was started",
            config_path.display()
        ))
        .into());
    };
    // The `env` sources, as early as the task file names them: onto locked pages, out of
    // the environment block, and out of the snapshot of it taken at start (which lives as
    // long as the daemon), before anything else copies the environment (the tasks' allowlist
    // below does).
    check_single_threaded()?;
    // The runtime, the first thread besides this one, starts below.
    let (env_values, env_weak) = secrets::take_env_sources(&config)
        .map_err(|e| Exit { code: FAILURE, message: e.to_string() })?;
    for spec in &config.secrets {
        if let config::Source::Env { var } = &spec.source {
            env.forget(var);
        }
    }
    crate::logging::init(config.log);
    for p in &checked.problems {
        warn!("{}", p.display(&config_path));
    }
    info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "starting");

    // Like OpenSSH's StrictModes: the task file and every program must be ours (or root's)
    // and not writable by others, and pinned programs must match their digests.
    let uid = nix::unistd::getuid().as_raw();
    crate::trust::check_trusted(&config_path, "task file", uid).map_err(Exit::usage)?;
    let exe_dir =
        std::env::current_exe().ok().and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    let secretbox_dir = exe_dir.filter(|d| d.join("secretbox").exists());
    let base_env = runner::allowed_env(std::env::vars_os(), secretbox_dir.as_deref());
    let home = env.var("HOME").map(PathBuf::from);
    let daemon_path = std::env::var_os("PATH");
    let cx = programs::Context {
        config_path: &config_path,
        daemon_path: daemon_path.as_deref(),
        base_env: &base_env,
        home: home.as_deref(),
        uid,
    };
    let pins = prepare_programs(&config, &cx)?;
    let redeemers = pin_redeemers(&config, secretbox_dir.as_deref(), &base_env, uid)?;

    // Before any secret is read (but for `env` sources, in the process since it started):
    // no core dumps, no same-user ptrace.
    report_weaknesses(&crate::sys::hardening::protect_process(), config.strict_memory)?;
    // Orphans of task processes are re-parented to us rather than to init, so "descends from
    // the daemon" keeps meaning "is part of a task" (see `Broker::is_task_process`).
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(
            "cannot become the child subreaper of task processes: {e}; orphaned task processes may reach the control routes"
        );
    }
    raise_fd_limit();
    // Before any secret is read, so the guardian (an exec, but started from here) never
    // had one near it.
    let guardian = match std::env::current_exe().and_then(|exe| guardian::Guardian::spawn(&exe)) {
        Ok(g) => Some(g),
        Err(e) => {
            warn!(error = %e, "cannot start the guardian process; if the daemon dies, task processes other than each step's main process may outlive it");
            None
        }
    };
    report_weaknesses(&env_weak, config.strict_memory)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let start = Start { config, env, env_values, base_env, pins, redeemers, guardian };
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = mpsc::channel(1);
        // Installed here, before READY can be sent: a spawned task might not have run yet
        // when a SIGTERM arrives right after READY, and the default action would kill us.
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        tokio::spawn(watch_signals(handlers, stop_tx));
        serve(start, stop_rx).await
    });
    // Runs have finished or been killed; do not wait for stray blocking threads.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result?.stop {
        Stop::Signal(_) => Ok(()),
        Stop::SocketStolen => Err(Exit {
            code: FAILURE,
            message: "the socket path no longer names this daemon's socket (replaced or removed by another process); stopped to be safe, as gpg-agent does".into(),
        }
        .into()),
    }
}

/// Closes every descriptor the daemon was started with but stdin, stdout, stderr and those
/// systemd passes on purpose (`LISTEN_FDS`), which are only marked close-on-exec.
fn close_inherited_fds(env: &Environment) {
    let ours =
        env.var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let listen = if ours {
        env.var("LISTEN_FDS").and_then(|n| n.parse::<i32>().ok()).unwrap_or(0)
    } else {
        0
    };
    crate::sys::fds::close_inherited(listen);
}

/// Refuses to go on when another thread already exists.
fn check_single_threaded() -> anyhow::Result<()> {
    match crate::sys::proc::thread_count() {
        Some(count) if count > 1 => Err(Exit {
            code: FAILURE,
            message: format!(
                "the daemon must start single-threaded, but {count} threads exist; this is a bug"
            ),
        }
        .into()),
        _ => Ok(()),
    }
}

/// Pins the programs that may redeem tokens: the `secretbox` tasks will find (the one beside
/// this binary, else the first on `PATH`) and every task's `redeemers:`, which must pass the
/// same StrictModes checks as the programs tasks run.
fn pin_redeemers(
    config: &Config,
    secretbox_dir: Option<&std::path::Path>,
    base_env: &[(OsString, OsString)],
    uid: u32,
) -> anyhow::Result<Redeemers> {
    let path = base_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
    let secretbox = match secretbox_dir {
        Some(dir) => Some(dir.join("secretbox")),
        None => crate::trust::resolve("secretbox", path, None, None),
    };
    if let Some(p) = &secretbox {
        info!(secretbox = %p.display(), "pinned the secretbox that may redeem tokens");
    } else {
        warn!(
            "no secretbox beside the daemon or on PATH: only programs listed under a task's `redeemers:` can redeem tokens"
        );
    }
    let mut problems = Vec::new();
    for task in &config.tasks {
        for program in &task.redeemers {
            if let Err(e) = crate::trust::check_trusted(program, "redeemer", uid) {
                problems.push(format!("task {:?}: {e}", task.name));
            }
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            error!("{p}");
        }
        return Err(Exit::usage("an untrusted redeemer; nothing was started").into());
    }
    Redeemers::pin(
        secretbox.as_deref(),
        config.tasks.iter().map(|t| (t.name.as_str(), t.redeemers.as_slice())),
    )
    .map_err(|e| Exit::usage(e).into())
}

fn prepare_programs(
    config: &Config,
    cx: &programs::Context<'_>,
) -> anyhow::Result<Vec<Vec<Option<Pinned>>>> {
    match programs::prepare(config, cx) {
        Ok((pins, warnings)) => {
            for w in warnings {
                warn!("{w}");
            }
            Ok(pins)
        }
        Err(problems) => {
            for p in &problems {
                error!("{p}");
            }
            let s = if problems.len() == 1 { "" } else { "s" };
            Err(Exit::usage(format!("{} program problem{s}; nothing was started", problems.len()))
                .into())
        }
    }
}

fn report_weaknesses(weak: &[Weakness], strict: bool) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for w in weak.iter().filter(|w| seen.insert(w.what)) {
        if strict {
            return Err(Exit {
                code: FAILURE,
                message: format!(
                    "cannot {}: {} (strict_memory: true refuses to start without it)",
                    w.what, w.why
                ),
            }
            .into());
        }
        warn!(
            "cannot {}: {}; continuing (set strict_memory: true to refuse instead)",
            w.what, w.why
        );
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
    mut env_values: secrets::EnvValues,
) -> anyhow::Result<Arc<Secrets>> {
    let mut store = Secrets::empty();
    let mut weak = Vec::new();
    let mut stderr = Vec::new();
    for spec in &config.secrets {
        // An error may quote a command's stderr, which may hold a secret loaded before this
        // one: masked with what is loaded so far, since the redactor knows nothing yet.
        let loaded = secrets::load_one(spec, env, &mut env_values).await.map_err(|e| Exit {
            code: FAILURE,
            message: crate::redact::redact_with(
                &e.to_string(),
                Some(&store as &dyn crate::redact::Needles),
            )
            .into_owned(),
        })?;
        weak.extend(loaded.weak);
        weak.extend(
            store
                .insert(&spec.name, loaded.value.as_bytes())
                .context("cannot allocate memory for secrets")?,
        );
        info!(secret = %spec.name, source = %secrets::describe(&spec.source), "loaded secret");
        stderr.extend(loaded.stderr.into_iter().map(|line| (spec.name.clone(), line)));
    }
    report_weaknesses(&weak, config.strict_memory)?;
    let store = Arc::new(store);
    crate::redact::register(store.clone());
    // Logged only now, once every value is known to the redactor: a command's stderr may echo
    // its own value or one loaded after it. Each line is masked raw before it is formatted
    // (see `logging`), and each line of a multi-line value is a needle of its own.
    for (name, line) in stderr {
        info!(secret = %name, "secret command said: {}", line.as_str());
    }
    Ok(store)
}

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Signal(&'static str),
    SocketStolen,
}

/// Everything `serve` starts from, prepared while the process was single-threaded.
struct Start {
    config: Config,
    env: Environment,
    env_values: secrets::EnvValues,
    base_env: Vec<(OsString, OsString)>,
    pins: Vec<Vec<Option<Pinned>>>,
    redeemers: Redeemers,
    guardian: Option<guardian::Guardian>,
}

/// How `serve` ended: why, and a weak reference to the secrets it loaded, which is dead
/// once they have been dropped (and their pages zeroed and unmapped).
#[derive(Debug)]
struct Finished {
    stop: Stop,
    /// Read by the lifecycle test; the log line above checks the same.
    #[cfg_attr(not(test), allow(dead_code))]
    secrets: Weak<Secrets>,
}

/// Turns SIGTERM and SIGINT into a stop request; SIGHUP is only logged.
type Handlers = (
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
);

async fn watch_signals(handlers: Handlers, stop: mpsc::Sender<Stop>) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
        error!("cannot install signal handlers");
        let _ = stop.send(Stop::Signal("a signal-handler failure")).await;
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                info!("SIGHUP received: the task file is read once at start; restart the daemon to apply changes");
                continue;
            }
        };
        let _ = stop.send(Stop::Signal(name)).await;
    }
}

/// Serves until a stop request arrives on `stop`, then shuts down in order.
async fn serve(start: Start, stop: mpsc::Receiver<Stop>) -> anyhow::Result<Finished> {
    let Start { config, env, env_values, base_env, pins, redeemers, guardian } = start;
    let secrets = load_secrets(&config, &env, env_values).await?;
    let weak_secrets = Arc::downgrade(&secrets);

    let bound = bind_socket(&config, &env)?;
    // History trouble never stops backups: the writer holds records and retries, `status`
    // shows the problem, and the past is what could be read.
    let mut history = History::new(&config.state_dir);
    if let Err(e) = history.open() {
        error!(file = %history.path().display(), error = %e, "cannot open the run history; tasks run anyway, and records are held in memory and retried");
    }
    let past = match history::read_all(&config.state_dir) {
        Ok(loaded) => {
            if let Some(summary) = loaded.bad_lines_summary() {
                warn!("run history: {summary}");
            }
            loaded.records
        }
        Err(e) => {
            error!(dir = %config.state_dir.display(), error = %e, "cannot read the run history; starting without it (no catch-up of downtime, no last results)");
            Vec::new()
        }
    };
    let (history_problem, history_health) = tokio::sync::watch::channel(None);
    let (history, history_closed) = HistoryWriter::start(history, history_problem)
        .context("cannot start the history writer")?;
    let metrics = match &config.metrics_textfile {
        Some(path) => {
            Some(MetricsWriter::start(path.clone()).context("cannot start the metrics writer")?)
        }
        None => None,
    };
    // Only a daemon with output files has their writer thread.
    let (outputs, outputs_closed) = if config.tasks.iter().any(|t| t.output_file.is_some()) {
        let (writer, closed) =
            OutputWriter::start().context("cannot start the output-file writer")?;
        (Some(writer), Some(closed))
    } else {
        (None, None)
    };

    let (containment, how) =
        contain::Containment::detect(env.var("BACKUPNIZZA_CGROUP") == Some("off"));
    info!("{how}");
    // The `{secret_file:}` directories live beside the socket, in its private directory;
    // what a daemon that died left there is removed by the settlement, before any run.
    let secret_files = secret_files::root_for(&bound.path);
    secret_files::prepare(&secret_files).with_context(|| {
        format!("cannot create the directory for secret files {}", secret_files.display())
    })?;
    if config.tasks.iter().any(uses_secret_files)
        && let Some(why) = secret_files::check_memory_backed(&secret_files)
    {
        warn!("{why}");
    }
    let broker = Arc::new(
        Broker::new(secrets, config.token_ttl, Limits::default())
            .with_redeemers(redeemers)
            .with_control_group(config.control_group.as_ref().map(|g| g.gid)),
    );
    let (control, requests) = Control::channel(&config.state_dir);
    let (events_tx, events) = mpsc::unbounded_channel();
    let runner = Runner {
        broker: broker.clone(),
        socket: bound.path.clone(),
        server_id: crate::client::ServerId::this_process().map(|id| id.to_string()),
        base_env,
        home: env.var("HOME").map(PathBuf::from),
        kill_grace: config.kill_grace,
        shutdown_grace: config.shutdown_grace,
        containment,
        guardian,
        secret_files: secret_files.clone(),
    };
    let notifications = TaskTracker::new();
    let zone = config.timezone.tz.clone();
    let locks = locks::Locks::for_config(&config);
    let changes = changes::listen(&config);
    let ctx = Arc::new(RunContext {
        locks,
        config,
        pins,
        runner,
        history: history.clone(),
        outputs,
        zone,
        cancel: CancellationToken::new(),
        events: events_tx,
        notifications: notifications.clone(),
        suspends: tokio::sync::watch::channel(0).0,
        changes,
    });

    let listener = tokio::net::UnixListener::from_std(
        bound.listener.try_clone().context("cannot use the socket")?,
    )
    .context("cannot use the socket")?;
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(crate::broker::server::serve_with(
        listener,
        broker.clone(),
        Some(control),
        server_stop.clone(),
    ));
    info!(socket = %bound.path.display(), "listening");

    let state = state::State::new(ctx.clone(), Timestamp::now(), &past, metrics, history_health);
    let stop = state.run(&bound, state::Inbox { requests, events, stop }, &past).await;

    // Every run has ended (or shutdown gave up on it, and said so). Close the socket's
    // connections, then the files, then the socket itself, then the secrets.
    server_stop.cancel();
    if let Err(e) = server.await {
        error!(error = %e, "the socket server ended abnormally");
    }
    notifications.close();
    if tokio::time::timeout(FLUSH_WAIT, notifications.wait()).await.is_err() {
        warn!("some notifications were still in flight at shutdown and were abandoned");
    }
    history.append(Record::Daemon {
        event: DaemonEvent::Stop,
        at: ctx.rfc3339(Timestamp::now()),
        pid: std::process::id(),
    });
    drop(history);
    drop(ctx);
    if tokio::time::timeout(FLUSH_WAIT, history_closed.wait()).await.is_err() {
        error!("the run history could not be flushed at shutdown");
    }
    if let Some(closed) = outputs_closed
        && tokio::time::timeout(FLUSH_WAIT, closed.wait()).await.is_err()
    {
        error!("the output files could not be flushed at shutdown");
    }
    // Every step has ended and removed its own directory; this removes the root (and what a
    // task that would not stop still had), so the socket's directory can go too.
    let _ = std::fs::remove_dir_all(&secret_files);
    drop(bound);
    crate::redact::unregister();
    drop(broker);
    let name = match stop {
        Stop::Signal(name) => name,
        Stop::SocketStolen => "a stolen socket",
    };
    if weak_secrets.strong_count() == 0 {
        info!("stopped on {name}; socket removed, secrets wiped");
    } else {
        warn!(
            "stopped on {name}; socket removed; a task that did not stop still holds the secrets, which are wiped when the process exits"
        );
    }
    Ok(Finished { stop, secrets: weak_secrets })
}

/// Whether any step of `task` (or the task's own `env`) has a `{secret_file:}` value.
fn uses_secret_files(task: &crate::config::Task) -> bool {
    task.env
        .iter()
        .chain(task.steps.iter().flat_map(|s| &s.env))
        .any(|v| matches!(v.value, crate::config::EnvValue::SecretFile(_)))
}

/// Binds the socket. When the default directory under `$TMPDIR` (no `XDG_RUNTIME_DIR`) was
/// taken by another user, binds in a private one instead and records where, rather than let
/// that user stop the daemon from starting.
fn bind_socket(config: &Config, env: &Environment) -> anyhow::Result<socket::BoundSocket> {
    let fail = |e: socket::SocketError| Exit { code: FAILURE, message: e.to_string() };
    // A record left by an earlier daemon names a socket that is gone.
    let _ = std::fs::remove_file(config.state_dir.join(socket::RECORD));
    let group = config.control_group.as_ref().map(|g| g.gid);
    match socket::bind(&config.socket, group) {
        Err(e @ socket::SocketError::UnsafeDir { .. })
            if env.var("XDG_RUNTIME_DIR").is_none()
                && config.socket == env.default_socket()
                && group.is_none() =>
        {
            warn!(
                "{e}; binding in a private directory instead, recorded in {} for the clients",
                config.state_dir.join(socket::RECORD).display()
            );
            let bound = socket::bind_private(&config.socket, &config.state_dir).map_err(fail)?;
            info!(socket = %bound.path.display(), "bound the socket in a private directory");
            Ok(bound)
        }
        other => Ok(other.map_err(fail)?),
    }
}

/// Reaps orphaned task processes the daemon adopted as child subreaper. A zombie child that
/// is not a step process the runner waits for, seen on two checks in a row, is an orphan
/// (the runner's own children are reaped by tokio within milliseconds).
#[cfg(target_os = "linux")]
fn reap_orphans(active: &HashSet<u32>, previous: &mut HashSet<u32>) {
    use nix::unistd::Pid;
    let zombies: HashSet<u32> = crate::sys::proc::own_children()
        .into_iter()
        .filter(|pid| !active.contains(&(*pid as u32)) && contain::is_zombie(Pid::from_raw(*pid)))
        .map(|pid| pid as u32)
        .collect();
    for pid in zombies.intersection(previous) {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(*pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    *previous = zombies;
}

#[cfg(not(target_os = "linux"))]
fn reap_orphans(_active: &HashSet<u32>, _previous: &mut HashSet<u32>) {}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use super::*;

    /// Marks the child's verdict in its output, so a filtered-out child cannot pass.
    const VERDICT: &str = "lifecycle verdict: secrets dropped";

    /// Regression: the daemon and the broker referred to each other (an `Arc` cycle), so the
    /// secret store was never dropped and "secrets wiped" was never true. The daemon's core
    /// runs in a process of its own (binding the socket sets the process-wide umask, which
    /// would race with other tests creating files).
    #[test]
    fn the_secret_store_is_dropped_when_the_daemon_stops() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "daemon::tests::lifecycle_in_a_process_of_its_own",
                "--ignored",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the child test failed\n{stdout}\n{stderr}");
        assert!(stdout.contains(VERDICT), "the child test did not run\n{stdout}\n{stderr}");
    }

    #[test]
    #[ignore = "run by the_secret_store_is_dropped_when_the_daemon_stops, in a process of its own"]
    fn lifecycle_in_a_process_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("canary-{}", std::process::id())).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.path().join("run/s.sock");
        let state_dir = dir.path().join("state");
        let text = format!(
            "socket: {}\nstate_dir: {}\nsecrets:\n  repo: {{file: {}}}\ntasks:\n  t:\n    schedule: '@every 1s'\n    command: [sh, -c, 'exit 0']\n    secrets: [repo]\n",
            socket.display(),
            state_dir.display(),
            secret.display()
        );
        let env = Environment::default();
        let checked = config::parse(&text, &dir.path().join("backup.yaml"), &env);
        let config = checked.config.unwrap_or_else(|| panic!("{:?}", checked.problems));
        let start = Start {
            config,
            env,
            env_values: std::collections::HashMap::new(),
            base_env: runner::allowed_env(std::env::vars_os(), None),
            pins: vec![vec![None]],
            redeemers: Redeemers::default(),
            guardian: None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let finished = runtime.block_on(async {
            let (stop, stop_rx) = mpsc::channel(1);
            let daemon = tokio::spawn(serve(start, stop_rx));
            // A run (which mints tokens from the broker) has ended ...
            let deadline = Instant::now() + Duration::from_secs(60);
            while !history::read_all(&state_dir)
                .map(|l| l.records)
                .unwrap_or_default()
                .iter()
                .any(|r| matches!(r, Record::End { .. }))
            {
                assert!(Instant::now() < deadline, "no run ended");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // ... and a client holds an idle connection when the daemon stops.
            let idle = tokio::net::UnixStream::connect(&socket).await.unwrap();
            stop.send(Stop::Signal("test")).await.unwrap();
            let finished = daemon.await.unwrap().unwrap();
            drop(idle);
            finished
        });
        assert_eq!(finished.stop, Stop::Signal("test"));
        assert!(finished.secrets.upgrade().is_none(), "something still holds the secret store");
        assert!(!socket.exists(), "the socket was not removed");
        let records = history::read_all(&state_dir).unwrap().records;
        assert!(
            matches!(records.last(), Some(Record::Daemon { event: DaemonEvent::Stop, .. })),
            "{records:?}"
        );
        println!("{VERDICT}");
    }
}
