//! What a writer thread could not write yet ([`Backlog`]). The run history's records and
//! the snapshot ledger's entries are held in memory, in order and bounded, while their file
//! cannot be written, and tried again every [`RETRY`]. The trouble is logged once when it
//! starts and once when it ends, so a file that stays broken does not flood the log. Both
//! threads also wait for their next message the same way ([`receive`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

/// How often what a failure held back is tried again.
pub(super) const RETRY: Duration = Duration::from_secs(2);
/// Most items held in memory while their file cannot be written; past it the oldest are
/// dropped (and counted, and said).
pub(super) const MAX_HELD: usize = 10_000;

/// How the log names a file and what it holds.
pub(super) struct Names {
    /// "the run history".
    pub(super) file: &'static str,
    /// "records".
    pub(super) items: &'static str,
    /// "history records": what a count of lost items is of.
    pub(super) lost: &'static str,
}

/// The items a writer thread holds because its file failed, oldest first.
pub(super) struct Backlog<T> {
    names: Names,
    path: PathBuf,
    held: VecDeque<T>,
    /// Whether the last write failed: the trouble has been said, and its end will be.
    failing: bool,
    /// Items dropped past [`MAX_HELD`] since the trouble began.
    dropped: u64,
    /// Where `status` reads what is wrong with the file right now, if it does.
    problem: Option<watch::Sender<Option<String>>>,
}

impl<T> Backlog<T> {
    pub(super) fn new(
        names: Names,
        path: &Path,
        problem: Option<watch::Sender<Option<String>>>,
    ) -> Backlog<T> {
        Backlog {
            names,
            path: path.to_path_buf(),
            held: VecDeque::new(),
            failing: false,
            dropped: 0,
            problem,
        }
    }

    /// Queues an item behind those already held.
    pub(super) fn push(&mut self, item: T) {
        self.held.push_back(item);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// The items held, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.held.iter()
    }

    pub(super) fn failing(&self) -> bool {
        self.failing
    }

    /// Writes the items held, oldest first, until one fails; that one and those after it
    /// stay held (the oldest dropped past [`MAX_HELD`]).
    pub(super) fn flush(&mut self, mut write: impl FnMut(&T) -> std::io::Result<()>) {
        let backlog = self.held.len();
        while let Some(item) = self.held.front() {
            match write(item) {
                Ok(()) => {
                    self.held.pop_front();
                }
                Err(e) => {
                    self.fail(&e);
                    break;
                }
            }
        }
        while self.held.len() > MAX_HELD {
            self.held.pop_front();
            self.dropped += 1;
        }
        if self.held.is_empty() && self.failing {
            self.recover(backlog);
        }
    }

    /// Says at ERROR, the first time only, that the file cannot be written.
    fn fail(&mut self, e: &std::io::Error) {
        if self.failing {
            return;
        }
        self.failing = true;
        let Names { file, items, .. } = self.names;
        let why = format!("cannot write {file} {}: {e}", self.path.display());
        error!(
            "{why}; tasks keep running, and {items} are held in memory (up to {MAX_HELD}) and retried every {}s",
            RETRY.as_secs()
        );
        if let Some(problem) = &self.problem {
            problem.send_replace(Some(format!("{why}; {items} held in memory and retried")));
        }
    }

    /// Says that the file is written again, and what was lost meanwhile.
    fn recover(&mut self, backlog: usize) {
        self.failing = false;
        let Names { file, items, lost } = self.names;
        info!(file = %self.path.display(), "{file} is writable again; wrote {backlog} held {items}");
        if self.dropped > 0 {
            error!(file = %self.path.display(), "{} {lost} were lost while it could not be written", self.dropped);
            self.dropped = 0;
        }
        if let Some(problem) = &self.problem {
            problem.send_replace(None);
        }
    }

    /// At shutdown, with the file still failing: says what is lost.
    pub(super) fn abandon(&self) {
        let lost = self.names.lost;
        error!(file = %self.path.display(), "{} {lost} could not be written before shutdown", self.held.len());
    }
}

/// Waits for the next message (for as long as it takes while nothing is held, else up to
/// [`RETRY`]), then takes whatever else is waiting too, so a backlog is written in one pass.
/// Returns false once every sender is gone.
pub(super) fn receive<M>(queue: &Receiver<M>, idle: bool, mut take: impl FnMut(M)) -> bool {
    let next = if idle {
        queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
    } else {
        queue.recv_timeout(RETRY)
    };
    match next {
        Ok(message) => {
            take(message);
            while let Ok(message) = queue.try_recv() {
                take(message);
            }
            true
        }
        Err(RecvTimeoutError::Timeout) => true,
        Err(RecvTimeoutError::Disconnected) => false,
    }
}
