//! Task locks (`lock: NAME`): tasks that name the same lock never run at the same time,
//! normally because they use one restic repository (a `forget --prune` beside a `backup`
//! makes the backup fail on restic's exclusive lock). The set of locks is fixed at start,
//! one per name in the task file; a run takes its task's lock after its random delay, before
//! it starts, and holds it until its End record is written. Waiters are served in the order
//! they came (tokio's mutex is fair).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// One named lock, and who holds it (for the log line of whoever waits).
#[derive(Default)]
pub(crate) struct Lock {
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The task and run holding it.
    holder: Mutex<Option<(String, String)>>,
}

/// The lock held by a run; released when dropped.
pub(crate) struct Held {
    lock: Arc<Lock>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        *self.lock.holder.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Every lock the task file names.
#[derive(Default)]
pub(crate) struct Locks {
    by_name: HashMap<String, Arc<Lock>>,
}

/// How taking a lock went.
pub(crate) enum Taken {
    /// It was free.
    At(Held),
    /// It was held: by whom, when we asked.
    Busy { holder: Option<(String, String)> },
}

impl Locks {
    pub(crate) fn for_config(config: &Config) -> Locks {
        let by_name = config
            .tasks
            .iter()
            .filter_map(|t| t.lock.clone())
            .map(|n| (n, Arc::default()))
            .collect();
        Locks { by_name }
    }

    /// Takes `name` at once, or says who holds it.
    pub(crate) fn try_take(&self, name: &str, task: &str, run_id: &str) -> Option<Taken> {
        let lock = self.by_name.get(name)?.clone();
        if let Ok(guard) = lock.turn.clone().try_lock_owned() {
            return Some(Taken::At(Held::new(lock, guard, task, run_id)));
        }
        let holder = lock.holder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(Taken::Busy { holder: holder.clone() })
    }

    /// Waits for `name`, in turn.
    pub(crate) async fn take(&self, name: &str, task: &str, run_id: &str) -> Option<Held> {
        let lock = self.by_name.get(name)?.clone();
        let guard = lock.turn.clone().lock_owned().await;
        Some(Held::new(lock, guard, task, run_id))
    }
}

impl Held {
    fn new(
        lock: Arc<Lock>,
        guard: tokio::sync::OwnedMutexGuard<()>,
        task: &str,
        run_id: &str,
    ) -> Held {
        *lock.holder.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((task.to_string(), run_id.to_string()));
        Held { lock, _guard: guard }
    }
}
