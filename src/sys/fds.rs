//! The daemon's own descriptors at start.

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
