//! The read-all capability of system mode (`CAP_DAC_READ_SEARCH`, which the system unit
//! grants ambiently): the daemon keeps it for itself and hands it only to the processes
//! that need it (restic's `backup` steps by default).
//!
//! At start, before any other thread exists, the daemon clears its ambient set
//! ([`keep_to_self`]), so no process it starts inherits the capability: not a hook, a notify
//! command, a secret source's helper, `rclone` or the guardian. A step process that should
//! hold it raises it into its own ambient set between `fork` and `exec`
//! ([`super::exec::ChildSetup::read_all`]); every other step process also clears its
//! inheritable set there, so a program with file capabilities gains nothing from the
//! daemon's. Linux only; elsewhere there is nothing to do.

/// `CAP_DAC_READ_SEARCH`'s number.
#[cfg(target_os = "linux")]
pub(crate) const DAC_READ_SEARCH: libc::c_ulong = 2;

/// `struct __user_cap_header_struct`.
#[cfg(target_os = "linux")]
#[repr(C)]
pub(crate) struct CapHeader {
    pub(crate) version: u32,
    pub(crate) pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them for version 3: capabilities 0-31, 32-63).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct CapData {
    pub(crate) effective: u32,
    pub(crate) permitted: u32,
    pub(crate) inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
#[cfg(target_os = "linux")]
pub(crate) const VERSION_3: u32 = 0x2008_0522;

/// Whether this process holds the read-all capability in its permitted set.
#[cfg(target_os = "linux")]
pub(crate) fn holds_read_all() -> bool {
    let mut header = CapHeader { version: VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two `CapData` for version 3 into `data`, which holds two.
    let got = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    got == 0 && data[0].permitted & (1 << DAC_READ_SEARCH) != 0
}

/// Whether this process holds the read-all capability: Linux's alone.
#[cfg(not(target_os = "linux"))]
pub(crate) fn holds_read_all() -> bool {
    false
}

/// Clears this thread's ambient capability set, which the threads it starts afterwards and
/// every process they start inherit: call it before the daemon starts any thread.
#[cfg(target_os = "linux")]
pub(crate) fn keep_to_self() -> std::io::Result<()> {
    // SAFETY: a prctl on this thread's own capability sets, with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Linux's alone: elsewhere there is no ambient set to clear.
#[cfg(not(target_os = "linux"))]
#[expect(clippy::unnecessary_wraps, reason = "Linux's has this signature, and can fail")]
pub(crate) fn keep_to_self() -> std::io::Result<()> {
    Ok(())
}
