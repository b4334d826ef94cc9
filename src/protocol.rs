//! The wire protocol between the daemon and its clients (`secretbox`, `backupnizza status`,
//! `trigger`), and the exit codes of `secretbox`. Documented in `docs/protocol.md`.
//!
//! HTTP/1.1 over the daemon's Unix socket. Every response carries
//! `Backupnizza-Protocol: 1`; routes live under `/v1/` and change only with the version.

use serde::{Deserialize, Serialize};

pub mod image;

/// Bumped on any incompatible change to routes or bodies.
pub const PROTOCOL_VERSION: u32 = 1;
/// Response header naming the protocol version.
pub const PROTOCOL_HEADER: &str = "backupnizza-protocol";

/// `GET` — the daemon's version. Open to every caller of the daemon's uid.
pub const ROUTE_VERSION: &str = "/v1/version";
/// `POST /v1/secrets/{name}` with `Authorization: Bearer <token>` — redeem a token for a
/// secret. 200 with the secret as `application/octet-stream`, or an [`ErrorBody`].
pub const ROUTE_SECRETS: &str = "/v1/secrets/";
/// `GET` — the daemon's tasks, their last runs and next fire times ([`StatusBody`]).
/// Control routes refuse callers inside a task's process tree.
pub const ROUTE_STATUS: &str = "/v1/status";
/// `GET /v1/events?after=N&wait=SECONDS` — what happened to the tasks from event N on
/// (runs ended, tasks overdue or recovered), waiting up to SECONDS (max 30) for one: an
/// [`OutputBody`] whose lines' `stream` is the task and `text` an [`EventBody`] in JSON. A
/// member gets the events of the tasks its `members:` lets it read.
pub const ROUTE_EVENTS: &str = "/v1/events";
/// `POST /v1/pause?tasks=a,b&for=SECONDS` — hold the tasks' occurrences (no `tasks`: every
/// task; no `for`: until resumed); 200 with a [`PausedBody`]. The daemon's own user only.
pub const ROUTE_PAUSE: &str = "/v1/pause";
/// `POST /v1/resume?tasks=a,b` — lift the pauses (no `tasks`: every task's); 200 with a
/// [`PausedBody`] naming the tasks resumed. The daemon's own user only.
pub const ROUTE_RESUME: &str = "/v1/resume";
/// `POST /v1/tasks/{name}/trigger` — run a task now; 202 with a [`RunRef`].
pub const ROUTE_TASKS: &str = "/v1/tasks/";
/// `GET /v1/runs/{id}?wait=SECONDS` — a run's state, waiting up to SECONDS (max 30) for it to
/// finish ([`RunBody`]).
pub const ROUTE_RUNS: &str = "/v1/runs/";
/// `GET /v1/runs/{id}/output?after=N&wait=SECONDS` — the run's output lines from number N
/// on, redacted, waiting up to SECONDS (max 30) for one ([`OutputBody`]). For `trigger
/// --follow`.
pub const OUTPUT_SUFFIX: &str = "/output";
/// `GET /v1/history?task=NAME` — the run history, every generation, oldest first: the
/// records of task NAME (all tasks without `task=`) and the daemon's own, plus the lines
/// that did not parse. For members of `control_group:`, who cannot read `state_dir`.
pub const ROUTE_HISTORY: &str = "/v1/history";
/// Largest history answer a client reads: more than the file and its generations can hold
/// (6 × 16 MiB).
pub const MAX_HISTORY_RESPONSE: usize = 128 * 1024 * 1024;

/// Largest request body the server reads.
pub const MAX_REQUEST_BODY: usize = 4096;
/// Longest a client waits for a run in one request; clients poll again after it.
pub const MAX_WAIT_SECS: u64 = 30;

/// Prefix of every token, so secret scanners and humans can recognise one.
pub const TOKEN_PREFIX: &str = "bnz1_";

/// Why a redemption was refused: the wire's error codes ([`Rejection::as_str`]) and
/// `secretbox`'s exit codes ([`exit_code`]) follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a token at all (the wrong shape). A well-formed token we never issued is
    /// `Forbidden`: nobody can show it is theirs.
    Unknown,
    Expired,
    /// This secret was already redeemed as many times as the task allows.
    Used,
    /// The process it was minted for has exited.
    Revoked,
    /// The token's task may not fetch this secret.
    NotInScope,
    /// The caller is not the token's process or one of its descendants (whatever the
    /// token's state), or not a task process at all, or another user.
    Forbidden,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unknown => "unknown",
            Rejection::Expired => "expired",
            Rejection::Used => "used",
            Rejection::Revoked => "revoked",
            Rejection::NotInScope => "not_in_scope",
            Rejection::Forbidden => "forbidden",
        }
    }

    pub const ALL: [Rejection; 6] = [
        Rejection::Unknown,
        Rejection::Expired,
        Rejection::Used,
        Rejection::Revoked,
        Rejection::NotInScope,
        Rejection::Forbidden,
    ];
}

