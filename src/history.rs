//! Run history: an append-only JSON-lines file in `state_dir` (`history.jsonl`).
//!
//! Every run appends a start record when it starts and an end record when it ends; every
//! occurrence that does not run appends a skip record saying why; the daemon records its own
//! start and stop, so `explain` can tell "the daemon was not running". Each record is one
//! `write` of one line on an `O_APPEND` file followed by `fdatasync`, so a crash leaves at
//! most one torn last line, which readers skip (and the next writer terminates); that file
//! machinery is [`crate::journal`]'s, shared with the snapshot ledger. Text from
//! child processes is redacted before it is written. A write that fails part-way (a full
//! disk) is cut back to the last complete record, and the daemon keeps the records it could
//! not write and retries them (see `daemon::writers`). Past 16 MiB the file is rotated to
//! `history.jsonl.1`, older generations moving up, five kept; readers read them all, oldest
//! first, and report the lines they could not parse.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, Rotation, generation_of, line_numbers, read_lines};
use crate::protocol::RunStatus;
use crate::restic::BackupSummary;
use crate::schedule::timetable::Trigger;

pub(crate) const FILE_NAME: &str = "history.jsonl";
const ROTATE_AT: u64 = 16 * 1024 * 1024;

/// What an audit found wrong with one snapshot (or with the set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Finding {
    /// `missing`, `replaced`, `differs`, `unrecorded` or `stale`.
    pub kind: String,
    pub snapshot_id: Option<String>,
    /// A sentence for people.
    pub detail: String,
}

/// What a verifier's run proved (`verify:`): the End record's `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Verification {
    /// The snapshots verified, as `TASK:ID`.
    pub snapshots: Vec<String>,
    /// The spot check's seed (`verify.seed` repeats its choice of files).
    pub seed: u64,
    /// Files chosen for the spot check.
    pub sampled: u64,
    /// Files whose restored content matched the source.
    pub matched: u64,
    pub mismatched: u64,
    /// Chosen files not compared: changed or gone since the snapshot.
    pub skipped: u64,
    /// Canaries compared between the newest snapshot and the one before.
    pub canaries: u64,
    /// The data check's subset read this run, `n/K`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// When the last full cycle of subsets completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_completed: Option<String>,
    /// The restore drill's count of what it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
    /// What failed, one sentence each (paths redacted and cut).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A restore drill's counts: what it restored, and what the snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Drill {
    pub files: u64,
    pub bytes: u64,
    pub expected_files: u64,
    pub expected_bytes: u64,
    /// restic's own `restore --verify` read every file back (restic 0.17 and later).
    pub restic_verified: bool,
}

/// How a run ended: the End record's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunEnd {
    pub(crate) run_id: String,
    pub(crate) task: String,
    pub(crate) at: String,
    pub(crate) status: RunStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) duration_ms: u64,
    /// A sentence on what happened ("exit code 1 in step 2", "timed out after 1h").
    pub(crate) reason: String,
    /// The last lines the run wrote on stderr, redacted.
    pub(crate) stderr_tail: Vec<String>,
    /// What its `restic backup --json` steps reported (snapshot ids and figures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) backups: Vec<BackupSummary>,
    /// The attempts before the last one, for a task with `retry:` (the fields above are
    /// the last attempt's, and the whole run's duration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) attempts: Vec<Attempt>,
    /// What the task's audit found (snapshot ids and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) findings: Vec<Finding>,
    /// What a verifier's run proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) verify: Option<Verification>,
}

