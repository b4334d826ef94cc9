//! What the daemon understands of restic's output. With `--json`, restic writes one JSON
//! object per line on stdout, each with a `message_type`: many `status` messages (progress,
//! which the log does not want line by line) and, at the end of `backup`, one `summary`
//! (the snapshot id and the figures). A step's stdout is read through [`Reader`], whatever the
//! program is called (a wrapper script that runs restic counts too): a line that is not one
//! of restic's messages is passed on unchanged.
//!
//! Terminal escapes (restic clears its progress line with `\x1b[2K` on a terminal, and some
//! wrappers force colour) are removed from every line before it reaches the log, so the log
//! holds text, and a task cannot move the cursor of whoever reads it.

pub(crate) mod argv;
pub(crate) mod exit;
pub(crate) mod ls;

use serde::{Deserialize, Serialize};

/// One `restic backup --json` summary, as the history, hooks, webhooks and metrics get it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BackupSummary {
    /// The step that printed it, from 1.
    pub step: usize,
    /// As restic reported it: the full id, or (restic before 0.16) its first 8 digits.
    /// Empty when restic made no snapshot because nothing changed (`unchanged`).
    pub snapshot_id: String,
    /// restic 0.17's `backup --skip-if-unchanged` found nothing changed and made no
    /// snapshot: the parent snapshot is still current.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// The step that saved it failed (a pipeline whose dump failed, a timeout): restic
    /// saved what it got, which is not a whole backup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub dirs_new: u64,
    #[serde(default)]
    pub dirs_changed: u64,
    #[serde(default)]
    pub dirs_unmodified: u64,
    /// Bytes added to the repository (before compression, as restic reports it).
    #[serde(default)]
    pub data_added: u64,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
    /// Seconds, as restic measured the backup.
    #[serde(default)]
    pub total_duration: f64,
}

/// restic's summary line: the same fields under restic's names, without our `step`.
#[derive(Deserialize)]
struct SummaryLine {
    message_type: String,
    snapshot_id: Option<String>,
    /// `backup --dry-run` (restic 0.17 and later): no snapshot, and none meant.
    #[serde(default)]
    dry_run: bool,
    /// Only a backup's summary has it (restic's other commands print summaries too).
    total_files_processed: Option<u64>,
    #[serde(default)]
    files_new: u64,
    #[serde(default)]
    files_changed: u64,
    #[serde(default)]
    files_unmodified: u64,
    #[serde(default)]
    dirs_new: u64,
    #[serde(default)]
    dirs_changed: u64,
    #[serde(default)]
    dirs_unmodified: u64,
    #[serde(default)]
    data_added: u64,
    #[serde(default)]
    total_bytes_processed: u64,
    #[serde(default)]
    total_duration: f64,
}

/// One snapshot as `restic snapshots --json` and `restic forget --json` list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub id: String,
    pub time: String,
    #[serde(default)]
    pub tree: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hostname: String,
}

/// One group of `restic forget --json`'s answer.
#[derive(Deserialize)]
struct ForgetGroup {
    #[serde(default)]
    remove: Option<Vec<Snapshot>>,
    #[allow(dead_code)] // only its presence tells a forget answer from a snapshot list
    keep: Option<Vec<Snapshot>>,
}

/// What a stdout line is.
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// A progress message: counted, not logged.
    Progress,
    /// The backup's summary (also logged: it is one line and says what happened).
    Summary(BackupSummary),
    /// A snapshot list or a forget answer (one long line): kept, and said in a sentence
    /// instead of logged.
    Listing(String),
    /// A line of `restic ls --json` read by a spot check's [`ls::Sampler`]: not logged.
    Node,
    /// Anything else: logged as it is.
    Text,
}

/// Reads one step's stdout lines for restic's messages.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub step: usize,
    /// Progress messages passed over.
    pub progress: u64,
    pub summaries: Vec<BackupSummary>,
    /// The last snapshot list the step printed (`restic snapshots --json`).
    pub listed: Option<Vec<Snapshot>>,
    /// The snapshots a `restic forget --json` removed.
    pub removed: Vec<Snapshot>,
    /// The longest stdout line read whole (the pump's own limit when smaller).
    pub line_limit: usize,
    /// A spot check's sampler, when the step lists a snapshot's files.
    pub nodes: Option<ls::Sampler>,
    /// What `restic stats --json` printed last.
    pub stats: Option<Stats>,
}

/// `restic stats --json`'s answer (with `--mode restore-size`: every node a restore makes,
/// and the bytes of its files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct Stats {
    pub total_size: u64,
    pub total_file_count: u64,
}

impl Reader {
    pub(crate) fn new(step: usize) -> Reader {
        Reader { step, ..Reader::default() }
    }