/// Error responses: a machine-readable code and a sentence for humans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// Error codes beyond the token rejections (which use [`Rejection::as_str`]).
pub mod errors {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const TOO_LARGE: &str = "too_large";
    pub const TIMEOUT: &str = "timeout";
    pub const SLOW_DOWN: &str = "slow_down";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const CONFLICT: &str = "conflict";
}

/// One line of a run's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputLine {
    pub seq: u64,
    /// `stdout`, `stderr`, or a hook's (`before.stdout`, ...).
    pub stream: String,
    pub text: String,
}

/// A batch of a run's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputBody {
    pub lines: Vec<OutputLine>,
    /// The number to ask from next.
    pub next: u64,
    /// The run has ended and every line has been given.
    pub ended: bool,
    /// Lines no longer kept that the request asked for.
    pub missed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionBody {
    pub protocol: u32,
    pub daemon: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusBody {
    pub daemon: String,
    pub pid: u32,
    pub started: String,
    pub tasks: Vec<TaskStatus>,
    pub tokens: TokenCounts,
    /// What is wrong with the run history, when it cannot be written (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    /// RFC 3339 with offset, or null when nothing is scheduled.
    pub next: Option<String>,
    pub running: bool,
    /// Why the run that is due waits to start ("on battery since 10:02"), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    pub last: Option<RunBody>,
    /// When a verifier last proved this task's newest snapshot restorable (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Whether its last success is too old: two of its occurrences missed since the start
    /// of its last successful run (or the daemon's start), or its audit's `max_age`.
    #[serde(default)]
    pub overdue: bool,
    /// Since when it is overdue (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_since: Option<String>,
    /// `backupnizza pause` holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseBody>,
}

/// One event of `GET /v1/events`: a run's end, or a task becoming overdue or recovering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventBody {
    /// `end`, `overdue` or `recovered`.
    pub event: String,
    pub task: String,
    /// Empty for `overdue` and `recovered`.
    pub run_id: String,
    /// The run's status (`success`, `failed`, ...); `overdue` or `recovered`.
    pub status: String,
    pub exit_code: Option<i32>,
    /// Redacted, as in the history.
    pub reason: String,
    /// When it happened (RFC 3339).
    pub at: String,
}

impl EventBody {
    /// A run's end.
    pub fn ended(run: &RunBody) -> EventBody {
        EventBody {
            event: "end".into(),
            task: run.task.clone(),
            run_id: run.run_id.clone(),
            status: run.status.as_str().into(),
            exit_code: run.exit_code,
            reason: run.reason.clone(),
            at: run.ended.clone().unwrap_or_default(),
        }
    }

    /// Whether it is one to alert about (see [`alarming`]).
    pub fn failed(&self) -> bool {
        alarming(&self.status)
    }

    /// The status, with the exit code of a failure (see [`result_text`]).
    pub fn result(&self) -> String {
        result_text(&self.status, self.exit_code)
    }
}

/// Whether an end (or a task's state) with `status` is one to alert about: not a success, a
/// warning, a deliberate skip or a recovery (the line the ping draws between the bare URL
/// and `/fail`).
pub fn alarming(status: &str) -> bool {
    !matches!(status, "success" | "warning" | "skipped" | "recovered")
}

/// The status, with the exit code of an alarming one: `failed (exit code 3)`.
pub fn result_text(status: &str, exit_code: Option<i32>) -> String {
    match exit_code.filter(|_| alarming(status)) {
        Some(code) => format!("{status} (exit code {code})"),
        None => status.to_string(),
    }
}

/// The reason worth showing beside `result` (a [`result_text`]): none when it is empty, or
/// when it is only the exit code the result already gives (`failed (exit code 3)`).
pub fn reason_beside<'r>(result: &str, reason: &'r str) -> Option<&'r str> {
    (!reason.is_empty() && !result.contains(&format!("({reason})"))).then_some(reason)
}

/// A task's pause, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseBody {
    pub since: String,
    /// RFC 3339; null: until resumed.
    pub until: Option<String>,
}

