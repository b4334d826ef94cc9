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
/// Most lines one answer carries.
const MAX_BATCH: usize = 500;

/// One run's output feed.
pub(crate) struct Feed {
    lines: Mutex<Lines>,
    /// The number of the next line, and whether the run has ended, for waiting followers.
    changed: watch::Sender<(u64, bool)>,
}

#[derive(Default)]
struct Lines {
    kept: VecDeque<OutputLine>,
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
            if lines.kept.len() == KEEP {
                lines.kept.pop_front();
            }
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

    /// Lines from number `after` on, waiting up to `wait` for one when there is none yet.
    pub(crate) async fn read(&self, after: u64, wait: Duration) -> OutputBody {
        let mut changed = self.changed.subscribe();
        let _ =
            tokio::time::timeout(wait, changed.wait_for(|(next, ended)| *next > after || *ended))
                .await;
        let lines = self.lock();
        let first = lines.kept.front().map_or(lines.next, |l| l.seq);
        let batch: Vec<OutputLine> =
            lines.kept.iter().filter(|l| l.seq >= after).take(MAX_BATCH).cloned().collect();
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
}
