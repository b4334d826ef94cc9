//! A task's `hooks:`: each `[ARGV...]` or `{command: [ARGV...], secrets: [NAME...]}`, and
//! their `timeout`.

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{DEFAULT_HOOK_TIMEOUT, Hook, Hooks};

const HOOK_KEYS: &[&str] = &["before", "on_success", "on_failure", "after", "timeout"];
/// The map form of one hook.
const HOOK_FORM_KEYS: &[&str] = &["command", "secrets"];
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
}
