//! `backupnizza status` and `backupnizza trigger`: ask the running daemon over its socket,
//! the user daemon's or, when none runs, the system daemon's (see [`target`]); and the run
//! history for `history` and `explain`, from `state_dir` or, for a member of a system
//! daemon's `control_group` who cannot read it, over the socket ([`load_history`]).

use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use super::{load_config, print};
use crate::cli::{ConfigArg, PauseArgs, ResumeArgs, StatusArgs, TriggerArgs};
use crate::client::{Client, ClientError, Response};
use crate::config::{self, Config, Environment};
use crate::exit::{Exit, USAGE};
use crate::history;
use crate::protocol::{self, RunBody, RunRef, StatusBody};

/// The socket a client talks to, and the ones it looked at to choose it (for the error
/// when nothing answers).
pub(super) struct Target {
    socket: std::path::PathBuf,
    tried: Vec<std::path::PathBuf>,
    /// Chosen because no user daemon's socket was there and the system daemon's was.
    system: bool,
}

fn is_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The daemon's socket: `--socket`; else where the task file's `socket:` says; else the one a user daemon
/// recorded in `state_dir` (its default directory was taken by another user); else the
/// user default if a socket is there; else the system daemon's ([`config::SYSTEM_SOCKET`])
/// if one is there. A `socket:` equal to the default counts as not given.
pub(super) fn target(
    config: &Config,
    env: &Environment,
    given: Option<&std::path::Path>,
) -> Target {
    if let Some(socket) = given {
        return Target { socket: socket.to_path_buf(), tried: Vec::new(), system: false };
    }
    if config.socket != env.default_socket() {
        return Target { socket: config.socket.clone(), tried: Vec::new(), system: false };
    }
    if let Some(recorded) = crate::broker::socket::recorded(&config.state_dir) {
        return Target { socket: recorded, tried: Vec::new(), system: false };
    }
    let system = std::path::PathBuf::from(config::SYSTEM_SOCKET);
    if !is_socket(&config.socket) && is_socket(&system) {
        return Target { socket: system, tried: vec![config.socket.clone()], system: true };
    }
    Target {
        socket: config.socket.clone(),
        tried: vec![config.socket.clone(), system],
        system: false,
    }
}

pub(super) fn client_for(target: &Target) -> Client {
    Client::new(&target.socket, Duration::from_secs(protocol::MAX_WAIT_SECS + 10))
}

pub(super) fn call(
    client: &Client,
    target: &Target,
    method: Method,
    path: &str,
) -> anyhow::Result<Response> {
    let response = client.request(&method, path, None, &[]).map_err(|e| match e {
        ClientError::Unreachable { .. } => {
            let tried = if target.tried.len() > 1 {
                let paths: Vec<String> =
                    target.tried.iter().map(|p| p.display().to_string()).collect();
                format!(" (tried the user daemon's and the system daemon's: {})", paths.join(", "))
            } else {
                String::new()
            };
            anyhow::anyhow!(
                "{e}{tried}; is the daemon running (`backupnizza run`, or its service), and does `socket:` in the task file name its socket?"
            )
        }
        other => anyhow::Error::new(other),
    })?;
    if !response.status.is_success() {
        let message = response
            .error()
            .map_or_else(|| format!("the daemon answered {}", response.status), |b| b.message);
        let code = if response.status == hyper::StatusCode::NOT_FOUND {
            USAGE
        } else {
            crate::exit::FAILURE
        };
        return Err(Exit { code, message }.into());
    }
    Ok(response)
}

/// The run history and where it came from (a file, or the daemon at a socket).
///
/// `state_dir` is read directly, so `history` and `explain` work with no daemon running
/// (after a crash, say). The daemon is asked instead when `--socket` is given, when the
/// directory cannot be read (a system daemon's, for a member of its `control_group`), or
/// when it holds no history and the client would talk to the system daemon (a member's own
/// `state_dir` is not the daemon's).
pub(super) fn load_history(
    config: &Config,
    env: &Environment,
    given: Option<&std::path::Path>,
    task: Option<&str>,
) -> anyhow::Result<(history::Loaded, String)> {
    let file = config.state_dir.join(history::FILE_NAME);
    let local = if given.is_some() { None } else { Some(history::read_all(&config.state_dir)) };
    let target = target(config, env, given);
    let denied = match local {
        None => None,
        Some(Ok(loaded)) => {
            if !loaded.records.is_empty() || !loaded.bad_lines.is_empty() || !target.system {
                return Ok((loaded.for_task(task), file.display().to_string()));
            }
            None
        }
        Some(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(e),
        Some(Err(e)) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read the run history {}", file.display())));
        }
    };
    let client = client_for(&target).with_max_response(protocol::MAX_HISTORY_RESPONSE);
    let path = match task {
        Some(task) => format!("{}?task={task}", protocol::ROUTE_HISTORY),
        None => protocol::ROUTE_HISTORY.to_string(),
    };
    let response = call(&client, &target, Method::GET, &path).map_err(|e| match &denied {
        Some(why) => e.context(format!(
            "cannot read the run history {} ({why}), nor ask the daemon for it",
            file.display()
        )),
        None => e,
    })?;
    let loaded: history::Loaded =
        serde_json::from_slice(&response.body).context("unexpected history answer")?;
    Ok((loaded, format!("the daemon's history (asked at {})", target.socket.display())))
}

