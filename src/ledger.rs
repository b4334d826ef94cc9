//! The snapshot ledger (`state_dir/ledger.jsonl`) and the audit ([`mod@audit`]) that compares
//! a repository with it.
//!
//! `restic check --read-data` proves the data of the snapshots that are there; it cannot
//! tell that one was deleted, replaced, or slipped in. The ledger is the daemon's own
//! account: every snapshot id a task's `restic backup --json` reported (`saved`; `partial`
//! when the step that saved it failed, as when a pipeline's dump broke), every run that made
//! no snapshot because nothing changed (`unchanged`, restic's `--skip-if-unchanged`), every
//! snapshot a `restic forget` run by the daemon removed (`forgotten`, known from the
//! repository's snapshot list before and after the step), every snapshot an audit found
//! pruned by the repository's retention policy (`pruned`), every deletion a person
//! acknowledged (`acknowledged`, by `backupnizza ledger forget ID --reason TEXT`), and what
//! an audit saw of each (`seen`: time, host, paths, tree), so a later audit can tell a
//! snapshot that changed. An audit task (`audit: {tasks: [...], max_age: ..., keep:
//! {...}}`) lists the repository (`restic snapshots --json`) and reports, by id:
//!
//! - `missing`: a snapshot the tasks saved is gone, no `forget` of ours removed it, nobody
//!   acknowledged its removal, and the audit's `keep:` policy (if any: see [`policy`]) would
//!   have kept it;
//! - `replaced`: a missing snapshot whose time and paths another, unrecorded one now has;
//! - `differs`: a recorded snapshot whose tree, time, host or paths changed since last seen;
//! - `unrecorded`: a snapshot with the tasks' host and paths that no task saved (made by
//!   hand, elsewhere, or forged); at a task set's first audit, snapshots older than the
//!   ledger are accepted instead (`baseline`) and tracked from then on;
//! - `stale`: the tasks' newest whole backup (a snapshot in the repository that is not
//!   partial, or an unchanged run after one) is older than `max_age`.
//!
//! A missing snapshot the `keep:` policy would have removed is not a finding: the audit
//! says it was pruned by policy and records that (`pruned`), so later audits do not decide
//! it again.
//!
//! The file is append-only JSON lines written as the history is, by a [`Journal`]: one
//! `write` per entry on an `O_APPEND` file with `fdatasync`, a torn line terminated before
//! the next entry, no symbolic link followed. Unlike the history it never rotates, because
//! an audit needs every entry ever written (hourly backups add a few MB a year). It is read
//! line by line as bytes; a line that does not parse (a torn fragment, invalid UTF-8) is
//! skipped and counted, never failing the read. Entries the daemon could not write yet are
//! held by its writer thread, which folds them into the ledger it hands an audit
//! ([`Ledger::add`]), so a held entry is never taken for a forgery.

mod audit;
mod list;
mod policy;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use self::audit::{Verdict, audit};
pub(crate) use self::list::{AckError, acknowledge};
use crate::journal::{self, Journal};
use crate::protocol::RunStatus;
use crate::restic::Snapshot;
// The audit's tests, below, name times and durations as the audit does.
#[cfg(test)]
use {jiff::Timestamp, std::time::Duration};

pub(crate) const FILE_NAME: &str = "ledger.jsonl";

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A backup run reported this snapshot (restic's id: full, or before 0.16 the short one).
    Saved {
        task: String,
        run_id: String,
        at: String,
        snapshot_id: String,
        /// The step that saved it failed: not a whole backup, never fresh for `max_age`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
        /// The run's status, for a partial snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<RunStatus>,
    },
    /// A backup run made no snapshot because nothing changed (`--skip-if-unchanged`): the
    /// task's newest snapshot is still current.
    Unchanged { task: String, run_id: String, at: String },
    /// A forget run by the daemon removed it.
    Forgotten { task: String, run_id: String, at: String, snapshot_id: String },
    /// An audit found them gone, and its `keep:` policy would have removed them (one entry
    /// per audit: the first after a year of prunes elsewhere decides thousands).
    Pruned { audit: String, at: String, snapshot_ids: Vec<String>, policy: String },
    /// Somebody said it was removed on purpose (`backupnizza ledger forget`).
    Acknowledged { at: String, snapshot_id: String, reason: String },
    /// An audit saw it so (full id).
    Seen { audit: String, at: String, snapshot: Snapshot },
    /// It predates the ledger and was accepted at the audit task's first audit.
    Baseline { audit: String, at: String, snapshot: Snapshot },
    /// An audit task ran to a verdict (its first one decides the baseline).
    Audited { audit: String, at: String, findings: usize },
}

