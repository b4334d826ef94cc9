//! No sleep mid-backup: while a task runs, the daemon holds a logind sleep inhibitor
//! (`org.freedesktop.login1.Manager.Inhibit("sleep", "backupnizza", "backup of TASK",
//! "block")`, or `"delay"` when logind refuses to let this user block), and lets it go when
//! the run ends: the inhibitor is a file descriptor, closed when [`Inhibitor`] is dropped.
//! `inhibit_sleep: false` turns it off per task. Without logind (no system bus, a container,
//! another OS) nothing is held and the run goes on; that is logged once per run at debug.
//!
//! On macOS the run holds an IOKit power assertion instead
//! (`IOPMAssertionCreateWithName("PreventUserIdleSystemSleep", …, "backupnizza: backup of
//! TASK")`, what `caffeinate -i` takes), released when [`Inhibitor`] is dropped and by the
//! kernel if the daemon dies. It keeps idle sleep away; a closed lid still sleeps, which the
//! run's record then reports. That code is compile-checked in CI but has never run: there
//! is no macOS machine here (docs/platforms.md).

/// A sleep inhibitor held for a run; released on drop (its descriptor closed, or the
/// assertion released).
pub(crate) struct Inhibitor {
    #[cfg(target_os = "linux")]
    _fd: std::os::fd::OwnedFd,
    #[cfg(target_os = "macos")]
    _assertion: crate::sys::iokit::PowerAssertion,
    /// `block` or `delay`, as logind granted it; `assertion` on macOS.
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

/// Takes an IOKit assertion that keeps the system from idle sleep (untested: see the
/// module comment).
#[cfg(target_os = "macos")]
pub(crate) fn take(task: &str) -> Result<Inhibitor, String> {
    let assertion =
        crate::sys::iokit::PowerAssertion::take(&format!("backupnizza: backup of {task}"))?;
    Ok(Inhibitor { _assertion: assertion, mode: "assertion" })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn take(_task: &str) -> Result<Inhibitor, String> {
    Err("no sleep inhibitor on this system".into())
}
