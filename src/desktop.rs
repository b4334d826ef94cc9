//! A notification on the user's desktop: what the daemon's `desktop:` preset and
//! `backupnizza watch --notify` show. On Linux, a freedesktop notification over the session
//! bus (`org.freedesktop.Notifications.Notify`, urgency critical for a failure, so it stays
//! until seen); on macOS, `osascript -e 'display notification ...'`, which is
//! compile-checked in CI but has never run (there is no macOS machine here,
//! docs/platforms.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// freedesktop urgencies (the `urgency` hint, a byte): normal and critical.
const NORMAL: u8 = 1;
const CRITICAL: u8 = 2;

/// What one notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) summary: String,
    pub(crate) body: String,
    pub(crate) critical: bool,
}

impl Notice {
    /// `backup TASK STATUS`, then `TASK: RESULT` and the reason (already redacted).
    pub(crate) fn of(task: &str, status: &str, result: &str, reason: &str, failed: bool) -> Notice {
        let mut body = format!("{task}: {result}");
        if let Some(reason) = crate::protocol::reason_beside(result, reason) {
            body.push('\n');
            body.push_str(reason);
        }
        Notice { summary: format!("backup {task} {status}"), body, critical: failed }
    }
}

/// Where notifications go, for messages.
pub(crate) const DESTINATION: &str = DESTINATION_HERE;

/// Shows `notice`, waiting at most `timeout`. Blocking.
pub(crate) fn show(notice: &Notice, timeout: Duration) -> Result<(), String> {
    let (summary, body) = (notice.summary.clone(), notice.body.clone());
    let urgency = if notice.critical { CRITICAL } else { NORMAL };
    within(&WAITING, timeout, move || show_now(&summary, &body, urgency))
}

/// Deliveries still waiting on a thread of their own, given up or not.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// How many given-up deliveries may still hold a thread before new ones are refused
/// outright: a bus that hangs for good then costs this many threads, not one per run.
const MAX_WAITING: usize = 2;

/// Runs `show_now` on a thread of its own and waits for it at most `timeout`: a bus that
/// accepts the connection and never answers (zbus bounds neither its handshake nor, by
/// default, a call) costs that thread, not the delivery. While `MAX_WAITING` such threads
/// are still stuck (counted in `waiting`), the notice is refused without starting another.
fn within(
    waiting: &'static AtomicUsize,
    timeout: Duration,
    show: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    if waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
        waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(format!(
            "not sent: {MAX_WAITING} earlier notifications are still waiting for {DESTINATION}"
        ));
    }
    let (done, shown) = mpsc::channel();
    std::thread::Builder::new()
        .name("notify-desktop".into())
        .spawn(move || {
            let _ = done.send(show());
            waiting.fetch_sub(1, Ordering::AcqRel);
        })
        .map_err(|e| {
            waiting.fetch_sub(1, Ordering::AcqRel);
            format!("cannot start a thread: {e}")
        })?;
    shown
        .recv_timeout(timeout)
        .unwrap_or_else(|_| Err(format!("no answer within {}", crate::time::Human(timeout))))
}

#[cfg(target_os = "linux")]
const DESTINATION_HERE: &str = "the session bus";

/// `Notify("backupnizza", 0, "", summary, body, [], {"urgency": <byte>}, -1)`.
#[cfg(target_os = "linux")]
fn show_now(summary: &str, body: &str, urgency: u8) -> Result<(), String> {
    use std::collections::HashMap;
    use zbus::zvariant::Value;
    let conn = zbus::blocking::Connection::session().map_err(|e| format!("no session bus: {e}"))?;
    let hints: HashMap<&str, Value<'_>> = HashMap::from([("urgency", Value::U8(urgency))]);
    // A server with the "body-markup" capability reads the body as a subset of HTML: there a
    // reason with `<` or `&` in it is escaped, to be shown as written and not taken for a tag.
    let markup = conn
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "GetCapabilities",
            &(),
        )
        .ok()
        .and_then(|reply| reply.body().deserialize::<Vec<String>>().ok())
        .is_some_and(|caps| caps.iter().any(|c| c == "body-markup"));
    let escaped;
    let body = if markup {
        escaped = body.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        escaped.as_str()
    } else {
        body
    };
    let actions: &[&str] = &[];
    conn.call_method(
        Some("org.freedesktop.Notifications"),
        "/org/freedesktop/Notifications",
        Some("org.freedesktop.Notifications"),
        "Notify",
        &("backupnizza", 0u32, "", summary, body, actions, hints, -1i32),
    )
    .map(drop)
    .map_err(|e| format!("the notification server did not take it: {e}"))
}

#[cfg(target_os = "macos")]
const DESTINATION_HERE: &str = "osascript";

/// `osascript -e 'display notification BODY with title SUMMARY'` (untested: see the module
/// comment). macOS has no urgency to give.
#[cfg(target_os = "macos")]
fn show_now(summary: &str, body: &str, _urgency: u8) -> Result<(), String> {
    let script = format!(
        "display notification {} with title {}",
        applescript_string(body),
        applescript_string(summary)
    );
    let out = std::process::Command::new("/usr/bin/osascript")
        .args(["-e", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run osascript: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("osascript failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
const DESTINATION_HERE: &str = "the desktop";

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn show_now(_summary: &str, _body: &str, _urgency: u8) -> Result<(), String> {
    Err("no desktop notifications on this system".into())
}

/// `text` as an AppleScript string literal: in quotes, with `\` and `"` escaped and line
/// breaks written as `\n` and `\r`, so no reason can end the string and add a statement.
#[cfg(any(test, target_os = "macos"))]
fn applescript_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applescript_strings_cannot_be_closed_from_inside() {
        assert_eq!(applescript_string("plain"), "\"plain\"");
        assert_eq!(
            applescript_string("a\" & (do shell script \"id\") & \"\\\nb"),
            "\"a\\\" & (do shell script \\\"id\\\") & \\\"\\\\\\nb\""
        );
    }

    #[test]
    fn a_show_that_never_returns_is_given_up_and_a_few_such_refuse_the_next() {
        static WAITING: AtomicUsize = AtomicUsize::new(0);
        let (release, hang) = mpsc::channel::<()>();
        let hang = std::sync::Arc::new(std::sync::Mutex::new(hang));
        let stuck = || {
            let hang = hang.clone();
            move || {
                let _ = hang.lock().unwrap().recv();
                Ok(())
            }
        };
        for _ in 0..MAX_WAITING {
            let result = within(&WAITING, Duration::from_millis(100), stuck());
            assert!(result.unwrap_err().starts_with("no answer within"));
        }
        let ran = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let refused = within(&WAITING, Duration::from_secs(60), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        assert!(refused.unwrap_err().contains("still waiting"), "refused at once");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "and never started");

        // Once the stuck ones return, notices go out again.
        drop(release);
        while WAITING.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(within(&WAITING, Duration::from_secs(60), || Ok(())), Ok(()));
    }
}