/// A snapshot a backup run reported.
#[derive(Debug)]
struct Saved {
    task: String,
    /// As restic reported it (full, or before 0.16 the short id).
    id: String,
    /// When the run recorded it.
    at: String,
    partial: bool,
}

/// Why a recorded snapshot may be gone from the repository.
#[derive(Debug, Clone)]
enum Gone {
    /// A forget the daemon ran removed it (by this task).
    Forgotten { task: String, at: String },
    /// An audit found the `keep:` policy would have removed it.
    Pruned { at: String, policy: String },
    /// Somebody said so.
    Acknowledged { at: String, reason: String },
}

/// The ledger, folded.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    saved: Vec<Saved>,
    /// Runs that made no snapshot because nothing changed: (task, when).
    unchanged: Vec<(String, String)>,
    /// Id → why it may be gone (an acknowledgement wins over the rest).
    gone: HashMap<String, Gone>,
    /// Full id → the snapshot as last seen by an audit.
    seen: HashMap<String, Snapshot>,
    baseline: HashMap<String, Snapshot>,
    audited: HashSet<String>,
    /// The numbers of the file's lines that did not parse, skipped.
    unreadable: Vec<usize>,
}

impl Ledger {
    /// Reads the ledger in `state_dir` (none yet: an empty one). Lines that do not parse are
    /// skipped and counted; only a file that cannot be read fails it (a directory, or a
    /// symbolic link, which is not followed).
    pub(crate) fn load(state_dir: &Path) -> std::io::Result<Ledger> {
        let mut ledger = Ledger::default();
        let Some(file) = journal::open_read(&state_dir.join(FILE_NAME))? else {
            return Ok(ledger);
        };
        let lines = journal::read_lines::<Entry>(file)?;
        for entry in lines.parsed {
            ledger.add(entry);
        }
        ledger.unreadable = lines.bad;
        Ok(ledger)
    }

    /// Folds in one entry: each line of the file, then each entry held in memory.
    pub(crate) fn add(&mut self, entry: Entry) {
        match entry {
            Entry::Saved { task, at, snapshot_id, partial, .. } => {
                self.saved.push(Saved { task, id: snapshot_id, at, partial });
            }
            Entry::Unchanged { task, at, .. } => self.unchanged.push((task, at)),
            Entry::Forgotten { task, at, snapshot_id, .. } => {
                self.explain(snapshot_id, Gone::Forgotten { task, at });
            }
            Entry::Pruned { at, snapshot_ids, policy, .. } => {
                for id in snapshot_ids {
                    self.explain(id, Gone::Pruned { at: at.clone(), policy: policy.clone() });
                }
            }
            Entry::Acknowledged { at, snapshot_id, reason } => {
                self.explain(snapshot_id, Gone::Acknowledged { at, reason });
            }
            Entry::Seen { snapshot, .. } => {
                self.seen.insert(snapshot.id.clone(), snapshot);
            }
            Entry::Baseline { snapshot, .. } => {
                self.baseline.insert(snapshot.id.clone(), snapshot);
            }
            Entry::Audited { audit, .. } => {
                self.audited.insert(audit);
            }
        }
    }

    fn explain(&mut self, id: String, why: Gone) {
        let acknowledged = matches!(self.gone.get(&id), Some(Gone::Acknowledged { .. }));
        if !acknowledged {
            self.gone.insert(id, why);
        }
    }

