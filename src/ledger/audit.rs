//! The audit: a repository's snapshot list compared with the ledger, by snapshot id. What
//! each finding means is in the parent module's documentation; this module decides them,
//! says what the audit adds to the ledger (`seen`, `baseline`, `pruned`, `audited`), and
//! what it reports that is not a finding (snapshots pruned by policy, acknowledged
//! deletions).

use std::collections::{BTreeSet, HashMap, HashSet};

use jiff::Timestamp;

use super::policy::{self, When};
use super::{Entry, Gone, Ledger, Saved, same_id, short};
use crate::config::{Audit, Keep};
use crate::history::Finding;
use crate::restic::Snapshot;

/// How many pruned snapshots the audit's note names (`backupnizza ledger` lists them all).
const NOTE_IDS: usize = 20;

/// What an audit decided, and what it adds to the ledger.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub findings: Vec<Finding>,
    /// What the audit reports that is not wrong: snapshots pruned by the `keep:` policy,
    /// acknowledged deletions.
    pub notes: Vec<String>,
    pub entries: Vec<Entry>,
    /// Recorded snapshots found in the repository.
    pub checked: usize,
}

/// Compares the repository's snapshots (`listed`) with what `spec.tasks` saved. `name`
/// names the audit task; `at` is now.
pub(crate) fn audit(
    ledger: &Ledger,
    listed: &[Snapshot],
    name: &str,
    spec: &Audit,
    now: Timestamp,
    at: &str,
) -> Verdict {
    let tasks = &spec.tasks;
    let mut auditor = Auditor { ledger, listed, audit: name, at, now, v: Verdict::default() };
    let mine: Vec<&Saved> = ledger.saved.iter().filter(|s| tasks.contains(&s.task)).collect();
    let tracked = auditor.check_tracked(&mine);
    auditor.v.checked = tracked.present.len();
    let ledger_began = mine.iter().filter_map(|s| s.at.parse::<Timestamp>().ok()).min();
    let mut strangers = auditor.strangers(&tracked, ledger_began);
    let mut pruned = Vec::new();
    let by_policy = spec.keep.as_ref().map(|keep| auditor.pruned_by(keep, &tracked, &mine));
    for (id, before) in &tracked.missing {
        if let Some(swap) = Auditor::swapped(before.as_ref(), &strangers) {
            let new = strangers.remove(swap);
            auditor.replaced(id, new);
        } else if by_policy.as_ref().is_some_and(|p| p.contains(id)) {
            pruned.push(id.clone());
        } else {
            auditor.missing(id, spec.keep.as_ref());
        }
    }
    if let (false, Some(keep)) = (pruned.is_empty(), &spec.keep) {
        // One entry for the lot: the first audit after a year of prunes elsewhere decides
        // thousands at once, and each entry is a write and an fdatasync.
        let shown: Vec<&str> = pruned.iter().take(NOTE_IDS).map(|id| short(id)).collect();
        let more = pruned.len().saturating_sub(NOTE_IDS);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        auditor.v.notes.push(format!(
            "{} pruned by the keep policy ({keep}): {}{more}",
            snapshots(pruned.len()),
            shown.join(" ")
        ));
        auditor.v.entries.push(Entry::Pruned {
            audit: name.into(),
            at: at.into(),
            snapshot_ids: pruned,
            policy: keep.to_string(),
        });
    }
    auditor.acknowledged(&tracked);
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
    if let Some(max_age) = spec.max_age
        && let Some(detail) = stale(ledger, &tracked, &mine, tasks, max_age, now)
    {
        auditor.v.findings.push(Finding { kind: "stale".into(), snapshot_id: None, detail });
    }
    let Auditor { mut v, .. } = auditor;
    v.entries.push(Entry::Audited {
        audit: name.into(),
        at: at.into(),
        findings: v.findings.len(),
    });
    v
}

/// "1 snapshot", "2 snapshots".
fn snapshots(n: usize) -> String {
    format!("{n} snapshot{}", if n == 1 { "" } else { "s" })
}

