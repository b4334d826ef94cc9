//! The spot check and the canaries. The snapshot's files are listed (`restic ls --json`,
//! read by a seeded [`Sampler`]); each chosen file whose source still has the snapshot's
//! size and modification time is restored (`restic restore --include`, in batches) into a
//! private directory, hashed, and compared with the source, whose size and time are checked
//! again around its hashing (a file that changed meanwhile is skipped, not failed). A file
//! the restore did not produce, or whose content differs, fails the run.
//!
//! Paths: restic stores an absolute backup path as it is, and a relative one (`restic
//! backup src` run in `/home/u`) under its last component (`/src/...`), while the snapshot
//! lists the absolute path (`/home/u/src`). A node is mapped to its source file by trying
//! both, and a canary is restored under both patterns.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::scratch::{self, Scratch};
use super::{Target, Verifier, short};
use crate::restic::Snapshot;
use crate::restic::ls::{Node, Sampler, include_pattern};

/// Patterns per `restic restore`: the argument list stays far below the kernel's limit.
const PATTERNS_PER_RESTORE: usize = 200;

/// A chosen file whose source is still as the snapshot saw it.
struct Candidate {
    node: Node,
    live: PathBuf,
}

enum Compared {
    Matched,
    Mismatched(String),
    Skipped,
}