pub fn status(args: &StatusArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    let target = target(&config, env, args.socket.as_deref());
    let client = client_for(&target);
    let response = call(&client, &target, Method::GET, protocol::ROUTE_STATUS)?;
    if args.json {
        return print(|out| writeln!(out, "{}", String::from_utf8_lossy(&response.body)));
    }
    let status: StatusBody =
        serde_json::from_slice(&response.body).context("unexpected status answer")?;
    let rejected: u64 = status.tokens.rejected.values().sum();
    let reasons: Vec<String> = status
        .tokens
        .rejected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let width = status.tasks.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    print(|out| {
        writeln!(
            out,
            "daemon: running (pid {}, version {}, since {}), socket {}",
            status.pid,
            status.daemon,
            status.started,
            target.socket.display()
        )?;
        writeln!(
            out,
            "tokens: {} minted, {} redeemed, {} live, {rejected} rejected{}",
            status.tokens.minted,
            status.tokens.redeemed,
            status.tokens.live,
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
        )?;
        if let Some(problem) = &status.history_problem {
            writeln!(out, "history: PROBLEM: {problem}")?;
        }
        writeln!(out, "{:width$}  {:25}  {:32}  NEXT", "TASK", "LAST RUN", "RESULT")?;
        for task in &status.tasks {
            let (when, result) = match (&task.last, task.running) {
                (_, true) => match &task.deferred {
                    Some(why) => ("now".to_string(), format!("deferred: {why}")),
                    None => ("now".to_string(), "running".to_string()),
                },
                (Some(last), false) => (last.ended.clone().unwrap_or_default(), describe(last)),
                (None, false) => ("never".to_string(), "-".to_string()),
            };
            // A manual task has no next run: say why, reading the schedule the daemon sent
            // with the parser that made it.
            let manual =
                crate::schedule::Schedule::parse(&task.schedule).is_ok_and(|s| s.is_manual());
            let next =
                task.next.as_deref().unwrap_or(if manual { "manual (trigger)" } else { "-" });
            writeln!(out, "{:width$}  {when:25}  {result:32}  {next}", task.name)?;
            if let Some(at) = &task.verified {
                writeln!(out, "{:width$}  verified restorable {at}", "")?;
            }
            if let Some(since) = &task.overdue_since {
                writeln!(out, "{:width$}  OVERDUE since {since}: backups are not current", "")?;
            }
            if let Some(pause) = &task.paused {
                let until =
                    pause.until.as_deref().map_or("until resumed".into(), |u| format!("until {u}"));
                writeln!(out, "{:width$}  paused since {} {until}", "", pause.since)?;
            }
        }
        Ok(())
    })
}

/// "success (exit 0, 12s)".
pub fn describe(run: &RunBody) -> String {
    let mut parts = Vec::new();
    if let Some(code) = run.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(ms) = run.duration_ms {
        parts.push(crate::time::Took(Duration::from_millis(ms)).to_string());
    }
    if parts.is_empty() {
        run.status.to_string()
    } else {
        format!("{} ({})", run.status, parts.join(", "))
    }
}

/// `text` as written to a terminal (`terminal`: controls escaped) or elsewhere (as it is).
fn shown(text: &str, terminal: bool) -> std::borrow::Cow<'_, str> {
    if terminal { crate::redact::visible::for_terminal(text) } else { text.into() }
}

/// Prints a run's output as it comes (stdout lines on stdout, stderr lines on stderr; a
/// hook's marked with its name) until the run has ended.
fn follow(client: &Client, target: &Target, run_id: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    // A terminal obeys control characters (moving the cursor, hiding what follows): there
    // they are shown as escapes. The daemon already drops them from task output; this
    // holds against any line that reaches us anyway.
    let (out_tty, err_tty) = (std::io::stdout().is_terminal(), std::io::stderr().is_terminal());
    let mut after = 0;
    loop {
        let path = format!(
            "{}{run_id}{}?after={after}&wait={}",
            protocol::ROUTE_RUNS,
            protocol::OUTPUT_SUFFIX,
            protocol::MAX_WAIT_SECS
        );
        let response = call(client, target, Method::GET, &path)?;
        let body: protocol::OutputBody =
            serde_json::from_slice(&response.body).context("unexpected output answer")?;
        if body.missed > 0 {
            eprintln!("backupnizza: {} lines of output went by too fast to show", body.missed);
        }
        let mut out = std::io::stdout().lock();
        for line in &body.lines {
            let (hook, stream) = match line.stream.split_once('.') {
                Some((hook, stream)) => (Some(hook), stream),
                None => (None, line.stream.as_str()),
            };
            let mark = hook.map(|h| format!("[{h}] ")).unwrap_or_default();
            if stream == "stderr" {
                eprintln!("{}{}", shown(&mark, err_tty), shown(&line.text, err_tty));
            } else {
                writeln!(out, "{}{}", shown(&mark, out_tty), shown(&line.text, out_tty))
                    .map_err(crate::exit::stdout_error)?;
            }
        }
        out.flush().map_err(crate::exit::stdout_error)?;
        after = body.next;
        if body.ended {
            return Ok(());
        }
    }
}

