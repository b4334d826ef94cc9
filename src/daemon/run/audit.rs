//! The run's part in the snapshot ledger ([`crate::ledger`]): what its steps saved and its
//! `forget` removed goes in, through the ledger's writer thread, which holds what it cannot
//! write and retries; for an audit task, the snapshot list its steps printed is compared
//! with the ledger that thread hands back (the file, and the entries it holds), and what
//! the audit finds fails the run. Held entries are said in the run's reason.

use jiff::Timestamp;
use tracing::{error, info, warn};

use super::{Outcome, Run};
use crate::config::Audit;
use crate::ledger::{self, Entry, Verdict};
use crate::protocol::RunStatus;
use crate::restic::Snapshot;

/// "1 recorded snapshot", "2 recorded snapshots".
fn snapshots(n: usize) -> String {
    format!("{n} recorded snapshot{}", if n == 1 { "" } else { "s" })
}

impl Run<'_> {
    /// Records the run's snapshots and, for an audit task that succeeded so far, audits the
    /// repository's listing against the ledger.
    pub(super) async fn ledger(&self, outcome: &mut Outcome) {
        let at = self.ctx.rfc3339(Timestamp::now());
        let entries = self.entries(outcome, &at);
        let audit = self.task.audit.clone().filter(|_| outcome.status.is_ok());
        if entries.is_empty() && audit.is_none() {
            return;
        }
        let held = match (audit, outcome.listed.take()) {
            (Some(audit), Some(listed)) => self.audit(entries, &audit, listed, at, outcome).await,
            (Some(_), None) => {
                let held = self.ctx.ledger.append(entries).await;
                apply(None, outcome);
                held
            }
            (None, _) => self.ctx.ledger.append(entries).await,
        };
        if held > 0 {
            let entries = if held == 1 { "entry" } else { "entries" };
            outcome.reason = format!(
                "{}; the snapshot ledger could not be written: {held} {entries} held in memory and retried",
                outcome.reason
            );
        }
    }

    /// Appends the run's entries, compares `listed` with the ledger the writer thread hands
    /// back (the comparison on a blocking thread), and appends what the audit adds. The
    /// verdict goes in `outcome`; returns how many ledger entries are held in memory.
    async fn audit(
        &self,
        entries: Vec<Entry>,
        audit: &Audit,
        listed: Vec<Snapshot>,
        at: String,
        outcome: &mut Outcome,
    ) -> usize {
        let (held, loaded) = self.ctx.ledger.append_and_load(entries).await;
        let ledger = match loaded {
            Ok(ledger) => ledger,
            Err(e) => {
                let file = self.ctx.config.state_dir.join(ledger::FILE_NAME);
                let why = format!("cannot read the snapshot ledger {}: {e}", file.display());
                error!("{why}");
                outcome.fail(why);
                return held;
            }
        };
        let skipped = ledger.unreadable_summary();
        let (name, spec) = (self.task.name.clone(), audit.clone());
        let decided = tokio::task::spawn_blocking(move || {
            ledger::audit(&ledger, &listed, &name, &spec, Timestamp::now(), &at)
        })
        .await;
        let mut verdict = match decided {
            Ok(verdict) => verdict,
            Err(e) => {
                let why = format!("the audit did not finish: {e}");
                error!("{why}");
                outcome.fail(why);
                return held;
            }
        };
        let held = self.ctx.ledger.append(std::mem::take(&mut verdict.entries)).await;
        apply(Some(verdict), outcome);
        if let Some(skipped) = skipped {
            // Information, not a failure: an entry whose write was torn was held, and written
            // again whole.
            warn!("audit: {skipped}");
            outcome.reason = format!("{}; {skipped}", outcome.reason);
        }
        held
    }

    /// The ledger entries for what the run's steps saved (a partial snapshot with the run's
    /// status; an unchanged run only when its step succeeded) and removed.
    fn entries(&self, outcome: &Outcome, at: &str) -> Vec<Entry> {
        let (task, run_id) = (&self.task.name, &self.job.run_id);
        let saved = outcome.backups.iter().filter(|b| !b.unchanged || !b.partial).map(|b| {
            if b.unchanged {
                Entry::Unchanged { task: task.clone(), run_id: run_id.clone(), at: at.to_string() }
            } else {
                Entry::Saved {
                    task: task.clone(),
                    run_id: run_id.clone(),
                    at: at.to_string(),
                    snapshot_id: b.snapshot_id.clone(),
                    partial: b.partial,
                    // The run's status; a failed attempt's under a run that succeeded
                    // after a retry: failed.
                    status: b.partial.then_some(if outcome.status.is_ok() {
                        RunStatus::Failed
                    } else {
                        outcome.status
                    }),
                }
            }
        });
        let forgotten = outcome.removed.iter().map(|s| Entry::Forgotten {
            task: task.clone(),
            run_id: run_id.clone(),
            at: at.to_string(),
            snapshot_id: s.id.clone(),
        });
        saved.chain(forgotten).collect()
    }
}

/// An audit task's verdict, in its run's outcome: no snapshot list or any finding fails the
/// run (with no exit code: a ping with `/0` would report success); a clean audit says how
/// many snapshots it checked.
fn apply(verdict: Option<Verdict>, outcome: &mut Outcome) {
    let Some(verdict) = verdict else {
        let why = "audit: the steps printed no snapshot list (the audit's command should be `restic snapshots --json`)";
        error!("{why}");
        outcome.fail(why.to_string());
        return;
    };
    for finding in &verdict.findings {
        error!(kind = %finding.kind, "audit: {}", finding.detail);
    }
    for note in &verdict.notes {
        info!("audit: {note}");
    }
    let notes: String = verdict.notes.iter().map(|n| format!("; {n}")).collect();
    if verdict.findings.is_empty() {
        let checked = snapshots(verdict.checked);
        info!("audit: clean, {checked} checked against the ledger");
        outcome.reason = format!("{}; audit: clean, {checked} checked{notes}", outcome.reason);
    } else {
        let n = verdict.findings.len();
        let list: Vec<&str> = verdict.findings.iter().map(|f| f.detail.as_str()).collect();
        outcome.fail(format!(
            "audit found {n} problem{}: {}{notes}",
            if n == 1 { "" } else { "s" },
            list.join("; ")
        ));
    }
    outcome.findings = verdict.findings;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Finding;

    #[test]
    fn an_audit_without_a_listing_or_with_findings_fails_without_an_exit_code() {
        let ok = || Outcome::early(RunStatus::Success, Some(0), "all steps succeeded");
        let mut none = ok();
        apply(None, &mut none);
        assert_eq!((none.status, none.exit_code), (RunStatus::Failed, None));
        assert!(none.reason.contains("no snapshot list"), "{}", none.reason);

        let finding = Finding { kind: "missing".into(), snapshot_id: None, detail: "gone".into() };
        let verdict = Verdict { findings: vec![finding], checked: 3, ..Verdict::default() };
        let mut found = ok();
        apply(Some(verdict), &mut found);
        assert_eq!((found.status, found.exit_code), (RunStatus::Failed, None));
        assert_eq!(found.reason, "audit found 1 problem: gone");
        assert_eq!(found.findings.len(), 1);

        let mut clean = ok();
        apply(Some(Verdict { checked: 1, ..Verdict::default() }), &mut clean);
        assert_eq!(clean.status, RunStatus::Success);
        assert!(clean.reason.ends_with("; audit: clean, 1 recorded snapshot checked"));
    }
}
