//! A task's `audit:` key: which tasks' snapshots the task's snapshot list is compared with,
//! how old their newest snapshot may be, and the repository's retention policy (`keep:`,
//! restic's `forget --keep-*` options without the prefix; see `crate::ledger`). That the
//! named tasks exist is checked with the other references, in `cross`.

use super::walk::{Checker, index, join};
use crate::config::tree::{Node, Value};
use crate::config::{Audit, Keep, Within};

const AUDIT_KEYS: &[&str] = &["tasks", "max_age", "keep"];
const KEEP_KEYS: &[&str] = &["last", "hourly", "daily", "weekly", "monthly", "yearly", "within"];

impl Checker {
    pub(super) fn audit(&mut self, node: &Node, path: &str) -> Option<Audit> {
        let f =
            self.fields(node, path, "a mapping {tasks: [NAME...], max_age: 2d}", Some(AUDIT_KEYS))?;
        let tasks = self
            .required(&f, path, "tasks", node.pos)
            .and_then(|n| self.task_names(n, &join(path, "tasks"), "audit"));
        let max_age = self.optional(&f, path, "max_age", Checker::positive_duration);
        let keep = self.optional(&f, path, "keep", Checker::keep_policy);
        Some(Audit { tasks: tasks?, max_age: max_age?, keep: keep? })
    }

    /// An audit's or a verifier's `tasks`: a non-empty list of the names of the tasks whose
    /// snapshots to `verb` (that they exist is `cross`'s to check).
    pub(super) fn task_names(&mut self, n: &Node, p: &str, verb: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &n.value else {
            self.type_error(p, n, &format!("a list of the task names whose snapshots to {verb}"));
            return None;
        };
        if items.is_empty() {
            self.error(p, n.pos, format!("empty: name the tasks whose snapshots to {verb}"));
            return None;
        }
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            names.push(self.non_empty_string(item, &index(p, i))?);
        }
        Some(names)
    }

    /// `keep: {last: 3, daily: 7, within: 1y}`: at least one option, as `restic forget`
    /// needs one.
    fn keep_policy(&mut self, node: &Node, path: &str) -> Option<Keep> {
        let what = "a mapping of restic's keep options {last: N, hourly: N, daily: N, weekly: N, monthly: N, yearly: N, within: 1y6m}";
        let f = self.fields(node, path, what, Some(KEEP_KEYS))?;
        let last = self.optional(&f, path, "last", Checker::keep_count);
        let hourly = self.optional(&f, path, "hourly", Checker::keep_count);
        let daily = self.optional(&f, path, "daily", Checker::keep_count);
        let weekly = self.optional(&f, path, "weekly", Checker::keep_count);
        let monthly = self.optional(&f, path, "monthly", Checker::keep_count);
        let yearly = self.optional(&f, path, "yearly", Checker::keep_count);
        let within = self.optional(&f, path, "within", |c, n, p| {
            let text = c.string(n, p)?;
            Within::parse(&text).map_err(|e| c.error(p, n.pos, e)).ok()
        });
        let keep = Keep {
            last: last?,
            hourly: hourly?,
            daily: daily?,
            weekly: weekly?,
            monthly: monthly?,
            yearly: yearly?,
            within: within?,
        };
        let counts = [keep.last, keep.hourly, keep.daily, keep.weekly, keep.monthly, keep.yearly];
        if keep != Keep::default()
            && keep.within.is_none()
            && counts.iter().all(|c| c.unwrap_or(0) == 0)
        {
            // It would explain every deletion as a prune.
            self.error(path, node.pos, "keeps nothing: give a count above 0 or `within` (restic refuses such a policy too)");
            return None;
        }
        if keep == Keep::default() {
            self.error(
                path,
                node.pos,
                format!("empty: give at least one of {}", KEEP_KEYS.join(", ")),
            );
            return None;
        }
        Some(keep)
    }

    /// A keep count: a number from 0, or `unlimited` (restic's word for "every one").
    fn keep_count(&mut self, node: &Node, path: &str) -> Option<u32> {
        match &node.value {
            Value::Int(n) if (0..i128::from(u32::MAX)).contains(n) => u32::try_from(*n).ok(),
            Value::Str(s) if s == "unlimited" => Some(u32::MAX),
            _ => {
                self.type_error(path, node, "a count from 0, or unlimited");
                None
            }
        }
    }
}
