//! The daemon's two files, each written by one thread of its own so that `fdatasync` and
//! renames never block the async worker threads: the run history (every record, in the
//! order sent) and the metrics text file (only the latest text matters, so a backlog
//! collapses to one write).
//!
//! Both are handles over channels. Sending never blocks and never fails the caller; the
//! threads log their own errors. Once every writer is dropped, [`HistoryClosed::wait`] waits
//! until every record sent is on disk, which shutdown relies on for its End and stop records.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::history::{History, Record};

/// Sends records to the history thread. Cloned into every run.
#[derive(Clone)]
pub(crate) struct HistoryWriter {
    records: std::sync::mpsc::Sender<(Record, Option<oneshot::Sender<()>>)>,
}

/// Resolves when the history thread has written everything and exited.
pub(crate) struct HistoryClosed(oneshot::Receiver<()>);

/// How often records held back by a failure are tried again.
const RETRY: Duration = Duration::from_secs(2);
/// Most records held in memory while the history cannot be written; past it the oldest are
/// dropped (and counted, and said).
const MAX_HELD: usize = 10_000;

impl HistoryWriter {
    /// Starts the thread that owns `history`. `problem` carries what is wrong with the
    /// history right now (for `status`), or `None` while it is written normally.
    pub(crate) fn start(
        history: History,
        problem: watch::Sender<Option<String>>,
    ) -> std::io::Result<(HistoryWriter, HistoryClosed)> {
        let (records, queue) = std::sync::mpsc::channel();
        let (done, closed) = oneshot::channel();
        std::thread::Builder::new().name("history".into()).spawn(move || {
            write_history(history, &queue, &problem);
            let _ = done.send(());
        })?;
        Ok((HistoryWriter { records }, HistoryClosed(closed)))
    }

    /// Queues a record; it is written (and synced) in the order sent.
    pub(crate) fn append(&self, record: Record) {
        self.send(record, None);
    }

    /// Queues a record and waits until the thread has tried to write it: a run reports its
    /// end only once its End record is on disk (or the history is known to be failing, and
    /// the record is held for a retry), so a client that saw the run end finds the record.
    pub(crate) async fn append_and_wait(&self, record: Record) {
        let (written, done) = oneshot::channel();
        self.send(record, Some(written));
        let _ = done.await;
    }

    fn send(&self, record: Record, written: Option<oneshot::Sender<()>>) {
        if self.records.send((record, written)).is_err() {
            // Only after the thread died, which it does not do while a sender lives.
            error!("the history writer has stopped; a record was lost");
        }
    }
}

impl HistoryClosed {
    /// Waits for the thread to drain its queue; it exits once every writer is dropped.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

/// The history thread: appends in order; on failure keeps the records (bounded) and tries
/// again every [`RETRY`], saying so once at ERROR and once more when it recovers.
fn write_history(
    mut history: History,
    queue: &std::sync::mpsc::Receiver<(Record, Option<oneshot::Sender<()>>)>,
    problem: &watch::Sender<Option<String>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut held: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    let mut failing: Option<String> = None;
    let mut dropped = 0u64;
    let mut open = true;
    while open || !held.is_empty() {
        let next = if held.is_empty() {
            queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            queue.recv_timeout(RETRY)
        };
        let mut acks = Vec::new();
        match next {
            Ok((record, ack)) => {
                held.push_back(record);
                acks.extend(ack);
                // Take whatever else is waiting, so a backlog is written in one pass.
                while let Ok((record, ack)) = queue.try_recv() {
                    held.push_back(record);
                    acks.extend(ack);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let backlog = held.len();
        while let Some(record) = held.front() {
            match history.append(record) {
                Ok(()) => {
                    held.pop_front();
                }
                Err(e) => {
                    let why =
                        format!("cannot write the run history {}: {e}", history.path().display());
                    if failing.is_none() {
                        error!(
                            "{why}; tasks keep running, and records are held in memory (up to {MAX_HELD}) and retried every {}s",
                            RETRY.as_secs()
                        );
                        problem.send_replace(Some(format!(
                            "{why}; records held in memory and retried"
                        )));
                    }
                    failing = Some(why);
                    break;
                }
            }
        }
        while held.len() > MAX_HELD {
            held.pop_front();
            dropped += 1;
        }
        if held.is_empty() && failing.take().is_some() {
            info!(file = %history.path().display(), "the run history is writable again; wrote {backlog} held records");
            if dropped > 0 {
                error!(file = %history.path().display(), "{dropped} history records were lost while it could not be written");
                dropped = 0;
            }
            problem.send_replace(None);
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if !open && failing.is_some() {
            // Shutting down with a history that still fails: say what is lost, and stop.
            error!(file = %history.path().display(), "{} history records could not be written before shutdown", held.len());
            return;
        }
    }
}

/// Sends metrics texts to the metrics thread; only the latest is written.
pub(crate) struct MetricsWriter {
    texts: std::sync::mpsc::Sender<(u64, String)>,
    written: watch::Receiver<u64>,
    generation: u64,
}

impl MetricsWriter {
    /// Starts the thread that rewrites `path` atomically whenever a newer text arrives.
    pub(crate) fn start(path: PathBuf) -> std::io::Result<MetricsWriter> {
        let (texts, queue) = std::sync::mpsc::channel::<(u64, String)>();
        let (done, written) = watch::channel(0u64);
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            while let Ok(mut latest) = queue.recv() {
                // Only the newest text matters: skip the ones a backlog made stale.
                while let Ok(newer) = queue.try_recv() {
                    latest = newer;
                }
                let (generation, text) = latest;
                if let Err(e) = super::metrics::write_atomic(&path, &text) {
                    warn!(file = %path.display(), error = %e, "cannot write the metrics file");
                }
                let _ = done.send(generation);
            }
        })?;
        Ok(MetricsWriter { texts, written, generation: 0 })
    }

    /// Queues a text, replacing any text not yet written.
    pub(crate) fn write(&mut self, text: String) {
        self.generation += 1;
        let _ = self.texts.send((self.generation, text));
    }

    /// Queues a text and waits until it (or a later one) is on disk.
    pub(crate) async fn write_and_wait(&mut self, text: String) {
        self.write(text);
        let want = self.generation;
        let _ = self.written.wait_for(|g| *g >= want).await;
    }
}