    /// The whole snapshots `task` saved that no forget, prune or acknowledgement removed,
    /// newest first (as recorded: full ids, or short ones from restic before 0.16), with
    /// when each was recorded: what a verifier proves.
    pub(crate) fn whole_snapshots(&self, task: &str) -> Vec<(String, String)> {
        let removed =
            |id: &str| self.gone.keys().any(|g| g.starts_with(id) || id.starts_with(g.as_str()));
        self.saved
            .iter()
            .rev()
            .filter(|s| s.task == task && !s.partial && !removed(&s.id))
            .map(|s| (s.id.clone(), s.at.clone()))
            .collect()
    }

    /// "2 unreadable lines of the snapshot ledger skipped (ledger.jsonl lines 3, 7)", or
    /// `None` when every line was read.
    pub(crate) fn unreadable_summary(&self) -> Option<String> {
        let n = self.unreadable.len();
        (n > 0).then(|| {
            format!(
                "{n} unreadable line{} of the snapshot ledger skipped ({FILE_NAME} {})",
                if n == 1 { "" } else { "s" },
                journal::line_numbers(&self.unreadable)
            )
        })
    }

    /// Why the snapshot `id` may be gone, if the ledger knows a reason.
    fn gone(&self, id: &str) -> Option<&Gone> {
        self.gone
            .get(id)
            .or_else(|| self.gone.iter().find(|(gone, _)| same_id(gone, id)).map(|(_, why)| why))
    }
}

/// The ledger's appender: one per daemon, owned by its writer thread. It never rotates (see
/// the module's documentation).
pub(crate) struct LedgerFile {
    state_dir: PathBuf,
    journal: Journal,
}

impl LedgerFile {
    /// An appender for `state_dir`; nothing is opened until the first append.
    pub(crate) fn new(state_dir: &Path) -> LedgerFile {
        let journal = Journal::new(state_dir, FILE_NAME, "the snapshot ledger", None);
        LedgerFile { state_dir: state_dir.to_path_buf(), journal }
    }

    pub(crate) fn path(&self) -> &Path {
        self.journal.path()
    }

    /// Appends an entry durably, or leaves the file as it was and says why; the caller holds
    /// it and tries again.
    pub(crate) fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        self.journal.append(entry)
    }

    /// The ledger as the file has it.
    pub(crate) fn load(&self) -> std::io::Result<Ledger> {
        Ledger::load(&self.state_dir)
    }
}

/// Appends `entries` to the ledger in `state_dir`, each a line of its own. The daemon's own
/// appends go through its writer thread, which holds what fails; tests write directly.
#[cfg(test)]
pub(crate) fn append(state_dir: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let mut file = LedgerFile::new(state_dir);
    entries.iter().try_for_each(|entry| file.append(entry))
}

