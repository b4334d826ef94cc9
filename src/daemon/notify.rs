//! Telling someone how runs went: a healthchecks.io-style ping URL and a generic webhook
//! ([`http`]), and a notify command ([`command`]), delivered from the [`outbox`] so that no
//! run ever waits for one.
//!
//! Pings: `URL/start` when a run starts, the bare `URL` on success, `URL/fail` (or
//! `URL/<exit code>`) on failure, each with `?rid=<uuid>` so start and finish pair up; the
//! body is empty unless `send_logs: true` (then the last stderr lines). Webhooks: a JSON
//! document with the run's facts, POSTed at start and end. A notification that fails is
//! logged and retried once; it never changes the result of a backup.

mod command;
mod http;
mod outbox;

use std::ffi::OsString;
use std::path::Path;

use serde::Serialize;

use crate::broker::Secrets;
use crate::config::Notify;
pub(crate) use outbox::{Outbox, Sent};

/// The facts of a run, as webhooks receive them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunFacts {
    /// `start` or `end`.
    pub event: &'static str,
    pub task: String,
    pub run_id: String,
    /// `running` at start; the run's status at the end.
    pub status: String,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub started: String,
    pub ended: Option<String>,
    pub reason: String,
    /// Only with `send_logs: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<Vec<String>>,
    pub host: String,
    /// A UUID pairing start and end (healthchecks' `rid`).
    pub rid: String,
    /// The last snapshot the run's `restic backup --json` steps saved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes those steps added to the repository, in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_added: Option<u64>,
    /// Each of those steps' summary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<crate::restic::BackupSummary>,
    /// What an audit task found (the run failed for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_findings: Vec<crate::history::Finding>,
}

impl RunFacts {
    /// The facts with their free text (reason, stderr tail) masked raw, before the ping body
    /// joins it or the webhook's JSON escapes it.
    fn redacted(mut self) -> RunFacts {
        // Made of the task's output: masked with the task's own secrets, as that was.
        let task = self.task.clone();
        let mask = |text: &mut String| {
            *text =
                crate::redact::as_task(Some(&task), || crate::redact::redact(text).into_owned());
        };
        mask(&mut self.reason);
        for f in &mut self.audit_findings {
            mask(&mut f.detail);
        }
        if let Some(tail) = self.stderr_tail.as_mut() {
            tail.iter_mut().for_each(mask);
        }
        self
    }
}

/// A fresh UUIDv4 for pairing pings.
pub(crate) fn new_rid() -> String {
    let mut b = [0u8; 16];
    let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::digest::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Posts the notifications for one event and returns at once. With `after`, they wait
/// until that earlier event's notifications are out, so an end never overtakes its start
/// (healthchecks would then wait for a completion that already came).
pub(crate) fn send(
    notify: &Notify,
    secrets: &Secrets,
    facts: RunFacts,
    after: Option<Sent>,
    outbox: &Outbox,
    (base_env, home): (&[(OsString, OsString)], Option<&Path>),
) -> Option<Sent> {
    let targets = http::Targets::of(notify, secrets);
    // The notifier is for results: it runs at the end of a run only.
    let command = notify.command.clone().filter(|_| facts.event == "end");
    if targets.is_empty() && command.is_none() {
        return None;
    }
    let facts = facts.redacted();
    let notifier = command.map(|argv| {
        let mut facts = facts.clone();
        if !notify.send_logs {
            facts.stderr_tail = None;
        }
        (argv, base_env.to_vec(), home.map(Path::to_path_buf), facts)
    });
    let timeout = notify.timeout;
    let deliver: Option<Box<dyn FnOnce() + Send>> =
        if targets.is_empty() { None } else { Some(Box::new(move || targets.deliver(&facts))) };
    let then = async move {
        if let Some((argv, base_env, home, facts)) = notifier {
            command::run(&argv, &base_env, home.as_deref(), &facts, timeout).await;
        }
    };
    Some(outbox.post(after, deliver, then))
}
