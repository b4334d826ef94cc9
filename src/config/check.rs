//! Turns the positioned YAML tree into a [`Config`](super::Config), collecting every
//! problem on the way.
//!
//! The walk never stops at the first problem: each key is checked on its own, a bad value
//! is reported and skipped, and cross-references (secrets named by tasks) are checked at the
//! end. Messages start with the key path and quote the offending value; unknown keys get a
//! did-you-mean. [`walk`] holds the checker and the value parsers every section shares,
//! [`top`] the top-level settings and secrets, [`tasks`] the tasks, and [`cross`] the
//! references between them.

use std::path::Path;

use super::tree;
use super::{Checked, Environment, Problem, Severity};

mod audit;
mod cross;
mod env;
mod hooks;
mod notify;
mod output;
mod redeem;
mod retry;
mod tasks;
mod top;
mod verify;
mod walk;
mod when;

#[cfg(test)]
mod tests;

pub use walk::{did_you_mean, valid_name};

use walk::Checker;

pub(super) fn check(text: &str, path: &Path, env: &Environment) -> Checked {
    let mut c = Checker { problems: Vec::new() };
    let config = match tree::parse(text) {
        Ok(root) => c.config(&root, path, env),
        Err(e) => {
            c.problems.push(Problem {
                severity: Severity::Error,
                pos: e.pos,
                path: String::new(),
                message: format!("YAML syntax: {}", e.message),
            });
            None
        }
    };
    // File order reads best; problems without a position go last, in the order found.
    c.problems
        .sort_by_key(|p| p.pos.map_or((usize::MAX, usize::MAX), |pos| (pos.line, pos.column)));
    let has_errors = c.problems.iter().any(|p| p.severity == Severity::Error);
    Checked { config: if has_errors { None } else { config }, problems: c.problems }
}
