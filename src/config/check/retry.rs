//! The keys that shape how a task's run is tried: `retry:` (how often a failed run is tried
//! again, and how long to wait between attempts), `lock:` (the name of a lock tasks share
//! so they never run at the same time, normally one per repository), and how politely its
//! processes run (`nice:`, `io:`).

use std::time::Duration;

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{IoClass, Retry};

const RETRY_KEYS: &[&str] = &["attempts", "delay", "backoff"];
const IO_KEYS: &[&str] = &["class", "priority"];
/// The wait before the second attempt when `delay` is not given.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(30);
/// More attempts than this is a loop, not a retry.
const MAX_ATTEMPTS: i128 = 20;
/// A larger factor makes the later waits absurd within a few attempts.
const MAX_BACKOFF: f64 = 10.0;

impl Checker {
    pub(super) fn retry(&mut self, node: &Node, path: &str) -> Option<Retry> {
        let f = self.fields(
            node,
            path,
            "a mapping {attempts: 3, delay: 30s, backoff: 2}",
            Some(RETRY_KEYS),
        )?;
        let attempts = self.required(&f, path, "attempts", node.pos).and_then(|n| {
            let p = join(path, "attempts");
            match n.value {
                Value::Int(i) if (2..=MAX_ATTEMPTS).contains(&i) => Some(i as u32),
                Value::Int(i) => {
                    let hint = if i == 1 { ": 1 is no retry at all; remove `retry`" } else { "" };
                    self.error(&p, n.pos, format!("{i} is out of range 2-{MAX_ATTEMPTS}{hint}"));
                    None
                }
                _ => {
                    self.type_error(&p, n, "the number of attempts in all, 2 to 20");
                    None
                }
            }
        });
        let delay = self.with_default(&f, path, "delay", DEFAULT_RETRY_DELAY, Checker::duration);
        let backoff = self.with_default(&f, path, "backoff", 1.0, |c, n, p| {
            let value = match n.value {
                Value::Int(i) => i as f64,
                Value::Float(x) => x,
                _ => {
                    c.type_error(
                        p,
                        n,
                        "a factor from 1 to 10 (each wait is the last one times it)",
                    );
                    return None;
                }
            };
            if !(1.0..=MAX_BACKOFF).contains(&value) {
                c.error(p, n.pos, format!("{value} is out of range 1-{MAX_BACKOFF}"));
                return None;
            }
            Some(value)
        });
        Some(Retry { attempts: attempts?, delay: delay?, backoff: backoff? })
    }

    /// `nice: 0..19`.
    pub(super) fn nice(&mut self, node: &Node, path: &str) -> Option<i32> {
        match node.value {
            Value::Int(i) if (0..=19).contains(&i) => Some(i as i32),
            Value::Int(i) => {
                self.error(
                    path,
                    node.pos,
                    format!("{i} is out of range 0-19 (19 is the politest)"),
                );
                None
            }
            _ => {
                self.type_error(path, node, "a niceness from 0 to 19");
                None
            }
        }
    }

    /// `io: {class: idle}` or `io: {class: best-effort, priority: 0..7}`.
    pub(super) fn io_class(&mut self, node: &Node, path: &str) -> Option<IoClass> {
        let f = self.fields(
            node,
            path,
            "a mapping {class: idle} or {class: best-effort, priority: 7}",
            Some(IO_KEYS),
        )?;
        #[derive(Clone, Copy)]
        enum Class {
            Idle,
            BestEffort,
        }
        let class = self.required(&f, path, "class", node.pos).and_then(|n| {
            self.choice(
                n,
                &join(path, "class"),
                &[("idle", Class::Idle), ("best-effort", Class::BestEffort)],
            )
        });
        let priority = self.optional(&f, path, "priority", |c, n, p| match n.value {
            Value::Int(i) if (0..=7).contains(&i) => Some(i as u8),
            _ => {
                c.type_error(p, n, "a priority from 0 (first) to 7 (last)");
                None
            }
        });
        match (class?, priority?) {
            (Class::Idle, Some(_)) => {
                let n = f.get("priority");
                self.error(
                    &join(path, "priority"),
                    n.and_then(|n| n.pos),
                    "the idle class has no priority: remove it, or use class: best-effort",
                );
                None
            }
            (Class::Idle, None) => Some(IoClass::Idle),
            (Class::BestEffort, p) => Some(IoClass::BestEffort(p.unwrap_or(4))),
        }
    }

    /// A lock name: letters, digits, `-`, `_` and `.`, as a task name.
    pub(super) fn lock_name(&mut self, node: &Node, path: &str) -> Option<String> {
        let name = self.non_empty_string(node, path)?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            self.error(
                path,
                node.pos,
                format!("invalid lock name {name:?}: use letters, digits, '-', '_' and '.' (for example the repository's name)"),
            );
            return None;
        }
        Some(name)
    }
}