    /// Classifies `line` (already redacted: a field that held a secret is masked, and then
    /// no longer parses as a figure) and keeps what it carries.
    pub(crate) fn line(&mut self, line: &str) -> Line {
        if let Some(sampler) = &mut self.nodes
            && sampler.line(line)
        {
            return Line::Node;
        }
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            return self.listing(trimmed);
        }
        if trimmed.starts_with('{')
            && trimmed.contains("\"total_file_count\"")
            && let Ok(stats) = serde_json::from_str::<Stats>(trimmed)
        {
            self.stats = Some(stats);
            return Line::Text;
        }
        // Cheap test first: restic's messages are objects that name their type.
        if !trimmed.starts_with('{') || !trimmed.contains("\"message_type\"") {
            return Line::Text;
        }
        let Ok(mut msg) = serde_json::from_str::<SummaryLine>(trimmed) else { return Line::Text };
        match (msg.message_type.as_str(), msg.snapshot_id.take()) {
            ("status", _) => {
                self.progress += 1;
                Line::Progress
            }
            ("summary", Some(snapshot_id)) if is_snapshot_id(&snapshot_id) => {
                self.summary(msg, snapshot_id, false)
            }
            // restic 0.17's `--skip-if-unchanged` leaves the id out when nothing changed.
            ("summary", None) if msg.total_files_processed.is_some() && !msg.dry_run => {
                self.summary(msg, String::new(), true)
            }
            _ => Line::Text,
        }
    }
}

impl Reader {
    /// Keeps a backup's summary.
    fn summary(&mut self, msg: SummaryLine, snapshot_id: String, unchanged: bool) -> Line {
        let summary = BackupSummary {
            step: self.step,
            snapshot_id,
            unchanged,
            partial: false,
            files_new: msg.files_new,
            files_changed: msg.files_changed,
            files_unmodified: msg.files_unmodified,
            dirs_new: msg.dirs_new,
            dirs_changed: msg.dirs_changed,
            dirs_unmodified: msg.dirs_unmodified,
            data_added: msg.data_added,
            total_files_processed: msg.total_files_processed.unwrap_or(0),
            total_bytes_processed: msg.total_bytes_processed,
            // restic 0.18.0 and 0.18.1 report a huge negative duration for a skipped
            // snapshot (their end time is never set).
            total_duration: msg.total_duration.max(0.0),
        };
        self.summaries.push(summary.clone());
        Line::Summary(summary)
    }

    /// A JSON array: a snapshot list, a forget answer (groups with `keep`), or neither. The
    /// list is tried first: a snapshot tagged or named `keep` does not make it a forget
    /// answer, and a forget answer's groups (no `id`, no `time`) never parse as snapshots.
    fn listing(&mut self, text: &str) -> Line {
        if let Ok(list) = serde_json::from_str::<Vec<Snapshot>>(text) {
            let n = list.len();
            self.listed = Some(list);
            return Line::Listing(format!("restic listed {n} snapshots"));
        }
        if text.contains("\"keep\"")
            && let Ok(groups) = serde_json::from_str::<Vec<ForgetGroup>>(text)
        {
            let removed: Vec<Snapshot> =
                groups.into_iter().flat_map(|g| g.remove.unwrap_or_default()).collect();
            let n = removed.len();
            self.removed.extend(removed);
            return Line::Listing(format!("restic forget removed {n} snapshots"));
        }
        Line::Text
    }
}

/// The version `restic version` printed ("restic 0.18.0 compiled with go1.24 on
/// linux/amd64"): the version as written, and its major and minor numbers.
pub(crate) fn version(stdout: &str) -> Option<(&str, (u32, u32))> {
    let version = stdout.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Some((version, (parts.next()?, parts.next()?)))
}

/// restic's snapshot ids are 64 hex digits, and restic before 0.16 reports the short form
/// (the first 8) in its summary; anything else is not one of its summaries.
fn is_snapshot_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The summaries' figures added up, for a run with several backup steps.
pub(crate) fn total(summaries: &[BackupSummary]) -> Option<BackupSummary> {
    let last = summaries.last()?;
    let mut sum = BackupSummary {
        step: last.step,
        snapshot_id: last.snapshot_id.clone(),
        ..Default::default()
    };
    for s in summaries {
        sum.files_new += s.files_new;
        sum.files_changed += s.files_changed;
        sum.files_unmodified += s.files_unmodified;
        sum.dirs_new += s.dirs_new;
        sum.dirs_changed += s.dirs_changed;
        sum.dirs_unmodified += s.dirs_unmodified;
        sum.data_added += s.data_added;
        sum.total_files_processed += s.total_files_processed;
        sum.total_bytes_processed += s.total_bytes_processed;
        sum.total_duration += s.total_duration;
    }
    Some(sum)
}

