//! Start-up, in the order it runs: close inherited descriptors → check the task file → take
//! the `env:` secret sources onto locked pages and out of the environment (while the process
//! is single-threaded) → StrictModes checks and pins of the task file and every program
//! ([`programs`]) and of the redeemers → harden the process (no core dumps, no ptrace) →
//! become the child subreaper → start the guardian → start the runtime, which [`serve`]s
//! until SIGTERM or SIGINT and then shuts down in order.
//!
//! Everything before the runtime runs on the one thread the process started with; what it
//! prepares travels to [`serve`] in a [`Start`]. The files the daemon keeps are opened and
//! closed by [`records`].

mod programs;
mod records;
mod serve;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::Stop;
use super::step::guardian::Guardian;
use crate::broker::Redeemers;
use crate::broker::sources::{self, EnvValues};
use crate::config::{self, Config, Environment};
use crate::exit::{Exit, FAILURE};
use crate::sys::hardening::Weakness;
use crate::trust::{Pinned, SecretboxImage};

/// Everything `serve` starts from, prepared while the process was single-threaded.
pub(super) struct Start {
    pub(super) config: Config,
    pub(super) env: Environment,
    pub(super) env_values: EnvValues,
    pub(super) base_env: Vec<(OsString, OsString)>,
    /// The `secretbox` beside this binary and its sealed image, found once at start.
    pub(super) secretbox: Secretbox,
    pub(super) pins: Vec<Vec<Option<Pinned>>>,
    pub(super) redeemers: Redeemers,
    pub(super) guardian: Option<Guardian>,
    /// When this process started, before the task file was read and the secrets loaded.
    pub(super) launched: jiff::Timestamp,
}

/// Where the `secretbox` tasks find is, and the sealed image of it that sealing tasks run.
#[derive(Default)]
pub(super) struct Secretbox {
    /// The directory of the one beside this binary, first on every task's `PATH`.
    pub(super) dir: Option<PathBuf>,
    /// Its execute-only sealed copy ([`crate::trust::seal`]).
    pub(super) image: Option<Arc<SecretboxImage>>,
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT. Must be called before any
/// other thread exists: it takes `env` secret sources out of the environment, which it
/// refuses to do (with an error) once another thread exists.
pub fn main(config_path: PathBuf, mut env: Environment) -> anyhow::Result<()> {
    let launched = jiff::Timestamp::now();
    close_inherited_fds(&env);
    let (config, problems) = check_task_file(&config_path, &env)?;
    // The `env` sources, as early as the task file names them: onto locked pages, out of
    // the environment block, and out of the snapshot of it taken at start (which lives as
    // long as the daemon), before anything else copies the environment (the tasks' allowlist
    // below does). The runtime, the first thread besides this one, starts below.
    check_single_threaded()?;
    let (env_values, env_weak) = sources::take_env_sources(&config)
        .map_err(|e| Exit { code: FAILURE, message: e.to_string() })?;
    for spec in &config.secrets {
        if let config::Source::Env { var } = &spec.source {
            env.forget(var);
        }
    }
    crate::logging::init(config.log);
    for p in &problems {
        warn!("{}", p.display(&config_path));
    }
    info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "starting");
    let checked = check_programs(&config, &config_path, &env)?;
    let guardian = protect(config.strict_memory)?;
    report_weaknesses(&env_weak, config.strict_memory)?;
    let start = Start {
        config,
        env,
        env_values,
        base_env: checked.base_env,
        secretbox: Secretbox { dir: checked.secretbox_dir, image: checked.secretbox_image },
        pins: checked.pins,
        redeemers: checked.redeemers,
        guardian,
        launched,
    };
    run_runtime(start)
}

/// The task file, checked whole; an invalid one is a usage error listing every problem.
/// Returns the warnings too, for the log once it exists.
fn check_task_file(
    path: &Path,
    env: &Environment,
) -> anyhow::Result<(Config, Vec<config::Problem>)> {
    let checked = config::check_file(path, env).map_err(|e| Exit::usage(e.to_string()))?;
    let Some(config) = checked.config else {
        for p in &checked.problems {
            eprintln!("{}", p.display(path));
        }
        return Err(
            Exit::usage(format!("{} is invalid; nothing was started", path.display())).into()
        );
    };
    Ok((config, checked.problems))
}

/// What the program checks found: the environment tasks inherit, each step's pin, and the
/// programs that may redeem tokens.
struct Checked {
    base_env: Vec<(OsString, OsString)>,
    secretbox_dir: Option<PathBuf>,
    pins: Vec<Vec<Option<Pinned>>>,
    redeemers: Redeemers,
    secretbox_image: Option<Arc<SecretboxImage>>,
}

