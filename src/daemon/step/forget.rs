//! What a `restic forget` step removed, known from the repository itself: the step's
//! repository is listed (`restic snapshots --json --no-lock`, with the step's global options,
//! environment, secrets and pin, and a token of its own) before and after the step, and the
//! snapshots the first list has and the second lacks are what the ledger records as
//! forgotten. So the docs' prune recipe (no `--json`) is known like any other, and a forget
//! that an append-only server refused removes nothing from the ledger's view, even where
//! restic 0.18 exits 0 and lists the snapshots as removed.
//!
//! A forget run through a wrapper script is not recognised: there, only what `--json`
//! printed counts. Another task's forget on the same repository between the two listings
//! would be counted as this one's (tasks that share a repository should share a `lock:`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Budgets, Found, Results, Runner, StepCall, StepEnd, Tail};
use crate::config::Step;
use crate::restic::Snapshot;

/// The label of the listing before the forget, and after it.
pub(super) const BEFORE: &str = "before-forget";
pub(super) const AFTER: &str = "after-forget";

/// How long the listing after a forget may take, whatever became of the forget.
const AFTER_BUDGET: Duration = Duration::from_secs(60);

/// A forget step's listing command, or `None` for any other step.
pub(super) fn listing(call: &StepCall<'_>) -> Option<Step> {
    if !call.step.pipe_into.is_empty() || call.hook.is_some() {
        return None;
    }
    let command = crate::restic::argv::listing_for_forget(&call.step.command)?;
    Some(Step {
        command,
        pipe_into: Vec::new(),
        env: call.step.env.clone(),
        continue_on_error: false,
        sha256: None,
        read_all: None,
    })
}

impl Runner {
    /// Lists the repository of a forget step (see the module's documentation); `None` when
    /// the listing did not succeed, or skipped a snapshot it could not load.
    pub(super) async fn list_for_forget(
        &self,
        call: &StepCall<'_>,
        listing: &Step,
        when: &'static str,
    ) -> Option<Vec<Snapshot>> {
        // The listing after the forget has a budget of its own: a forget stopped by its
        // timeout or by shutdown has removed snapshots all the same, and they must be known.
        let own = CancellationToken::new();
        let (deadline, cancel) = match when {
            AFTER => (Some(Instant::now() + AFTER_BUDGET), &own),
            _ => (call.deadline, call.cancel),
        };
        let listing_call = StepCall { step: listing, hook: Some(when), deadline, cancel, ..*call };
        let mut results = Results::default();
        let mut budgets = Budgets::default();
        let mut tail = Tail::new();
        let end =
            Box::pin(self.run_step(listing_call, &mut tail, &mut budgets, Some(results.found())))
                .await;
        budgets.finish(&call.task.name);
        // restic exits 0 when it skips a snapshot file it could not load: such a list would
        // make a snapshot that is there look removed.
        let skipped = tail.iter().any(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("could not load snapshot") || l.starts_with("ignoring")
        });
        match end {
            StepEnd::Exited(st, ..) if st.success() && !skipped => results.listings.listed,
            _ => None,
        }
    }
}

/// Records what the forget step removed: the snapshots listed `before` and not `after`,
/// in place of what its `--json` answer said (`json_from`: where this step's entries begin
/// in `found`); with a `--json` answer, only those it names (one gone from the list but not
/// named was removed by someone else meanwhile, and is not this forget's). Without both
/// lists, the `--json` answer stands, and the run says why.
pub(super) fn removed(
    found: &mut Found<'_>,
    json_from: usize,
    before: Option<Vec<Snapshot>>,
    after: Option<Vec<Snapshot>>,
) {
    let (Some(before), Some(after)) = (before, after) else {
        let note = "the repository could not be listed before and after the forget, so the ledger knows only what `--json` reported it removed";
        warn!("{note}");
        found.listings.notes.push(note.to_string());
        return;
    };
    let still: HashSet<&str> = after.iter().map(|s| s.id.as_str()).collect();
    let mut gone: Vec<Snapshot> =
        before.into_iter().filter(|s| !still.contains(s.id.as_str())).collect();
    let said = &found.listings.removed[json_from..];
    if !said.is_empty() {
        gone.retain(|g| said.iter().any(|s| g.id.starts_with(&s.id) || s.id.starts_with(&g.id)));
    }
    info!("the forget removed {} snapshots (listed before and after it)", gone.len());
    found.listings.removed.truncate(json_from);
    found.listings.removed.extend(gone);
}
