//! The daemon's files, each written by one thread of its own so that `fdatasync` and
//! renames never block the async worker threads: the run history (every record, in the
//! order sent), the snapshot ledger (every entry, in the order sent; an audit reads it
//! through the same thread) and the metrics text file (only the latest text matters, so a
//! backlog collapses to one write).
//!
//! Each is a handle over a channel. Sending never blocks and never fails the caller; the
//! threads log their own errors. What the history or the ledger cannot write is held and
//! retried ([`Backlog`]). Once every writer is dropped, [`HistoryClosed::wait`] and
//! [`LedgerClosed::wait`] wait until everything sent is on disk, which shutdown relies on
//! for its End and stop records.

use std::path::PathBuf;

use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use super::backlog::{Backlog, Names, receive};
use crate::history::{History, Record};
use crate::ledger::{Entry, Ledger, LedgerFile};

/// Sends records to the history thread. Cloned into every run.
#[derive(Clone)]
pub(crate) struct HistoryWriter {
    records: std::sync::mpsc::Sender<(Record, Option<oneshot::Sender<()>>)>,
}

/// Resolves when the history thread has written everything and exited.
pub(crate) struct HistoryClosed(oneshot::Receiver<()>);

const HISTORY: Names = Names { file: "the run history", items: "records", lost: "history records" };

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
            write_history(history, &queue, problem);
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

/// The history thread: appends in order; on failure keeps the records and tries again
/// (see [`Backlog`]).
fn write_history(
    mut history: History,
    queue: &std::sync::mpsc::Receiver<(Record, Option<oneshot::Sender<()>>)>,
    problem: watch::Sender<Option<String>>,
) {
    let mut backlog = Backlog::new(HISTORY, history.path(), Some(problem));
    let mut open = true;
    while open || !backlog.is_empty() {
        let mut acks = Vec::new();
        open = receive(queue, backlog.is_empty(), |(record, ack)| {
            backlog.push(record);
            acks.extend(ack);
        });
        backlog.flush(|record| history.append(record));
        for ack in acks {
            let _ = ack.send(());
        }
        if !open && backlog.failing() {
            // Shutting down with a history that still fails: say what is lost, and stop.
            backlog.abandon();
            return;
        }
    }
}

/// Sends ledger entries to the ledger thread, and asks it for the ledger. Cloned into
/// every run.
#[derive(Clone)]
pub(crate) struct LedgerWriter {
    requests: std::sync::mpsc::Sender<LedgerRequest>,
}

/// Resolves when the ledger thread has written everything and exited.
pub(crate) struct LedgerClosed(oneshot::Receiver<()>);

/// Entries to append after everything sent before; with `load`, the ledger to read after.
struct LedgerRequest {
    entries: Vec<Entry>,
    load: bool,
    done: oneshot::Sender<LedgerAnswer>,
}

/// What the ledger thread answers once it has tried to write a request's entries.
struct LedgerAnswer {
    /// Entries held in memory, not on disk yet.
    held: usize,
    /// The ledger, when asked for.
    ledger: Option<std::io::Result<Ledger>>,
}

const LEDGER: Names =
    Names { file: "the snapshot ledger", items: "entries", lost: "ledger entries" };

impl LedgerWriter {
    /// Starts the thread that owns `file`.
    pub(crate) fn start(file: LedgerFile) -> std::io::Result<(LedgerWriter, LedgerClosed)> {
        let (requests, queue) = std::sync::mpsc::channel();
        let (done, closed) = oneshot::channel();
        std::thread::Builder::new().name("ledger".into()).spawn(move || {
            write_ledger(file, &queue);
            let _ = done.send(());
        })?;
        Ok((LedgerWriter { requests }, LedgerClosed(closed)))
    }

    /// Appends `entries`, after everything sent before, and answers once the thread has
    /// tried: how many entries it holds in memory because the file cannot be written.
    pub(crate) async fn append(&self, entries: Vec<Entry>) -> usize {
        self.ask(entries, false).await.held
    }

