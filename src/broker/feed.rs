//! A run's output as `backupnizza trigger --follow` reads it: the lines the log gets
//! (redacted and cut, stdout and stderr of its steps and hooks), numbered, the last
//! [`KEEP`] kept, until the run ends. The run writes; followers read from a sequence number
//! on and wait for more, over the control socket (`GET /v1/runs/{id}/output`). A follower
//! that falls more than [`KEEP`] lines behind is told how many it missed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::protocol::{OutputBody, OutputLine};

/// Lines kept for followers.
const KEEP: usize = 2000;
/// Bytes of text kept for followers: 2,000 lines of 8 KiB (a chatty restic's) would be
/// 16 MiB per run; this bounds a feed whatever its lines.
const KEEP_BYTES: usize = 2 * 1024 * 1024;
/// Most lines one answer carries.
const MAX_BATCH: usize = 500;
/// Most bytes of text one answer carries (at least one line): JSON at most doubles what is
/// left once controls are gone (`"` and `\`), which keeps an answer under the client's
/// 1 MiB. 500 lines of 8 KiB made a 4 MiB answer the client refused.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One run's output feed.
pub(crate) struct Feed {
    lines: Mutex<Lines>,
    /// The number of the next line, and whether the run has ended, for waiting followers.
    changed: watch::Sender<(u64, bool)>,
}

#[derive(Default)]
struct Lines {
    kept: VecDeque<OutputLine>,
    /// The bytes of text in `kept`.
    bytes: usize,
    next: u64,
    ended: bool,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed { lines: Mutex::default(), changed: watch::channel((0, false)).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A line of `stream` (`stdout`, `stderr`, `before.stdout`, ...), already redacted.
    pub(crate) fn push(&self, stream: &str, text: &str) {
        let next = {
            let mut lines = self.lock();
            while lines.kept.len() == KEEP || lines.bytes + text.len() > KEEP_BYTES {
                let Some(gone) = lines.kept.pop_front() else { break };
                lines.bytes -= gone.text.len();
            }
            lines.bytes += text.len();
            let seq = lines.next;
            lines.kept.push_back(OutputLine { seq, stream: stream.into(), text: text.into() });
            lines.next += 1;
            lines.next
        };
        self.changed.send_replace((next, false));
    }

    /// The run has ended: followers get what is left, then `ended`.
    pub(crate) fn end(&self) {
        let next = {
            let mut lines = self.lock();
            lines.ended = true;
            lines.next
        };
        self.changed.send_replace((next, true));
    }

    /// Lets go of the kept lines of a run that ended a while ago: a follower that comes now
    /// is told how many it missed, and the end.
    pub(crate) fn release(&self) {
        let mut lines = self.lock();
        lines.kept = VecDeque::new();
        lines.bytes = 0;
    }

    /// The number the next line will have.
    pub(crate) fn next_number(&self) -> u64 {
        self.lock().next
    }

    /// Lines from number `after` on, waiting up to `wait` for one when there is none yet.
    pub(crate) async fn read(&self, after: u64, wait: Duration) -> OutputBody {
        let mut changed = self.changed.subscribe();
        let _ =
            tokio::time::timeout(wait, changed.wait_for(|(next, ended)| *next > after || *ended))
                .await;
        let lines = self.lock();
        let first = lines.kept.front().map_or(lines.next, |l| l.seq);
        let mut bytes = 0;
        let batch: Vec<OutputLine> = lines
            .kept
            .iter()
            .filter(|l| l.seq >= after)
            .take(MAX_BATCH)
            .take_while(|l| {
                bytes += l.text.len();
                bytes <= MAX_BATCH_BYTES || bytes == l.text.len()
            })
            .cloned()
            .collect();
        let next = batch.last().map_or(lines.next.max(after), |l| l.seq + 1);
        OutputBody {
            missed: first.saturating_sub(after),
            ended: lines.ended && next >= lines.next,
            next,
            lines: batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn followers_read_in_order_and_learn_the_end() {
        let feed = Feed::new();
        feed.push("stdout", "one");
        feed.push("stderr", "two");
        let body = feed.read(0, Duration::ZERO).await;
        assert_eq!(body.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!((body.next, body.ended, body.missed), (2, false, 0));
        let empty = feed.read(2, Duration::from_millis(10)).await;
        assert!(empty.lines.is_empty() && !empty.ended);
        feed.end();
        assert!(feed.read(2, Duration::from_secs(5)).await.ended);
        // A follower behind gets the rest with the end, in one answer.
        let rest = feed.read(1, Duration::ZERO).await;
        assert_eq!((rest.lines.len(), rest.lines[0].text.as_str(), rest.ended), (1, "two", true));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_follower_far_behind_is_told_what_it_missed() {
        let feed = Feed::new();
        for i in 0..(KEEP + 10) {
            feed.push("stdout", &i.to_string());
        }
        let body = feed.read(0, Duration::ZERO).await;
        assert_eq!(body.missed, 10);
        assert_eq!(body.lines[0].text, "10");
        assert_eq!(body.lines.len(), MAX_BATCH);
    }

    /// Regression: `trigger --follow` on a task printing 8 KiB lines failed with "the
    /// response is larger than 1048576 bytes". An answer is bounded in bytes, a feed too.
    #[tokio::test(flavor = "current_thread")]
    async fn long_lines_come_in_answers_under_the_clients_limit_and_the_feed_is_bounded() {
        let feed = Feed::new();
        let long = "x".repeat(8 * 1024);
        for _ in 0..KEEP {
            feed.push("stdout", &long);
        }
        assert!(feed.lock().bytes <= KEEP_BYTES);
        let (mut after, mut got) = (0, 0);
        let body = feed.read(0, Duration::ZERO).await;
        let missed = body.missed;
        assert!(missed > 0, "a 16 MiB output is not all kept");
        after = after.max(body.next);
        got += body.lines.len();
        assert!(serde_json::to_vec(&body).unwrap().len() < 1024 * 1024);
        feed.end();
        loop {
            let body = feed.read(after, Duration::ZERO).await;
            assert!(serde_json::to_vec(&body).unwrap().len() < 1024 * 1024);
            got += body.lines.len();
            after = body.next;
            if body.ended {
                break;
            }
        }
        assert_eq!(got as u64 + missed, KEEP as u64, "every line read or counted as missed");
        // A released feed keeps nothing, and still says how many lines there were.
        feed.release();
        let late = feed.read(0, Duration::ZERO).await;
        assert!(late.lines.is_empty() && late.ended && late.missed == KEEP as u64);
    }
}
