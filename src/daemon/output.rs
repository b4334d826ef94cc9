//! A task process's output, into the daemon's log: one redacted line per log event, long
//! lines cut after redaction (so a secret never straddles a cut), and the last stderr lines
//! kept for the run's history record.
//!
//! What one run sends to the log is bounded, for stdout and for stderr each ([`LogBudget`]):
//! the first [`HEAD_LINES`] lines (at most [`HEAD_BYTES`]) in full, then only a count, and
//! when the run ends a summary line and the last [`TAIL_LINES`] lines. A task that prints a
//! gigabyte costs the log at most about 4 MiB.

use std::collections::VecDeque;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::{info, warn};

use super::runner::{STDERR_TAIL, Tail};

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

/// What one of a run's streams (stdout or stderr, over all its steps) may still send to
/// the log.
#[derive(Default)]
pub(super) struct LogBudget {
    lines: usize,
    bytes: usize,
    over_lines: u64,
    over_bytes: u64,
    /// The last lines past the budget, logged when the run ends.
    last: VecDeque<(&'static str, String)>,
}

impl LogBudget {
    fn line(&mut self, which: &'static str, shown: &str) {
        if self.over_lines == 0 && self.lines < HEAD_LINES && self.bytes + shown.len() <= HEAD_BYTES
        {
            self.lines += 1;
            self.bytes += shown.len();
            info!(stream = which, "{shown}");
            return;
        }
        if self.over_lines == 0 {
            warn!(
                "this run's output passed the log budget ({HEAD_LINES} lines or {} KiB); further lines are counted, and the last {TAIL_LINES} are logged when the run ends",
                HEAD_BYTES / 1024
            );
        }
        self.over_lines += 1;
        self.over_bytes += shown.len() as u64;
        if self.last.len() == TAIL_LINES {
            self.last.pop_front();
        }
        self.last.push_back((which, shown.to_string()));
    }

    /// Logs what the budget held back: a count, then the last lines.
    pub(super) fn finish(self) {
        if self.over_lines == 0 {
            return;
        }
        let kept = self.last.len() as u64;
        warn!(
            "{} more lines ({} bytes) of output were not logged; the last {kept} follow",
            self.over_lines - kept,
            self.over_bytes
        );
        for (which, line) in self.last {
            info!(stream = which, "{line}");
        }
    }
}

/// Copies a child's output into the log, one redacted line per event; stderr lines also go
/// to the run's tail. A line is redacted whole (up to [`MAX_REDACTED_LINE`]) before it is cut
/// to [`MAX_LINE`] for the log, so a secret never straddles a cut.
pub(super) async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: &'static str,
    mut tail: Option<&mut Tail>,
    budget: &mut LogBudget,
) {
    use tokio::io::AsyncReadExt as _;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::with_capacity(256);
    let mut skip = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_REDACTED_LINE as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() >= MAX_REDACTED_LINE {
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
        if line.trim().is_empty() {
            continue;
        }
        let clean = crate::redact::redact(line);
        let shown = cut(&clean, MAX_LINE);
        budget.line(which, &shown);
        if let Some(tail) = tail.as_deref_mut() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(shown.into_owned());
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary and marked.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut at {max} bytes]", &text[..end]).into()
}
