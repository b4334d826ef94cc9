//! The rotating data check's place: which subset `restic check --read-data-subset=n/K`
//! reads next, kept in `state_dir/verify-TASK.json` so that it survives restarts and the
//! whole repository is read once every K runs. The subset advances only when its check
//! passed: a subset that failed is read again by the next run, so the failure stands until
//! the repository is repaired (and is not rotated out of sight). Changing K starts over at
//! 1. Written as the other state files are: a temporary file, synced, renamed over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rotation {
    /// The subset the next run reads, from 1.
    pub next: u32,
    /// K, when `next` was written.
    pub of: u32,
    /// When the subset K last passed, ending a full cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_completed: Option<String>,
}

pub(crate) fn file(state_dir: &Path, task: &str) -> PathBuf {
    state_dir.join(format!("verify-{task}.json"))
}

impl Rotation {
    /// The place for `of` subsets: what the file says, or 1 (no file, another K, or a file
    /// that does not parse: reading subset 1 again is safe).
    pub(crate) fn load(path: &Path, of: u32) -> Rotation {
        let read =
            std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Rotation>(&b).ok());
        match read {
            Some(r) if r.of == of && (1..=of).contains(&r.next) => r,
            Some(r) => Rotation { next: 1, of, cycle_completed: r.cycle_completed },
            None => Rotation { next: 1, of, cycle_completed: None },
        }
    }

    /// `n/K`, as restic takes it.
    pub(crate) fn subset(&self) -> String {
        format!("{}/{}", self.next, self.of)
    }

    /// The subset passed at `at`: on to the next (after K, back to 1 and a cycle complete).
    pub(crate) fn passed(&mut self, at: &str) {
        if self.next >= self.of {
            self.next = 1;
            self.cycle_completed = Some(at.to_string());
        } else {
            self.next += 1;
        }
    }

    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::daemon::records::state_file::save_json(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_cycles_through_restarts_and_starts_over_when_k_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file(tmp.path(), "v");
        let mut seen = Vec::new();
        for i in 0..4 {
            let mut r = Rotation::load(&path, 3);
            seen.push(r.subset());
            r.passed(&format!("t{i}"));
            r.save(&path).unwrap();
        }
        assert_eq!(seen, ["1/3", "2/3", "3/3", "1/3"]);
        let r = Rotation::load(&path, 3);
        assert_eq!((r.subset(), r.cycle_completed.as_deref()), ("2/3".into(), Some("t2")));
        let r = Rotation::load(&path, 5);
        assert_eq!((r.subset(), r.cycle_completed.as_deref()), ("1/5".into(), Some("t2")));
        std::fs::write(&path, b"{torn").unwrap();
        assert_eq!(Rotation::load(&path, 3).subset(), "1/3");
    }
}