impl RunEnd {
    /// The end of a run that ran no step (cancelled while queued, interrupted by a daemon
    /// that died): no exit code, no output, no results, no time spent.
    pub(crate) fn without_steps(
        run_id: String,
        task: String,
        at: String,
        status: RunStatus,
        reason: String,
    ) -> RunEnd {
        RunEnd {
            run_id,
            task,
            at,
            status,
            exit_code: None,
            duration_ms: 0,
            reason,
            stderr_tail: Vec::new(),
            backups: Vec::new(),
            attempts: Vec::new(),
            findings: Vec::new(),
            verify: None,
        }
    }
}

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
        /// The run's cgroup, if it has one: where a restarted daemon looks for leftovers of
        /// a run the previous one did not end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        /// How long the run waited for its task's `lock:` before it started, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_wait: Option<LockWait>,
        /// How long the run waited for its run conditions (`when:`, `blackout:`), and why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deferred: Option<Deferred>,
    },
    /// A run ended.
    End(RunEnd),
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

impl Record {
    /// The record with its free text (a run's reason and stderr tail, a skip's detail)
    /// masked raw, before JSON escapes it: callers redact what they pass, and this makes the
    /// file safe whatever they pass. The serialized line is not masked again: every string in
    /// it has been, and masking JSON text could cut a record's structure.
    pub(crate) fn redacted(&self) -> Record {
        let mut record = self.clone();
        // A run's record is made of its task's output: masked with that task's own secrets.
        let task = record.task().map(str::to_string);
        let mask = |text: &mut String| {
            *text = crate::redact::as_task(task.as_deref(), || {
                crate::redact::redact(text).into_owned()
            });
        };
        match &mut record {
            Record::End(RunEnd { reason, stderr_tail, attempts, findings, verify, .. }) => {
                mask(reason);
                if let Some(v) = verify {
                    v.problems.iter_mut().for_each(mask);
                }
                stderr_tail.iter_mut().for_each(mask);
                for a in attempts.iter_mut() {
                    mask(&mut a.reason);
                }
                for f in findings.iter_mut() {
                    mask(&mut f.detail);
                }
            }
            Record::Skip { detail, .. } => mask(detail),
            Record::Start { .. } | Record::Daemon { .. } => {}
        }
        record
    }
}

/// A run's wait for its conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Deferred {
    /// The first reason ("on battery").
    pub why: String,
    pub waited_ms: u64,
}

/// A run's wait for its task's lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LockWait {
    pub lock: String,
    /// The task that held it when the run asked.
    pub held_by: Option<String>,
    pub waited_ms: u64,
}

/// One failed attempt of a run that was tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    /// From 1.
    #[serde(rename = "attempt")]
    pub number: u32,
    /// When it ended.
    pub at: String,
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub reason: String,
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
    /// The wall clock was corrected forward (by more than 3 hours) past them.
    ClockChange,
    /// `backupnizza pause` held the task.
    Paused,
}

impl SkipReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::TooLate => "too_late",
            SkipReason::Superseded => "superseded",
            SkipReason::ClockChange => "clock_change",
            SkipReason::Paused => "paused",
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
            Record::Start { task, .. }
            | Record::End(RunEnd { task, .. })
            | Record::Skip { task, .. } => Some(task),
            Record::Daemon { .. } => None,
        }
    }

    pub(crate) fn at(&self) -> &str {
        match self {
            Record::Start { at, .. }
            | Record::End(RunEnd { at, .. })
            | Record::Skip { at, .. }
            | Record::Daemon { at, .. } => at,
        }
    }
}

/// The appender; one per daemon, owned by its history thread. The file machinery (lines
/// kept whole, torn lines terminated, no symbolic link followed, rotation) is
/// [`Journal`]'s; the caller keeps what could not be written and tries again.
pub(crate) struct History {
    journal: Journal,
}

impl History {
    /// An appender for `state_dir`; nothing is opened until the first append (or [`open`]).
    ///
    /// [`open`]: History::open
    pub(crate) fn new(state_dir: &Path) -> History {
        History::rotating_at(state_dir, ROTATE_AT)
    }

    fn rotating_at(state_dir: &Path, at: u64) -> History {
        let rotation = Rotation { at, keep: KEEP_GENERATIONS };
        History { journal: Journal::new(state_dir, FILE_NAME, "the run history", Some(rotation)) }
    }

