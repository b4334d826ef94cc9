//! The snapshot ledger (`state_dir/ledger.jsonl`) and the audit that compares a repository
//! with it.
//!
//! `restic check --read-data` proves the data of the snapshots that are there; it cannot
//! tell that one was deleted, replaced, or slipped in. The ledger is the daemon's own
//! account: every snapshot id a task's `restic backup --json` reported (`saved`), every
//! snapshot a `restic forget --json` run by the daemon removed (`forgotten`: retention is
//! not an alarm), and what an audit saw of each (`seen`: time, host, paths, tree), so a
//! later audit can tell a snapshot that changed. An audit task (`audit: {tasks: [...],
//! max_age: ...}`) lists the repository (`restic snapshots --json`) and reports, by id:
//!
//! - `missing`: a snapshot the tasks saved is gone, and no `forget` of ours removed it;
//! - `replaced`: a missing snapshot whose time and paths another, unrecorded one now has;
//! - `differs`: a recorded snapshot whose tree, time, host or paths changed since last seen;
//! - `unrecorded`: a snapshot with the tasks' host and paths that no task saved (made by
//!   hand, elsewhere, or forged); at a task set's first audit, snapshots older than the
//!   ledger are accepted instead (`baseline`) and tracked from then on;
//! - `stale`: the newest recorded snapshot in the repository is older than `max_age`.
//!
//! The file is append-only JSON lines, one `write` per record on an `O_APPEND` file with
//! `fdatasync`, like the history; unreadable lines are skipped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::history::Finding;
use crate::restic::Snapshot;

pub(crate) const FILE_NAME: &str = "ledger.jsonl";

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A backup run reported this snapshot (restic's id: full, or before 0.16 the short one).
    Saved { task: String, run_id: String, at: String, snapshot_id: String },
    /// A forget run by the daemon removed it.
    Forgotten { task: String, run_id: String, at: String, snapshot_id: String },
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
}

/// The ledger, folded.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    saved: Vec<Saved>,
    forgotten: HashSet<String>,
    /// Full id → the snapshot as last seen by an audit.
    seen: HashMap<String, Snapshot>,
    baseline: HashMap<String, Snapshot>,
    audited: HashSet<String>,
}

impl Ledger {
    pub(crate) fn load(state_dir: &Path) -> std::io::Result<Ledger> {
        let text = match std::fs::read_to_string(state_dir.join(FILE_NAME)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut ledger = Ledger::default();
        for entry in text.lines().filter_map(|l| serde_json::from_str::<Entry>(l).ok()) {
            match entry {
                Entry::Saved { task, at, snapshot_id, .. } => {
                    ledger.saved.push(Saved { task, id: snapshot_id, at });
                }
                Entry::Forgotten { snapshot_id, .. } => {
                    ledger.forgotten.insert(snapshot_id);
                }
                Entry::Seen { snapshot, .. } => {
                    ledger.seen.insert(snapshot.id.clone(), snapshot);
                }
                Entry::Baseline { snapshot, .. } => {
                    ledger.baseline.insert(snapshot.id.clone(), snapshot);
                }
                Entry::Audited { audit, .. } => {
                    ledger.audited.insert(audit);
                }
            }
        }
        Ok(ledger)
    }

    fn forgotten(&self, id: &str) -> bool {
        self.forgotten.iter().any(|f| same_id(f, id))
    }
}

/// Appends `entries` to the ledger in `state_dir` (created 0600), each line one write.
pub(crate) fn append(state_dir: &Path, entries: &[Entry]) -> std::io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(state_dir.join(FILE_NAME))?;
    for entry in entries {
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
    }
    file.sync_data()
}

/// Whether two ids name one snapshot: restic's short id is the full id's first 8 digits.
fn same_id(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// What an audit decided, and what it adds to the ledger.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub findings: Vec<Finding>,
    pub entries: Vec<Entry>,
    /// Recorded snapshots found in the repository.
    pub checked: usize,
}

