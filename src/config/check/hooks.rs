//! A task's `hooks:` (each `[ARGV...]` or `{command: [ARGV...], secrets: [NAME...]}`, and
//! their `timeout`) and the `notify:` shape both the top level and tasks use (`ping`,
//! `webhook`, `command`, `send_logs`, `timeout`), with URLs that may be kept as secrets.

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{DEFAULT_HOOK_TIMEOUT, DEFAULT_NOTIFY_TIMEOUT, Hook, Hooks, Notify, UrlValue};

const HOOK_KEYS: &[&str] = &["before", "on_success", "on_failure", "after", "timeout"];
/// The map form of one hook.
const HOOK_FORM_KEYS: &[&str] = &["command", "secrets"];
const NOTIFY_KEYS: &[&str] = &["ping", "webhook", "command", "send_logs", "timeout"];
impl Checker {
    pub(super) fn hooks(&mut self, node: &Node, path: &str) -> Option<Hooks> {
        let f = self.fields(
            node,
            path,
            "a mapping {before: [...], on_success: [...], on_failure: [...], after: [...]}",
            Some(HOOK_KEYS),
        )?;
        let before = self.optional(&f, path, "before", Checker::hook);
        let on_success = self.optional(&f, path, "on_success", Checker::hook);
        let on_failure = self.optional(&f, path, "on_failure", Checker::hook);
        let after = self.optional(&f, path, "after", Checker::hook);
        let timeout = self.with_default(
            &f,
            path,
            "timeout",
            DEFAULT_HOOK_TIMEOUT,
            Checker::positive_duration,
        );
        Some(Hooks {
            before: before?,
            on_success: on_success?,
            on_failure: on_failure?,
            after: after?,
            timeout: timeout?,
        })
    }

    /// One hook: a plain argv list (no token), or `{command: [...], secrets: [NAME...]}` (a
    /// token for exactly those secrets). Whether the names are declared and in the task's
    /// `secrets:` is [`super::cross`]'s job, like every other reference.
    pub(super) fn hook(&mut self, node: &Node, path: &str) -> Option<Hook> {
        if !matches!(node.value, Value::Map(_)) {
            return self.argv(node, path).map(|command| Hook { command, secrets: Vec::new() });
        }
        let f = self.fields(
            node,
            path,
            "a command [PROGRAM, ARGS...] or {command: [...], secrets: [NAME...]}",
            Some(HOOK_FORM_KEYS),
        )?;
        let command = self
            .required(&f, path, "command", node.pos)
            .and_then(|n| self.argv(n, &join(path, "command")));
        let secrets = self.with_default(&f, path, "secrets", Vec::new(), Checker::secret_list);
        Some(Hook { command: command?, secrets: secrets? })
    }

    /// A task's `notify`, or the top-level one.
    pub(super) fn notify(&mut self, node: &Node, path: &str) -> Option<Notify> {
        let f = self.fields(
            node,
            path,
            "a mapping {ping: URL, webhook: URL, command: [ARGV...]}",
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
        Some(Notify {
            ping: ping?,
            webhook: webhook?,
            send_logs: send_logs?,
            timeout: timeout?,
            command: command?,
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
            if !(text.starts_with("https://") || text.starts_with("http://")) {
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
}