/// The answer to `pause` and `resume`: the tasks it applied to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PausedBody {
    pub tasks: Vec<String>,
    /// When the pause ends (RFC 3339); null: until resumed, or an answer to `resume`.
    pub until: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenCounts {
    pub minted: u64,
    pub redeemed: u64,
    pub live: u64,
    /// Rejections by reason (`unknown`, `expired`, `used`, `revoked`, `not_in_scope`, `forbidden`).
    pub rejected: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRef {
    pub run_id: String,
    pub task: String,
}

/// Where a run is, or how it ended. The names on the wire and in the history file are the
/// snake_case variant names (`catch_up` style): `queued`, `running`, `success`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting behind the task's current run (`on_overlap: queue`).
    Queued,
    Running,
    Success,
    /// Every step ended 0 or with one of the task's `warning_exit_codes`, at least one not 0.
    Warning,
    Failed,
    Timeout,
    /// Stopped by daemon shutdown.
    Cancelled,
    /// Never started (a program that cannot be started, a refused pin).
    Refused,
    /// The `before` hook exited 75: the run was skipped on purpose (not a failure).
    Skipped,
    /// The daemon died (a crash, SIGKILL) during the run; the next start settled it.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Warning => "warning",
            RunStatus::Failed => "failed",
            RunStatus::Timeout => "timeout",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Refused => "refused",
            RunStatus::Skipped => "skipped",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Success, warning, or deliberately skipped: nothing to alert about.
    pub fn is_ok(self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::Warning | RunStatus::Skipped)
    }

    /// The run has ended (it is neither queued nor running).
    pub fn is_done(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as the daemon reports it (also the shape of history records' summaries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunBody {
    pub run_id: String,
    pub task: String,
    pub status: RunStatus,
    pub started: String,
    pub ended: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub reason: String,
}

/// Exit codes of `secretbox`, one per cause, so scripts (and people reading restic's
/// "password command failed") can tell what went wrong.
pub mod exit {
    /// The secret was written to stdout.
    pub const OK: i32 = 0;
    /// Anything unexpected: a protocol error, a write error on stdout.
    pub const INTERNAL: i32 = 1;
    /// Bad arguments.
    pub const USAGE: i32 = 2;
    /// `SECRETBOX_TOKEN` (or the socket) is not in the environment: not run by the daemon.
    pub const NO_TOKEN: i32 = 3;
    /// The daemon did not answer: no socket, nothing listening, or the timeout passed.
    pub const UNREACHABLE: i32 = 4;
    /// The token's time to live has passed.
    pub const EXPIRED: i32 = 5;
    /// The token was already used for this secret.
    pub const USED: i32 = 6;
    /// The token is not valid for this secret (not in the task's `secrets:`).
    pub const NOT_IN_SCOPE: i32 = 7;
    /// The process the token was issued to has exited.
    pub const REVOKED: i32 = 8;
    /// Not a token the daemon issued (garbage, or from another daemon).
    pub const UNKNOWN: i32 = 9;
    /// The caller may not redeem it: another user, or a process outside the task.
    pub const FORBIDDEN: i32 = 10;
    /// The daemon asked the caller to slow down after repeated failures.
    pub const SLOW_DOWN: i32 = 11;
    /// The socket is served by another process than the daemon named in `SECRETBOX_DAEMON`
    /// (the socket was replaced): nothing was sent.
    pub const NOT_THE_DAEMON: i32 = 12;
}

/// The `secretbox` exit code for a rejection.
pub fn exit_code(rejection: Rejection) -> i32 {
    match rejection {
        Rejection::Unknown => exit::UNKNOWN,
        Rejection::Expired => exit::EXPIRED,
        Rejection::Used => exit::USED,
        Rejection::Revoked => exit::REVOKED,
        Rejection::NotInScope => exit::NOT_IN_SCOPE,
        Rejection::Forbidden => exit::FORBIDDEN,
    }
}

/// The rejection named by an error code on the wire.
pub fn rejection_from_code(code: &str) -> Option<Rejection> {
    Rejection::ALL.into_iter().find(|r| r.as_str() == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_that_only_repeats_the_exit_code_is_not_said_twice() {
        let failed = result_text("failed", Some(3));
        assert_eq!(failed, "failed (exit code 3)");
        assert_eq!(reason_beside(&failed, "exit code 3"), None);
        assert_eq!(reason_beside(&failed, ""), None);
        assert_eq!(
            reason_beside(&failed, "restic: wrong password"),
            Some("restic: wrong password")
        );
        // A warning's result has no code in it: its reason says it.
        let warning = result_text("warning", Some(3));
        assert_eq!(reason_beside(&warning, "exit code 3"), Some("exit code 3"));
    }
}