impl Verifier<'_> {
    /// Spot-checks `t`'s newest snapshot (`sample` files) and its canaries.
    pub(super) async fn spot(&mut self, t: &Target, sample: u32) {
        if sample == 0 && t.canaries.is_empty() {
            return;
        }
        let picked =
            if sample == 0 { Vec::new() } else { self.sample(t, sample).await.unwrap_or_default() };
        if self.stopped.is_some() {
            return;
        }
        self.record.sampled += picked.len() as u64;
        let roots = t.newest.paths.clone();
        let canaries = t.canaries.clone();
        let (candidates, skipped, need) =
            tokio::task::spawn_blocking(move || classify(picked, &roots, &canaries))
                .await
                .unwrap_or_default();
        self.record.skipped += skipped;
        let root = if scratch::fits(&self.runtime_root, need)
            && crate::daemon::step::secret_files::check_memory_backed(
                self.runtime_root.parent().unwrap_or(Path::new("/")),
            )
            .is_none()
        {
            self.runtime_root.clone()
        } else {
            self.disk_root.clone()
        };
        let mut patterns: Vec<String> = candidates.iter().map(|c| c.node.path.clone()).collect();
        let canary_patterns: Vec<String> =
            t.canaries.iter().flat_map(|c| internal_paths(c, &t.newest.paths)).collect();
        patterns.extend(canary_patterns.iter().cloned());
        let Some(newest) = self.restore(&t.newest, &root, "spot", &patterns).await else { return };
        let previous = match &t.previous {
            Some(p) if !t.canaries.is_empty() => {
                self.restore(p, &root, "canaries-previous", &canary_patterns).await
            }
            _ => None,
        };
        if self.stopped.is_none() {
            self.compare(t, candidates, &newest, previous.as_ref()).await;
        }
        newest.wipe().await;
        if let Some(previous) = previous {
            previous.wipe().await;
        }
    }

    /// The files of `t`'s newest snapshot chosen by the seed.
    async fn sample(&mut self, t: &Target, want: u32) -> Option<Vec<Node>> {
        // Each task's snapshot gets its own draw from the one seed.
        let seed = self.record.seed
            ^ crate::digest::sha256(t.task.as_bytes())[..8]
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
        let args = vec!["ls".into(), "--json".into(), "--no-lock".into(), t.newest.id.clone()];
        let called = self
            .restic_ok(
                "spot check: listing the snapshot's files",
                "verify-ls",
                args,
                Some(Sampler::new(want, seed)),
            )
            .await?;
        let sampler = called.nodes?;
        info!(
            task = %t.task,
            "spot check: chose {} of the {} files of snapshot {}",
            sampler.picked.len(),
            sampler.files,
            short(&t.newest.id)
        );
        Some(sampler.picked)
    }

    /// Restores what `patterns` match of `snap` into a new private directory under `root`;
    /// `None` when the restore failed (said as a problem) or was stopped.
    async fn restore(
        &mut self,
        snap: &Snapshot,
        root: &Path,
        label: &str,
        patterns: &[String],
    ) -> Option<Scratch> {
        let scratch = match Scratch::create(root, self.run_id, label) {
            Ok(s) => s,
            Err(e) => {
                self.problem(format!("cannot make a private directory in {}: {e}", root.display()));
                return None;
            }
        };
        let target = scratch.path().join("restored").to_string_lossy().into_owned();
        for batch in patterns.chunks(PATTERNS_PER_RESTORE) {
            let mut args =
                vec!["restore".into(), snap.id.clone(), "--target".into(), target.clone()];
            for p in batch {
                args.push("--include".into());
                args.push(include_pattern(p));
            }
            if self
                .restic_ok(
                    &format!("restoring from snapshot {}", short(&snap.id)),
                    &format!("verify-{label}"),
                    args,
                    None,
                )
                .await
                .is_none()
            {
                scratch.wipe().await;
                return None;
            }
        }
        Some(scratch)
    }

    /// Compares the restored files with their sources, and the canaries between snapshots.
    async fn compare(
        &mut self,
        t: &Target,
        candidates: Vec<Candidate>,
        newest: &Scratch,
        previous: Option<&Scratch>,
    ) {
        let restored = newest.path().join("restored");
        let before = previous.map(|p| p.path().join("restored"));
        let (canaries, paths) = (t.canaries.clone(), t.newest.paths.clone());
        let (files, canaries) = tokio::task::spawn_blocking(move || {
            let files: Vec<(PathBuf, Compared)> =
                candidates.into_iter().map(|c| (c.live.clone(), compare(&c, &restored))).collect();
            let canaries: Vec<(PathBuf, Result<bool, &'static str>)> = canaries
                .into_iter()
                .map(|c| {
                    let r = canary(&c, &paths, &restored, before.as_deref());
                    (c, r)
                })
                .collect();
            (files, canaries)
        })
        .await
        .unwrap_or_default();
        let id = short(&t.newest.id).to_string();
        for (live, result) in files {
            match result {
                Compared::Matched => self.record.matched += 1,
                Compared::Skipped => self.record.skipped += 1,
                Compared::Mismatched(why) => {
                    self.record.mismatched += 1;
                    self.problem(format!(
                        "{} in snapshot {id} of task {:?} {why}",
                        live.display(),
                        t.task
                    ));
                }
            }
        }
        let prev = t.previous.as_ref().map_or("-", |p| short(&p.id)).to_string();
        for (c, result) in canaries {
            match result {
                Ok(true) => self.record.canaries += 1,
                Ok(false) => {
                    warn!(canary = %c.display(), "the canary is not in the snapshot before {id}: compared next time");
                }
                Err("missing") => self.problem(format!(
                    "canary {} is not in snapshot {id} of task {:?}",
                    c.display(),
                    t.task
                )),
                Err(_) => self.problem(format!(
                    "canary {} changed between snapshot {prev} and snapshot {id} of task {:?}",
                    c.display(),
                    t.task
                )),
            }
        }
    }
}

/// The chosen files whose source is a regular file with the snapshot's size and time; how
/// many are not; and the bytes a restore of them and of the canaries needs.
fn classify(
    picked: Vec<Node>,
    roots: &[String],
    canaries: &[PathBuf],
) -> (Vec<Candidate>, u64, u64) {
    let (mut keep, mut skipped, mut need) = (Vec::new(), 0, 0);
    for node in picked {
        let live = live_path(&node.path, roots);
        match live {
            Some(live) if std::fs::symlink_metadata(&live).is_ok_and(|m| same(&m, &node)) => {
                need += node.size;
                keep.push(Candidate { node, live });
            }
            _ => skipped += 1,
        }
    }
    for c in canaries {
        // Twice: from the newest snapshot and from the one before.
        need += 2 * std::fs::metadata(c).map_or(0, |m| m.len());
    }
    (keep, skipped, need)
}