/// Compares the repository's snapshots (`listed`) with what `tasks` saved. `audit` names
/// the audit task; `at` is now.
pub(crate) fn audit(
    ledger: &Ledger,
    listed: &[Snapshot],
    audit: &str,
    tasks: &[String],
    max_age: Option<Duration>,
    now: Timestamp,
    at: &str,
) -> Verdict {
    let mut auditor = Auditor { ledger, listed, audit, at, v: Verdict::default() };
    let mine: Vec<&Saved> = ledger.saved.iter().filter(|s| tasks.contains(&s.task)).collect();
    let tracked = auditor.check_tracked(&mine);
    auditor.v.checked = tracked.present.len();
    let ledger_began = mine.iter().filter_map(|s| s.at.parse::<Timestamp>().ok()).min();
    let mut strangers = auditor.strangers(&tracked, ledger_began);
    for (id, before) in tracked.missing {
        auditor.report_missing(&id, before, &mut strangers);
    }
    for s in strangers {
        auditor.v.findings.push(Finding {
            kind: "unrecorded".into(),
            snapshot_id: Some(s.id.clone()),
            detail: format!(
                "snapshot {} (host {}, {}, {}) was made by none of the tasks {}: made by hand, elsewhere, or forged",
                short(&s.id),
                s.hostname,
                s.paths.join(" "),
                s.time,
                tasks.join(", ")
            ),
        });
    }
    if let Some(max_age) = max_age
        && let Some(detail) = stale(&tracked.present, tasks, max_age, now)
    {
        auditor.v.findings.push(Finding { kind: "stale".into(), snapshot_id: None, detail });
    }
    let Auditor { mut v, .. } = auditor;
    v.entries.push(Entry::Audited {
        audit: audit.into(),
        at: at.into(),
        findings: v.findings.len(),
    });
    v
}

/// One audit in progress: what it reads, and its verdict so far.
struct Auditor<'a> {
    ledger: &'a Ledger,
    listed: &'a [Snapshot],
    audit: &'a str,
    at: &'a str,
    v: Verdict,
}

/// What the audit saw of the snapshots it tracks.
struct Tracked<'a> {
    /// The hosts and path sets the tasks' snapshots have: what a stranger must match.
    hosts: BTreeSet<&'a str>,
    path_sets: BTreeSet<Vec<String>>,
    /// Tracked snapshots in the repository.
    present: Vec<&'a Snapshot>,
    /// Tracked snapshots gone from it, with how they looked when last seen.
    missing: Vec<(String, Option<&'a Snapshot>)>,
}

