//! Protections for the processes that hold secrets: [`protect_process`] forbids core dumps
//! (`RLIMIT_CORE` 0) and same-user ptrace or `/proc/PID/mem` / `environ` reads
//! (`PR_SET_DUMPABLE` 0 on Linux, `PT_DENY_ATTACH` on macOS), before any secret is read.
//! The secrets themselves live on locked pages ([`super::locked`]).
//!
//! When a protection cannot be applied we report it (the caller warns once, or refuses to
//! start under `strict_memory: true`) instead of failing: a backup that runs is usually worth
//! more than a protection the kernel does not offer.

/// A protection that could not be applied, for a warning or a strict-mode refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weakness {
    pub what: &'static str,
    pub why: String,
}

/// Disables core dumps and ptrace attachment by processes of the same user.
pub fn protect_process() -> Vec<Weakness> {
    let mut weak = disable_core_dumps();
    weak.extend(forbid_inspection());
    weak
}

/// No core dumps (`RLIMIT_CORE` 0): the part of [`protect_process`] that leaves the process
/// readable to its own user. `secretbox` starts with this alone, because the daemon reads its
/// `/proc/PID/exe` to verify it, which a non-dumpable process denies to anyone but root.
pub fn disable_core_dumps() -> Vec<Weakness> {
    use nix::sys::resource::{Resource, setrlimit};
    match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        Ok(()) => Vec::new(),
        Err(e) => vec![Weakness { what: "disable core dumps (RLIMIT_CORE 0)", why: e.to_string() }],
    }
}

/// No same-user ptrace and `/proc/PID/mem` reads: the rest of [`protect_process`].
pub fn forbid_inspection() -> Vec<Weakness> {
    let mut weak = Vec::new();
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        weak.push(Weakness {
            what: "forbid ptrace and /proc memory access (PR_SET_DUMPABLE 0)",
            why: e.to_string(),
        });
    }
    #[cfg(target_os = "macos")]
    {
        const PT_DENY_ATTACH: libc::c_int = 31;
        // SAFETY: PT_DENY_ATTACH takes no address or data; it only flags this process.
        let rc = unsafe { libc::ptrace(PT_DENY_ATTACH, 0, std::ptr::null_mut(), 0) };
        if rc != 0 {
            weak.push(Weakness {
                what: "forbid debugger attachment (PT_DENY_ATTACH)",
                why: std::io::Error::last_os_error().to_string(),
            });
        }
    }
    weak
}

/// Whether this process is protected from same-user ptrace (Linux: not dumpable).
pub fn is_dumpable() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::get_dumpable().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Joins a fresh kernel session keyring when this process has none of its own.
///
/// Outside a PAM login session (containers, CI, some service managers) a process's session
/// keyring is the shared per-user one, where the keyutils store fails (see
/// docs/operations.md). Session keyrings are per thread, so this must run at the top of
/// `main`, before any thread exists.
#[cfg(target_os = "linux")]
pub fn join_session_keyring() {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    let _ = KeyRing::from_special_id(KeyRingIdentifier::Session, true);
}

#[cfg(not(target_os = "linux"))]
pub fn join_session_keyring() {}
