//! The daemon's two files, each written by one thread of its own so that `fdatasync` and
//! renames never block the async worker threads: the run history (every record, in the
//! order sent) and the metrics text file (only the latest text matters, so a backlog
//! collapses to one write).
//!
//! Both are handles over channels. Sending never blocks and never fails the caller; the
//! threads log their own errors. Once every writer is dropped, [`HistoryClosed::wait`] waits
//! until every record sent is on disk, which shutdown relies on for its End and stop records.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::history::{History, Record};

/// Sends records to the history thread. Cloned into every run.
#[derive(Clone)]
pub(crate) struct HistoryWriter {
    records: mpsc::UnboundedSender<(Record, Option<oneshot::Sender<()>>)>,
}

/// Resolves when the history thread has written everything and exited.
pub(crate) struct HistoryClosed(oneshot::Receiver<()>);

impl HistoryWriter {
    /// Starts the thread that owns `history`.
    pub(crate) fn start(mut history: History) -> std::io::Result<(HistoryWriter, HistoryClosed)> {
        let (records, mut queue) =
            mpsc::unbounded_channel::<(Record, Option<oneshot::Sender<()>>)>();
        let (done, closed) = oneshot::channel();
        std::thread::Builder::new().name("history".into()).spawn(move || {
            while let Some((record, written)) = queue.blocking_recv() {
                if let Err(e) = history.append(&record) {
                    error!(file = %history.path().display(), error = %e, "cannot write run history");
                }
                if let Some(written) = written {
                    let _ = written.send(());
                }
            }
            let _ = done.send(());
        })?;
        Ok((HistoryWriter { records }, HistoryClosed(closed)))
    }

    /// Queues a record; it is written (and synced) in the order sent.
    pub(crate) fn append(&self, record: Record) {
        self.send(record, None);
    }

    /// Queues a record and waits until the thread has written it (or failed to, and said
    /// so): a run reports its end only once its End record is on disk, so a client that saw
    /// the run end finds the record.
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

/// Sends metrics texts to the metrics thread; only the latest is written.
pub(crate) struct MetricsWriter {
    latest: watch::Sender<Option<(u64, String)>>,
    written: watch::Receiver<u64>,
    generation: u64,
}

impl MetricsWriter {
    /// Starts the thread that rewrites `path` atomically whenever a newer text arrives.
    pub(crate) fn start(path: PathBuf) -> std::io::Result<MetricsWriter> {
        let (latest, mut texts) = watch::channel::<Option<(u64, String)>>(None);
        let (done, written) = watch::channel(0u64);
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build();
            let Ok(runtime) = runtime else { return };
            while runtime.block_on(texts.changed()).is_ok() {
                let Some((generation, text)) = texts.borrow_and_update().clone() else { continue };
                if let Err(e) = super::metrics::write_atomic(&path, &text) {
                    warn!(file = %path.display(), error = %e, "cannot write the metrics file");
                }
                let _ = done.send(generation);
            }
        })?;
        Ok(MetricsWriter { latest, written, generation: 0 })
    }

    /// Queues a text, replacing any text not yet written.
    pub(crate) fn write(&mut self, text: String) {
        self.generation += 1;
        let _ = self.latest.send(Some((self.generation, text)));
    }

    /// Queues a text and waits until it (or a later one) is on disk.
    pub(crate) async fn write_and_wait(&mut self, text: String) {
        self.write(text);
        let want = self.generation;
        let _ = self.written.wait_for(|g| *g >= want).await;
    }
}
