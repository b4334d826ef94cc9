//! Pings (healthchecks.io style) and webhooks over HTTP(S), with `ureq` (rustls, the
//! Mozilla roots): blocking calls, each bounded by the notification `timeout` and retried
//! once after a second, run on the [`Outbox`](super::outbox::Outbox)'s threads. URLs are
//! credentials (a ping URL lets anyone report for you), so logs show only their scheme and
//! host.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{RunFacts, retried};
use crate::broker::Secrets;
use crate::config::UrlValue;

/// Where one event's HTTP notifications go.
pub(super) struct Targets {
    pub(super) ping: Option<String>,
    pub(super) webhook: Option<String>,
    pub(super) send_logs: bool,
    pub(super) timeout: Duration,
}

impl Targets {
    /// The event's ping and webhook URLs (a URL kept as a secret, resolved).
    pub(super) fn of(notify: &crate::config::Notify, secrets: &Secrets) -> Targets {
        Targets {
            ping: notify.ping.as_ref().and_then(|u| resolve(u, secrets)),
            webhook: notify.webhook.as_ref().and_then(|u| resolve(u, secrets)),
            send_logs: notify.send_logs,
            timeout: notify.timeout,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ping.is_none() && self.webhook.is_none()
    }

    /// Sends the ping, then the webhook, each bounded by the timeout. Blocking.
    pub(super) fn deliver(&self, facts: &RunFacts) {
        let agent = agent(self.timeout);
        if let Some(base) = &self.ping {
            let url = ping_url(base, facts);
            // An audit's findings are the point of its failure ping: always in the body.
            let mut body: Vec<&str> =
                facts.audit_findings.iter().map(|f| f.detail.as_str()).collect();
            if let (Some(tail), true) = (&facts.stderr_tail, self.send_logs) {
                body.extend(tail.iter().map(String::as_str));
            }
            let body = body.join("\n");
            retried("ping", &shown(base), facts, || {
                answered(agent.post(&url).set("content-type", "text/plain").send_string(&body))
            });
        }
        if let Some(url) = &self.webhook {
            let mut facts = facts.clone();
            if !self.send_logs {
                facts.stderr_tail = None;
            }
            retried("webhook", &shown(url), &facts, || answered(agent.post(url).send_json(&facts)));
        }
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

/// An error without the URL (ureq's messages include it).
/// The client every HTTP notification uses: bounded by `timeout`, and following no
/// redirect. ureq would follow one with a GET that keeps the request's own headers (a
/// Gotify key, an ntfy token) wherever it points, and a publish turned into a GET publishes
/// nothing while it answers 200.
pub(super) fn agent(timeout: std::time::Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).redirects(0).build()
}

/// A request's outcome: 2xx is delivered; a redirect is a failure that says where it
/// pointed (scheme and host), so the task file can name that URL instead.
pub(super) fn answered(result: Result<ureq::Response, ureq::Error>) -> Result<(), String> {
    match result {
        Ok(r) if (300..400).contains(&r.status()) => Err(format!(
            "HTTP status {}: redirected to {}, not followed (put that URL in the task file)",
            r.status(),
            r.header("location").map_or_else(|| "nowhere".to_string(), shown)
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

pub(super) fn describe(e: &ureq::Error) -> String {
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
    use crate::daemon::notify::new_rid;

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
