//! A task process's output, into the daemon's log: one redacted line per log event, long
//! lines cut after redaction (so a secret never straddles a cut), and the last stderr lines
//! kept for the run's history record.
//!
//! What one run sends to the log is bounded, for stdout and for stderr each ([`LogBudget`]):
//! the first [`HEAD_LINES`] lines (at most [`HEAD_BYTES`]), then only a count, and
//! when the run ends a summary line and the last [`TAIL_LINES`] lines. Within the head, a
//! stream logs at most [`RATE_LINES`] lines or [`RATE_BYTES`] a second; lines over the rate
//! are counted, summarized in one line, and still reach the run's tail (and its output file).
//! A task that prints a gigabyte costs the log at most about 4 MiB.

pub(crate) mod files;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::{info, warn};

use files::RunOutput;

/// How many stderr lines a run keeps for its history record and hooks.
pub(crate) const STDERR_TAIL: usize = 20;

/// The last stderr lines of a run.
pub(crate) type Tail = VecDeque<String>;

/// Longest line we log from a child; longer lines are cut (restic's progress can be long).
const MAX_LINE: usize = 8 * 1024;
/// Longest line we read whole for redaction; the rest of a longer line is dropped.
const MAX_REDACTED_LINE: usize = 1024 * 1024;

/// Lines of a run's output logged in full before the log only counts them.
pub(super) const HEAD_LINES: usize = 1000;
/// Bytes of a run's output logged in full before the log only counts them.
pub(super) const HEAD_BYTES: usize = 1024 * 1024;
/// Lines logged from the end of a run's output that went over the budget.
pub(super) const TAIL_LINES: usize = 100;
/// Lines a stream may log per second (within the head). Two streams make 200 lines a second
/// for a run: more than anyone reads as it scrolls, and under journald's default rate limit
/// (10,000 messages per 30 s per service, about 333 a second), which would otherwise drop the
/// daemon's own lines along with the task's.
pub(super) const RATE_LINES: usize = 100;
/// Bytes a stream may log per second (within the head): 64 KiB a second for a run, so a
/// burst of long lines cannot pass the line limit's intent.
pub(super) const RATE_BYTES: usize = 32 * 1024;
/// The window the rate limits count in.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// What one of a run's streams (stdout or stderr, over all its steps) may still send to
/// the log.
#[derive(Default)]
pub(crate) struct LogBudget {
    /// The head: what was logged as it came.
    lines: usize,
    bytes: usize,
    /// The current rate window: when it began, and what it logged.
    window: Option<Instant>,
    window_lines: usize,
    window_bytes: usize,
    /// Over the rate limit and not yet summarized in the log.
    held_lines: u64,
    held_bytes: u64,
    /// Over the rate limit, over the whole run (for the summary at the end).
    rated_lines: u64,
    /// Past the head budget.
    over_lines: u64,
    over_bytes: u64,
    /// The lines not logged since the last line that was: logged when the run ends, so the
    /// end of the output (where the error usually is) is seen.
    last: VecDeque<(&'static str, String)>,
}

impl LogBudget {
    fn line(&mut self, which: &'static str, shown: &str) {
        if self.over_lines == 0 && self.lines < HEAD_LINES && self.bytes + shown.len() <= HEAD_BYTES
        {
            let now = Instant::now();
            if self.window.is_none_or(|began| now.duration_since(began) >= RATE_WINDOW) {
                self.say_held();
                self.window = Some(now);
                self.window_lines = 0;
                self.window_bytes = 0;
            }
            if self.window_lines < RATE_LINES && self.window_bytes + shown.len() <= RATE_BYTES {
                self.lines += 1;
                self.bytes += shown.len();
                self.window_lines += 1;
                self.window_bytes += shown.len();
                // Older unlogged lines would now come out of order; they stay counted.
                self.last.clear();
                info!(stream = which, "{shown}");
                return;
            }
            // Held lines use up the head too: the head is the start of the output, thinned
            // by the rate limit, so a fast burst reaches the budget as soon as a slow one.
            self.lines += 1;
            self.bytes += shown.len();
            self.held_lines += 1;
            self.held_bytes += shown.len() as u64;
            self.rated_lines += 1;
            self.keep_last(which, shown);
            return;
        }
        if self.over_lines == 0 {
            self.say_held();
            warn!(
                "this run's output passed the log budget ({HEAD_LINES} lines or {} KiB); further lines are counted, and the last {TAIL_LINES} are logged when the run ends",
                HEAD_BYTES / 1024
            );
        }
        self.over_lines += 1;
        self.over_bytes += shown.len() as u64;
        self.keep_last(which, shown);
    }

    fn keep_last(&mut self, which: &'static str, shown: &str) {
        if self.last.len() == TAIL_LINES {
            self.last.pop_front();
        }
        self.last.push_back((which, shown.to_string()));
    }

