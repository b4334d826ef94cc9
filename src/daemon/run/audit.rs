//! The run's part in the snapshot ledger ([`crate::ledger`]): what its steps saved and its
//! `forget` removed goes in; for an audit task, the snapshot list its steps printed is
//! compared with the ledger, and what the audit finds fails the run.

use jiff::Timestamp;
use tracing::{error, info};

use super::{Outcome, Run};
use crate::ledger::{self, Entry, Verdict};

/// "1 recorded snapshot", "2 recorded snapshots".
fn snapshots(n: usize) -> String {
    format!("{n} recorded snapshot{}", if n == 1 { "" } else { "s" })
}

impl Run<'_> {
    /// Records the run's snapshots and, for an audit task that succeeded so far, audits the
    /// repository's listing against the ledger (file work on a blocking thread).
    pub(super) async fn ledger(&self, outcome: &mut Outcome) {
        let at = self.ctx.rfc3339(Timestamp::now());
        let entries = self.entries(outcome, &at);
        let audit = self.task.audit.clone().filter(|_| outcome.status.is_ok());
        if entries.is_empty() && audit.is_none() {
            return;
        }
        let listed = outcome.listed.take();
        let state_dir = self.ctx.config.state_dir.clone();
        let name = self.task.name.clone();
        let done = tokio::task::spawn_blocking(move || {
            ledger::append(&state_dir, &entries)?;
            let (Some(audit), Some(listed)) = (audit, listed) else { return Ok(None) };
            let ledger = ledger::Ledger::load(&state_dir)?;
            let verdict = ledger::audit(
                &ledger,
                &listed,
                &name,
                &audit.tasks,
                audit.max_age,
                Timestamp::now(),
                &at,
            );
            ledger::append(&state_dir, &verdict.entries)?;
            Ok::<_, std::io::Error>(Some(verdict))
        })
        .await;
        let verdict = match done {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                let why = format!(
                    "cannot update the snapshot ledger in {}: {e}",
                    self.ctx.config.state_dir.display()
                );
                error!("{why}");
                if self.task.audit.is_some() && outcome.status.is_ok() {
                    outcome.fail(why);
                }
                return;
            }
            Err(e) => {
                error!("the snapshot ledger's update failed: {e}");
                return;
            }
        };
        if self.task.audit.is_some() && outcome.status.is_ok() {
            apply(verdict, outcome);
        }
    }

    /// The ledger entries for what the run's steps saved and removed.
    fn entries(&self, outcome: &Outcome, at: &str) -> Vec<Entry> {
        let (task, run_id) = (&self.task.name, &self.job.run_id);
        let saved = outcome.backups.iter().map(|b| Entry::Saved {
            task: task.clone(),
            run_id: run_id.clone(),
            at: at.to_string(),
            snapshot_id: b.snapshot_id.clone(),
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
    if verdict.findings.is_empty() {
        let checked = snapshots(verdict.checked);
        info!("audit: clean, {checked} checked against the ledger");
        outcome.reason = format!("{}; audit: clean, {checked} checked", outcome.reason);
    } else {
        let n = verdict.findings.len();
        let list: Vec<&str> = verdict.findings.iter().map(|f| f.detail.as_str()).collect();
        outcome.fail(format!(
            "audit found {n} problem{}: {}",
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
    use crate::protocol::RunStatus;

    #[test]
    fn an_audit_without_a_listing_or_with_findings_fails_without_an_exit_code() {
        let ok = || Outcome::early(RunStatus::Success, Some(0), "all steps succeeded");
        let mut none = ok();
        apply(None, &mut none);
        assert_eq!((none.status, none.exit_code), (RunStatus::Failed, None));
        assert!(none.reason.contains("no snapshot list"), "{}", none.reason);

        let finding = Finding { kind: "missing".into(), snapshot_id: None, detail: "gone".into() };
        let verdict = Verdict { findings: vec![finding], checked: 3, entries: Vec::new() };
        let mut found = ok();
        apply(Some(verdict), &mut found);
        assert_eq!((found.status, found.exit_code), (RunStatus::Failed, None));
        assert_eq!(found.reason, "audit found 1 problem: gone");
        assert_eq!(found.findings.len(), 1);

        let mut clean = ok();
        apply(Some(Verdict { findings: Vec::new(), checked: 1, entries: Vec::new() }), &mut clean);
        assert_eq!(clean.status, RunStatus::Success);
        assert!(clean.reason.ends_with("; audit: clean, 1 recorded snapshot checked"));
    }
}
