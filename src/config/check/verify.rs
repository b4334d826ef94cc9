//! A task's `verify:` key, which makes the task a verifier: no `command` or `steps` of its
//! own, but the daemon's checks that other tasks' snapshots restore (`crate::daemon`'s
//! verification phase). That the named tasks exist is checked with the other references,
//! in `cross`.

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{DEFAULT_VERIFY_SAMPLE, Environment, Verify};

const VERIFY_KEYS: &[&str] =
    &["tasks", "sample", "check_subset", "canaries", "drill", "seed", "scratch"];

/// The most files a spot check compares per snapshot: each is restored and hashed.
const MAX_SAMPLE: u32 = 10_000;
/// The most subsets `check_subset` may split the repository into (restic takes any number;
/// beyond this a cycle would take years of daily runs).
const MAX_SUBSETS: u32 = 10_000;

impl Checker {
    pub(super) fn verify(&mut self, node: &Node, path: &str, env: &Environment) -> Option<Verify> {
        let f = self.fields(
            node,
            path,
            "a mapping {tasks: [NAME...], sample: 20, check_subset: 12, canaries: [PATH...], drill: false}",
            Some(VERIFY_KEYS),
        )?;
        let tasks = self
            .required(&f, path, "tasks", node.pos)
            .and_then(|n| self.task_names(n, &join(path, "tasks"), "verify"));
        let sample = self.with_default(&f, path, "sample", DEFAULT_VERIFY_SAMPLE, |c, n, p| {
            c.bounded(n, p, 0, MAX_SAMPLE, "a number of files from 0 (no spot check)")
        });
        let check_subset = self.optional(&f, path, "check_subset", |c, n, p| {
            c.bounded(
                n,
                p,
                1,
                MAX_SUBSETS,
                "a number of subsets from 1 (1 reads all data each run)",
            )
        });
        let canaries = self.with_default(&f, path, "canaries", Vec::new(), |c, n, p| {
            c.path_list(n, p, env, "a list of files such as [~/Documents/.canary]")
        });
        let drill = self.with_default(&f, path, "drill", false, Checker::boolean);
        let seed = self.optional(&f, path, "seed", |c, n, p| {
            let seed = if let Value::Int(i) = &n.value { u64::try_from(*i).ok() } else { None };
            if seed.is_none() {
                c.type_error(p, n, "a number from 0 (a run's record gives its seed)");
            }
            seed
        });
        let scratch = self.optional(&f, path, "scratch", |c, n, p| c.path_value(n, p, env));
        let verify = Verify {
            tasks: tasks?,
            sample: sample?,
            check_subset: check_subset?,
            canaries: canaries?,
            drill: drill?,
            seed: seed?,
            scratch: scratch?,
        };
        if verify.sample == 0
            && verify.check_subset.is_none()
            && verify.canaries.is_empty()
            && !verify.drill
        {
            self.error(
                path,
                node.pos,
                "verifies nothing: give `sample` above 0, `check_subset`, `canaries` or `drill: true`",
            );
            return None;
        }
        Some(verify)
    }

    /// A whole number from `min` to `max`.
    fn bounded(&mut self, node: &Node, path: &str, min: u32, max: u32, what: &str) -> Option<u32> {
        match &node.value {
            Value::Int(n) if (i128::from(min)..=i128::from(max)).contains(n) => {
                u32::try_from(*n).ok()
            }
            Value::Int(n) => {
                self.error(path, node.pos, format!("{n} is out of range: {what}, at most {max}"));
                None
            }
            _ => {
                self.type_error(path, node, what);
                None
            }
        }
    }
}
