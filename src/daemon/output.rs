//! A task process's output, into the daemon's log: one redacted line per log event, long
//! lines cut after redaction (so a secret never straddles a cut), and the last stderr lines
//! kept for the run's history record.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::info;

use super::runner::{STDERR_TAIL, Tail};

/// Longest line we log from a child; longer lines are cut (restic's progress can be long).
const MAX_LINE: usize = 8 * 1024;
/// Longest line we read whole for redaction; the rest of a longer line is dropped.
const MAX_REDACTED_LINE: usize = 1024 * 1024;

/// Copies a child's output into the log, one redacted line per event; stderr lines also go
/// to the run's tail. A line is redacted whole (up to [`MAX_REDACTED_LINE`]) before it is cut
/// to [`MAX_LINE`] for the log, so a secret never straddles a cut.
pub(super) async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: &'static str,
    mut tail: Option<&mut Tail>,
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
        info!(stream = which, "{shown}");
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
