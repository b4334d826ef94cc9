//! Change signals that end a deferral early. A run deferred because the machine is on
//! battery or the connection is metered is checked again the moment UPower or
//! NetworkManager says something changed (`PropertiesChanged` on their root objects, over
//! the system bus), not only at the next poll; see [`conditions`](super::conditions).
//!
//! One thread per service listens (blocking zbus iterators), started at daemon start only
//! when some task's `when:` has `ac_power` or `unmetered`, and only on Linux. Each signal
//! is sent on a `watch` channel (which wakes every waiter, whatever the value) that
//! deferred runs wait on. Conditions without a
//! signal (`network:`, `idle_cpu:`, power read from `/sys/class/power_supply` when UPower is
//! not running) are polled every [`POLL`](super::conditions::POLL); the signalled ones are
//! also polled, less often ([`BACKSTOP`](super::conditions::BACKSTOP)), in case a signal is
//! missed. If the bus goes away the threads end, the channel closes and runs fall back to
//! the short poll.

use tokio::sync::watch;

use crate::config::Config;

/// A system service whose change signals a deferred run listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// UPower: `OnBattery`. (Linux only: macOS's power source is polled.)
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Power,
    /// NetworkManager: `Metered`.
    Network,
}

impl Source {
    pub(crate) fn service(self) -> &'static str {
        match self {
            Source::Power => "UPower",
            Source::Network => "NetworkManager",
        }
    }
}

/// The service that signalled last (`None` before any signal).
pub(crate) type Changes = watch::Receiver<Option<Source>>;

/// Starts listening for what the tasks' conditions need; `None` when none needs anything.
pub(crate) fn listen(config: &Config) -> Option<Changes> {
    let power = config.tasks.iter().any(|t| t.when.ac_power);
    let network = config.tasks.iter().any(|t| t.when.unmetered);
    if !power && !network {
        return None;
    }
    let (tx, rx) = watch::channel(None);
    #[cfg(target_os = "linux")]
    {
        let wanted = [
            (power, Source::Power, "org.freedesktop.UPower", "/org/freedesktop/UPower"),
            (
                network,
                Source::Network,
                "org.freedesktop.NetworkManager",
                "/org/freedesktop/NetworkManager",
            ),
        ];
        for (_, source, interface, path) in wanted.into_iter().filter(|w| w.0) {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-signals", source.service()))
                .spawn(move || follow(&tx, source, interface, path));
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "cannot start the {} listener", source.service());
            }
        }
    }
    // Dropped here: the channel lives as long as some listener thread holds a sender.
    drop(tx);
    Some(rx)
}

/// Forwards one service's `PropertiesChanged` signals until the bus connection ends.
#[cfg(target_os = "linux")]
fn follow(tx: &watch::Sender<Option<Source>>, source: Source, interface: &str, path: &str) {
    let subscribe = || -> zbus::Result<zbus::blocking::MessageIterator> {
        let conn = zbus::blocking::Connection::system()?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.Properties")?
            .member("PropertiesChanged")?
            .path(path)?
            .add_arg(interface)?
            .build();
        zbus::blocking::MessageIterator::for_match_rule(rule, &conn, Some(16))
    };
    let messages = match subscribe() {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "no {} change signals; deferred runs poll", source.service());
            return;
        }
    };
    for message in messages {
        if message.is_err() {
            break;
        }
        tx.send_replace(Some(source));
    }
}
