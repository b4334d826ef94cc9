//! Telling someone how runs went: a healthchecks.io-style ping URL and a generic webhook.
//!
//! Pings: `URL/start` when a run starts, the bare `URL` on success, `URL/fail` (or
//! `URL/<exit code>`) on failure, each with `?rid=<uuid>` so start and finish pair up; the
//! body is empty unless `send_logs: true` (then the last stderr lines). Webhooks: a JSON
//! document with the run's facts, POSTed at start and end. HTTPS uses rustls with the Mozilla
//! roots. URLs are credentials (a ping URL lets anyone report for you), so logs show only
//! their scheme and host. A notification that fails is logged and retried once; it never
//! changes the result of a backup.

mod command;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use tracing::{debug, warn};

use crate::broker::Secrets;
use crate::config::{Notify, UrlValue};

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
        let mask = |text: &mut String| {
            if let std::borrow::Cow::Owned(clean) = crate::redact::redact(text) {
                *text = clean;
            }
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

/// `https://hc-ping.com/<uuid>` → `https://hc-ping.com/…`: what logs may show of a URL.
pub(crate) fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}/…")
        }
        None => "(a URL)".into(),
    }
}

fn resolve(url: &UrlValue, secrets: &Secrets) -> Option<String> {
    match url {
        UrlValue::Text(text) => Some(text.clone()),
        UrlValue::Secret(name) => secrets
            .get(name)
            .and_then(|s| String::from_utf8(s.expose_secret().as_bytes().to_vec()).ok())
            .map(|s| s.trim().to_string()),
    }
}

/// The ping URL for an event: `start`, success (bare), or failure (`fail` / exit code).
pub(crate) fn ping_url(base: &str, facts: &RunFacts) -> String {
    // The suffix belongs on the path, before any query (`.../slug?create=1`).
    let (base, query) = match base.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (base, None),
    };
    let base = base.trim_end_matches('/');
    let suffix = match (facts.event, facts.status.as_str(), facts.exit_code) {
        ("start", _, _) => "/start".to_string(),
        // A run skipped on purpose (a `before` hook's 75) is not an alarm.
        (_, "success" | "warning" | "skipped", _) => String::new(),
        (_, _, Some(code)) if code > 0 => format!("/{}", code.min(255)),
        _ => "/fail".to_string(),
    };
    match query {
        Some(query) => format!("{base}{suffix}?{query}&rid={}", facts.rid),
        None => format!("{base}{suffix}?rid={}", facts.rid),
    }
}

/// Sends the notifications for one event in the background and returns at once. With
/// `after`, they wait until that earlier event's notifications are out, so an end never
/// overtakes its start (healthchecks would then wait for a completion that already came).
pub(crate) fn send(
    notify: &Notify,
    secrets: &Secrets,
    facts: RunFacts,
    after: Option<Sent>,
    tracker: &tokio_util::task::TaskTracker,
    (base_env, home): (&[(OsString, OsString)], Option<&Path>),
) -> Option<Sent> {
    let ping = notify.ping.as_ref().and_then(|u| resolve(u, secrets));
    let webhook = notify.webhook.as_ref().and_then(|u| resolve(u, secrets));
    let (send_logs, timeout) = (notify.send_logs, notify.timeout);
    // The notifier is for results: it runs at the end of a run only.
    let command = notify.command.clone().filter(|_| facts.event == "end");
    if ping.is_none() && webhook.is_none() && command.is_none() {
        return None;
    }
    let facts = facts.redacted();
    let notifier = command.map(|argv| {
        let mut facts = facts.clone();
        if !send_logs {
            facts.stderr_tail = None;
        }
        (argv, base_env.to_vec(), home.map(Path::to_path_buf), facts)
    });
    let deliver_all = move || {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        if let Some(base) = ping {
            let url = ping_url(&base, &facts);
            // An audit's findings are the point of its failure ping: always in the body.
            let mut body: Vec<&str> =
                facts.audit_findings.iter().map(|f| f.detail.as_str()).collect();
            if let (Some(tail), true) = (&facts.stderr_tail, send_logs) {
                body.extend(tail.iter().map(String::as_str));
            }
            let body = body.join("\n");
            deliver("ping", &base, &facts, || {
                agent
                    .post(&url)
                    .set("content-type", "text/plain")
                    .send_string(&body)
                    .map(drop)
                    .map_err(|e| describe(&e))
            });
        }
        if let Some(url) = webhook {
            let mut facts = facts.clone();
            if !send_logs {
                facts.stderr_tail = None;
            }
            deliver("webhook", &url, &facts, || {
                agent.post(&url).send_json(&facts).map(drop).map_err(|e| describe(&e))
            });
        }
    };
    Some(tracker.spawn(async move {
        if let Some(earlier) = after {
            let _ = earlier.await;
        }
        let _ = tokio::task::spawn_blocking(deliver_all).await;
        if let Some((argv, base_env, home, facts)) = notifier {
            command::run(&argv, &base_env, home.as_deref(), &facts, timeout).await;
        }
    }))
}

