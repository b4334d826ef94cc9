//! The `notify:` shape both the top level and tasks use: `ping` and `webhook` (URLs that may
//! be kept as secrets), `command`, `send_logs`, `timeout`, and the presets `desktop`, `ntfy`,
//! `gotify` and `email` (whose addresses are parsed here as the mailer will). Whether the secrets they name are declared is [`super::cross`]'s job, like
//! every other reference.

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{DEFAULT_NOTIFY_TIMEOUT, Desktop, Email, Gotify, Notify, Ntfy, UrlValue};

const NOTIFY_KEYS: &[&str] =
    &["ping", "webhook", "command", "send_logs", "timeout", "desktop", "ntfy", "gotify", "email"];
const NTFY_KEYS: &[&str] = &["url", "topic", "token_secret"];
const GOTIFY_KEYS: &[&str] = &["url", "token_secret"];
const EMAIL_KEYS: &[&str] = &["smtp", "from", "to", "starttls", "username", "password_secret"];

impl Checker {
    /// A task's `notify`, or the top-level one.
    pub(super) fn notify(&mut self, node: &Node, path: &str) -> Option<Notify> {
        let f = self.fields(
            node,
            path,
            "a mapping {ping: URL, webhook: URL, command: [ARGV...], ntfy: {...}, ...}",
            Some(NOTIFY_KEYS),
        )?;
        let ping = self.optional(&f, path, "ping", Checker::url);
        let webhook = self.optional(&f, path, "webhook", Checker::url);
        let send_logs = self.with_default(&f, path, "send_logs", false, Checker::boolean);
        let timeout = self.with_default(
            &f,
            path,
            "timeout",
            DEFAULT_NOTIFY_TIMEOUT,
            Checker::positive_duration,
        );
        let command = self.optional(&f, path, "command", Checker::argv);
        let desktop = self.with_default(&f, path, "desktop", Desktop::Off, Checker::desktop);
        let ntfy = self.optional(&f, path, "ntfy", Checker::ntfy);
        let gotify = self.optional(&f, path, "gotify", Checker::gotify);
        let email = self.optional(&f, path, "email", Checker::email);
        Some(Notify {
            ping: ping?,
            webhook: webhook?,
            send_logs: send_logs?,
            timeout: timeout?,
            command: command?,
            desktop: desktop?,
            ntfy: ntfy?,
            gotify: gotify?,
            email: email?,
        })
    }

    /// A notification URL: written out (http or https), or `{secret: NAME}`.
    pub(super) fn url(&mut self, node: &Node, path: &str) -> Option<UrlValue> {
        if let Value::Map(_) = &node.value {
            let inner = self.fields(node, path, "{secret: NAME}", Some(&["secret"]))?;
            if let Some(name) = inner.get("secret") {
                self.non_empty_string(name, &join(path, "secret")).map(UrlValue::Secret)
            } else {
                self.error(path, node.pos, "expected a URL or {secret: NAME}");
                None
            }
        } else {
            let text = self.non_empty_string(node, path)?;
            if !is_http(&text) {
                self.error(
                    path,
                    node.pos,
                    "expected an http:// or https:// URL (or {secret: NAME})",
                );
                return None;
            }
            Some(UrlValue::Text(text))
        }
    }

    /// `desktop: true`, `false` or `failures`.
    fn desktop(&mut self, node: &Node, path: &str) -> Option<Desktop> {
        match &node.value {
            Value::Bool(true) => Some(Desktop::Always),
            Value::Bool(false) => Some(Desktop::Off),
            Value::Str(text) if text == "failures" => Some(Desktop::Failures),
            _ => {
                self.type_error(path, node, "true (every run's end), false or failures");
                None
            }
        }
    }

    /// `ntfy: {url: URL, topic: NAME, token_secret: NAME}`.
    fn ntfy(&mut self, node: &Node, path: &str) -> Option<Ntfy> {
        let f = self.fields(
            node,
            path,
            "a mapping {url: URL, topic: NAME, token_secret: NAME}",
            Some(NTFY_KEYS),
        )?;
        let url = self.required(&f, path, "url", node.pos).and_then(|n| {
            let path = join(path, "url");
            self.server_url(n, &path)
        });
        let topic = self.required(&f, path, "topic", node.pos).and_then(|n| {
            let path = join(path, "topic");
            self.topic(n, &path)
        });
        let token_secret = self.optional(&f, path, "token_secret", Checker::non_empty_string);
        if let (Some(url), Some(Some(_))) = (&url, &token_secret) {
            self.no_plain_credential(&f, path, url, "token_secret")?;
        }
        Some(Ntfy { url: url?, topic: topic?, token_secret: token_secret? })
    }

    /// `gotify: {url: URL, token_secret: NAME}`.
    fn gotify(&mut self, node: &Node, path: &str) -> Option<Gotify> {
        let f =
            self.fields(node, path, "a mapping {url: URL, token_secret: NAME}", Some(GOTIFY_KEYS))?;
        let url = self.required(&f, path, "url", node.pos).and_then(|n| {
            let path = join(path, "url");
            self.server_url(n, &path)
        });
        let token_secret = self.required(&f, path, "token_secret", node.pos).and_then(|n| {
            let path = join(path, "token_secret");
            self.non_empty_string(n, &path)
        });
        if let (Some(url), Some(_)) = (&url, &token_secret) {
            self.no_plain_credential(&f, path, url, "token_secret")?;
        }
        Some(Gotify { url: url?, token_secret: token_secret? })
    }

