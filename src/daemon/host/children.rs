//! The daemon's own children, as the orphan reaper must know them. Every child the daemon
//! starts and waits for itself (a step's processes, a hook, a notify command) is registered
//! here from before its spawn until it is reaped; the reaper ([`super::reap_orphans`]) takes
//! only the other children: orphans it adopted as child subreaper, and the guardian.
//!
//! The registration starts before the spawn because a fast process (`true`) can exit, and
//! be seen as a zombie, before its pid is known: while any spawn is in progress the reaper
//! takes nothing. Otherwise it could reap a child a moment before tokio does, and the
//! step's wait would fail with "No child processes".
//!
//! It is process-wide state because children are: whatever part of the daemon spawns one,
//! the reaper must see it.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

struct Registry {
    /// Spawns in progress.
    spawning: usize,
    /// Children started and not yet reaped by whoever started them.
    owned: BTreeSet<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { spawning: 0, owned: BTreeSet::new() });

fn registry() -> MutexGuard<'static, Registry> {
    // Only counters and a set change under this lock: a panic cannot leave them torn.
    REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spawn in progress; [`Spawning::started`] once the child's pid is known. Dropped without
/// it (the spawn failed), it just ends.
pub(crate) struct Spawning(());

/// A child the daemon waits for itself; dropped once it has reaped the child.
#[derive(Debug)]
pub(crate) struct Owned(u32);

/// Marks a spawn as in progress, until the child is [`Spawning::started`] or the guard is
/// dropped.
pub(crate) fn spawning() -> Spawning {
    registry().spawning += 1;
    Spawning(())
}

impl Spawning {
    /// The child started as `pid`: it is the spawner's to reap.
    pub(crate) fn started(self, pid: u32) -> Owned {
        registry().owned.insert(pid);
        // Only now, once the pid is owned: there is no moment when the child is neither.
        drop(self);
        Owned(pid)
    }
}

impl Drop for Spawning {
    fn drop(&mut self) {
        registry().spawning -= 1;
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        registry().owned.remove(&self.0);
    }
}

/// The children the daemon waits for itself, or `None` while a spawn is in progress (then
/// no child may be taken for an orphan).
#[cfg(target_os = "linux")]
pub(crate) fn owned() -> Option<BTreeSet<u32>> {
    let registry = registry();
    (registry.spawning == 0).then(|| registry.owned.clone())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The owned set once no spawn is in progress (other tests may be spawning).
    fn settled() -> BTreeSet<u32> {
        loop {
            if let Some(set) = owned() {
                return set;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_child_is_owned_from_before_its_spawn_until_it_is_reaped() {
        // Other tests of this process may spawn meanwhile: only what this one holds counts.
        let spawning = spawning();
        assert_eq!(owned(), None, "nothing is an orphan while a spawn is in progress");
        let pid = u32::MAX - 7;
        let owned_child = spawning.started(pid);
        let now = settled();
        assert!(now.contains(&pid));
        drop(owned_child);
        let after = settled();
        assert!(!after.contains(&pid));
    }
}
