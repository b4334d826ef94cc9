//! Who gets a connection: the limits a new connection is checked against before anything
//! is read from it (the daemon's total, per process, per member uid, and the share kept for
//! task processes), and the counts the accept loop keeps for them.

use std::collections::HashMap;

use super::Broker;

/// Connections one process may hold at once: `secretbox` needs one, a tool speaking the
/// protocol itself a few; more is a flood.
pub(crate) const PER_PROCESS: usize = 64;
/// Connections kept for task processes: processes outside the tasks (a flood from many of
/// them) fill at most the rest, so a task's redemption always finds room.
pub(crate) const KEPT_FOR_TASKS: usize = 256;
/// Connections all processes of one `control_group` member (a uid other than the
/// daemon's) may hold at once: `status`, `history` and a few `trigger --follow` need a
/// handful; many processes of one member are still one member.
pub(crate) const PER_MEMBER: usize = 32;

/// Which limit a new connection ran into.
pub(super) fn over_limit(
    broker: &Broker,
    open: usize,
    (of_this_process, of_this_member): (usize, Option<usize>),
    pid: Option<u32>,
) -> Option<&'static str> {
    let max = broker.limits().max_connections;
    if open >= max {
        return Some("the daemon's connection limit");
    }
    if of_this_process >= PER_PROCESS {
        return Some("the per-process connection limit");
    }
    if of_this_member.is_some_and(|n| n >= PER_MEMBER) {
        return Some("the per-member connection limit");
    }
    // Only near the limit is the ancestry read (it costs a walk of /proc).
    if open >= max.saturating_sub(KEPT_FOR_TASKS) && !pid.is_some_and(|p| broker.is_task_process(p))
    {
        return Some("the share of connections kept for task processes");
    }
    None
}

/// One connection fewer for `key` (the count goes when it reaches zero).
pub(super) fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}
