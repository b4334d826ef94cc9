//! Environment variables that hold secrets (`{env: NAME}` sources), taken onto locked pages
//! and wiped from the process's environment block before any thread exists.

use std::ffi::{CStr, CString};

use super::hardening::Weakness;
use super::locked::LockedBytes;

/// A variable's value, on locked pages, and the protections those pages lack.
pub(crate) type Taken = (LockedBytes, Vec<Weakness>);

/// Why variables could not be taken from the environment.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TakeError {
    /// Another thread exists, which could read the environment while it changes.
    #[error(
        "the environment can only be changed while one thread exists, but {0} do; this is a bug"
    )]
    Threads(usize),
    /// The thread count cannot be read (no `/proc`), so changing it cannot be shown safe.
    #[error(
        "cannot count this process's threads (is /proc mounted?), so `env:` secret sources cannot be taken safely"
    )]
    Uncounted,
    #[error("cannot allocate locked memory for secret {name:?} from ${var}: {source}")]
    Memory { name: String, var: String, source: std::io::Error },
}

/// Takes each `(name, variable)` of `vars` out of the environment: its value onto locked
/// pages, then its bytes in the environment block (which `/proc/PID/environ` shows for the
/// life of the process) overwritten, then the variable removed. Unset variables are left
/// out of the answer.
///
/// Refuses unless this process has exactly one thread: the environment is not safe to
/// change while another thread could read it. No thread can appear while this runs, since
/// only this one could start it.
pub(crate) fn take_vars<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(&'a str, Taken)>, TakeError> {
    let vars: Vec<(&str, &str)> = vars.into_iter().collect();
    if vars.is_empty() {
        return Ok(Vec::new());
    }
    match super::proc::thread_count() {
        Some(1) => {}
        Some(n) => return Err(TakeError::Threads(n)),
        None => return Err(TakeError::Uncounted),
    }
    let mut out = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        // SAFETY: exactly one thread exists (checked above), and it is this one.
        if let Some(taken) = unsafe { take_var(var) } {
            let taken = taken.map_err(|source| TakeError::Memory {
                name: name.to_string(),
                var: var.to_string(),
                source,
            })?;
            out.push((name, taken));
        }
    }
    Ok(out)
}

/// One variable, as [`take_vars`] says. `None` when it is not set.
///
/// # Safety
/// No other thread may exist.
unsafe fn take_var(name: &str) -> Option<std::io::Result<Taken>> {
    let cname = CString::new(name).ok()?;
    // SAFETY: single-threaded (the caller's contract); getenv returns a pointer into the
    // environment that stays valid until the environment is modified, which we do below.
    let value = unsafe { libc::getenv(cname.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(value) }.to_bytes();
    // Straight onto locked pages: a heap copy would outlive its free.
    let copy = LockedBytes::new(bytes);
    let len = bytes.len();
    for i in 0..len {
        // SAFETY: the `len` bytes before the NUL belong to the environment block; writing them
        // does not change the string's length, and nothing else reads them concurrently.
        unsafe { std::ptr::write_volatile(value.add(i), b'*' as libc::c_char) };
    }
    // SAFETY: single-threaded (the caller's contract).
    unsafe { std::env::remove_var(name) };
    Some(copy)
}
