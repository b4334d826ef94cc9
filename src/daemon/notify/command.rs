//! `notify: {command: [ARGV...]}`: a program of the user's run at the end of each run, with
//! the run's facts in its environment, for everything the ping and the webhook do not
//! reach (mail through `sendmail`, ntfy through `curl`, a desktop notification).
//!
//! It runs like a plain hook: no shell, the daemon's allowlisted environment plus the facts,
//! stdin `/dev/null`, no token and no socket (it can fetch nothing), bounded by the
//! notification `timeout` (then killed with its process group). What it prints is logged,
//! redacted; a notifier that fails or hangs is logged as a warning and never changes the
//! run's result, which is on disk before it starts. Its program passes the same ownership
//! and mode checks as a task's programs when the daemon starts.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::RunFacts;

/// Most of a notifier's output that is read (and logged).
const MAX_OUTPUT: u64 = 64 * 1024;

/// The facts as environment variables (the same names hooks get where they exist).
fn facts_env(facts: &RunFacts) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BACKUPNIZZA_EVENT", facts.event.to_string()),
        ("BACKUPNIZZA_TASK", facts.task.clone()),
        ("BACKUPNIZZA_RUN_ID", facts.run_id.clone()),
        ("BACKUPNIZZA_STATUS", facts.status.clone()),
        ("BACKUPNIZZA_EXIT_CODE", facts.exit_code.map(|c| c.to_string()).unwrap_or_default()),
        ("BACKUPNIZZA_DURATION_MS", facts.duration_ms.map(|d| d.to_string()).unwrap_or_default()),
        ("BACKUPNIZZA_STARTED", facts.started.clone()),
        ("BACKUPNIZZA_ENDED", facts.ended.clone().unwrap_or_default()),
        ("BACKUPNIZZA_REASON", facts.reason.clone()),
        ("BACKUPNIZZA_HOST", facts.host.clone()),
    ];
    if let Some(id) = &facts.snapshot_id {
        env.push(("BACKUPNIZZA_SNAPSHOT_ID", id.clone()));
    }
    if let Some(added) = facts.data_added {
        env.push(("BACKUPNIZZA_DATA_ADDED", added.to_string()));
    }
    if !facts.audit_findings.is_empty() {
        let lines: Vec<&str> = facts.audit_findings.iter().map(|f| f.detail.as_str()).collect();
        env.push(("BACKUPNIZZA_AUDIT_FINDINGS", lines.join("\n")));
    }
    if let Some(tail) = &facts.stderr_tail {
        env.push(("BACKUPNIZZA_STDERR_TAIL", tail.join("\n")));
    }
    // No environment string may hold a NUL.
    for (_, value) in &mut env {
        value.retain(|c| c != '\0');
    }
    env
}

/// Runs the notifier `argv` for `facts` (already redacted), with `base_env` (the daemon's
/// allowlist) under it, and logs how it went.
pub(crate) async fn run(
    argv: &[String],
    base_env: &[(OsString, OsString)],
    home: Option<&Path>,
    facts: &RunFacts,
    timeout: Duration,
) {
    let program = crate::trust::expand_tilde(&argv[0], home);
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv[1..].iter().map(|a| crate::trust::expand_tilde(a, home)))
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs(facts_env(facts))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let shown = program.to_string_lossy().into_owned();
    let spawning = crate::daemon::host::children::spawning();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!(task = %facts.task, run_id = %facts.run_id, notifier = %shown, "cannot start the notifier: {e}; the run's result is unaffected");
            return;
        }
    };
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    // Reaped here (or by tokio, after the kill on drop), never by the orphan reaper.
    let _owned = spawning.started(child.id().unwrap_or_default());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let read_out = async {
            if let Some(s) = stdout {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        child.wait().await
    };
    let ended = tokio::time::timeout(timeout, work).await;
    let text = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        crate::redact::as_task(Some(&facts.task), || crate::redact::output_line(text.trim_end()))
    };
    let output: Vec<String> =
        [text(&out), text(&err)].into_iter().filter(|t| !t.trim().is_empty()).collect();
    let said = if output.is_empty() { String::new() } else { format!(": {}", output.join(" | ")) };
    match ended {
        Ok(Ok(status)) if status.success() => {
            info!(task = %facts.task, run_id = %facts.run_id, notifier = %shown, "notifier ran{said}");
        }
        Ok(Ok(status)) => warn!(
            task = %facts.task, run_id = %facts.run_id, notifier = %shown,
            "the notifier failed ({}){said}; the run's result is unaffected",
            crate::daemon::step::describe_exit(status)
        ),
        Ok(Err(e)) => {
            warn!(task = %facts.task, notifier = %shown, "waiting for the notifier failed: {e}");
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            warn!(
                task = %facts.task, run_id = %facts.run_id, notifier = %shown,
                "the notifier took longer than {} and was killed; the run's result is unaffected",
                crate::time::Human(timeout)
            );
        }
    }
}
