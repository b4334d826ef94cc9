//! `desktop: true` or `desktop: failures`: a notification on the user's desktop when a run
//! ends, or a task becomes overdue or recovers, shown by [`crate::desktop`].
//!
//! A daemon without a session (a system service, a headless server, a login without a
//! desktop) has no bus to show it on: that is a warning per notification, as for an
//! endpoint that does not answer, and never changes the run's result. A system daemon's
//! members see its notifications with `backupnizza watch --notify` in their own session.

use std::time::Duration;

use super::{RunFacts, retried};
use crate::desktop::{DESTINATION, Notice};

/// Shows the facts (already redacted) on the desktop. Blocking.
pub(super) fn deliver(facts: &RunFacts, timeout: Duration) {
    let notice =
        Notice::of(&facts.task, &facts.status, &facts.result(), &facts.reason, facts.failed());
    retried("desktop notification", DESTINATION, facts, || crate::desktop::show(&notice, timeout));
}