impl<'a> Auditor<'a> {
    /// Checks every snapshot the tasks saved and every baseline one: present and unchanged
    /// (seen for the first time: recorded), changed (`differs`), or gone (unless our forget
    /// removed it).
    fn check_tracked(&mut self, mine: &[&'a Saved]) -> Tracked<'a> {
        let ledger = self.ledger;
        let mut t = Tracked {
            hosts: BTreeSet::new(),
            path_sets: BTreeSet::new(),
            present: Vec::new(),
            missing: Vec::new(),
        };
        let tracked = mine.iter().map(|s| s.id.clone()).chain(ledger.baseline.keys().cloned());
        for id in tracked {
            let last_seen = ledger.seen.iter().find(|(full, _)| same_id(full, &id)).map(|(_, s)| s);
            let before = last_seen.or(ledger.baseline.get(&id));
            if let Some(s) = before {
                t.hosts.insert(&s.hostname);
                t.path_sets.insert(sorted(&s.paths));
            }
            match self.listed.iter().find(|s| same_id(&id, &s.id)) {
                Some(s) => {
                    t.hosts.insert(&s.hostname);
                    t.path_sets.insert(sorted(&s.paths));
                    t.present.push(s);
                    self.compare(s, before, last_seen.is_none());
                }
                None if ledger.forgotten(&id) => {}
                None => t.missing.push((id, before)),
            }
        }
        t
    }

    /// A tracked snapshot that is present: a finding if it changed since `before`, else a
    /// `seen` entry the first time an audit sees it.
    fn compare(&mut self, s: &Snapshot, before: Option<&Snapshot>, first_seen: bool) {
        if let Some(before) = before
            && (before.tree != s.tree
                || before.time != s.time
                || before.hostname != s.hostname
                || sorted(&before.paths) != sorted(&s.paths))
        {
            self.v.findings.push(Finding {
                kind: "differs".into(),
                snapshot_id: Some(s.id.clone()),
                detail: format!(
                    "snapshot {} changed since it was last seen (tree {} → {}, time {} → {})",
                    short(&s.id),
                    short(&before.tree),
                    short(&s.tree),
                    before.time,
                    s.time
                ),
            });
        } else if first_seen {
            let entry =
                Entry::Seen { audit: self.audit.into(), at: self.at.into(), snapshot: s.clone() };
            self.v.entries.push(entry);
        }
    }

    /// Unrecorded snapshots that look like the tasks' own (their host and paths). At a task
    /// set's first audit, those older than the ledger are accepted as its baseline instead.
    fn strangers(
        &mut self,
        tracked: &Tracked<'_>,
        ledger_began: Option<Timestamp>,
    ) -> Vec<&'a Snapshot> {
        let ledger = self.ledger;
        let first_audit = !ledger.audited.contains(self.audit);
        let recorded = |s: &Snapshot| {
            ledger.saved.iter().any(|saved| same_id(&saved.id, &s.id))
                || ledger.baseline.contains_key(&s.id)
        };
        let mut strangers = Vec::new();
        for s in self.listed {
            if recorded(s) || ledger.forgotten(&s.id) {
                continue;
            }
            if !tracked.hosts.contains(s.hostname.as_str())
                || !tracked.path_sets.contains(&sorted(&s.paths))
            {
                continue;
            }
            let time = s.time.parse::<Timestamp>().ok();
            let older = matches!((time, ledger_began), (Some(t), Some(began)) if t < began);
            if first_audit && older {
                let entry = Entry::Baseline {
                    audit: self.audit.into(),
                    at: self.at.into(),
                    snapshot: s.clone(),
                };
                self.v.entries.push(entry);
                continue;
            }
            strangers.push(s);
        }
        strangers
    }

    /// A tracked snapshot gone from the repository: `replaced` when a stranger has its time
    /// and paths (the same backup, swapped; that stranger is accounted for), else `missing`.
    fn report_missing(
        &mut self,
        id: &str,
        before: Option<&Snapshot>,
        strangers: &mut Vec<&Snapshot>,
    ) {
        let swap = before.and_then(|b| {
            strangers.iter().position(|s| s.time == b.time && sorted(&s.paths) == sorted(&b.paths))
        });
        let detail = match swap {
            Some(i) => {
                let new = strangers.remove(i);
                format!(
                    "snapshot {} is gone, and snapshot {} has its time and paths ({}, {}): replaced",
                    short(id),
                    short(&new.id),
                    new.time,
                    new.paths.join(" ")
                )
            }
            None => format!(
                "snapshot {} is missing from the repository: deleted, and not by a forget this daemon ran",
                short(id)
            ),
        };
        let kind = if swap.is_some() { "replaced" } else { "missing" };
        self.v.findings.push(Finding {
            kind: kind.into(),
            snapshot_id: Some(id.to_string()),
            detail,
        });
    }
}

/// Why the tasks' backups look stopped: the newest tracked snapshot in the repository is
/// older than `max_age`, or there is none.
fn stale(
    present: &[&Snapshot],
    tasks: &[String],
    max_age: Duration,
    now: Timestamp,
) -> Option<String> {
    let newest = present.iter().filter_map(|s| s.time.parse::<Timestamp>().ok()).max();
    let limit = jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX);
    match newest {
        Some(t) if now.duration_since(t) <= limit => None,
        Some(t) => Some(format!(
            "the newest snapshot of {} is from {t}, older than max_age {}: backups have stopped",
            tasks.join(", "),
            crate::time::Human(max_age)
        )),
        None => Some(format!(
            "no snapshot recorded for {} is in the repository (max_age {})",
            tasks.join(", "),
            crate::time::Human(max_age)
        )),
    }
}

fn sorted(paths: &[String]) -> Vec<String> {
    let mut p = paths.to_vec();
    p.sort();
    p
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
        }
    }

    fn ledger(entries: &[Entry]) -> Ledger {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), entries).unwrap();
        Ledger::load(dir.path()).unwrap()
    }

    fn run(l: &Ledger, listed: &[Snapshot], max_age: Option<Duration>) -> Verdict {
        let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        audit(l, listed, "audit", &["backup".into()], max_age, now, "2026-12-02T12:00:00Z")
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
}
