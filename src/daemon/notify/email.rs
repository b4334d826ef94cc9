//! `email: {smtp, from, to, ...}`: a mail at the end of each run, through an SMTP server with
//! `lettre`'s blocking client on the outbox's thread. STARTTLS is required unless
//! `starttls: false` (a relay on the same machine), with rustls and the Mozilla roots as for
//! HTTPS; the login's password is a secret, handed to the client and never logged. The
//! connection and each exchange are bounded by the notification `timeout`, and logs name
//! only the server's host and port.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};
use secrecy::{ExposeSecret, SecretString};
use tracing::warn;

use super::{RunFacts, retried};

/// Where a run's mail goes.
pub(super) struct Email {
    config: crate::config::Email,
    password: Option<SecretString>,
    timeout: Duration,
}

impl Email {
    pub(super) fn new(
        config: &crate::config::Email,
        password: Option<SecretString>,
        timeout: Duration,
    ) -> Email {
        Email { config: config.clone(), password, timeout }
    }

    /// Mails the end's facts (already redacted). Blocking.
    pub(super) fn deliver(&self, facts: &RunFacts) {
        let server = format!("smtp://{}:{}", self.config.host, self.config.port);
        let (message, transport) = match (self.message(facts), self.transport(&facts.host)) {
            (Ok(message), Ok(transport)) => (message, transport),
            (Err(e), _) | (_, Err(e)) => {
                warn!(task = %facts.task, run_id = %facts.run_id, to = %server, "email not sent: {e}; the run's result is unaffected");
                return;
            }
        };
        retried("email", &server, facts, || {
            transport.send(&message).map(drop).map_err(|e| e.to_string())
        });
    }

    /// Subject `backupnizza: TASK RESULT`, the facts as plain text.
    fn message(&self, facts: &RunFacts) -> Result<Message, String> {
        let mailbox = |text: &str| {
            text.parse::<Mailbox>().map_err(|e| format!("invalid address {text:?}: {e}"))
        };
        let mut builder = Message::builder().from(mailbox(&self.config.from)?);
        for to in &self.config.to {
            builder = builder.to(mailbox(to)?);
        }
        builder
            .subject(facts.title())
            .header(ContentType::TEXT_PLAIN)
            .body(facts.text())
            .map_err(|e| format!("cannot build the mail: {e}"))
    }

    /// The client: STARTTLS required or a plain connection, introduced as this host.
    fn transport(&self, host: &str) -> Result<SmtpTransport, String> {
        let config = &self.config;
        let builder = if config.starttls {
            SmtpTransport::starttls_relay(&config.host)
                .map_err(|e| format!("cannot set up TLS for {}: {e}", config.host))?
        } else {
            SmtpTransport::builder_dangerous(&config.host)
        };
        let name = if host.is_empty() { "localhost" } else { host };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(self.timeout))
            .hello_name(ClientId::Domain(name.to_string()));
        if let (Some(user), Some(password)) = (&config.username, &self.password) {
            let password = password.expose_secret().to_string();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(builder.build())
    }
}