    /// Opens (creating `state_dir` with mode 0700 and the file with 0600) for appending.
    pub(crate) fn open(&mut self) -> std::io::Result<()> {
        self.journal.open()
    }

    pub(crate) fn path(&self) -> &Path {
        self.journal.path()
    }

    /// Appends a record durably, or leaves the file as it was and says why. History is never
    /// a reason to fail a backup: the caller logs and retries.
    pub(crate) fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.journal.append(&record.redacted())
    }
}

/// How many rotated files (`history.jsonl.1` ... `.N`) are kept.
pub(crate) const KEEP_GENERATIONS: usize = 5;

fn generation_path(state_dir: &Path, generation: usize) -> PathBuf {
    generation_of(&state_dir.join(FILE_NAME), generation)
}

/// What [`read_all`] found: the records, oldest first, and the lines it could not read.
/// Also the body of `GET /v1/history`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Loaded {
    pub(crate) records: Vec<Record>,
    /// `(file, line number)` of each line that did not parse (a torn last line, or a record
    /// from a newer version).
    pub(crate) bad_lines: Vec<(PathBuf, usize)>,
}

impl Loaded {
    /// Only the records of `task` and the daemon's own starts and stops (which tell when
    /// nothing could run); all of them for `None`.
    pub(crate) fn for_task(mut self, task: Option<&str>) -> Loaded {
        if let Some(task) = task {
            self.records.retain(|r| r.task().is_none_or(|t| t == task));
        }
        self
    }

    /// "2 unreadable lines skipped (history.jsonl lines 5, 9)", or `None` when all were read.
    pub(crate) fn bad_lines_summary(&self) -> Option<String> {
        if self.bad_lines.is_empty() {
            return None;
        }
        let mut by_file: Vec<(&Path, Vec<usize>)> = Vec::new();
        for (file, line) in &self.bad_lines {
            match by_file.iter_mut().find(|(f, _)| *f == file.as_path()) {
                Some((_, lines)) => lines.push(*line),
                None => by_file.push((file, vec![*line])),
            }
        }
        let files: Vec<String> = by_file
            .iter()
            .map(|(file, lines)| format!("{} {}", file.display(), line_numbers(lines)))
            .collect();
        let n = self.bad_lines.len();
        Some(format!(
            "{n} unreadable line{} skipped ({})",
            if n == 1 { "" } else { "s" },
            files.join("; ")
        ))
    }
}

