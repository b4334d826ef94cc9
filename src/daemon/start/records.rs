//! The records [`serve`](super::serve) opens at start and closes at shutdown: the run
//! history (and what it held at start), the snapshot ledger, the metrics file and the tasks'
//! output files, each with a writer thread of its own ([`crate::daemon::records`]). Trouble
//! with any of them never stops backups.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{error, warn};

use crate::config::Config;
use crate::daemon::output::files::{OutputClosed, OutputWriter};
use crate::daemon::records::writers::{
    HistoryClosed, HistoryWriter, LedgerClosed, LedgerWriter, MetricsWriter,
};
use crate::history::{self, DaemonEvent, History, Record};
use crate::ledger::LedgerFile;

/// The records the daemon keeps: the history (and what it held at start), the snapshot
/// ledger, the metrics file, and the tasks' output files, each with a writer thread of its
/// own.
pub(super) struct Records {
    pub(super) history: HistoryWriter,
    history_closed: HistoryClosed,
    pub(super) ledger: LedgerWriter,
    ledger_closed: LedgerClosed,
    /// What the history held at start.
    pub(super) past: Vec<Record>,
    /// What is wrong with the history right now, from its writer thread.
    pub(super) health: watch::Receiver<Option<String>>,
    pub(super) metrics: Option<MetricsWriter>,
    pub(super) outputs: Option<OutputWriter>,
    outputs_closed: Option<OutputClosed>,
}

impl Records {
    /// Opens the history and starts the writers. History trouble never stops backups: the
    /// writer holds records and retries, `status` shows the problem, and the past is what
    /// could be read.
    pub(super) fn open(config: &Config) -> anyhow::Result<Records> {
        let mut history = History::new(&config.state_dir);
        if let Err(e) = history.open() {
            error!(file = %history.path().display(), error = %e, "cannot open the run history; tasks run anyway, and records are held in memory and retried");
        }
        let past = read_past(&config.state_dir);
        let (problem, health) = watch::channel(None);
        let (history, history_closed) =
            HistoryWriter::start(history, problem).context("cannot start the history writer")?;
        let (ledger, ledger_closed) = LedgerWriter::start(LedgerFile::new(&config.state_dir))
            .context("cannot start the ledger writer")?;
        // Refused once at start, rather than a warning after every run.
        if let Some(dir) = config.missing_metrics_dir() {
            return Err(crate::exit::Exit::usage(format!(
                "metrics_textfile: directory {} does not exist: create it, or change the path (`backupnizza validate` checks it too)",
                dir.display()
            ))
            .into());
        }
        let metrics = match &config.metrics_textfile {
            Some(path) => Some(
                MetricsWriter::start(path.clone()).context("cannot start the metrics writer")?,
            ),
            None => None,
        };
        // Only a daemon with output files has their writer thread.
        let (outputs, outputs_closed) = if config.tasks.iter().any(|t| t.output_file.is_some()) {
            let (writer, closed) =
                OutputWriter::start().context("cannot start the output-file writer")?;
            (Some(writer), Some(closed))
        } else {
            (None, None)
        };
        Ok(Records {
            history,
            history_closed,
            ledger,
            ledger_closed,
            past,
            health,
            metrics,
            outputs,
            outputs_closed,
        })
    }

    /// Writes the daemon's Stop record and flushes every writer, each within `wait`.
    pub(super) async fn close(self, at: String, wait: Duration) {
        let Records {
            history, history_closed, ledger, ledger_closed, outputs, outputs_closed, ..
        } = self;
        history.append(Record::Daemon { event: DaemonEvent::Stop, at, pid: std::process::id() });
        drop(history);
        drop(ledger);
        drop(outputs);
        if tokio::time::timeout(wait, history_closed.wait()).await.is_err() {
            error!("the run history could not be flushed at shutdown");
        }
        if tokio::time::timeout(wait, ledger_closed.wait()).await.is_err() {
            error!("the snapshot ledger could not be flushed at shutdown");
        }
        if let Some(closed) = outputs_closed
            && tokio::time::timeout(wait, closed.wait()).await.is_err()
        {
            error!("the output files could not be flushed at shutdown");
        }
    }
}

/// The history as it stands at start; without it, no catch-up of downtime and no last
/// results, but the daemon starts.
fn read_past(state_dir: &Path) -> Vec<Record> {
    match history::read_all(state_dir) {
        Ok(loaded) => {
            if let Some(summary) = loaded.bad_lines_summary() {
                warn!("run history: {summary}");
            }
            loaded.records
        }
        Err(e) => {
            error!(dir = %state_dir.display(), error = %e, "cannot read the run history; starting without it (no catch-up of downtime, no last results)");
            Vec::new()
        }
    }
}