pub fn trigger(args: &TriggerArgs, env: &Environment) -> anyhow::Result<()> {
    // The task file gives the socket; whether the task exists is the daemon's answer, since
    // the file may have changed since the daemon read it. Only a name that cannot be a task
    // is refused here, so it never becomes part of a request path.
    let config = load_config(&args.config, env)?;
    if !config::valid_name(&args.task) {
        return Err(Exit::usage(format!(
            "{:?} is not a valid task name (letters, digits, '.', '_' and '-', at most 64)",
            args.task
        ))
        .into());
    }
    let target = target(&config, env, args.socket.as_deref());
    let client = client_for(&target);
    let path = format!("{}{}/trigger", protocol::ROUTE_TASKS, args.task);
    // An unknown task is a 404 whose message names the closest task the daemon knows.
    let response = call(&client, &target, Method::POST, &path)?;
    let run: RunRef =
        serde_json::from_slice(&response.body).context("unexpected trigger answer")?;
    // Following, stdout is the task's own output (for a pipe); our lines go to stderr.
    if args.follow {
        eprintln!("triggered {}: run {}", run.task, run.run_id);
        follow(&client, &target, &run.run_id)?;
    } else {
        print(|out| writeln!(out, "triggered {}: run {}", run.task, run.run_id))?;
    }
    if !args.wait && !args.follow {
        return Ok(());
    }
    loop {
        let path =
            format!("{}{}?wait={}", protocol::ROUTE_RUNS, run.run_id, protocol::MAX_WAIT_SECS);
        let response = call(&client, &target, Method::GET, &path)?;
        let body: RunBody =
            serde_json::from_slice(&response.body).context("unexpected run answer")?;
        if !body.status.is_done() {
            continue;
        }
        let reason =
            if body.reason.is_empty() { String::new() } else { format!(": {}", body.reason) };
        let line = format!("run {}: {}{reason}", body.run_id, describe(&body));
        if args.follow {
            eprintln!("{line}");
        } else {
            print(|out| writeln!(out, "{line}"))?;
        }
        return match (body.status.is_ok(), body.exit_code) {
            (true, _) => Ok(()),
            // --follow passes the task's own exit code on, as running it by hand would.
            (false, Some(code)) if args.follow && (1..=255).contains(&code) => {
                Err(Exit::silent(code).into())
            }
            (false, _) => Err(Exit::silent(crate::exit::FAILURE).into()),
        };
    }
}

/// `backupnizza pause [--for DURATION] [TASK...]`.
pub fn pause(args: &PauseArgs, env: &Environment) -> anyhow::Result<()> {
    let mut query = tasks_query(&args.tasks)?;
    if let Some(d) = args.duration {
        // Whole seconds, at least one: `--for 0s` would be no pause at all.
        query.push(format!("for={}", d.as_secs().max(1)));
    }
    let body =
        pause_call(&args.config, args.socket.as_deref(), protocol::ROUTE_PAUSE, &query, env)?;
    let until = body
        .until
        .map_or_else(|| "until `backupnizza resume`".to_string(), |u| format!("until {u}"));
    print(|out| writeln!(out, "paused {until}: {}", body.tasks.join(", ")))
}

/// `backupnizza resume [TASK...]`.
pub fn resume(args: &ResumeArgs, env: &Environment) -> anyhow::Result<()> {
    let query = tasks_query(&args.tasks)?;
    let body =
        pause_call(&args.config, args.socket.as_deref(), protocol::ROUTE_RESUME, &query, env)?;
    if body.tasks.is_empty() {
        return print(|out| writeln!(out, "nothing was paused"));
    }
    print(|out| writeln!(out, "resumed: {}", body.tasks.join(", ")))
}

/// `tasks=a,b`, each name checked first so none becomes part of a request path unchecked.
fn tasks_query(tasks: &[String]) -> anyhow::Result<Vec<String>> {
    if let Some(bad) = tasks.iter().find(|t| !config::valid_name(t)) {
        return Err(Exit::usage(format!(
            "{bad:?} is not a valid task name (letters, digits, '.', '_' and '-', at most 64)"
        ))
        .into());
    }
    Ok(if tasks.is_empty() { Vec::new() } else { vec![format!("tasks={}", tasks.join(","))] })
}

fn pause_call(
    config: &ConfigArg,
    socket: Option<&std::path::Path>,
    route: &str,
    query: &[String],
    env: &Environment,
) -> anyhow::Result<protocol::PausedBody> {
    let config = load_config(config, env)?;
    let target = target(&config, env, socket);
    let client = client_for(&target);
    let path =
        if query.is_empty() { route.to_string() } else { format!("{route}?{}", query.join("&")) };
    let response = call(&client, &target, Method::POST, &path)?;
    serde_json::from_slice(&response.body).context("unexpected pause answer")
}