    /// Appends `entries`, then reads the file and folds in the entries held in memory: the
    /// ledger an audit compares with, in which the daemon's own entries count whether or
    /// not they have reached the disk. Also answers how many are held.
    pub(crate) async fn append_and_load(
        &self,
        entries: Vec<Entry>,
    ) -> (usize, std::io::Result<Ledger>) {
        let answer = self.ask(entries, true).await;
        let stopped = || Err(std::io::Error::other("the ledger writer has stopped"));
        (answer.held, answer.ledger.unwrap_or_else(stopped))
    }

    async fn ask(&self, entries: Vec<Entry>, load: bool) -> LedgerAnswer {
        let (done, answer) = oneshot::channel();
        let n = entries.len();
        let _ = self.requests.send(LedgerRequest { entries, load, done });
        answer.await.unwrap_or_else(|_| {
            // Only after the thread died, which it does not do while a sender lives.
            error!("the ledger writer has stopped; {n} entries were lost");
            LedgerAnswer { held: 0, ledger: None }
        })
    }
}

impl LedgerClosed {
    /// Waits for the thread to drain its queue; it exits once every writer is dropped.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

/// The ledger thread: appends in order; on failure keeps the entries and tries again (see
/// [`Backlog`]); reads the ledger for an audit once the entries sent before are written or
/// held.
fn write_ledger(mut file: LedgerFile, queue: &std::sync::mpsc::Receiver<LedgerRequest>) {
    let mut backlog = Backlog::new(LEDGER, file.path(), None);
    let mut open = true;
    while open || !backlog.is_empty() {
        let mut asked = Vec::new();
        open = receive(queue, backlog.is_empty(), |mut request: LedgerRequest| {
            for entry in std::mem::take(&mut request.entries) {
                backlog.push(entry);
            }
            asked.push(request);
        });
        backlog.flush(|entry| file.append(entry));
        for request in asked {
            let ledger = request.load.then(|| {
                let mut ledger = file.load()?;
                backlog.iter().for_each(|entry| ledger.add(entry.clone()));
                Ok(ledger)
            });
            let _ = request.done.send(LedgerAnswer { held: backlog.len(), ledger });
        }
        if !open && backlog.failing() {
            backlog.abandon();
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn saved(id: &str) -> Entry {
        Entry::Saved {
            task: "backup".into(),
            run_id: "r".into(),
            at: "2026-12-02T10:00:00Z".into(),
            snapshot_id: id.into(),
            partial: false,
            status: None,
        }
    }

    /// Regression: with a directory in the ledger's place, an entry was dropped after one
    /// ERROR, and the next audit called the daemon's own snapshot forged.
    #[tokio::test]
    async fn ledger_entries_that_cannot_be_written_are_held_and_written_when_the_file_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::ledger::FILE_NAME);
        std::fs::create_dir(&path).unwrap();
        let (writer, closed) = LedgerWriter::start(LedgerFile::new(dir.path())).unwrap();
        assert_eq!(writer.append(vec![saved("aaaaaaaa")]).await, 1);
        let (held, loaded) = writer.append_and_load(vec![saved("bbbbbbbb")]).await;
        assert_eq!(held, 2);
        let e = loaded.unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "not an empty ledger: {e}");

        // Repaired: the retry writes both, in order, each a line of its own.
        std::fs::remove_dir(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break text;
            }
            assert!(Instant::now() < deadline, "the held entries were not written: {text:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let lines: Vec<Entry> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, [saved("aaaaaaaa"), saved("bbbbbbbb")]);
        let (held, loaded) = writer.append_and_load(Vec::new()).await;
        assert_eq!(held, 0);
        assert!(loaded.unwrap().unreadable_summary().is_none());
        drop(writer);
        closed.wait().await;
    }
}
