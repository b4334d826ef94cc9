//! The run's hooks: `unlock_stale`'s `restic unlock` after a run the daemon stopped, the
//! `before` hook (whose exit code 75 skips the run), and the result hooks (`on_success` or
//! `on_failure`, then `after`), each with the run's facts in its environment.

use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, warn};

use super::{Outcome, Run};
use crate::daemon::step::HookFailure;
use crate::protocol::RunStatus;

/// Most of the stderr tail a hook gets in `BACKUPNIZZA_STDERR_TAIL`.
const MAX_TAIL_ENV: usize = 32 * 1024;

/// Longest `restic unlock` (unlock_stale) runs when the task has no `timeout`.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A `before` hook exiting with this (EX_TEMPFAIL) skips the run, as in borgmatic.
const SKIP_EXIT_CODE: i32 = 75;

impl Run<'_> {
    /// After a run the daemon stopped, restic may have left its lock behind (SIGKILLed while
    /// it removed it, or the daemon died): with `unlock_stale: true`, `restic unlock` runs
    /// first, with the task's settings and a token of its own. restic removes only the locks
    /// it can prove stale (this host and a process that is gone, or older than 30 minutes),
    /// never a live run's. Says what it did, for the run's record.
    pub(super) async fn unlock_stale(&self) -> Option<String> {
        let previous = self.job.after_stop?;
        if !self.task.unlock_stale {
            return None;
        }
        let restic =
            self.task.steps.iter().flat_map(crate::config::Step::stages).find_map(|argv| {
                (crate::config::program_name(&argv[0]) == "restic").then(|| argv[0].clone())
            })?;
        let how = match previous {
            RunStatus::Failed => "was killed by a signal".to_string(),
            other => format!("ended {other}"),
        };
        info!("the last run {how}: running restic unlock first (unlock_stale)");
        let hook = crate::config::Hook {
            command: vec![restic, "unlock".into()],
            secrets: self.task.secrets.clone(),
        };
        let facts = self.hook_facts("unlock_stale", self.started, None);
        let ran = self
            .ctx
            .runner
            .run_hook(
                self.task,
                "unlock_stale",
                (&hook, self.task.timeout.unwrap_or(UNLOCK_TIMEOUT)),
                &self.job.run_id,
                &self.procs,
                facts,
                &self.ctx.cancel,
                self.sinks(),
            )
            .await;
        let ok = matches!(ran, Ok(0));
        let result = match ran {
            Ok(code) => format!("exit code {code}"),
            Err(HookFailure::Cancelled) => "stopped by daemon shutdown".into(),
            Err(HookFailure::Failed(why)) => why,
        };
        if !ok {
            warn!("restic unlock did not succeed ({result}); running the task anyway");
        }
        Some(format!("restic unlock ran first, as the last run {how} (unlock_stale): {result}"))
    }

    pub(super) async fn before_hook(&self) -> Result<(), Outcome> {
        let Some(before) = &self.task.hooks.before else { return Ok(()) };
        let facts = self.hook_facts("before", self.started, None);
        let ran = self
            .ctx
            .runner
            .run_hook(
                self.task,
                "before",
                (before, self.task.hooks.timeout),
                &self.job.run_id,
                &self.procs,
                facts,
                &self.ctx.cancel,
                self.sinks(),
            )
            .await;
        match ran {
            Ok(0) => Ok(()),
            Ok(SKIP_EXIT_CODE) => {
                info!("the before hook exited 75: skipping this run");
                Err(Outcome::early(RunStatus::Skipped, None, "the before hook exited 75 (skip)"))
            }
            Ok(code) => Err(Outcome::early(
                RunStatus::Failed,
                Some(code),
                format!("the before hook failed with exit code {code}; the steps did not run"),
            )),
            Err(HookFailure::Cancelled) => Err(Outcome::early(
                RunStatus::Cancelled,
                None,
                "stopped by daemon shutdown during the before hook",
            )),
            Err(HookFailure::Failed(why)) => Err(Outcome::early(
                RunStatus::Failed,
                None,
                format!("the before hook failed: {why}; the steps did not run"),
            )),
        }
    }

    /// Result hooks, then `after` — also when the `before` hook failed; none for a run the
    /// `before` hook skipped, or once the daemon is stopping.
    pub(super) async fn result_hooks(&self, outcome: &Outcome) {
        if matches!(outcome.status, RunStatus::Cancelled | RunStatus::Skipped) {
            return;
        }
        let hooks = &self.task.hooks;
        let which = if outcome.status.is_ok() {
            ("on_success", &hooks.on_success)
        } else {
            ("on_failure", &hooks.on_failure)
        };
        let started =
            Timestamp::now() - jiff::SignedDuration::try_from(outcome.duration).unwrap_or_default();
        for (name, hook) in [which, ("after", &hooks.after)] {
            let Some(hook) = hook else { continue };
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            let facts = self.hook_facts(name, started, Some(outcome));
            match self
                .ctx
                .runner
                .run_hook(
                    self.task,
                    name,
                    (hook, self.task.hooks.timeout),
                    &self.job.run_id,
                    &self.procs,
                    facts,
                    &self.ctx.cancel,
                    self.sinks(),
                )
                .await
            {
                Ok(0) => {}
                Ok(code) => warn!("the {name} hook exited {code}; the run's result is unchanged"),
                Err(HookFailure::Cancelled) => break,
                Err(HookFailure::Failed(why)) => {
                    warn!("the {name} hook failed: {why}; the run's result is unchanged");
                }
            }
        }
    }

    /// The run's facts for a hook's environment.
    pub(super) fn hook_facts(
        &self,
        hook: &str,
        started: Timestamp,
        outcome: Option<&Outcome>,
    ) -> Vec<(String, String)> {
        let mut facts = vec![
            ("BACKUPNIZZA_HOOK".to_string(), hook.to_string()),
            ("BACKUPNIZZA_STARTED".to_string(), self.ctx.rfc3339(started)),
        ];
        if let Some(o) = outcome {
            facts.push(("BACKUPNIZZA_STATUS".into(), o.status.as_str().into()));
            facts.push((
                "BACKUPNIZZA_EXIT_CODE".into(),
                o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ));
            facts.push(("BACKUPNIZZA_DURATION_MS".into(), o.duration.as_millis().to_string()));
            facts.push(("BACKUPNIZZA_REASON".into(), o.reason.clone()));
            facts.push(("BACKUPNIZZA_STDERR_TAIL".into(), env_tail(&o.stderr_tail)));
            if let Some(total) = crate::restic::total(&o.backups) {
                let ids: Vec<&str> = o.backups.iter().map(|b| b.snapshot_id.as_str()).collect();
                facts.push(("BACKUPNIZZA_SNAPSHOT_ID".into(), total.snapshot_id));
                facts.push(("BACKUPNIZZA_SNAPSHOT_IDS".into(), ids.join(" ")));
                facts.push(("BACKUPNIZZA_DATA_ADDED".into(), total.data_added.to_string()));
            }
        }
        facts
    }
}

/// The stderr tail as one environment value: bounded (an environment string over 128 KiB
/// makes exec fail with E2BIG) and without NULs (which no environment string can hold),
/// keeping the end.
fn env_tail(lines: &[String]) -> String {
    let mut tail = lines.join("\n").replace('\0', "");
    if tail.len() > MAX_TAIL_ENV {
        let mut cut = tail.len() - MAX_TAIL_ENV;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}
