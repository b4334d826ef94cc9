//! `backupnizza watch --notify`: a daemon with no desktop session (as a system daemon has
//! none) and a watcher in a session, whose desktop (python3-dbusmock's
//! `notification_daemon` on a private bus) shows the daemon's failures. The watcher
//! outlives a daemon restart and follows the new daemon.

use std::process::{Child, Stdio};

use crate::harness::{Scratch, TRIGGERED, trigger, wait_until};
use crate::presets::{LEAKY, MockNotifications, canaries};

struct Watcher {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Watcher {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Triggers `task` until the watcher has printed its end: the watcher starts at the
/// present, so this tells that it follows.
fn until_seen(scratch: &Scratch, config: &std::path::Path, watcher: &Watcher, task: &str) {
    wait_until("the watcher to follow", || {
        trigger(scratch, config, task, true).expect_code(0);
        watcher.output().lines().any(|l| l.contains(&format!(" {task} success")))
    });
}

#[test]
fn watch_shows_a_session_less_daemons_failures_on_the_desktop_and_follows_a_restart() {
    let scratch = Scratch::new();
    let desktop = MockNotifications::start(&scratch);
    let (secrets, secret, _) = canaries(&scratch, &[]);
    let config = scratch.config(&format!(
        "{secrets}tasks:\n  fine:\n    {TRIGGERED}\n    command: ['true']\n  nightly:\n    {TRIGGERED}\n{LEAKY}"
    ));
    let start = || {
        scratch.start_daemon_with(&config, |cmd| {
            cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
        })
    };
    let daemon = start();
    let out = scratch.path().join("watch.out");
    let err = scratch.path().join("watch.err");
    let child = scratch
        .backupnizza(["watch", "--notify=failures", "-c"])
        .cmd
        .arg(&config)
        .env("DBUS_SESSION_BUS_ADDRESS", &desktop.address)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let watcher = Watcher { child, out, err };
    until_seen(&scratch, &config, &watcher, "fine");
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let calls = desktop.wait_for_calls(1);
    assert_eq!(calls.len(), 1, "only the failure is shown (`failures`): {calls:#?}");
    assert_eq!(calls[0]["summary"], "backup nightly failed", "{calls:#?}");
    assert!(calls[0]["body"].as_str().unwrap().starts_with("nightly: failed (exit code 3)"));
    assert_eq!(calls[0]["hints"]["urgency"], serde_json::json!(["Byte", 2]), "{calls:#?}");
    wait_until("the failure's line", || watcher.output().contains(" nightly failed (exit code 3)"));

    // The daemon restarts: the watcher says it is away, then follows the new one.
    drop(daemon);
    let daemon = start();
    wait_until("the watcher to notice", || {
        std::fs::read_to_string(&watcher.err).unwrap_or_default().contains("trying again")
    });
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let calls = desktop.wait_for_calls(2);
    assert_eq!(calls[1]["summary"], "backup nightly failed", "{calls:#?}");

    let shown = [serde_json::to_string(&calls).unwrap(), watcher.output(), daemon.log_text()];
    assert!(daemon.log_text().contains("leak "), "the task printed its secret");
    for text in shown {
        assert!(!text.contains(&secret), "the task's secret went out: {text}");
    }
}