/// The notifications of one event, in flight.
pub(crate) type Sent = tokio::task::JoinHandle<()>;

/// Sends with one retry after a second; logs the outcome with the URL reduced to its host.
fn deliver(kind: &str, url: &str, facts: &RunFacts, attempt: impl Fn() -> Result<(), String>) {
    for retry in 0..2 {
        match attempt() {
            Ok(()) => {
                debug!(task = %facts.task, run_id = %facts.run_id, url = %shown(url), event = facts.event, "{kind} sent");
                return;
            }
            Err(e) if retry == 0 => {
                debug!(url = %shown(url), "{kind} failed ({e}); retrying once");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => warn!(
                task = %facts.task, run_id = %facts.run_id, url = %shown(url), event = facts.event,
                "{kind} failed: {e}; the run's result is unaffected"
            ),
        }
    }
}

/// An error without the URL (ureq's messages include it).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP status {code}"),
        ureq::Error::Transport(t) => {
            format!("{:?}: {}", t.kind(), t.message().unwrap_or("transport error"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(event: &'static str, status: &str, code: Option<i32>) -> RunFacts {
        RunFacts {
            event,
            task: "t".into(),
            run_id: "r".into(),
            status: status.into(),
            exit_code: code,
            duration_ms: None,
            started: String::new(),
            ended: None,
            reason: String::new(),
            stderr_tail: None,
            host: String::new(),
            rid: "00000000-0000-4000-8000-000000000000".into(),
            snapshot_id: None,
            data_added: None,
            backups: Vec::new(),
            audit_findings: Vec::new(),
        }
    }

    #[test]
    fn ping_urls_follow_healthchecks() {
        let base = "https://hc-ping.com/abc/";
        assert_eq!(
            ping_url(base, &facts("start", "running", None)),
            "https://hc-ping.com/abc/start?rid=00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            ping_url(base, &facts("end", "success", Some(0))),
            "https://hc-ping.com/abc?rid=00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            ping_url(base, &facts("end", "failed", Some(3))),
            "https://hc-ping.com/abc/3?rid=00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            ping_url(base, &facts("end", "timeout", None)),
            "https://hc-ping.com/abc/fail?rid=00000000-0000-4000-8000-000000000000"
        );
    }

    #[test]
    fn a_query_string_stays_after_the_suffix() {
        // Regression: healthchecks' slug URLs (`.../KEY/db?create=1`) put /fail in the query.
        let slug = "https://hc-ping.com/KEY/db?create=1";
        let rid = "00000000-0000-4000-8000-000000000000";
        assert_eq!(
            ping_url(slug, &facts("end", "failed", None)),
            format!("https://hc-ping.com/KEY/db/fail?create=1&rid={rid}")
        );
        assert_eq!(
            ping_url(slug, &facts("start", "running", None)),
            format!("https://hc-ping.com/KEY/db/start?create=1&rid={rid}")
        );
        assert_eq!(
            ping_url(slug, &facts("end", "success", Some(0))),
            format!("https://hc-ping.com/KEY/db?create=1&rid={rid}")
        );
    }

    #[test]
    fn logs_show_only_scheme_and_host() {
        assert_eq!(shown("https://hc-ping.com/0f0e-secret-uuid?x=1"), "https://hc-ping.com/…");
        assert_eq!(shown("http://user:pw@127.0.0.1:9/x"), "http://127.0.0.1:9/…");
        let rid = new_rid();
        assert_eq!(rid.len(), 36);
        assert_eq!(&rid[14..15], "4");
    }
}
