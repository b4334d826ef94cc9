//! Telling someone how runs went: a healthchecks.io-style ping URL and a generic webhook
//! ([`http`]), a notify command ([`command`]), and the presets: a desktop notification
//! ([`desktop`]), ntfy and Gotify ([`push`]) and a mail ([`email`]), delivered from the [`outbox`] so that no run ever waits for one.
//!
//! Pings: `URL/start` when a run starts, the bare `URL` on success, `URL/fail` (or
//! `URL/<exit code>`) on failure, each with `?rid=<uuid>` so start and finish pair up; the
//! body is empty unless `send_logs: true` (then the last stderr lines). Webhooks: a JSON
//! document with the run's facts, POSTed at start and end. The presets say how a run ended
//! (never that it started), each on a delivery thread of its own, in words a person reads
//! ([`RunFacts::title`], [`RunFacts::text`]). A notification that fails is logged and
//! retried once ([`retried`]); it never changes the result of a backup.

mod command;
mod desktop;
mod email;
mod http;
mod outbox;
mod push;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tracing::{debug, warn};

use crate::broker::Secrets;
use crate::config::{Desktop, Notify};
pub(crate) use outbox::{Outbox, Sent};

/// The facts of a run, as webhooks receive them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunFacts {
    /// `start` or `end` of a run; `overdue` or `recovered` for a task whose last success
    /// became too old, or is recent again (then `run_id` is empty).
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

impl RunFacts {
    /// Whether the end is one to alert about: not a success, a warning or a deliberate
    /// skip (the same line the ping draws between the bare URL and `/fail`).
    fn failed(&self) -> bool {
        crate::protocol::alarming(&self.status)
    }

    /// The status, with the exit code of a failure: `failed (exit code 3)`.
    fn result(&self) -> String {
        crate::protocol::result_text(&self.status, self.exit_code)
    }

    /// `backupnizza: nightly failed`: a title or subject naming the task and the result.
    fn title(&self) -> String {
        format!("backupnizza: {} {}", self.task, self.status)
    }

