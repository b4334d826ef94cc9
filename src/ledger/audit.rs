//! The audit: a repository's snapshot list compared with the ledger, by snapshot id. What
//! each finding means is in the parent module's documentation; this module decides them,
//! and says what the audit adds to the ledger (`seen`, `baseline`, `audited`).

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use super::{Entry, Ledger, Saved, same_id, short};
use crate::history::Finding;
use crate::restic::Snapshot;

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