/// One audit in progress: what it reads, and its verdict so far.
struct Auditor<'a> {
    ledger: &'a Ledger,
    listed: &'a [Snapshot],
    audit: &'a str,
    at: &'a str,
    now: Timestamp,
    v: Verdict,
}

/// What the audit saw of the snapshots it tracks.
struct Tracked<'a> {
    /// The hosts and path sets the tasks' snapshots have: what a stranger must match.
    hosts: BTreeSet<&'a str>,
    path_sets: BTreeSet<Vec<String>>,
    /// Tracked snapshots in the repository.
    present: Vec<&'a Snapshot>,
    /// Tracked snapshots gone from it that nothing explains, with how they looked when
    /// last seen.
    missing: Vec<(String, Option<Snapshot>)>,
    /// Tracked snapshots gone from it whose removal somebody acknowledged.
    acknowledged: Vec<(String, String)>,
}

impl<'a> Auditor<'a> {
    /// Checks every snapshot the tasks saved and every baseline one: present and unchanged
    /// (seen for the first time: recorded), changed (`differs`), or gone (unless our forget
    /// removed it, the policy pruned it, or somebody acknowledged it).
    fn check_tracked(&mut self, mine: &[&'a Saved]) -> Tracked<'a> {
        let ledger = self.ledger;
        let mut t = Tracked {
            hosts: BTreeSet::new(),
            path_sets: BTreeSet::new(),
            present: Vec::new(),
            missing: Vec::new(),
            acknowledged: Vec::new(),
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
                None => match ledger.gone(&id) {
                    Some(Gone::Acknowledged { reason, .. }) => {
                        t.acknowledged.push((id, reason.clone()));
                    }
                    Some(_) => {}
                    None => t.missing.push((id, before.cloned())),
                },
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
            if recorded(s) || ledger.gone(&s.id).is_some() {
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

    /// The stranger that has a missing snapshot's time and paths (the same backup, swapped).
    fn swapped(before: Option<&Snapshot>, strangers: &[&Snapshot]) -> Option<usize> {
        let b = before?;
        strangers.iter().position(|s| s.time == b.time && sorted(&s.paths) == sorted(&b.paths))
    }

    fn replaced(&mut self, id: &str, new: &Snapshot) {
        self.v.findings.push(Finding {
            kind: "replaced".into(),
            snapshot_id: Some(id.to_string()),
            detail: format!(
                "snapshot {} is gone, and snapshot {} has its time and paths ({}, {}): replaced",
                short(id),
                short(&new.id),
                new.time,
                new.paths.join(" ")
            ),
        });
    }

    fn missing(&mut self, id: &str, keep: Option<&Keep>) {
        let why = match keep {
            Some(keep) => format!("the keep policy ({keep}) would have kept it"),
            None => "not by a forget this daemon ran (an audit's keep: policy explains prunes done elsewhere)".into(),
        };
        self.v.findings.push(Finding {
            kind: "missing".into(),
            snapshot_id: Some(id.to_string()),
            detail: format!(
                "snapshot {} is missing from the repository: deleted, and {why}; if that was on purpose, say so with `backupnizza ledger forget {} --reason TEXT`",
                short(id),
                short(id)
            ),
        });
    }

    /// The missing snapshots the `keep:` policy would have removed: the policy applied to
    /// each group (host and paths, restic's default grouping) that has a missing snapshot,
    /// made of the snapshots listed with that host and paths and the tracked snapshots
    /// missing from it. A snapshot no audit has seen is placed by its run's time and by the
    /// host and paths of its task's snapshots in the repository; one that cannot be placed
    /// is not judged (it stays missing). Each snapshot is placed once and each group judged
    /// once: a year of hourly backups is judged in well under a second.
    fn pruned_by(&self, keep: &Keep, tracked: &Tracked<'_>, mine: &[&Saved]) -> HashSet<String> {
        type Group = (String, Vec<String>);
        // A present snapshot of each task, found once: where its unseen snapshots belong.
        let present: HashMap<&str, &Snapshot> =
            tracked.present.iter().map(|p| (short(&p.id), *p)).collect();
        let mut sibling: HashMap<&str, Option<&Snapshot>> = HashMap::new();
        for s in mine {
            let found = present.get(short(&s.id)).filter(|p| same_id(&p.id, &s.id)).copied();
            let entry = sibling.entry(s.task.as_str()).or_insert(None);
            if entry.is_none() {
                *entry = found;
            }
        }
        let saved: HashMap<&str, &Saved> = mine.iter().map(|s| (s.id.as_str(), *s)).collect();
        let mut groups: HashMap<Group, Vec<(Option<&str>, When)>> = HashMap::new();
        for (id, before) in &tracked.missing {
            let placed = match before {
                Some(b) => {
                    When::parse(&b.time).map(|w| ((b.hostname.clone(), sorted(&b.paths)), w))
                }
                None => saved.get(id.as_str()).and_then(|s| {
                    let p = sibling.get(s.task.as_str()).copied().flatten()?;
                    Some(((p.hostname.clone(), sorted(&p.paths)), When::parse(&s.at)?))
                }),
            };
            if let Some((group, when)) = placed {
                groups.entry(group).or_default().push((Some(id.as_str()), when));
            }
        }
        for s in self.listed {
            if let Some(members) = groups.get_mut(&(s.hostname.clone(), sorted(&s.paths)))
                && let Some(when) = When::parse(&s.time)
            {
                members.push((None, when));
            }
        }
        let mut pruned = HashSet::new();
        for members in groups.values() {
            let times: Vec<When> = members.iter().map(|(_, w)| *w).collect();
            let kept = policy::kept(keep, &times, self.now);
            for ((id, _), kept) in members.iter().zip(kept) {
                if let (Some(id), false) = (id, kept) {
                    pruned.insert((*id).to_string());
                }
            }
        }
        pruned
    }

    /// Acknowledged deletions, said in the verdict each time (they are few, and on purpose).
    fn acknowledged(&mut self, tracked: &Tracked<'_>) {
        if tracked.acknowledged.is_empty() {
            return;
        }
        let each: Vec<String> = tracked
            .acknowledged
            .iter()
            .map(|(id, reason)| format!("{} ({reason})", short(id)))
            .collect();
        let n = tracked.acknowledged.len();
        self.v.notes.push(format!(
            "{n} deletion{} acknowledged: {}",
            if n == 1 { "" } else { "s" },
            each.join(", ")
        ));
    }
}

/// Why the tasks' backups look stopped: their newest whole backup is older than `max_age`,
/// or there is none. A whole backup is a snapshot in the repository that is not partial, or
/// a run after one that found nothing changed (`unchanged`).
fn stale(
    ledger: &Ledger,
    tracked: &Tracked<'_>,
    mine: &[&Saved],
    tasks: &[String],
    max_age: std::time::Duration,
    now: Timestamp,
) -> Option<String> {
    let partial = |s: &Snapshot| mine.iter().any(|m| m.partial && same_id(&m.id, &s.id));
    let whole: Vec<&&Snapshot> = tracked.present.iter().filter(|s| !partial(s)).collect();
    let task_of = |s: &Snapshot| mine.iter().find(|m| same_id(&m.id, &s.id)).map(|m| &m.task);
    let current: BTreeSet<&String> = whole.iter().filter_map(|s| task_of(s)).collect();
    let unchanged = ledger
        .unchanged
        .iter()
        .filter(|(task, _)| current.contains(task))
        .filter_map(|(_, at)| at.parse::<Timestamp>().ok());
    let newest =
        whole.iter().filter_map(|s| s.time.parse::<Timestamp>().ok()).chain(unchanged).max();
    let partials = tracked.present.len() - whole.len();
    let partials = if partials > 0 {
        format!("; {} partial (their runs failed) not counted", snapshots(partials))
    } else {
        String::new()
    };
    let limit = jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX);
    match newest {
        Some(t) if now.duration_since(t) <= limit => None,
        Some(t) => Some(format!(
            "the newest whole backup of {} is from {t}, older than max_age {}: backups have stopped{partials}",
            tasks.join(", "),
            crate::time::Human(max_age)
        )),
        None => Some(format!(
            "no whole backup recorded for {} is in the repository (max_age {}){partials}",
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
