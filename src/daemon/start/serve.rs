//! The daemon once its runtime runs: load the secrets (the redactor learns them), bind the
//! socket, open the records (history, ledger, metrics, output files), build what runs
//! share ([`RunContext`]), serve the socket, and hand over to the state owner until a stop
//! request. Then shut down in order: the server closes, notifications in flight get
//! [`FLUSH_WAIT`], the history, the ledger and the output files are flushed, the socket is
//! removed and the secrets are dropped; the log says they were wiped only once that is
//! true.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::records::Records;
use super::{Start, report_weaknesses};
use crate::broker::control::Control;
use crate::broker::secrets::Secrets;
use crate::broker::socket::{self, BoundSocket};
use crate::broker::sources;
use crate::broker::{Broker, Limits};
use crate::config::{Config, Environment};
use crate::daemon::Stop;
use crate::daemon::notify::Outbox;
use crate::daemon::owner::{self, Inbox, Surroundings};
use crate::daemon::run::{RunContext, locks::Locks};
use crate::daemon::step::{Runner, contain::Containment, secret_files};
use crate::exit::{Exit, FAILURE};

/// Longest shutdown waits for each writer thread and for notifications in flight.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// How `serve` ended: why, and a weak reference to the secrets it loaded, which is dead
/// once they have been dropped (and their pages zeroed and unmapped).
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) stop: Stop,
    /// Read by the lifecycle test; the log line above checks the same.
    #[cfg_attr(not(test), allow(dead_code))]
    secrets: Weak<Secrets>,
}

/// Serves until a stop request arrives on `stop`, then shuts down in order.
pub(super) async fn serve(
    start: Start,
    mut stop: mpsc::Receiver<Stop>,
) -> anyhow::Result<Finished> {
    let Start { config, env, env_values, base_env, secretbox, pins, redeemers, .. } = start;
    // A stop request during start-up ends it: a slow secret helper is killed, not awaited.
    let secrets = tokio::select! {
        loaded = load_secrets(&config, &env, env_values) => loaded?,
        Some(signal) = stop.recv() => {
            info!("stopping during start-up: secret helpers still running were stopped");
            return Ok(Finished { stop: signal, secrets: Weak::new() });
        }
    };
    let weak_secrets = Arc::downgrade(&secrets);
    let bound = bind_socket(&config, &env)?;
    let mut records = Records::open(&config)?;
    let (containment, how) = Containment::detect(env.var("BACKUPNIZZA_CGROUP") == Some("off"));
    info!("{how}");
    let secret_files = prepare_secret_files(&config, &bound.path)?;
    let broker = Arc::new(
        Broker::new(secrets, config.token_ttl, Limits::default())
            .with_redeemers(redeemers)
            .with_control_group(config.control_group.as_ref().map(|g| g.gid)),
    );
    let (control, requests) = Control::for_config(&config);
    let (events_tx, events) = mpsc::unbounded_channel();
    let runner = Runner {
        broker: broker.clone(),
        socket: bound.path.clone(),
        server_id: crate::client::ServerId::this_process().map(|id| id.to_string()),
        base_env,
        secretbox_dir: secretbox.dir,
        home: env.var("HOME").map(PathBuf::from),
        kill_grace: config.kill_grace,
        shutdown_grace: config.shutdown_grace,
        containment,
        guardian: start.guardian,
        secret_files: secret_files.clone(),
        secretbox_image: secretbox.image,
    };
    let outbox = Outbox::default();
    let ctx = Arc::new(RunContext {
        locks: Locks::for_config(&config),
        changes: crate::daemon::host::changes::listen(&config),
        zone: config.timezone.tz.clone(),
        config,
        pins,
        runner,
        history: records.history.clone(),
        ledger: records.ledger.clone(),
        outputs: records.outputs.take(),
        cancel: CancellationToken::new(),
        events: events_tx,
        outbox: outbox.clone(),
        suspends: watch::channel(0).0,
        announcements: control.events(),
    });
    let server = Server::start(&bound, broker.clone(), control)?;
    let surroundings = Surroundings::of_this_daemon(ctx.clone(), &bound, start.launched);
    let (metrics, health) = (records.metrics.take(), records.health.clone());
    let past = std::mem::take(&mut records.past);
    let state = owner::State::new(ctx.clone(), surroundings, &past, metrics, health);
    let stop = state.run(Inbox { requests, events, stop }, &past).await;
    // Every run has ended (or shutdown gave up on it, and said so). Close the socket's
    // connections, then the files, then the socket itself, then the secrets.
    server.stop().await;
    // Within shutdown_grace, and never longer than the flush waits for.
    close_outbox(&outbox, FLUSH_WAIT.min(ctx.config.shutdown_grace)).await;
    let at = ctx.rfc3339(Timestamp::now());
    drop(ctx);
    records.close(at, FLUSH_WAIT).await;
    // Every step has ended and removed its own directory; this removes the root (and what a
    // task that would not stop still had), so the socket's directory can go too.
    let _ = std::fs::remove_dir_all(&secret_files);
    drop(bound);
    crate::redact::unregister();
    drop(broker);
    say_stopped(stop, &weak_secrets);
    Ok(Finished { stop, secrets: weak_secrets })
}

