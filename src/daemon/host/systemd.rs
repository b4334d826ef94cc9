//! systemd's readiness protocol (`sd_notify`): `READY=1` once the daemon serves and schedules,
//! `STOPPING=1` when it begins to stop, `WATCHDOG=1` keep-alives when the unit asks for them.
//! Does nothing when `NOTIFY_SOCKET` is unset (launchd, a terminal).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one state string; errors are ignored, as systemd's own client library does.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
                let _ = socket.send_to_addr(state.as_bytes(), &addr);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = name;
    } else {
        let _ = socket.send_to(state.as_bytes(), &path);
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if it is meant for us.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
