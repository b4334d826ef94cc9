//! The run's attempts at its steps: one, or as many as the task's `retry:` allows, each a
//! fresh start (new tokens, a new timeout), with a delay between them. An attempt is not
//! tried again when it succeeded, was refused or cancelled, or when restic's exit code says
//! retrying cannot help.

use std::time::Instant;

use jiff::Timestamp;
use tracing::{info, warn};

use super::{Outcome, Run};
use crate::config::Task;
use crate::daemon::step::Steps;
use crate::protocol::RunStatus;

impl Run<'_> {
    /// The steps, tried again after a failure as the task's `retry:` says: each attempt is a
    /// fresh start (new tokens, a new timeout). Not tried again: a run that succeeded, was
    /// refused or cancelled, the last attempt, and a restic step's exit code that says
    /// retrying cannot help. The hooks run once, around all attempts.
    pub(super) async fn attempts(&self) -> Outcome {
        let Some(retry) = &self.task.retry else { return self.steps(None).await };
        let began = Instant::now();
        let mut earlier: Vec<crate::history::Attempt> = Vec::new();
        // What earlier attempts' restic saved and removed: the ledger must have it all (a
        // failed attempt's snapshot left out would be called forged at the next audit).
        let mut saved = Vec::new();
        let mut removed = Vec::new();
        let mut attempt = 1;
        loop {
            let mut outcome = self.steps(Some(attempt)).await;
            let verdict = retry_verdict(self.task, &outcome);
            let mut last = attempt == retry.attempts || verdict.is_err();
            if let Err(why) = &verdict
                && !matches!(outcome.status, RunStatus::Success | RunStatus::Warning)
            {
                info!(
                    "attempt {attempt} of {} {}: not tried again ({why})",
                    retry.attempts, outcome.status
                );
            }
            if !last {
                let wait = retry.delay_after(attempt);
                warn!(
                    "attempt {attempt} of {} {} ({}); trying again in {}",
                    retry.attempts,
                    outcome.status,
                    outcome.reason,
                    crate::time::Human(wait)
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.ctx.cancel.cancelled() => {
                        outcome.reason.push_str("; not tried again: the daemon is stopping");
                        last = true;
                    }
                }
            }
            if last {
                if attempt > 1 {
                    outcome.reason =
                        format!("attempt {attempt} of {}: {}", retry.attempts, outcome.reason);
                }
                outcome.attempts = earlier;
                outcome.duration = began.elapsed();
                saved.append(&mut outcome.backups);
                outcome.backups = saved;
                removed.append(&mut outcome.removed);
                outcome.removed = removed;
                return outcome;
            }
            saved.append(&mut outcome.backups);
            removed.append(&mut outcome.removed);
            earlier.push(crate::history::Attempt {
                number: attempt,
                at: self.ctx.rfc3339(Timestamp::now()),
                status: outcome.status,
                exit_code: outcome.exit_code,
                duration_ms: outcome.duration.as_millis() as u64,
                reason: outcome.reason,
            });
            attempt += 1;
        }
    }

    /// One attempt at the steps (`attempt` is its number, from 1, for a task with `retry:`).
    pub(super) async fn steps(&self, attempt: Option<u32>) -> Outcome {
        let deadline = self.task.timeout.map(|t| Instant::now() + t);
        // The occurrence a run belongs to, with milliseconds, for scripts (and for the
        // benchmark that measures how punctually runs start).
        let mut facts = Vec::new();
        if let Some(o) = self.job.occurrence {
            facts.push((
                "BACKUPNIZZA_SCHEDULED".to_string(),
                o.to_zoned(self.ctx.zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            ));
        }
        if let Some(n) = attempt {
            facts.push(("BACKUPNIZZA_ATTEMPT".to_string(), n.to_string()));
        }
        if let Some(spec) = &self.task.verify {
            return self.verify(spec, deadline).await;
        }
        let pins = &self.ctx.pins[self.job.idx];
        let steps = Steps {
            task: self.task,
            pins,
            run_id: &self.job.run_id,
            procs: &self.procs,
            facts: &facts,
            deadline,
            cancel: &self.ctx.cancel,
            output: self.sinks(),
        };
        self.ctx.runner.run(steps).await
    }
}

/// restic's exit codes that no retry can improve: 3, some source data could not be read
/// (a retry reads the same files, and makes another incomplete snapshot); and from restic
/// 0.17 on, 10, the repository does not exist; 12, the password is wrong; 130, restic was
/// interrupted (by somebody: the daemon's own stops end the run as timeout or cancelled).
/// 11, the repository is locked, is tried again: another process's lock goes away.
const RESTIC_FINAL_CODES: &[(i32, &str)] = &[
    (3, "restic: some source data could not be read"),
    (10, "restic: the repository does not exist"),
    (12, "restic: wrong password"),
    (130, "restic: interrupted"),
];

/// Whether a finished attempt may be tried again; `Err` says why not.
fn retry_verdict(task: &Task, outcome: &Outcome) -> Result<(), &'static str> {
    match outcome.status {
        RunStatus::Failed | RunStatus::Timeout => {}
        RunStatus::Success | RunStatus::Warning => return Err("it succeeded"),
        RunStatus::Refused => return Err("the run was refused, and would be again"),
        _ => return Err("it did not fail"),
    }
    let step = task.steps.get(outcome.last_step);
    // A plain restic step: in a pipeline, the code may be an earlier stage's.
    let restic = step.is_some_and(|s| {
        s.pipe_into.is_empty() && crate::config::program_name(&s.command[0]) == "restic"
    });
    if let (true, Some(code)) = (restic, outcome.exit_code)
        && let Some((_, why)) = RESTIC_FINAL_CODES.iter().find(|(c, _)| *c == code)
    {
        return Err(why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &str) -> Task {
        let text = format!(
            "tasks:\n  t:\n    schedule: '@daily'\n    command: [{command}]\n    retry: {{attempts: 2}}\n"
        );
        let vars = [("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")];
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = crate::config::Environment { vars, uid: 1000 };
        let checked = crate::config::parse(&text, std::path::Path::new("b.yaml"), &env);
        checked.config.expect("valid").tasks.remove(0)
    }

    #[test]
    fn restic_codes_that_retrying_cannot_fix_are_not_retried() {
        let failed = |code| Outcome::early(RunStatus::Failed, Some(code), "x");
        let restic = task("/usr/bin/restic, snapshots");
        assert_eq!(retry_verdict(&restic, &failed(12)), Err("restic: wrong password"));
        assert!(retry_verdict(&restic, &failed(10)).is_err());
        assert_eq!(retry_verdict(&restic, &failed(1)), Ok(()));
        // Another program's 12 is its own business.
        assert_eq!(retry_verdict(&task("rclone, sync"), &failed(12)), Ok(()));
        let timed_out = Outcome::early(RunStatus::Timeout, None, "x");
        assert_eq!(retry_verdict(&restic, &timed_out), Ok(()));
        for status in [RunStatus::Success, RunStatus::Refused, RunStatus::Cancelled] {
            assert!(retry_verdict(&restic, &Outcome::early(status, None, "x")).is_err());
        }
    }
}
