//! Signal dispositions set outside the async runtime (which handles the daemon's own).

use nix::sys::signal::{SigHandler, Signal, signal};

/// Ignores SIGINT, SIGTERM and SIGHUP for this process: the guardian must be set off only
/// by the daemon's end, not by a Ctrl-C or a unit stop aimed at the daemon.
pub(crate) fn ignore_stop_signals() {
    for which in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process handles
        // signals.
        unsafe {
            let _ = signal(which, SigHandler::SigIgn);
        }
    }
}
