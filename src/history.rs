//! Run history: an append-only JSON-lines file in `state_dir` (`history.jsonl`).
//!
//! Every run appends a start record when it starts and an end record when it ends; every
//! occurrence that does not run appends a skip record saying why; the daemon records its own
//! start and stop, so `explain` can tell "the daemon was not running". Each record is one
//! `write` of one line on an `O_APPEND` file followed by `fdatasync`, so a crash leaves at
//! most one torn last line, which readers skip (and the next writer terminates). Text from
//! child processes is redacted before it is written. Past 16 MiB the file is rotated once to
//! `history.jsonl.1`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::RunStatus;
use crate::schedule::timetable::Trigger;

pub(crate) const FILE_NAME: &str = "history.jsonl";
const ROTATE_AT: u64 = 16 * 1024 * 1024;

/// One line of the history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Record {
    /// A run started.
    Start {
        run_id: String,
        task: String,
        at: String,
        /// The occurrence it belongs to (RFC 3339), or none for a manual trigger.
        scheduled: Option<String>,
        trigger: Trigger,
    },
    /// A run ended.
    End {
        run_id: String,
        task: String,
        at: String,
        status: RunStatus,
        exit_code: Option<i32>,
        duration_ms: u64,
        /// A sentence on what happened ("exit code 1 in step 2", "timed out after 1h").
        reason: String,
        /// The last lines the run wrote on stderr, redacted.
        stderr_tail: Vec<String>,
    },
    /// Occurrences that did not run.
    Skip {
        task: String,
        at: String,
        /// The (first) occurrence skipped, RFC 3339.
        scheduled: String,
        /// How many occurrences this record covers.
        count: u64,
        reason: SkipReason,
        detail: String,
    },
    /// The daemon started or stopped.
    Daemon { event: DaemonEvent, at: String, pid: u32 },
}

/// Why occurrences did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SkipReason {
    /// The previous run was still going (`on_overlap: skip`, or a full queue).
    Overlap,
    /// More than `max_lateness` late.
    TooLate,
    /// Older missed occurrences folded into one catch-up run.
    Superseded,
}

impl SkipReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::TooLate => "too_late",
            SkipReason::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daemon's own life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DaemonEvent {
    Start,
    Stop,
}

impl std::fmt::Display for DaemonEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DaemonEvent::Start => "start",
            DaemonEvent::Stop => "stop",
        })
    }
}

impl Record {
    pub(crate) fn task(&self) -> Option<&str> {
        match self {
            Record::Start { task, .. } | Record::End { task, .. } | Record::Skip { task, .. } => {
                Some(task)
            }
            Record::Daemon { .. } => None,
        }
    }

    pub(crate) fn at(&self) -> &str {
        match self {
            Record::Start { at, .. }
            | Record::End { at, .. }
            | Record::Skip { at, .. }
            | Record::Daemon { at, .. } => at,
        }
    }
}

/// The writer; one per daemon.
pub(crate) struct History {
    path: PathBuf,
    file: File,
}

impl History {
    /// Opens (creating `state_dir` with mode 0700 and the file with 0600) for appending.
    pub(crate) fn open(state_dir: &Path) -> std::io::Result<History> {
        if !state_dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
        }
        let path = state_dir.join(FILE_NAME);
        let mut file = open_append(&path)?;
        // Terminate a line torn by a crash, so the next record starts on its own line.
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            let mut reader = File::open(&path)?;
            reader.seek(SeekFrom::Start(len - 1))?;
            reader.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(History { path, file })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record durably. Failures are returned for the caller to log; history is
    /// never a reason to fail a backup.
    pub(crate) fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        if self.file.metadata()?.len() > ROTATE_AT {
            let rotated = self.path.with_extension("jsonl.1");
            std::fs::rename(&self.path, rotated)?;
            self.file = open_append(&self.path)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reads every record (the rotated file first), skipping lines that do not parse (a torn
/// last line, or a record from a newer version).
pub(crate) fn read_all(state_dir: &Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for name in [format!("{FILE_NAME}.1"), FILE_NAME.to_string()] {
        let path = state_dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if let Ok(record) = serde_json::from_slice::<Record>(&line) {
                out.push(record);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str) -> Record {
        Record::Start {
            run_id: id.into(),
            task: "t".into(),
            at: "2026-01-01T00:00:00Z".into(),
            scheduled: None,
            trigger: Trigger::Manual,
        }
    }

    #[test]
    fn appends_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::open(dir.path()).unwrap();
        h.append(&start("a")).unwrap();
        drop(h);
        // A crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).unwrap();
        f.write_all(b"{\"type\":\"start\",\"run_id\":\"tor").unwrap();
        let mut h = History::open(dir.path()).unwrap();
        h.append(&start("b")).unwrap();
        let records = read_all(dir.path()).unwrap();
        assert_eq!(records, vec![start("a"), start("b")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