/// Opens every history file there is, oldest generation first (a missing one is passed
/// over): an error is known before anything is read.
pub(crate) fn open_all(state_dir: &Path) -> std::io::Result<Vec<(PathBuf, File)>> {
    let names = (1..=KEEP_GENERATIONS).rev().map(|g| generation_path(state_dir, g));
    let mut files = Vec::new();
    for path in names.chain(std::iter::once(state_dir.join(FILE_NAME))) {
        match File::open(&path) {
            Ok(file) => files.push((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

/// Reads every record, oldest generation first, and notes the lines that do not parse.
pub(crate) fn read_all(state_dir: &Path) -> std::io::Result<Loaded> {
    let mut out = Loaded::default();
    for (path, file) in open_all(state_dir)? {
        let lines = read_lines::<Record>(file)?;
        out.records.extend(lines.parsed);
        out.bad_lines.extend(lines.bad.into_iter().map(|line| (path.clone(), line)));
    }
    Ok(out)
}

/// Writes what [`read_all`] and [`Loaded::for_task`] would give as JSON (the body of
/// `GET /v1/history`) from the `files` [`open_all`] opened, without the records of the
/// `hidden` tasks, record by record as the files are read, so that only a line is in memory
/// at a time and a reader that stops reading stops the writing (`out` blocks, or fails when
/// the reader is gone: that error ends it).
pub(crate) fn write_json(
    files: Vec<(PathBuf, File)>,
    (task, hidden): (Option<&str>, &[String]),
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut bad: Vec<(PathBuf, usize)> = Vec::new();
    let mut first = true;
    out.write_all(b"{\"records\":[")?;
    for (path, file) in files {
        crate::journal::for_each_line::<Record>(file, |number, record| {
            let Some(record) = record else {
                bad.push((path.clone(), number));
                return Ok(());
            };
            let skipped =
                |t: &str| task.is_some_and(|wanted| t != wanted) || hidden.iter().any(|h| h == t);
            if record.task().is_some_and(skipped) {
                return Ok(());
            }
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &record).map_err(std::io::Error::other)
        })?;
    }
    out.write_all(b"],\"bad_lines\":")?;
    serde_json::to_writer(&mut *out, &bad).map_err(std::io::Error::other)?;
    out.write_all(b"}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    /// The streamed answer is exactly what reading everything and serializing it gave.
    #[test]
    fn the_streamed_history_is_the_whole_one_for_each_task_filter() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for (i, task) in ["a", "b", "a"].iter().enumerate() {
            let mut record = serde_json::to_value(start(&format!("run-{i}"))).unwrap();
            record["task"] = serde_json::json!(task);
            text.push_str(&format!("{record}\n"));
        }
        text.push_str("{\"torn\n\n");
        std::fs::write(dir.path().join(FILE_NAME), &text).unwrap();
        std::fs::write(
            generation_path(dir.path(), 1),
            format!("{}\n", text.lines().next().unwrap()),
        )
        .unwrap();
        for task in [None, Some("a"), Some("b"), Some("none")] {
            let mut streamed = Vec::new();
            write_json(open_all(dir.path()).unwrap(), (task, &[]), &mut streamed).unwrap();
            let whole = serde_json::to_value(read_all(dir.path()).unwrap().for_task(task)).unwrap();
            let streamed: serde_json::Value = serde_json::from_slice(&streamed).unwrap();
            assert_eq!(streamed, whole, "{task:?}");
        }
    }

    fn start(id: &str) -> Record {
        Record::Start {
            run_id: id.into(),
            task: "t".into(),
            at: "2026-01-01T00:00:00Z".into(),
            scheduled: None,
            trigger: Trigger::Manual,
            cgroup: None,
            lock_wait: None,
            deferred: None,
        }
    }

    #[test]
    fn appends_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::new(dir.path());
        h.append(&start("a")).unwrap();
        drop(h);
        // A crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).unwrap();
        f.write_all(b"{\"type\":\"start\",\"run_id\":\"tor").unwrap();
        let mut h = History::new(dir.path());
        h.append(&start("b")).unwrap();
        let loaded = read_all(dir.path()).unwrap();
        assert_eq!(loaded.records, vec![start("a"), start("b")]);
        assert_eq!(
            loaded.bad_lines,
            vec![(dir.path().join(FILE_NAME), 2)],
            "the torn line is reported"
        );
        let summary = loaded.bad_lines_summary().unwrap();
        assert!(
            summary.starts_with("1 unreadable line skipped (") && summary.ends_with("line 2)"),
            "{summary}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Regression: rotating to `history.jsonl.1` overwrote the previous `.1`.
    #[test]
    fn rotation_keeps_generations_and_readers_read_them_all_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::rotating_at(dir.path(), 300);
        let ids: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
        for id in &ids {
            h.append(&start(id)).unwrap();
        }
        let generations: Vec<bool> =
            (1..=KEEP_GENERATIONS + 1).map(|g| generation_path(dir.path(), g).exists()).collect();
        assert_eq!(generations, [true, true, true, true, true, false], "five generations, no more");
        let loaded = read_all(dir.path()).unwrap();
        let read: Vec<&str> = loaded
            .records
            .iter()
            .map(|r| match r {
                Record::Start { run_id, .. } => run_id.as_str(),
                _ => "?",
            })
            .collect();
        // The oldest records went with the dropped generation; the rest are in order.
        assert!(read.len() >= 10 && read.len() < ids.len(), "{read:?}");
        assert_eq!(
            read,
            ids[ids.len() - read.len()..].iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(loaded.bad_lines.is_empty());
    }
}