/// Whether `meta` is a regular file with `node`'s size and modification time (to the
/// nanosecond restic kept).
fn same(meta: &std::fs::Metadata, node: &Node) -> bool {
    let Ok(saved) = node.mtime.parse::<jiff::Timestamp>() else { return false };
    let live = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    meta.is_file() && meta.len() == node.size && live == saved.as_nanosecond()
}

/// Opens a source file for reading, never through a symbolic link nor blocking on a FIFO.
fn open_source(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn compare(c: &Candidate, restored_root: &Path) -> Compared {
    let restored = restored_root.join(c.node.path.trim_start_matches('/'));
    let Ok(mut file) = open_source(&restored) else {
        return Compared::Mismatched("was not restored".into());
    };
    let Ok(got) = crate::digest::sha256_file(&mut file) else {
        return Compared::Mismatched("could not be read back from the restore".into());
    };
    let Ok(mut live) = open_source(&c.live) else { return Compared::Skipped };
    let unchanged = |f: &File| f.metadata().is_ok_and(|m| same(&m, &c.node));
    if !unchanged(&live) {
        return Compared::Skipped;
    }
    let Ok(want) = crate::digest::sha256_file(&mut live) else { return Compared::Skipped };
    if !unchanged(&live) {
        return Compared::Skipped;
    }
    if got == want {
        Compared::Matched
    } else {
        Compared::Mismatched("restores with other content than the source file, whose size and modification time are still the snapshot's".into())
    }
}

/// A canary: `Ok(true)` when it is the same in both snapshots, `Ok(false)` when there is
/// no earlier copy to compare with, `Err("missing")` when the newest snapshot lacks it,
/// `Err("changed")` when it differs.
fn canary(
    live: &Path,
    roots: &[String],
    newest: &Path,
    previous: Option<&Path>,
) -> Result<bool, &'static str> {
    let internals = internal_paths(live, roots);
    let find = |dir: &Path| {
        internals.iter().map(|i| dir.join(i.trim_start_matches('/'))).find(|p| p.is_file())
    };
    let Some(now) = find(newest) else { return Err("missing") };
    let Some(before) = previous.and_then(find) else { return Ok(false) };
    let hash = |p: &Path| open_source(p).and_then(|mut f| crate::digest::sha256_file(&mut f)).ok();
    match (hash(&now), hash(&before)) {
        (Some(a), Some(b)) if a == b => Ok(true),
        _ => Err("changed"),
    }
}

/// Whether `path` is under one of a snapshot's paths.
pub(super) fn under_any(path: &Path, roots: &[String]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

/// The source file of the snapshot's node `internal` (see the module's documentation).
fn live_path(internal: &str, roots: &[String]) -> Option<PathBuf> {
    let path = Path::new(internal);
    if roots.iter().any(|r| path.starts_with(r)) {
        return Some(path.to_path_buf());
    }
    roots.iter().find_map(|r| {
        let r = Path::new(r);
        let top = Path::new("/").join(r.file_name()?);
        let rest = path.strip_prefix(&top).ok()?;
        Some(r.join(rest))
    })
}

/// Where the source file `live` may be inside the snapshot: as it is, and under the last
/// component of the snapshot path it is under.
fn internal_paths(live: &Path, roots: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for r in roots.iter().map(Path::new).filter(|r| live.starts_with(r)) {
        out.push(live.to_string_lossy().into_owned());
        if let (Some(name), Ok(rest)) = (r.file_name(), live.strip_prefix(r)) {
            out.push(Path::new("/").join(name).join(rest).to_string_lossy().into_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_map_to_sources_for_absolute_and_relative_backups() {
        let roots = vec!["/home/u/src".to_string()];
        assert_eq!(live_path("/home/u/src/a/b", &roots), Some("/home/u/src/a/b".into()));
        assert_eq!(live_path("/src/a/b", &roots), Some("/home/u/src/a/b".into()));
        assert_eq!(live_path("/other/x", &roots), None);
        assert_eq!(live_path("/home/u/srcx/a", &roots), None);
        assert_eq!(internal_paths(Path::new("/home/u/src/c"), &roots), ["/home/u/src/c", "/src/c"]);
        assert!(internal_paths(Path::new("/home/u/other"), &roots).is_empty());
        assert!(under_any(Path::new("/home/u/src"), &roots));
    }
}
