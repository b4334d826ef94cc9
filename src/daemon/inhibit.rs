//! No sleep mid-backup: while a task runs, the daemon holds a logind sleep inhibitor
//! (`org.freedesktop.login1.Manager.Inhibit("sleep", "backupnizza", "backup of TASK",
//! "block")`, or `"delay"` when logind refuses to let this user block), and lets it go when
//! the run ends: the inhibitor is a file descriptor, closed when [`Inhibitor`] is dropped.
//! `inhibit_sleep: false` turns it off per task. Without logind (no system bus, a container,
//! another OS) nothing is held and the run goes on; that is logged once per run at debug.
//!
//! macOS would take an `IOPMAssertion` (`PreventUserIdleSystemSleep`) the same way; it is
//! not written yet, and on macOS no inhibitor is taken.

/// A sleep inhibitor held for a run; released (its descriptor closed) on drop.
pub(crate) struct Inhibitor {
    #[cfg(target_os = "linux")]
    _fd: std::os::fd::OwnedFd,
    /// `block` or `delay`, as logind granted it.
    pub(crate) mode: &'static str,
}

/// Asks logind for a sleep inhibitor for task `task`; `Err` says why there is none. Blocking
/// (a D-Bus round trip): call it off the async threads.
#[cfg(target_os = "linux")]
pub(crate) fn take(task: &str) -> Result<Inhibitor, String> {
    let conn = zbus::blocking::Connection::system().map_err(|e| format!("no system bus: {e}"))?;
    let why = format!("backup of {task}");
    let mut refused = String::new();
    for mode in ["block", "delay"] {
        let reply = conn.call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "Inhibit",
            &("sleep", "backupnizza", why.as_str(), mode),
        );
        match reply.and_then(|m| m.body().deserialize::<zbus::zvariant::OwnedFd>()) {
            Ok(fd) => return Ok(Inhibitor { _fd: fd.into(), mode }),
            // A desktop's polkit may allow `delay` where it refuses `block`.
            Err(e) => refused = format!("logind refused a {mode} inhibitor: {e}"),
        }
    }
    Err(refused)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn take(_task: &str) -> Result<Inhibitor, String> {
    Err("no sleep inhibitor on this system (the macOS IOPMAssertion is not written yet)".into())
}
