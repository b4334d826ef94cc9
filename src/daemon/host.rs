//! The machine around the daemon: the power and network conditions runs wait for
//! ([`conditions`]), the change signals that wake them ([`changes`]), the sleep inhibitor a
//! run holds ([`inhibit`]), systemd's notifications ([`systemd`]), what wakes the idle
//! daemon ([`sentinel`]), and the daemon's children: those it waits for itself
//! ([`children`]) and the orphans it adopts as child subreaper ([`reap_orphans`]).

pub(crate) mod changes;
pub(crate) mod children;
pub(crate) mod conditions;
pub(crate) mod inhibit;
pub(crate) mod sentinel;
pub(crate) mod systemd;

use std::collections::HashMap;
use std::time::Instant;

/// How long a zombie child must have been one before the reaper takes it for an orphan:
/// longer than the moment between a child's exit and its spawner's wait, however the
/// daemon's threads were scheduled (a daemon stopped and continued runs all its timers at
/// once). (Elsewhere there is no reaper; the state owner still names this wait.)
pub(crate) const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reaps orphaned task processes the daemon adopted as child subreaper: a zombie child that
/// no part of the daemon waits for ([`children`]), a zombie for [`ORPHAN_AGE`] at least.
/// `zombies` holds when each was first seen, from one call to the next. Returns whether to
/// look again after [`ORPHAN_AGE`] without a new SIGCHLD: a zombie is waiting out its age,
/// or a spawn in progress kept the reaper from looking at all.
#[cfg(target_os = "linux")]
pub(crate) fn reap_orphans(zombies: &mut HashMap<u32, Instant>) -> bool {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    use nix::unistd::Pid;
    // A spawn in progress may have a child that already exited: reap nothing now.
    let Some(owned) = children::owned() else { return true };
    let now = Instant::now();
    let seen: std::collections::HashSet<u32> = crate::sys::proc::own_children()
        .into_iter()
        .map(|pid| pid as u32)
        .filter(|pid| {
            !owned.contains(pid) && crate::sys::proc::stat(*pid).is_none_or(|s| s.ended())
        })
        .collect();
    zombies.retain(|pid, _| seen.contains(pid));
    for pid in &seen {
        let first = *zombies.entry(*pid).or_insert(now);
        if now.duration_since(first) >= ORPHAN_AGE {
            let _ = waitpid(Pid::from_raw(*pid as i32), Some(WaitPidFlag::WNOHANG));
            zombies.remove(pid);
        }
    }
    !zombies.is_empty()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reap_orphans(_zombies: &mut HashMap<u32, Instant>) -> bool {
    false
}
