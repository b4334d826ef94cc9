//! The daemon's own descriptors: those it was started with, and those it hands to tokio's
//! reactor.

/// Closes every descriptor the process was started with except stdin, stdout and stderr, so
/// no task inherits one by accident (a parent's socket, a file it forgot to mark
/// close-on-exec). The first `keep` after stderr (systemd's `LISTEN_FDS`, passed on
/// purpose) are kept but marked close-on-exec: the daemon uses none of them, and tasks must
/// not see them. Call it while nothing else has been opened that is kept.
pub(crate) fn close_inherited(keep: i32) {
    // Read all first: the directory's own descriptor is among them.
    for fd in super::proc::own_fds().into_iter().filter(|fd| *fd > 2) {
        // SAFETY: `fd` was open when listed and nothing in this still single-threaded
        // process owns it (the caller's promise); closing a descriptor that is already gone
        // (the listing's own) fails harmlessly with EBADF.
        unsafe {
            if fd < 3 + keep {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            } else {
                libc::close(fd);
            }
        }
    }
}

/// A descriptor-owning value (an `OwnedFd`, nix's `Inotify` or `TimerFd`) the reactor can
/// watch: [`register`] is the only way to make one, so the value owns its descriptor for as
/// long as the reactor watches it.
#[cfg(target_os = "linux")]
pub(crate) struct Watched<T>(T);

#[cfg(target_os = "linux")]
impl<T: std::os::fd::AsFd> std::os::fd::AsRawFd for Watched<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0.as_fd())
    }
}

#[cfg(target_os = "linux")]
impl<T> Watched<T> {
    pub(crate) fn get(&self) -> &T {
        &self.0
    }
}

/// Registers `inner`, which owns its descriptor, with the current runtime's reactor.
#[cfg(target_os = "linux")]
pub(crate) fn register<T: std::os::fd::AsFd>(
    inner: T,
) -> std::io::Result<tokio::io::unix::AsyncFd<Watched<T>>> {
    // SAFETY: `T` owns its descriptor (an `AsFd` of an owning type, as `register`'s callers
    // pass), and `Watched` never lets it go: the descriptor stays open, the same one, until
    // the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(Watched(inner)) }.map_err(std::io::Error::from)
}