/// `text` without terminal escapes: CSI sequences (`ESC [ ... final`), OSC sequences
/// (`ESC ] ... BEL` or `ESC \`), other two-byte escapes, and carriage returns that would
/// redraw a line. Borrowed when there is nothing to remove (the common case).
pub(crate) fn strip_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\x1b', '\r']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, up to a final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_version_gives_the_version_and_its_numbers() {
        let text = "restic 0.18.0 compiled with go1.24.4 on linux/amd64\n";
        assert_eq!(version(text), Some(("0.18.0", (0, 18))));
        assert_eq!(version("restic 0.14.0 compiled with go1.19.8").map(|v| v.1), Some((0, 14)));
        assert_eq!(version(""), None);
    }

    const ID: &str = "1b0c5b7b6a3e6f1e0c1a4b8c9d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e";

    #[test]
    fn a_summary_is_kept_and_progress_is_counted() {
        let mut r = Reader::new(2);
        let status = r#"{"message_type":"status","percent_done":0.5,"total_files":3}"#;
        assert_eq!(r.line(status), Line::Progress);
        let summary = format!(
            r#"{{"message_type":"summary","files_new":3,"files_changed":1,"files_unmodified":7,"dirs_new":2,"dirs_changed":0,"dirs_unmodified":1,"data_blobs":3,"tree_blobs":2,"data_added":1234,"total_files_processed":11,"total_bytes_processed":99,"total_duration":0.25,"snapshot_id":"{ID}"}}"#
        );
        let Line::Summary(s) = r.line(&summary) else { panic!("not a summary") };
        assert_eq!((s.step, s.snapshot_id.as_str(), s.files_new, s.data_added), (2, ID, 3, 1234));
        assert_eq!(r.progress, 1);
        assert_eq!(r.summaries.len(), 1);
    }

    #[test]
    fn other_lines_are_text() {
        let mut r = Reader::new(1);
        for line in [
            "open repository",
            "{\"not\":\"restic\"}",
            r#"{"message_type":"summary","snapshot_id":"***"}"#,
            r#"{"message_type":"summary","snapshot_id":"abc"}"#,
            r#"{"message_type":"error","error":"x"}"#,
            "{\"message_type\": broken",
        ] {
            assert_eq!(r.line(line), Line::Text, "{line}");
        }
        assert!(r.summaries.is_empty());
    }

    #[test]
    fn snapshot_lists_and_forget_answers_are_kept() {
        let mut r = Reader::new(1);
        let snap = format!(
            r#"{{"time":"2026-12-01T10:00:00.5+01:00","tree":"ab","paths":["/d"],"hostname":"h","username":"u","id":"{ID}","short_id":"1b0c5b7b"}}"#
        );
        assert_eq!(r.line(&format!("[{snap}]")), Line::Listing("restic listed 1 snapshots".into()));
        assert_eq!(r.listed.as_ref().unwrap()[0].id, ID);
        let forget = format!(
            r#"[{{"tags":null,"host":"h","paths":["/d"],"keep":[],"remove":[{snap}],"reasons":[]}},{{"host":"h","keep":[{snap}],"remove":null}}]"#
        );
        assert!(matches!(r.line(&forget), Line::Listing(_)));
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.line("[1, 2]"), Line::Text);
        // A snapshot tagged `keep` is still a snapshot list.
        let tagged = snap.replace(r#""username":"u""#, r#""tags":["keep"]"#);
        assert_eq!(
            r.line(&format!("[{tagged}]")),
            Line::Listing("restic listed 1 snapshots".into())
        );
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(strip_escapes("\x1b[2K[0:01] 10 files\r"), "[0:01] 10 files");
        assert_eq!(strip_escapes("\x1b[1;31mred\x1b[0m"), "red");
        assert_eq!(strip_escapes("\x1b]0;title\x07text"), "text");
        assert_eq!(strip_escapes("\x1b]8;;http://x\x1b\\link"), "link");
        assert!(matches!(strip_escapes("plain"), std::borrow::Cow::Borrowed("plain")));
    }

    #[test]
    fn totals_add_up_and_keep_the_last_id() {
        let a = BackupSummary {
            step: 1,
            snapshot_id: "a".into(),
            data_added: 5,
            files_new: 1,
            ..Default::default()
        };
        let b = BackupSummary {
            step: 2,
            snapshot_id: "b".into(),
            data_added: 7,
            files_new: 2,
            ..Default::default()
        };
        let t = total(&[a, b]).unwrap();
        assert_eq!((t.snapshot_id.as_str(), t.data_added, t.files_new), ("b", 12, 3));
        assert!(total(&[]).is_none());
    }
}