    /// Summarizes the lines the rate limit held back since the last summary.
    fn say_held(&mut self) {
        if self.held_lines == 0 {
            return;
        }
        warn!(
            "{} lines ({} bytes) over the rate limit ({RATE_LINES} lines or {} KiB a second) were not logged",
            self.held_lines,
            self.held_bytes,
            RATE_BYTES / 1024
        );
        self.held_lines = 0;
        self.held_bytes = 0;
    }

    /// Logs what the budget held back: the counts, then the last lines not yet logged.
    pub(crate) fn finish(mut self) {
        self.say_held();
        if self.over_lines > 0 {
            warn!(
                "{} more lines ({} bytes) past the log budget were not logged; the last {} not logged follow",
                self.over_lines,
                self.over_bytes,
                self.last.len()
            );
        } else if !self.last.is_empty() {
            warn!(
                "the last {} of the {} lines over the rate limit follow",
                self.last.len(),
                self.rated_lines
            );
        }
        for (which, line) in self.last {
            info!(stream = which, "{line}");
        }
    }
}

/// Where a run's output goes besides the log: its output file, if the task has one, and the
/// feed `trigger --follow` reads.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sinks<'a> {
    pub(crate) file: Option<&'a RunOutput>,
    pub(crate) feed: Option<&'a crate::broker::feed::Feed>,
    /// The task whose output this is: it is masked with that task's own secrets.
    pub(crate) task: Option<&'a str>,
}

/// Copies a child's output into the log, one redacted line per event, and into the run's
/// output file (as `label`) when it has one; stderr lines also go to the run's tail. A line
/// is redacted whole (up to [`MAX_REDACTED_LINE`]) before it is cut to [`MAX_LINE`] for the
/// log, so a secret never straddles a cut; terminal escapes are removed (and the line
/// redacted again, as escapes could have split a secret). With `restic`, the lines are read
/// for restic's `--json` messages: progress is counted instead of logged, summaries kept.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: &'static str,
    mut tail: Option<&mut Tail>,
    budget: &mut LogBudget,
    (sinks, label): (Sinks<'_>, &str),
    mut restic: Option<&mut crate::restic::Reader>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut reader = BufReader::new(stream);
    // A snapshot list is one line: an audit step's may be long.
    let limit = restic.as_ref().map_or(MAX_REDACTED_LINE, |r| r.line_limit.max(MAX_REDACTED_LINE));
    let mut buf = Vec::with_capacity(256);
    let mut skip = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(limit as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() >= limit {
            // Absurdly long: drop the rest of the line rather than splitting it.
            loop {
                skip.clear();
                match (&mut reader)
                    .take(MAX_REDACTED_LINE as u64)
                    .read_until(b'\n', &mut skip)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) if skip.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        // The file gets every line, blank ones too, redacted by the same call as the log's,
        // as a reader would see it and with the task's own secrets.
        let mut clean: std::borrow::Cow<'_, str> =
            crate::redact::as_task(sinks.task, || crate::redact::output_line(line)).into();
        if let Some(reader) = restic.as_deref_mut() {
            match reader.line(&clean) {
                crate::restic::Line::Progress | crate::restic::Line::Node => continue,
                // The list itself is the record's (and the ledger's): the log, the file and
                // followers get a sentence in its place.
                crate::restic::Line::Listing(sentence) => clean = sentence.into(),
                crate::restic::Line::Summary(_) | crate::restic::Line::Text => {}
            }
        }
        if let Some(file) = sinks.file {
            file.line(label, &clean).await;
        }
        if clean.trim().is_empty() {
            continue;
        }
        let shown = cut(&clean, MAX_LINE);
        // Followers see every line, whatever the log's budget lets through.
        if let Some(feed) = sinks.feed {
            feed.push(label, &shown);
        }
        crate::redact::as_task(sinks.task, || budget.line(which, &shown));
        if let Some(tail) = tail.as_deref_mut() {
            keep_in_tail(tail, shown.into_owned());
        }
    }
}

/// Adds a stderr line to the run's tail, unless it is a Go stack frame (restic 0.14 prints
/// one under some errors, and 20 frames would push the error itself out of the tail: the
/// log and the output file keep them).
fn keep_in_tail(tail: &mut Tail, line: String) {
    use crate::restic::exit::{is_frame_function, is_frame_source};
    if is_frame_source(&line) {
        // The frame's function is the line before its source line.
        if tail.back().is_some_and(|before| is_frame_function(before)) {
            tail.pop_back();
        }
        return;
    }
    if tail.len() == STDERR_TAIL {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// Says how many of restic's progress messages a step's stdout carried (they are not
/// logged one by one).
pub(crate) fn progress_passed_over(reader: &crate::restic::Reader) {
    if reader.progress > 0 {
        info!(
            stream = "stdout",
            "{} restic progress messages (message_type status) were not logged", reader.progress
        );
    }
}

/// At most `max` bytes of `text`, cut at a character boundary and marked.
pub(crate) fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut at {max} bytes]", &text[..end]).into()
}
