//! How a run's steps went, step by step, to the run's status, exit code and reason: which
//! step decides, which exit codes are warnings (`warning_exit_codes`), when the later steps
//! are skipped (not with `continue_on_error`, never with `parallel`).

use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tracing::warn;

use super::StepEnd;
use crate::config::Task;
use crate::protocol::RunStatus;

/// How a run's steps went, step by step: the status, exit code and reason of the run.
pub(super) struct Tally {
    steps: usize,
    pub(super) status: RunStatus,
    pub(super) exit_code: Option<i32>,
    pub(super) reason: String,
    /// What steps that succeeded left behind, for the record of a successful run.
    pub(super) notes: Vec<String>,
    pub(super) last_step: usize,
    /// The failure that decided the run is restic's own (its last stage, its exit code):
    /// its last words on stderr say why.
    pub(super) restic_failed: bool,
}

impl Tally {
    pub(super) fn new(steps: usize) -> Tally {
        Tally {
            steps,
            status: RunStatus::Success,
            exit_code: None,
            reason: String::from("all steps succeeded"),
            notes: Vec::new(),
            last_step: 0,
            restic_failed: false,
        }
    }

    /// Counts step `i`'s end; true when the later steps must not run (in sequence; with
    /// `parallel`, they all ran).
    pub(super) fn add(&mut self, task: &Task, i: usize, end: StepEnd, parallel: bool) -> bool {
        let steps = self.steps;
        let step = &task.steps[i];
        let label =
            if steps == 1 { String::new() } else { format!(" (step {} of {steps})", i + 1) };
        // The step that decides the run's exit code: the last one run, or (in parallel)
        // the last one that failed.
        if !parallel
            || !matches!(&end, StepEnd::Exited(st, ..) if st.success())
            || self.status.is_ok()
        {
            self.last_step = i;
        }
        match end {
            StepEnd::Exited(st, note, warnings_apply) => {
                let (mut code_text, by_restic) = exit_text(step, st, warnings_apply);
                if let Some(note) = note {
                    code_text = format!("{code_text} ({note})");
                    self.notes.push(format!("{code_text}{label}"));
                }
                let failed_before = !self.status.is_ok();
                if !(parallel && failed_before) {
                    self.exit_code = st.code();
                }
                match st.code() {
                    Some(0) => {}
                    Some(code) if warnings_apply && task.warning_exit_codes.contains(&code) => {
                        warn!("{code_text}{label}: counted as a warning (warning_exit_codes)");
                        if self.status == RunStatus::Success {
                            self.status = RunStatus::Warning;
                            self.reason = format!("{code_text}{label}, a warning");
                        }
                    }
                    _ if step.continue_on_error || parallel => {
                        if step.continue_on_error {
                            warn!("{code_text}{label}; continuing (continue_on_error)");
                        }
                        self.exit_code = st.code();
                        self.status = RunStatus::Failed;
                        self.reason = format!("{code_text}{label}");
                        self.restic_failed = by_restic;
                    }
                    _ => {
                        self.status = RunStatus::Failed;
                        self.reason = format!("{code_text}{label}");
                        self.restic_failed = by_restic;
                        if i + 1 < steps {
                            self.reason.push_str("; later steps skipped");
                        }
                        return true;
                    }
                }
                false
            }
            StepEnd::TimedOut(how) => {
                self.status = RunStatus::Timeout;
                self.reason = format!("timed out{label}; {how}");
                self.exit_code = None;
                true
            }
            StepEnd::Cancelled => {
                self.status = RunStatus::Cancelled;
                self.reason = format!("stopped by daemon shutdown{label}");
                self.exit_code = None;
                true
            }
            StepEnd::Refused(why) => {
                self.status = RunStatus::Refused;
                self.reason = format!("{why}{label}");
                self.exit_code = None;
                true
            }
            StepEnd::NotStarted(why) => {
                self.status = if i == 0 { RunStatus::Refused } else { RunStatus::Failed };
                self.reason = format!("{why}{label}");
                self.exit_code = None;
                !step.continue_on_error
            }
        }
    }
}

/// Runs `futures` at once on this task and gives their outputs in order.
pub(super) async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// "exit code 1"; with what restic's code means when restic (the last stage) decided:
/// "exit code 10 (restic: the repository does not exist)". The bool: restic decided.
fn exit_text(step: &crate::config::Step, st: ExitStatus, last_decided: bool) -> (String, bool) {
    let text = describe_exit(st);
    let restic = last_decided
        && step
            .stages()
            .last()
            .is_some_and(|argv| crate::config::program_name(&argv[0]) == "restic");
    match st.code().and_then(crate::restic::exit::meaning) {
        Some(meaning) if restic => (format!("{text} ({meaning})"), true),
        _ => (text, restic),
    }
}

/// "exit code 3", "killed by SIGTERM".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => {
            let name =
                Signal::try_from(sig).map_or("an unknown signal", nix::sys::signal::Signal::as_str);
            format!("killed by {name}")
        }
        _ => "ended".into(),
    }
}
