//! Run conditions (`when:`) and quiet hours (`blackout:`): an occurrence whose conditions do
//! not hold is deferred, not dropped. The run waits before it starts, re-checking every
//! [`POLL`], and starts once they hold, at most until the occurrence is `max_lateness` late
//! (then it is skipped, as a late occurrence is); with `force_after`, it runs anyway once the
//! task's last success is that old.
//!
//! - `ac_power: true`: UPower's `OnBattery` over the system bus; without UPower, the power
//!   supplies in `/sys/class/power_supply` (a `Mains` one that is `online`; a machine with no
//!   battery at all counts as on mains). `BACKUPNIZZA_POWER_SUPPLY_DIR` names another
//!   directory (a test knob). On macOS, IOKit's providing power source
//!   (`iokit.rs`).
//! - `network: HOST:PORT`: a TCP connection succeeds within [`CONNECT_TIMEOUT`].
//! - `unmetered: true`: NetworkManager's `Metered` is not "yes" or "guessed yes" (without
//!   NetworkManager, and on macOS, the connection counts as unmetered).
//! - `idle_cpu: PERCENT`: the 1-minute load average, per CPU, is below PERCENT.
//! - `blackout: ["09:00-17:00 mon-fri", ...]`: the task's local time is outside every window.
//!
//! The checks read files and make one D-Bus call or TCP connection: they run on a blocking
//! thread. Where UPower or NetworkManager gave the answer, their change signals
//! ([`changes`](super::changes)) wake the deferred run at once, and the poll is only a
//! backstop ([`BACKSTOP`]).

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Zoned;

use super::changes::Source;
use crate::config::{Blackout, When};

/// How often deferred conditions are checked again.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// How often, when a change signal will say that the condition changed: in case one is
/// missed (a service restarted, a signal dropped by a full queue).
pub(crate) const BACKSTOP: Duration = Duration::from_secs(30);
/// How long `network:` waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a run cannot start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unmet {
    pub(crate) why: String,
    /// The service whose change signal will tell when this may have changed; `None` when
    /// only polling can.
    pub(crate) signalled: Option<Source>,
}

impl Unmet {
    fn polled(why: String) -> Unmet {
        Unmet { why, signalled: None }
    }
}

/// Why the run cannot start now, or `None` when it can.
pub(crate) fn unmet(when: &When, blackout: &[Blackout], now: &Zoned) -> Option<Unmet> {
    if let Some(window) = blackout.iter().find(|w| w.contains(now)) {
        return Some(Unmet::polled(format!("in the blackout window {}", window.text)));
    }
    if when.ac_power
        && let (true, signalled) = on_battery()
    {
        return Some(Unmet { why: "on battery".into(), signalled });
    }
    if when.unmetered && metered() {
        let why = "the network connection is metered".into();
        return Some(Unmet { why, signalled: Some(Source::Network) });
    }
    if let Some(target) = &when.network
        && !reachable(target)
    {
        return Some(Unmet::polled(format!("{target} is not reachable")));
    }
    if let Some(percent) = when.idle_cpu
        && let Some(load) = load_percent()
        && load >= f64::from(percent)
    {
        let why = format!("the CPU is busy ({load:.0}% load, idle_cpu is {percent}%)");
        return Some(Unmet::polled(why));
    }
    None
}

/// Whether the machine runs on battery (UPower's word, else the power supplies'), and the
/// service that will signal a change (UPower, when it answered).
fn on_battery() -> (bool, Option<Source>) {
    if let Ok(dir) = std::env::var("BACKUPNIZZA_POWER_SUPPLY_DIR") {
        return (supplies_on_battery(Path::new(&dir)), None);
    }
    #[cfg(target_os = "linux")]
    if let Some(on_battery) = upower_on_battery() {
        return (on_battery, Some(Source::Power));
    }
    #[cfg(target_os = "macos")]
    if let Some(on_battery) = crate::sys::iokit::on_battery() {
        return (on_battery, None);
    }
    (supplies_on_battery(Path::new("/sys/class/power_supply")), None)
}

#[cfg(target_os = "linux")]
fn upower_on_battery() -> Option<bool> {
    let value = system_property("org.freedesktop.UPower", "/org/freedesktop/UPower", "OnBattery")?;
    bool::try_from(value).ok()
}

/// Property `name` of the interface named `service` at `path`, on the system bus; `None`
/// when there is no such bus, service or property.
#[cfg(target_os = "linux")]
fn system_property(service: &str, path: &str, name: &str) -> Option<zbus::zvariant::OwnedValue> {
    let conn = zbus::blocking::Connection::system().ok()?;
    let reply = conn
        .call_method(
            Some(service),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(service, name),
        )
        .ok()?;
    reply.body().deserialize().ok()
}

/// On battery when there is a battery and no `Mains` supply is online.
fn supplies_on_battery(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let (mut battery, mut mains_online) = (false, false);
    for entry in entries.flatten() {
        let path = entry.path();
        match read(path.join("type")).as_str() {
            "Battery" => battery = true,
            "Mains" | "USB" if read(path.join("online")) == "1" => mains_online = true,
            _ => {}
        }
    }
    battery && !mains_online
}

/// NetworkManager's `Metered` (1 yes, 3 guessed yes); without NetworkManager, not metered.
fn metered() -> bool {
    #[cfg(target_os = "linux")]
    {
        let metered = system_property(
            "org.freedesktop.NetworkManager",
            "/org/freedesktop/NetworkManager",
            "Metered",
        );
        matches!(metered.and_then(|v| u32::try_from(v).ok()), Some(1 | 3))
    }
    #[cfg(not(target_os = "linux"))]
    false
}

fn reachable(target: &str) -> bool {
    let Ok(addrs) = target.to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

/// The 1-minute load average as a percentage of the CPUs.
fn load_percent() -> Option<f64> {
    let load = crate::sys::proc::load_average()?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Some(load / cpus as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(dir: &Path, name: &str, kind: &str, online: Option<&str>) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        if let Some(o) = online {
            std::fs::write(d.join("online"), format!("{o}\n")).unwrap();
        }
    }

    #[test]
    fn power_supplies_tell_battery_from_mains() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!supplies_on_battery(dir.path()), "no battery: a desktop, on mains");
        supply(dir.path(), "BAT0", "Battery", None);
        supply(dir.path(), "AC", "Mains", Some("0"));
        assert!(supplies_on_battery(dir.path()));
        supply(dir.path(), "AC", "Mains", Some("1"));
        assert!(!supplies_on_battery(dir.path()));
    }

    #[test]
    fn a_closed_port_is_unreachable_and_an_open_one_is_reachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(reachable(&open));
        drop(listener);
        assert!(!reachable(&open));
        assert!(!reachable("not a host:port"));
    }
}
