//! The push services' presets, over HTTP(S) with `ureq` like the webhook: ntfy's publish
//! (`POST URL/TOPIC`, the title and priority in headers, the text as the body) and Gotify's
//! `POST URL/message` (a JSON message with an application token). Both say how a run ended,
//! a failure louder than a success; their tokens are secrets, sent as headers and never
//! logged, and logs show only the server's scheme and host (an ntfy topic is as good as a
//! password on a public server).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::http::{answered, shown};
use super::{RunFacts, retried};

/// ntfy priorities: 3 is ntfy's default; 5 ("max") is a long vibration and a pop-over.
const NTFY_OK: &str = "3";
const NTFY_FAILED: &str = "5";
/// Gotify priorities: 4 is an ordinary notification on the Android app; 8 and up also
/// vibrate.
const GOTIFY_OK: u8 = 4;
const GOTIFY_FAILED: u8 = 8;

/// Where an ntfy message goes.
pub(super) struct Ntfy {
    /// `URL/TOPIC`.
    url: String,
    token: Option<SecretString>,
    timeout: Duration,
}

impl Ntfy {
    pub(super) fn new(
        config: &crate::config::Ntfy,
        token: Option<SecretString>,
        timeout: Duration,
    ) -> Ntfy {
        Ntfy { url: format!("{}/{}", config.url, config.topic), token, timeout }
    }

    /// Publishes the end's facts (already redacted). Blocking.
    pub(super) fn deliver(&self, facts: &RunFacts) {
        let agent = super::http::agent(self.timeout);
        let failed = facts.failed();
        let (priority, tags) =
            if failed { (NTFY_FAILED, "warning") } else { (NTFY_OK, "white_check_mark") };
        let (title, body) = (facts.title(), facts.text());
        retried("ntfy", &shown(&self.url), facts, || {
            let mut request = agent
                .post(&self.url)
                .set("Title", &title)
                .set("Priority", priority)
                .set("Tags", tags)
                .set("Content-Type", "text/plain; charset=utf-8");
            if let Some(token) = &self.token {
                request =
                    request.set("Authorization", &format!("Bearer {}", token.expose_secret()));
            }
            answered(request.send_string(&body))
        });
    }
}

/// Where a Gotify message goes.
pub(super) struct Gotify {
    /// `URL/message`.
    url: String,
    token: SecretString,
    timeout: Duration,
}

impl Gotify {
    pub(super) fn new(
        config: &crate::config::Gotify,
        token: SecretString,
        timeout: Duration,
    ) -> Gotify {
        Gotify { url: format!("{}/message", config.url), token, timeout }
    }

    /// Posts the end's facts (already redacted). Blocking.
    pub(super) fn deliver(&self, facts: &RunFacts) {
        let agent = super::http::agent(self.timeout);
        let priority = if facts.failed() { GOTIFY_FAILED } else { GOTIFY_OK };
        let message = serde_json::json!({
            "title": facts.title(),
            "message": facts.text(),
            "priority": priority,
        });
        retried("gotify", &shown(&self.url), facts, || {
            answered(
                agent
                    .post(&self.url)
                    .set("X-Gotify-Key", self.token.expose_secret())
                    .send_json(&message),
            )
        });
    }
}