/// Closes the notifications' outbox, waiting up to `grace` for those in flight, and says how
/// many it abandoned.
async fn close_outbox(outbox: &Outbox, grace: Duration) {
    let abandoned = outbox.close(grace).await;
    if abandoned > 0 {
        let s = if abandoned == 1 { "" } else { "s" };
        warn!("abandoned {abandoned} notification{s} still in flight at shutdown");
    }
}

/// The last log line: why the daemon stopped, and whether the secrets are wiped yet.
fn say_stopped(stop: Stop, secrets: &Weak<Secrets>) {
    let name = match stop {
        Stop::Signal(name) => name,
        Stop::SocketStolen => "a stolen socket",
    };
    if secrets.strong_count() == 0 {
        info!("stopped on {name}; socket removed, secrets wiped");
    } else {
        warn!(
            "stopped on {name}; socket removed; a task that did not stop still holds the secrets, which are wiped when the process exits"
        );
    }
}

/// The socket server, serving control requests and redemptions until it is stopped.
struct Server {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(bound: &BoundSocket, broker: Arc<Broker>, control: Control) -> anyhow::Result<Server> {
        let listener = tokio::net::UnixListener::from_std(
            bound.listener.try_clone().context("cannot use the socket")?,
        )
        .context("cannot use the socket")?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::broker::server::serve_with(
            listener,
            broker,
            Some(control),
            stop.clone(),
        ));
        info!(socket = %bound.path.display(), "listening");
        Ok(Server { stop, task })
    }

    /// Closes the socket's connections and waits for the server to end.
    async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            error!(error = %e, "the socket server ended abnormally");
        }
    }
}

/// The `{secret_file:}` directories live beside the socket, in its private directory; what
/// a daemon that died left there is removed by the settlement, before any run.
fn prepare_secret_files(config: &Config, socket: &Path) -> anyhow::Result<PathBuf> {
    let root = secret_files::root_for(socket);
    secret_files::prepare(&root).with_context(|| {
        format!("cannot create the directory for secret files {}", root.display())
    })?;
    if config.tasks.iter().any(uses_secret_files)
        && let Some(why) = secret_files::check_memory_backed(&root)
    {
        warn!("{why}");
    }
    Ok(root)
}

/// Loads every secret into locked memory and makes the values known to the redactor.
async fn load_secrets(
    config: &Config,
    env: &Environment,
    mut env_values: sources::EnvValues,
) -> anyhow::Result<Arc<Secrets>> {
    let mut store = Secrets::empty();
    let mut weak = Vec::new();
    let mut stderr = Vec::new();
    for spec in &config.secrets {
        // An error may quote a command's stderr, which may hold a secret loaded before this
        // one: masked with what is loaded so far, since the redactor knows nothing yet.
        let loaded = sources::load_one(spec, env, &mut env_values).await.map_err(|e| Exit {
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
        info!(secret = %spec.name, source = %sources::describe(&spec.source), "loaded secret");
        stderr.extend(loaded.stderr.into_iter().map(|line| (spec.name.clone(), line)));
    }
    report_weaknesses(&weak, config.strict_memory)?;
    let store = Arc::new(store);
    crate::redact::register(store.clone());
    crate::redact::register_scopes(
        config.tasks.iter().map(|t| (t.name.clone(), t.own_secrets())).collect(),
    );
    // Logged only now, once every value is known to the redactor: a command's stderr may echo
    // its own value or one loaded after it. Each line is masked raw before it is formatted
    // (see `logging`), and each line of a multi-line value is a needle of its own.
    for (name, line) in stderr {
        info!(secret = %name, "secret command said: {}", line.as_str());
    }
    Ok(store)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use super::*;
    use crate::broker::Redeemers;
    use crate::config;
    use crate::history::{self, DaemonEvent, Record};

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
                "daemon::start::serve::tests::lifecycle_in_a_process_of_its_own",
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
        std::fs::write(&secret, format!("canary-{:012}", std::process::id())).unwrap();
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
            base_env: crate::daemon::step::allowed_env(std::env::vars_os(), None),
            secretbox: crate::daemon::start::Secretbox::default(),
            pins: vec![vec![None]],
            redeemers: Redeemers::default(),
            guardian: None,
            launched: Timestamp::now(),
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