/// Like OpenSSH's StrictModes: the task file and every program must be ours (or root's)
/// and not writable by others, and pinned programs must match their digests.
fn check_programs(
    config: &Config,
    config_path: &Path,
    env: &Environment,
) -> anyhow::Result<Checked> {
    let uid = nix::unistd::getuid().as_raw();
    crate::trust::check_trusted(config_path, "task file", uid).map_err(Exit::usage)?;
    let secretbox_dir = crate::trust::secretbox_dir();
    let base_env = super::step::allowed_env(std::env::vars_os(), secretbox_dir.as_deref());
    let home = env.var("HOME").map(PathBuf::from);
    let daemon_path = std::env::var_os("PATH");
    let cx = programs::Context {
        config_path,
        daemon_path: daemon_path.as_deref(),
        base_env: &base_env,
        home: home.as_deref(),
        uid,
    };
    let pins = prepare_programs(config, &cx)?;
    let mut redeemers = pin_redeemers(config, secretbox_dir.as_deref(), &base_env, uid)?;
    let secretbox_image = seal_secretbox(config, &mut redeemers);
    Ok(Checked { base_env, secretbox_dir, pins, redeemers, secretbox_image })
}

/// The pinned `secretbox`, sealed with a fresh key for the tasks that seal (Linux). Without
/// it (no `secretbox`, an old build without a key slot, or no memfd), those tasks run the
/// one on disk, as tasks with `seal: false` do: said in the log, not fatal.
fn seal_secretbox(config: &Config, redeemers: &mut Redeemers) -> Option<Arc<SecretboxImage>> {
    if !cfg!(target_os = "linux") || !config.tasks.iter().any(|t| t.seal) {
        return None;
    }
    let path = redeemers.pinned_secretbox()?.to_path_buf();
    #[cfg(target_os = "linux")]
    {
        let made = redeemers.new_image_key().and_then(|key| SecretboxImage::new(&path, &key));
        match made {
            Ok(image) => {
                info!(secretbox = %path.display(), image = %image.path(), "tasks run secretbox from a sealed, execute-only copy");
                return Some(Arc::new(image));
            }
            Err(e) => warn!(
                "cannot seal the secretbox ({e}): tasks run {} from disk, where other processes of this user can read it while it runs",
                path.display()
            ),
        }
    }
    let _ = path;
    None
}

/// Before any secret is read (but for `env` sources, in the process since it started): no
/// core dumps, no same-user ptrace; orphans of task processes adopted; room for many
/// connections; and the guardian, started before any secret is read so it never had one
/// near it (it is an exec, but started from here).
fn protect(strict_memory: bool) -> anyhow::Result<Option<Guardian>> {
    report_weaknesses(&crate::sys::hardening::protect_process(), strict_memory)?;
    // Before any thread and any child: what the daemon starts inherits no capability, and
    // the steps that need the read-all one raise it for themselves.
    match crate::sys::caps::keep_to_self() {
        Ok(()) if crate::sys::caps::holds_read_all() => info!(
            "the read-all capability (CAP_DAC_READ_SEARCH) stays with the daemon; of the processes it starts, only restic's backup steps (and steps with read_all: true) get it"
        ),
        Ok(()) => {}
        Err(e) => warn!(
            "cannot clear the ambient capabilities: {e}; every process the daemon starts keeps the capabilities it was given"
        ),
    }
    // Orphans of task processes are re-parented to us rather than to init, so "descends from
    // the daemon" keeps meaning "is part of a task" (see `Broker::is_task_process`).
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(
            "cannot become the child subreaper of task processes: {e}; orphaned task processes may reach the control routes"
        );
    }
    raise_fd_limit();
    match std::env::current_exe().and_then(|exe| Guardian::spawn(&exe)) {
        Ok(g) => Ok(Some(g)),
        Err(e) => {
            warn!(error = %e, "cannot start the guardian process; if the daemon dies, task processes other than each step's main process may outlive it");
            Ok(None)
        }
    }
}

/// Starts the runtime and serves until a stop request; a stolen socket is a failure.
fn run_runtime(start: Start) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
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
        serve::serve(start, stop_rx).await
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
    secretbox_dir: Option<&Path>,
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

/// Warns once per protection that could not be applied, or refuses to start under
/// `strict_memory: true`.
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

/// Below this hard limit of open files, a daemon with many tasks (each redemption reads
/// `/proc` and holds a connection) can run out of descriptors: said at start.
const LOW_NOFILE: u64 = 4096;

/// Many idle connections, and many tasks redeeming at once, must not starve a legitimate
/// redemption of file descriptors: the soft limit goes up to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
    if hard < LOW_NOFILE {
        warn!(
            "the hard limit of open files is {hard}: with many tasks redeeming at once the daemon may run out of file descriptors (it says so when it does); raise it (LimitNOFILE= in the unit, or `ulimit -Hn`)"
        );
    }
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
