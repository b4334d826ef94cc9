//! The machine around the daemon: the power and network conditions runs wait for
//! ([`conditions`]), the change signals that wake them ([`changes`]), the sleep inhibitor a
//! run holds ([`inhibit`]), systemd's notifications ([`systemd`]), and the orphans the
//! daemon adopts as child subreaper ([`reap_orphans`]).

pub(crate) mod changes;
pub(crate) mod conditions;
pub(crate) mod inhibit;
pub(crate) mod systemd;

use std::collections::HashSet;

/// Reaps orphaned task processes the daemon adopted as child subreaper. A zombie child that
/// is not a step process the runner waits for (`active`), seen on two checks in a row, is
/// an orphan (the runner's own children are reaped by tokio within milliseconds).
#[cfg(target_os = "linux")]
pub(crate) fn reap_orphans(active: &HashSet<u32>, previous: &mut HashSet<u32>) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    use nix::unistd::Pid;
    let zombies: HashSet<u32> = crate::sys::proc::own_children()
        .into_iter()
        .filter(|pid| {
            !active.contains(&(*pid as u32))
                && crate::sys::proc::stat(*pid as u32).is_none_or(|s| s.ended())
        })
        .map(|pid| pid as u32)
        .collect();
    for pid in zombies.intersection(previous) {
        let _ = waitpid(Pid::from_raw(*pid as i32), Some(WaitPidFlag::WNOHANG));
    }
    *previous = zombies;
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reap_orphans(_active: &HashSet<u32>, _previous: &mut HashSet<u32>) {}
