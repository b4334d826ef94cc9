//! Where a task's runs are reported (`notify:`): a ping URL, a webhook, a command, and the
//! presets for the usual places (the desktop, ntfy, Gotify, email), which say how a run ended and
//! never how it started.

use std::time::Duration;

/// Where to report runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// A healthchecks.io-style ping URL: `/start`, the bare URL on success, `/fail` or
    /// `/<exit code>` on failure.
    pub ping: Option<UrlValue>,
    /// POSTed a JSON document with the run's facts at start and end.
    pub webhook: Option<UrlValue>,
    /// Include the last stderr lines (pings: as the request body; webhooks: in the JSON;
    /// the presets: in their text).
    pub send_logs: bool,
    pub timeout: Duration,
    /// Run at the end of each run with its facts in the environment.
    pub command: Option<Vec<String>>,
    /// A notification on the desktop session (`desktop:`).
    pub desktop: Desktop,
    pub ntfy: Option<Ntfy>,
    pub gotify: Option<Gotify>,
    pub email: Option<Email>,
}

/// A URL written in the file, or one kept as a secret (ping URLs are credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlValue {
    Text(String),
    Secret(String),
}

/// Which ends of runs pop up on the desktop: `false` (the default), `true` or `failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Desktop {
    #[default]
    Off,
    /// Every run's end.
    Always,
    /// Only the ends that are not a success, a warning or a deliberate skip.
    Failures,
}

/// `ntfy: {url, topic, token_secret}`: ntfy's HTTP publish, `POST URL/TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ntfy {
    /// The server, `https://ntfy.sh` or your own.
    pub url: String,
    pub topic: String,
    /// The secret holding an access token (`Authorization: Bearer`), for a protected topic.
    pub token_secret: Option<String>,
}

/// `gotify: {url, token_secret}`: Gotify's `POST URL/message` with an application token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gotify {
    pub url: String,
    /// The secret holding the application token (`X-Gotify-Key`).
    pub token_secret: String,
}

/// `email: {smtp, from, to, starttls, username, password_secret}`: a mail through an SMTP
/// server (addresses checked when the file is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub to: Vec<String>,
    /// STARTTLS required (`true`, the default), or a plain connection (a local relay).
    pub starttls: bool,
    /// The SMTP login, with the password from `password_secret` (both or neither).
    pub username: Option<String>,
    pub password_secret: Option<String>,
}