    /// A token sent in the clear (`http://`) to another machine is refused: anyone on the
    /// path reads it. A server on this machine (`localhost`, `127.0.0.1`, `[::1]`) may be
    /// plain.
    fn no_plain_credential(
        &mut self,
        f: &super::walk::Fields<'_>,
        path: &str,
        url: &str,
        key: &str,
    ) -> Option<()> {
        let Some(rest) = url.strip_prefix("http://") else { return Some(()) };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = if host.starts_with('[') {
            host.split_once(']').map_or(host, |(h, _)| &h[1..])
        } else {
            host.split(':').next().unwrap_or(host)
        };
        if is_loopback(host) {
            return Some(());
        }
        self.error(
            &join(path, key),
            f.get(key).and_then(|n| n.pos),
            format!("the token would go to {host} unencrypted (http://): use the server's https:// URL, or a server on this machine"),
        );
        None
    }

    /// `email: {smtp: HOST:PORT, from: ADDR, to: [ADDR...], starttls: BOOL, username: NAME,
    /// password_secret: NAME}`.
    fn email(&mut self, node: &Node, path: &str) -> Option<Email> {
        let f = self.fields(
            node,
            path,
            "a mapping {smtp: HOST:PORT, from: ADDRESS, to: [ADDRESS...], ...}",
            Some(EMAIL_KEYS),
        )?;
        let smtp = self.required(&f, path, "smtp", node.pos).and_then(|n| {
            let path = join(path, "smtp");
            self.host_port(n, &path)
        });
        let from = self.required(&f, path, "from", node.pos).and_then(|n| {
            let path = join(path, "from");
            self.mailbox(n, &path)
        });
        let to = self.required(&f, path, "to", node.pos).and_then(|n| {
            let path = join(path, "to");
            self.mailboxes(n, &path)
        });
        let starttls = self.with_default(&f, path, "starttls", true, Checker::boolean);
        let username = self.optional(&f, path, "username", Checker::non_empty_string);
        let password_secret = self.optional(&f, path, "password_secret", Checker::non_empty_string);
        if f.has("username") != f.has("password_secret") {
            let (given, missing) = if f.has("username") {
                ("username", "password_secret")
            } else {
                ("password_secret", "username")
            };
            self.error(
                &join(path, given),
                f.get(given).and_then(|n| n.pos),
                format!("`{given}` needs `{missing}`: the SMTP login is both or neither"),
            );
            return None;
        }
        let (host, port) = smtp?;
        if starttls == Some(false) && f.has("username") && !is_loopback(&host) {
            self.error(
                &join(path, "starttls"),
                f.get("starttls").and_then(|n| n.pos),
                format!("`starttls: false` would send the SMTP password to {host} unencrypted: keep STARTTLS, or use a relay on this machine (localhost, 127.0.0.1, ::1)"),
            );
            return None;
        }
        Some(Email {
            host,
            port,
            from: from?,
            to: to?,
            starttls: starttls?,
            username: username?,
            password_secret: password_secret?,
        })
    }

    /// `HOST:PORT` (`[::1]:25` for an IPv6 address).
    fn host_port(&mut self, node: &Node, path: &str) -> Option<(String, u16)> {
        let text = self.non_empty_string(node, path)?;
        let parsed = text.rsplit_once(':').and_then(|(host, port)| {
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
            let fits = !host.is_empty() && !host.contains(['/', ' ', '@']);
            fits.then(|| (host.to_string(), port))
        });
        if parsed.is_none() {
            self.error(
                path,
                node.pos,
                format!("invalid SMTP server {text:?}: expected HOST:PORT, such as smtp.example.org:587 or 127.0.0.1:25"),
            );
        }
        parsed
    }

    /// One mail address, `me@example.org` or `Backups <me@example.org>`.
    fn mailbox(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.non_empty_string(node, path)?;
        if let Err(e) = text.parse::<lettre::message::Mailbox>() {
            self.error(
                path,
                node.pos,
                format!("invalid mail address {text:?} ({e}): expected me@example.org or \"Name <me@example.org>\""),
            );
            return None;
        }
        Some(text)
    }

    /// A non-empty list of mail addresses (or one address).
    fn mailboxes(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            return self.mailbox(node, path).map(|one| vec![one]);
        };
        if items.is_empty() {
            self.error(path, node.pos, "must name at least one address");
            return None;
        }
        let all: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.mailbox(item, &super::walk::index(path, i)))
            .collect();
        all.into_iter().collect()
    }

    /// A push server's base URL (http or https), without the trailing `/` the request path
    /// is joined with.
    fn server_url(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.non_empty_string(node, path)?;
        let host = text.split_once("://").map_or("", |(_, rest)| rest);
        if !is_http(&text) || host.is_empty() || text.contains(['?', '#']) {
            self.error(
                path,
                node.pos,
                format!("invalid URL {text:?}: expected the server's http:// or https:// URL, such as https://ntfy.sh"),
            );
            return None;
        }
        Some(text.trim_end_matches('/').to_string())
    }

    /// An ntfy topic: what ntfy itself accepts, 1 to 64 of `A-Z a-z 0-9 _ -`.
    fn topic(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.non_empty_string(node, path)?;
        let fits = text.len() <= 64
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !fits {
            self.error(
                path,
                node.pos,
                format!(
                    "invalid topic {text:?}: ntfy topics are 1 to 64 letters, digits, `_` or `-`"
                ),
            );
            return None;
        }
        Some(text)
    }
}

/// A name or address of this machine's loopback interface.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_http(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}