    /// The facts as lines a person reads: task, result, reason, host and times, what the
    /// run saved or found, and the stderr tail when the facts still hold it (`send_logs`).
    fn text(&self) -> String {
        let result = self.result();
        let mut lines = vec![format!("task: {}", self.task), format!("result: {result}")];
        if let Some(reason) = crate::protocol::reason_beside(&result, &self.reason) {
            lines.push(format!("reason: {reason}"));
        }
        lines.push(format!("host: {}", self.host));
        lines.push(format!("started: {}", self.started));
        if let Some(ended) = &self.ended {
            lines.push(format!("ended: {ended}"));
        }
        if let Some(id) = &self.snapshot_id {
            lines.push(format!("snapshot: {id}"));
        }
        if !self.audit_findings.is_empty() {
            lines.push("findings:".into());
            lines.extend(self.audit_findings.iter().map(|f| format!("  {}", f.detail)));
        }
        if let Some(tail) = self.stderr_tail.as_ref().filter(|t| !t.is_empty()) {
            lines.push("last lines of stderr:".into());
            lines.extend(tail.iter().map(|l| format!("  {l}")));
        }
        lines.join("\n") + "\n"
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

/// One notification, ready to be sent from a delivery thread (blocking).
type Delivery = Box<dyn FnOnce() + Send>;

/// Posts the notifications for one event and returns at once. With `after`, they wait
/// until that earlier event's notifications are out, so an end never overtakes its start
/// (healthchecks would then wait for a completion that already came). The presets, which
/// only an end has, go out each on a thread of its own, so a slow mail server delays no
/// other notification.
pub(crate) fn send(
    notify: &Notify,
    secrets: &Secrets,
    facts: RunFacts,
    after: Option<Sent>,
    outbox: &Outbox,
    (base_env, home): (&[(OsString, OsString)], Option<&Path>),
) -> Option<Sent> {
    let mut targets = http::Targets::of(notify, secrets);
    // A ping says how a run went; a task becoming overdue or recovering is the webhook's,
    // the notifier's and the presets' (healthchecks keeps its own time).
    if !matches!(facts.event, "start" | "end") {
        targets.ping = None;
    }
    let end = facts.event != "start";
    // The notifier and the presets are for results: a run's end, a task overdue or
    // recovered; never a start.
    let command = notify.command.clone().filter(|_| end);
    let presets = if end { presets(notify, secrets, &facts) } else { Vec::new() };
    if targets.is_empty() && command.is_none() && presets.is_empty() {
        return None;
    }
    let facts = facts.redacted();
    let mut shown = facts.clone();
    if !notify.send_logs {
        shown.stderr_tail = None;
    }
    for preset in presets {
        let shown = shown.clone();
        outbox.post(None, Some(Box::new(move || preset(&shown))), async {});
    }
    let notifier = command.map(|argv| (argv, base_env.to_vec(), home.map(Path::to_path_buf)));
    if targets.is_empty() && notifier.is_none() {
        return None;
    }
    let timeout = notify.timeout;
    let deliver: Option<Delivery> =
        if targets.is_empty() { None } else { Some(Box::new(move || targets.deliver(&facts))) };
    let then = async move {
        if let Some((argv, base_env, home)) = notifier {
            command::run(&argv, &base_env, home.as_deref(), &shown, timeout).await;
        }
    };
    Some(outbox.post(after, deliver, then))
}

/// A preset's delivery, given the end's facts (redacted, the stderr tail only with
/// `send_logs`).
type Preset = Box<dyn FnOnce(&RunFacts) + Send>;

/// The end-of-run presets `notify` asks for, their secrets resolved.
fn presets(notify: &Notify, secrets: &Secrets, facts: &RunFacts) -> Vec<Preset> {
    let timeout = notify.timeout;
    let mut out: Vec<Preset> = Vec::new();
    let desktop = match notify.desktop {
        Desktop::Off => false,
        Desktop::Always => true,
        Desktop::Failures => facts.failed(),
    };
    if desktop {
        out.push(Box::new(move |facts| desktop::deliver(facts, timeout)));
    }
    if let Some(ntfy) = &notify.ntfy {
        let token = ntfy.token_secret.as_ref().map(|name| secret(secrets, name, facts));
        // A token named but not had: nothing is sent, rather than an anonymous publish.
        if token.as_ref().is_none_or(Option::is_some) {
            let target = push::Ntfy::new(ntfy, token.flatten(), timeout);
            out.push(Box::new(move |facts| target.deliver(facts)));
        }
    }
    if let Some(gotify) = &notify.gotify
        && let Some(token) = secret(secrets, &gotify.token_secret, facts)
    {
        let target = push::Gotify::new(gotify, token, timeout);
        out.push(Box::new(move |facts| target.deliver(facts)));
    }
    if let Some(email) = &notify.email {
        let password = email.password_secret.as_ref().map(|name| secret(secrets, name, facts));
        // A login named but its password not had: the server would refuse the mail anyway.
        if password.as_ref().is_none_or(Option::is_some) {
            let target = email::Email::new(email, password.flatten(), timeout);
            out.push(Box::new(move |facts| target.deliver(facts)));
        }
    }
    out
}

/// A secret a preset names, as text (trimmed: a file's final newline is no part of a
/// token). `None`, with a warning, when it was not loaded or is not UTF-8.
fn secret(secrets: &Secrets, name: &str, facts: &RunFacts) -> Option<SecretString> {
    let text = secrets
        .get(name)
        .and_then(|s| std::str::from_utf8(s.expose_secret().as_bytes()).ok())
        .map(|s| SecretString::from(s.trim()));
    if text.is_none() {
        warn!(task = %facts.task, run_id = %facts.run_id, "secret {name:?} for a notification is not loaded or not UTF-8; that notification is not sent");
    }
    text
}

/// Sends with one retry after a second; logs the outcome. `to` is what logs may show of
/// the destination (a URL's scheme and host, a mail server's host).
fn retried(kind: &str, to: &str, facts: &RunFacts, attempt: impl Fn() -> Result<(), String>) {
    for retry in 0..2 {
        match attempt() {
            Ok(()) => {
                debug!(task = %facts.task, run_id = %facts.run_id, to, event = facts.event, "{kind} sent");
                return;
            }
            Err(e) if retry == 0 => {
                debug!(to, "{kind} failed ({e}); retrying once");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => warn!(
                task = %facts.task, run_id = %facts.run_id, to, event = facts.event,
                "{kind} failed: {e}; the run's result is unaffected"
            ),
        }
    }
}
