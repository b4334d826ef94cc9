//! The OS keychains (Secret Service, kernel keyutils, the macOS Keychain), through
//! `keyring-core`'s stores: read as a secret source, written by `backupnizza secret set`.
//! Errors say which store failed and how to fix it, never a value.

use zeroize::Zeroizing;

use crate::config::Store;

/// `auto` resolved for this platform.
pub(crate) fn resolve(store: Store) -> Store {
    match store {
        Store::Auto if cfg!(target_os = "macos") => Store::Keychain,
        Store::Auto => Store::SecretService,
        other => other,
    }
}

pub(crate) fn store_name(store: Store) -> &'static str {
    match store {
        Store::SecretService => "Secret Service",
        Store::Keyutils => "kernel keyutils",
        Store::Keychain => "macOS Keychain",
        Store::Auto => "auto",
    }
}

/// A value read from a source, or what went wrong and how to fix it.
pub(crate) type SourceResult = Result<Zeroizing<Vec<u8>>, (String, Option<String>)>;

#[cfg(target_os = "linux")]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    match store {
        Store::SecretService | Store::Auto => zbus_secret_service_keyring_store::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::Keyutils => linux_keyutils_keyring_store::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::Keychain => Err((
            "the macOS Keychain is not available on Linux".into(),
            Some("use store: secret-service or keyutils, or a command/file source".into()),
        )),
    }
}

#[cfg(target_os = "macos")]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    match store {
        Store::Keychain | Store::Auto => apple_native_keyring_store::keychain::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::SecretService | Store::Keyutils => Err((
            format!("the {} store is only available on Linux", store_name(store)),
            Some("use store: keychain (or auto), or a command/file source".into()),
        )),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    Err((format!("the {} store is not available on this platform", store_name(store)), None))
}

/// Reads a keychain entry (blocking: call from `spawn_blocking`).
pub(crate) fn get(store: Store, service: &str, account: &str) -> SourceResult {
    let entry = keyring_store(store)?
        .build(service, account, None)
        .map_err(|e| keyring_problem(store, e))?;
    match entry.get_secret() {
        Ok(bytes) => Ok(Zeroizing::new(bytes)),
        Err(keyring_core::Error::NoEntry) => Err(match gone_key(store, service, account) {
            Some(why) => (
                format!(
                    "the entry for service {service:?} and account {account:?} in the {} is {why}",
                    store_name(store)
                ),
                Some("store it again with `backupnizza secret set NAME`".into()),
            ),
            None => (
                format!(
                    "no entry for service {service:?} and account {account:?} in the {}",
                    store_name(store)
                ),
                Some("store it with `backupnizza secret set NAME`".into()),
            ),
        }),
        Err(e) => Err(keyring_problem(store, e)),
    }
}

/// Writes a keychain entry (blocking: call from `spawn_blocking`).
pub(crate) fn set(
    store: Store,
    service: &str,
    account: &str,
    value: &[u8],
) -> Result<(), (String, Option<String>)> {
    let entry = keyring_store(store)?
        .build(service, account, None)
        .map_err(|e| keyring_problem(store, e))?;
    entry.set_secret(value).map_err(|e| keyring_problem(store, e))
}

/// Turns a keyring error into what went wrong and how to fix it.
/// Why a kernel keyring entry the store reports as missing is really gone: the store says
/// "no entry" for a key that was revoked or expired too, which would send the user looking
/// for a key that is there. `None` when it truly is not there (or another store).
#[cfg(target_os = "linux")]
fn gone_key(store: Store, service: &str, account: &str) -> Option<&'static str> {
    use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
    if store != Store::Keyutils {
        return None;
    }
    // The keyutils store's description: `keyring:ACCOUNT@SERVICE`.
    let description = format!("keyring:{account}@{service}");
    let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false).ok()?;
    match session.search(&description) {
        Err(KeyError::KeyRevoked) => Some("revoked"),
        Err(KeyError::KeyExpired) => Some("expired"),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn gone_key(_store: Store, _service: &str, _account: &str) -> Option<&'static str> {
    None
}

fn keyring_problem(store: Store, e: keyring_core::Error) -> (String, Option<String>) {
    use keyring_core::Error as E;
    let headless =
        "or use a `command` or `file` source on headless servers (see docs/operations.md)";
    match (&e, store) {
        (E::NoStorageAccess(detail), Store::SecretService | Store::Auto) => (
            format!("the Secret Service collection is locked or refused access ({detail})"),
            Some(format!("unlock your keyring (log in to the desktop session), {headless}")),
        ),
        (E::PlatformFailure(detail), Store::SecretService | Store::Auto) => (
            format!("cannot reach the Secret Service over D-Bus ({detail})"),
            Some(format!(
                "start the daemon inside your login session so DBUS_SESSION_BUS_ADDRESS is set and a keyring (gnome-keyring, KeePassXC) runs, {headless}"
            )),
        ),
        (E::NoStorageAccess(detail), Store::Keyutils) => (
            format!("the kernel keyring refused access ({detail})"),
            Some("run the daemon in a login session, or start it under `keyctl session -`".into()),
        ),
        (E::NoStorageAccess(detail), Store::Keychain) => (
            format!("the Keychain refused access ({detail})"),
            Some("unlock the login keychain and allow backupnizza when macOS asks".into()),
        ),
        (E::Ambiguous(entries), _) => (
            format!("{} entries match", entries.len()),
            Some("remove the duplicates (e.g. with seahorse, or `secret-tool clear`) and store it once".into()),
        ),
        // Never echo the bytes some variants carry.
        (E::BadEncoding(_) | E::BadDataFormat(..), _) => {
            ("the stored entry is not in the expected format".into(), None)
        }
        _ => (e.to_string(), None),
    }
}