/// Whether two ids name one snapshot: restic's short id is the full id's first 8 digits.
fn same_id(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str, tree: &str) -> Snapshot {
        Snapshot {
            id: format!("{id:0<64}"),
            time: time.into(),
            tree: tree.into(),
            paths: vec!["/home/u/Documents".into()],
            hostname: "laptop".into(),
        }
    }

    fn saved(id: &str, at: &str) -> Entry {
        Entry::Saved {
            task: "backup".into(),
            run_id: "r".into(),
            at: at.into(),
            snapshot_id: id.into(),
            partial: false,
            status: None,
        }
    }

    fn ledger(entries: &[Entry]) -> Ledger {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), entries).unwrap();
        Ledger::load(dir.path()).unwrap()
    }

    fn run(l: &Ledger, listed: &[Snapshot], max_age: Option<Duration>) -> Verdict {
        let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let spec = crate::config::Audit { tasks: vec!["backup".into()], max_age, keep: None };
        audit(l, listed, "audit", &spec, now, "2026-12-02T12:00:00Z")
    }

    fn kinds(v: &Verdict) -> Vec<(&str, String)> {
        v.findings
            .iter()
            .map(|f| (f.kind.as_str(), f.snapshot_id.as_deref().map_or("", short).to_string()))
            .collect()
    }

    const T1: &str = "2026-12-02T10:00:00Z";
    const T2: &str = "2026-12-02T11:00:00Z";

    #[test]
    fn a_verifier_gets_the_whole_snapshots_still_there_newest_first() {
        let partial = Entry::Saved {
            task: "backup".into(),
            run_id: "r".into(),
            at: T2.into(),
            snapshot_id: "cccc".into(),
            partial: true,
            status: Some(RunStatus::Failed),
        };
        let forgot = Entry::Forgotten {
            task: "backup".into(),
            run_id: "r".into(),
            at: T2.into(),
            snapshot_id: "aaaa1111".into(),
        };
        let l = ledger(&[saved("aaaa", T1), saved("bbbb", T1), partial, saved("dddd", T2), forgot]);
        let ids: Vec<String> = l.whole_snapshots("backup").into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["dddd", "bbbb"]);
        assert!(l.whole_snapshots("other").is_empty());
    }

    #[test]
    fn a_repository_that_matches_is_clean_and_gets_seen() {
        let l = ledger(&[saved("aaaaaaaa", T1), saved("bbbbbbbb", T2)]);
        let v = run(
            &l,
            &[snap("aaaaaaaa", T1, "t1"), snap("bbbbbbbb", T2, "t2")],
            Some(Duration::from_secs(7200)),
        );
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.checked, 2);
        assert_eq!(v.entries.iter().filter(|e| matches!(e, Entry::Seen { .. })).count(), 2);
    }

    #[test]
    fn deleted_forged_replaced_and_changed_snapshots_are_each_reported() {
        let a = snap("aaaaaaaa", T1, "t1");
        let b = snap("bbbbbbbb", T2, "t2");
        let seen = |s: &Snapshot| Entry::Seen {
            audit: "audit".into(),
            at: T2.into(),
            snapshot: s.clone(),
        };
        let audited = Entry::Audited { audit: "audit".into(), at: T2.into(), findings: 0 };
        let l =
            ledger(&[saved("aaaaaaaa", T1), saved("bbbbbbbb", T2), seen(&a), seen(&b), audited]);
        // a deleted, b's tree changed, a stranger with the same host and paths.
        let b2 = snap("bbbbbbbb", T2, "evil");
        let forged = snap("cccccccc", "2026-12-02T11:30:00Z", "t3");
        let v = run(&l, &[b2, forged.clone()], None);
        assert_eq!(
            kinds(&v),
            [
                ("differs", "bbbbbbbb".into()),
                ("missing", "aaaaaaaa".into()),
                ("unrecorded", "cccccccc".into())
            ]
        );
        // a swapped for one with its time and paths.
        let swapped = snap("dddddddd", T1, "t9");
        let v = run(&l, &[b.clone(), swapped], None);
        assert_eq!(kinds(&v), [("replaced", "aaaaaaaa".into())]);
        // Another host's snapshots are not this ledger's business.
        let mut other = forged;
        other.hostname = "desktop".into();
        assert!(run(&l, &[a, b, other], None).findings.is_empty());
    }

    #[test]
    fn our_forget_is_expected_and_old_snapshots_are_the_baseline_once() {
        let old = snap("00000000", "2026-11-01T00:00:00Z", "t0");
        let a = snap("aaaaaaaa", T1, "t1");
        let forgotten = Entry::Forgotten {
            task: "prune".into(),
            run_id: "p".into(),
            at: T2.into(),
            snapshot_id: a.id.clone(),
        };
        let l = ledger(&[saved("aaaaaaaa", T1), saved("bbbbbbbb", T2), forgotten]);
        let v = run(&l, &[old.clone(), snap("bbbbbbbb", T2, "t2")], None);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert!(
            v.entries
                .iter()
                .any(|e| matches!(e, Entry::Baseline { snapshot, .. } if snapshot.id == old.id))
        );
        // After the first audit, an old-looking stranger is reported (restic backup --time).
        let mut entries = vec![saved("bbbbbbbb", T2)];
        entries.push(Entry::Audited { audit: "audit".into(), at: T2.into(), findings: 0 });
        let l = ledger(&entries);
        let v = run(&l, &[old, snap("bbbbbbbb", T2, "t2")], None);
        assert_eq!(kinds(&v), [("unrecorded", "00000000".into())]);
    }

    #[test]
    fn max_age_fires_when_the_newest_recorded_snapshot_is_old() {
        let l = ledger(&[saved("aaaaaaaa", T1)]);
        let listed = [snap("aaaaaaaa", T1, "t1")];
        assert!(run(&l, &listed, Some(Duration::from_secs(3 * 3600))).findings.is_empty());
        let v = run(&l, &listed, Some(Duration::from_secs(3600)));
        assert_eq!(kinds(&v), [("stale", String::new())]);
        assert!(v.findings[0].detail.contains("backups have stopped"), "{:?}", v.findings);
        let v = run(&ledger(&[]), &[], Some(Duration::from_secs(3600)));
        assert_eq!(kinds(&v), [("stale", String::new())]);
    }

    /// Regression: the ledger was read with `read_to_string`, so one invalid UTF-8 byte
    /// failed every audit, and a torn line was dropped without a word.
    #[test]
    fn torn_and_invalid_lines_are_skipped_and_counted_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[saved("aaaaaaaa", T1)]).unwrap();
        let mut bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        bytes.extend_from_slice(b"{\"type\":\"saved\",\"ta\n\xff garbage \xfe\n");
        std::fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
        append(dir.path(), &[saved("bbbbbbbb", T2)]).unwrap();
        let l = Ledger::load(dir.path()).unwrap();
        let ids: Vec<&str> = l.saved.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["aaaaaaaa", "bbbbbbbb"]);
        assert_eq!(l.unreadable, [2, 3]);
        assert_eq!(
            l.unreadable_summary().unwrap(),
            "2 unreadable lines of the snapshot ledger skipped (ledger.jsonl lines 2, 3)"
        );
        let v = run(&l, &[snap("aaaaaaaa", T1, "t1"), snap("bbbbbbbb", T2, "t2")], None);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert!(ledger(&[saved("aaaaaaaa", T1)]).unreadable_summary().is_none());
    }

    /// Regression: a torn last line glued the next `saved` entry onto the fragment, and the
    /// next audit called the daemon's own snapshot forged.
    #[test]
    fn a_fragment_at_the_end_is_terminated_before_the_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = LedgerFile::new(dir.path());
        file.append(&saved("aaaaaaaa", T1)).unwrap();
        let torn = br#"{"type":"saved","task":"backup","run_id":"r","at":"2026-1"#;
        let mut other = std::fs::OpenOptions::new().append(true).open(file.path()).unwrap();
        std::io::Write::write_all(&mut other, torn).unwrap();
        file.append(&saved("bbbbbbbb", T2)).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1].as_bytes(), torn, "the fragment is a line of its own");
        assert_eq!(serde_json::from_str::<Entry>(lines[2]).unwrap(), saved("bbbbbbbb", T2));
        let l = file.load().unwrap();
        assert_eq!((l.saved.len(), l.unreadable.as_slice()), (2, &[2][..]));
    }

    #[test]
    fn held_entries_folded_into_the_ledger_count_as_recorded() {
        let mut l = ledger(&[saved("aaaaaaaa", T1)]);
        let listed = [snap("aaaaaaaa", T1, "t1"), snap("bbbbbbbb", T2, "t2")];
        assert_eq!(kinds(&run(&l, &listed, None)), [("unrecorded", "bbbbbbbb".into())]);
        l.add(saved("bbbbbbbb", T2));
        assert!(run(&l, &listed, None).findings.is_empty());
    }

    fn with(l: &Ledger, listed: &[Snapshot], spec: &crate::config::Audit) -> Verdict {
        let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        audit(l, listed, "audit", spec, now, "2026-12-02T12:00:00Z")
    }

    #[test]
    fn the_keep_policy_tells_a_prune_from_a_deletion_and_an_acknowledgement_clears_it() {
        let times = ["2026-12-02T08:00:00Z", "2026-12-02T09:00:00Z", T1, T2];
        let snaps: Vec<Snapshot> = times
            .iter()
            .enumerate()
            .map(|(i, t)| snap(&format!("{i}{i}{i}{i}{i}{i}{i}{i}"), t, "t"))
            .collect();
        let entries: Vec<Entry> = snaps.iter().map(|s| saved(&s.id, &s.time)).collect();
        let keep = crate::config::Keep { last: Some(2), ..Default::default() };
        let spec =
            crate::config::Audit { tasks: vec!["backup".into()], max_age: None, keep: Some(keep) };
        let l = ledger(&entries);
        // Pruned elsewhere with --keep-last 2: the two oldest are gone, as the policy says.
        let v = with(&l, &snaps[2..], &spec);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(
            v.notes,
            ["2 snapshots pruned by the keep policy (--keep-last 2): 00000000 11111111"]
        );
        let pruned: Vec<&Entry> =
            v.entries.iter().filter(|e| matches!(e, Entry::Pruned { .. })).collect();
        assert!(
            matches!(pruned[..], [Entry::Pruned { snapshot_ids, .. }] if snapshot_ids.len() == 2),
            "{pruned:?}"
        );
        // The newest deleted by hand: the policy would have kept it.
        let v = with(&l, &snaps[..3], &spec);
        assert_eq!(kinds(&v), [("missing", "33333333".into())]);
        assert!(v.findings[0].detail.contains("would have kept it"), "{:?}", v.findings);
        // Acknowledged: a note, not a finding.
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &entries).unwrap();
        let err = acknowledge(dir.path(), &["4444444444".into()], "x", T2).unwrap_err();
        assert!(err.to_string().contains("no snapshot 4444444444 in the ledger"), "{err}");
        assert!(acknowledge(dir.path(), &["33333333".into()], " ", T2).is_err());
        let ids = acknowledge(dir.path(), &["33333333".into()], "moved to tape", T2).unwrap();
        assert_eq!(ids, [snaps[3].id.clone()]);
        let l = Ledger::load(dir.path()).unwrap();
        let v = with(&l, &snaps[..3], &spec);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.notes, ["1 deletion acknowledged: 33333333 (moved to tape)"]);
        let rows = l.rows();
        assert_eq!(rows.iter().filter(|r| r.state == "acknowledged").count(), 1);
    }

    #[test]
    fn partial_snapshots_are_not_fresh_and_unchanged_runs_are() {
        let partial = Entry::Saved {
            task: "backup".into(),
            run_id: "r2".into(),
            at: T2.into(),
            snapshot_id: "bbbbbbbb".into(),
            partial: true,
            status: Some(crate::protocol::RunStatus::Failed),
        };
        let old = "2026-12-01T10:00:00Z";
        let l = ledger(&[saved("aaaaaaaa", old), partial]);
        let listed = [snap("aaaaaaaa", old, "t1"), snap("bbbbbbbb", T2, "t2")];
        let v = run(&l, &listed, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(kinds(&v), [("stale", String::new())]);
        assert!(v.findings[0].detail.contains("1 snapshot partial"), "{:?}", v.findings);
        // An unchanged run after a whole snapshot keeps it fresh.
        let unchanged =
            Entry::Unchanged { task: "backup".into(), run_id: "r3".into(), at: T2.into() };
        let l = ledger(&[saved("aaaaaaaa", old), unchanged]);
        let v = run(&l, &listed[..1], Some(Duration::from_secs(6 * 3600)));
        assert!(v.findings.is_empty(), "{:?}", v.findings);
    }

    #[test]
    fn a_symbolic_link_in_the_ledgers_place_is_neither_read_nor_written() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(FILE_NAME)).unwrap();
        let e = LedgerFile::new(dir.path()).append(&saved("aaaaaaaa", T1)).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(Ledger::load(dir.path()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }
}
