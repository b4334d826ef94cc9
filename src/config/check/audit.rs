//! A task's `audit:` key: which tasks' snapshots the task's snapshot list is compared with,
//! and how old their newest snapshot may be (see `daemon::ledger`). That the named tasks
//! exist is checked with the other references, in `cross`.

use super::walk::{Checker, index, join};
use crate::config::Audit;
use crate::config::tree::{Node, Value};

const AUDIT_KEYS: &[&str] = &["tasks", "max_age"];

impl Checker {
    pub(super) fn audit(&mut self, node: &Node, path: &str) -> Option<Audit> {
        let f =
            self.fields(node, path, "a mapping {tasks: [NAME...], max_age: 2d}", Some(AUDIT_KEYS))?;
        let tasks = self.required(&f, path, "tasks", node.pos).and_then(|n| {
            let p = join(path, "tasks");
            let Value::Seq(items) = &n.value else {
                self.type_error(&p, n, "a list of the task names whose snapshots to audit");
                return None;
            };
            if items.is_empty() {
                self.error(&p, n.pos, "empty: name the tasks whose snapshots to audit");
                return None;
            }
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                names.push(self.non_empty_string(item, &index(&p, i))?);
            }
            Some(names)
        });
        let max_age = self.optional(&f, path, "max_age", Checker::positive_duration);
        Some(Audit { tasks: tasks?, max_age: max_age? })
    }
}
